"""Symbols and patch-site tables of an x86-64 vmlinux ELF. Pure: reads files, starts nothing.

Every table the kernel patches its own text from at boot lies in init memory
and is freed afterwards, so it is read here from the ELF; the run-time address
of a site equals its link address (``nokaslr``, or Xen PV dom0). Layouts are
from Linux 6.1 (Debian's 6.1.192 source), differences by version in
:class:`Layout`:

``.parainstructions`` (``arch/x86/include/asm/paravirt_types.h``) — ``struct
paravirt_patch_site { u8 *instr; u8 type; u8 len; }``, 16 bytes with padding
(older kernels had ``u16 clobbers`` in the padding). ``instr`` is absolute;
``type`` is the ``pv_ops`` slot, ``offsetof(struct paravirt_patch_template,
op) / 8``, named from BTF (:mod:`framework.elf.btf`). An unpatched site is ``ff 15
disp32``, ``call *pv_ops+8*type(%rip)``: :meth:`Vmlinux.pv_call_target`.

``.altinstructions`` (``arch/x86/include/asm/alternative.h``) — ``struct
alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8
replacementlen; } __packed`` (12 bytes). Site = ``&instr_offset +
instr_offset``, replacement = ``&repl_offset + repl_offset`` in
``.altinstr_replacement``; feature = ``cpuid & 0x7fff``, bit 15
(``ALTINSTR_FLAG_INV``, from ``ALT_NOT()``) = patch when the feature is absent.
Up to 5.12 a ``u8 padlen`` follows (13 bytes); from 6.3 the u16 is a ``u32
ft_flags`` (feature in bits 0-15, ``ALT_FLAG_NOT`` = bit 16; 14 bytes).

``.retpoline_sites``, ``.return_sites``, ``.smp_locks`` (``arch/x86/kernel/
alternative.c``, ``vmlinux.lds.S``) — ``s32`` each, site = ``&entry +
entry``. Retpoline sites are ``call``/``jmp``/``jcc`` rel32 to
``__x86_indirect_thunk_<reg>`` (5 or 6 bytes, 6 with the ``2e`` CS prefix of
``-mindirect-branch-cs-prefix``), return sites ``jmp __x86_return_thunk``;
the length of each is decoded from its bytes, as ``apply_retpolines()`` and
``apply_returns()`` do. ``.smp_locks`` points at a ``lock`` prefix (1 byte) and
is padded with zero entries to a page (``__smp_locks_end = ALIGN(PAGE_SIZE)``;
``alternatives_smp_lock()`` skips zero entries): trailing zeros are dropped.

``__jump_table`` (``include/linux/jump_label.h``, ``arch/x86/include/asm/
jump_label.h``) — inside ``.rodata`` between ``__start___jump_table`` and
``__stop___jump_table``: ``struct jump_entry { s32 code; s32 target; s64 key;
}``, each relative to its own field. ``key & 3`` are flags: bit 0 = branch
(``JUMP_TYPE_TRUE``); bit 1 is, in the ELF, the ``2 | branch`` marker of
``CONFIG_HAVE_JUMP_LABEL_HACK`` (a ``jmp`` that objtool turned into a NOP), and
at run time the kernel reuses it as "in init text". The site is 2 or 5 bytes
(``arch_jump_entry_size()``: ``jmp``/NOP of either size).

``.static_call_sites`` (``include/linux/static_call_types.h``) — inside
``.rodata`` between ``__start_static_call_sites``/``__stop_static_call_sites``:
``struct static_call_site { s32 addr; s32 key; }``, relative; ``key & 3``:
``STATIC_CALL_SITE_TAIL`` = 1, ``STATIC_CALL_SITE_INIT`` = 2. The site is a
``call``/``jmp`` rel32 (5 bytes).

``__mcount_loc`` (``include/asm-generic/vmlinux.lds.h``, ``kernel/trace/
ftrace.c``) — in ``.init.data`` between ``__start_mcount_loc`` and
``__stop_mcount_loc``: absolute ``u64`` addresses of the 5-byte ``call
__fentry__`` (or NOP5) at function entry; zero entries are skipped, as
``ftrace_process_locs()`` does.

``.call_sites`` (``arch/x86/kernel/callthunks.c``, 6.2+) — ``s32`` each, site =
``&entry + entry``: every direct ``call`` that ``callthunks_patch_builtin_calls()``
redirects to the callee's call-depth accounting thunk, which it only does when
``X86_FEATURE_CALL_DEPTH`` is set (``retbleed=stuff``); 5 bytes.

``.ibt_endbr_seal`` (objtool ``--ibt``, ``arch/x86/kernel/alternative.c``) —
``s32`` each, site = ``&entry + entry``: the ``endbr64`` (``f3 0f 1e fa``) of a
function whose address is never taken. ``apply_seal_endbr()`` (6.2+;
``apply_ibt_endbr()`` before) overwrites each with the 4-byte ``osp nopl
(%rax)`` (``66 0f 1f 00``, ``gen_endbr_poison()``); in 6.12 on every CPU, IBT or not.

``runtime_ptr_<sym>`` / ``runtime_shift_<sym>`` (``arch/x86/include/asm/
runtime-const.h``, 6.11+) — one section per constant, ``s32`` each, site =
``&entry + entry``: the ``imm64`` of a ``mov $0x0123456789abcdef,%reg`` (8
bytes) or the ``imm8`` of a ``shr $12,%reg`` (1 byte) that ``runtime_const_init()``
fills with the value of ``sym`` (``dentry_hashtable``, ``d_hash_shift`` in
``dcache_init*()``, ``USER_PTR_MAX`` right after ``alternative_instructions()``).
Table ``runtime_consts``; a site's ``key`` is the address of ``sym``.

From 6.8 there is no ``.parainstructions``: a pv call is an ``alt_instr`` with
``ALT_FLAG_DIRECT_CALL`` (``flags`` bit 1, ``ft_flags`` bit 17) on
``X86_FEATURE_ALWAYS`` whose original instruction is ``call *pv_ops+8*slot(%rip)``
(``ff 15 disp32``), the compiler's indirect call; ``alt_replace_call()`` turns
it into ``call <the op>`` (NOPs for ``nop_func``). The ``paravirt`` table of such a
kernel is those entries (``index`` = the ``.altinstructions`` index, ``flags`` =
``ft_flags``, ``feature`` = ``X86_FEATURE_ALWAYS``), named by slot like the 6.1
table; they stay in ``alternatives`` too (with no ``op``), since that is what
the kernel patches them from.

Struct sizes and member offsets are taken from the kernel's own BTF when it
has one (``struct alt_instr``, ``paravirt_patch_site``, ``jump_entry``,
``static_call_site``); the version-keyed :data:`LAYOUTS` are the fallback for a
kernel without ``.BTF``. Either way a section whose size is not a multiple of
the entry size is an error.

The tables are read with :func:`struct.iter_unpack` on the section bytes (a
memory map of the file); pyelftools only reads the section headers.
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import struct
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Self

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..domain import TABLES
from ..errors import ImageError, UnsupportedError
from . import btf as btf_mod
from . import orc as orc_mod
from .cpufeatures import TABLES as FEATURE_TABLES
from .cpufeatures import FeatureNames, kernel_feature_names, table_feature_names

# Where each table lives: an ELF section, or (for tables inside another section) a symbol pair.
SECTIONS = {
    "paravirt": ".parainstructions",
    "alternatives": ".altinstructions",
    "retpolines": ".retpoline_sites",
    "returns": ".return_sites",
    "smp_locks": ".smp_locks",
    "jump_labels": "__jump_table",
    "static_calls": ".static_call_sites",
    "ftrace": "__mcount_loc",
    "call_sites": ".call_sites",
    "ibt_endbr_seal": ".ibt_endbr_seal",
    "runtime_consts": "runtime_ptr_*/runtime_shift_*",
}
# runtime-const.h: one section per constant, named after it; the site's length by kind.
RUNTIME_CONST_KINDS = {"runtime_ptr_": 8, "runtime_shift_": 1}
BOUNDS = {
    "jump_labels": ("__start___jump_table", "__stop___jump_table"),
    "static_calls": ("__start_static_call_sites", "__stop_static_call_sites"),
    "ftrace": ("__start_mcount_loc", "__stop_mcount_loc"),
}

_SHF_ALLOC, _SHF_EXECINSTR = 0x2, 0x4
_SHN_UNDEF = 0
_STT_NOTYPE, _STT_FUNC = 0, 2
_STB_LOCAL = 0

_U64 = (1 << 64) - 1
_NOP2 = b"\x66\x90"
_NOP5 = b"\x0f\x1f\x44\x00\x00"
_NO_BUG_WORDS = 1 << 20      # FeatureNames without names: every number printed as X86_FEATURE_(w*32+b)
_ENDBR64 = b"\xf3\x0f\x1e\xfa"
_ENDBR_POISON = b"\x66\x0f\x1f\x00"      # gen_endbr_poison(): osp nopl (%rax)


def _open_elf(path: Path, stream: BinaryIO) -> ELFFile:
    try:
        elf = ELFFile(stream)
    except ELFError as err:
        raise ImageError(f"{path}: not an ELF file ({err}); give the vmlinux ELF, not a bzImage") from err
    if elf.elfclass != 64 or not elf.little_endian or elf["e_machine"] != "EM_X86_64":
        raise ImageError(f"{path}: a {elf.elfclass}-bit {elf['e_machine']} ELF, not an x86-64 vmlinux")
    return elf


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as err:
        raise ImageError(f"{path}: cannot open the vmlinux: {err.strerror}") from err


# --------------------------------------------------------------------------------------------------
# Symbols


# Linker-script symbols of vmlinux.lds.S that mark a place rather than name what is there.
_MARKERS = frozenset({"_text", "_stext", "_etext", "_sinittext", "_einittext", "_sdata", "_edata", "_end",
                      "__init_begin", "__init_end", "__bss_start", "__bss_stop", "__brk_base", "__brk_limit",
                      "_sbss", "_ebss", "__end_rodata", "__per_cpu_load"})


@dataclass(frozen=True)
class _Column:
    """The symbols that are places in the image, in symtab order (parallel lists)."""

    names: list[str] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    infos: list[int] = field(default_factory=list)       # st_info: bind << 4 | type
    ends: list[int] = field(default_factory=list)        # end of the symbol's section


@dataclass(frozen=True, eq=False)
class Symbols:
    """Function, object and untyped symbols of an ELF ``.symtab``, by name and by address.

    Reading 94k symbols takes ~0.1 s; the address index for :meth:`resolve` is
    built on first use (another ~0.1 s).
    """

    _by_name: dict[str, int] = field(default_factory=dict, repr=False)
    _places: _Column = field(default_factory=_Column, repr=False)
    source: str = ""

    @staticmethod
    def from_elf(path: Path) -> Symbols:
        """The symbols of ``path`` (empty when it has no ``.symtab``)."""
        with _open(path) as f:
            elf = _open_elf(path, f)
            try:
                symtab = elf.get_section_by_name(".symtab")
                if symtab is None or symtab["sh_type"] != "SHT_SYMTAB" or symtab["sh_entsize"] not in (0, 24):
                    return Symbols(source=str(path))
                strtab = elf.get_section(symtab["sh_link"])
                section_ends = [s["sh_addr"] + s["sh_size"] for s in elf.iter_sections()]
            except ELFError as err:
                raise ImageError(f"{path}: unreadable section headers ({err}); the ELF is truncated or corrupt") from err
            f.seek(symtab["sh_offset"])
            raw = f.read(symtab["sh_size"])
            f.seek(strtab["sh_offset"])
            strings = f.read(strtab["sh_size"])
        if len(raw) != symtab["sh_size"] or len(strings) != strtab["sh_size"]:
            raise ImageError(f"{path}: .symtab or .strtab runs past the end of the file; the ELF is truncated")
        if len(raw) % 24:
            raise ImageError(f"{path}: .symtab is {len(raw)} bytes, not a multiple of 24; the ELF is truncated")
        text = strings.decode("latin-1")   # one char per byte: string offsets stay valid
        find = text.find
        by_name: dict[str, int] = {}
        col = _Column()
        nsec = len(section_ends)
        for st_name, st_info, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", raw):
            if (st_info & 0xF) > _STT_FUNC or shndx == _SHN_UNDEF or not st_name:
                continue
            name = text[st_name:find("\0", st_name)]
            if st_info >> 4 != _STB_LOCAL or name not in by_name:
                by_name[name] = value       # a global wins over a local of the same name
            if shndx < nsec:                # SHN_ABS and other reserved indexes are not places in the image
                col.names.append(name)
                col.values.append(value)
                col.sizes.append(size)
                col.infos.append(st_info)
                col.ends.append(section_ends[shndx])
        return Symbols(by_name, col, str(path))

    def merged(self, other: Symbols, source: str = "") -> Symbols:
        """These symbols and ``other``'s (a module's over vmlinux's): a name in both keeps this one's address."""
        a, b = self._places, other._places
        col = _Column(a.names + b.names, a.values + b.values, a.sizes + b.sizes, a.infos + b.infos, a.ends + b.ends)
        return Symbols({**other._by_name, **self._by_name}, col, source or f"{self.source} + {other.source}")

    @staticmethod
    def from_dict(addresses: Mapping[str, int], source: str = "") -> Symbols:
        """Symbols from name -> address (global functions without a size)."""
        col = _Column(list(addresses), list(addresses.values()), [0] * len(addresses),
                      [0x12] * len(addresses), [_U64] * len(addresses))
        return Symbols(dict(addresses), col, source)

    @cached_property
    def _index(self) -> tuple[array[int], array[int], list[str]]:
        """Sorted unique addresses, where each one's cover ends, and the symbol chosen for it."""
        col = self._places
        values, sizes = col.values, col.sizes
        order = sorted(range(len(values)), key=values.__getitem__)
        addrs, ends, names = array("Q"), array("Q"), []
        n = len(order)
        i = 0
        while i < n:
            value = values[order[i]]
            j = i + 1
            while j < n and values[order[j]] == value:
                j += 1
            best = order[i] if j == i + 1 else min(order[i:j], key=self._rank)
            # A sized symbol covers its size; an unsized one its section up to the next symbol (bisect stops there).
            size = sizes[best]
            addrs.append(value)
            ends.append(value + size if size else max(col.ends[best], value))
            names.append(col.names[best])
            i = j
        return addrs, ends, names

    def _rank(self, k: int) -> tuple[bool, bool, bool, bool, str]:
        """Among symbols at one address the least wins: sized, typed, global, not a marker, first name."""
        col = self._places
        name, info = col.names[k], col.infos[k]
        marker = name in _MARKERS or name.startswith(("__start_", "__stop_")) or name.endswith(("_start", "_end"))
        return (col.sizes[k] == 0, info & 0xF == _STT_NOTYPE, info >> 4 == _STB_LOCAL, marker, name)

    def address(self, name: str) -> int | None:
        return self._by_name.get(name)

    def extent(self, name: str) -> int | None:
        """Bytes ``name`` covers: its size, or (unsized, as kallsyms gives them) up to the next symbol."""
        addr = self._by_name.get(name)
        if addr is None:
            return None
        col = self._places
        # One pass, no index: this is asked for a handful of names, before (or without) any resolve().
        size = next((col.sizes[k] for k, n in enumerate(col.names) if n == name and col.values[k] == addr), 0)
        if size:
            return size
        later = [v for v in col.values if v > addr]
        return min(later) - addr if later else None

    def with_prefix(self, prefix: str) -> list[tuple[str, int]]:
        """(name, address) of every symbol whose name starts with ``prefix``, by address."""
        return sorted(((n, a) for n, a in self._by_name.items() if n.startswith(prefix)), key=lambda x: x[1])

    def spans(self) -> list[tuple[str, int, int]]:
        """(name, start, end) of every place :meth:`resolve` names, by address; each ends at the next one's start."""
        addrs, ends, names = self._index
        n = len(addrs)
        return [(names[i], addrs[i], min(ends[i], addrs[i + 1]) if i + 1 < n else ends[i]) for i in range(n)]

    def resolve(self, addr: int) -> tuple[str, int] | None:
        """The symbol covering ``addr`` and the offset into it, or None.

        A sized symbol covers ``[value, value+size)``; an unsized one (all of them
        when recovered from kallsyms) covers up to the next symbol or the end of
        its section. Of several symbols at one address the sized, typed, global
        one wins, and markers (``__start_*``, ``__stop_*``, ``*_start``, ``*_end``,
        ``_stext``-style) lose to a real name; ties go to the first name in sort order.
        """
        addrs, ends, names = self._index
        i = bisect_right(addrs, addr) - 1
        if i < 0 or addr >= ends[i]:
            return None
        return names[i], addr - addrs[i]

    def format(self, addr: int) -> str:
        """``"xen_save_fl_direct"``, ``"apply_paravirt+0x1d4"``, or ``"0xffffffff81000000"`` when unknown."""
        hit = self.resolve(addr)
        if hit is None:
            return f"{addr:#x}"
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    def __len__(self) -> int:
        return len(self._by_name)

    def __bool__(self) -> bool:
        return bool(self._by_name)


# --------------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class Layout:
    """Entry sizes and formats of the patch tables for one range of kernel versions."""

    name: str                      # "5.13-6.2"
    first: tuple[int, int]         # first version it applies to
    last: tuple[int, int] | None   # last version, None: open-ended
    pv_entry: int | None           # struct paravirt_patch_site; None: kernels without .parainstructions
    alt_entry: int                 # struct alt_instr
    alt_format: str                # its struct format: instr_offset, repl_offset, feature field, instrlen, replen[, padlen]
    alt_not: int                   # the "patch when absent" bit in the feature field
    alt_feature_mask: int          # the feature number bits of that field
    jump_entry: int = 16           # struct jump_entry (relative: s32, s32, s64)
    static_call_entry: int = 8     # struct static_call_site
    mcount_entry: int = 8          # __mcount_loc: u64
    pv_format: str = "<QBB6x"      # instr, type, len
    alt_direct_call: int | None = None   # ALT_FLAG_DIRECT_CALL in the feature field (6.8+)
    source: str = "by version"     # or "from BTF"


LAYOUTS = (
    Layout("5.2-5.12", (5, 2), (5, 12), 16, 13, "<iiHBBB", 0x8000, 0x7FFF),
    Layout("5.13-6.2", (5, 13), (6, 2), 16, 12, "<iiHBB", 0x8000, 0x7FFF),
    Layout("6.3-6.7", (6, 3), (6, 7), 16, 14, "<iiIBB", 1 << 16, 0xFFFF),
    Layout("6.8+", (6, 8), None, None, 14, "<iiIBB", 1 << 16, 0xFFFF, alt_direct_call=1 << 17),
)

_VERSION = re.compile(r"(?:^|\s)(\d+)\.(\d+)")


def kernel_version(release: str) -> tuple[int, int]:
    """(6, 1) from ``"6.1.0-56-amd64 (debian-kernel@…) #1 SMP …"`` or ``"Linux version 6.1.0-56-amd64"``."""
    m = _VERSION.search(release.strip())
    if m is None:
        raise ImageError(f"cannot tell the kernel version from the release {release!r}; "
                         "give a release such as '6.1.0-56-amd64'")
    return int(m.group(1)), int(m.group(2))


_DISTRO_VERSION = re.compile(r"\b(?:Debian|Ubuntu)\s+(\d+)\.(\d+)\.(\d+)")


def upstream_version(release: str) -> tuple[int, ...]:
    """(6, 1, 192) from ``"6.1.0-56-amd64 (…) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (…)"``.

    A distribution's ABI name keeps the stable release at 0 ("6.1.0-56"); the package
    version in the banner has it. Without one: the release's own numbers.
    """
    found = _DISTRO_VERSION.findall(release.partition("#")[2])    # after "#1 SMP …": not the compiler's
    if found:
        return tuple(int(x) for x in found[-1])
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if m is None:
        raise ImageError(f"cannot tell the kernel version from the release {release!r}; "
                         "give a release such as '6.1.0-56-amd64'")
    return tuple(int(x) for x in m.groups() if x is not None)


def layout_for(release: str) -> Layout:
    """The table layout of a kernel release (``"6.1.0-56-amd64 …"`` -> the 5.13-6.2 layout)."""
    version = kernel_version(release)
    for layout in LAYOUTS:
        if layout.first <= version and (layout.last is None or version <= layout.last):
            return layout
    raise UnsupportedError(f"kernel {version[0]}.{version[1]}: patch-site layouts are known from 5.2 on only")


_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _format(layout: btf_mod.StructLayout, members: Sequence[tuple[str, int, bool]]) -> str:
    """A struct format reading ``members`` (name, size, signed) at their BTF offsets, padded to the struct's size."""
    out, at = "<", 0
    for name, size, signed in members:
        f = layout.field(name)
        if f is None or f.size != size or f.offset < at:
            shown = "missing" if f is None else f"{f.size} bytes at offset {f.offset}"
            raise ImageError(f"BTF struct {layout.name}: member {name} is {shown}; this reader knows it as "
                             f"{size} bytes, in order: a layout it does not know is an error, not a guess")
        out += "x" * (f.offset - at) + (_CODES[size].lower() if signed else _CODES[size])
        at = f.offset + size
    if at > layout.size:
        raise ImageError(f"BTF struct {layout.name}: {layout.size} bytes, but its members end at {at}")
    return out + "x" * (layout.size - at)


def layout_from_btf(btf: btf_mod.Btf, base: Layout) -> tuple[Layout, list[str]]:
    """``base`` with every entry the kernel's BTF describes taken from it; notes on what came from where.

    ``struct alt_instr``: ``instr_offset``, ``repl_offset``, then ``ft_flags`` (u32,
    6.3+: feature in bits 0-15, ALT_FLAG_NOT at bit 16) or ``cpuid`` (u16: ALT_NOT at
    bit 15), ``instrlen``, ``replacementlen``. ``struct paravirt_patch_site``:
    ``instr`` (u64), ``type``, ``len``. ``struct jump_entry`` and ``struct
    static_call_site`` must be the relative layouts this reader decodes.
    """
    changes: dict[str, Any] = {}
    found: list[str] = []
    missing: list[str] = []
    alt = btf_mod.struct_layout(btf, "alt_instr")
    if alt is None:
        missing.append("alt_instr")
    else:
        ft = alt.field("ft_flags")
        if ft is not None and ft.size == 4:
            feature, changes["alt_not"], changes["alt_feature_mask"] = ("ft_flags", 4, False), 1 << 16, 0xFFFF
        else:
            feature, changes["alt_not"], changes["alt_feature_mask"] = ("cpuid", 2, False), 0x8000, 0x7FFF
        members = [("instr_offset", 4, True), ("repl_offset", 4, True), feature,
                   ("instrlen", 1, False), ("replacementlen", 1, False)]
        changes["alt_format"] = _format(alt, members)
        changes["alt_entry"] = alt.size
        found.append(f"alt_instr {alt.size} B")
    pv = btf_mod.struct_layout(btf, "paravirt_patch_site")
    if pv is not None:
        changes["pv_format"] = _format(pv, [("instr", 8, False), ("type", 1, False), ("len", 1, False)])
        changes["pv_entry"] = pv.size
        found.append(f"paravirt_patch_site {pv.size} B")
    for name, key, members in (
            ("jump_entry", "jump_entry", [("code", 4, True), ("target", 4, True), ("key", 8, True)]),
            ("static_call_site", "static_call_entry", [("addr", 4, True), ("key", 4, True)])):
        got = btf_mod.struct_layout(btf, name)
        if got is None:
            missing.append(name)
            continue
        fmt = _format(got, members)
        if fmt.rstrip("x") != "<" + "".join(_CODES[size].lower() for _, size, _ in members):
            raise ImageError(f"BTF struct {name}: its members are not packed from offset 0 ({fmt}); this reader "
                             "decodes only that layout")
        changes[key] = got.size
        found.append(f"{name} {got.size} B")
    notes = [f"layouts: from BTF: struct {', struct '.join(found)}"] if found else []
    if missing:
        notes.append(f"layouts: BTF has no struct {', '.join(missing)}; the {base.name} layout by version for it")
    if not found:
        return base, notes
    return dataclasses.replace(base, source="from BTF", **changes), notes


# --------------------------------------------------------------------------------------------------
# Sections and sites


@dataclass(frozen=True)
class Section:
    """An ELF section header. ``offset`` is the file offset; SHT_NOBITS sections have no bytes."""

    name: str
    address: int
    size: int
    offset: int
    nobits: bool = False
    flags: int = 0

    @property
    def executable(self) -> bool:
        return bool(self.flags & _SHF_EXECINSTR)

    @property
    def alloc(self) -> bool:
        return bool(self.flags & _SHF_ALLOC)

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class Site:
    """One patch site: where the kernel may rewrite its text, and what the ELF holds there."""

    table: str                  # one of TABLES
    index: int                  # entry index in its table
    address: int                # the patch site (run-time == link address: nokaslr / PV dom0)
    length: int                 # bytes the patch may write (0: the kernel would not patch it)
    original: bytes             # the ELF bytes at [address, address+length)
    section: str                # the section holding the site: ".text", ".init.text", …
    op: str | None = None       # paravirt: the pv_ops member, "irq.save_fl" (None without BTF)
    slot: int | None = None     # paravirt: the entry's type = pv_ops slot
    feature: str | None = None  # alternatives: "X86_FEATURE_XENPV", "!X86_FEATURE_XENPV", "X86_FEATURE_(8*32+16)"
    replacement: bytes | None = None         # alternatives: replacement bytes as in the ELF (unrelocated)
    replacement_address: int | None = None   # alternatives
    target: int | None = None   # jump_labels: jump target; static_calls: the key; retpolines/returns: branch target
    flags: int | None = None    # jump_labels/static_calls: key & 3; alternatives: the raw cpuid / ft_flags
    key: int | None = None      # jump_labels/static_calls: the static key / static call key
    module: str | None = None   # the loaded module whose table holds the site; None: vmlinux

    def to_json(self) -> dict[str, object]:
        def hx(v: int | None) -> str | None:
            return None if v is None else f"{v:#x}"

        module = {"module": self.module} if self.module is not None else {}
        return {**module,
            "table": self.table, "index": self.index, "address": hx(self.address), "length": self.length,
            "original": self.original.hex(), "section": self.section, "op": self.op, "slot": self.slot,
            "feature": self.feature, "replacement": None if self.replacement is None else self.replacement.hex(),
            "replacement_address": hx(self.replacement_address), "target": hx(self.target), "flags": self.flags,
            "key": hx(self.key),
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Site:
        """A Site back from ``to_json()`` (a saved sites-<capture>.jsonl.gz line)."""
        def num(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(str(value))

        def hexnum(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(str(value), 16)

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        replacement = data.get("replacement")
        return Site(table=str(data["table"]), index=int(str(data["index"])), address=int(str(data["address"]), 16),
                    length=int(str(data["length"])), original=bytes.fromhex(str(data["original"])),
                    section=str(data["section"]), op=text("op"), slot=num("slot"), feature=text("feature"),
                    replacement=None if replacement is None else bytes.fromhex(str(replacement)),
                    replacement_address=hexnum("replacement_address"), target=hexnum("target"),
                    flags=num("flags"), key=hexnum("key"), module=text("module"))


_SITE_DEFAULTS = {f.name: f.default for f in fields(Site) if f.default is not MISSING}


def _site(**values: Any) -> Site:
    """A Site with its state set directly: the frozen dataclass's __init__ costs 2-3x as much, and a
    kernel has 130k sites. The same object as ``Site(**values)`` (the tests check that); the hot
    loops of Vmlinux do the same inline from a per-table template."""
    site: Site = object.__new__(Site)
    object.__setattr__(site, "__dict__", {**_SITE_DEFAULTS, **values})
    return site


class _NeedsSymbols(ImageError):
    """A table whose bounds are symbols, in an ELF without them."""


def _decode_branch(code: bytes) -> tuple[int, int | None] | None:
    """(length, displacement) of a direct call/jmp/jcc (rel8 or rel32, after 2e/3e prefixes); (1, None) for ret."""
    i = 0
    while i < len(code) and i < 4 and code[i] in (0x2E, 0x3E):
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if op in (0xE8, 0xE9) and len(code) >= i + 5:
        return i + 5, int.from_bytes(code[i + 1:i + 5], "little", signed=True)
    if op == 0x0F and len(code) >= i + 6 and 0x80 <= code[i + 1] <= 0x8F:
        return i + 6, int.from_bytes(code[i + 2:i + 6], "little", signed=True)
    if (op == 0xEB or 0x70 <= op <= 0x7F) and len(code) >= i + 2:
        return i + 2, int.from_bytes(code[i + 1:i + 2], "little", signed=True)
    if op == 0xC3:
        return i + 1, None
    return None


def branch_length(code: bytes) -> int | None:
    """Length of the direct call/jmp/jcc (or ret) that ``code`` starts with, or None."""
    got = _decode_branch(code)
    return None if got is None else got[0]


def branch_target(address: int, code: bytes) -> int | None:
    """Where the direct call/jmp/jcc at ``address`` goes, or None if ``code`` does not start with one."""
    got = _decode_branch(code)
    if got is None or got[1] is None:
        return None
    return (address + got[0] + got[1]) & _U64


class Vmlinux:
    """The patch-site tables of a vmlinux ELF (with or without a symbol table)."""

    def __init__(self, path: Path, symbols: Symbols | None = None, release: str | None = None) -> None:
        self.path = Path(path)
        self.notes: list[str] = []
        f = _open(self.path)
        try:
            elf = _open_elf(self.path, f)
            self.sections: dict[str, Section] = {}
            try:
                for s in elf.iter_sections():
                    if s.name and s.name not in self.sections:
                        self.sections[s.name] = Section(s.name, s["sh_addr"], s["sh_size"], s["sh_offset"],
                                                        s["sh_type"] == "SHT_NOBITS", s["sh_flags"])
            except ELFError as err:
                raise ImageError(f"{self.path}: unreadable section headers ({err}); the ELF is truncated or "
                                 "corrupt") from err
            size = self._file_size(f)
            self._map: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        finally:
            f.close()
        for sec in self.sections.values():
            if sec.alloc and not sec.nobits and sec.offset + sec.size > size:
                raise ImageError(f"{self.path}: section {sec.name} ends at file offset {sec.offset + sec.size:#x}, "
                                 f"past the end of the {size}-byte file; the vmlinux is truncated: extract it again")
        placed = sorted((s for s in self.sections.values() if s.alloc and s.address and s.size),
                        key=lambda s: s.address)
        self._placed = placed
        self._starts = [s.address for s in placed]
        # (start, end, file offset, name) of the sections with bytes, for _locate().
        self._spans = [(s.address, s.end, s.offset, s.name) for s in placed if not s.nobits]
        self._span_starts = [span[0] for span in self._spans]
        self._hit: tuple[int, int, int, str] = (0, 0, 0, "")
        self.symbols = symbols if symbols is not None else Symbols.from_elf(self.path)
        if release is None:
            release = self._banner_release()
            if release is None:
                release = "6.1"
                self._note("release: no 'Linux version' banner in the ELF and none given; assuming 6.1 layouts")
        self.release = release
        self.version = kernel_version(release)
        self.version_layout = layout_for(release)
        self._cache: dict[str, list[Site]] = {}
        self._pv_names: dict[int, str] | None = None
        self._pv_ops: int | None = None
        self.module_name: str | None = None

    @classmethod
    def module(cls, path: Path, name: str, parent: Vmlinux, symbols: Symbols) -> Vmlinux:
        """The tables of a loaded module, linked at its run-time addresses (:func:`framework.elf.ko.link`)
        into the ELF at ``path``: read with ``parent``'s layouts, BTF, feature and pv-op names (a module's
        own .BTF is split BTF, relative to vmlinux's), its sites tagged with ``name``."""
        image = cls(path, symbols, parent.release)
        image.module_name = name
        image.__dict__.update(layout=parent.layout, btf=parent.btf, features=parent.features)
        image._pv_names = parent.pv_op_names()
        image._pv_ops = parent.pv_ops_address()
        return image

    @cached_property
    def layout(self) -> Layout:
        """The table layouts: from the kernel's BTF where it has one, else by version (:data:`LAYOUTS`)."""
        if self.btf is None:
            self._note(f"layouts: no .BTF; the {self.version_layout.name} layout by version")
            return self.version_layout
        layout, notes = layout_from_btf(self.btf, self.version_layout)
        for text in notes:
            self._note(text)
        return layout

    @cached_property
    def orc(self) -> orc_mod.OrcTable:
        """The ORC unwind table (``.orc_unwind_ip``, ``.orc_unwind``), its entry layout from BTF, else from
        ``.orc_header`` (6.4+), else by version; ImageError when the kernel has none (no CONFIG_UNWINDER_ORC)."""
        where = f"{self.module_name or 'vmlinux'} {self.path}"
        ips, unwind = self.sections.get(".orc_unwind_ip"), self.sections.get(".orc_unwind")
        if ips is None or unwind is None or ips.nobits or unwind.nobits:
            raise ImageError(f"{where}: no .orc_unwind_ip/.orc_unwind sections: the kernel was built without the "
                             "ORC unwinder (CONFIG_UNWINDER_ORC=y), so there is no ORC data to check")
        fmt = orc_mod.OrcFormat.from_btf(self.btf, self.version) if self.btf is not None else None
        header = self.sections.get(".orc_header")
        if fmt is None and header is not None and not header.nobits:
            fmt = orc_mod.OrcFormat.from_header(self._bytes(header))
        if fmt is None:
            fmt = orc_mod.OrcFormat.for_version(self.version)
            self._note(f"orc: no BTF struct orc_entry; the entry layout of {fmt.kernels} by version")
        lookup = self.sections.get(".orc_lookup")
        return orc_mod.OrcTable.parse((ips.address, self._bytes(ips)), (unwind.address, self._bytes(unwind)), fmt,
                                      where, (lookup.address, self._bytes(lookup))
                                      if lookup is not None and not lookup.nobits else None)

    def _bytes(self, sec: Section) -> bytes:
        return bytes(self._map[sec.offset:sec.offset + sec.size])

    @cached_property
    def features(self) -> FeatureNames:
        """CPU feature names: from the kernel's ``x86_cap_flags[]``/``x86_bug_flags[]``, else the 6.1 table
        for a 6.1 kernel, else none (numbers only)."""
        got = self._kernel_features()
        if got is not None:
            return got
        line = f"{self.version[0]}.{self.version[1]}"
        if line in FEATURE_TABLES:
            self._note(f"features: no x86_cap_flags in the symbols; names from the {line} table")
            return table_feature_names(line)
        return FeatureNames(_NO_BUG_WORDS, {}, "none")

    def _kernel_features(self) -> FeatureNames | None:
        cap, bug = self._pointer_array("x86_cap_flags"), self._pointer_array("x86_bug_flags")
        if cap is None or bug is None:
            return None
        ncap = len(cap) // 32
        total = self._capability_words()
        if total is not None:
            # struct cpuinfo_x86.x86_capability[NCAPINTS + NBUGINTS]: the arrays' extents may include padding
            nbug = len(bug) // 32
            if total - nbug < 1 or (total - nbug) * 32 > len(cap):
                self._note(f"features: x86_cap_flags ({len(cap)} entries) and x86_bug_flags ({len(bug)}) do not "
                           f"fit NCAPINTS + NBUGINTS = {total} from BTF; feature names from the table")
                return None
            ncap = total - nbug
        try:
            line = f"{self.version[0]}.{self.version[1]}"
            names = kernel_feature_names([self._c_string(p) for p in cap[:ncap * 32]],
                                         [self._c_string(p) for p in bug], line if line in FEATURE_TABLES else None)
        except ImageError as err:
            self._note(f"features: {err}; feature names from the table")
            return None
        self._note(f"features: names from the kernel's {names.source} (NCAPINTS {ncap})")
        return names

    def _capability_words(self) -> int | None:
        """NCAPINTS + NBUGINTS: the length of ``struct cpuinfo_x86.x86_capability`` in BTF."""
        if self.btf is None:
            return None
        got = btf_mod.struct_layout(self.btf, "cpuinfo_x86")
        f = got.field("x86_capability") if got is not None else None
        return None if f is None or f.size % 4 else f.size // 4

    def _pointer_array(self, name: str) -> list[int] | None:
        addr, size = self.symbols.address(name), self.symbols.extent(name)
        if addr is None or not size:
            return None
        loc = self._locate(addr, size - size % 8)
        if loc is None:
            return None
        return [p for (p,) in struct.iter_unpack("<Q", self._map[loc[0]:loc[0] + size - size % 8])]

    def _c_string(self, pointer: int) -> str | None:
        if not pointer:
            return None
        span = self._span(pointer, 1)
        if span is None:
            raise ImageError(f"a string pointer {pointer:#x} points outside every section with bytes")
        off = span[2] + pointer - span[0]
        raw = bytes(self._map[off:min(off + 64, span[2] + span[1] - span[0])]).split(b"\0", 1)[0]
        if not raw or not raw.isascii():
            raise ImageError(f"the string at {pointer:#x} is not a feature name")
        return raw.decode("ascii")

    @staticmethod
    def _file_size(f: BinaryIO) -> int:
        f.seek(0, 2)
        return f.tell()

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _banner_release(self) -> str | None:
        sec = self.sections.get(".rodata")
        where = (sec.offset, sec.offset + sec.size) if sec and not sec.nobits else (0, len(self._map))
        pos = self._map.find(b"Linux version ", *where)
        while pos >= 0:
            end = pos + 14
            word = bytes(self._map[end:end + 64]).split(b" ", 1)[0].split(b"\0", 1)[0]
            if word[:1].isdigit():
                return word.decode("ascii", "replace")
            pos = self._map.find(b"Linux version ", end, where[1])
        return None

    # ---- bytes by address

    def text_sections(self) -> list[Section]:
        """The executable allocated sections (.text, .init.text, .altinstr_replacement, …)."""
        return [s for s in self._placed if s.executable]

    def section_at(self, address: int) -> Section | None:
        """The allocated section whose addresses hold ``address`` (sections at address 0, like percpu, never)."""
        i = bisect_right(self._starts, address) - 1
        while i >= 0:           # nearly always the first one; nested or overlapping headers are rare
            if address < self._placed[i].end:
                return self._placed[i]
            i -= 1
        return None

    def _span(self, address: int, length: int) -> tuple[int, int, int, str] | None:
        """(start, end, file offset, name) of the section with bytes that holds ``[address, address+length)``."""
        span = self._hit
        if span[0] <= address and address + length <= span[1]:
            return span
        i = bisect_right(self._span_starts, address) - 1
        while i >= 0:           # nearly always the first one; nested or overlapping headers are rare
            span = self._spans[i]
            if address + length <= span[1]:
                self._hit = span
                return span
            i -= 1
        return None

    def _locate(self, address: int, length: int) -> tuple[int, int, str] | None:
        """(file offset, section end, section name) for ``[address, address+length)`` inside one section with bytes."""
        span = self._span(address, length)
        return None if span is None else (span[2] + address - span[0], span[1], span[3])

    def read(self, address: int, length: int) -> bytes:
        """The ELF bytes at ``[address, address+length)``, within one section that has bytes."""
        got = self._locate(address, length) if length >= 0 else None
        if got is None:
            raise ImageError(f"{self.path}: {address:#x}+{length} is not inside one section with bytes; "
                             "is the address from this vmlinux?")
        return self._map[got[0]:got[0] + length]

    def _outside(self, table: str, index: int, address: int, length: int) -> ImageError:
        return ImageError(f"{self.path}: {table} entry {index} points at {address:#x}+{length}, outside any "
                          f"section with bytes; the {self.layout.name} layout {self.layout.source} does not fit kernel "
                          f"{self.release}")

    # ---- tables

    def table_bounds(self, table: str) -> tuple[int, int, str] | None:
        """(start address, size, where) of a table, None when this kernel has no such table."""
        if table not in SECTIONS:
            raise ImageError(f"unknown patch table {table!r}; the tables are: {', '.join(TABLES)}")
        if table == "runtime_consts":
            secs = self._runtime_const_sections()
            if not secs:
                return None
            return secs[0].address, secs[0].size, f"section {secs[0].name}"
        name = SECTIONS[table]
        sec = self.sections.get(name)
        if sec is not None and not sec.nobits:
            return sec.address, sec.size, f"section {name}"
        if table in BOUNDS and self.module_name is None:     # a module's tables are sections of their own
            lo_name, hi_name = BOUNDS[table]
            lo, hi = self.symbols.address(lo_name), self.symbols.address(hi_name)
            if lo is None or hi is None:
                missing = lo_name if lo is None else hi_name
                if not self.symbols:
                    raise _NeedsSymbols(f"{table}: no symbols for {missing}; table skipped "
                                        "(give a vmlinux with a symbol table)")
                return None
            if hi < lo:
                raise ImageError(f"{self.path}: {hi_name} {hi:#x} lies below {lo_name} {lo:#x}; wrong symbols?")
            return lo, hi - lo, f"{lo_name}..{hi_name}"
        return None

    def _entries(self, table: str, entry: int, pad: bool = False) -> tuple[int, bytes] | None:
        bounds = self.table_bounds(table)
        if bounds is None:
            self._note(f"{table}: no {SECTIONS[table]} in this kernel; table empty")
            return None
        start, size, where = bounds
        data = self.read(start, size) if size else b""
        if pad:
            n = (len(data.rstrip(b"\0")) + 3) // 4 * 4
            if n != size:
                self._note(f"{table}: {(size - n) // 4} zero entries of page padding at the end of {where} dropped")
            data = data[:n]
        if len(data) % entry:
            raise ImageError(f"{self.path}: {where} is {len(data)} bytes, not a multiple of the {entry}-byte entry "
                             f"of the {self.layout.name} layout {self.layout.source} (kernel {self.release}); a layout that does not "
                             "fit is an error, not a guess: give the right release")
        return start, data

    def sites(self, table: str) -> list[Site]:
        """The sites of one table, in table order (cached)."""
        if table not in SECTIONS:
            raise ImageError(f"unknown patch table {table!r}; the tables are: {', '.join(TABLES)}")
        if table not in self._cache:
            found = getattr(self, f"_read_{table}")()
            if self.module_name is not None:
                found = [_site(**{**s.__dict__, "module": self.module_name}) for s in found]
            self._cache[table] = found
        return self._cache[table]

    def all_sites(self, tables: Sequence[str] = TABLES) -> dict[str, list[Site]]:
        """Every table asked for; one that needs symbols this ELF lacks is left out, with a note."""
        out: dict[str, list[Site]] = {}
        for table in tables:
            try:
                out[table] = self.sites(table)
            except _NeedsSymbols as err:
                self._note(str(err))
        return out

    def _read_paravirt(self) -> list[Site]:
        sec = self.sections.get(SECTIONS["paravirt"])
        if (sec is None or self.layout.pv_entry is None) and self.layout.alt_direct_call is not None:
            return self._pv_from_alternatives()
        if self.layout.pv_entry is None:
            self._note(f"paravirt: kernel {self.version[0]}.{self.version[1]} has no .parainstructions "
                       "(pv calls are alternatives from 6.8 on)")
            return []
        got = self._entries("paravirt", self.layout.pv_entry)
        if got is None:
            return []
        names = self.pv_op_names()
        m, locate = self._map, self._locate
        out = []
        for i, (instr, slot, length) in enumerate(struct.iter_unpack(self.layout.pv_format, got[1])):
            loc = locate(instr, length)
            if loc is None:
                raise self._outside("paravirt", i, instr, length)
            out.append(_site(table="paravirt", index=i, address=instr, length=length,
                             original=m[loc[0]:loc[0] + length], section=loc[2], op=names.get(slot), slot=slot))
        if names:
            unnamed = sorted({s.slot for s in out if s.op is None and s.slot is not None})
            if unnamed:
                self._note(f"paravirt: slots {unnamed} of .parainstructions have no name in BTF "
                           "struct paravirt_patch_template")
        return out

    def _pv_from_alternatives(self) -> list[Site]:
        """6.8+: the pv calls, as the ``alt_instr`` entries with ALT_FLAG_DIRECT_CALL at ``call *pv_ops+8*slot``."""
        flag = self.layout.alt_direct_call
        assert flag is not None
        calls = [s for s in self.sites("alternatives") if s.flags is not None and s.flags & flag]
        pv_ops = self.symbols.address("pv_ops")
        names = self.pv_op_names()
        limit = 8 * (max(names) + 1) if names else 8 * 256
        out, other = [], 0
        for s in calls:
            target = self.pv_call_target(s)
            slot = None
            if pv_ops is not None and target is not None and 0 <= target - pv_ops < limit and not (target - pv_ops) % 8:
                slot = (target - pv_ops) // 8
            elif pv_ops is not None:
                other += 1
                continue
            out.append(_site(**{**s.__dict__, "table": "paravirt", "slot": slot,
                                "op": names.get(slot) if slot is not None else None}))
        self._note(f"paravirt: kernel {self.version[0]}.{self.version[1]} has no .parainstructions; its "
                   f"{len(out)} pv calls are the .altinstructions entries with ALT_FLAG_DIRECT_CALL "
                   "(call *pv_ops+8*slot), named by slot")
        if pv_ops is None:
            self._note("paravirt: no pv_ops symbol; pv-op alternatives are not named")
        if other:
            self._note(f"paravirt: {other} ALT_FLAG_DIRECT_CALL entries do not call through pv_ops; left out")
        return out

    def _read_alternatives(self) -> list[Site]:
        lay = self.layout
        got = self._entries("alternatives", lay.alt_entry)
        if got is None:
            return []
        base, data = got
        m, locate = self._map, self._locate
        features = self.features
        out = []
        for i, entry in enumerate(struct.iter_unpack(lay.alt_format, data)):
            ioff, roff, ft, ilen, rlen = entry[:5]
            va = base + i * lay.alt_entry
            addr, raddr = va + ioff, va + 4 + roff
            loc, rloc = locate(addr, ilen), locate(raddr, rlen)
            if loc is None:
                raise self._outside("alternatives", i, addr, ilen)
            if rloc is None:
                raise self._outside("alternatives", i, raddr, rlen)
            feature = features.format(ft & lay.alt_feature_mask, bool(ft & lay.alt_not))
            out.append(_site(table="alternatives", index=i, address=addr, length=ilen,
                             original=m[loc[0]:loc[0] + ilen], section=loc[2], feature=feature,
                             replacement=m[rloc[0]:rloc[0] + rlen], replacement_address=raddr, flags=ft))
        return out

    def _read_relative(self, table: str, pad: bool = False) -> list[int]:
        got = self._entries(table, 4, pad)
        if got is None:
            return []
        base, data = got
        return [base + 4 * i + rel for i, (rel,) in enumerate(struct.iter_unpack("<i", data))]

    def _read_branches(self, table: str) -> list[Site]:
        # The hot loop of the two biggest tables (50k return sites): sites are built from a template state.
        m, new, setstate = self._map, object.__new__, object.__setattr__
        unpack_rel = struct.Struct("<i").unpack_from
        base = {**_SITE_DEFAULTS, "table": table}
        lo = hi = foff = 0
        sec = ""
        out = []
        odd = 0
        for i, addr in enumerate(self._read_relative(table)):
            if addr < lo or addr >= hi:
                span = self._span(addr, 1)
                if span is None:
                    raise self._outside(table, i, addr, 1)
                lo, hi, foff, sec = span
            off = foff + addr - lo
            op = m[off]
            if (op == 0xE8 or op == 0xE9) and hi - addr >= 5:      # call/jmp rel32: nearly all
                head = m[off:off + 5]
                n, target = 5, (addr + 5 + unpack_rel(m, off + 1)[0]) & _U64
            else:
                head = m[off:off + min(8, hi - addr)]
                got = _decode_branch(head)
                if got is None:
                    odd += 1
                    n, target = 0, None
                else:
                    n = got[0]
                    target = None if got[1] is None else (addr + n + got[1]) & _U64
            state = base.copy()
            state["index"], state["address"], state["length"] = i, addr, n
            state["original"], state["section"], state["target"] = head[:n], sec, target
            site = new(Site)
            setstate(site, "__dict__", state)
            out.append(site)
        if odd:
            self._note(f"{table}: {odd} sites are not a direct call/jmp/jcc; length 0 (the kernel warns and "
                       "leaves them alone)")
        return out

    def _fixed_sites(self, table: str, entries: Iterable[tuple[int, int]], length: int) -> list[Site]:
        """Sites of one length at (index, address), built from a template state (40k ftrace sites)."""
        m, new, setstate = self._map, object.__new__, object.__setattr__
        base = {**_SITE_DEFAULTS, "table": table, "length": length}
        lo = hi = foff = 0
        sec = ""
        out = []
        for i, addr in entries:
            if addr < lo or addr + length > hi:
                span = self._span(addr, length)
                if span is None:
                    raise self._outside(table, i, addr, length)
                lo, hi, foff, sec = span
            off = foff + addr - lo
            state = base.copy()
            state["index"], state["address"], state["original"], state["section"] = i, addr, m[off:off + length], sec
            site = new(Site)
            setstate(site, "__dict__", state)
            out.append(site)
        return out

    def _read_retpolines(self) -> list[Site]:
        return self._read_branches("retpolines")

    def _read_returns(self) -> list[Site]:
        return self._read_branches("returns")

    def _read_smp_locks(self) -> list[Site]:
        out = self._fixed_sites("smp_locks", enumerate(self._read_relative("smp_locks", pad=True)), 1)
        other = sum(1 for s in out if s.original not in (b"\xf0", b"\x3e"))
        if other:
            self._note(f"smp_locks: {other} sites hold neither a lock prefix (f0) nor ds (3e)")
        return out

    def _read_call_sites(self) -> list[Site]:
        return self._read_branches("call_sites")

    def _read_ibt_endbr_seal(self) -> list[Site]:
        out = self._fixed_sites("ibt_endbr_seal", enumerate(self._read_relative("ibt_endbr_seal")), 4)
        other = sum(1 for s in out if s.original not in (_ENDBR64, _ENDBR_POISON))
        if other:
            self._note(f"ibt_endbr_seal: {other} sites hold no endbr64 (poison_endbr() warns and skips them)")
        return out

    def _runtime_const_sections(self) -> list[Section]:
        return sorted((sec for sec in self.sections.values() if sec.name.startswith(tuple(RUNTIME_CONST_KINDS))
                       and not sec.nobits), key=lambda sec: sec.address)

    def _read_runtime_consts(self) -> list[Site]:
        secs = self._runtime_const_sections()
        if not secs:
            self._note("runtime_consts: no runtime_ptr_*/runtime_shift_* sections in this kernel; table empty")
            return []
        m, locate = self._map, self._locate
        out: list[Site] = []
        for sec in secs:
            prefix = next(p for p in RUNTIME_CONST_KINDS if sec.name.startswith(p))
            length, name = RUNTIME_CONST_KINDS[prefix], sec.name[len(prefix):]
            if sec.size % 4:
                raise ImageError(f"{self.path}: section {sec.name} is {sec.size} bytes, not a multiple of 4")
            data = self._map[sec.offset:sec.offset + sec.size]
            for j, (rel,) in enumerate(struct.iter_unpack("<i", data)):
                addr = sec.address + 4 * j + rel
                loc = locate(addr, length)
                if loc is None:
                    raise self._outside("runtime_consts", len(out), addr, length)
                out.append(_site(table="runtime_consts", index=len(out), address=addr, length=length,
                                 original=m[loc[0]:loc[0] + length], section=loc[2],
                                 key=self.symbols.address(name)))
        return out

    def _read_jump_labels(self) -> list[Site]:
        got = self._entries("jump_labels", self.layout.jump_entry)
        if got is None:
            return []
        base, data = got
        m, locate = self._map, self._locate
        out = []
        odd = 0
        for i, (code, target, key) in enumerate(struct.iter_unpack("<iiq", data)):
            va = base + 16 * i
            addr = va + code
            loc = locate(addr, 2)
            if loc is None:
                raise self._outside("jump_labels", i, addr, 2)
            off, end, sec = loc
            head = m[off:off + min(5, end - addr)]
            if head[0] == 0xEB or head[:2] == _NOP2:
                n = 2
            else:
                n = 5
                odd += head[0] != 0xE9 and head != _NOP5
                if len(head) < 5:
                    raise self._outside("jump_labels", i, addr, 5)
            out.append(_site(table="jump_labels", index=i, address=addr, length=n, original=head[:n], section=sec,
                             target=(va + 4 + target) & _U64, flags=key & 3, key=(va + 8 + (key & ~3)) & _U64))
        if odd:
            self._note(f"jump_labels: {odd} sites hold neither a jmp nor a NOP (length 5 assumed; "
                       "arch_jump_entry_size() would BUG)")
        return out

    def _read_static_calls(self) -> list[Site]:
        got = self._entries("static_calls", self.layout.static_call_entry)
        if got is None:
            return []
        base, data = got
        m, locate = self._map, self._locate
        out = []
        odd = 0
        for i, (addr_rel, key_rel) in enumerate(struct.iter_unpack("<ii", data)):
            va = base + 8 * i
            addr = va + addr_rel
            key = (va + 4 + key_rel) & _U64
            loc = locate(addr, 5)
            if loc is None:
                raise self._outside("static_calls", i, addr, 5)
            off, end, sec = loc
            head = m[off:off + min(8, end - addr)]
            n = branch_length(head)
            if n is None:
                odd += 1
                n = 5
            out.append(_site(table="static_calls", index=i, address=addr, length=n, original=head[:n], section=sec,
                             target=key & ~3, flags=key & 3, key=key & ~3))
        if odd:
            self._note(f"static_calls: {odd} sites are not a call/jmp rel32 (length 5 assumed)")
        return out

    def _read_ftrace(self) -> list[Site]:
        got = self._entries("ftrace", self.layout.mcount_entry)
        if got is None:
            return []
        entries = [(i, addr) for i, (addr,) in enumerate(struct.iter_unpack("<Q", got[1])) if addr]
        zero = len(got[1]) // self.layout.mcount_entry - len(entries)
        if zero:
            self._note(f"ftrace: {zero} zero entries in __mcount_loc skipped (as ftrace_process_locs() does)")
        return self._fixed_sites("ftrace", entries, 5)

    # ---- paravirt names and self-check

    @cached_property
    def btf(self) -> btf_mod.Btf | None:
        """The kernel's BTF, or None when the ELF has no ``.BTF`` section."""
        sec = self.sections.get(".BTF")
        if sec is None or sec.nobits or not sec.size:
            return None
        return btf_mod.Btf(bytes(self._map[sec.offset:sec.offset + sec.size]), f"{self.path}: .BTF")

    def pv_op_names(self) -> dict[int, str]:
        """pv_ops slot -> ``"irq.save_fl"`` from BTF; {} (with a note) without it."""
        if self._pv_names is None:
            names: dict[int, str] = {}
            if self.btf is None:
                self._note("paravirt: no .BTF section; pv_ops slots are not named")
            else:
                names = btf_mod.pv_op_names(self.btf)
                if not names:
                    self._note("paravirt: BTF has no struct paravirt_patch_template; pv_ops slots are not named")
            self._pv_names = names
        return self._pv_names

    @staticmethod
    def pv_call_target(site: Site) -> int | None:
        """The memory operand of an unpatched pv site: ``ff 15``/``ff 25 disp32`` -> ``site + 6 + disp32``."""
        code = site.original
        if len(code) < 6 or code[0] != 0xFF or code[1] not in (0x15, 0x25):
            return None
        return (site.address + 6 + int.from_bytes(code[2:6], "little", signed=True)) & _U64

    def pv_ops_address(self) -> int | None:
        """``pv_ops`` from the symbols, else inferred from the pv sites (all ``call *pv_ops+8*type``) with a note."""
        addr = self._pv_ops if self._pv_ops is not None else self.symbols.address("pv_ops")
        if addr is not None:
            return addr
        votes: Counter[int] = Counter()
        sites = self.sites("paravirt")
        for s in sites:
            t = self.pv_call_target(s)
            if t is not None and s.slot is not None:
                votes[t - 8 * s.slot] += 1
        if not votes:
            return None
        best, n = votes.most_common(1)[0]
        if n * 10 < len(sites) * 9:
            self._note(f"paravirt: pv_ops not in the symbols, and the pv sites do not agree on it "
                       f"({n} of {len(sites)} point at {best:#x})")
            return None
        self._note(f"paravirt: pv_ops not in the symbols; {best:#x} inferred from {n} of {len(sites)} pv sites")
        return best

    def pv_mismatches(self) -> list[Site]:
        """pv sites that are not ``call *pv_ops+8*type(%rip)`` (``jmp *`` counts as a match)."""
        base = self.pv_ops_address()
        if base is None:
            return list(self.sites("paravirt"))
        return [s for s in self.sites("paravirt")
                if s.slot is None or self.pv_call_target(s) != base + 8 * s.slot]

