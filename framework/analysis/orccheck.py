"""Seed 004: the ORC data against every byte stream patching can put at a site. Pure.

For each patch site and each stream that can land there (``streams``), the
stream's instructions are followed from the site's start (``spdelta``), and
at every instruction boundary reached, the ORC entry in force there (the
kernel's rule: the greatest ORC ip at or below the address) must describe the
stack as the stream left it. The entry in force at the site's start gives the
state on entry; from it, with ``D`` bytes pushed since:

- sp: an sp-based entry (``sp:sp+S``) must say ``sp:sp+(S+D)``; any other
  base (``bp``, a register, indirect) is untouched by pushes and must stay as
  it was;
- type (call, regs, regs_partial) must stay as it was;
- bp: must stay as it was, unless the stream wrote %rbp.

What is compared is the values, not that an entry exists: the static check
(``patchscope orc``) runs over the streams of the ELF, the live one over the
bytes a capture found at each site. ``smp_locks`` sites are a prefix byte
inside an instruction (``lock`` ↔ ``ds``): they move no boundary and are not
checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..elf import orc as orc_mod
from ..elf.orc import OrcEntry, OrcTable
from ..elf.vmlinux import Site, Symbols
from .sites import SiteState, decode
from .spdelta import Boundary, boundaries

NOP5 = bytes.fromhex("0f1f440000")
# asm/nops.h (x86-64): x86_nops[n], the NOP of n bytes the kernel pads with (add_nops, up to ASM_NOP_MAX = 8).
X86_NOPS = {1: "90", 2: "6690", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000", 6: "660f1f440000",
            7: "0f1f8000000000", 8: "0f1f840000000000"}
ASM_NOP_MAX = 8
LFENCE = bytes.fromhex("0faee8")
UNCHECKED_TABLES = ("smp_locks",)
# The indirect-branch thunks a retpoline site calls: __x86_indirect_thunk_<reg>; their register numbers.
_THUNK_REGS = {name: n for n, name in enumerate(
    ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))}
MAX_DISAGREEMENTS = 10_000
MASK64 = (1 << 64) - 1
# Calls that return on another stack: arch/x86/entry/entry_64.S's helpers that push a pt_regs for their caller
# (PUSH_AND_CLEAR_REGS save_ret=1) and return with %rsp below it. After them the stack is not simulated.
RETURNS_ELSEWHERE = frozenset(("error_entry", "xen_error_entry", "paranoid_entry"))
# Functions that do not return (objtool's global noreturn list, tools/objtool/noreturns.h in 6.12, check.c's
# global_noreturns[] in 6.1): the instruction after a call to one is another block's, described as such.
NORETURN = frozenset((
    "__fortify_panic", "fortify_panic", "__stack_chk_fail", "__ubsan_handle_builtin_unreachable", "panic",
    "usercopy_abort", "do_exit", "do_group_exit", "make_task_dead", "kthread_exit", "__module_put_and_kthread_exit",
    "rewind_stack_and_make_dead", "machine_real_restart", "cpu_bringup_and_idle", "cpu_startup_entry",
    "arch_cpu_idle_dead", "play_dead", "hlt_play_dead", "stop_this_cpu", "nmi_panic_self_stop",
    "panic_smp_self_stop", "start_kernel", "x86_64_start_kernel", "x86_64_start_reservations", "xen_start_kernel",
    "xen_cpu_bringup_again", "sev_es_terminate", "snp_abort", "hv_ghcb_terminate", "ex_handler_msr_mce",
    "__tdx_hypercall_failed", "kunit_try_catch_throw", "btrfs_assertfail", "__invalid_creds", "mpt_halt_firmware",
    "lbug_with_loc", "__reiserfs_panic", "bch2_trans_in_restart_error", "bch2_trans_unlocked_error",
))


def add_nops(length: int, version: tuple[int, int] = (6, 1)) -> bytes:
    """The padding the kernel writes over ``length`` bytes: x86_nops[] of up to 8 bytes each (``add_nops``, up to
    6.2); from 6.3 (``add_nop``) a run longer than 8 bytes is ``jmp`` over int3s."""
    if version >= (6, 3) and length > ASM_NOP_MAX:
        size = 2 if length < 128 else 5
        jump = bytes((0xEB, length - 2)) if size == 2 else b"\xe9" + (length - 5).to_bytes(4, "little")
        return jump + b"\xcc" * (length - size)
    out = b""
    while len(out) < length:
        out += bytes.fromhex(X86_NOPS[min(ASM_NOP_MAX, length - len(out))])
    return out


def padded(code: bytes, length: int, pad: bytes | None = None, version: tuple[int, int] = (6, 1)) -> bytes:
    """``code`` filled up to ``length``: with the kernel's NOPs (``add_nops``), or ``pad`` bytes (int3 after a
    return)."""
    if len(code) >= length:
        return code
    return code + (add_nops(length - len(code), version) if pad is None else pad * (length - len(code)))


def optimize_nops(code: bytes, version: tuple[int, int] = (6, 1)) -> bytes:
    """``code`` as ``optimize_nops()`` leaves an alternative the kernel does not apply: every run of two or more
    one-byte NOPs (0x90) starting at an instruction boundary becomes the kernel's padding of that length."""
    out, offset = bytearray(), 0
    for start, size, _, _ in decode(code):
        if start < offset:
            continue
        end = start
        while end < len(code) and code[end] == 0x90:
            end += 1
        if end - start >= 2:
            out += add_nops(end - start, version)
            offset = end
        else:
            out += code[start:start + size]
            offset = start + size
    return bytes(out)


def _indirect(reg: int, jump: bool) -> bytes:
    """``call *%reg`` / ``jmp *%reg`` (ff /2, ff /4), with REX.B for r8-r15."""
    modrm = (0xE0 if jump else 0xD0) + (reg & 7)
    return (b"\x41" if reg >= 8 else b"") + bytes((0xFF, modrm))


def streams(site: Site, thunk_reg: Callable[[int], int | None] = lambda _: None,
            version: tuple[int, int] = (6, 1)) -> list[tuple[str, bytes]]:
    """Every byte stream that can end up at ``site`` once boot-time patching ran, as (label, bytes of its length).

    Padding is the kernel's (``add_nops``): one-byte NOPs become long NOPs, so a boundary inside a run of
    one-byte NOPs, which exists only before patching, is not checked.

    - every table: the original (the ELF's bytes; an alternative's after ``optimize_nops``);
    - paravirt: the direct call paravirt_patch() writes (``call rel32``; its target does not move %rsp) and
      NOP padding; the native inline code of 6.1's pv ops is an alternative on the same address, checked there;
    - alternatives: the replacement padded with NOPs (relocation fix-up changes displacements, not lengths);
    - retpolines: ``call/jmp *%reg`` and ``lfence; call/jmp *%reg`` (spectre_v2=retpoline,lfence);
    - returns: ``ret`` padded with int3; jump_labels: ``jmp rel32`` and a 5-byte NOP.
    """
    n = site.length
    out = [("original", optimize_nops(site.original, version) if site.table == "alternatives" else site.original)]
    if site.table == "paravirt" and n >= 5:
        out.append(("direct call", padded(b"\xe8\x00\x00\x00\x00", n, version=version)))
    elif site.table == "alternatives" and site.replacement is not None and len(site.replacement) <= n:
        out.append(("replacement", padded(site.replacement, n, version=version)))
    elif site.table == "retpolines" and site.target is not None and site.original[:1] in (b"\xe8", b"\xe9"):
        reg = thunk_reg(site.target)
        if reg is not None:
            branch = _indirect(reg, site.original[0] == 0xE9)
            out += [("indirect", padded(branch, n, version=version)),
                    ("lfence; indirect", padded(LFENCE + branch, n, version=version))]
    elif site.table == "returns" and n >= 1:
        out.append(("ret", padded(b"\xc3", n, b"\xcc")))
    elif site.table == "jump_labels" and n == 5:
        out += [("jmp", b"\xe9\x00\x00\x00\x00"), ("nop", NOP5)]
    return [(label, code) for label, code in out if len(code) == n]


def thunk_register(symbols: Symbols) -> Callable[[int], int | None]:
    """The register of the ``__x86_indirect_thunk_<reg>`` at an address, for ``streams``."""
    def reg(address: int) -> int | None:
        found = symbols.resolve(address)
        if found is None or found[1] != 0 or not found[0].startswith("__x86_indirect_thunk_"):
            return None
        return _THUNK_REGS.get(found[0].removeprefix("__x86_indirect_thunk_"))
    return reg


def expected(entry: OrcEntry, b: Boundary) -> tuple[int, int, str] | None:
    """(sp_reg, sp_offset, type) the ORC entry at boundary ``b`` must have, from the entry state; None: unknown."""
    if b.delta is None:
        return None
    offset = entry.sp_offset + b.delta if entry.sp_reg == orc_mod.REG_SP else entry.sp_offset
    return entry.sp_reg, offset, entry.type


def state_text(sp_reg: int, sp_offset: int, kind: str, bp: tuple[int, int] | None = None) -> str:
    """``sp:sp+16 type:call`` (with ``bp:prev_sp-16`` when bp is part of what is compared)."""
    text = f"sp:{orc_mod.ORC_REG_NAMES.get(sp_reg, str(sp_reg))}{sp_offset:+d}"
    if bp is not None:
        text += f" bp:{orc_mod.ORC_REG_NAMES.get(bp[0], str(bp[0]))}{bp[1]:+d}" if bp[0] != orc_mod.REG_UNDEFINED \
            else " bp:(und)"
    return f"{text} type:{kind}"


@dataclass(frozen=True)
class Disagreement:
    """A boundary where the ORC entry in force does not describe the stack as the stream left it."""

    table: str
    index: int
    what: str             # the pv op or the alternative's feature ("" for other tables)
    stream: str           # "original", "replacement", "direct call", "live", …
    site: int             # the site's address
    address: int          # the boundary
    symbol: str           # the boundary, named: "lock_is_held_type+0x2b"
    after: str            # the instruction just executed
    expected: str         # "sp:sp+16 type:call"
    found: str            # the entry in force, same spelling
    found_ip: int         # where that entry starts
    module: str | None = None

    def describe(self) -> str:
        what = f" {self.what}" if self.what else ""
        return (f"{self.table}#{self.index}{what} {self.stream} at {self.symbol} ({self.address:#x}) after "
                f"'{self.after}': ORC says {self.found} (entry at {self.found_ip:#x}), the stack is {self.expected}")

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Disagreement:
        def hexnum(key: str) -> int:
            return int(str(data[key]), 16)
        module = data.get("module")
        return Disagreement(str(data["table"]), int(str(data["index"])), str(data["what"]), str(data["stream"]),
                            hexnum("site"), hexnum("address"), str(data["symbol"]), str(data["after"]),
                            str(data["expected"]), str(data["found"]), hexnum("found_ip"),
                            None if module is None else str(module))

    def to_json(self) -> dict[str, object]:
        return {"table": self.table, "index": self.index, "what": self.what, "stream": self.stream,
                "site": f"{self.site:#x}", "address": f"{self.address:#x}", "symbol": self.symbol,
                "after": self.after, "expected": self.expected, "found": self.found,
                "found_ip": f"{self.found_ip:#x}", **({"module": self.module} if self.module else {})}


@dataclass
class Counts:
    sites: int = 0
    streams: int = 0
    boundaries: int = 0
    agree: int = 0
    disagree: int = 0
    unknown: int = 0          # the simulator cannot tell %rsp there (leave, and $-16,%rsp, …)
    unreachable: int = 0      # after a call that does not return (NORETURN, or ORC's undefined entry after it)
    undescribed: int = 0      # sites whose entry state ORC leaves undefined (entry code, end of stack)

    def add(self, other: Counts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class OrcReport:
    """The ORC check of one set of streams: per table and op, and every disagreement."""

    where: str                                   # "static" or the capture: "after-patching", "booted"
    rows: dict[str, Counts] = field(default_factory=dict)        # "paravirt irq.save_fl", "returns", …
    disagreements: list[Disagreement] = field(default_factory=list)

    def total(self) -> Counts:
        out = Counts()
        for counts in self.rows.values():
            out.add(counts)
        return out

    def tables(self) -> dict[str, Counts]:
        out: dict[str, Counts] = {}
        for key, counts in self.rows.items():
            out.setdefault(key.split(" ", 1)[0], Counts()).add(counts)
        return out

    def summary(self) -> str:
        t = self.total()
        return (f"ORC ({self.where}): {t.boundaries} boundaries in {t.streams} streams at {t.sites} sites; "
                f"{t.agree} agree, {t.disagree} disagree, {t.unknown} not simulated, {t.unreachable} after calls "
                f"that do not return, "
                f"{t.undescribed} sites without an ORC state")

    def to_json(self) -> dict[str, object]:
        return {"where": self.where, "total": self.total().to_json(),
                "rows": {k: v.to_json() for k, v in sorted(self.rows.items())},
                "disagreements": [d.to_json() for d in self.disagreements]}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> OrcReport:
        """A report back from ``to_json()`` (orc.json); ValueError/KeyError/TypeError on a malformed one."""
        rows, found = data.get("rows"), data.get("disagreements")
        if not isinstance(rows, dict) or not isinstance(found, list):
            raise TypeError("an ORC report needs 'rows' (an object) and 'disagreements' (a list)")
        return OrcReport(str(data["where"]),
                         {str(k): Counts(**{n: int(v.get(n, 0)) for n in vars(Counts())}) for k, v in rows.items()},
                         [Disagreement.from_json(d) for d in found])


def row_key(site: Site) -> str:
    """The report's row of a site: its table, then its pv op or feature (per op, as the issue asks)."""
    table = site.table if site.module is None else f"{site.module}:{site.table}"
    what = site.op if site.table == "paravirt" else site.feature if site.table == "alternatives" else None
    return f"{table} {what}" if what else table


def check_site(table: OrcTable, site: Site, site_streams: Iterable[tuple[str, bytes]], symbols: Symbols,
               counts: Counts, out: list[Disagreement], starts: Callable[[int], bool]) -> None:
    """Check every boundary of every stream of one site; count into ``counts``, disagreements into ``out``."""
    counts.sites += 1
    found = table.lookup(site.address)
    if found is None or found[1].undefined:
        counts.undescribed += 1
        return
    entry = found[1]
    for label, code in site_streams:
        counts.streams += 1
        # direct calls' targets: a replacement's bytes are as linked at its own address, the others at the site
        base = site.replacement_address if label == "replacement" and site.replacement_address else site.address
        elsewhere = False
        for b in boundaries(code):
            address = site.address + b.offset
            if b.offset == site.length and starts(address):
                continue          # the stream ends where another function starts: a call that does not return
            if b.call is not None and not elsewhere:
                callee = symbols.resolve((base + b.call) & MASK64)
                name = callee[0] if callee is not None and callee[1] == 0 else ""
                if name in NORETURN and b.offset == site.length:
                    counts.unreachable += 1
                    continue
                elsewhere = name in RETURNS_ELSEWHERE
            want = None if elsewhere else expected(entry, b)
            got = table.lookup(address) if want is not None else None
            if got is not None and got[1].undefined and b.after.startswith("call") and b.offset == site.length:
                counts.unreachable += 1     # objtool knew the callee does not return
                continue
            counts.boundaries += 1
            if want is None:
                counts.unknown += 1
                continue
            if got is None:
                continue
            ip, live = got
            bp_ok = b.bp_changed or (live.bp_reg, live.bp_offset) == (entry.bp_reg, entry.bp_offset)
            if (live.sp_reg, live.sp_offset, live.type) == want and bp_ok:
                counts.agree += 1
                continue
            counts.disagree += 1
            if len(out) < MAX_DISAGREEMENTS:
                bp_shown = None if b.bp_changed else (entry.bp_reg, entry.bp_offset)
                out.append(Disagreement(
                    site.table, site.index, (site.op if site.table == "paravirt" else site.feature) or "", label,
                    site.address, address, symbols.format(address), b.after, state_text(*want, bp=bp_shown),
                    state_text(live.sp_reg, live.sp_offset, live.type,
                               None if b.bp_changed else (live.bp_reg, live.bp_offset)), ip, site.module))


def _starts(symbols: Symbols) -> Callable[[int], bool]:
    def starts(address: int) -> bool:
        found = symbols.resolve(address)
        return found is not None and found[1] == 0
    return starts


def check_static(table: OrcTable, sites: Mapping[str, Sequence[Site]], symbols: Symbols,
                 version: tuple[int, int] = (6, 1)) -> OrcReport:
    """Every site of every table with every stream that can land there (``streams``) in a kernel of ``version``."""
    report = OrcReport("static")
    reg, starts = thunk_register(symbols), _starts(symbols)
    for name, found in sites.items():
        if name in UNCHECKED_TABLES:
            continue
        for site in found:
            counts = report.rows.setdefault(row_key(site), Counts())
            check_site(table, site, streams(site, reg, version), symbols, counts, report.disagreements, starts)
    return report


def check_live(table: OrcTable, states: Mapping[str, Sequence[SiteState]], symbols: Symbols,
               where: str, modules: Mapping[str, OrcTable] = {}) -> OrcReport:
    """Every site's live bytes in a capture (what patching really wrote); freed and unread sites are left out.
    A loaded module's sites are checked against its own ORC table (``modules``, by name; none: not checked)."""
    report = OrcReport(where)
    starts = _starts(symbols)
    # Bytes at one place are checked once, under the first table that lists them: ALTERNATIVE_2's two entries,
    # and a pv call that is also an alternative (6.1's PVOP_ALT_*), counted under paravirt.
    seen: set[tuple[int, bytes]] = set()
    for states_of in states.values():
        for st in states_of:
            own = table if st.site.module is None else modules.get(st.site.module)
            if st.site.table in UNCHECKED_TABLES or st.live is None or st.state in ("freed", "unread") \
                    or own is None:
                continue
            if (st.site.address, st.live) in seen:
                continue
            seen.add((st.site.address, st.live))
            counts = report.rows.setdefault(row_key(st.site), Counts())
            check_site(own, st.site, [("live", st.live)], symbols, counts, report.disagreements, starts)
    return report
