"""The ORC table reader: tables packed here in each kernel's layout, and the Debian kernels when cached.

Bit positions are written out in this file on purpose (not taken from the module),
so that a wrong shift or mask in ``framework/elf/orc.py`` shows up as a wrong field.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from framework.elf import orc
from framework.elf.btf import Btf
from framework.elf.orc import (
    FORMAT_4_14,
    FORMAT_6_3,
    FORMAT_6_4,
    ORC_REG_NAMES,
    OrcEntry,
    OrcError,
    OrcFormat,
    OrcTable,
)
from framework.elf.vmlinux import Symbols, Vmlinux
from framework.errors import ImageError
from tests.unit.elfasm import BtfWriter

IP_SECTION = 0xFFFFFFFF82C5F474      # where 6.1's .orc_unwind_ip sits: every s32 is negative
TEXT = 0xFFFFFFFF81000000

# Type numbers as the headers define them.
OLD_CALL, OLD_REGS, OLD_REGS_PARTIAL = 0, 1, 2                       # 4.14 .. 6.3
UNDEFINED, END_OF_STACK, CALL, REGS, REGS_PARTIAL = 0, 1, 2, 3, 4     # 6.4 ..
SP, BP, PREV_SP, UND = 5, 4, 1, 0


def bits_6_1(sp_reg: int, bp_reg: int, type_: int, end: int = 0) -> int:
    return sp_reg | bp_reg << 4 | type_ << 8 | end << 10


def bits_6_3(sp_reg: int, bp_reg: int, type_: int, signal: int = 0, end: int = 0) -> int:
    return sp_reg | bp_reg << 4 | type_ << 8 | signal << 10 | end << 11


def bits_6_4(sp_reg: int, bp_reg: int, type_: int, signal: int = 0) -> int:
    return sp_reg | bp_reg << 4 | type_ << 8 | signal << 11


def sections(rows: Sequence[tuple[int, int, int, int]], address: int = IP_SECTION,
             ) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """(.orc_unwind_ip, .orc_unwind) for rows of (ip, sp_offset, bp_offset, bits), in the given order."""
    ips = b"".join(struct.pack("<i", ip - (address + 4 * i)) for i, (ip, *_) in enumerate(rows))
    entries = b"".join(struct.pack("<hhH", sp, bp, bits) for _, sp, bp, bits in rows)
    return (address, ips), (address + len(ips), entries)


def table(rows: Sequence[tuple[int, int, int, int]], fmt: OrcFormat = FORMAT_6_4) -> OrcTable:
    return OrcTable.parse(*sections(rows), fmt, where="test-vmlinux")


# ---- the three layouts


def test_6_1_layout_types_and_end() -> None:
    t = table([(TEXT, 8, 0, bits_6_1(SP, UND, OLD_CALL)),
               (TEXT + 1, 16, -16, bits_6_1(SP, PREV_SP, OLD_CALL)),
               (TEXT + 2, 0, 0, bits_6_1(SP, UND, OLD_REGS)),
               (TEXT + 3, 8, 0, bits_6_1(SP, UND, OLD_REGS_PARTIAL)),
               (TEXT + 4, 0, 0, bits_6_1(UND, UND, OLD_CALL, end=1)),
               (TEXT + 5, 0, 0, bits_6_1(UND, UND, OLD_CALL)),
               (TEXT + 6, -8, 16, bits_6_1(BP, BP, OLD_CALL) | 0xF800),      # bits 11-15 are unused
               (TEXT + 7, 8, 0, bits_6_1(orc.REG_BP_INDIRECT, 15, OLD_CALL))],
              FORMAT_4_14)
    got = [e for _, e in t]
    assert (got[7].sp_reg, got[7].bp_reg, got[7].type, got[7].end) == (orc.REG_BP_INDIRECT, 15, "call", False)
    got = got[:7]
    assert got[0] == OrcEntry(8, 0, SP, UND, "call", False, False, "end")
    assert got[1] == OrcEntry(16, -16, SP, PREV_SP, "call", False, False, "end")
    assert [e.type for e in got] == ["call", "call", "regs", "regs_partial", "call", "call", "call"]
    assert [e.end for e in got] == [False, False, False, False, True, False, False]
    assert [e.flag for e in got] == [e.end for e in got]                 # up to 6.2 the flag is end
    assert not any(e.signal for e in got)
    assert got[4].end_of_stack and got[4].undefined and not got[4].terminator
    assert got[5].terminator and got[5].undefined and not got[5].end_of_stack
    assert (got[6].sp_offset, got[6].bp_offset, got[6].sp_reg, got[6].bp_reg) == (-8, 16, BP, BP)


def test_6_3_layout_has_signal_then_end() -> None:
    t = table([(TEXT, 0, 0, bits_6_3(SP, UND, OLD_REGS, signal=1)),
               (TEXT + 1, 0, 0, bits_6_3(UND, UND, OLD_CALL, end=1)),
               (TEXT + 2, 0, 0, bits_6_3(UND, UND, OLD_CALL)),
               (TEXT + 3, 8, 0, bits_6_3(SP, UND, OLD_REGS_PARTIAL, signal=1, end=1))], FORMAT_6_3)
    got = [e for _, e in t]
    assert [(e.type, e.signal, e.end) for e in got] == [("regs", True, False), ("call", False, True),
                                                         ("call", False, False), ("regs_partial", True, True)]
    assert [e.flag for e in got] == [True, False, False, True]            # from 6.3 the flag is signal
    assert got[1].end_of_stack and not got[1].terminator
    assert got[2].terminator and not got[2].end_of_stack


def test_6_12_layout_types_and_signal() -> None:
    rows = [(TEXT + n, 8, 0, bits_6_4(SP, UND, n)) for n in range(8)]
    rows.append((TEXT + 8, 0, 0, bits_6_4(SP, UND, REGS, signal=1)))
    rows.append((TEXT + 9, 16, -16, bits_6_4(SP, PREV_SP, CALL) | 0xF000))  # bits 12-15 are unused
    rows.append((TEXT + 10, 8, 0, bits_6_4(orc.REG_SP_INDIRECT, 12, CALL)))  # all 4 bits of each register
    got = [e for _, e in table(rows, FORMAT_6_4)]
    assert (got[10].sp_reg, got[10].bp_reg, got[10].type) == (orc.REG_SP_INDIRECT, 12, "call")
    assert [e.type for e in got[:8]] == ["undefined", "end_of_stack", "call", "regs", "regs_partial",
                                         "unknown_5", "unknown_6", "unknown_7"]
    assert [e.end for e in got] == [None] * 11                            # 6.4 dropped end
    assert not any(e.signal for e in got[:8]) and got[8].signal and got[8].flag and got[8].type == "regs"
    assert got[9] == OrcEntry(16, -16, SP, PREV_SP, "call", False)
    assert got[0].terminator and got[0].undefined and not got[0].end_of_stack
    assert got[1].end_of_stack and not got[1].terminator
    assert not got[2].undefined and not got[2].terminator


def test_format_by_version() -> None:
    for version in ((4, 14), (5, 10), (6, 1), (6, 2)):
        assert OrcFormat.for_version(version) == FORMAT_4_14
    assert OrcFormat.for_version((6, 3)) == FORMAT_6_3
    for version in ((6, 4), (6, 6), (6, 12), (7, 0)):
        assert OrcFormat.for_version(version) == FORMAT_6_4
    assert (FORMAT_4_14.type_bits, FORMAT_4_14.flag_name, FORMAT_4_14.end_bit) == (2, "end", 10)
    assert (FORMAT_6_3.type_bits, FORMAT_6_3.flag_name, FORMAT_6_3.end_bit) == (2, "signal", 11)
    assert (FORMAT_6_4.type_bits, FORMAT_6_4.flag_name, FORMAT_6_4.end_bit) == (3, "signal", None)
    assert FORMAT_4_14.types == {0: "call", 1: "regs", 2: "regs_partial"}
    assert FORMAT_6_4.types == {0: "undefined", 1: "end_of_stack", 2: "call", 3: "regs", 4: "regs_partial"}
    assert [f.kernels for f in (FORMAT_4_14, FORMAT_6_3, FORMAT_6_4)] == ["4.14-6.2", "6.3", "6.4+"]
    with pytest.raises(OrcError, match="not a layout this reader knows"):
        OrcFormat(3, "end", {})


def test_format_by_orc_header() -> None:
    # The 20 bytes of Debian 6.12.117's .orc_header.
    assert OrcFormat.from_header(bytes.fromhex("fe5d32bf581bd63b2ca9a5c65ba5a625eab3fe24")) == FORMAT_6_4
    assert OrcFormat.from_header(bytes(20)) is None


def test_register_names() -> None:
    assert ORC_REG_NAMES == {0: "undef", 1: "prev_sp", 2: "dx", 3: "di", 4: "bp", 5: "sp", 6: "r10", 7: "r13",
                             8: "bp_indirect", 9: "sp_indirect", 10: "ax"}
    assert (orc.REG_UNDEFINED, orc.REG_PREV_SP, orc.REG_DX, orc.REG_DI, orc.REG_BP, orc.REG_SP) == (0, 1, 2, 3, 4, 5)
    assert (orc.REG_R10, orc.REG_R13, orc.REG_BP_INDIRECT, orc.REG_SP_INDIRECT) == (6, 7, 8, 9)
    e = OrcEntry(8, -16, orc.REG_R13, 11, "call", False)
    assert (e.sp_reg_name, e.bp_reg_name) == ("r13", "reg11")


# ---- describe()


@pytest.mark.parametrize("entry, text", [
    (OrcEntry(8, 0, SP, UND, "call", False), "sp:sp+8 bp:(und) type:call"),
    (OrcEntry(16, -16, SP, PREV_SP, "call", False), "sp:sp+16 bp:prev_sp-16 type:call"),
    (OrcEntry(16, -16, BP, PREV_SP, "call", False), "sp:bp+16 bp:prev_sp-16 type:call"),
    (OrcEntry(8, 0, orc.REG_SP_INDIRECT, UND, "call", False), "sp:(sp)+8 bp:(und) type:call"),
    (OrcEntry(-8, 0, orc.REG_BP_INDIRECT, BP, "call", False), "sp:(bp-8) bp:bp+0 type:call"),
    (OrcEntry(0, 0, SP, UND, "regs", True), "sp:sp+0 bp:(und) type:regs signal:1"),
    (OrcEntry(0, 0, UND, UND, "undefined", False), "sp:(und) bp:(und) type:undefined"),
    (OrcEntry(0, 0, UND, UND, "end_of_stack", False), "sp:(und) bp:(und) type:end_of_stack"),
    (OrcEntry(0, 0, UND, UND, "call", True, True, "end"), "sp:(und) bp:(und) type:call end:1"),
    (OrcEntry(8, 0, SP, UND, "regs_partial", True, True), "sp:sp+8 bp:(und) type:regs_partial end:1 signal:1"),
    (OrcEntry(160, 0, orc.REG_R10, UND, "call", False), "sp:r10+160 bp:(und) type:call"),
])
def test_describe(entry: OrcEntry, text: str) -> None:
    assert entry.describe() == text


def test_describe_of_parsed_entries() -> None:
    t = table([(TEXT, 8, 0, bits_6_1(SP, UND, OLD_CALL)), (TEXT + 4, 0, 0, bits_6_1(UND, UND, OLD_CALL, end=1))],
              FORMAT_4_14)
    assert [e.describe() for _, e in t] == ["sp:sp+8 bp:(und) type:call", "sp:(und) bp:(und) type:call end:1"]


# ---- lookup


def test_lookup_takes_the_greatest_ip_at_or_below() -> None:
    rows = [(TEXT, 8, 0, bits_6_4(SP, UND, CALL)),
            (TEXT + 0x10, 16, 0, bits_6_4(SP, UND, CALL)),
            (TEXT + 0x20, 16, -16, bits_6_4(SP, PREV_SP, CALL)),
            (TEXT + 0x30, 0, 0, bits_6_4(UND, UND, UNDEFINED))]
    t = table(rows)
    assert len(t) == 4
    assert t.lookup(TEXT - 1) is None                                     # below the first entry
    for ip, sp, bp, _ in rows:
        got = t.lookup(ip)                                                # exact hits
        assert got is not None and got[0] == ip and (got[1].sp_offset, got[1].bp_offset) == (sp, bp)
    got = t.lookup(TEXT + 0x1F)
    assert got is not None and got[0] == TEXT + 0x10 and got[1].sp_offset == 16
    got = t.lookup(TEXT + 0x21)
    assert got is not None and got[1].describe() == "sp:sp+16 bp:prev_sp-16 type:call"
    got = t.lookup(TEXT + 0x10_0000)                                      # after the last: the last holds
    assert got is not None and got[0] == TEXT + 0x30 and got[1].type == "undefined"
    assert t.at(TEXT + 0x20) == OrcEntry(16, -16, SP, PREV_SP, "call", False)
    assert t.at(TEXT + 0x21) is None and t.at(TEXT - 1) is None
    assert t.ips_between(TEXT + 1, TEXT + 0x30) == [TEXT + 0x10, TEXT + 0x20]
    assert t.ips_between(TEXT, TEXT + 0x31) == [r[0] for r in rows]
    assert t.ips_between(TEXT + 0x40, TEXT + 0x50) == []
    assert [t.ip(i) for i in range(len(t))] == [r[0] for r in rows]


@pytest.mark.parametrize("fmt, weak, real", [
    (FORMAT_4_14, bits_6_1(UND, UND, OLD_CALL), bits_6_1(SP, UND, OLD_CALL)),
    (FORMAT_6_3, bits_6_3(UND, UND, OLD_CALL), bits_6_3(SP, UND, OLD_CALL)),
    (FORMAT_6_4, bits_6_4(UND, UND, UNDEFINED), bits_6_4(SP, UND, CALL)),
])
def test_a_real_entry_beats_a_weak_terminator_at_the_same_ip(fmt: OrcFormat, weak: int, real: int) -> None:
    # objtool ends each object's text with a terminator; the next object's first function starts there.
    before = (TEXT, 16, 0, real)
    for rows in ([before, (TEXT + 8, 0, 0, weak), (TEXT + 8, 8, 0, real)],
                 [before, (TEXT + 8, 8, 0, real), (TEXT + 8, 0, 0, weak)]):
        t = table(rows, fmt)
        got = t.lookup(TEXT + 9)
        assert got is not None and got[0] == TEXT + 8 and got[1].sp_offset == 8 and not got[1].undefined
        assert t.at(TEXT + 8) == got[1]
        assert [e.terminator for _, e in t] == [False, True, False]      # orc_sort_cmp: weak ones on the left
        assert t.ips_between(TEXT, TEXT + 16) == [TEXT, TEXT + 8]         # one ip, two entries


def test_end_of_stack_is_not_weak() -> None:
    # An end entry (sp_reg undefined, end set) at a terminator's ip stays in force whatever the order.
    for rows in ([(TEXT, 0, 0, bits_6_1(UND, UND, OLD_CALL, end=1)), (TEXT, 0, 0, bits_6_1(UND, UND, OLD_CALL))],
                 [(TEXT, 0, 0, bits_6_1(UND, UND, OLD_CALL)), (TEXT, 0, 0, bits_6_1(UND, UND, OLD_CALL, end=1))]):
        assert table(rows, FORMAT_4_14).at(TEXT) == OrcEntry(0, 0, UND, UND, "call", True, True, "end")
    for rows in ([(TEXT, 0, 0, bits_6_4(UND, UND, END_OF_STACK)), (TEXT, 0, 0, bits_6_4(UND, UND, UNDEFINED))],
                 [(TEXT, 0, 0, bits_6_4(UND, UND, UNDEFINED)), (TEXT, 0, 0, bits_6_4(UND, UND, END_OF_STACK))]):
        got = table(rows).at(TEXT)
        assert got is not None and got.end_of_stack


def test_equal_ips_of_real_entries_keep_their_order_and_the_last_wins() -> None:
    # __orc_find takes the rightmost duplicate; the sort keeps the file's order among real entries.
    rows = [(TEXT, 8, 0, bits_6_4(SP, UND, CALL)), (TEXT, 16, 0, bits_6_4(SP, UND, CALL)),
            (TEXT, 24, 0, bits_6_4(SP, UND, CALL))]
    assert [e.sp_offset for _, e in table(rows)] == [8, 16, 24]
    got = table(rows).at(TEXT)
    assert got is not None and got.sp_offset == 24
    got = table(rows[::-1]).at(TEXT)
    assert got is not None and got.sp_offset == 8


def test_unsorted_input_is_sorted_by_ip() -> None:
    rows = [(TEXT + 0x100 * i, 8 * (i % 7 + 1), 0, bits_6_4(SP, UND, CALL)) for i in range(200)]
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    t = table(shuffled)
    assert [ip for ip, _ in t] == [r[0] for r in rows]
    for ip, sp, _, _ in rows:
        got = t.lookup(ip + 0x80)
        assert got is not None and got[0] == ip and got[1].sp_offset == sp


def test_ips_are_relative_to_each_entry() -> None:
    # The same ip stored at entry 0 and entry 1 has different s32 values: each is relative to its own slot.
    ip_sec, orc_sec = sections([(TEXT, 8, 0, bits_6_4(SP, UND, CALL)), (TEXT + 4, 16, 0, bits_6_4(SP, UND, CALL))])
    assert struct.unpack("<ii", ip_sec[1]) == (TEXT - IP_SECTION, TEXT + 4 - IP_SECTION - 4)
    t = OrcTable.parse(ip_sec, orc_sec, FORMAT_6_4)
    assert [ip for ip, _ in t] == [TEXT, TEXT + 4]
    # A module: text above its .orc_unwind_ip, positive offsets.
    t = OrcTable.parse(*sections([(0xFFFFFFFFC0001000, 8, 0, bits_6_4(SP, UND, CALL))], 0xFFFFFFFFC0000000),
                       FORMAT_6_4)
    assert t.ip(0) == 0xFFFFFFFFC0001000


def test_table_from_decoded_entries() -> None:
    call = OrcEntry(8, 0, SP, UND, "call", False)
    weak = OrcEntry(0, 0, UND, UND, "undefined", False)
    t = OrcTable([TEXT + 8, TEXT, TEXT + 8], [call, OrcEntry(16, 0, SP, UND, "call", False), weak])
    assert [(ip, e.sp_offset) for ip, e in t] == [(TEXT, 16), (TEXT + 8, 0), (TEXT + 8, 8)]
    assert t.at(TEXT + 8) == call and t.format is None and t.orc_lookup is None
    with pytest.raises(OrcError, match="2 ips for 1 ORC entries"):
        OrcTable([TEXT, TEXT + 1], [call])


def test_orc_lookup_is_kept_but_not_used() -> None:
    rows = [(TEXT + 0x10 * i, 8 * (i + 1), 0, bits_6_4(SP, UND, CALL)) for i in range(4)]
    ip_sec, orc_sec = sections(rows)
    garbage = struct.pack("<4I", 3, 0, 0xFFFFFFFF, 1)                     # would mislead a block search
    t = OrcTable.parse(ip_sec, orc_sec, FORMAT_6_4, lookup_section=(0xFFFFFFFF8300ADA0, garbage))
    assert t.orc_lookup is not None and list(t.orc_lookup) == [3, 0, 0xFFFFFFFF, 1]
    for i in range(4):
        got = t.lookup(TEXT + 0x10 * i + 3)
        assert got is not None and got[1].sp_offset == 8 * (i + 1)
    with pytest.raises(OrcError, match=r"test: \.orc_lookup is 6 bytes, not a multiple of 4"):
        OrcTable.parse(ip_sec, orc_sec, FORMAT_6_4, "test", (0, bytes(6)))


# ---- errors


def _rows(n: int) -> list[tuple[int, int, int, int]]:
    return [(TEXT + i, 8, 0, bits_6_4(SP, UND, CALL)) for i in range(n)]


@pytest.mark.parametrize("ip_bytes, orc_bytes, message", [
    (4 * 3 + 2, 6 * 3, r"vmlinux-6\.1: \.orc_unwind_ip is 14 bytes, not a multiple of 4"),
    (4 * 3, 6 * 3 - 1, r"vmlinux-6\.1: \.orc_unwind is 17 bytes, not a multiple of 6"),
    (4 * 3, 6 * 2, r"vmlinux-6\.1: \.orc_unwind_ip has 3 entries, \.orc_unwind 2"),
    (0, 0, r"vmlinux-6\.1: \.orc_unwind_ip and \.orc_unwind are empty"),
])
def test_bad_sections_say_what_is_wrong(ip_bytes: int, orc_bytes: int, message: str) -> None:
    ip_sec, orc_sec = sections(_rows(4))
    with pytest.raises(OrcError, match=message) as err:
        OrcTable.parse((ip_sec[0], ip_sec[1][:ip_bytes]), (orc_sec[0], orc_sec[1][:orc_bytes]), FORMAT_6_4,
                       where="vmlinux-6.1")
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, ImageError)


# ---- from BTF


def orc_entry_btf(type_bits: int = 3, flags: Sequence[str] = ("signal",), sp_reg_bit: int = 32, size: int = 6,
                  members: Sequence[str] = ("sp_offset", "bp_offset")) -> Btf:
    """A BTF blob with ``struct orc_entry`` laid out as the kernel's (bitfields in kind_flag members)."""
    b = BtfWriter()
    s16 = b.int_("s16", 2)
    b.int_("long", 8)                                                     # something before, as in real BTF
    unsigned = b.int_("unsigned int", 4)
    fields = [(name, s16, 16 * i) for i, name in enumerate(members)]
    fields += [("sp_reg", unsigned, sp_reg_bit), ("bp_reg", unsigned, 36), ("type", unsigned, 40)]
    widths = {"sp_reg": 4, "bp_reg": 4, "type": type_bits}
    for i, name in enumerate(flags):
        fields.append((name, unsigned, 40 + type_bits + i))
        widths[name] = 1
    b.struct("orc_entry", size, fields, bitfields=widths)
    return Btf(b.blob())


def test_from_btf_reads_each_layout() -> None:
    assert OrcFormat.from_btf(orc_entry_btf(2, ("end",)), (6, 1)) == FORMAT_4_14
    assert OrcFormat.from_btf(orc_entry_btf(2, ("signal", "end")), (6, 3)) == FORMAT_6_3
    assert OrcFormat.from_btf(orc_entry_btf(3, ("signal",)), (6, 12)) == FORMAT_6_4
    # BTF wins over the version
    assert OrcFormat.from_btf(orc_entry_btf(3, ("signal",)), (6, 1)) == FORMAT_6_4


def test_from_btf_without_the_struct() -> None:
    b = BtfWriter()
    b.int_("long", 8)
    assert OrcFormat.from_btf(Btf(b.blob()), (6, 1)) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"sp_reg_bit": 33}, "member sp_reg is bits 33\\+4, expected a 4-bit field at bit 32"),
    ({"type_bits": 4}, "member type is bits 40\\+4, expected a 2 or 3-bit field at bit 40"),
    ({"size": 8}, "is 8 bytes, expected 6"),
    ({"members": ("sp_offset",)}, "member bp_offset is missing"),
    ({"members": ("bp_offset", "sp_offset")}, "member sp_offset is at byte 2, 2 bytes; expected a s16 at byte 0"),
    ({"flags": ()}, "neither a signal nor an end member"),
    ({"type_bits": 2, "flags": ("signal",)}, "type:2 and signal:1 without end:1"),
    ({"type_bits": 3, "flags": ("signal", "end")}, "type:3 with both signal and end"),
    ({"type_bits": 2, "flags": ("end", "signal")}, "member signal is bits 43\\+1, expected a 1-bit field at bit 42"),
])
def test_from_btf_refuses_other_layouts(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(OrcError, match=message) as err:
        OrcFormat.from_btf(orc_entry_btf(**kwargs), (6, 12))
    assert str(err.value).startswith("BTF struct orc_entry of the 6.12 kernel")
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)


# ---- size


def test_a_vmlinux_sized_table() -> None:
    # ~400,000 entries (6.1 has 384,849) parsed, then 100,000 lookups; the time is printed, not asserted.
    import time
    n = 400_000
    rng = random.Random(7)
    ips, step = [], TEXT
    for _ in range(n):
        ips.append(step)
        step += rng.randrange(1, 40)
    sp = [8 * rng.randrange(1, 12) for _ in range(n)]
    kinds = [bits_6_1(SP, UND, OLD_CALL), bits_6_1(SP, PREV_SP, OLD_CALL), bits_6_1(BP, PREV_SP, OLD_CALL)]
    bits = [kinds[i % 3] for i in range(n)]
    ip_sec, orc_sec = sections(list(zip(ips, sp, [-16] * n, bits)))
    start = time.perf_counter()
    t = OrcTable.parse(ip_sec, orc_sec, FORMAT_4_14)
    parsed = time.perf_counter() - start
    probes = [rng.randrange(n) for _ in range(100_000)]
    start = time.perf_counter()
    found = [t.lookup(ips[i] + (ips[i + 1] - ips[i] - 1 if i + 1 < n else 5)) for i in probes]
    looked = time.perf_counter() - start
    print(f"parse {n} entries: {parsed * 1000:.0f} ms; 100k lookups: {looked * 1000:.0f} ms")
    assert len(t) == n
    for i, got in zip(probes, found):
        assert got is not None and got[0] == ips[i] and got[1].sp_offset == sp[i]
        assert got[1].sp_reg == (BP if i % 3 == 2 else SP)


# ---- the Debian kernels, when patchscope has fetched them

KERNELS = Path("/root/.cache/patchscope/kernels")
DEBIAN = {(6, 1): KERNELS / "linux-image-6.1.0-56-amd64_6.1.192-2_amd64",
          (6, 12): KERNELS / "linux-image-6.12.117+deb12-amd64_6.12.117-1_deb12u1_amd64"}


@pytest.mark.parametrize("version", sorted(DEBIAN))
def test_debian_kernel_tables(version: tuple[int, int]) -> None:
    d = DEBIAN[version]
    if not (d / "vmlinux").is_file() or not (d / "vmlinux.syms").is_file():
        pytest.skip(f"the Debian {version[0]}.{version[1]} kernel is not cached at {d}")
    with Vmlinux(d / "vmlinux", Symbols.from_elf(d / "vmlinux.syms")) as vm:
        assert vm.version == version and vm.btf is not None
        fmt = OrcFormat.from_btf(vm.btf, vm.version)
        assert fmt == OrcFormat.for_version(version)
        ip_sec, orc_sec = (vm.sections[name] for name in (".orc_unwind_ip", ".orc_unwind"))
        t = OrcTable.parse((ip_sec.address, vm.read(ip_sec.address, ip_sec.size)),
                           (orc_sec.address, vm.read(orc_sec.address, orc_sec.size)), fmt, where=str(d))
        assert len(t) > 350_000 and t.ip(0) == vm.sections[".text"].address
        calls = [e for _, e in t if e.type == "call" and e.sp_reg == orc.REG_SP]
        assert len(calls) > 0.8 * len(t) and all(e.sp_offset % 8 == 0 for e in calls)
        for name in ("vfs_read", "schedule", "do_syscall_64"):
            got = t.lookup(vm.symbols.address(name) or 0)
            assert got is not None and got[1].describe() == "sp:sp+8 bp:(und) type:call", name
        entry = t.lookup(vm.symbols.address("entry_SYSCALL_64") or 0)
        assert entry is not None and entry[1].end_of_stack and entry[1].undefined and not entry[1].terminator
        if version >= (6, 4):
            header = vm.sections[".orc_header"]
            assert OrcFormat.from_header(vm.read(header.address, header.size)) == fmt
