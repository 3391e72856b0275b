"""The kernel's ORC unwinder, replayed from a stop, and its answer checked against the truth. Pure.

Seed 004: an interrupt that lands between two instructions of a patched site
(``pushf`` | ``pop %rax`` where ``call *pv_ops.save_fl`` was) unwinds with the
ORC entry in force there, which objtool wrote for the call. To see what the
kernel's unwinder would make of such a moment, patchscope stops the guest at
the boundary and replays ``unwind_next_frame`` (arch/x86/kernel/unwind_orc.c)
from the live registers, reading the guest's memory through ``read_u64``;
the answer (the caller's frame: its CFA and return address) is compared with
the truth recorded at the function's entry breakpoint (the rsp there, so the
CFA is rsp+8, and the return address at [rsp]).

What is modelled, as Linux 6.1 and 6.12 do it (the arithmetic is the same in
both; where the format changed, each entry's ``flag_name`` says which rule
applies):

- the entry in force: the greatest ORC ip <= the lookup ip, which is the ip
  itself for a signal frame (frame 0 is one: it is unwound from full
  registers, like ``__unwind_start(regs)``) and ip-1 for a return address
  (the call instruction's entry, so a call to a noreturn function works);
- ``state->signal`` for the next lookup: up to 6.2 set by type (regs and
  regs_partial: true, call: false); 6.3+ copies the entry's ``signal`` bit;
- end of stack: up to 6.3 ``sp_reg`` undefined with ``end`` set (unset: an
  error); 6.4+ types ``end_of_stack`` and ``undefined``;
- sp: ``sp+off`` rsp+off; ``bp+off`` rbp+off; ``(sp)+off`` *rsp + off (the
  offset is added after the load since 5.12); ``(bp+off)`` *(rbp+off);
  r10/r13/di/dx (and ax, newer than 6.12): that register's value, offset
  unused, known only from full registers (frame 0's, or a ``regs`` frame's
  pt_regs in memory);
- type ``call``: ip = *(sp-8), sp = sp; ``regs``: the pt_regs at sp, ip =
  regs->ip, sp = regs->sp; ``regs_partial``: the iret frame at sp (regs = sp -
  offsetof(pt_regs, ip)), ip = *sp, sp = *(sp+24);
- bp: undefined: the pt_regs' bp when full registers are known (a partial
  frame falls back to the full pt_regs before it), else unchanged;
  ``prev_sp``: *(sp+off), sp being the base just computed (for a regs frame
  the pt_regs' address, not regs->sp); ``bp``: *(rbp+off), a load;
- user mode (cs & 3 in the pt_regs reached): the end, as in the kernel;
- "stack going in the wrong direction": the caller's sp must be above this
  frame's on the same stack. The kernel knows the stacks' bounds; here it is
  checked where the stack cannot have changed (an sp- or bp-based call
  frame) or both sp are in one page.

Not modelled: the kernel's frame-pointer guess where no ORC entry covers an
ip (it marks the unwind unreliable; here the unwind stops), the entry for ip
0, and the return-address rewriting of ftrace's graph tracer and kretprobes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..elf.orc import (
    REG_AX,
    REG_BP,
    REG_BP_INDIRECT,
    REG_DI,
    REG_DX,
    REG_PREV_SP,
    REG_R10,
    REG_R13,
    REG_SP,
    REG_SP_INDIRECT,
    REG_UNDEFINED,
    OrcEntry,
    OrcTable,
)

MASK64 = (1 << 64) - 1
PAGE_SIZE = 4096

# struct pt_regs on x86-64 (arch/x86/include/asm/ptrace.h): byte offsets. 6.9+'s FRED unions (csx/cs, ssx/ss)
# keep every offset.
PT_REGS: Mapping[str, int] = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40, "r11": 48, "r10": 56, "r9": 64, "r8": 72,
    "ax": 80, "cx": 88, "dx": 96, "si": 104, "di": 112, "orig_ax": 120, "ip": 128, "cs": 136, "flags": 144,
    "sp": 152, "ss": 160,
}
SIZEOF_PT_REGS = 168
IRET_FRAME_OFFSET = PT_REGS["ip"]                        # asm/unwind.h: offsetof(struct pt_regs, ip)
IRET_FRAME_SIZE = SIZEOF_PT_REGS - IRET_FRAME_OFFSET    # ip, cs, flags, sp, ss

# The live register (as GDB names it) that each pt_regs slot the unwinder reads holds.
LIVE_NAMES: Mapping[str, str] = {
    "bp": "rbp", "di": "rdi", "dx": "rdx", "ax": "rax", "r10": "r10", "r13": "r13", "cs": "cs"}
# sp bases that are a register's value, read from pt_regs (get_reg): the pt_regs slot, the kernel's warning name.
_SP_FROM_REGS: Mapping[int, tuple[str, str]] = {
    REG_R10: ("r10", "R10"), REG_R13: ("r13", "R13"), REG_DI: ("di", "RDI"), REG_DX: ("dx", "DX"),
    REG_AX: ("ax", "AX")}
_REGS_TYPES = ("regs", "regs_partial")

ReadU64 = Callable[[int], int | None]       # None: unreadable
MAX_RECORDS_PER_FUNCTION = 64


@dataclass(frozen=True)
class Frame:
    """One frame of an unwind: where it executes (ip), its stack pointer, its rbp as the unwinder knows it."""

    ip: int
    sp: int
    bp: int | None
    entry_ip: int | None      # the ORC entry used to get here from the frame before (its ip); None for frame 0
    how: str                  # entry.describe() of that entry; "registers" for frame 0

    def to_json(self) -> dict[str, object]:
        return {"ip": hex(self.ip), "sp": hex(self.sp), "bp": _hex(self.bp), "entry_ip": _hex(self.entry_ip),
                "how": self.how}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Frame:
        return Frame(int(str(data["ip"]), 16), int(str(data["sp"]), 16), _unhex(data.get("bp")),
                     _unhex(data.get("entry_ip")), str(data["how"]))


@dataclass(frozen=True)
class Unwind:
    frames: tuple[Frame, ...]     # frame 0: the registers given
    stopped: str                  # why there are no more frames


class UnwindStop(Exception):
    """unwind_next_frame's ``goto err`` / ``goto the_end``: no caller frame, for this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PtRegs:
    """What unwind_orc.c's state->regs points at: the stop's live registers (frame 0, as after
    ``__unwind_start(regs)``), or a struct pt_regs (or its iret part) at ``address`` on the stack."""

    live: Mapping[str, int] | None = None
    address: int | None = None

    def get(self, slot: str, read_u64: ReadU64) -> int | None:
        """The pt_regs slot's value; None when the live registers lack it (GDB did not give it)."""
        if self.live is not None:
            return self.live.get(LIVE_NAMES.get(slot, slot))
        assert self.address is not None
        return _deref(read_u64, self.address + PT_REGS[slot])


@dataclass(frozen=True)
class UnwindState:
    """struct unwind_state, the part the unwinder's arithmetic reads."""

    ip: int
    sp: int
    bp: int
    signal: bool
    regs: PtRegs | None
    full_regs: bool
    prev_regs: PtRegs | None


def _hex(value: int | None) -> str | None:
    return None if value is None else hex(value)


def _unhex(value: object) -> int | None:
    return None if value is None else int(str(value), 16)


def _deref(read_u64: ReadU64, address: int) -> int:
    """deref_stack_reg: one word of the stack, or the end of the unwind (the kernel's stack_access_ok fails)."""
    value = read_u64(address & MASK64)
    if value is None:
        raise UnwindStop(f"cannot read {address & MASK64:#x}")
    return value & MASK64


def get_reg(state: UnwindState, slot: str, read_u64: ReadU64) -> int | None:
    """unwind_orc.c's get_reg: a register is known only from full pt_regs, or, when state->regs is only an iret
    frame, from the full pt_regs of the frame before it (an NMI in early/late IRQ entry code)."""
    if state.regs is None:
        return None
    if state.full_regs:
        return state.regs.get(slot, read_u64)
    if state.prev_regs is not None:
        return state.prev_regs.get(slot, read_u64)
    return None


def lookup_ip(ip: int, signal: bool) -> int:
    """The address whose ORC entry unwinds a frame: a return address belongs to the call before it (ip-1), so a
    call to a noreturn function at a function's end still finds its own entry; a signal frame's ip is exact."""
    return ip if signal else (ip - 1) & MASK64


def _user_mode(regs: PtRegs, read_u64: ReadU64) -> bool:
    """user_mode(regs): the saved cs has RPL 3. The live registers count as kernel when GDB gave no cs."""
    cs = regs.get("cs", read_u64)
    return cs is not None and cs & 3 != 0


def _end_or_undefined(entry_ip: int, orc: OrcEntry) -> str | None:
    """The entry says there is no caller: the stack's end (the_end: type end_of_stack, or up to 6.3 sp_reg
    undefined with ``end``) or a hole in the ORC data (err: type undefined, or sp_reg undefined otherwise)."""
    if orc.end_of_stack:
        return "end of stack"
    if orc.undefined:
        return f"undefined ORC entry at {entry_ip:#x}"
    return None


def next_signal(orc: OrcEntry) -> bool:
    """state->signal after unwinding with this entry: whether the caller's ip is exact (interrupted there) or
    a return address. 6.3+ copies the entry's ``signal`` bit (a hint may clear it, e.g. int3's iret frame,
    whose saved ip is after the breakpoint); before, every regs and regs_partial frame was a signal frame."""
    if orc.flag_name == "signal":
        return orc.signal
    return orc.type in _REGS_TYPES


def previous_sp(state: UnwindState, orc: OrcEntry, read_u64: ReadU64) -> int:
    """"Find the previous frame's stack": the base of the caller's frame (the CFA for a call frame, the pt_regs
    or iret frame's address for the regs types)."""
    off = orc.sp_offset
    if orc.sp_reg == REG_SP:
        return (state.sp + off) & MASK64
    if orc.sp_reg == REG_BP:
        return (state.bp + off) & MASK64
    if orc.sp_reg == REG_SP_INDIRECT:       # (%rsp) + off: the saved sp of call_on_stack's irq stack switch
        return (_deref(read_u64, state.sp) + off) & MASK64
    if orc.sp_reg == REG_BP_INDIRECT:       # (%rbp + off): DRAP
        return _deref(read_u64, state.bp + off)
    if orc.sp_reg in _SP_FROM_REGS:         # entry code: the register's value itself, the offset unused
        slot, name = _SP_FROM_REGS[orc.sp_reg]
        value = get_reg(state, slot, read_u64)
        if value is None:
            raise UnwindStop(f"missing {name} value at {state.ip:#x}")
        return value & MASK64
    raise UnwindStop(f"unknown SP base reg {orc.sp_reg} at {state.ip:#x}")


def _frame_below(state: UnwindState, orc: OrcEntry, sp: int, signal: bool, read_u64: ReadU64) -> UnwindState:
    """"Find IP, SP and possibly regs" by the entry's type; bp is left as it was (found next)."""
    if orc.type == "call":
        ip = _deref(read_u64, sp - 8)
        return UnwindState(ip, sp, state.bp, signal, None, state.full_regs, None)
    if orc.type == "regs":                  # the whole struct pt_regs is at sp
        ip = _deref(read_u64, sp + PT_REGS["ip"])
        new_sp = _deref(read_u64, sp + PT_REGS["sp"])
        return UnwindState(ip, new_sp, state.bp, signal, PtRegs(address=sp), True, None)
    if orc.type == "regs_partial":          # only the iret frame (ip, cs, flags, sp, ss) is at sp
        regs = (sp - IRET_FRAME_OFFSET) & MASK64
        ip = _deref(read_u64, sp)
        new_sp = _deref(read_u64, regs + PT_REGS["sp"])
        prev_regs = state.regs if state.full_regs else state.prev_regs
        return UnwindState(ip, new_sp, state.bp, signal, PtRegs(address=regs), False, prev_regs)
    raise UnwindStop(f"unknown .orc_unwind entry type {orc.type} at {state.ip:#x}")


def previous_bp(state: UnwindState, new: UnwindState, orc: OrcEntry, sp: int, read_u64: ReadU64) -> int:
    """"Find BP": where the caller's rbp is. ``sp`` is the base found for the entry (the CFA of a call frame)."""
    if orc.bp_reg == REG_UNDEFINED:         # not saved by this frame: unchanged, unless pt_regs hold it
        bp = get_reg(new, "bp", read_u64)
        return state.bp if bp is None else bp & MASK64
    if orc.bp_reg == REG_PREV_SP:           # pushed in this frame: at CFA+off (push %rbp first: CFA-16)
        return _deref(read_u64, sp + orc.bp_offset)
    if orc.bp_reg == REG_BP:                # saved at rbp+off (a frame that keeps rbp as its frame pointer)
        return _deref(read_u64, state.bp + orc.bp_offset)
    raise UnwindStop(f"unknown BP base reg {orc.bp_reg} at {state.ip:#x}")


def _same_stack(orc: OrcEntry, old_sp: int, new_sp: int) -> bool:
    """Whether the two sp are surely on one stack: an sp- or bp-based call frame cannot switch stacks (the irq
    stack switch is ``(sp)``-based, pt_regs hold the interrupted stack's sp), and a page is never shared."""
    return (orc.type == "call" and orc.sp_reg in (REG_SP, REG_BP)) or old_sp // PAGE_SIZE == new_sp // PAGE_SIZE


def unwind_next_frame(table: OrcTable, state: UnwindState, read_u64: ReadU64) -> tuple[UnwindState, int, OrcEntry]:
    """One step of unwind_orc.c's unwind_next_frame: the caller's state, and the ORC entry (ip, entry) used."""
    if state.regs is not None and _user_mode(state.regs, read_u64):
        raise UnwindStop(f"end of stack: user mode at {state.ip:#x}")
    ip = lookup_ip(state.ip, state.signal)
    found = table.lookup(ip)
    if found is None:
        raise UnwindStop(f"no ORC entry at {ip:#x}")
    entry_ip, orc = found
    end = _end_or_undefined(entry_ip, orc)
    if end is not None:
        raise UnwindStop(end)
    sp = previous_sp(state, orc, read_u64)
    new = _frame_below(state, orc, sp, next_signal(orc), read_u64)
    new = replace(new, bp=previous_bp(state, new, orc, sp, read_u64))
    if _same_stack(orc, state.sp, new.sp) and new.sp <= state.sp:
        raise UnwindStop(f"stack going in the wrong direction at {state.ip:#x}")
    return new, entry_ip, orc


def unwind(table: OrcTable, regs: Mapping[str, int], read_u64: ReadU64, max_frames: int = 4,
           is_text: Callable[[int], bool] = lambda ip: True) -> Unwind:
    """Unwind from a stop's registers (``rip``, ``rsp``, ``rbp``; ``r10``, ``r13``, ``rdi``, ``rdx``, ``cs`` when
    known) as the kernel would from an interrupt there: frame 0 is unwound with full registers, later frames
    with what the stack holds. Stops after ``max_frames`` frames, at the stack's end, at the first error, or
    at a return address outside kernel text (where the kernel's stack walkers stop)."""
    state = UnwindState(regs["rip"] & MASK64, regs["rsp"] & MASK64, regs["rbp"] & MASK64, signal=True,
                        regs=PtRegs(live=regs), full_regs=True, prev_regs=None)
    frames = [Frame(state.ip, state.sp, state.bp, None, "registers")]
    while len(frames) < max_frames:
        try:
            state, entry_ip, orc = unwind_next_frame(table, state, read_u64)
        except UnwindStop as stop:
            return Unwind(tuple(frames), stop.reason)
        frames.append(Frame(state.ip, state.sp, state.bp, entry_ip, orc.describe()))
        if not is_text(state.ip):
            return Unwind(tuple(frames), f"ip {state.ip:#x} is not kernel text")
    return Unwind(tuple(frames), "max frames")


# --- the truth ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRecord:
    """A function's entry breakpoint hit: rsp there and the return address at [rsp], the truth for that call."""

    function: str
    rsp: int
    return_address: int


@dataclass(frozen=True)
class UnwindCheck:
    """One stop's unwind against the truth: frame 1 of the ORC unwind vs the innermost live call's entry."""

    site: str
    rip: int
    expected_cfa: int | None
    expected_return: int | None
    found_cfa: int | None
    found_return: int | None
    agrees: bool | None           # None: no truth to compare with
    detail: str
    frames: tuple[Frame, ...]

    def to_json(self) -> dict[str, object]:
        return {"site": self.site, "rip": hex(self.rip), "expected_cfa": _hex(self.expected_cfa),
                "expected_return": _hex(self.expected_return), "found_cfa": _hex(self.found_cfa),
                "found_return": _hex(self.found_return), "agrees": self.agrees, "detail": self.detail,
                "frames": [f.to_json() for f in self.frames]}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> UnwindCheck:
        agrees = data.get("agrees")
        frames = data.get("frames")
        return UnwindCheck(
            str(data["site"]), int(str(data["rip"]), 16), _unhex(data.get("expected_cfa")),
            _unhex(data.get("expected_return")), _unhex(data.get("found_cfa")), _unhex(data.get("found_return")),
            agrees if isinstance(agrees, bool) else None, str(data["detail"]),
            tuple(Frame.from_json(f) for f in frames if isinstance(f, dict)) if isinstance(frames, list) else ())


def truth_for(records: Sequence[EntryRecord], function: str, rsp: int, read_u64: ReadU64) -> EntryRecord | None:
    """The innermost live call of ``function`` at a stop with this rsp: a live call's entry rsp is at or above
    the stop's (the stack grows down), the innermost is the lowest, and its slot still holds its return address
    (a call that returned has usually had that slot overwritten by later pushes and calls)."""
    for record in sorted((r for r in records if r.function == function and r.rsp >= rsp), key=lambda r: r.rsp):
        if read_u64(record.rsp) == record.return_address:
            return record
    return None


def check_stop(table: OrcTable, site: str, function: str, regs: Mapping[str, int], records: Sequence[EntryRecord],
               read_u64: ReadU64, max_frames: int = 4, *,
               is_text: Callable[[int], bool] = lambda ip: True) -> UnwindCheck:
    """Unwind from a stop inside ``function`` and compare frame 1 with the truth: the caller's frame starts at
    the entry rsp + 8 (the CFA) and resumes at the return address found at [entry rsp]."""
    result = unwind(table, regs, read_u64, max(max_frames, 2), is_text)
    truth = truth_for(records, function, regs["rsp"] & MASK64, read_u64)
    caller = result.frames[1] if len(result.frames) > 1 else None
    found_cfa = caller.sp if caller is not None else None
    found_return = caller.ip if caller is not None else None
    expected_cfa = (truth.rsp + 8) & MASK64 if truth is not None else None
    expected_return = truth.return_address if truth is not None else None
    agrees = None if truth is None else (found_cfa == expected_cfa and found_return == expected_return)
    found = (f"ORC {caller.how} gives CFA {caller.sp:#x} ret {caller.ip:#x}" if caller is not None
             else f"ORC gives no caller ({result.stopped})")
    known = (f"the entry at {function} recorded rsp {truth.rsp:#x} ret {truth.return_address:#x}"
             if truth is not None else f"no live entry of {function} was recorded")
    off = (f"; CFA off by {found_cfa - expected_cfa:+d}"
           if found_cfa is not None and expected_cfa is not None and found_cfa != expected_cfa else "")
    return UnwindCheck(site, regs["rip"] & MASK64, expected_cfa, expected_return, found_cfa, found_return, agrees,
                       f"{found}; {known}{off}", result.frames)


def prune(records: list[EntryRecord], rsp: int, *, per_function: int = MAX_RECORDS_PER_FUNCTION) -> None:
    """Forget entry records that cannot be live at a stop with this rsp, in place; keep the list bounded.

    - On the stop's own stack every frame below rsp has returned, whatever its function: records with a lower
      rsp in the stop's page go. Lower pages are left alone: kernel stacks (task, irq, exception) are separate
      regions of at least a page, and rsp alone cannot tell where the stop's stack ends, so a record further
      down may be a live call on another task's or CPU's stack. (truth_for never takes a record below the
      stop's rsp anyway, and checks its slot.)
    - Two records with one rsp: the older call returned before the newer one reused its slot. The newest stays.
    - At most ``per_function`` records of a function; the oldest go first.
    """
    page = rsp // PAGE_SIZE
    newest_at: dict[int, int] = {}
    for i, record in enumerate(records):
        newest_at[record.rsp] = i
    kept = [r for i, r in enumerate(records)
            if newest_at[r.rsp] == i and not (r.rsp < rsp and r.rsp // PAGE_SIZE == page)]
    count: dict[str, int] = {}
    for record in kept:
        count[record.function] = count.get(record.function, 0) + 1
    out: list[EntryRecord] = []
    for record in kept:
        if count[record.function] > per_function:
            count[record.function] -= 1
            continue
        out.append(record)
    records[:] = out
