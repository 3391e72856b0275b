"""A kernel module (``.ko``): its sections, symbols and relocations, and the module linked where it was loaded. Pure.

A ``.ko`` is an ELF64 relocatable: every section at address 0, every
reference to code or data a relocation. The kernel's module loader
(``kernel/module/main.c``, 6.1) copies each ``SHF_ALLOC`` section to its
place, gives each symbol its final value (``simplify_symbols``: section base
+ value; undefined ones from the exported symbols of vmlinux and of the
modules already loaded; the per-CPU section's symbols from ``mod->percpu``),
then applies the ``SHT_RELA`` sections whose target is allocated
(``apply_relocations``; ``.klp.rela.*`` sections, flagged
``SHF_RELA_LIVEPATCH``, are livepatch's and left for later) with the x86
rules of ``arch/x86/kernel/module.c`` (``__apply_relocate_add`` in 6.1, ``__write_relocate_add`` later)::

    R_X86_64_64     *(u64 *)loc = S + A
    R_X86_64_32     *(u32 *)loc = S + A          (must fit zero-extended)
    R_X86_64_32S    *(s32 *)loc = S + A          (must fit sign-extended)
    R_X86_64_PC32,  *(u32 *)loc = S + A - loc
    R_X86_64_PLT32
    R_X86_64_PC64   *(u64 *)loc = S + A - loc

:func:`link` does the same on the host, given where the kernel put each
section (read live from ``mod->sect_attrs``, see :mod:`framework.elf.kmodlist`):
the result is the module's bytes as the loader wrote them *before*
``module_finalize()`` patched them, in an ELF whose section headers carry the
run-time addresses and whose symbols are absolute, so that
:class:`~framework.elf.vmlinux.Vmlinux` reads its patch-site tables exactly
as it reads vmlinux's. Each relocation's written range is kept
(:attr:`Linked.writes`): that is what the seed-002 invariant compares patch
writes against.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import ImageError

SHT_SYMTAB, SHT_RELA, SHT_NOBITS = 2, 4, 8
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
SHF_RELA_LIVEPATCH = 0x00100000          # include/uapi/linux/elf.h
SHN_UNDEF, SHN_LIVEPATCH, SHN_ABS, SHN_COMMON = 0, 0xFF20, 0xFFF1, 0xFFF2
STB_WEAK = 2
PERCPU_SECTION = ".data..percpu"

R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32 = 0, 1, 2, 4
R_X86_64_32, R_X86_64_32S, R_X86_64_PC64 = 10, 11, 24
# type -> (size, pc-relative, signed range check)
RELOCATIONS = {
    R_X86_64_64: (8, False, None), R_X86_64_32: (4, False, False), R_X86_64_32S: (4, False, True),
    R_X86_64_PC32: (4, True, True), R_X86_64_PLT32: (4, True, True), R_X86_64_PC64: (8, True, None),
}
_U64 = (1 << 64) - 1

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


@dataclass(frozen=True)
class KoSection:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    header: int          # file offset of the section header (to rewrite sh_addr)

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True)
class KoSymbol:
    index: int
    name: str
    info: int
    shndx: int
    value: int
    size: int

    @property
    def weak(self) -> bool:
        return self.info >> 4 == STB_WEAK


@dataclass(frozen=True)
class Rela:
    offset: int          # in the target section
    type: int
    symbol: int          # index into the symbol table
    addend: int


@dataclass(frozen=True)
class Ko:
    """The parts of a ``.ko`` the loader uses."""

    name: str                                   # where it came from (for messages)
    data: bytes
    sections: tuple[KoSection, ...]
    symbols: tuple[KoSymbol, ...]
    symtab_offset: int                          # file offset of .symtab (to rewrite st_value)

    def section(self, name: str) -> KoSection | None:
        return next((s for s in self.sections if s.name == name), None)

    def relocations(self, rela: KoSection) -> list[Rela]:
        raw = self.data[rela.offset:rela.offset + rela.size]
        return [Rela(off, info & 0xFFFFFFFF, info >> 32, addend) for off, info, addend in _RELA.iter_unpack(raw)]

    def rela_sections(self) -> list[tuple[KoSection, KoSection]]:
        """(relocation section, its target) for every SHT_RELA section, in section order."""
        out = []
        for s in self.sections:
            if s.type == SHT_RELA and 0 < s.info < len(self.sections):
                out.append((s, self.sections[s.info]))
        return out

    def bytes_of(self, sec: KoSection) -> bytes:
        return b"" if sec.type == SHT_NOBITS else self.data[sec.offset:sec.offset + sec.size]


def parse(data: bytes, name: str) -> Ko:
    """Read a ``.ko``; ImageError (one line, naming ``name``) when it is not an x86-64 relocatable ELF."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not an ELF file; is it a kernel module (.ko)?")
    ident, etype, machine, _v, _entry, _phoff, shoff, _flags, _ehsize, _phes, _phn, shentsize, shnum, shstrndx = \
        _EHDR.unpack_from(data)
    if ident[4] != 2 or ident[5] != 1 or machine != 62:
        raise ImageError(f"{name}: not a little-endian x86-64 ELF (class {ident[4]}, machine {machine})")
    if etype != 1:
        raise ImageError(f"{name}: ELF type {etype}, not a relocatable object (1); a .ko is one")
    if shentsize != _SHDR.size or shoff + shnum * shentsize > len(data) or not shnum or shstrndx >= shnum:
        raise ImageError(f"{name}: section headers ({shnum} at {shoff:#x}) lie outside the {len(data)}-byte "
                         "file; the module is truncated or corrupt")
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    for i, (_n, stype, _f, _a, off, size, *_rest) in enumerate(raw):
        if stype != SHT_NOBITS and off + size > len(data):
            raise ImageError(f"{name}: section {i} ends at {off + size:#x}, past the end of the "
                             f"{len(data)}-byte file; the module is truncated")
    names_off = raw[shstrndx][4]

    def cstr(base: int, at: int) -> str:
        end = data.find(b"\0", base + at)
        return data[base + at:end if end >= 0 else len(data)].decode("latin-1")

    sections = tuple(KoSection(i, cstr(names_off, r[0]), r[1], r[2], r[4], r[5], r[6], r[7], shoff + i * shentsize)
                     for i, r in enumerate(raw))
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    symbols: tuple[KoSymbol, ...] = ()
    symtab_offset = 0
    if symtab is not None:
        if symtab.size % _SYM.size or not 0 < symtab.link < shnum:
            raise ImageError(f"{name}: .symtab is {symtab.size} bytes with string table {symtab.link}; corrupt")
        strings = sections[symtab.link].offset
        symtab_offset = symtab.offset
        symbols = tuple(KoSymbol(i, cstr(strings, n) if n else "", info, shndx, value, size)
                        for i, (n, info, _o, shndx, value, size)
                        in enumerate(_SYM.iter_unpack(data[symtab.offset:symtab.offset + symtab.size])))
    return Ko(name, data, sections, symbols, symtab_offset)


@dataclass(frozen=True)
class RelocWrite:
    """The bytes one relocation wrote: [address, address + size) in ``section``."""

    address: int
    size: int
    section: str
    symbol: str          # the symbol's name, or the section's for a section symbol
    type: int
    livepatch: bool = False   # from a .klp.rela section: applied by livepatch, later


@dataclass(frozen=True)
class Linked:
    """A module linked at its run-time addresses, before ``module_finalize()``."""

    data: bytes                                  # an ELF: sh_addr set, symbols absolute, relocations applied
    writes: tuple[RelocWrite, ...]               # every relocation applied, in the loader's order
    pending: tuple[RelocWrite, ...] = ()         # livepatch relocations, not applied at load
    unresolved: tuple[str, ...] = ()             # undefined symbols nothing resolved (their bytes left as in the .ko)
    skipped: tuple[RelocWrite, ...] = ()         # the relocations against those: bytes the host cannot know
    notes: tuple[str, ...] = field(default=())


def symbol_value(ko: Ko, sym: KoSymbol, placement: Mapping[str, int], resolve: Callable[[str], int | None],
                 percpu: int | None) -> int | None:
    """The value ``simplify_symbols()`` gives a symbol, or None when it cannot be known here."""
    if sym.shndx == SHN_UNDEF:
        if not sym.name:
            return 0
        got = resolve(sym.name)
        return 0 if got is None and sym.weak else got
    if sym.shndx == SHN_ABS:
        return sym.value
    if sym.shndx in (SHN_LIVEPATCH, SHN_COMMON) or sym.shndx >= len(ko.sections):
        return None
    sec = ko.sections[sym.shndx]
    if sec.name == PERCPU_SECTION:
        return None if percpu is None else (percpu + sym.value) & _U64
    base = placement.get(sec.name)
    return None if base is None else (base + sym.value) & _U64


def link(ko: Ko, placement: Mapping[str, int], resolve: Callable[[str], int | None],
         percpu: int | None = None) -> Linked:
    """The module as the loader leaves it before ``module_finalize()``: see the module docstring.

    ``placement`` maps section names to run-time addresses (sections left out
    are not in memory: relocations into them are skipped); ``resolve`` gives
    the address of an undefined symbol (vmlinux's or another module's).
    """
    out = bytearray(ko.data)
    for sec in ko.sections:
        if sec.name in placement and sec.alloc:
            struct.pack_into("<Q", out, sec.header + 16, placement[sec.name])   # sh_addr
    values: list[int | None] = [symbol_value(ko, s, placement, resolve, percpu) for s in ko.symbols]
    writes: list[RelocWrite] = []
    pending: list[RelocWrite] = []
    unresolved: set[str] = set()
    skipped: list[RelocWrite] = []
    for rela, target in ko.rela_sections():
        if not target.alloc or target.name not in placement or target.type == SHT_NOBITS:
            continue
        livepatch = bool(rela.flags & SHF_RELA_LIVEPATCH)
        base = placement[target.name]
        for r in ko.relocations(rela):
            if r.type == R_X86_64_NONE:
                continue
            kind = RELOCATIONS.get(r.type)
            if kind is None:
                raise ImageError(f"{ko.name}: {rela.name}: relocation type {r.type} at {target.name}+{r.offset:#x} "
                                 "is not one the x86-64 module loader applies")
            size, pc, signed = kind
            if r.offset + size > target.size or r.symbol >= len(ko.symbols):
                raise ImageError(f"{ko.name}: {rela.name}: a relocation at {target.name}+{r.offset:#x} lies outside "
                                 "the section or names no symbol; the module is corrupt")
            sym = ko.symbols[r.symbol]
            # a section symbol has no name of its own: the section's
            label = sym.name or (ko.sections[sym.shndx].name if sym.shndx < len(ko.sections) else "")
            loc = base + r.offset
            write = RelocWrite(loc, size, target.name, label, r.type, livepatch)
            if livepatch:
                pending.append(write)
                continue
            value = values[r.symbol]
            if value is None:
                unresolved.add(label or f"symbol {r.symbol}")
                skipped.append(write)
                continue
            val = (value + r.addend - (loc if pc else 0)) & _U64
            if size == 4:
                as_signed = val - (1 << 64) if val >> 63 else val
                if (signed is True and not -(1 << 31) <= as_signed < (1 << 31)) or \
                        (signed is False and val >> 32):
                    raise ImageError(f"{ko.name}: relocation type {r.type} at {target.name}+{r.offset:#x} "
                                     f"against {label}: {val:#x} overflows 32 bits; wrong section placement?")
                val &= 0xFFFFFFFF
            struct.pack_into("<Q" if size == 8 else "<I", out, target.offset + r.offset, val)
            writes.append(write)
    for sym, value in zip(ko.symbols, values, strict=True):
        if value is not None and sym.shndx not in (SHN_UNDEF, SHN_ABS):
            struct.pack_into("<Q", out, ko.symtab_offset + sym.index * _SYM.size + 8, value)
    notes = []
    if unresolved:
        shown = ", ".join(sorted(unresolved)[:8]) + (" …" if len(unresolved) > 8 else "")
        notes.append(f"{ko.name}: {len(unresolved)} symbols could not be resolved on the host ({shown}); "
                     "the bytes their relocations write are compared as the .ko holds them")
    return Linked(bytes(out), tuple(writes), tuple(pending), tuple(sorted(unresolved)), tuple(skipped),
                  tuple(notes))


def layout(ko: Ko, base: int, align: int = 64) -> dict[str, int]:
    """A placement for a module that is not loaded: every allocated section one after another from ``base``
    (text first, as ``layout_sections()`` groups them), for reading its tables without a guest."""
    placement: dict[str, int] = {}
    at = base
    order = sorted((s for s in ko.sections if s.alloc and s.size and s.name != PERCPU_SECTION),
                   key=lambda s: (not s.executable, s.index))
    for sec in order:
        at = (at + align - 1) // align * align
        placement[sec.name] = at
        at += sec.size
    return placement
