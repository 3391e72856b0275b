"""The bisect's pure core: signatures from real verdicts, run decisions, the list search, Debian ranges,
the driver with fake steps (ends, skips, flakes, verification), and the record's text and page."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.bisect import html
from framework.bisect.debian import DebianSubject, Package, between, first_changelog_entry, flavour
from framework.bisect.driver import Candidate, Found, Stopped, run
from framework.bisect.record import Record, Role, Run, Step, summary, table
from framework.bisect.search import ListBisection, expected_steps, git_bisect_said
from framework.bisect.signature import Signature, classify, facet, facets
from framework.bisect.steps import confidence, decide, needs_more
from framework.checking import check
from framework.config.schema import parse_config
from framework.errors import KernelRefError
from framework.matrix.plan import Cell
from framework.matrix.results import CellResult, MatrixResults
from framework.report.result import RunResult
from tests.conftest import REPO, patchscope

RUNS = REPO / "tests" / "data" / "runs"


# --- signatures, from the real judge on recorded runs ---------------------------------------------

def judged(run_dir: str, config_text: str) -> RunResult:
    """A recorded run judged against another expectation: real reasons, as a real run would give them."""
    checked = check(RUNS / run_dir, parse_config(config_text, Path("x.yaml")))
    assert checked.verdict is not None and checked.saved is not None
    return dataclasses.replace(checked.saved, verdict=checked.verdict.verdict, reasons=checked.verdict.reasons,
                               observation=checked.observation)


COUNT = """name: pv-sites-native
mode: native
inspect: {capture: [before-patching, after-patching], tables: [paravirt]}
expect:
  outcome: boots
  sites:
    - {table: paravirt, count: %s}
"""


def test_a_site_count_failure_is_one_facet_without_its_numbers() -> None:
    a = judged("pv-sites-native-native", COUNT % "3000")
    b = judged("pv-sites-native-native", COUNT % "[1, 2]")
    assert a.verdict == b.verdict == "fail"
    assert facets(a) == facets(b) == ("sites: expect.sites (line 7) table=paravirt: count",)
    assert judged("pv-sites-native-native", COUNT % "[3000, 5000]").verdict == "pass"


def test_an_unexpected_panic_is_its_crash_title() -> None:
    r = judged("oversized-pv-patch-native", "name: x\nmode: native\nexpect: {outcome: boots}\n")
    assert r.verdict == "fail"
    assert facets(r) == ("crash: kernel BUG in apply_paravirt",)
    other = judged("panic-no-initramfs-native", "name: x\nmode: native\nexpect: {outcome: boots}\n")
    assert facets(other) == ("crash: kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)",)
    sig = Signature(facets(r))
    assert classify("fail", facets(r), sig) == "bad"
    assert classify("fail", facets(other), sig) == "other", "another crash must never count as the bug"


def test_console_facets_name_the_pattern_not_the_line() -> None:
    r = judged("boot-native-native", "name: x\nmode: native\nexpect:\n  outcome: boots\n  console:\n"
                                     "    contains: ['no such line']\n    excludes: ['Linux version']\n")
    assert facets(r) == ("console: a line matches excluded /Linux version/", "console: no line matches /no such line/")


@pytest.mark.parametrize(("reason", "expected"), [
    ("expected outcome 'boots', got 'hangs': hung after 'Run /init': no output for 60 s", "hang: after 'Run /init'"),
    (("crash at console line 812: WARNING: CPU: 1 PID: 7 at kernel/x.c:99 f+0x1/0x2 (fatal); allow it with "
      "expect.allow_crashes if it is expected"), "crash: WARNING: CPU: N PID: N at kernel/x.c:N f+X/X"),
    ("3 pv sites not patched at after-patching (at most 0 allowed): a at b (0xffffffff81000000): still call *pv_ops",
     "sites: pv sites not patched at after-patching"),
    ("expect.sites (line 9) op=irq.save_fl at after-patching: 2 of 40 sites not 'pushf; pop %rax': x: 'cli'",
     "sites: expect.sites (line 9) op=irq.save_fl at after-patching: insns"),
    ("expect.sites (line 9) table=paravirt at after-patching: 2 of 40 sites not patched: x: unchanged",
     "sites: expect.sites (line 9) table=paravirt at after-patching: state"),
])
def test_facets_of_other_reasons(reason: str, expected: str) -> None:
    assert facet(reason, None, "Run /init") == expected


def test_the_signature_is_what_every_failing_run_of_the_bad_end_shared() -> None:
    sig = Signature.common([("a", "b", "c"), ("a", "c"), ("c", "a", "d")])
    assert sig.facets == ("a", "c")
    assert sig.matched_by(("a", "c", "z")) and not sig.matched_by(("a",))
    assert not Signature(()).matched_by(("a",)), "an empty signature matches nothing"
    assert classify("pass", (), sig) == "good" and classify("error", (), sig) == "error"
    assert classify("fail", ("q",), None) == "bad", "before the bad end is known any failure is the failure"


# --- a step's runs ---------------------------------------------------------------------------------

def test_runs_go_on_while_they_disagree_up_to_the_maximum() -> None:
    assert needs_more([], 1, 3)
    assert not needs_more(["good"], 1, 3)
    assert needs_more(["good", "bad"], 2, 5) and needs_more(["good", "bad", "bad"], 2, 5)
    assert not needs_more(["good", "bad", "bad", "good", "bad"], 2, 5)
    assert not needs_more(["bad", "bad", "bad"], 3, 7)
    assert needs_more(["error"], 1, 3) and not needs_more(["error", "error"], 1, 3), "one more try, then give up"
    assert needs_more(["good", "good"], 2, 4, expect_bad=True), "the bad end runs on until its failure shows"
    assert not needs_more(["good", "good", "good", "good"], 2, 4, expect_bad=True)
    assert not needs_more(["bad", "bad"], 2, 4, expect_bad=True)


def test_a_step_with_the_bug_in_any_run_is_bad_and_flaky_when_others_passed() -> None:
    d = decide(["good", "bad", "good"])
    assert (d.decision, d.flaky) == ("bad", True) and "1 bad, 2 good of 3 runs" in d.why
    assert decide(["bad", "bad"]) .decision == "bad" and not decide(["bad", "bad"]).flaky
    assert (decide(["good", "other"]).decision, decide(["good", "other"]).flaky) == ("good", True)
    assert decide(["other", "other"]).decision == "skip"
    assert decide(["error"]).decision == "skip" and "could not run" in decide(["error"]).why
    assert decide(["good", "error"]) == decide(["good"]), "a run that could not run is no vote"


def test_confidence_is_one_for_a_deterministic_bug_and_falls_with_its_reproduction_rate() -> None:
    assert confidence([["bad"], ["bad"]], [["good"], ["good"]]).value == 1.0
    half = confidence([["bad", "good"], ["bad", "good"]], [["good", "good"]])
    assert half.value == pytest.approx(0.75) and "2 of 4 runs" in half.why
    assert confidence([["bad", "good"]], [["good"] * 3, ["good"] * 3]).value == pytest.approx((1 - 0.5 ** 3) ** 2)


# --- the list search -------------------------------------------------------------------------------

@given(st.integers(min_value=2, max_value=300), st.data())
def test_the_list_search_finds_the_first_bad_in_ceil_log2_steps(size: int, data: st.DataObject) -> None:
    first_bad = data.draw(st.integers(min_value=1, max_value=size - 1))
    b = ListBisection(size)
    steps = 0
    while (i := b.next()) is not None:
        steps += 1
        b.mark(i, "bad" if i >= first_bad else "good")
    assert b.state == "found" and b.first_bad() == [first_bad]
    assert steps <= expected_steps(size - 2) == math.ceil(math.log2(size - 1))


@given(st.integers(min_value=3, max_value=80), st.data())
def test_skipped_candidates_are_never_blamed_alone(size: int, data: st.DataObject) -> None:
    first_bad = data.draw(st.integers(min_value=1, max_value=size - 1))
    untestable = data.draw(st.sets(st.integers(min_value=1, max_value=size - 2)))
    b = ListBisection(size)
    while (i := b.next()) is not None:
        b.mark(i, "skip" if i in untestable else "bad" if i >= first_bad else "good")
    possible = b.first_bad()
    assert first_bad in possible
    assert all(p in untestable for p in possible[:-1])
    assert b.state == ("found" if len(possible) == 1 else "ambiguous")


def test_a_mark_outside_the_open_range_is_refused() -> None:
    b = ListBisection(5)
    b.mark(2, "good")
    with pytest.raises(ValueError):
        b.mark(1, "bad")


@pytest.mark.parametrize(("text", "said"), [
    ("Bisecting: 3 revisions left to test after this (roughly 2 steps)\n[abc] x\n", ("next", 3)),
    ("Bisecting: 0 revisions left to test after this (roughly 0 steps)\n", ("next", 0)),
    ("1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b is the first bad commit\ncommit 1a2b…\n",
     ("found", "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b")),
    ("There are only 'skip'ped commits left to test.\nThe first bad commit could be any of:\n" + "a" * 40 + "\n"
     + "b" * 40 + "\nWe cannot bisect more!\n", ("ambiguous", ["a" * 40, "b" * 40])),
])
def test_what_git_bisect_says_is_read(text: str, said: tuple[str, object]) -> None:
    assert git_bisect_said(text) == said


def test_an_unknown_git_bisect_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not know"):
        git_bisect_said("fatal: something else")


# --- Debian ranges ---------------------------------------------------------------------------------

CARRIED = {  # as the apt sources listed them on 2026-11-30 (apt-cache policy), with other flavours and packages
    "linux-image-6.1.0-47-amd64": "6.1.170-3", "linux-image-6.1.0-48-amd64": "6.1.170-4",
    "linux-image-6.1.0-49-amd64": "6.1.173-1", "linux-image-6.1.0-50-amd64": "6.1.176-1",
    "linux-image-6.1.0-9-amd64": "6.1.27-1", "linux-image-6.1.0-57-amd64": "6.1.192-3",
    "linux-image-6.1.0-50-cloud-amd64": "6.1.176-1", "linux-image-6.1.0-50-amd64-dbg": "6.1.176-1",
    "linux-image-6.1.0-50-amd64-unsigned": "6.1.176-1", "linux-image-amd64": "6.1.192-3",
    "linux-image-6.12.113+deb12-amd64": "6.12.113-1~deb12u1",
}


def test_the_candidates_are_one_flavours_packages_in_debian_version_order_not_name_order() -> None:
    good = Package("linux-image-6.1.0-9-amd64", "6.1.27-1")
    bad = Package("linux-image-6.1.0-57-amd64", "6.1.192-3")
    got = [p.name for p in between(good, bad, CARRIED)]
    assert got == ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-47-amd64", "linux-image-6.1.0-48-amd64",
                   "linux-image-6.1.0-49-amd64", "linux-image-6.1.0-50-amd64", "linux-image-6.1.0-57-amd64"]
    across = between(good, Package("linux-image-6.12.113+deb12-amd64", "6.12.113-1~deb12u1"), CARRIED)
    assert across[-2].name == "linux-image-6.1.0-57-amd64", "6.1.192 comes before 6.12.113"


def test_bad_debian_ranges_are_one_line_errors() -> None:
    a, b = Package("linux-image-6.1.0-47-amd64", "6.1.170-3"), Package("linux-image-6.1.0-50-amd64", "6.1.176-1")
    with pytest.raises(KernelRefError, match="newer than --bad.*swap"):
        between(b, a, CARRIED)
    with pytest.raises(KernelRefError, match="same version"):
        between(a, a, CARRIED)
    with pytest.raises(KernelRefError, match="different flavours"):
        between(a, Package("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1"), CARRIED)
    with pytest.raises(KernelRefError, match="not a Debian kernel image"):
        between(Package("linux-image-amd64", "6.1.170-3"), b, CARRIED)
    assert flavour("linux-image-6.12.113+deb12-cloud-amd64") == "cloud-amd64"
    assert flavour("linux-image-6.1.0-50-amd64-dbg") is None


def test_the_changelog_entry_is_the_newest_one() -> None:
    text = ("linux (6.1.176-1) bookworm-security; urgency=high\n\n  * New upstream stable update\n"
            "\n -- Someone <s@example.invalid>  Sat, 01 Nov 2026 10:00:00 +0100\n\nlinux (6.1.173-1) …\n")
    entry = first_changelog_entry(text)
    assert entry.startswith("linux (6.1.176-1)") and entry.endswith("+0100") and "6.1.173" not in entry


# --- the driver, with fake steps --------------------------------------------------------------------

class Fake:
    """Kernels 0..n-1; ``behaviour(i)`` gives each run's (verdict, facets) in turn."""

    def __init__(self, n: int, behaviour, runs: int = 1, most: int = 3) -> None:  # type: ignore[no-untyped-def]
        self.subject = DebianSubject([Package(f"linux-image-6.1.0-{i}-amd64", f"6.1.{i}-1") for i in range(n)],
                                     lambda p: f"changelog of {p.name}")
        self.behaviour, self.runs, self.most = behaviour, runs, most
        self.tested: list[str] = []

    def test(self, role: Role, c: Candidate, sig: Signature | None) -> Step:
        i = int(c.label.split("-")[3])
        self.tested.append(f"{role}:{i}")
        runs: list[Run] = []
        while needs_more([r.cls for r in runs], self.runs, self.most, expect_bad=role in ("bad-end", "verify-culprit")):
            verdict, found = self.behaviour(i, len(runs))
            runs.append(Run(classify(verdict, found, sig), verdict, found, "", 1.0, f"/out/{i}/{len(runs)}"))
        d = decide([r.cls for r in runs])
        return Step(role, c.label, c.ref, d.decision, d.flaky, d.why, tuple(runs))

    def record(self) -> Record:
        return Record("debian", "c.yaml", "native", "g", "b", self.runs, self.most, 0, 0)


BUG = ("fail", ("crash: kernel BUG in apply_paravirt",))
OTHER = ("fail", ("crash: kernel panic: something else",))
PASS = ("pass", ())


def test_the_driver_finds_the_culprit_and_verifies_it() -> None:
    f = Fake(12, lambda i, k: BUG if i >= 7 else PASS)
    notes: list[str] = []
    r = run(f.subject, f.test, f.record(), progress=notes.append)
    assert (r.state, r.culprit, r.verified) == ("found", "linux-image-6.1.0-7-amd64 6.1.7-1", True)
    left = [int(m.group(1)) for n in notes if (m := re.search(r"about (\d+) steps? left", n))]
    assert left == sorted(left, reverse=True) and left[0] == 3 and notes[-2].endswith("no step left")
    assert r.culprit_note == "changelog of linux-image-6.1.0-7-amd64"
    assert f.tested[:2] == ["bad-end:11", "good-end:0"] and f.tested[-2:] == ["verify-culprit:7", "verify-predecessor:6"]
    assert len(r.bisect_steps) <= expected_steps(10) and r.confidence == 1.0
    assert r.signature == BUG[1]


def test_an_unrelated_failure_in_the_range_is_skipped_never_blamed() -> None:
    f = Fake(12, lambda i, k: OTHER if i == 5 else BUG if i >= 7 else PASS)
    r = run(f.subject, f.test, f.record())
    assert r.culprit == "linux-image-6.1.0-7-amd64 6.1.7-1"
    skipped = [s for s in r.steps if s.decision == "skip"]
    assert skipped and all("failed another way" in s.why for s in skipped)
    assert "crash: kernel panic: something else" in skipped[0].other_failures


def test_an_unrelated_failure_right_before_the_bug_makes_the_result_ambiguous() -> None:
    f = Fake(6, lambda i, k: OTHER if i == 3 else BUG if i >= 4 else PASS)
    r = run(f.subject, f.test, f.record())
    assert r.state == "ambiguous" and r.possible == ("linux-image-6.1.0-3-amd64 6.1.3-1", "linux-image-6.1.0-4-amd64 6.1.4-1")
    assert r.verified is None


def test_a_flaky_step_is_marked_and_lowers_the_confidence() -> None:
    # kernels 7.. have the bug, but it shows only in every other run
    f = Fake(12, lambda i, k: (BUG if k % 2 == 0 else PASS) if i >= 7 else PASS, runs=2, most=4)
    r = run(f.subject, f.test, f.record())
    assert r.culprit == "linux-image-6.1.0-7-amd64 6.1.7-1"
    assert r.flaky and all(s.decision == "bad" for s in r.flaky)
    assert all(len(s.runs) == 4 for s in r.flaky), "runs that disagree are extended to --max-runs"
    assert r.confidence is not None and r.confidence < 1.0 and "more --runs" in r.confidence_why
    assert any("flaky" in line for line in summary(r))


@pytest.mark.parametrize(("behaviour", "match"), [
    (lambda i, k: PASS, "the bad end .* does not fail"),
    (lambda i, k: BUG, "the good end .* does not pass"),
    (lambda i, k: OTHER if i == 0 else BUG, "the good end .* does not pass"),
    (lambda i, k: ("fail", (f"crash: {k}",)) if i == 3 else PASS, "failed differently in each run"),
])
def test_ends_that_do_not_behave_stop_before_any_step(behaviour, match) -> None:  # type: ignore[no-untyped-def]
    f = Fake(4, behaviour, runs=2)
    record = f.record()
    with pytest.raises(Stopped, match=match):
        run(f.subject, f.test, record)
    assert record.state == "stopped" and not record.bisect_steps


def test_an_end_that_cannot_be_built_stops_the_bisect_naming_the_recipe() -> None:
    f = Fake(5, lambda i, k: BUG if i >= 2 else PASS)
    real = f.test

    def test(role: Role, c: Candidate, sig: Signature | None) -> Step:
        if role == "good-end":
            return Step(role, c.label, c.ref, "skip", False, "cannot test: the kernel build failed: x.c:1: error")
        return real(role, c, sig)

    record = f.record()
    with pytest.raises(Stopped, match=r"the good end .* cannot be tested \(cannot test: the kernel build failed.*"
                                      r"fix the recipe"):
        run(f.subject, test, record)


def test_verification_fails_when_the_culprit_does_not_fail_again() -> None:
    seen: dict[int, int] = {}

    def behaviour(i: int, k: int) -> tuple[str, tuple[str, ...]]:
        seen[i] = seen.get(i, 0) + 1
        return BUG if i >= 3 and not (i == 3 and seen[i] > 1) else PASS

    f = Fake(6, behaviour)
    r = run(f.subject, f.test, f.record())
    assert r.culprit is not None and r.verified is False and "did not fail again" in r.verification


def test_a_debian_subject_cannot_be_reverted() -> None:
    f = Fake(3, lambda i, k: BUG if i >= 1 else PASS)
    assert "cannot be reverted" in str(f.subject.reverted(Candidate("x", "y")))
    found = f.subject.found()
    assert isinstance(found, Found)


# --- the record ------------------------------------------------------------------------------------

def test_the_record_table_json_and_page_show_every_step_escaped() -> None:
    f = Fake(6, lambda i, k: ("fail", ("crash: <script>alert(1)</script>",)) if i >= 2 else PASS)
    r = run(f.subject, f.test, f.record())
    data = r.to_json()
    assert data["kind"] == "patchscope-bisect" and data["result"]["culprit"] == r.culprit  # type: ignore[index]
    assert [s["role"] for s in data["steps"]][:2] == ["bad-end", "good-end"]  # type: ignore[index]
    rows = list(table(r))
    assert len(rows) == len(r.steps) + 1 and "BAD" in rows[1]
    page = html.render(r)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('<tr class="step') == len(r.steps)
    assert 'data-verified="true"' in page and "Content-Security-Policy" in page


# --- the command line: bad input is one line and exit 2, before anything boots ------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("--good", "debian:linux-image-6.1.0-57-amd64", "--bad", "debian:linux-image-6.1.0-47-amd64"),
     r"--good linux-image-6\.1\.0-57-amd64 6\.1\.192-3 is newer than --bad .*swap them"),
    (("--good", "debian:linux-image-6.1.0-999-amd64", "--bad", "debian:linux-image-6.1.0-57-amd64"),
     r"--good debian:linux-image-6\.1\.0-999-amd64: the apt sources carry no linux-image-6\.1\.0-999-amd64"),
    (("--good", "path:/boot/vmlinuz", "--bad", "debian:linux-image-6.1.0-57-amd64"),
     r"a Debian bisect goes between Debian kernel packages"),
    (("--good", "debian:linux-image-6.1.0-47-amd64", "--bad", "debian:linux-image-6.1.0-50-cloud-amd64"),
     r"different flavours"),
    (("--good", "v1", "--bad", "v2", "--tree", "/nonexistent"), r"--tree and --recipe go together"),
    (("--good", "v1", "--bad", "v2", "--tree", "/nonexistent", "--recipe", "tiny-6.1"), r"--tree /nonexistent: no such"),
    (("--good", "v1", "--bad", "v2", "--tree", "/", "--recipe", "tiny-6.1"), r"--tree /: not a git checkout"),
    (("--good", "debian-6.1", "--bad", "debian:linux-image-6.1.0-57-amd64", "--runs", "0"), r"--runs 0"),
    (("--good", "debian-6.1", "--verify-revert", "--bad", "debian:linux-image-6.1.0-57-amd64"), r"needs --tree"),
    (("--from", "/nonexistent", "--good", "debian-6.1"), r"--from needs --cell"),
])
def test_bad_bisect_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    res = patchscope("bisect", "configs/boot-native.yaml", *args, "--artifacts", str(tmp_path / "out"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "out" / "steps").exists() or not any((tmp_path / "out" / "steps").iterdir())


def test_from_a_matrix_cell_that_passed_there_is_nothing_to_bisect(tmp_path: Path) -> None:
    cell = Cell("boot-native", "debian-6.1", "native")
    results = MatrixResults("m", "m.yaml", "d", (cell.id,), (CellResult(cell, "pass"),)).to_json()
    (tmp_path / "results.json").write_text(json.dumps(results))
    for cell, message in (("boot-native/debian-6.1/native", "state is pass, not fail"),
                          ("nope[x-native]", "no such cell .* its failing cells: none")):
        res = patchscope("bisect", "--from", str(tmp_path), "--cell", cell, "--good", "debian-6.1")
        assert res.returncode == 2 and re.search(message, res.stderr), res.stderr


def test_bisect_step_never_exits_with_a_code_git_bisect_run_reads_as_bad(tmp_path: Path) -> None:
    for args in (("--bogus",), ("configs/boot-native.yaml",), ("nonexistent.yaml", "--recipe", "tiny-6.1"),
                 ("configs/boot-native.yaml", "--recipe", "tiny-6.1", "--tree", str(tmp_path))):
        res = patchscope("bisect-step", *args)
        assert res.returncode == 128, (args, res.returncode, res.stderr)


def test_a_steps_runs_are_patchscope_run_with_the_bisects_mode_and_timeout(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from framework.bisect import runner
    from framework.config import load_config

    seen: list[list[str]] = []

    class Proc:
        returncode = 3

        def __init__(self, argv: list[str], **kw: object) -> None:
            seen.append(argv)
            self.pid = 0

        def wait(self, timeout: float | None = None) -> int:
            return 3

    monkeypatch.setattr(runner.subprocess, "Popen", Proc)
    cfg = load_config(REPO / "configs" / "boot-native.yaml")
    tester = runner.StepTester(cfg, "native", tmp_path, 2, 3, lambda c: ("debian:x=1", "cached"), lambda _: None,
                               timeout=77)
    step = tester("step", Candidate("x 1", "debian:x=1"), None)
    assert seen[0][-9:] == ["--kernel", "debian:x=1", "--mode", "native", "--artifacts",
                            str(tmp_path / "steps" / "01-step-x" / "run-1"), "-q", "--timeout", "77"]
    assert len(seen) == 3 and step.decision == "skip" and "could not run" in step.why, "runs that wrote no result"
