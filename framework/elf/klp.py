"""Livepatch relocations in a built module: the conversion kbuild cannot do, and where they land. Pure.

A livepatch module (``MODULE_INFO(livepatch, "Y")``) reaches symbols it cannot
link against (unexported ones, or those of a module that may load later) through
*livepatch relocations* (``Documentation/livepatch/module-elf-format.rst``):

- a relocation section ``.klp.rela.<object>.<section>`` of type ``SHT_RELA`` with
  the flags ``SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH`` (``0x00100000``,
  ``include/uapi/linux/elf.h:294``); ``sh_info`` is the section it relocates and
  ``<object>`` says whose load applies it: ``vmlinux`` when the livepatch module
  itself loads (``apply_relocations`` -> ``klp_apply_section_relocs(..., NULL)``),
  a module name when that module and the livepatch are both loaded
  (``klp_init_object_loaded`` -> ``klp_apply_object_relocs``). SHF_ALLOC keeps the
  section in module memory for that later use;
- symbols named ``.klp.sym.<object>.<symbol>,<sympos>`` with ``st_shndx =
  SHN_LIVEPATCH`` (``0xff20``, ``elf.h:303``), which ``simplify_symbols`` leaves
  alone and ``klp_resolve_symbols`` looks up in kallsyms (``sympos`` 0: the symbol
  must be unique in its object);
- zeros at every place such a relocation writes: x86's ``__apply_relocate_add``
  refuses to write over a nonzero value ("existing value is nonzero").

Plain kbuild cannot make any of that; kpatch-build or the never-merged
klp-convert do. :func:`convert` does it on a built ``.ko`` from *rules*, which the
module's source carries as ELF notes (owner ``klp_convert``, type 0, one rule
each) in the non-allocated section ``.note.klp_convert`` (the kernel loads only
SHF_ALLOC sections; modpost accepts ``.note*``; ``readelf -n`` shows them). A
rule is ``key=value`` words::

    section=.text symbol=psm_value object=psm_target_a function=psm_lp_read
    section=.text symbol=pv_ops object=vmlinux

``section`` (the relocated section), ``symbol`` and ``object`` are required;
``symobject`` (where the symbol lives; default ``object``), ``sympos`` (default
0) and ``function`` (only relocations inside that function; default all) are
optional. Each rule must select at least one relocation. In C, the
``KLP_CONVERT("...")`` macro of ``configs/modules/livepatch-order/psm.h`` emits
the note.

The ELF is edited at struct level: selected relocations leave their ``.rela*``
section (shrunk in place) for the new livepatch section; a symbol whose
allocated-section references all moved is renamed in place (it would otherwise
stay an undefined symbol that the loader fails to resolve), other ``.klp.sym``
symbols are appended; the grown tables and the section header table are
written at the end of the file. Converting a converted module changes nothing.

:func:`module_sites` and :func:`klp_relocations` read a module's paravirt and
alternative sites and its livepatch relocations; :func:`hazards` pairs them:
a livepatch relocation that writes into a site, and whether it is still pending
when the site is patched (see ``configs/modules/livepatch-order/NOTES.md``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..errors import ImageError

SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHF_ALLOC = 0x2
SHF_INFO_LINK = 0x40
SHF_RELA_LIVEPATCH = 0x00100000          # include/uapi/linux/elf.h:294
SHN_UNDEF = 0
SHN_LORESERVE = 0xff00
SHN_LIVEPATCH = 0xff20                   # include/uapi/linux/elf.h:303
STB_GLOBAL = 1
STT_NOTYPE = 0
STT_FUNC = 2
EM_X86_64 = 62
ET_REL = 1

SPEC_SECTION = ".note.klp_convert"
SPEC_OWNER = "klp_convert"
MODULE_NAME_LEN = 56                     # the kernel parses <object> with %55[^.]
KSYM_NAME_LEN = 512                      # and <symbol> with %511[^,]

# x86-64 relocation types the module loader applies (arch/x86/kernel/module.c), and the bytes each writes.
R_X86_64 = {1: ("R_X86_64_64", 8), 2: ("R_X86_64_PC32", 4), 4: ("R_X86_64_PLT32", 4), 10: ("R_X86_64_32", 4),
            11: ("R_X86_64_32S", 4), 24: ("R_X86_64_PC64", 8)}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")

# struct paravirt_patch_site (6.1): u8 *instr; u8 type; u8 len; (16 bytes with padding)
PARAVIRT_ENTRY = 16
# struct alt_instr (6.1): s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen
ALT_ENTRY_6_1 = 12
ALTINSTR_FLAG_INV = 0x8000


# --- the rules ---

@dataclass(frozen=True)
class Rule:
    """Which relocations become livepatch relocations, and how."""

    section: str                 # the relocated section: ".text"
    symbol: str                  # the symbol those relocations reference
    object: str                  # whose load applies them: "vmlinux" or a module name
    symobject: str               # where the symbol lives (klp_resolve_symbols looks there)
    sympos: int = 0
    function: str | None = None  # only relocations inside this function of ``section``

    @property
    def klp_section(self) -> str:
        return f".klp.rela.{self.object}.{self.section}"

    @property
    def klp_symbol(self) -> str:
        return f".klp.sym.{self.symobject}.{self.symbol},{self.sympos}"

    def text(self) -> str:
        words = [f"section={self.section}", f"symbol={self.symbol}", f"object={self.object}"]
        if self.symobject != self.object:
            words.append(f"symobject={self.symobject}")
        if self.sympos:
            words.append(f"sympos={self.sympos}")
        if self.function:
            words.append(f"function={self.function}")
        return " ".join(words)


_RULE_KEYS = {"section", "symbol", "object", "symobject", "sympos", "function"}


def parse_rules(text: str, where: str = SPEC_SECTION) -> tuple[Rule, ...]:
    """The rules of a spec: one a line, ``key=value`` words; blank lines and ``#`` comments ignored."""
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        here = f"{where} line {number}"
        fields: dict[str, str] = {}
        for word in line.split():
            key, eq, value = word.partition("=")
            if not eq or not value:
                raise ImageError(f"{here}: {word!r} is not key=value")
            if key not in _RULE_KEYS:
                raise ImageError(f"{here}: unknown key {key!r}; the keys are {', '.join(sorted(_RULE_KEYS))}")
            if key in fields:
                raise ImageError(f"{here}: {key} given twice")
            fields[key] = value
        missing = [k for k in ("section", "symbol", "object") if k not in fields]
        if missing:
            raise ImageError(f"{here}: missing {', '.join(missing)}")
        try:
            sympos = int(fields.get("sympos", "0"))
        except ValueError:
            raise ImageError(f"{here}: sympos={fields['sympos']} is not a number") from None
        rule = Rule(section=fields["section"], symbol=fields["symbol"], object=fields["object"],
                    symobject=fields.get("symobject", fields["object"]), sympos=sympos,
                    function=fields.get("function"))
        _check_rule(rule, here)
        rules.append(rule)
    return tuple(rules)


def _check_rule(rule: Rule, here: str) -> None:
    for what, name in (("object", rule.object), ("symobject", rule.symobject)):
        if "." in name or len(name) >= MODULE_NAME_LEN:
            raise ImageError(f"{here}: {what}={name}: the kernel reads it with %55[^.]: no dots, under 56 characters")
    if "," in rule.symbol or len(rule.symbol) >= KSYM_NAME_LEN:
        raise ImageError(f"{here}: symbol={rule.symbol}: the kernel reads it with %511[^,]: no commas, "
                         "under 512 characters")
    if rule.sympos < 0:
        raise ImageError(f"{here}: sympos must be 0 (unique) or a position from 1")


# --- reading and writing ELF64 relocatable x86-64 files ---

@dataclass
class _Section:
    name: str
    name_off: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    def pack(self) -> bytes:
        return _SHDR.pack(self.name_off, self.type, self.flags, self.addr, self.offset, self.size,
                          self.link, self.info, self.addralign, self.entsize)


@dataclass(frozen=True)
class _Sym:
    name: str
    name_off: int
    info: int
    other: int
    shndx: int
    value: int
    size: int

    @property
    def bind(self) -> int:
        return self.info >> 4

    @property
    def type(self) -> int:
        return self.info & 0xF

    def pack(self) -> bytes:
        return _SYM.pack(self.name_off, self.info, self.other, self.shndx, self.value, self.size)


@dataclass(frozen=True)
class _Rela:
    offset: int
    sym: int
    type: int
    addend: int

    def pack(self) -> bytes:
        return _RELA.pack(self.offset, (self.sym << 32) | self.type, self.addend)


class _Elf:
    """An ELF64 little-endian x86-64 relocatable file, parsed from bytes."""

    def __init__(self, data: bytes, name: str) -> None:
        self.name = name
        self.data = data
        if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
            raise ImageError(f"{name}: not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ImageError(f"{name}: not a 64-bit little-endian ELF file")
        (_, e_type, e_machine, _, _, _, e_shoff, _, _, _, _, e_shentsize, e_shnum,
         e_shstrndx) = _EHDR.unpack_from(data)
        if e_type != ET_REL or e_machine != EM_X86_64:
            raise ImageError(f"{name}: not an x86-64 relocatable object (a kernel module): "
                             f"e_type {e_type}, e_machine {e_machine}")
        if e_shentsize != _SHDR.size or e_shoff + e_shnum * _SHDR.size > len(data) or e_shstrndx >= e_shnum:
            raise ImageError(f"{name}: corrupt section header table")
        self.shstrndx = e_shstrndx
        self.sections: list[_Section] = []
        for i in range(e_shnum):
            fields = _SHDR.unpack_from(data, e_shoff + i * _SHDR.size)
            self.sections.append(_Section("", *fields))
        for s in self.sections:
            if s.type != SHT_NOBITS and s.offset + s.size > len(data):
                raise ImageError(f"{name}: a section runs past the end of the file")
        shstr = self.raw(e_shstrndx)
        for s in self.sections:
            s.name = _cstr(shstr, s.name_off)
        symtabs = [i for i, s in enumerate(self.sections) if s.type == SHT_SYMTAB]
        if len(symtabs) != 1:
            raise ImageError(f"{name}: {len(symtabs)} symbol tables; a module has one")
        self.symtab = symtabs[0]
        self.strtab = self.sections[self.symtab].link
        strtab = self.raw(self.strtab)
        raw = self.raw(self.symtab)
        self.symbols = [_Sym(_cstr(strtab, f[0]), *f) for f in _SYM.iter_unpack(raw[:len(raw) - len(raw) % _SYM.size])]

    def raw(self, index: int) -> bytes:
        s = self.sections[index]
        return b"" if s.type == SHT_NOBITS else self.data[s.offset:s.offset + s.size]

    def index(self, name: str) -> int | None:
        found = [i for i, s in enumerate(self.sections) if s.name == name]
        if len(found) > 1:
            raise ImageError(f"{self.name}: {len(found)} sections named {name}")
        return found[0] if found else None

    def relas(self, index: int) -> list[_Rela]:
        raw = self.raw(index)
        out = []
        for offset, info, addend in _RELA.iter_unpack(raw[:len(raw) - len(raw) % _RELA.size]):
            out.append(_Rela(offset, info >> 32, info & 0xFFFFFFFF, addend))
        return out

    def rela_sections(self) -> list[int]:
        return [i for i, s in enumerate(self.sections) if s.type == SHT_RELA and s.link == self.symtab]


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


# --- conversion ---

@dataclass(frozen=True)
class Converted:
    """A converted module, and what the conversion did."""

    data: bytes
    rules: tuple[Rule, ...]
    moved: Mapping[str, int]                 # livepatch section -> relocations moved into it now
    symbols: tuple[str, ...]                 # .klp.sym names made now
    already: tuple[Rule, ...] = ()           # rules a previous conversion already applied
    nonzero: tuple[tuple[str, int, bytes], ...] = ()   # (section, offset, old bytes): places that were not zero

    @property
    def changed(self) -> bool:
        return bool(self.moved)


def spec_of(data: bytes, name: str = "module") -> str | None:
    """The rules in a module's ``.note.klp_convert`` notes, one a line; None without the section."""
    elf = _Elf(data, name)
    index = elf.index(SPEC_SECTION)
    if index is None:
        return None
    return "".join(f"{text}\n" for owner, _kind, text in notes(elf.raw(index), f"{name}: {SPEC_SECTION}")
                   if owner == SPEC_OWNER)


def notes(raw: bytes, where: str = "notes") -> list[tuple[str, int, str]]:
    """(owner, type, text) of each ELF note in a note section's bytes (4-byte aligned, as gas lays them out)."""
    out: list[tuple[str, int, str]] = []
    pos = 0
    while pos + 12 <= len(raw):
        namesz, descsz, kind = struct.unpack_from("<III", raw, pos)
        name_at = pos + 12
        desc_at = name_at + namesz + (-namesz % 4)
        end = desc_at + descsz + (-descsz % 4)
        if end > len(raw) + (-descsz % 4):
            raise ImageError(f"{where}: a note at byte {pos} runs past the end of the section")
        owner = raw[name_at:name_at + namesz].rstrip(b"\0").decode("utf-8", "replace")
        out.append((owner, kind, raw[desc_at:desc_at + descsz].rstrip(b"\0").decode("utf-8", "replace")))
        pos = end
    return out


def convert(data: bytes, rules: Sequence[Rule] | None = None, name: str = "module") -> Converted:
    """``data`` (a ``.ko``) with the relocations ``rules`` select turned into livepatch relocations.

    Without ``rules``, those in the module's ``.note.klp_convert`` section. A rule that selects no
    relocation is an error, unless a previous conversion already moved what it selects.
    """
    elf = _Elf(data, name)
    if rules is None:
        spec = spec_of(data, name)
        if spec is None:
            raise ImageError(f"{name}: no {SPEC_SECTION} section and no rules given: nothing says what to convert")
        rules = parse_rules(spec, f"{name}: {SPEC_SECTION}")
    for rule in rules:
        _check_rule(rule, f"{name}: rule {rule.text()!r}")
    out = bytearray(data)
    symbols = list(elf.symbols)
    relas = {i: elf.relas(i) for i in elf.rela_sections()}
    new_sections: dict[str, tuple[int, list[_Rela]]] = {}       # klp section name -> (target index, relocations)
    moved: dict[str, int] = {}
    made: list[str] = []
    already: list[Rule] = []
    nonzero: list[tuple[str, int, bytes]] = []
    # which (old symbol, klp name) each moved relocation needs, resolved into indices below
    pending: list[tuple[str, int, _Rela, str]] = []             # (klp section, target, relocation, klp symbol)
    taken: dict[int, set[int]] = {}                              # rela section -> indices of relocations moved

    for rule in rules:
        target = elf.index(rule.section)
        if target is None:
            raise ImageError(f"{name}: rule {rule.text()!r}: no section {rule.section}")
        lo, hi = _function_range(elf, rule, target)
        hits = 0
        for ri, entries in relas.items():
            sec = elf.sections[ri]
            if sec.info != target or sec.flags & SHF_RELA_LIVEPATCH:
                continue
            for n, r in enumerate(entries):
                if r.sym >= len(symbols) or symbols[r.sym].name != rule.symbol or not lo <= r.offset < hi:
                    continue
                if n in taken.get(ri, set()):
                    raise ImageError(f"{name}: rule {rule.text()!r}: the relocation at {rule.section}+{r.offset:#x} "
                                     "is already selected by an earlier rule")
                if r.type not in R_X86_64:
                    raise ImageError(f"{name}: rule {rule.text()!r}: relocation type {r.type} at "
                                     f"{rule.section}+{r.offset:#x} is not one x86's module loader applies")
                taken.setdefault(ri, set()).add(n)
                pending.append((rule.klp_section, target, r, rule.klp_symbol))
                hits += 1
        if hits == 0:
            if _converted_before(elf, relas, rule, target, lo, hi):
                already.append(rule)
                continue
            where = f" in {rule.function}" if rule.function else ""
            raise ImageError(f"{name}: rule {rule.text()!r} selects no relocation: nothing in {rule.section}{where} "
                             f"references {rule.symbol}")

    if not pending:
        return Converted(data=data, rules=tuple(rules), moved={}, symbols=(), already=tuple(already))

    # Symbols: an old symbol left with no reference from an allocated section is renamed in place to its
    # (first) klp name; the other klp names are appended.
    remaining: dict[int, int] = {}
    for ri, entries in relas.items():
        if not elf.sections[elf.sections[ri].info].flags & SHF_ALLOC:
            continue
        for n, r in enumerate(entries):
            if n not in taken.get(ri, set()):
                remaining[r.sym] = remaining.get(r.sym, 0) + 1
    strtab = bytearray(elf.raw(elf.strtab))
    index_of: dict[str, int] = {s.name: i for i, s in enumerate(symbols) if s.shndx == SHN_LIVEPATCH}
    for _klp_section, _target, r, klp_name in pending:
        if klp_name in index_of:
            continue
        old = symbols[r.sym]
        off = len(strtab)
        strtab += klp_name.encode() + b"\0"
        if old.shndx == SHN_UNDEF and not remaining.get(r.sym) and old.name != klp_name \
                and not old.name.startswith(".klp.sym."):
            symbols[r.sym] = replace(old, name=klp_name, name_off=off, shndx=SHN_LIVEPATCH, value=0)
            index_of[klp_name] = r.sym
        else:
            symbols.append(_Sym(klp_name, off, (STB_GLOBAL << 4) | STT_NOTYPE, 0, SHN_LIVEPATCH, 0, 0))
            index_of[klp_name] = len(symbols) - 1
        made.append(klp_name)

    for klp_section, target, r, klp_name in pending:
        entry = new_sections.setdefault(klp_section, (target, []))
        entry[1].append(replace(r, sym=index_of[klp_name]))
        moved[klp_section] = moved.get(klp_section, 0) + 1
        sec = elf.sections[target]
        size = R_X86_64[r.type][1]
        if sec.type == SHT_NOBITS or r.offset + size > sec.size:
            raise ImageError(f"{name}: a relocation at {sec.name}+{r.offset:#x} lies outside its section")
        at = sec.offset + r.offset
        if any(out[at:at + size]):
            nonzero.append((sec.name, r.offset, bytes(out[at:at + size])))
        out[at:at + size] = bytes(size)

    # The source relocation sections shrink in place.
    for ri, gone in taken.items():
        keep = [r for n, r in enumerate(relas[ri]) if n not in gone]
        sec = elf.sections[ri]
        packed = b"".join(r.pack() for r in keep)
        out[sec.offset:sec.offset + sec.size] = packed + bytes(sec.size - len(packed))
        sec.size = len(packed)

    # Livepatch sections: appended to an existing one of the same name, or new.
    shstr = bytearray(elf.raw(elf.shstrndx))
    sections = list(elf.sections)
    blobs: list[tuple[int, bytes]] = []                          # (section index, contents to write at the end)
    for klp_section, (target, entries) in new_sections.items():
        existing = elf.index(klp_section)
        if existing is not None:
            entries = elf.relas(existing) + entries
            sections[existing].size = len(entries) * _RELA.size
            blobs.append((existing, b"".join(r.pack() for r in entries)))
            continue
        off = len(shstr)
        shstr += klp_section.encode() + b"\0"
        sections.append(_Section(klp_section, off, SHT_RELA, SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, 0, 0,
                                 len(entries) * _RELA.size, elf.symtab, target, 8, _RELA.size))
        blobs.append((len(sections) - 1, b"".join(r.pack() for r in sorted(entries, key=lambda r: r.offset))))
    blobs.append((elf.symtab, b"".join(s.pack() for s in symbols)))
    blobs.append((elf.strtab, bytes(strtab)))
    blobs.append((elf.shstrndx, bytes(shstr)))

    for index, blob in blobs:
        sec = sections[index]
        out += bytes(-len(out) % max(sec.addralign, 1))
        sec.offset, sec.size = len(out), len(blob)
        out += blob
    out += bytes(-len(out) % 8)
    shoff = len(out)
    out += b"".join(s.pack() for s in sections)
    header = list(_EHDR.unpack_from(out))
    header[6] = shoff            # e_shoff
    header[12] = len(sections)   # e_shnum
    _EHDR.pack_into(out, 0, *header)
    return Converted(data=bytes(out), rules=tuple(rules), moved=moved, symbols=tuple(made), already=tuple(already),
                     nonzero=tuple(nonzero))


def _function_range(elf: _Elf, rule: Rule, target: int) -> tuple[int, int]:
    if rule.function is None:
        return 0, 1 << 64
    found = [s for s in elf.symbols if s.name == rule.function and s.shndx == target and s.type == STT_FUNC]
    if len(found) != 1:
        raise ImageError(f"{elf.name}: rule {rule.text()!r}: {len(found)} functions named {rule.function} "
                         f"in {rule.section}")
    return found[0].value, found[0].value + found[0].size


def _converted_before(elf: _Elf, relas: Mapping[int, list[_Rela]], rule: Rule, target: int, lo: int,
                      hi: int) -> bool:
    index = elf.index(rule.klp_section)
    if index is None or index not in relas or elf.sections[index].info != target:
        return False
    return any(r.sym < len(elf.symbols) and elf.symbols[r.sym].name == rule.klp_symbol and lo <= r.offset < hi
               for r in relas[index])


# --- reading a module's sites and livepatch relocations ---

@dataclass(frozen=True)
class Site:
    """A place in a module's text that ``module_finalize`` patches at load."""

    kind: str                    # "paravirt" (apply_paravirt) or "alternative" (apply_alternatives)
    section: str                 # ".text"
    offset: int
    length: int
    pv_type: int | None = None   # paravirt: the pv_ops slot
    cpuid: int | None = None     # alternative: feature number | ALTINSTR_FLAG_INV
    replacement: tuple[str, int, int] | None = None   # alternative: (section, offset, length)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def describe(self) -> str:
        where = f"{self.section}+{self.offset:#x}..+{self.end:#x}"
        if self.kind == "paravirt":
            return f"pv site (type {self.pv_type}) {where}"
        assert self.cpuid is not None
        feature = self.cpuid & ~ALTINSTR_FLAG_INV
        cond = ("not " if self.cpuid & ALTINSTR_FLAG_INV else "") + f"feature {feature >> 5}*32+{feature & 31}"
        return f"alternative ({cond}) {where}"


@dataclass(frozen=True)
class KlpRelocation:
    """One relocation of a livepatch relocation section."""

    klp_section: str             # ".klp.rela.psm_target_a..text"
    object: str                  # whose load applies it: "vmlinux" or a module name
    section: str                 # the section it writes into
    offset: int
    size: int
    type: str                    # "R_X86_64_PC32"
    symbol: str                  # ".klp.sym.vmlinux.pv_ops,0"
    addend: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def pending(self) -> bool:
        """Applied after ``module_finalize`` patched the livepatch module's own sites (6.1: every non-vmlinux one)."""
        return self.object != "vmlinux"


@dataclass(frozen=True)
class Hazard:
    """A livepatch relocation that writes into bytes a patch site also writes."""

    relocation: KlpRelocation
    site: Site
    where: str = field(default="site")   # "site": into the site itself; "replacement": into what is copied there

    @property
    def pending(self) -> bool:
        return self.relocation.pending

    def describe(self) -> str:
        r = self.relocation
        order = ("applied after the site was patched (module-specific: at the later of the two loads)"
                 if r.pending else "applied before the site is patched (vmlinux: in apply_relocations)")
        into = "into the replacement of" if self.where == "replacement" else "into"
        return (f"{r.type} {r.symbol}{r.addend:+#x} at {r.section}+{r.offset:#x} ({r.klp_section}) writes "
                f"{into} the {self.site.describe()}: {order}")


def module_sites(data: bytes, name: str = "module", alt_entry: int = ALT_ENTRY_6_1) -> tuple[Site, ...]:
    """The paravirt and alternative sites of a module (6.1 layouts; ``alt_entry`` is 13 or 14 elsewhere)."""
    elf = _Elf(data, name)
    sites: list[Site] = []
    para = elf.index(".parainstructions")
    if para is not None:
        raw = elf.raw(para)
        targets = _targets(elf, para)
        for base in range(0, len(raw) - len(raw) % PARAVIRT_ENTRY, PARAVIRT_ENTRY):
            if base not in targets:
                continue
            section, offset = targets[base]
            sites.append(Site("paravirt", section, offset, raw[base + 9], pv_type=raw[base + 8]))
    alt = elf.index(".altinstructions")
    if alt is not None:
        raw = elf.raw(alt)
        targets = _targets(elf, alt)
        for base in range(0, len(raw) - len(raw) % alt_entry, alt_entry):
            if base not in targets:
                continue
            section, offset = targets[base]
            cpuid, = struct.unpack_from("<H", raw, base + 8)
            instrlen, repllen = raw[base + 10], raw[base + 11]
            repl = targets.get(base + 4)
            sites.append(Site("alternative", section, offset, instrlen, cpuid=cpuid,
                              replacement=(repl[0], repl[1], repllen) if repl else None))
    return tuple(sorted(sites, key=lambda s: (s.section, s.offset, s.kind)))


def _targets(elf: _Elf, index: int) -> dict[int, tuple[str, int]]:
    """Offset in section ``index`` -> (section, offset) its relocation points at (S + A; for PC32, P cancels)."""
    out: dict[int, tuple[str, int]] = {}
    for ri in elf.rela_sections():
        if elf.sections[ri].info != index:
            continue
        for r in elf.relas(ri):
            if r.sym >= len(elf.symbols):
                continue
            sym = elf.symbols[r.sym]
            if sym.shndx == SHN_UNDEF or sym.shndx >= min(SHN_LORESERVE, len(elf.sections)):
                continue
            out[r.offset] = (elf.sections[sym.shndx].name, sym.value + r.addend)
    return out


def klp_relocations(data: bytes, name: str = "module") -> tuple[KlpRelocation, ...]:
    """Every relocation in the module's livepatch relocation sections."""
    elf = _Elf(data, name)
    out: list[KlpRelocation] = []
    for ri in elf.rela_sections():
        sec = elf.sections[ri]
        if not sec.flags & SHF_RELA_LIVEPATCH:
            continue
        obj = sec.name[len(".klp.rela."):].split(".", 1)[0] if sec.name.startswith(".klp.rela.") else "?"
        target = elf.sections[sec.info].name if sec.info < len(elf.sections) else "?"
        for r in elf.relas(ri):
            kind, size = R_X86_64.get(r.type, (f"type {r.type}", 0))
            symbol = elf.symbols[r.sym].name if r.sym < len(elf.symbols) else f"#{r.sym}"
            out.append(KlpRelocation(sec.name, obj, target, r.offset, size, kind, symbol, r.addend))
    return tuple(out)


def hazards(data: bytes, name: str = "module", alt_entry: int = ALT_ENTRY_6_1) -> tuple[Hazard, ...]:
    """Livepatch relocations that write into a paravirt or alternative site, or into an alternative's replacement."""
    return overlaps(klp_relocations(data, name), module_sites(data, name, alt_entry))


def overlaps(relocations: Iterable[KlpRelocation], sites: Iterable[Site]) -> tuple[Hazard, ...]:
    found: list[Hazard] = []
    sites = tuple(sites)
    for r in relocations:
        for site in sites:
            if site.section == r.section and r.offset < site.end and site.offset < r.end:
                found.append(Hazard(r, site, "site"))
            repl = site.replacement
            if repl is not None and repl[0] == r.section and r.offset < repl[1] + repl[2] and repl[1] < r.end:
                found.append(Hazard(r, site, "replacement"))
    return tuple(found)
