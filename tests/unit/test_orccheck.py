"""The ORC check on hand-built tables: the seed's pushf/pop with and without the entry objtool adds for it,
the streams of each table, live bytes checked once per site, the report's JSON, and the verdict."""

from __future__ import annotations

import re

from framework.analysis import orccheck
from framework.analysis.findings import Analysis
from framework.analysis.sites import SiteState
from framework.config import default_config
from framework.elf import orc as orc_mod
from framework.elf.orc import OrcEntry, OrcTable
from framework.elf.vmlinux import Site, Symbols
from framework.verdict import judge_orc

F = 0xFFFFFFFF81000000
SAVE_FL = F + 0x10        # a site 0x10 into lock_is_held_type
PV_CALL = bytes.fromhex("ff142500000000")          # call *pv_ops+…  (7 bytes)
PUSHF_POP = bytes.fromhex("9c58" "0f1f440000")     # pushf; pop %rax; nopl 0x0(%rax,%rax,1)


def call(sp: int, bp: int = orc_mod.REG_UNDEFINED, bp_offset: int = 0) -> OrcEntry:
    return OrcEntry(sp, bp_offset, orc_mod.REG_SP, bp, "call", False)


SYMBOLS = Symbols.from_dict({"lock_is_held_type": F, "next_function": F + 0x40, "error_entry": F + 0x100})


def site(**kw: object) -> Site:
    values: dict[str, object] = {"table": "paravirt", "index": 0, "address": SAVE_FL, "length": 7, "original": PV_CALL,
                                     "section": ".text", "op": "irq.save_fl", "slot": 1}
    values.update(kw)
    return Site(**values)  # type: ignore[arg-type]


def table(*entries: tuple[int, OrcEntry]) -> OrcTable:
    return OrcTable([ip for ip, _ in entries], [e for _, e in entries])


# the function: entered at sp+8, a push at +4 makes it sp+16 up to the site and after it
UNION = table((F, call(8)), (F + 4, call(16)), (SAVE_FL + 1, call(24)), (SAVE_FL + 2, call(16)), (F + 0x40, call(8)))
NO_UNION = table((F, call(8)), (F + 4, call(16)), (F + 0x40, call(8)))


def check(tab: OrcTable, streams: list[tuple[str, bytes]], s: Site | None = None) -> tuple[orccheck.Counts,
                                                                                            list[orccheck.Disagreement]]:
    counts, out = orccheck.Counts(), []
    orccheck.check_site(tab, s or site(), streams, SYMBOLS, counts, out, lambda a: a == F + 0x40)
    return counts, out


def test_the_seed_pushf_pop_agrees_where_objtool_recorded_the_union_of_the_streams() -> None:
    counts, out = check(UNION, [("original", PV_CALL), ("live", PUSHF_POP)])
    assert out == [] and counts.agree == counts.boundaries == 1 + 3 and counts.disagree == 0


def test_the_seed_pushf_pop_disagrees_between_its_instructions_without_the_entry() -> None:
    counts, out = check(NO_UNION, [("live", PUSHF_POP)])
    assert counts.disagree == 1 and counts.agree == 2
    [d] = out
    assert (d.address, d.after, d.expected, d.found) == (SAVE_FL + 1, "pushf", "sp:sp+24 bp:(und) type:call",
                                                         "sp:sp+16 bp:(und) type:call")
    assert d.symbol == "lock_is_held_type+0x11" and d.found_ip == F + 4 and d.what == "irq.save_fl"
    assert "ORC says sp:sp+16" in d.describe() and "the stack is sp:sp+24" in d.describe()


def test_bp_based_entries_are_not_moved_by_pushes_but_bp_rules_must_stay() -> None:
    bp_based = OrcEntry(16, -16, orc_mod.REG_BP, orc_mod.REG_PREV_SP, "call", False)
    tab = table((F, call(8)), (SAVE_FL, bp_based))
    counts, out = check(tab, [("live", PUSHF_POP)])
    assert counts.agree == 3 and out == []
    moved_bp = OrcEntry(16, -24, orc_mod.REG_BP, orc_mod.REG_PREV_SP, "call", False)
    counts, out = check(table((F, call(8)), (SAVE_FL, bp_based), (SAVE_FL + 2, moved_bp)), [("live", PUSHF_POP)])
    assert counts.disagree == 2 and "bp:prev_sp-24" in out[0].found


def test_an_entry_state_orc_leaves_undefined_is_counted_not_checked() -> None:
    undefined = OrcEntry(0, 0, orc_mod.REG_UNDEFINED, orc_mod.REG_UNDEFINED, "call", True)
    counts, out = check(table((F, undefined)), [("live", PUSHF_POP)])
    assert counts.undescribed == 1 and counts.boundaries == 0 and out == []


def test_after_a_call_that_returns_on_another_stack_nothing_is_simulated() -> None:
    # call error_entry (pushes a pt_regs for its caller and returns below it), then padding
    code = b"\xe8" + (0x100 - 0x10 - 5).to_bytes(4, "little", signed=True) + b"\x90\x90"
    counts, out = check(NO_UNION, [("original", code)], site(table="alternatives", original=code, op=None))
    assert counts.unknown == 3 and counts.agree == 0 and out == []


def test_the_end_boundary_is_skipped_where_another_function_starts() -> None:
    s = site(address=F + 0x40 - 7)
    counts, _ = check(NO_UNION, [("original", PV_CALL)], s)
    assert counts.boundaries == 0


def test_streams_of_each_table_are_padded_as_the_kernel_pads() -> None:
    # paravirt_patch()'s direct call, then add_nops(): one 2-byte NOP (66 90), not two 1-byte ones
    assert orccheck.streams(site()) == [("original", PV_CALL), ("direct call", bytes.fromhex("e800000000" "6690"))]
    alt = site(table="alternatives", op=None, replacement=bytes.fromhex("9c58"), replacement_address=F + 0x200)
    assert orccheck.streams(alt)[1] == ("replacement", bytes.fromhex("9c58" "0f1f440000"))
    # an alternative the kernel leaves: optimize_nops() turns the assembler's one-byte NOPs into long ones
    smap = site(table="alternatives", op=None, original=b"\x90" * 5, length=5, replacement=bytes.fromhex("9c58"))
    assert orccheck.streams(smap)[0] == ("original", bytes.fromhex("0f1f440000"))
    assert orccheck.optimize_nops(bytes.fromhex("9c" "909090" "58" "90")) == bytes.fromhex("9c" "0f1f00" "58" "90")
    # 11 bytes: 8 + 3 up to 6.2; from 6.3 a jmp over int3s
    assert orccheck.add_nops(11) == bytes.fromhex("0f1f840000000000" "0f1f00")
    assert orccheck.add_nops(11, (6, 12)) == bytes.fromhex("eb09") + b"\xcc" * 9
    thunk = Symbols.from_dict({"__x86_indirect_thunk_r11": F + 0x300})
    ret = site(table="retpolines", length=5, original=b"\xe8" + bytes(4), target=F + 0x300, op=None)
    # call *%r11 (REX.B) and a 2-byte NOP; lfence; call *%r11 is 6 bytes: longer than the site, left out
    assert orccheck.streams(ret, orccheck.thunk_register(thunk))[1:] == [("indirect", bytes.fromhex("41ffd3" "6690"))]
    assert ("ret", b"\xc3\xcc\xcc\xcc\xcc") in orccheck.streams(site(table="returns", length=5, original=bytes(5)))


def test_a_call_to_a_function_that_does_not_return_ends_the_stream() -> None:
    symbols = Symbols.from_dict({"lock_is_held_type": F, "__fortify_panic": F + 0x100})
    code = b"\xe8" + (0x100 - 0x10 - 5).to_bytes(4, "little", signed=True)
    counts, out = orccheck.Counts(), []
    orccheck.check_site(NO_UNION, site(table="call_sites", length=5, original=code, op=None), [("original", code)],
                        symbols, counts, out, lambda a: False)
    assert counts.unreachable == 1 and counts.boundaries == 0 and out == []


def test_live_bytes_of_one_site_under_two_alternatives_are_checked_once() -> None:
    live = PUSHF_POP
    one = SiteState(site(table="alternatives", index=1, op=None, feature="X"), "patched", live)
    two = SiteState(site(table="alternatives", index=2, op=None, feature="!Y"), "patched", live)
    report = orccheck.check_live(NO_UNION, {"alternatives": (one, two)}, SYMBOLS, "booted")
    assert report.total().sites == 1 and report.total().disagree == 1
    again = orccheck.OrcReport.from_json(report.to_json())
    assert again.to_json() == report.to_json() and again.disagreements == report.disagreements


def test_the_verdict_counts_only_disagreements_not_known_and_never_passes_on_nothing() -> None:
    cfg = default_config("t", inspect={"capture": ["booted"], "orc": True},
                         expect={"orc_known": ["^lock_is_held_type\\+"]})
    one = SiteState(site(), "patched", PUSHF_POP)
    report = orccheck.check_live(NO_UNION, {"paravirt": (one,)}, SYMBOLS, "booted")
    assert judge_orc(cfg, cfg.expect, Analysis(orc={"booted": report})) == []
    strict = default_config("t", inspect={"capture": ["booted"], "orc": True})
    [reason] = judge_orc(strict, strict.expect, Analysis(orc={"booted": report}))
    assert re.match(r"ORC at booted: 1 of 3 boundaries disagree \(at most 0 allowed\): paravirt#0 irq.save_fl", reason)
    [nothing] = judge_orc(strict, strict.expect, Analysis())
    assert "checked no ORC data" in nothing


def test_a_modules_sites_are_checked_against_its_own_table_and_left_out_without_one() -> None:
    mod = site(module="kvm")
    live = SiteState(mod, "patched", PUSHF_POP)
    without = orccheck.check_live(UNION, {"kvm:paravirt": (live,)}, SYMBOLS, "booted")
    assert without.rows == {}
    own = orccheck.check_live(UNION, {"kvm:paravirt": (live,)}, SYMBOLS, "booted", {"kvm": NO_UNION})
    assert own.total().disagree == 1 and own.disagreements[0].module == "kvm"
    assert list(own.rows) == ["kvm:paravirt irq.save_fl"]


def test_saved_orc_and_unwind_files_are_read_back_and_a_broken_one_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import pytest

    from framework.errors import ArtefactError
    from framework.report.artefacts import load_analysis, write_analysis
    report = orccheck.check_live(NO_UNION, {"paravirt": (SiteState(site(), "patched", PUSHF_POP),)}, SYMBOLS, "booted")
    write_analysis(tmp_path, Analysis(orc={"booted": report}))
    loaded = load_analysis(tmp_path)
    assert loaded is not None and loaded.orc["booted"].to_json() == report.to_json()
    (tmp_path / "orc.json").write_text(json.dumps({"where": "booted"}))
    with pytest.raises(ArtefactError, match=r"orc\.json: not a list of objects; re-run the config"):
        load_analysis(tmp_path)
    (tmp_path / "orc.json").write_text("[{\"where\": \"booted\"}]")
    with pytest.raises(ArtefactError, match="the saved analysis cannot be read"):
        load_analysis(tmp_path)
