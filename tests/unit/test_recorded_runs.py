"""Recorded real runs (tests/data/runs/, made by tests/record_runs.py), re-judged without booting.

Each must give back the outcome, title, crashes, last stage and verdict the
real run recorded: a regression net for the console, stage and crash tables
and the verdict, on real output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.config import load_config
from framework.pipeline import check_saved
from framework.report.files import read_result
from framework.verdict import judge

RUNS = sorted(p for p in (Path(__file__).resolve().parents[1] / "data" / "runs").iterdir()
              if (p / "result.json").exists())


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_recorded_run_is_judged_the_same_again(run: Path) -> None:
    saved = read_result(run)
    assert saved is not None
    obs, _ = check_saved(run)
    assert obs.outcome == saved["outcome"]
    assert obs.title == saved["title"]
    assert obs.last_stage == saved["last_stage"]
    assert [c.title for c in obs.crashes] == [c["title"] for c in saved["crashes"]]
    assert [s.name for s in obs.stages] == [s["name"] for s in saved["stages"]]
    verdict = judge(obs, load_config(run / "config.yaml").expect)
    assert verdict.verdict == saved["verdict"] == "pass", verdict.reasons


def test_there_are_recorded_runs_of_every_outcome() -> None:
    outcomes = {read_result(run)["outcome"] for run in RUNS}  # type: ignore[index]
    assert {"boots", "panics", "hangs"} <= outcomes
