"""The x86-64 kernel's ORC unwind tables: which stack layout is in force at a text address.

Pure: section bytes in, objects out. Three sections (``arch/x86/kernel/unwind_orc.c``)::

    .orc_unwind_ip   s32[n]   entry i covers code from ip_i = (address of entry i) + value_i
    .orc_unwind      struct orc_entry[n], 6 bytes each, parallel to .orc_unwind_ip
    .orc_lookup      u32[]    block index the kernel fills at boot (NOBITS in vmlinux); only exposed

``struct orc_entry`` (``arch/x86/include/asm/orc_types.h``, ``__packed``, little-endian;
bitfields are allocated from bit 0 of the u16 at byte 4)::

    s16 sp_offset; s16 bp_offset;
    u16 bits 0-3 sp_reg, 4-7 bp_reg, then:
        4.14 .. 6.2   type:2 (bits 8-9)  end:1 (bit 10)
        6.3           type:2 (bits 8-9)  signal:1 (bit 10)  end:1 (bit 11)
        6.4 ..        type:3 (bits 8-10) signal:1 (bit 11)

``signal`` came with ffb1b4a41016 "x86/unwind/orc: Add 'signal' field to ORC metadata"
(v6.3); fb799447ae29 "x86,objtool: Split UNWIND_HINT_EMPTY in two" (v6.4) widened
``type`` to 3 bits, renumbered the types (UNDEFINED 0, END_OF_STACK 1, CALL 2, REGS 3,
REGS_PARTIAL 4; before: CALL 0, REGS 1, REGS_PARTIAL 2) and dropped ``end``: an
``end`` entry became type END_OF_STACK, a "weak" terminator (sp_reg UNDEFINED, end 0)
type UNDEFINED. Since v6.4 (backported to 6.3.10) ``.orc_header`` holds a 20-byte hash
of ``orc_types.h`` naming the format (:data:`ORC_HEADER_HASHES`).

How the kernel picks an entry (``__orc_find``, unchanged 4.14 .. 6.12): a binary search
for the *rightmost* entry whose ip is <= the address. Several entries can share an ip:
objtool ends every object file's text with a weak terminator, and the next object's
first function starts at the same address. ``orc_sort_cmp`` (the build-time
``scripts/sorttable`` for vmlinux since v5.6, ``unwind_module_init`` for modules)
orders equal ips with the terminators first ("weak" section terminator entries need
to always be on the left), so the rightmost one, the one in force, is the real entry.
Equal ips among real entries (or among terminators) are left in an unspecified order
by the kernel's sort; :class:`OrcTable` sorts stably, so they keep the order the
tables have in the file, which is the order a booted vmlinux searches.
"""

from __future__ import annotations

import operator
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import ImageError
from . import btf as btf_mod

# ORC_REG_*: the base register of the previous frame's SP (sp_reg) or BP (bp_reg).
REG_UNDEFINED = 0
REG_PREV_SP = 1
REG_DX = 2
REG_DI = 3
REG_BP = 4
REG_SP = 5
REG_R10 = 6
REG_R13 = 7
REG_BP_INDIRECT = 8
REG_SP_INDIRECT = 9
REG_AX = 10          # a late addition (objtool support for newer Clang's code), in neither 6.1 nor 6.12

ORC_REG_NAMES: dict[int, str] = {
    REG_UNDEFINED: "undef", REG_PREV_SP: "prev_sp", REG_DX: "dx", REG_DI: "di", REG_BP: "bp", REG_SP: "sp",
    REG_R10: "r10", REG_R13: "r13", REG_BP_INDIRECT: "bp_indirect", REG_SP_INDIRECT: "sp_indirect", REG_AX: "ax",
}

# Type names (ORC_TYPE_*, lower case). REGS_PARTIAL was ORC_TYPE_REGS_IRET in early kernels: same number.
TYPE_UNDEFINED, TYPE_END_OF_STACK, TYPE_CALL = "undefined", "end_of_stack", "call"
TYPE_REGS, TYPE_REGS_PARTIAL = "regs", "regs_partial"

_TYPES_4_14 = {0: TYPE_CALL, 1: TYPE_REGS, 2: TYPE_REGS_PARTIAL}
_TYPES_6_4 = {0: TYPE_UNDEFINED, 1: TYPE_END_OF_STACK, 2: TYPE_CALL, 3: TYPE_REGS, 4: TYPE_REGS_PARTIAL}

ENTRY_SIZE = 6       # sizeof(struct orc_entry)
_U64 = (1 << 64) - 1
_LITTLE = sys.byteorder == "little"


class OrcError(ImageError, ValueError):
    """ORC tables (or BTF's ``struct orc_entry``) that cannot be read; the message is one line."""


@dataclass(frozen=True)
class OrcEntry:
    """One ``struct orc_entry``, decoded.

    ``flag`` is the 1-bit field named by the format's ``flag_name`` (``end`` up to
    6.2, ``signal`` from 6.3). ``end`` is the ``end`` bit where the format has one
    (4.14 .. 6.3; equal to ``flag`` up to 6.2) and None from 6.4, where END_OF_STACK
    is a type instead. The defaults describe a 6.4+ entry.
    """

    sp_offset: int
    bp_offset: int
    sp_reg: int
    bp_reg: int
    type: str
    flag: bool
    end: bool | None = None
    flag_name: str = "signal"

    @property
    def sp_reg_name(self) -> str:
        return _reg_name(self.sp_reg)

    @property
    def bp_reg_name(self) -> str:
        return _reg_name(self.bp_reg)

    @property
    def signal(self) -> bool:
        """The ``signal`` bit (6.3+): the frame was interrupted, not called; False where there is none."""
        return self.flag and self.flag_name == "signal"

    @property
    def undefined(self) -> bool:
        """No unwind data here: sp_reg UNDEFINED (any version), or type UNDEFINED (6.4+).

        End-of-stack entries count too: they have no frame to describe either
        (see :attr:`end_of_stack` to tell the two apart).
        """
        return self.sp_reg == REG_UNDEFINED or self.type == TYPE_UNDEFINED

    @property
    def end_of_stack(self) -> bool:
        """The kernel stops unwinding here without an error: type END_OF_STACK (6.4+), sp_reg UNDEFINED
        with ``end`` set (before)."""
        if self.end is None:
            return self.type == TYPE_END_OF_STACK
        return self.sp_reg == REG_UNDEFINED and self.end

    @property
    def terminator(self) -> bool:
        """A "weak" section terminator, which ``orc_sort_cmp`` puts before real entries at the same ip:
        type UNDEFINED (6.4+), sp_reg UNDEFINED without ``end`` (before)."""
        if self.end is None:
            return self.type == TYPE_UNDEFINED
        return self.sp_reg == REG_UNDEFINED and not self.end

    def describe(self) -> str:
        """A one-liner in objtool's ``orc dump`` notation: ``"sp:sp+8 bp:(und) type:call"``.

        Flags are shown only when set (``end:1``, ``signal:1``), register names
        are :data:`ORC_REG_NAMES`' ("prev_sp" where objtool says "prevsp").
        """
        text = f"sp:{_reg_text(self.sp_reg, self.sp_offset)} bp:{_reg_text(self.bp_reg, self.bp_offset)} " \
               f"type:{self.type}"
        if self.end:
            text += " end:1"
        if self.signal:
            text += " signal:1"
        return text


def _reg_name(reg: int) -> str:
    return ORC_REG_NAMES.get(reg, f"reg{reg}")


def _reg_text(reg: int, offset: int) -> str:
    """objtool's ``print_reg``: the offset of an indirect base is added after (sp) or inside (bp) the load."""
    if reg == REG_UNDEFINED:
        return "(und)"
    if reg == REG_SP_INDIRECT:
        return f"(sp){offset:+d}"
    if reg == REG_BP_INDIRECT:
        return f"(bp{offset:+d})"
    return f"{_reg_name(reg)}{offset:+d}"


# The three layouts: (type_bits, flag_name) decides where every bit is.
_LAYOUTS = {(2, "end"): "4.14-6.2", (2, "signal"): "6.3", (3, "signal"): "6.4+"}


@dataclass(frozen=True)
class OrcFormat:
    """How the 16 bits after the two offsets are laid out, and what the type numbers mean.

    ``type_bits`` and ``flag_name`` name the layout: (2, "end") 4.14-6.2, (2, "signal")
    6.3 (an ``end`` bit follows ``signal``), (3, "signal") 6.4+.
    """

    type_bits: int
    flag_name: str
    types: dict[int, str]

    def __post_init__(self) -> None:
        if (self.type_bits, self.flag_name) not in _LAYOUTS:
            raise OrcError(f"struct orc_entry with type:{self.type_bits} followed by {self.flag_name}:1 is not a "
                           "layout this reader knows (type:2 end:1, type:2 signal:1 end:1, type:3 signal:1)")

    @property
    def kernels(self) -> str:
        """The kernel versions with this layout: "4.14-6.2", "6.3" or "6.4+"."""
        return _LAYOUTS[(self.type_bits, self.flag_name)]

    @property
    def flag_bit(self) -> int:
        return 8 + self.type_bits

    @property
    def end_bit(self) -> int | None:
        """Bit of ``end`` in the u16: the flag itself up to 6.2, the bit after ``signal`` in 6.3, none after."""
        if self.flag_name == "end":
            return self.flag_bit
        return self.flag_bit + 1 if self.type_bits == 2 else None

    @property
    def terminator_mask(self) -> int:
        """The bits that are all clear in a weak terminator, as ``orc_sort_cmp`` tests it for this layout."""
        if self.end_bit is None:
            return ((1 << self.type_bits) - 1) << 8              # type == ORC_TYPE_UNDEFINED
        return 0xF | 1 << self.end_bit                           # sp_reg == ORC_REG_UNDEFINED && !end

    def type_name(self, number: int) -> str:
        return self.types.get(number, f"unknown_{number}")

    def decode(self, sp_offset: int, bp_offset: int, bits: int) -> OrcEntry:
        """The entry for two offsets and the u16 of bitfields."""
        end_bit = self.end_bit
        return OrcEntry(sp_offset, bp_offset, bits & 0xF, (bits >> 4) & 0xF,
                        self.type_name((bits >> 8) & ((1 << self.type_bits) - 1)), bool(bits >> self.flag_bit & 1),
                        None if end_bit is None else bool(bits >> end_bit & 1), self.flag_name)

    @staticmethod
    def for_version(version: tuple[int, int]) -> OrcFormat:
        """The layout of a kernel by its version (the fallback when BTF and ``.orc_header`` say nothing)."""
        if version >= (6, 4):
            return FORMAT_6_4
        if version == (6, 3):
            return FORMAT_6_3
        return FORMAT_4_14

    @staticmethod
    def from_header(data: bytes) -> OrcFormat | None:
        """The layout named by an ``.orc_header`` hash; None for a hash this module does not know."""
        return ORC_HEADER_HASHES.get(bytes(data))

    @staticmethod
    def from_btf(btf: btf_mod.Btf, version: tuple[int, int]) -> OrcFormat | None:
        """The layout BTF's ``struct orc_entry`` has; None when BTF has no such struct.

        The width of ``type`` and the names of the 1-bit fields after it decide; the
        offsets must be the ones this reader decodes, else :class:`OrcError`.
        """
        layout = btf_mod.struct_layout(btf, "orc_entry")
        if layout is None:
            return None
        where = f"BTF struct orc_entry of the {version[0]}.{version[1]} kernel"
        if layout.size != ENTRY_SIZE:
            raise OrcError(f"{where} is {layout.size} bytes, expected {ENTRY_SIZE}; not a layout this reader knows")
        _check_member(layout, "sp_offset", where, offset=0)
        _check_member(layout, "bp_offset", where, offset=2)
        _check_bits(layout, "sp_reg", where, 32, (4,))
        _check_bits(layout, "bp_reg", where, 36, (4,))
        type_bits = _check_bits(layout, "type", where, 40, (2, 3))
        after = 40 + type_bits
        if layout.field("signal") is not None:
            _check_bits(layout, "signal", where, after, (1,))
            flag_name = "signal"
            if layout.field("end") is not None:
                _check_bits(layout, "end", where, after + 1, (1,))
            elif type_bits == 2:
                raise OrcError(f"{where}: type:2 and signal:1 without end:1; not a layout this reader knows")
        elif layout.field("end") is not None:
            _check_bits(layout, "end", where, after, (1,))
            flag_name = "end"
        else:
            raise OrcError(f"{where} has neither a signal nor an end member; not a layout this reader knows")
        if type_bits == 3 and flag_name == "signal" and layout.field("end") is not None:
            raise OrcError(f"{where}: type:3 with both signal and end; not a layout this reader knows")
        return OrcFormat(type_bits, flag_name, dict(_TYPES_6_4 if type_bits == 3 else _TYPES_4_14))


def _check_member(layout: btf_mod.StructLayout, name: str, where: str, offset: int) -> None:
    got = layout.field(name)
    if got is None:
        raise OrcError(f"{where}: member {name} is missing")
    if got.bits is not None or (got.offset, got.size) != (offset, 2):
        raise OrcError(f"{where}: member {name} is at byte {got.offset}, {got.size} bytes"
                       f"{' (a bitfield)' if got.bits else ''}; expected a s16 at byte {offset}")


def _check_bits(layout: btf_mod.StructLayout, name: str, where: str, bit: int, widths: tuple[int, ...]) -> int:
    """The width of bitfield ``name``, which must start at ``bit`` of the struct."""
    got = layout.field(name)
    if got is None:
        raise OrcError(f"{where}: member {name} is missing")
    if got.bits is None or got.bits[0] != bit or got.bits[1] not in widths:
        shown = f"bits {got.bits[0]}+{got.bits[1]}" if got.bits else f"a {got.size}-byte member at byte {got.offset}"
        wanted = " or ".join(str(w) for w in widths)
        raise OrcError(f"{where}: member {name} is {shown}, expected a {wanted}-bit field at bit {bit}")
    return got.bits[1]


FORMAT_4_14 = OrcFormat(2, "end", _TYPES_4_14)
FORMAT_6_3 = OrcFormat(2, "signal", _TYPES_4_14)
FORMAT_6_4 = OrcFormat(3, "signal", _TYPES_6_4)

# sha1 of orc_types.h, as scripts/orc_hash.sh writes it into .orc_header (20 bytes). Only the hash seen
# in a real kernel is listed: Debian's 6.12.117 (the 6.4 layout; orc_types.h unchanged since 6.4).
ORC_HEADER_HASHES: dict[bytes, OrcFormat] = {
    bytes.fromhex("fe5d32bf581bd63b2ca9a5c65ba5a625eab3fe24"): FORMAT_6_4,
}


class OrcTable:
    """ORC entries sorted by ip as the kernel searches them; entries are decoded on demand.

    Kept as parallel arrays (ips, and the raw offsets and bits of each entry), since
    a vmlinux has ~400,000 entries of which a caller looks at a fraction.
    """

    def __init__(self, ips: Sequence[int], entries: Sequence[OrcEntry]) -> None:
        """A table from decoded entries (tests, or entries from elsewhere); sorted like :meth:`parse`'s."""
        if len(ips) != len(entries):
            raise OrcError(f"{len(ips)} ips for {len(entries)} ORC entries; they must pair up")
        order = _kernel_order(list(ips), [not e.terminator for e in entries])
        self._ips: list[int] = [ips[i] for i in order] if order is not None else list(ips)
        self._decoded: list[OrcEntry] | None = [entries[i] for i in order] if order is not None else list(entries)
        self._raw: tuple[array[int], array[int], array[int]] | None = None
        self._cache: dict[tuple[int, int, int], OrcEntry] = {}
        self.format: OrcFormat | None = None
        self.orc_lookup: array[int] | None = None

    @staticmethod
    def parse(ip_section: tuple[int, bytes], unwind_section: tuple[int, bytes], fmt: OrcFormat,
              where: str = "vmlinux", lookup_section: tuple[int, bytes] | None = None) -> OrcTable:
        """The table in ``.orc_unwind_ip`` and ``.orc_unwind``, each given as (section address, bytes).

        Only ``.orc_unwind_ip``'s address matters (its values are relative to
        themselves); ``.orc_unwind`` is indexed like it. ``lookup_section`` (``.orc_lookup``) is only checked and kept as ``orc_lookup``:
        the kernel fills it at boot, and lookups here search the whole table.
        """
        ip_address, ip_data = ip_section
        orc_data = unwind_section[1]
        count = _count(len(ip_data), 4, where, ".orc_unwind_ip", "s32 entries")
        entries = _count(len(orc_data), ENTRY_SIZE, where, ".orc_unwind", "6-byte struct orc_entry")
        if count != entries:
            raise OrcError(f"{where}: .orc_unwind_ip has {count} entries, .orc_unwind {entries}; "
                           "the two tables must pair up")
        if count == 0:
            raise OrcError(f"{where}: .orc_unwind_ip and .orc_unwind are empty; there is no ORC data to look up")
        orc_lookup = None
        if lookup_section is not None:
            _count(len(lookup_section[1]), 4, where, ".orc_lookup", "u32 entries")
            orc_lookup = _words("I", lookup_section[1])
        ips = _absolute_ips(ip_address, _words("i", ip_data))
        halves = _words("h", orc_data)
        sp, bp = halves[0::3], halves[1::3]
        bits = _words("H", orc_data)[2::3]
        mask = fmt.terminator_mask
        order = _kernel_order(ips, [b & mask != 0 for b in bits])
        if order is not None:
            ips = [ips[i] for i in order]
            sp, bp, bits = (array(a.typecode, [a[i] for i in order]) for a in (sp, bp, bits))
        table = OrcTable.__new__(OrcTable)
        table._ips, table._decoded, table._raw, table._cache = ips, None, (sp, bp, bits), {}
        table.format, table.orc_lookup = fmt, orc_lookup
        return table

    def __len__(self) -> int:
        return len(self._ips)

    def entry(self, index: int) -> OrcEntry:
        """The entry at ``index`` in ip order (raw entries are decoded once per distinct value)."""
        if self._decoded is not None:
            return self._decoded[index]
        assert self._raw is not None and self.format is not None
        sp, bp, bits = self._raw
        key = (sp[index], bp[index], bits[index])
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = self.format.decode(*key)
        return got

    def ip(self, index: int) -> int:
        return self._ips[index]

    def lookup(self, ip: int) -> tuple[int, OrcEntry] | None:
        """(its ip, the entry) in force at ``ip``: the rightmost entry with ip <= ``ip``, as ``__orc_find``.

        None below the first entry (where ``__orc_find`` would return the first
        entry; the kernel never asks there, vmlinux's first entry is at ``_stext``).
        Like the kernel, a caller unwinding from a return address asks for ``ip - 1``.
        """
        index = bisect_right(self._ips, ip) - 1
        if index < 0:
            return None
        return self._ips[index], self.entry(index)

    def at(self, ip: int) -> OrcEntry | None:
        """The entry that starts exactly at ``ip`` (of several, the one in force); None if none starts there."""
        got = self.lookup(ip)
        return got[1] if got is not None and got[0] == ip else None

    def ips_between(self, start: int, end: int) -> list[int]:
        """The distinct ips where an entry starts, in [start, end)."""
        ips = self._ips[bisect_left(self._ips, start):bisect_left(self._ips, end)]
        return [ip for i, ip in enumerate(ips) if i == 0 or ips[i - 1] != ip]

    def __iter__(self) -> Iterator[tuple[int, OrcEntry]]:
        """(ip, entry) in the order the kernel searches, shadowed duplicates included."""
        for index, ip in enumerate(self._ips):
            yield ip, self.entry(index)


def _count(size: int, unit: int, where: str, section: str, what: str) -> int:
    if size % unit:
        raise OrcError(f"{where}: {section} is {size} bytes, not a multiple of {unit} ({what}); "
                       "the section is truncated or not ORC data")
    return size // unit


def _words(typecode: str, data: bytes) -> array[int]:
    """``data`` as little-endian machine words of ``typecode``."""
    words = array(typecode)
    words.frombytes(data)
    if not _LITTLE:
        words.byteswap()
    return words


def _absolute_ips(section_address: int, relative: array[int]) -> list[int]:
    """ip_i = address of entry i + its s32 (``orc_ip()``), wrapped to 64 bits like the kernel's unsigned long."""
    ips = list(map(operator.add, relative, range(section_address, section_address + 4 * len(relative), 4)))
    if ips and (min(ips) < 0 or max(ips) > _U64):
        ips = [ip & _U64 for ip in ips]
    return ips


def _kernel_order(ips: list[int], real: list[bool]) -> list[int] | None:
    """The permutation that sorts entries as ``orc_sort_cmp`` does (by ip, weak terminators first at equal
    ips), stable otherwise; None when they already are in that order (vmlinux, sorted at build time)."""
    keys = [ip << 1 | flag for ip, flag in zip(ips, real)]
    if all(map(operator.le, keys, keys[1:])):
        return None
    return sorted(range(len(keys)), key=keys.__getitem__)
