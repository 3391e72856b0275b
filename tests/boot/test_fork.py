"""Snapshot-forked experiments on real boots (issue 16): one boot to fork.at, savevm, each sweep point from it.

configs/nmi-sweep.yaml (20 NMIs across boot-time patching, every one "ignored") runs as a
config of its own in both modes; here a small sweep whose expectations differ per point
shows that each point is judged on its own, with its own artefacts, and re-judged alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import patchscope, result_json, write_config

pytestmark = pytest.mark.boot

SWEEP = """
mode: native
init_commands: ['grep NMI /proc/interrupts']
fork: {at: alternative_instructions}
sweep:
  hit: [1, 400]
  state: [ignored, delivered]
scenario:
  rules:
    - on: {at: text_poke_early, hit: ${hit}}
      do: [record, inject-nmi]
expect:
  nmi: [${state}]
  console:
    contains: ['^NMI:\\s+1\\s']
"""


def test_each_point_is_a_run_of_its_own_from_one_snapshot(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "fork-points", SWEEP)
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts))
    assert res.returncode == 1, res.stdout + res.stderr         # the "delivered" points fail
    assert res.stderr.count("snapshot at alternative_instructions") == 1
    run = artifacts / "fork-points" / "native"
    top = result_json(artifacts, "fork-points", "native")
    assert top["verdict"] == "fail"
    assert [r.split(":")[0] for r in top["reasons"]] == ["point 2 (hit=1,state=delivered)",
                                                         "point 4 (hit=400,state=delivered)"]
    assert not (run / "state.qcow2").exists()                  # the snapshot (the guest's RAM) is not kept
    sweep = json.loads((run / "sweep.json").read_text())
    assert sweep["snapshot"]["at"] == "alternative_instructions" and sweep["total"] == 4
    assert [p["verdict"] for p in sweep["points"]] == ["pass", "fail", "pass", "fail"]
    for point in sweep["points"]:
        folder = Path(point["artifacts"])
        result = json.loads((folder / "result.json").read_text())
        assert result["fork"]["tag"] == sweep["snapshot"]["tag"] and result["fork"]["point"] == point["n"]
        assert result["outcome"] == "boots"
        log = (folder / "console.log").read_text()
        # the boot to the snapshot once, then this point's own lines only
        assert log.count("Linux version") == 1 and log.count("patchscope: init done") == 1
        rows = [json.loads(line) for line in (folder / "scenario.jsonl").read_text().splitlines()]
        stop, nmi = rows
        assert stop["hit"] == point["values"]["hit"] and stop["caller_symbol"].startswith("apply_")
        assert nmi == {"nmi": "ignored", "stop": 1, "where": "text_poke_early"}
        assert "${" not in (folder / "config.yaml").read_text()
    # saved points are judged again with their own values: the same verdicts
    checked = patchscope("check", str(run / "points"), "--expect", str(cfg), "--json")
    verdicts = [json.loads(chunk)["verdict"] for chunk in checked.stdout.replace("}\n{", "}\0{").split("\0")]
    assert verdicts == ["pass", "fail", "pass", "fail"], checked.stdout


def test_a_fork_point_never_reached_fails_and_says_why(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "fork-unreached", """
mode: native
fork: {at: alternative_instructions, hit: 2}
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts))
    assert res.returncode == 1, res.stdout + res.stderr
    reasons = result_json(artifacts, "fork-unreached", "native")["reasons"]
    assert reasons[0].startswith("the guest never reached fork.at alternative_instructions (it arrived 1 time; "
                                 "fork.hit is 2): it booted to its success marker first"), reasons


def test_a_point_that_panics_leaves_the_next_point_its_snapshot(tmp_path: Path, artifacts: Path) -> None:
    """Seed 000's oversized pv patch in every point: each panics (QEMU pauses instead of ending), and the next one
    starts again from the snapshot, with a console of its own."""
    cfg = write_config(tmp_path, "fork-panics", """
mode: native
fork: {at: alternative_instructions}
sweep: {n: [1, 2]}
scenario:
  rules:
    - on: apply_paravirt
      do:
        - record: [start + ${n}]
        - write: {at: "start + 9", bytes: "02"}
expect:
  outcome: panics
  crash: '^kernel BUG in apply_paravirt'
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stdout + res.stderr
    run = artifacts / "fork-panics" / "native"
    sweep = json.loads((run / "sweep.json").read_text())
    assert [p["verdict"] for p in sweep["points"]] == ["pass", "pass"], sweep
    for point in sweep["points"]:
        folder = Path(point["artifacts"])
        log = (folder / "console.log").read_text()
        assert log.count("kernel BUG at") == 1 and log.count("Linux version") == 1, log[-2000:]
        stop = json.loads((folder / "scenario.jsonl").read_text().splitlines()[0])
        start = int(stop["effects"][0]["values"]["start + " + str(point["n"])], 16)
        assert stop["hit"] == 1 and start > 0
