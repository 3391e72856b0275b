"""Seed 002's order check: writes under relocations applied later, on hand-made traces."""

from __future__ import annotations

import struct

from framework.analysis.relocorder import Overlap, Relocation, check_order, written_ranges
from framework.analysis.trace import APPLY_RELOCATE_ADD, MODULE_FINALIZE, Event
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


def finalize(seq: float, module: str) -> Event:
    return Event(int(seq), 0.0, MODULE_FINALIZE, "module_finalize", 0, b"", b"", module=module)


def claim(module: str, seq: int = 0, base: int = TEXT) -> Relocation:
    """The loader's relocation of a module's .text: from then on its bytes are that module's."""
    return Relocation(seq, module, ".rela.text", base, False, (), 0x1000)


def test_a_patch_before_a_relocation_on_the_same_bytes_is_reported() -> None:
    # a pv site "ff 15 <disp32>" at +0x20: its disp32 (+0x22) is a livepatch relocation, applied late
    site_patched = write(1, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))    # pushf; pop %rax; nopl
    elsewhere = write(2, TEXT + 0x100, bytes.fromhex("90"))
    late = Relocation(3, "psm_lp", ".klp.rela.psm_target..text", TEXT, True, written_ranges(
        rela(0x22, ko_mod.R_X86_64_PC32), TEXT))
    got = check_order([finalize(0.5, "psm_lp"), site_patched, elsewhere, marker(3)], [claim("psm_lp"), late])
    assert got == [Overlap(3, 1, TEXT + 0x20, 4, "psm_lp", ".klp.rela.psm_target..text", True, "paravirt",
                           "f+0x20")]
    assert "lies under the livepatch relocation .klp.rela.psm_target..text applied later (#3)" in got[0].describe()
    assert Overlap.from_json(got[0].to_json()) == got[0]


def test_relocations_applied_before_the_patch_are_the_right_order() -> None:
    early = Relocation(1, "psm_lp", ".rela.text", TEXT, False, written_ranges(rela(0x22, ko_mod.R_X86_64_PC32), TEXT))
    patched_after = write(2, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))
    assert check_order([marker(1), patched_after], [early]) == []


def test_adjacent_bytes_do_not_overlap_and_skipped_writes_do_not_count() -> None:
    rel = Relocation(9, "m", ".rela.text", TEXT, False, ((TEXT + 0x10, TEXT + 0x14),), 0x1000)
    before = write(1, TEXT + 0x0C, b"\x90" * 4)      # ends where the relocation starts
    after_end = write(2, TEXT + 0x14, b"\x90")
    skipped = Event(3, 0.0, "text_poke_early", "paravirt", TEXT + 0x10, b"\0", b"\x90", skipped=True)
    assert check_order([before, after_end, skipped], [claim("m"), rel]) == []
    straddling = write(4, TEXT + 0x0E, b"\x90" * 4)   # two of its bytes are the relocation's
    assert [(o.write_seq, o.size) for o in check_order([straddling], [claim("m"), rel])] == [(4, 2)]


def test_a_write_to_memory_another_module_had_then_is_not_this_modules() -> None:
    # psm_target's init text was at TEXT and got a NOP5 (ftrace); freed after its init, the
    # memory went to psm_lp, whose .rela.text then wrote the same bytes: no hazard
    theirs = write(2, TEXT, bytes.fromhex("0f1f440000"), stage="ftrace")
    mine = Relocation(5, "psm_lp", ".rela.text", TEXT, False, ((TEXT + 1, TEXT + 5),), 0x1000)
    assert check_order([theirs], [claim("psm_target", 1), mine]) == []
    # the same write made after psm_lp's own loader relocations is psm_lp's, and is reported
    late = Relocation(9, "psm_lp", ".klp.rela.psm_target..text", TEXT, True, ((TEXT + 1, TEXT + 5),))
    again = write(7, TEXT, bytes.fromhex("0f1f440000"), stage="ftrace")
    events = [theirs, finalize(6, "psm_lp"), again]
    assert [o.write_seq for o in check_order(events, [claim("psm_target", 1), mine, late])] == [7]


def test_a_retried_load_is_a_load_of_its_own() -> None:
    # busybox's insmod retries a refused module with init_module(): the module is loaded twice at the
    # same addresses; the second load's relocations do not meet the first load's patch writes
    first = write(2, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))
    retry_claim = Relocation(5, "psm_lp", ".rela.text", TEXT, False, ((TEXT + 0x22, TEXT + 0x26),), 0x1000)
    events = [finalize(1, "psm_lp"), first, finalize(6, "psm_lp")]
    assert check_order(events, [claim("psm_lp"), retry_claim]) == []
    # ...while the retry's late livepatch relocation meets the retry's own patch write, and only that
    second = write(7, TEXT + 0x20, bytes.fromhex("9c580f1f4000"))
    late = Relocation(9, "psm_lp", ".klp.rela.psm_target..text", TEXT, True, ((TEXT + 0x22, TEXT + 0x26),))
    got = check_order([*events, second], [claim("psm_lp"), retry_claim, late])
    assert [(o.relocation_seq, o.write_seq) for o in got] == [(9, 7)]
