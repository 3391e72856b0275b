"""Running a bisect step: its kernel prepared, then ``patchscope run`` as often as the runs policy asks. An edge.

Every run is ``patchscope run CONFIG --kernel REF --mode MODE`` in a process
group of its own, writing into ``<out>/steps/<NN>-<role>-<what>/run-<K>/``; Ctrl-C
or SIGTERM stops it as a whole (it tears its QEMU down and keeps its artefacts)
and is passed on as KeyboardInterrupt.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..domain import Note
from ..errors import PatchscopeError
from ..report.result import load_result
from .driver import Candidate
from .record import Role, Run, Step
from .signature import RunClass, Signature, classify, facets
from .steps import decide, needs_more, tally

STOP_GRACE_S = 30.0

# What a subject does to make a candidate runnable: the kernel reference to run, and how it got it
# ("downloaded 71 MB", "built, 23 kbuild steps", "cached"). Raises PatchscopeError when it cannot.
Prepare = Callable[[Candidate], tuple[str, str]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)[:60].strip("-")


@dataclass
class StepTester:
    config: Config
    mode: str
    out: Path
    runs: int
    max_runs: int
    prepare: Prepare
    note: Note
    timeout: float | None = None
    _count: int = 0

    def __call__(self, role: Role, candidate: Candidate, signature: Signature | None) -> Step:
        self._count += 1
        started = time.monotonic()
        where = self.out / "steps" / f"{self._count:02d}-{role}-{_slug(candidate.label.split(' ')[0])}"
        self.note(f"{role.replace('-', ' ')}: {candidate.label}")
        try:
            ref, prepared = self.prepare(candidate)
        except PatchscopeError as err:
            why = f"cannot test: {err}"
            self.note(f"  {why}")
            return Step(role, candidate.label, candidate.ref, "skip", False, why,
                        prepare_s=time.monotonic() - started, prepared="failed",
                        duration_s=time.monotonic() - started)
        prepare_s = time.monotonic() - started
        runs: list[Run] = []
        expect_bad = role in ("bad-end", "verify-culprit")
        while needs_more([r.cls for r in runs], self.runs, self.max_runs, expect_bad=expect_bad):
            runs.append(self._run(ref, where / f"run-{len(runs) + 1}", signature))
            r = runs[-1]
            shown = "; ".join(r.facets) if r.facets else r.summary
            self.note(f"  run {len(runs)}: {r.cls}: {shown} ({r.duration_s:.1f} s)")
        decided = decide([r.cls for r in runs])
        why = decided.why
        if len(runs) > 1 and not decided.flaky:
            why += f" ({tally([r.cls for r in runs])})"
        return Step(role, candidate.label, candidate.ref, decided.decision, decided.flaky, why, tuple(runs),
                    prepare_s, prepared, time.monotonic() - started)

    def _run(self, ref: str, where: Path, signature: Signature | None) -> Run:
        where.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "framework.cli", "run", str(self.config.path), "--kernel", ref,
                "--mode", self.mode, "--artifacts", str(where), "-q"]
        if self.timeout is not None:
            argv += ["--timeout", f"{self.timeout:g}"]
        started = time.monotonic()
        log = where / "patchscope.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                _stop(proc)
                raise
        took = time.monotonic() - started
        result_dir = where / self.config.name / self.mode
        try:
            result = load_result(result_dir) if result_dir.exists() else None
        except PatchscopeError:
            result = None
        if result is None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            why = tail[0] if tail else f"exited with status {proc.returncode} and wrote no result.json"
            return Run("error", "error", (), why, took, str(where))
        found = facets(result) if result.verdict == "fail" else ()
        cls: RunClass = classify(result.verdict, found, signature)
        return Run(cls, result.verdict, found, result.summary if result.verdict != "error" else
                   (result.error or result.summary), took, str(result_dir))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a run's process group: SIGTERM (it tears QEMU down), then SIGKILL after the grace time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
