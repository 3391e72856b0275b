"""Real bisects: over Debian kernel packages, and over a git tree made from linux-source-6.1 with a series of
commits, one of which introduces a real patching regression and one an unrelated breakage.

The git tree is Debian's 6.1.192-2 source with six commits on top (tests/bisect_series.py): c3 an
unrelated breakage (a panic before init), c4 its revert, c5 the regression (apply_paravirt() skips its
last site). git bisect tests c3 (another failure: skipped, never blamed), c2, c4 and c5, and names c5. Every commit is
built with kernels/tiny-6.1.yaml in patchscope's clone of the tree, where ccache serves what the Debian
source's build of the same recipe compiled.

Over Debian: tests/data/bisect/irq-enable-sites.yaml counts the irq.irq_enable paravirt sites, 451 up to
linux-image-6.1.0-54-amd64 (6.1.190-1) and 452 from -55- (6.1.192-1), as checked by hand on all eleven ABIs
(tests/data/bisect/srso-alternatives.yaml, for the README and bench/bisecting.py, flips at -53-).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bisect_series import add_series
from tests.boot.conftest import cache
from tests.conftest import REPO, git, patchscope

pytestmark = pytest.mark.boot

DATA = REPO / "tests" / "data" / "bisect"
PV_PATCHED = DATA / "pv-patched.yaml"
IRQ_ENABLE = DATA / "irq-enable-sites.yaml"
TIMEOUT = 3600


@pytest.fixture(scope="module")
def series(linux_git: Path) -> dict[str, str]:
    """The shared checkout of Debian's source with tests/bisect_series.py's six commits on top."""
    return add_series(linux_git)


def tree_state(tree: Path) -> tuple[str, ...]:
    """What a bisect must leave as it was: branch, HEAD, index and files, refs, and no bisect in progress."""
    bisecting = subprocess.run(["git", "-C", str(tree), "bisect", "log"], capture_output=True,
                               check=False).returncode == 0
    return (git(tree, "symbolic-ref", "HEAD"), git(tree, "rev-parse", "HEAD"),
            git(tree, "status", "--porcelain", "--ignored"), git(tree, "for-each-ref"), f"bisecting={bisecting}",
            git(tree, "stash", "list"))


def test_a_git_bisect_finds_the_regression_skips_the_unrelated_breakage_and_verifies_by_revert(
        series: dict[str, str], tmp_path: Path) -> None:
    tree = Path(series["tree"])
    before = tree_state(tree)
    out = tmp_path / "out"
    res = patchscope("bisect", str(PV_PATCHED), "--tree", str(tree), "--recipe", "tiny-6.1", "--good", series["base"],
                     "--bad", "main", "--verify-revert", "--artifacts", str(out), "--json", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_state(tree) == before, "the user's tree was changed"
    record = json.loads(res.stdout)
    result = record["result"]
    assert result["state"] == "found" and result["culprit_ref"] == series["c5"], result
    assert "apply_paravirt() stops one site early" in result["culprit"]
    assert "commit " + series["c5"] in result["culprit_note"]
    assert result["verified"] is True and "reverted passes" in result["verification"]
    assert record["signature"] == ["sites: expect.sites (line 14) table=paravirt at after-patching: state",
                                   "sites: pv sites not patched at after-patching"]
    steps = {s["ref"]: s for s in record["steps"] if s["role"] == "step"}
    # git bisect starts in the middle (c3), skips it, and closes in on c5 from c4: at most ⌈log2 6⌉ + 1 steps
    assert {series["c3"], series["c4"], series["c5"]} <= set(steps) <= {series[f"c{i}"] for i in range(1, 6)}
    assert len(steps) <= 4
    unrelated = steps[series["c3"]]
    assert unrelated["decision"] == "skip" and "failed another way" in unrelated["why"]
    assert unrelated["runs"][0]["facets"] == ["crash: kernel panic: patchscope bisect test: an unrelated breakage"]
    assert steps[series["c5"]]["decision"] == "bad" and steps[series["c4"]]["decision"] == "good"
    assert record["untested"] == 5 and record["expected_steps"] == 3
    log = (out / "git-bisect.log").read_text()
    assert f"git bisect skip {series['c3']}" in log and f"# first bad commit: [{series['c5']}]" in log
    assert (out / "index.html").exists() and 'data-decision="skip"' in (out / "index.html").read_text()
    # every step's kernel was built from its commit: the regression's run shows the unpatched site
    bad_run = Path(steps[series["c5"]]["runs"][0]["artifacts"])
    assert json.loads((bad_run / "result.json").read_text())["verdict"] == "fail"


def test_bisect_step_under_git_bisect_run_gives_the_same_answer(series: dict[str, str], tmp_path: Path) -> None:
    tree = Path(series["tree"])
    git(tree, "bisect", "start", "main", series["base"])
    try:
        proc = subprocess.run(["git", "-C", str(tree), "bisect", "run", sys.executable, "-m", "framework.cli",
                               "bisect-step", str(PV_PATCHED), "--recipe", "tiny-6.1",
                               "--artifacts", str(tmp_path / "steps")],
                              capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
        log = git(tree, "bisect", "log")
    finally:
        git(tree, "bisect", "reset")
    assert f"{series['c5']} is the first bad commit" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"git bisect skip {series['c3']}" in log, "the unrelated breakage must be exit 125, not bad"
    assert "recording the bad end's failure first" in proc.stderr
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_ctrl_c_mid_bisect_leaves_the_tree_on_its_branch_and_no_bisect_in_progress(
        series: dict[str, str], tmp_path: Path) -> None:
    tree = Path(series["tree"])
    git(tree, "checkout", "-q", "-b", "work", series["c2"])
    try:
        before = tree_state(tree)
        out = tmp_path / "out"
        proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "bisect", str(PV_PATCHED), "--tree",
                                 str(tree), "--recipe", "tiny-6.1", "--good", series["base"], "--bad", "main",
                                 "--artifacts", str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:     # wait for the first bisect step to be under way
            if (out / "bisect.json").exists() and any(s["role"] == "good-end" for s in
                                                      json.loads((out / "bisect.json").read_text())["steps"]):
                break
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "your tree was never touched" in err
        assert tree_state(tree) == before
        clone = next((cache() / "bisect" / "clones").glob("*/.git/patchscope-origin"))
        assert not any((p.parent / "BISECT_LOG").exists() for p in
                       (cache() / "bisect" / "clones").glob("*/.git/patchscope-origin")), "the clone still bisects"
        assert clone.exists()
        record = json.loads((out / "bisect.json").read_text())
        assert record["result"]["state"] == "interrupted"
    finally:
        git(tree, "checkout", "-q", "main")
        git(tree, "branch", "-q", "-D", "work")


def test_a_debian_bisect_from_a_failing_matrix_cell_finds_the_abi_that_added_an_irq_enable_site(
        tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"name: irq\nkernels: [debian:linux-image-6.1.0-57-amd64]\nmodes: [native]\n"
                      f"configs: [{IRQ_ENABLE}]\n")
    ran = patchscope("matrix", str(matrix), "--artifacts", str(tmp_path / "nightly"), "-q", timeout=TIMEOUT)
    assert ran.returncode == 1, ran.stdout + ran.stderr       # the cell fails: 452 irq.irq_enable sites, 451 expected
    res = patchscope("bisect", "--from", str(tmp_path / "nightly"),
                     "--cell", "irq-enable-sites/debian:linux-image-6.1.0-57-amd64/native",
                     "--good", "debian:linux-image-6.1.0-54-amd64", "--artifacts", str(tmp_path / "bisect"),
                     timeout=TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((tmp_path / "bisect" / "bisect.json").read_text())
    assert record["candidates"] == ["linux-image-6.1.0-54-amd64 6.1.190-1", "linux-image-6.1.0-55-amd64 6.1.192-1",
                                    "linux-image-6.1.0-56-amd64 6.1.192-2", "linux-image-6.1.0-57-amd64 6.1.192-3"]
    assert record["result"]["culprit"] == "linux-image-6.1.0-55-amd64 6.1.192-1"
    assert record["signature"] == ["sites: expect.sites (line 16) table=paravirt op=irq.irq_enable: count"]
    assert "6.1.192" in record["result"]["culprit_note"], "the culprit's changelog entry"
    assert record["result"]["verified"] is True and record["result"]["bisect_steps"] <= 2
    assert "first bad: linux-image-6.1.0-55-amd64 6.1.192-1" in res.stdout
    assert re.search(r"4 kernels from .* 2 between them: about 2 steps", res.stderr)


# A config made to fail at random on the bad kernel: the "Linux version" alternative passes every ABI up to
# -56-, and on -57- only the tsc line can pass, when the last digit of the frequency TCG measured is even
# (about one boot in two). -56- and -57- are the kernels the other boot tests use: nothing more to download.
FLAKY = """name: flaky
mode: native
timeout: 120
expect:
  outcome: boots
  console:
    contains: ['Linux version 6\\.1\\.0-(4[0-9]|5[0-6])-amd64|tsc: Detected \\d+\\.\\d\\d[02468] MHz']
"""


def test_a_bug_that_shows_at_random_is_reported_flaky_and_lowers_the_confidence(tmp_path: Path) -> None:
    config = tmp_path / "flaky.yaml"
    config.write_text(FLAKY)
    for attempt in range(3):     # in 1 bisect of 16 every run of the bad kernel agrees by chance: then again
        out = tmp_path / f"out-{attempt}"
        res = patchscope("bisect", str(config), "--good", "debian:linux-image-6.1.0-56-amd64",
                         "--bad", "debian:linux-image-6.1.0-57-amd64", "--runs", "2", "--max-runs", "4",
                         "--artifacts", str(out), "--json", timeout=TIMEOUT)
        record = json.loads(res.stdout)
        disagreed = False
        for step in record["steps"]:
            classes = {r["class"] for r in step["runs"]} - {"error"}
            assert step["flaky"] == (len(classes) > 1), step
            disagreed |= step["flaky"]
        if record["result"]["state"] == "stopped":
            assert "does not fail" in record["result"]["why"], record["result"]      # 4 passes in a row
            continue
        assert record["result"]["culprit"] == "linux-image-6.1.0-57-amd64 6.1.192-3"
        if not disagreed:
            continue
        assert record["result"]["flaky_steps"], record["result"]
        assert record["result"]["confidence"] < 1.0 and "more --runs" in record["result"]["confidence_why"]
        page = (out / "index.html").read_text()
        assert 'data-flaky="true"' in page
        bad_end = record["steps"][0]
        assert bad_end["role"] == "bad-end" and any(r["class"] == "bad" for r in bad_end["runs"])
        return
    pytest.fail("no run of a kernel that fails at random disagreed with another in three bisects")
