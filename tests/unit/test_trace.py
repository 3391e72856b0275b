"""The patch-event trace's pure core: stages, diffs, the replay model and its self-check."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from framework.analysis.trace import Event, Explainer, Model, counts, diff_runs, stage_of, write_jsonl
from framework.elf.vmlinux import Site, Symbols

BASE = 0xFFFFFFFF81000000


def site(table: str, address: int, length: int, original: bytes = b"") -> Site:
    return Site(table=table, index=0, address=address, length=length,
                original=original or bytes(length), section=".text")


def model(text: bytes, sites: dict[str, list[Site]] | None = None) -> Model:
    symbols = Symbols.from_dict({"stext": BASE, "__SCT__might_resched": BASE + 0x800})
    return Model({BASE: text}, Explainer(sites or {}, symbols), symbols)


def call(seq: int, address: int, old: bytes, new: bytes, stage: str = "paravirt") -> Event:
    return Event(seq, 1.0, "text_poke_early", stage, address, old, new, caller=BASE + 0x10,
                 caller_symbol="apply_paravirt+0x10", symbol="x", window="patching")


def test_stage_of_names_the_stage_from_the_caller() -> None:
    assert stage_of("apply_paravirt") == "paravirt"
    assert stage_of("apply_alternatives") == "alternatives"
    assert stage_of("ftrace_modify_code_direct") == "ftrace"
    assert stage_of("__static_call_transform") == "static_calls"
    assert stage_of("arch_jump_label_transform_queue") == "jump_labels"
    assert stage_of("alternatives_smp_module_add") == "smp_locks"
    assert stage_of("text_poke_bp_batch") == "text_poke_bp"
    assert stage_of("some_driver_init") == "some_driver_init"
    assert stage_of(None) == "unknown"


def test_diff_runs_finds_each_differing_run_across_blocks() -> None:
    a = bytearray(10000)
    b = bytearray(a)
    b[5:8] = b"\x01\x02\x03"
    b[4095:4098] = b"\xff\xff\xff"      # straddles the 4096-byte comparison block
    b[9999] = 1
    assert list(diff_runs(a, bytes(b), 100)) == [(105, 108), (4195, 4198), (10099, 10100)]
    assert list(diff_runs(a, bytes(a), 0)) == []


def test_a_call_whose_old_bytes_the_model_holds_passes_and_is_applied() -> None:
    m = model(bytes.fromhex("ff1500000000") + bytes(10))
    (e,) = m.call(call(0, BASE, bytes.fromhex("ff1500000000"), bytes.fromhex("e80000000090")))
    assert e.seq == 1 and m.check.calls == 1 and not m.check.mismatches
    assert bytes(m.regions[BASE][:6]) == bytes.fromhex("e80000000090")


def test_a_call_whose_old_bytes_differ_from_the_model_is_a_mismatch_once() -> None:
    m = model(bytes(16))
    m.call(call(0, BASE, b"\0", b"\x01"))
    # something wrote 0xcc there unseen: the live old bytes disagree with the model
    events = m.call(call(0, BASE + 4, b"\xcc\x00", b"\x90\x90"))
    assert [e.seq for e in events] == [2]
    assert [(x.seq, x.address, x.expected, x.live) for x in m.check.mismatches] == [(2, BASE + 4, b"\0\0", b"\xcc\0")]
    # the model took the live bytes: the same miss is not reported again
    m.call(call(0, BASE + 4, b"\x90\x90", b"\xcc\xcc"))
    assert len(m.check.mismatches) == 1


def test_old_bytes_that_optimize_nops_rewrote_in_place_are_a_bypass_write_before_the_call() -> None:
    text = b"\x90" * 5 + bytes(11)
    m = model(text, {"alternatives": [site("alternatives", BASE, 5)]})
    events = m.call(call(0, BASE, bytes.fromhex("0f1f440000"), bytes.fromhex("e912345678"), "alternatives"))
    assert [(e.seq, e.source, e.stage, e.old, e.new) for e in events] == [
        (1, "bypass", "optimize_nops", b"\x90" * 5, bytes.fromhex("0f1f440000")),
        (2, "text_poke_early", "alternatives", bytes.fromhex("0f1f440000"), bytes.fromhex("e912345678"))]
    assert not m.check.mismatches and m.check.bypass == {"optimize_nops": 5}


def test_a_skipped_call_is_checked_but_not_applied() -> None:
    m = model(bytes(8))
    e = call(0, BASE, b"\0\0", b"\x90\x90")
    m.call(replace(e, skipped=True))
    assert bytes(m.regions[BASE][:2]) == b"\0\0"


def test_calls_outside_the_modelled_text_are_counted_not_checked() -> None:
    m = model(bytes(8))
    (e,) = m.call(call(0, BASE + 0x100000, b"\x01", b"\x02"))
    assert m.check.outside == 1 and m.check.calls == 0 and e.seq == 1


def test_snapshot_explains_optimize_nops_and_reports_the_rest() -> None:
    text = bytearray(64)
    text[0:3] = b"\x90\x90\x90"        # an alternatives site whose NOPs optimize_nops will merge
    m = model(bytes(text), {"alternatives": [site("alternatives", BASE, 5)]})
    live = bytearray(text)
    live[0:3] = bytes.fromhex("0f1f00")  # the 3-byte NOP written in place
    live[40] = 0xCC                     # a write nobody can explain
    found = m.snapshot("after-patching", {BASE: bytes(live)}, "patching", t=2.0)
    assert [(e.seq, e.stage, e.address, e.old, e.new) for e in found] == [
        (1, "optimize_nops", BASE, b"\x90\x90\x90", bytes.fromhex("0f1f00")),
        (2, "unexplained", BASE + 40, b"\0", b"\xcc")]
    assert m.check.bypass == {"optimize_nops": 3}
    assert [e.address for e in m.check.unexplained] == [BASE + 40]
    assert not m.check.passed and "1 unexplained" in m.check.summary()
    # the model now is the live text: the next snapshot of the same text finds nothing
    assert m.snapshot("again", {BASE: bytes(live)}, "live", t=3.0) == []


def test_nops_outside_an_alternatives_site_are_not_optimize_nops() -> None:
    text = b"\x90\x90" + bytes(30)
    m = model(text, {"alternatives": [site("alternatives", BASE + 16, 4)]})
    live = bytes.fromhex("6690") + bytes(30)
    (event,) = m.snapshot("s", {BASE: live}, "setup", 0.0)
    assert event.stage == "unexplained"


def test_early_writes_lock_prefixes_and_static_call_trampolines_are_explained() -> None:
    text = bytearray(0x900)
    text[0x18:0x20] = b"\x90" * 8
    text[0x20] = 0xF0
    m = model(bytes(text), {"smp_locks": [site("smp_locks", BASE + 0x20, 1)],
                            "alternatives": [site("alternatives", BASE + 0x18, 8)]})
    live = bytearray(text)
    live[0x18:0x21] = bytes.fromhex("0f1f8400000000003e")   # NOPs merged, then lock -> ds on one CPU: one run
    live[0x801:0x805] = b"\x01\x02\x03\x04"   # inside the __SCT__ trampoline
    found = m.snapshot("s", {BASE: bytes(live)}, "patching", 0.0)
    assert [(e.stage, e.address - BASE, len(e.new)) for e in found] == [
        ("optimize_nops", 0x18, 8), ("smp_locks", 0x20, 1), ("static_call", 0x801, 4)]
    early = model(bytes(8))
    (e,) = early.snapshot("start_kernel", {BASE: b"\1" + bytes(7)}, "early", 0.0)
    assert e.stage == "before start_kernel" and early.check.passed


def test_the_self_check_needs_a_snapshot() -> None:
    m = model(bytes(4))
    assert not m.check.passed
    assert "no snapshot" in m.check.summary()


def test_events_round_trip_through_json_lines() -> None:
    events = [call(1, BASE, b"\xff\x15", b"\xe8\x00"),
              Event(2, 3.5, "bypass", "optimize_nops", BASE + 9, b"\x90", b"\x66", symbol="f+0x9", window="patching")]
    fh = io.StringIO()
    assert write_jsonl(events, fh) == 2
    back = [Event.from_json(json.loads(line)) for line in fh.getvalue().splitlines()]
    assert back == events
    assert counts(events) == {"patching": {"paravirt": 1, "optimize_nops": 1}}
    line = events[0].describe()
    assert "paravirt" in line and "ff 15 -> e8 00" in line and "apply_paravirt+0x10" in line
