"""RunResult on disk: written, loaded back equal; old formats load, newer ones are refused with a one-line error.

And ``check`` of saved artefacts judges exactly as the live run did, including
what only the analysis can tell: site assertions, scenario stops and NMIs,
the trace's self-check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from framework.analysis.console_log import Ending, format_line
from framework.analysis.findings import Analysis, LoggedStop, ScenarioLog, TraceSummary
from framework.analysis.observation import observe
from framework.analysis.sites import Comparison, Oversize, SiteState, TextChange
from framework.analysis.trace import CheckResult
from framework.checking import check
from framework.cli import main as cli_main
from framework.config import Config, parse_config
from framework.elf.vmlinux import Site
from framework.errors import ArtefactError
from framework.report.result import RESULT, SCHEMA, QemuRun, RunResult, load_result, write_result
from framework.scenario import NmiRecord
from framework.verdict import judge

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
LINES = [(0.5, "[    0.000000] Linux version 6.1.0-56-amd64"), (1.0, "Booting paravirtualized kernel on bare hardware"),
         (5.0, "patchscope: init done"), (5.1, "reboot: Power down")]


def site(index: int, live: bytes) -> SiteState:
    original = bytes.fromhex("ff1500000000")
    return SiteState(Site(table="paravirt", index=index, address=0xFFFFFFFF81000000 + 16 * index, length=6,
                          original=original, section=".text", op="irq.save_fl", slot=30),
                     "unchanged" if live == original else "patched", live,
                     ("pushf", "pop %rax", "nopl 0x0(%rax)") if live != original else ("call *pv_ops+0xf0(%rip)",),
                     f"start_kernel+{16 * index:#x}")


def analysis(passed: bool = True) -> Analysis:
    patched = site(1, bytes.fromhex("9c580f1f4000"))
    comparison = Comparison(
        "after-patching", {"paravirt": (site(0, bytes.fromhex("ff1500000000")), patched), "alternatives": ()},
        (TextChange(0xFFFFFFFF81C01215, 0xFFFFFFFF81C01219, "early_xen_iret_patch+0x1", b"\0" * 4, b"\xe7lB\xff"),),
        (Oversize(patched, 2),), (site(0, bytes.fromhex("ff1500000000")),), ("a note",))
    check_result = CheckResult(("start_kernel", "after-patching"), 106713, 3, (), 0, {"optimize_nops": 11732},
                               () if passed else ({"seq": 7, "address": "0xffffffff81000010"},), 0 if passed else 1)
    trace = TraceSummary(117983, 117984, "marker", {"patching": {"paravirt": 3848}}, check_result)
    stop = LoggedStop(1, 0, "apply_paravirt", 0xFFFFFFFF8103C830, 0xFFFFFFFF8307A2C0, "alternative_instructions+0x27",
                      1, ({"effect": "inject-nmi"}, {"effect": "record", "values": {"start": "0x10"}}), 3.437)
    scenario = ScenarioLog((stop,), (NmiRecord(1, "ignored", "apply_paravirt+0x5"),), False)
    return Analysis({"after-patching": comparison}, trace, scenario, None)


def result(tmp: Path, found: Analysis | None) -> RunResult:
    (tmp / "console.log").write_text("".join(format_line(t, text) for t, text in LINES))
    obs = observe(LINES, Ending("exit", 5.2, 0))
    return RunResult(name="demo", mode="native", verdict="pass", reasons=(), artifacts=str(tmp),
                     started="2026-11-29T19:00:00+00:00", duration_s=6.1, patchscope="0.1.0", config="demo.yaml",
                     expect={"outcome": "boots"}, kernel={"ref": "debian-6.1", "version": "6.1.192-2"},
                     symbol_source="kallsyms (vmlinux-to-elf)", accel=("tcg", "--accel tcg"),
                     qemu=QemuRun(("qemu-system-x86_64", "-kernel", "bzImage"), 1234, 0), observation=obs,
                     analysis=found)


@pytest.mark.parametrize("found", [None, Analysis(), analysis()], ids=["no-debugger", "empty", "everything"])
def test_a_result_loads_back_equal(tmp_path: Path, found: Analysis | None) -> None:
    written = result(tmp_path, found)
    write_result(tmp_path, written)
    assert json.loads((tmp_path / RESULT).read_text())["schema"] == SCHEMA
    assert load_result(tmp_path) == written


def test_an_error_result_loads_back_equal(tmp_path: Path) -> None:
    written = RunResult(name="broken", mode="xen-pv", verdict="error", reasons=("no such kernel",),
                        artifacts=str(tmp_path), started="2026-11-29T19:00:00+00:00", duration_s=0.1,
                        patchscope="0.1.0", error="no such kernel", launch_output=("qemu: bad option",))
    write_result(tmp_path, written)
    assert load_result(tmp_path) == written


def test_format_1_results_still_load() -> None:
    # Recorded before result.json carried a schema number.
    old = RUNS / "sleeper-native"
    assert "schema" not in json.loads((old / RESULT).read_text())
    loaded = load_result(old)
    assert loaded is not None and loaded.schema == 1 and loaded.outcome == "hangs" and loaded.verdict == "pass"


def test_a_newer_format_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_result(tmp_path, result(tmp_path, None))
    data = json.loads((tmp_path / RESULT).read_text())
    (tmp_path / RESULT).write_text(json.dumps({**data, "schema": 99}))
    with pytest.raises(ArtefactError, match="result.json format 99 is not supported .* re-run"):
        load_result(tmp_path)
    assert cli_main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "format 99 is not supported" in err


def test_a_damaged_analysis_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_result(tmp_path, result(tmp_path, analysis()))
    (tmp_path / "sites-after-patching.jsonl.gz").write_bytes(b"\x1f\x8b not gzip")
    assert cli_main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sites-after-patching.jsonl.gz: damaged" in err


# --------------------------------------------------------------------------- check == live


CONFIG = """\
name: demo
scenario:
  rules:
    - on: apply_paravirt
      do: [inject-nmi, {{record: [start]}}]
inspect: {{trace: true}}
expect:
  nmi: {nmi}
  stops:
    - {{at: apply_paravirt, count: {count}}}
  sites:
    - {{table: paravirt, count: {sites}}}
    - {{op: irq.save_fl, state: [patched, unchanged]}}
  oversized: {oversized}
"""


def config(nmi: str = "ignored", count: int = 1, sites: int = 2, oversized: int = 1) -> Config:
    return parse_config(CONFIG.format(nmi=nmi, count=count, sites=sites, oversized=oversized))


CASES = {
    "met": (config(), True, ()),
    "site count": (config(sites=123456), True, ("expect.sites (line 12) table=paravirt: 2 sites, expected 123456",)),
    "nmi fate": (config(nmi="delivered"), True, (("NMI injected at stop 1 was ignored: it reached exc_nmi in "
                                                  "apply_paravirt+0x5 while NMIs were ignored; expected delivered"),)),
    "stops": (config(count=2), True, (("expect.stops (line 10) at apply_paravirt: 1 stop, expected 2: "
                                       "stop 1 from alternative_instructions+0x27"),)),
    "trace self-check": (config(), False, (("trace self-check FAILED: 106713 calls replayed over the vmlinux up to "
                                            "after-patching; 0 with old bytes the model did not hold; bypass writes "
                                            "explained: optimize_nops 11732 B; 1 unexplained"),)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_check_judges_saved_artefacts_as_the_live_run(tmp_path: Path, case: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg, passed, reasons = CASES[case]
    run = result(tmp_path, analysis(passed))
    assert run.observation is not None
    live = judge(cfg, run.observation, run.analysis)          # what the pipeline does at the end of a run
    assert live.reasons == reasons
    write_result(tmp_path, run)
    checked = check(tmp_path, cfg)
    assert checked.verdict == live
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(nmi=cfg.expect.nmi, count=cfg.expect.stops[0].count[0],
                                  sites=cfg.expect.sites[0].count[0] if cfg.expect.sites[0].count else 0,
                                  oversized=cfg.expect.oversized))
    assert cli_main(["check", str(tmp_path), "--expect", str(path)]) == (0 if not reasons else 1)
    out = capsys.readouterr().out
    assert all(reason in out for reason in reasons)


def test_check_of_a_plain_boot_against_inspecting_expectations_fails(tmp_path: Path) -> None:
    # The false PASS this layout fixed: a clean boot's artefacts, with no analysis at all.
    boot = RUNS / "boot-native-native"
    shutil.copytree(boot, tmp_path / "run")
    checked = check(tmp_path / "run", config(sites=123456))
    assert checked.verdict is not None and checked.verdict.verdict == "fail"
    assert checked.verdict.reasons == (
        "no text was captured, so no site assertion could be checked",
        "the config asks for a trace (inspect.trace), but the run recorded none (no trace.json)",
        "the config has a scenario, but the run logged none (no scenario.jsonl): it ran without this scenario")


def test_an_index_with_whole_site_findings_loads_too(tmp_path: Path) -> None:
    # sites.json before findings referred to their sites by table and index (format 1 runs).
    written = result(tmp_path, analysis())
    write_result(tmp_path, written)
    assert written.analysis is not None
    index = json.loads((tmp_path / "sites.json").read_text())
    assert index["captures"]["after-patching"]["pv_indirect"] == [{"table": "paravirt", "index": 0}]
    index["captures"] = {name: c.to_json(with_sites=False) for name, c in written.analysis.comparisons.items()}
    (tmp_path / "sites.json").write_text(json.dumps(index))
    assert load_result(tmp_path) == written


def test_check_says_which_crashes_are_corrupted_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "cut.log"
    log.write_text("[    1.0] Linux version 6.1.0\n"
                   "[    2.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n")
    assert cli_main(["check", str(log)]) == 0
    out = capsys.readouterr().out
    assert ("  crash  line     2  BUG: unable to handle kernel NULL pointer dereference in corrupted"
            "  (corrupted: the log ends inside the report)") in out.splitlines()


def test_a_bug_in_patchscope_is_an_error_verdict_with_its_traceback_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from framework import pipeline

    def broken(cfg: Config, note: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(pipeline, "prepare", broken)
    config = tmp_path / "c.yaml"
    config.write_text("name: c\nmode: native\n")
    out = tmp_path / "out"
    assert cli_main(["run", str(config), "--artifacts", str(out), "-q"]) == 2
    data = json.loads((out / "c" / "native" / RESULT).read_text())
    assert data["verdict"] == "error"
    assert data["error"].startswith("internal error (a patchscope bug, please report it): ValueError: a bug")
    kept = (out / "c" / "native" / pipeline.INTERNAL_ERROR).read_text()
    assert kept.startswith("Traceback") and "raise ValueError(\"a bug\")" in kept
    assert "Traceback" not in capsys.readouterr().err
