"""The git side of a bisect on a small real repository: git bisect driven in patchscope's clone, the user's
tree never written (not even on an error or an interrupted bisect), bad ranges refused in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from framework.bisect.driver import run
from framework.bisect.gittree import GitSubject
from framework.bisect.record import Record, Role, Run, Step
from framework.bisect.signature import Signature
from framework.errors import KernelRefError
from tests.conftest import git, patchscope

BAD_FROM = 6   # commit 6 introduces the "bug"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "linux"
    tree.mkdir()
    git(tree, "init", "-q", "-b", "main")
    for i in range(10):
        (tree / f"f{i}").write_text(f"{i}\n")      # one new file a commit: the culprit reverts cleanly
        (tree / "bug").write_text("yes\n" if i >= BAD_FROM else "no\n")
        git(tree, "add", "-A")
        git(tree, "commit", "-q", "-m", f"commit {i}")
        git(tree, "tag", f"c{i}")
    (tree / "untracked.txt").write_text("mine\n")
    return tree


def state(tree: Path) -> tuple[str, ...]:
    """Everything of the user's tree a bisect must leave alone."""
    files = tuple(f"{p.relative_to(tree)}:{p.stat().st_mtime_ns}:{p.read_bytes()!r}"
                  for p in sorted(tree.rglob("*")) if p.is_file() and ".git" not in p.parts)
    return (git(tree, "symbolic-ref", "HEAD"), git(tree, "rev-parse", "HEAD"), git(tree, "status", "--porcelain"),
            git(tree, "for-each-ref"), str(sorted(p.name for p in (tree / ".git").iterdir()))) + files


def fake_step(subject: GitSubject, untestable: set[int] = frozenset()):  # type: ignore[no-untyped-def, assignment]
    """A step that reads the clone's work tree at the candidate, as a build would."""
    def test(role: Role, c, sig: Signature | None) -> Step:  # type: ignore[no-untyped-def]
        subject.checkout(c.ref)
        n = len(list(subject.clone.glob("f*"))) - 1
        if n in untestable:
            return Step(role, c.label, c.ref, "skip", False, "build failed")
        bad = (subject.clone / "bug").read_text() == "yes\n"
        found = ("crash: the bug",) if bad else ()
        runs = (Run("bad" if bad else "good", "fail" if bad else "pass", found, "", 0.0, ""),)
        return Step(role, c.label, c.ref, "bad" if bad else "good", False, "", runs)
    return test


def record() -> Record:
    return Record("git", "c.yaml", "native", "g", "b", 1, 3, 0, 0)


def test_git_bisect_runs_in_the_clone_and_finds_the_first_bad_commit(repo: Path) -> None:
    before = state(repo)
    subject = GitSubject.open(repo, "c0", "main")
    assert subject.untested() == 8
    r = run(subject, fake_step(subject), record(), verify_revert=True)
    assert r.state == "found" and r.culprit is not None and r.culprit.endswith("commit 6")
    assert r.verified, r.verification
    assert "bad end with it reverted passes" in r.verification
    assert len(r.bisect_steps) <= 4 and "git bisect start" in subject.saved_log
    assert state(repo) == before, "the user's tree was written"
    assert not (subject.clone / ".git" / "BISECT_LOG").exists(), "the clone's bisect was not reset"


def test_untestable_commits_are_skipped_with_git_bisect_skip(repo: Path) -> None:
    subject = GitSubject.open(repo, "c0", "main")
    r = run(subject, fake_step(subject, {5}), record())
    assert r.state == "ambiguous" and [p.split()[1:] for p in r.possible] == [["commit", "5"], ["commit", "6"]]
    assert "git bisect skip" in subject.saved_log


def test_a_second_bisect_reuses_the_clone_and_sees_new_commits(repo: Path) -> None:
    first = GitSubject.open(repo, "c0", "c5")
    (repo / "f0").write_text("10\n")
    git(repo, "commit", "-q", "-am", "commit 10")
    second = GitSubject.open(repo, "c0", "HEAD")
    assert second.clone == first.clone and second.untested() == 9


def test_the_clone_of_a_tree_that_is_gone_is_deleted(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["cp", "-a", str(repo), str(other)], check=True)
    gone = GitSubject.open(other, "c0", "main").clone
    subprocess.run(["rm", "-rf", str(other)], check=True)
    kept = GitSubject.open(repo, "c0", "main").clone
    assert kept.exists() and not gone.exists()


@pytest.mark.parametrize(("good", "bad", "match"), [
    ("c7", "c2", "comes after --bad .*swap"),
    ("c3", "c3", "same commit"),
    ("nosuch", "main", "--good nosuch: no such commit"),
])
def test_bad_ranges_are_refused_in_one_line(repo: Path, good: str, bad: str, match: str) -> None:
    before = state(repo)
    with pytest.raises(KernelRefError, match=match):
        GitSubject.open(repo, good, bad)
    assert state(repo) == before


def test_an_unordered_range_and_uncommitted_changes_are_refused(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "side", "c3")
    (repo / "f0").write_text("side\n")
    git(repo, "commit", "-q", "-am", "side")
    git(repo, "checkout", "-q", "main")
    with pytest.raises(KernelRefError, match="not an ancestor"):
        GitSubject.open(repo, "side", "main")
    (repo / "f0").write_text("dirty\n")
    with pytest.raises(KernelRefError, match="uncommitted change.*commit or stash"):
        GitSubject.open(repo, "c0", "main")


def test_the_cli_refuses_a_dirty_tree_with_exit_2_and_changes_nothing(repo: Path, tmp_path: Path) -> None:
    (repo / "f0").write_text("dirty\n")
    before = state(repo)
    res = patchscope("bisect", "configs/boot-native.yaml", "--tree", str(repo), "--recipe", "tiny-6.1",
                     "--good", "c0", "--bad", "main", "--artifacts", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "uncommitted change" in res.stderr, res.stderr
    assert state(repo) == before


def test_a_clone_racing_a_git_gc_waits_for_it_and_clones_again(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """CI saw it: a first commit of a kernel source leaves ~80,000 loose objects, git commit detaches a
    ``git gc --auto``, and the hard-linking clone finds an object packed away under it."""
    import threading

    from framework.bisect import gittree
    real = gittree.git
    gc_pid = repo / ".git" / "gc.pid"
    clones: list[Path] = []

    def gc_done() -> None:
        git(repo, "repack", "-a", "-d", "-q")
        git(repo, "prune-packed")
        gc_pid.unlink()

    def racing(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[0] == "clone":
            clones.append(Path(args[-1]))
            if len(clones) == 1:     # the first clone loses the race: gc has started and holds gc.pid
                gc_pid.write_text("1 host\n")
                threading.Timer(1.0, gc_done).start()
                Path(args[-1], ".git").mkdir(parents=True)       # what the failed clone leaves behind
                return subprocess.CompletedProcess(args, 128, "", "fatal: failed to create link "
                                                   f"'{args[-1]}/.git/objects/82/22cd': No such file or directory\n")
        return real(path, *args, check=check)

    monkeypatch.setattr(gittree, "git", racing)
    clone = gittree.clone_of(repo)
    assert len(clones) == 2 and not gc_pid.exists()
    assert git(clone, "rev-parse", "refs/remotes/user/heads/main") == git(repo, "rev-parse", "main")
    assert "objects moved while cloning them (git gc ran for" in capsys.readouterr().err


def test_a_clone_that_fails_another_way_is_not_tried_again(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from framework.bisect import gittree
    real, clones = gittree.git, []

    def failing(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[0] == "clone":
            clones.append(args)
            return subprocess.CompletedProcess(args, 128, "", "fatal: destination path exists\n")
        return real(path, *args, check=check)

    monkeypatch.setattr(gittree, "git", failing)
    with pytest.raises(gittree.GitError, match="git clone --local .* failed: fatal: destination path exists"):
        gittree.clone_of(repo)
    assert len(clones) == 1
