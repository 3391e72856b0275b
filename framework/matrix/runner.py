"""Running a matrix: kernels prepared once, cells in parallel processes, retries, progress, Ctrl-C.

Every attempt of a cell is ``patchscope run CONFIG --kernel REF --mode MODE`` in a
process group of its own (so a cell is stopped as a whole), writing into its own
artefacts directory. ``-j`` cells run at once, and never more than the memory
available allows (each cell counts its guest's memory plus QEMU's overhead).
A failing cell runs again up to ``retries`` times; the failed attempts' artefacts
are kept beside it (``<mode>.attempt-N``). Ctrl-C or SIGTERM stops every cell
(each tears its QEMU down), and results.json, junit.xml and index.html are still
written for the cells that finished.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from .. import __version__
from ..config import Config
from ..domain import Note
from ..errors import PatchscopeError
from ..kernel import xen
from ..kernel.image import Kernel, prepare_kernel
from ..kernel.refs import BuildRef, DebianRef, NewestRef, PathRef, parse_ref
from ..pipeline import not_applicable, prepare_xen
from ..report.result import RunResult, load_result
from ..vm.machine import DEFAULT_MEMORY_MIB
from .junit import write_junit
from .plan import Cell, Plan, ShardSpec, estimate, fits
from .results import Attempt, CellResult, KernelInfo, MatrixResults, cell_state, diff, marks

# QEMU, patchscope and GDB beside each guest's own memory, in MiB (measured: ~150 MiB RSS for a TCG QEMU
# beyond its guest RAM, ~60 MiB for the patchscope process).
OVERHEAD_MIB = 256
RESERVE_MIB = 512          # left to the host
STOP_GRACE_S = 30.0        # a stopped cell's time to tear its QEMU down before it is killed


def check_kernel(ref: str, base: Path) -> str | None:
    """For the matrix file's reader: why a kernel reference names nothing (None: it parses)."""
    try:
        parse_ref(ref, base=base)
    except PatchscopeError as err:
        return str(err)
    return None


def available_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 20


def need_mib(cfg: Config, mode: str) -> int:
    return (cfg.qemu.memory_mib or DEFAULT_MEMORY_MIB.get(mode, 1024)) + OVERHEAD_MIB


def fetch_ref(ref_text: str, kernel: Kernel, base: Path) -> str:
    """What a cell's process is given: the exact kernel that was prepared (a floating ref pinned)."""
    ref = parse_ref(ref_text, base=base)
    if isinstance(ref, (DebianRef, NewestRef)) and kernel.package:
        return f"debian:{kernel.package}={kernel.version}" if kernel.version else f"debian:{kernel.package}"
    if isinstance(ref, BuildRef) and ref.text.startswith("build:") and ref.recipe.source is not None:
        return f"build:{ref.recipe.source.resolve()}"
    if isinstance(ref, PathRef):
        return f"path:{ref.bzimage}" + (f",vmlinux={ref.vmlinux}" if ref.vmlinux else "")
    return ref_text


def tool_version(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else None


@dataclass
class Running:
    cell: Cell
    attempt: int
    proc: subprocess.Popen[bytes]
    started: float
    log: Path
    need: int
    stopping: float | None = None      # when it was asked to stop
    why_stopped: str | None = None


@dataclass
class Outcome:
    """What run_matrix hands back: the results, and whether it was interrupted."""

    results: MatrixResults
    interrupted: bool


@dataclass
class MatrixRun:
    plan: Plan
    out: Path
    jobs: int
    note: Note
    progress: Callable[[str], None]          # a line for the user (a terminal's status line or a CI log line)
    status: Callable[[str], None] | None = None   # the terminal's live status line; None in CI
    shard: ShardSpec | None = None
    baseline: MatrixResults | None = None
    memory_mib: int = field(default_factory=available_mib)
    hypervisors: list[xen.Hypervisor] = field(default_factory=list)     # prepared for the xen-pv cells
    refs: dict[str, str] = field(default_factory=dict)     # kernel name -> what each cell is given (fetch_ref)

    # state
    _stop: str | None = None

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = signal.Signals(signum).name

    def run(self) -> Outcome:
        started_wall = datetime.datetime.now(datetime.UTC)
        started = time.monotonic()
        spec = self.plan.spec
        durations = self.baseline.durations() if self.baseline is not None else None
        cells = self.plan.order(self.shard, durations)
        configs = {c.name: c for c in spec.configs}
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        done: dict[Cell, CellResult] = {}
        infos: list[KernelInfo] = []
        try:
            kernels, infos, kernel_errors = self._prepare_kernels({c.kernel for c in cells})
            xen_errors = self._prepare_xen([configs[c.config] for c in cells if c.mode == "xen-pv"])
            pending: list[tuple[Cell, int]] = []
            for cell in cells:
                cfg = configs[cell.config]
                why = self.plan.not_in_modes.get(cell)
                if why is None and cell.kernel in kernel_errors:
                    done[cell] = CellResult(cell, "error", f"the kernel could not be prepared: {kernel_errors[cell.kernel]}")
                    continue
                if why is None and cell.mode == "xen-pv" and cfg.hypervisor in xen_errors:
                    done[cell] = CellResult(cell, "error", f"Xen could not be prepared: {xen_errors[cfg.hypervisor]}")
                    continue
                if why is None and cell.kernel in kernels:
                    try:
                        why = not_applicable(cfg, kernels[cell.kernel])
                    except PatchscopeError as err:
                        done[cell] = CellResult(cell, "error", f"requires: cannot be checked: {err}")
                        continue
                if why is not None:
                    done[cell] = CellResult(cell, "not-applicable", why)
                    continue
                pending.append((cell, 1))
            self._loop(pending, done, configs, durations, len(cells))
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        results = self._results(done, infos, started_wall, started)
        write_outputs(self.out, results, self.baseline)
        return Outcome(results, self._stop is not None)

    # kernels -----------------------------------------------------------------------------------
    def _prepare_kernels(self, names: set[str]) -> tuple[dict[str, Kernel], list[KernelInfo], dict[str, str]]:
        kernels: dict[str, Kernel] = {}
        infos: list[KernelInfo] = []
        errors: dict[str, str] = {}
        base = self.plan.spec.path.parent
        for name in self.plan.spec.kernels:
            if name not in names or self._stop:
                continue
            self.progress(f"kernel {name}: preparing")
            try:
                kernel = prepare_kernel(parse_ref(name, base=base), self.note)
            except PatchscopeError as err:
                errors[name] = str(err)
                self.progress(f"kernel {name}: {err}")
                continue
            kernels[name] = kernel
            self.refs[name] = fetch_ref(name, kernel, base)
            infos.append(KernelInfo(name, self.refs[name], kernel.package, kernel.version, kernel.release,
                                    kernel.sha256))
        return kernels, infos, errors

    def _prepare_xen(self, configs: list[Config]) -> dict[str, str]:
        errors: dict[str, str] = {}
        seen: set[str] = set()
        for cfg in configs:
            if cfg.hypervisor in seen or self._stop:
                continue
            seen.add(cfg.hypervisor)
            try:
                self.hypervisors.append(prepare_xen(cfg, self.note))
            except PatchscopeError as err:
                errors[cfg.hypervisor] = str(err)
        return errors

    # the loop ----------------------------------------------------------------------------------
    def _loop(self, pending: list[tuple[Cell, int]], done: dict[Cell, CellResult], configs: Mapping[str, Config],
              durations: Mapping[str, float] | None, total: int) -> None:
        running: list[Running] = []
        history: dict[Cell, list[Attempt]] = {}
        seen_s: dict[str, list[float]] = {}
        last_status = 0.0
        while pending or running:
            if self._stop and pending:
                for cell, _ in pending:
                    done[cell] = CellResult(cell, "not-run", f"the matrix was stopped ({self._stop}) before it started",
                                            tuple(history.get(cell, ())))
                pending.clear()
            if self._stop:
                for r in running:
                    if r.stopping is None:
                        self._stop_cell(r, f"the matrix was stopped ({self._stop})")
            # start what fits
            while not self._stop and pending and len(running) < self.jobs:
                used = [r.need for r in running]
                pick = next((i for i, (cell, _) in enumerate(pending)
                             if fits(used, need_mib(configs[cell.config], cell.mode), self.memory_mib, RESERVE_MIB)),
                            None)
                if pick is None:
                    break
                cell, attempt = pending.pop(pick)
                running.append(self._start(cell, attempt, configs[cell.config]))
            # reap
            now = time.monotonic()
            for r in list(running):
                if r.stopping is None and now - r.started > self.plan.spec.timeout:
                    self._stop_cell(r, f"stopped by the matrix after its timeout of {self.plan.spec.timeout:g} s")
                if r.stopping is not None and r.proc.poll() is None and now - r.stopping > STOP_GRACE_S:
                    self._kill_cell(r)
                if r.proc.poll() is None:
                    continue
                running.remove(r)
                tried = self._finish(r)
                history.setdefault(r.cell, []).append(tried)
                seen_s.setdefault(r.cell.mode, []).append(tried.duration_s)
                verdicts = [a.verdict for a in history[r.cell]]
                if self._stop and r.why_stopped and r.why_stopped.startswith("the matrix was stopped"):
                    done[r.cell] = CellResult(r.cell, "not-run", r.why_stopped, tuple(history[r.cell]),
                                              self._load(r.cell))
                    continue
                if tried.verdict != "pass" and r.attempt <= self.plan.spec.retries and not self._stop:
                    self._keep_attempt(r.cell, r.attempt)
                    history[r.cell][-1] = Attempt(tried.verdict, tried.duration_s,
                                                  f"{r.cell.where}.attempt-{r.attempt}", tried.summary)
                    self.progress(f"RETRY {r.cell.id}: attempt {r.attempt} {tried.verdict}: {tried.summary}")
                    pending.insert(0, (r.cell, r.attempt + 1))
                    continue
                state = cell_state(verdicts)
                done[r.cell] = CellResult(r.cell, state, r.why_stopped or "", tuple(history[r.cell]),
                                          self._load(r.cell))
                self.progress(f"{state.upper():5} {r.cell.id}: {tried.summary} ({tried.duration_s:.1f} s)"
                              f"  [{len(done)}/{total}]")
            if self.status is not None and now - last_status > 1.0:
                last_status = now
                self.status(self._status_line(running, pending, done, total, durations, seen_s))
            time.sleep(0.1)

    def _status_line(self, running: list[Running], pending: list[tuple[Cell, int]], done: Mapping[Cell, CellResult],
                     total: int, durations: Mapping[str, float] | None, seen_s: Mapping[str, list[float]]) -> str:
        now = time.monotonic()

        def guess(cell: Cell) -> float:
            if durations and cell.id in durations:
                return durations[cell.id]
            seen = seen_s.get(cell.mode)
            return sum(seen) / len(seen) if seen else estimate(cell, None)

        left = sum(guess(c) for c, _ in pending) + sum(max(guess(r.cell) - (now - r.started), 1.0) for r in running)
        eta = left / max(1, min(self.jobs, len(pending) + len(running)))
        failed = sum(c.state in ("fail", "error") for c in done.values())
        names = ", ".join(f"{r.cell.id} {now - r.started:.0f}s" for r in running)
        left_text = f"~{eta / 60:.0f} min left" if eta >= 90 else f"~{eta:.0f} s left"
        return f"[{len(done)}/{total}] {len(running)} running ({names}) · {failed} failed · {left_text}"

    def _start(self, cell: Cell, attempt: int, cfg: Config) -> Running:
        where = self.out / cell.where
        log = self.out / "logs" / f"{cell.where.replace('/', '__')}.attempt-{attempt}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "framework.cli", "run", str(cfg.path), "--kernel", self.refs[cell.kernel],
                "--mode", cell.mode, "--artifacts", str(where.parent.parent), "-q"]
        self.progress(f"START {cell.id}" + (f" (attempt {attempt})" if attempt > 1 else ""))
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PATCHSCOPE_MATRIX_ATTEMPT": str(attempt)})
        return Running(cell, attempt, proc, time.monotonic(), log, need_mib(cfg, cell.mode))

    def _stop_cell(self, r: Running, why: str) -> None:
        r.stopping, r.why_stopped = time.monotonic(), why
        try:
            os.killpg(r.proc.pid, signal.SIGTERM)     # the run unwinds as on Ctrl-C: QEMU stopped, result.json kept
        except ProcessLookupError:
            pass

    def _kill_cell(self, r: Running) -> None:
        try:                                           # QEMU leads its own session: kill it by its pid
            os.kill(int((self.out / r.cell.where / "qemu.pid").read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            os.killpg(r.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _finish(self, r: Running) -> Attempt:
        took = time.monotonic() - r.started
        where = self.out / r.cell.where
        try:
            result = load_result(where) if where.exists() else None
        except PatchscopeError:
            result = None
        if result is None:
            tail = r.log.read_text(errors="replace").strip().splitlines()[-1:] if r.log.exists() else []
            why = r.why_stopped or (tail[0] if tail else f"exited with status {r.proc.returncode} and wrote no result.json")
            return Attempt("error", took, r.cell.where, why)
        summary = result.summary
        if r.why_stopped:
            summary = f"{r.why_stopped}; {summary}"
        return Attempt(result.verdict if not r.why_stopped else "error", took, r.cell.where, summary)

    def _load(self, cell: Cell) -> RunResult | None:
        try:
            return load_result(self.out / cell.where)
        except PatchscopeError:
            return None

    def _keep_attempt(self, cell: Cell, attempt: int) -> None:
        src = self.out / cell.where
        dest = self.out / f"{cell.where}.attempt-{attempt}"
        if dest.exists():
            shutil.rmtree(dest)
        if src.exists():
            src.rename(dest)

    # results -----------------------------------------------------------------------------------
    def _results(self, done: Mapping[Cell, CellResult], infos: list[KernelInfo], started_wall: datetime.datetime,
                 started: float) -> MatrixResults:
        order = {c: i for i, c in enumerate(self.plan.cells)}
        cells = sorted(done.values(), key=lambda c: order[c.cell])
        meta: dict[str, object] = {
            "patchscope": __version__, "started": started_wall.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1), "jobs": self.jobs,
            "interrupted": self._stop is not None,
            "host": {"name": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                     "memory_mib": self.memory_mib, "python": platform.python_version()},
            "qemu": tool_version(["qemu-system-x86_64", "--version"]),
            "xen": [h.identity() for h in self.hypervisors],
            "retries": self.plan.spec.retries, "timeout_s": self.plan.spec.timeout,
        }
        if self.baseline is not None:
            meta["baseline"] = {"name": self.baseline.name, "started": self.baseline.meta.get("started")}
        return MatrixResults(
            name=self.plan.spec.name, file=str(self.plan.spec.path), digest=self.plan.digest,
            all_cells=tuple(c.id for c in self.plan.cells), cells=tuple(cells), kernels=tuple(infos),
            shards=(self.shard.index,) if self.shard is not None else None,
            shard_count=self.shard.count if self.shard is not None else None, meta=meta)


def write_outputs(out: Path, results: MatrixResults, baseline: MatrixResults | None) -> None:
    """results.json, junit.xml and index.html (with the baseline's marks) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results.to_json(), indent=2, default=str) + "\n")
    tmp.replace(out / "results.json")
    write_junit(results, out, out / "junit.xml")
    from .html import write_page
    write_page(out, results, marks(diff(baseline, results)) if baseline is not None else None)
