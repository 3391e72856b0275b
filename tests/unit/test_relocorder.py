"""Seed 002's order check: writes under relocations applied later, on hand-made traces."""

from __future__ import annotations

import struct

from framework.analysis.relocorder import Overlap, Relocation, check_order, written_ranges
from framework.analysis.trace import APPLY_RELOCATE_ADD, Event
from framework.elf import ko as ko_mod

TEXT = 0xFFFFFFFFC0000000


def rela(offset: int, kind: int, symbol: int = 1, addend: int = -4) -> bytes:
    return struct.pack("<QQq", offset, symbol << 32 | kind, addend)


def write(seq: int, address: int, new: bytes, stage: str = "paravirt") -> Event:
    return Event(seq, 0.0, "text_poke_early", stage, address, b"\0" * len(new), new, symbol=f"f+{address - TEXT:#x}",
                 module="psm_lp")


def marker(seq: int) -> Event:
    return Event(seq, 0.0, APPLY_RELOCATE_ADD, "livepatch_relocations", TEXT, b"", b"", module="psm_lp")


def test_written_ranges_follow_the_relocation_sizes_and_merge() -> None:
    entries = rela(0x10, ko_mod.R_X86_64_PC32) + rela(0x14, ko_mod.R_X86_64_PLT32) + rela(0x40, ko_mod.R_X86_64_64) \
        + rela(0x80, ko_mod.R_X86_64_NONE) + b"\1\2\3"     # a NONE entry writes nothing; a torn tail is ignored
    assert written_ranges(entries, TEXT) == ((TEXT + 0x10, TEXT + 0x18), (TEXT + 0x40, TEXT + 0x48))


def test_a_patch_before_a_relocation_on_the_same_bytes_is_reported() -> None:
    # a pv site "ff 15 <disp32>" at +0x20: its disp32 (+0x22) is a livepatch relocation, applied late
    site_patched = write(1, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))    # pushf; pop %rax; nopl
    elsewhere = write(2, TEXT + 0x100, bytes.fromhex("90"))
    late = Relocation(3, "psm_lp", ".klp.rela.psm_target..text", TEXT, True, written_ranges(
        rela(0x22, ko_mod.R_X86_64_PC32), TEXT))
    got = check_order([site_patched, elsewhere, marker(3)], [late])
    assert got == [Overlap(3, 1, TEXT + 0x20, 4, "psm_lp", ".klp.rela.psm_target..text", True, "paravirt",
                           "f+0x20")]
    assert "lies under the livepatch relocation .klp.rela.psm_target..text applied later (#3)" in got[0].describe()
    assert Overlap.from_json(got[0].to_json()) == got[0]


def test_relocations_applied_before_the_patch_are_the_right_order() -> None:
    early = Relocation(1, "psm_lp", ".rela.text", TEXT, False, written_ranges(rela(0x22, ko_mod.R_X86_64_PC32), TEXT))
    patched_after = write(2, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))
    assert check_order([marker(1), patched_after], [early]) == []


def test_adjacent_bytes_do_not_overlap_and_skipped_writes_do_not_count() -> None:
    rel = Relocation(9, "m", ".rela.text", TEXT, False, ((TEXT + 0x10, TEXT + 0x14),))
    before = write(1, TEXT + 0x0C, b"\x90" * 4)      # ends where the relocation starts
    after_end = write(2, TEXT + 0x14, b"\x90")
    skipped = Event(3, 0.0, "text_poke_early", "paravirt", TEXT + 0x10, b"\0", b"\x90", skipped=True)
    assert check_order([before, after_end, skipped], [rel]) == []
    straddling = write(4, TEXT + 0x0E, b"\x90" * 4)   # two of its bytes are the relocation's
    assert [(o.write_seq, o.size) for o in check_order([straddling], [rel])] == [(4, 2)]
