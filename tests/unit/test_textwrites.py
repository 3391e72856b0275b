"""The plugin tracer's pure core: its log read, made a trace, checked, and compared with another trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.analysis import textwrites as tw
from framework.analysis.trace import CheckResult, Event, Explainer, Model
from framework.elf.vmlinux import Symbols
from framework.vm import plugin

BASE = 0xFFFFFFFF81000000
PHYS = 0x1000000                  # where the text is placed in guest physical memory
TEXT = ((BASE, BASE + 0x3000),)
SYMBOLS = Symbols.from_dict({"stext": BASE, "apply_paravirt": BASE + 0x2000, "text_poke_early": BASE + 0x2100,
                             "start_kernel": BASE + 0x2200, "alternative_instructions": BASE + 0x2300,
                             "apply_returns": BASE + 0x2400, "memcpy": BASE + 0x2500})
WATCHED = [tw.Watch(1, "start_kernel", BASE + 0x2200, BASE + 0x2300, "b"),
           tw.Watch(2, "alternative_instructions", BASE + 0x2300, BASE + 0x2400, "b"),
           tw.Watch(3, "apply_paravirt", BASE + 0x2000, BASE + 0x2100),
           tw.Watch(4, "text_poke_early", BASE + 0x2100, BASE + 0x2200, "e"),
           tw.Watch(5, "apply_returns", BASE + 0x2400, BASE + 0x2500)]
PC = BASE + 0x2510                # a store from memcpy


def rec(kind: int, *, size: int = 0, ident: int = 0, vaddr: int = 0, paddr: int = 0, value: bytes = b"",
        ns: int = 0, vcpu: int = 0, inside: int = 0) -> bytes:
    return tw.RECORD.pack(kind, size, ident, vcpu, inside, vaddr, paddr, PC, value.ljust(16, b"\0"), ns)


def store(vaddr: int, value: bytes, *, paddr: int | None = None, ns: int = 2_000_000_000, stage: int = 0,
          inside: int = 0) -> bytes:
    """A store as the plugin logs it: made inside the stage function ``stage`` (a watch id), and maybe inside a
    writer (``inside`` flags)."""
    return rec(tw.REC_STORE, size=len(value), vaddr=vaddr, paddr=PHYS + vaddr - BASE if paddr is None else paddr,
               value=value, ns=ns, ident=stage, inside=inside)


def enter(ident: int) -> bytes:
    return rec(tw.REC_ENTER, ident=ident)


def leave(ident: int) -> bytes:
    return rec(tw.REC_RETURN, ident=ident)


def log(*body: bytes) -> bytes:
    return tw.MAGIC.ljust(tw.RECORD.size, b"\0") + b"".join(body)


def learn(vaddr: int = BASE, paddr: int = PHYS, whole: bool = True) -> bytes:
    return rec(tw.REC_LEARN, ident=1 if whole else 0, vaddr=vaddr, paddr=paddr)


def fresh_model(text: bytes = bytes(0x3000)) -> Model:
    explainer = Explainer({}, SYMBOLS)
    explainer.strict = True
    return Model({BASE: text}, explainer, SYMBOLS)


def convert(data: bytes, model: Model | None = None) -> tuple[list[Event], tw.Stats, Model]:
    m = model or fresh_model()
    events, stats = tw.convert(tw.records(data), WATCHED, TEXT, m, SYMBOLS, started=1.0)
    return events, stats, m


def test_a_copy_made_of_overlapping_stores_is_one_write_with_the_stage_of_its_caller() -> None:
    # apply_paravirt -> text_poke_early -> memcpy of 6 bytes: 4 at +0, then 4 at +2 (overlapping)
    inside = tw.INSIDE_TEXT_POKE_EARLY
    events, stats, m = convert(log(
        rec(tw.REC_ARM), learn(), enter(1), enter(2),
        store(BASE + 0x10, b"\xe8\x01\x02\x03", stage=3, inside=inside),
        store(BASE + 0x12, b"\x02\x03\x90\x90", stage=3, inside=inside)))
    assert stats.armed and stats.stores == 2 and stats.placement == (BASE, PHYS)
    (e,) = events
    assert (e.address, e.new, e.old) == (BASE + 0x10, bytes.fromhex("e80102039090"), bytes(6))
    assert (e.stage, e.caller_symbol, e.source, e.window) == ("paravirt", "apply_paravirt", "text_poke_early",
                                                            "patching")
    assert e.caller == BASE + 0x2000 and Event.from_json(e.to_json()) == e      # kept in trace.jsonl
    assert e.seq == 1 and e.t == pytest.approx(1.0)
    assert bytes(m.regions[BASE][0x10:0x16]) == bytes.fromhex("e80102039090")


def test_a_store_through_another_mapping_lands_on_the_text_it_aliases() -> None:
    # text_poke's temporary mapping: a user-half address, the text page's physical address
    events, stats, _ = convert(log(rec(tw.REC_ARM), learn(), store(0x7F0000001234, b"\xcc", paddr=PHYS + 0x1234)))
    assert stats.aliased == 1
    assert [(e.address, e.new) for e in events] == [(BASE + 0x1234, b"\xcc")]


def test_a_page_found_off_the_placement_is_mapped_by_itself_and_reported() -> None:
    events, stats, _ = convert(log(rec(tw.REC_ARM), learn(), learn(BASE + 0x2000, 0x9000000, whole=False),
                                   store(0x7F0000000008, b"\x90", paddr=0x9000008)))
    assert stats.nonlinear == [(BASE + 0x2000, 0x9000000)]
    assert [e.address for e in events] == [BASE + 0x2008]


def test_stores_outside_the_text_regions_or_without_a_value_are_counted_not_traced() -> None:
    no_value = rec(tw.REC_STORE, size=1 | tw.NO_VALUE, vaddr=BASE + 4, paddr=PHYS + 4)
    events, stats, _ = convert(log(rec(tw.REC_ARM), learn(), store(BASE + 0x5000, b"\x01"), no_value))
    assert events == [] and stats.outside == 1 and stats.no_value == 1


def test_windows_follow_start_kernel_and_alternative_instructions() -> None:
    events, _, _ = convert(log(
        rec(tw.REC_ARM), learn(), store(BASE, b"\x01"), enter(1), store(BASE + 0x100, b"\x02"),
        enter(2), store(BASE + 0x200, b"\x03", stage=5), leave(2), store(BASE + 0x300, b"\x04",
                                                                          inside=tw.INSIDE_TEXT_POKE)))
    assert [(e.window, e.stage, e.source) for e in events] == [
        ("early", "unknown", "store"), ("setup", "unknown", "store"), ("patching", "returns", "store"),
        ("live", "unknown", "__text_poke")]


def test_stores_in_different_stages_or_writer_calls_are_different_writes() -> None:
    events, _, _ = convert(log(rec(tw.REC_ARM), learn(), store(BASE, b"\x01", stage=3),
                               store(BASE + 1, b"\x02", stage=5)))
    assert [(e.stage, e.caller_symbol, e.new) for e in events] == [("paravirt", "apply_paravirt", b"\x01"),
                                                                   ("returns", "apply_returns", b"\x02")]
    # two adjacent pv sites, each its own text_poke_early() call
    first, second = (tw.INSIDE_TEXT_POKE_EARLY | n << tw.CALL_SHIFT for n in (1, 2))
    events, _, _ = convert(log(rec(tw.REC_ARM), learn(), store(BASE, b"\x90" * 6, stage=3, inside=first),
                               store(BASE + 6, b"\x90" * 6, stage=3, inside=second)))
    assert [(e.address, len(e.new)) for e in events] == [(BASE, 6), (BASE + 6, 6)]


def test_the_self_check_fails_on_a_write_the_log_missed() -> None:
    _, _, m = convert(log(rec(tw.REC_ARM), learn(), store(BASE + 8, b"\x90")))
    live = bytearray(0x3000)
    live[8] = 0x90
    assert m.snapshot("booted", {BASE: bytes(live)}, "live", 3.0) == []
    assert m.check.result().passed
    m.check.every_write = True
    assert m.check.result().summary() == ("self-check passed: 1 writes replayed over the vmlinux give the live "
                                          "text at booted but for 0 unexplained differences")
    live[9] = 0xCC                                  # a write the plugin did not see: nothing explains it away
    (missed,) = m.snapshot("booted", {BASE: bytes(live)}, "live", 3.0)
    assert missed.stage == "unexplained" and missed.address == BASE + 9
    result = m.check.result()
    assert not result.passed and "FAILED" in result.summary()
    assert CheckResult.from_json(result.to_json()) == result       # trace.json keeps which kind of check


def test_a_log_cut_short_ends_at_its_first_empty_record_and_a_foreign_file_is_refused() -> None:
    data = log(rec(tw.REC_ARM), learn(), store(BASE, b"\x01")) + bytes(tw.RECORD.size * 3)
    assert len(list(tw.records(data))) == 3
    with pytest.raises(tw.LogError):
        list(tw.records(b"ELF\0" + bytes(100)))


def test_dropped_records_are_counted() -> None:
    _, stats, _ = convert(log(rec(tw.REC_ARM), rec(tw.REC_DROPPED, vaddr=17)))
    assert stats.dropped == 17


def _event(address: int, old: bytes, new: bytes, window: str = "patching") -> Event:
    return Event(1, 1.0, "store", "paravirt", address, old, new, window=window)


def test_agreement_compares_the_bytes_each_trace_changed() -> None:
    a = [_event(BASE, b"\x00\x00", b"\x90\x90"), _event(BASE + 8, b"\x01", b"\x01")]    # the second changes nothing
    b = [_event(BASE, b"\x00", b"\x90"), _event(BASE + 1, b"\x00", b"\x90")]
    assert tw.agreement(a, b, TEXT).agrees and tw.agreement(a, b, TEXT).both == 2
    c = [_event(BASE, b"\x00", b"\x90"), _event(BASE + 4, b"\x00", b"\xcc", window="early"),
         _event(0xFFFFFFFFC0000000, b"\x00", b"\xcc")]           # outside the text: a module's, BPF's
    got = tw.agreement(a, c, TEXT)
    assert not got.agrees and got.only_first == ((BASE + 1, 0x90),) and got.only_second == ((BASE + 4, 0xCC),)
    assert "1 only in the plugin trace" in got.summary("plugin", "breakpoint")


def test_watches_are_text_functions_named_like_a_stage_or_a_writer() -> None:
    symbols = Symbols.from_dict({"apply_paravirt": BASE + 0x100, "something_else": BASE + 0x200,
                                 "text_poke_early": BASE + 0x300, "static_call_initialized": 0xFFFFFFFF82000000,
                                 "end": BASE + 0x400})
    found = tw.watches(symbols, TEXT)
    assert [(w.name, w.start, w.end) for w in found] == [("apply_paravirt", BASE + 0x100, BASE + 0x200),
                                                         ("text_poke_early", BASE + 0x300, BASE + 0x400)]
    assert [w.kind for w in found] == ["s", "e"]
    assert found[0].arg() == f"watch=1:{BASE + 0x100:x}:{BASE + 0x200:x}:s"


def test_plugin_arguments_share_the_ram_and_name_every_range(tmp_path: Path) -> None:
    setup = plugin.PluginSetup(tmp_path / "log.bin", "/proc/1/fd/5", 512 << 20,
                               ((BASE, BASE + 0x1234),), ("watch=1:0:10",), (BASE, BASE + 0x2000),
                               (0xFFFFFFFF83000000, (0xFFFFFFFF83000000, 0xFFFFFFFF83100000)), BASE + 0x99)
    args = plugin.plugin_args(Path("/cache/textwrites.so"), setup)
    assert args[:2] == ["-machine", f"memory-backend={plugin.BACKEND_ID}"]
    assert args[3] == f"memory-backend-file,id={plugin.BACKEND_ID},size={512 << 20},mem-path=/proc/1/fd/5,share=on"
    parts = args[5].split(",")
    assert parts[0] == "/cache/textwrites.so"
    assert f"vtext={BASE:x}-{BASE + 0x2000:x}" in parts          # whole pages
    assert "lowmem=0x20000000" in parts and "watch=1:0:10" in parts and f"thunk={BASE + 0x99:x}" in parts
    assert "free=ffffffff83000000:ffffffff83000000-ffffffff83100000" in parts
    with pytest.raises(Exception, match="','"):
        plugin.plugin_args(Path("/a,b.so"), setup)


def test_ram_above_3_5_gib_is_split_at_3_gib_as_the_pc_machine_does() -> None:
    assert plugin.lowmem(512 << 20) == 512 << 20
    assert plugin.lowmem(4 << 30) == 0xC0000000


def test_text_regions_whose_pages_touch_are_one_range() -> None:
    assert plugin.text_args([(BASE + 0x5000, BASE + 0x6000), (BASE, BASE + 0x1001), (BASE + 0x1800, BASE + 0x1900)]) \
        == ((BASE, BASE + 0x1900), (BASE + 0x5000, BASE + 0x6000))


def test_the_plugin_traces_unless_kvm_a_scenario_or_modules_need_breakpoints(tmp_path: Path) -> None:
    from framework.config import default_config
    from framework.pipeline import RunRequest, tracer_for

    plain = default_config("t")
    assert tracer_for(RunRequest(plain, "native", tmp_path)) == "plugin"
    assert tracer_for(RunRequest(plain, "native", tmp_path, accel="kvm")) == "breakpoints"
    assert tracer_for(RunRequest(plain, "native", tmp_path, accel="kvm", tracer="plugin")) == "plugin"
    with_modules = default_config("t", modules=["kvm"])
    assert tracer_for(RunRequest(with_modules, "native", tmp_path)) == "breakpoints"
    scenario = default_config("t", scenario={"rules": [{"on": "text_poke_early", "do": ["record"]}]})
    assert tracer_for(RunRequest(scenario, "native", tmp_path)) == "breakpoints"


def test_the_plugin_log_summary_is_kept_in_trace_json() -> None:
    from framework.analysis.findings import TraceSummary

    _, stats, _ = convert(log(rec(tw.REC_ARM), learn(), store(0x7F0000000000, b"\x90", paddr=PHYS)))
    summary = TraceSummary(1, 1, "marker", {}, None, tracer="plugin", plugin=stats.to_json())
    again = TraceSummary.from_json(summary.to_json())
    assert again.tracer == "plugin" and again.plugin is not None
    assert again.plugin["aliased"] == 1 and again.plugin["placement"] == [f"{BASE:#x}", f"{PHYS:#x}"]
    assert TraceSummary.from_json({"events": 0, "stops": 0}).tracer == "breakpoints"     # runs before the plugin


def test_the_plugin_builds_once_and_exports_the_version_1_entry_points(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import os

    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path))
    built: list[str] = []
    so = plugin.build_plugin(built.append)
    assert so.parent == tmp_path / "plugins" and len(built) == 1
    assert plugin.build_plugin(built.append) == so and len(built) == 1         # cached: not built again
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LAZY)      # QEMU's API functions resolve when QEMU loads it
    assert ctypes.c_int.in_dll(lib, "qemu_plugin_version").value == 1
    assert hasattr(lib, "qemu_plugin_install")


def test_the_default_falls_back_to_breakpoints_where_the_plugin_does_not_build(tmp_path: Path) -> None:
    from framework.config import default_config
    from framework.pipeline import RunRequest, tracer_for

    plain = default_config("t")
    assert tracer_for(RunRequest(plain, "native", tmp_path), lambda: "no gcc") == "breakpoints"
    assert tracer_for(RunRequest(plain, "native", tmp_path), lambda: None) == "plugin"
    asked = RunRequest(plain, "native", tmp_path, tracer="plugin")       # asked for: built, or a clear error
    assert tracer_for(asked, lambda: "no gcc") == "plugin"
