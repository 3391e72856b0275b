"""Recorded real runs (tests/data/runs/, made by tests/record_runs.py), re-judged without booting.

Each must give back the outcome, title, crashes, last stage, verdict and
reasons the real run recorded, and ``patchscope check DIR --expect CONFIG``
the exit code the run had: a regression net for the console, stage and crash
tables, the site comparison's saved form and the judge, on real output.
Runs with a debugger keep their analysis (sites.json, sites-*.jsonl.gz,
scenario.jsonl, trace.json), so site assertions, scenario stops and NMIs are
re-judged too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.checking import check
from framework.cli import main as cli_main
from framework.config import load_config
from framework.report.result import RunResult, load_result

RUNS = sorted(p for p in (Path(__file__).resolve().parents[1] / "data" / "runs").iterdir()
              if (p / "result.json").exists())
EXIT = {"pass": 0, "fail": 1, "error": 2}


def saved(run: Path) -> RunResult:
    result = load_result(run)
    assert result is not None and result.observation is not None
    return result


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_recorded_run_is_judged_the_same_again(run: Path) -> None:
    live = saved(run)
    checked = check(run, load_config(run / "config.yaml"))
    obs = checked.observation
    assert live.observation is not None
    assert obs.outcome == live.observation.outcome
    assert obs.title == live.observation.title
    assert obs.last_stage == live.observation.last_stage
    assert [c.title for c in obs.crashes] == [c.title for c in live.observation.crashes]
    assert [s.name for s in obs.stages] == [s.name for s in live.observation.stages]
    assert checked.verdict is not None
    assert (checked.verdict.verdict, checked.verdict.reasons) == (live.verdict, live.reasons)
    assert live.verdict == "pass", live.reasons


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_check_exits_as_the_run_did(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check", str(run), "--expect", str(run / "config.yaml")]) == EXIT[saved(run).verdict]
    assert "verdict PASS" in capsys.readouterr().out


def test_there_are_recorded_runs_of_every_outcome() -> None:
    outcomes = {saved(run).outcome for run in RUNS}
    assert {"boots", "panics", "hangs"} <= outcomes


RUNS_DIR = Path(__file__).resolve().parents[1] / "data" / "runs"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_a_saved_run_fails_site_assertions_it_does_not_meet(capsys: pytest.CaptureFixture[str]) -> None:
    # The native run's pv sites, held against what Xen PV must make of them.
    run, config = RUNS_DIR / "pv-sites-native-native", CONFIGS / "pv-sites-xen-pv.yaml"
    checked = check(run, load_config(config))
    assert checked.verdict is not None and checked.verdict.verdict == "fail"
    reasons = checked.verdict.reasons
    assert reasons[0].startswith("expect.sites (line 22) op=irq.save_fl at after-patching: 458 of 458 sites "
                                 "not 'call xen_save_fl_direct': irq.save_fl at start_kernel+0x47a")
    # Each of the six per-op assertions fails; the counts and states before and after patching hold in both modes.
    assert [r.split(" at after-patching")[0] for r in reasons] == [
        f"expect.sites (line {n}) op={op}" for n, op in ((22, "irq.save_fl"), (23, "irq.irq_disable"),
                                                         (24, "irq.irq_enable"), (25, "mmu.read_cr2"),
                                                         (27, "mmu.lazy_mode.leave"), (29, "cpu.load_tr_desc"))]
    assert cli_main(["check", str(run), "--expect", str(config)]) == 1
    assert "op=irq.save_fl" in capsys.readouterr().out


def test_a_saved_run_fails_nmi_and_stop_expectations_it_does_not_meet(tmp_path: Path) -> None:
    config = (CONFIGS / "nmi-during-patching.yaml").read_text()
    assert "nmi: [delivered, ignored, delivered]" in config and "{at: apply_paravirt, count: 1}" in config
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(config.replace("nmi: [delivered, ignored, delivered]", "nmi: delivered")
                     .replace("{at: apply_paravirt, count: 1}", "{at: apply_paravirt, count: 2}"))
    checked = check(RUNS_DIR / "nmi-during-patching-native", load_config(wrong))
    assert checked.verdict is not None
    reasons = checked.verdict.reasons
    assert any(r.startswith("expect.stops (line ") and "at apply_paravirt: 1 stop, expected 2" in r for r in reasons)
    assert any(r.startswith("NMI injected at stop 2 was ignored: it reached exc_nmi in ") for r in reasons)
    assert cli_main(["check", str(RUNS_DIR / "nmi-during-patching-native"), "--expect", str(wrong)]) == 1


def test_check_holds_a_saved_run_to_its_own_modes_section() -> None:
    run, config = RUNS_DIR / "boot-native-native", load_config(CONFIGS / "boot-native.yaml")
    assert "xen-pv" in config.expect_modes
    native = check(run, config)                       # the saved run's mode: native
    assert native.verdict is not None and native.verdict.passed
    as_xen = check(run, config, "xen-pv")
    assert as_xen.verdict is not None
    assert as_xen.verdict.reasons == ("no console line matches /Booting kernel on Xen/",)
