"""A git bisect over a kernel tree, run in patchscope's own clone of it, so the user's tree is never touched. An edge.

The clone lives in ``<cache>/bisect/clones/<hash of the tree's path>/`` (made once
with ``git clone --local``: objects hard-linked, then fetched anew from the tree on
every bisect). ``git bisect`` runs there: start, good/bad/skip, log, reset. Its
work tree is the source every step is built from, out of tree and always at the
same path, so kbuild rebuilds only what a commit changed and ccache serves the
rest. The user's checkout, its branch, index, files and ``.git`` stay exactly as
they were, whatever happens to the bisect (Ctrl-C, a crash, a kill): nothing is
ever written there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InfrastructureError, KernelRefError
from ..kernel.fetch import cache_dir, locked
from .driver import Candidate, Found
from .search import expected_steps, git_bisect_said

# Every git call: a fixed identity (a revert commits in the clone), no automatic gc, and no opportunistic write
# of the index (``git status`` refreshes it otherwise: in the user's tree, that would be a write).
IDENTITY = ("--no-optional-locks", "-c", "user.name=patchscope", "-c", "user.email=patchscope@localhost",
            "-c", "gc.auto=0")


class GitError(InfrastructureError):
    """git refused something the bisect needs."""


def git(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise GitError("git is not installed: apt-get install git")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    proc = subprocess.run(["git", "-C", str(path), *IDENTITY, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, check=False)
    if check and proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise GitError(f"git {' '.join(args[:3])} in {path} failed: {why[-1] if why else proc.returncode}")
    return proc


def toplevel(tree: Path) -> Path:
    """The top of the git checkout ``tree`` is in; a one-line error when it is not one."""
    if not tree.is_dir():
        raise KernelRefError(f"--tree {tree}: no such directory")
    proc = git(tree, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise KernelRefError(f"--tree {tree}: not a git checkout; a tree is bisected over its commits "
                             "(for a directory without history, build it with patchscope build --tree)")
    return Path(proc.stdout.strip())


def commit_of(tree: Path, rev: str, option: str) -> str:
    proc = git(tree, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise KernelRefError(f"{option} {rev}: no such commit in {tree}; give a commit, tag or branch of that tree")
    return proc.stdout.strip()


def check_clean(tree: Path) -> None:
    changed = git(tree, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if changed:
        raise KernelRefError(f"--tree {tree}: {len(changed)} uncommitted change{'s' if len(changed) > 1 else ''} "
                             f"({changed[0].strip()}{', …' if len(changed) > 1 else ''}); the bisect builds "
                             "commits, not your working tree: commit or stash them first")


def describe(tree: Path, commit: str) -> str:
    """'1a2b3c4d5e6f subject' for a commit."""
    return git(tree, "log", "-1", "--format=%h %s", "--abbrev=12", commit).stdout.strip()


def message(tree: Path, commit: str) -> str:
    return git(tree, "log", "-1", "--format=commit %H%nAuthor: %an <%ae>%nDate:   %ad%n%n    %s%n%n%b",
               commit).stdout.rstrip()


def slot(tree: Path) -> str:
    """The name of the clone of the checkout ``tree`` (and of its locks)."""
    return hashlib.sha256(str(toplevel(tree).resolve()).encode()).hexdigest()[:12]


def in_use(tree: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a bisect (or a bisect-step) uses the clone: two never check out in it at once."""
    return locked(f"bisect-run-{slot(tree)}", lambda m: print(f"patchscope: {m}", file=sys.stderr))


def clone_of(tree: Path) -> Path:
    """patchscope's clone of ``tree``, made or brought up to date; ``tree`` itself is only read."""
    top = toplevel(tree).resolve()
    clone = cache_dir() / "bisect" / "clones" / slot(top)
    refspecs = ("+refs/heads/*:refs/remotes/user/heads/*", "+refs/tags/*:refs/tags/*", "+HEAD:refs/remotes/user/HEAD")
    _forget_orphans(clone.parent)
    if not (clone / ".git").is_dir():
        if clone.exists():
            shutil.rmtree(clone)
        clone.parent.mkdir(parents=True, exist_ok=True)
        tmp = clone.with_name(clone.name + ".new")
        if tmp.exists():
            shutil.rmtree(tmp)
        _clone_local(top, tmp)
        tmp.rename(clone)
        (clone / ".git" / "patchscope-origin").write_text(f"{top}\n")
    git(clone, "fetch", "--quiet", "--force", "--no-tags", str(top), *refspecs)
    return clone


def _clone_local(top: Path, dest: Path, attempts: int = 4) -> None:
    """``git clone --local`` of ``top`` into ``dest``, again once a ``git gc`` in ``top`` has moved the objects.

    A tree committed to a moment ago may have a detached ``git gc --auto`` packing its loose objects (a first
    commit of a kernel source makes ~80,000 of them), and the hard-linking clone then finds an object gone:
    ``failed to create link …: No such file or directory``. Once gc is done the objects are in a pack."""
    common = Path(git(top, "rev-parse", "--path-format=absolute", "--git-common-dir").stdout.strip())
    for attempt in range(1, attempts + 1):
        proc = git(dest.parent, "clone", "--quiet", "--local", "--no-checkout", str(top), str(dest), check=False)
        if proc.returncode == 0:
            return
        why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        if attempt == attempts or not any("failed to create link" in w or "No such file" in w for w in why):
            raise GitError(f"git clone --local {top} failed: {why[-1] if why else proc.returncode}")
        shutil.rmtree(dest, ignore_errors=True)
        waited = wait_for_gc(common)
        print(f"patchscope: {top}'s objects moved while cloning them"
              f"{f' (git gc ran for {waited:.0f} s)' if waited else ''}; cloning again", file=sys.stderr)


def wait_for_gc(git_dir: Path, limit_s: float = 900.0) -> float:
    """Wait while a ``git gc`` holds ``git_dir``'s gc.pid (at most ``limit_s``); the seconds waited."""
    started = time.monotonic()
    while (git_dir / "gc.pid").exists() and time.monotonic() - started < limit_s:
        time.sleep(1.0)
    time.sleep(0.5)
    return time.monotonic() - started


def _forget_orphans(clones: Path) -> None:
    """Delete the clones of trees that are gone (a clone is a whole checkout and its builds: gigabytes)."""
    if not clones.is_dir():
        return
    for origin in clones.glob("*/.git/patchscope-origin"):
        try:
            tree = Path(origin.read_text().strip())
        except OSError:
            continue
        if not tree.exists():
            shutil.rmtree(origin.parent.parent, ignore_errors=True)


@dataclass
class GitSubject:
    """The ``Subject`` of a bisect over a tree's commits, driven through ``git bisect`` in the clone."""

    tree: Path                    # the user's checkout (never written)
    clone: Path
    good: str                     # commits
    bad: str
    log: list[str] = field(default_factory=list)     # what git bisect said, step by step
    _current: str | None = None
    _said: tuple[str, object] | None = None
    _started: bool = False
    saved_log: str = ""           # git bisect log, kept when the search is over

    @staticmethod
    def open(tree: Path, good: str, bad: str) -> GitSubject:
        """Check the tree and the range (one-line errors, nothing changed), and prepare the clone."""
        top = toplevel(tree)
        check_clean(top)
        good_c, bad_c = commit_of(top, good, "--good"), commit_of(top, bad, "--bad")
        if good_c == bad_c:
            raise KernelRefError(f"--good {good} and --bad {bad} are the same commit: there is nothing to bisect")
        if git(top, "merge-base", "--is-ancestor", good_c, bad_c, check=False).returncode != 0:
            if git(top, "merge-base", "--is-ancestor", bad_c, good_c, check=False).returncode == 0:
                raise KernelRefError(f"--good {good} comes after --bad {bad}: give the older commit as --good (swap them)")
            raise KernelRefError(f"--good {good} is not an ancestor of --bad {bad}: the range is not ordered; "
                                 "give a --good that --bad's history contains")
        with locked(f"bisect-clone-{slot(top)}"):
            clone = clone_of(top)
        return GitSubject(top, clone, good_c, bad_c)

    def untested(self) -> int:
        """Commits strictly between the ends that git bisect may test."""
        n = int(git(self.clone, "rev-list", "--count", f"{self.good}..{self.bad}").stdout.strip() or 0)
        return max(0, n - 1)

    def candidate(self, commit: str) -> Candidate:
        return Candidate(describe(self.clone, commit), commit)

    def ends(self) -> tuple[Candidate, Candidate]:
        return self.candidate(self.good), self.candidate(self.bad)

    def checkout(self, commit: str) -> Path:
        """The clone's work tree at ``commit`` (outside a bisect: the ends, a revert); the path to build."""
        git(self.clone, "checkout", "--quiet", "--force", "--detach", commit)
        return self.clone

    def next(self) -> Candidate | None:
        if not self._started:
            self.reset()
            git(self.clone, "checkout", "--quiet", "--force", "--detach", self.bad)
            proc = git(self.clone, "bisect", "start", self.bad, self.good)
            self._started = True
            self._take(proc.stdout)
        if self._said is None or self._said[0] != "next":
            return None
        self._current = git(self.clone, "rev-parse", "HEAD").stdout.strip()
        return self.candidate(self._current)

    def _take(self, said: str) -> None:
        self.log.append(said.strip())
        self._said = git_bisect_said(said)

    def mark(self, candidate: Candidate, decision: str) -> None:
        word = {"good": "good", "bad": "bad", "skip": "skip"}[decision]
        proc = git(self.clone, "bisect", word, candidate.ref, check=False)   # 2 when only skipped ones are left
        try:
            self._take(proc.stdout + proc.stderr)
        except ValueError as err:
            raise GitError(f"git bisect {word} {candidate.ref[:12]}: {err}") from None

    def left(self) -> int:
        """What git bisect said it has left, as steps: the revision checked out and the N "left after this"."""
        if self._said is None or self._said[0] != "next":
            return 0
        left = self._said[1]
        return expected_steps(left + 1) if isinstance(left, int) else 0

    def bisect_log(self) -> str:
        proc = git(self.clone, "bisect", "log", check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def reset(self) -> None:
        """No bisect in progress in the clone (after a run, or one a crash left behind)."""
        git(self.clone, "bisect", "reset", check=False)

    def found(self) -> Found:
        self.saved_log = self.bisect_log()
        self.reset()
        if self._said is not None and self._said[0] == "found":
            sha = str(self._said[1])
            parent = git(self.clone, "rev-parse", f"{sha}^").stdout.strip()
            return Found(self.candidate(sha), self.candidate(parent), note=message(self.clone, sha))
        if self._said is not None and self._said[0] == "ambiguous":
            shas = self._said[1]
            assert isinstance(shas, list)
            return Found(None, None, tuple(self.candidate(s) for s in shas))
        # no commit between the ends: the bad end is the first bad
        return Found(self.candidate(self.bad), self.candidate(self.good), note=message(self.clone, self.bad))

    def reverted(self, culprit: Candidate) -> Candidate | str:
        """A commit in the clone: the bad end with the culprit reverted (git revert), or why there is none."""
        self.reset()
        git(self.clone, "checkout", "--quiet", "--force", "--detach", self.bad)
        proc = git(self.clone, "revert", "--no-edit", culprit.ref, check=False)
        if proc.returncode != 0:
            git(self.clone, "revert", "--abort", check=False)
            git(self.clone, "checkout", "--quiet", "--force", "--detach", self.bad)
            return f"{culprit.label} does not revert cleanly on the bad end"
        sha = git(self.clone, "rev-parse", "HEAD").stdout.strip()
        return Candidate(f"{sha[:12]} bad end with {culprit.ref[:12]} reverted", sha)
