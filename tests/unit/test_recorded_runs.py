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

from framework.cli import main as cli_main
from framework.config import load_config
from framework.pipeline import check
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
