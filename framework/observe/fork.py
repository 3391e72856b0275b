"""Snapshot-forked experiments: one boot to ``fork.at``, the machine saved there, every sweep point run from it.

    boot ──► fork.at (its hit-th arrival) ──► savevm ──► point 1 ──► loadvm ──► point 2 ──► … point N

Each point is a scenario session of its own (:mod:`framework.observe.session`) from the
snapshot to the guest's success marker (or its crash, or its timeout), and is judged as
a run of its own (``verdict.judge`` with the point's scenario and expectations). Its
artefacts are in ``points/<n>-<label>/`` (``points/03-hit=201/``): ``console.log`` (the boot to the snapshot, then
the point's own lines), ``result.json`` (``fork`` names the snapshot it started from),
``scenario.jsonl``, ``config.yaml`` (the config text with the point's values written in)
and its dumps. ``sweep.json`` in the run's directory lists every point as it is judged,
so nothing is lost when the sweep is interrupted.

QEMU's side (all through the run's own unix-socket QMP and gdbstub):

- savevm needs a drive that can hold snapshots: the machine gets a small qcow2 scratch
  drive (``if=none``: the guest never sees it), made with ``qemu-img`` in the run's
  directory and deleted when the run ends (it holds the guest's RAM);
- ``-action shutdown=pause`` keeps QEMU when a point's guest powers off (/init does after
  its marker) or panics (``panic=-1`` reboots, which ``-no-reboot`` makes a shutdown);
- a machine paused by a shutdown "needs a reset": the gdbstub will not resume it, nor answer
  an interrupt (it is not running). It is reset (``system_reset``, with the reboot action set
  to reset for that moment: under ``reboot=shutdown`` a reset request is a shutdown request)
  and resumed, and the interrupt then stops it; loadvm replaces all of that;
- after loadvm the debugger forgets the registers of its last stop (``Rsp.state_replaced``).

Breakpoints live in QEMU's CPU state, not in guest memory, so loadvm keeps them; each
point removes its own before the next starts. A point starts exactly at the fork
point: a rule there sees its next arrival, not the one the snapshot was taken at.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..analysis.console_log import Ending, EndReason, TimedLine, format_line
from ..analysis.findings import Analysis
from ..analysis.observation import Observation, observe
from ..config import Config, sweep_point
from ..config.sweep import label
from ..debugger.contract import DebuggerError, DebuggerTimeout, Stop
from ..debugger.rsp import Rsp
from ..domain import Mode, Note
from ..errors import ConfigError, InfrastructureError, LaunchError, UnsupportedError
from ..kernel.image import Kernel
from ..report.result import RunResult, write_json, write_result
from ..scenario import Trigger, location, resolve
from ..verdict import Verdict, could_not_run, judge, judge_sweep
from ..vm.machine import Machine
from ..vm.qemu import Qemu
from ..vm.qmp import QMP
from .capture import Plan
from .console import FATAL_CAP, FATAL_GRACE, ConsoleThread
from .inspection import _wait_for_gdbstub, load_tables, pv_maps, scenario_log
from .session import Options, Session

SNAPSHOT_TAG = "patchscope-fork"
STATE_DRIVE = "state.qcow2"         # the scratch drive savevm writes the snapshot into
STATE_DRIVE_SIZE = "16M"            # the drive's own size; the snapshot's RAM is stored beside it
SWEEP_FILE = "sweep.json"
POINTS_DIR = "points"
NEEDS_RESET = ("shutdown", "guest-panicked", "internal-error")

# What a point's result is made of; the pipeline adds the run's facts (kernel, QEMU, accel).
MakeResult = Callable[[Config, Path, Verdict, Observation | None, Analysis | None, float,
                       dict[str, object]], RunResult]


@dataclass(frozen=True)
class Point:
    n: int                      # 1-based
    label: str                  # "hit=3"
    values: dict[str, object]
    config: Config
    directory: Path


@dataclass(frozen=True)
class PointDone:
    point: Point
    verdict: Verdict
    seconds: float
    summary: str


def point_dir_name(n: int, total: int, text: str) -> str:
    """``03-hit=201``: the point's number first, as wide as the last one's (they sort in order), then its values,
    safe as a file name."""
    safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in text)[:80]
    number = f"{n:0{len(str(total))}d}"
    return f"{number}-{safe}" if safe else number


def _hmp(qmp: QMP, command: str) -> float:
    """Run an HMP command (savevm and loadvm have no synchronous QMP form in QEMU 7.2); its seconds.
    HMP reports failures as text, so any output is an error."""
    t0 = time.monotonic()
    said = qmp.command("human-monitor-command", **{"command-line": command})
    if isinstance(said, str) and said.strip():
        raise InfrastructureError(f"QEMU could not {command}: {said.strip().splitlines()[-1][:300]}")
    return time.monotonic() - t0


class Forking:
    """The debugger step of a forked run (``fork:``): the boot to the snapshot, then every point."""

    def __init__(self, kernel: Kernel, config: Config, mode: Mode, outdir: Path, note: Note,
                 make_result: MakeResult) -> None:
        assert config.fork is not None
        self.config, self.mode, self.outdir, self.note = config, mode, outdir, note
        self.fork = config.fork
        self.make_result = make_result
        self.qemu_img = shutil.which("qemu-img")
        if self.qemu_img is None:
            raise UnsupportedError("a forked run (fork:) keeps its snapshot on a qcow2 drive made by qemu-img, "
                                   "which is not installed: install qemu-utils (./bootstrap does)")
        _vmlinux, self.symbols, sites = load_tables(kernel, note)
        self.pv_ops, self.pv_sites = pv_maps(sites)
        self.address = location(Trigger(self.fork.at, line=self.fork.line), self.symbols, config.path)
        count = len(config.sweep.points) if config.sweep is not None else 1
        self.points: list[Point] = []
        for i in range(count):
            point = sweep_point(config, i)
            values = config.sweep.values(i) if config.sweep is not None else {}
            shown = label(values) if values else "the run"
            if point.scenario is not None:
                try:        # every point's scenario against the kernel, before anything boots
                    resolve(point.scenario, self.symbols, config.path, self.pv_ops)
                except ConfigError as err:
                    raise ConfigError(err.path, err.line, f"sweep point {i + 1} ({shown}): {err.reason}") from None
            self.points.append(Point(i + 1, shown, dict(values), point,
                                     outdir / POINTS_DIR / point_dir_name(i + 1, count, label(values))))
        self.state = outdir / STATE_DRIVE
        self.done: list[PointDone] = []
        self.failure: str | None = None     # the guest never reached the fork point: why
        self.forked = False                 # the snapshot is taken: the console shows the points now
        self.snapshot: dict[str, object] = {}

    # the machine ---------------------------------------------------------------------------
    def qemu_args(self, m: Machine) -> list[str]:
        """The scratch drive for the snapshot, and a guest's power-off or panic pausing QEMU instead of ending it."""
        assert self.qemu_img is not None
        made = subprocess.run([self.qemu_img, "create", "-q", "-f", "qcow2", str(self.state), STATE_DRIVE_SIZE],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise LaunchError(f"qemu-img could not make the snapshot drive {self.state}: "
                              f"{(made.stderr or made.stdout).strip()[:300]}", [self.qemu_img])
        return ["-drive", f"if=none,id=patchscope-state,format=qcow2,file={self.state}",
                "-action", "shutdown=pause"]

    def console_timeout(self) -> float:
        """The console's limit for the whole run: the boot to the snapshot and every point, each within timeout."""
        return self.config.timeout * (len(self.points) + 1)

    def close(self) -> None:
        self.state.unlink(missing_ok=True)

    # the run -------------------------------------------------------------------------------
    def __call__(self, vm: Qemu, console: ConsoleThread, machine: Machine) -> None:
        assert machine.gdb_socket is not None
        _wait_for_gdbstub(vm, console, machine.gdb_socket)
        qmp = vm.connect_qmp()
        if qmp is None:
            raise LaunchError("QEMU ended before its QMP socket could be used", vm.argv, vm.exitcode)
        with Rsp(machine.gdb_socket, self.outdir / "rsp.log") as dbg:
            dbg.connect()
            reached = self._to_fork_point(dbg, console, qmp)
            if reached is None:
                return
            prefix = list(console.lines)
            seconds = _hmp(qmp, f"savevm {SNAPSHOT_TAG}")
            self.snapshot = {"tag": SNAPSHOT_TAG, "at": self.fork.at, "hit": self.fork.hit,
                             "t": round(reached, 3), "savevm_s": round(seconds, 3)}
            self.forked = True
            self.note(f"{self.config.name} [{self.mode}]: snapshot at {self.fork.describe()} after {reached:.1f} s "
                      f"(savevm {seconds:.2f} s); {len(self.points)} point{'s' if len(self.points) != 1 else ''} "
                      "from it")
            self._write_sweep()
            for point in self.points:
                if point.n > 1:
                    self._restore(dbg, qmp)
                start = console.new_segment()
                self.done.append(self._run_point(point, dbg, console, qmp, prefix, start))
                self._write_sweep()
                if not vm.alive():
                    break
            if dbg.connected:
                try:
                    dbg.detach()
                except DebuggerError:
                    pass

    @staticmethod
    def _wait(dbg: Rsp, console: ConsoleThread, deadline: float, poll: float = 0.5) -> Stop | str:
        """The next stop, or why the guest will not stop: crashed, marker, guest-ended, timeout (looked at every
        ``poll`` seconds)."""
        while True:
            if console.marker.is_set():
                return "marker"
            if console.fatal.is_set():
                return "crashed"
            if console.finished.is_set():
                return "guest-ended"
            if time.monotonic() > deadline:
                return "timeout"
            try:
                return dbg.wait_stop(poll)
            except DebuggerTimeout:
                continue

    def _to_fork_point(self, dbg: Rsp, console: ConsoleThread, qmp: QMP) -> float | None:
        """Boot to the fork point's hit-th arrival; seconds since QEMU started, or None (self.failure says why)."""
        bp = dbg.break_at(self.address)
        deadline = time.monotonic() + self.config.timeout
        hits = 0
        while hits < self.fork.hit:
            console.release()
            dbg.cont()
            stop = self._wait(dbg, console, deadline)
            console.hold()
            if isinstance(stop, str):
                self.failure = self._not_reached(stop, console, hits)
                if stop != "guest-ended":
                    try:
                        self._stop_guest(dbg, qmp)
                    except (DebuggerError, InfrastructureError):
                        pass        # the run is over: QEMU is stopped next
                return None
            if stop.reason in ("exited", "disconnected"):
                self.failure = self._not_reached("guest-ended", console, hits)
                return None
            if stop.reason == "breakpoint-hit" and stop.address == self.address:
                hits += 1
            elif str(qmp.command("query-status").get("status")) in NEEDS_RESET:     # paused by a power-off
                self.failure = self._not_reached("marker" if console.marker.wait(1.0) else "guest-ended",
                                                 console, hits)
                return None
        dbg.delete(bp)
        return time.monotonic() - console.started

    def _not_reached(self, why: str, console: ConsoleThread, hits: int) -> str:
        seen = observe(list(console.lines), Ending("log-end", time.monotonic() - console.started)).summary
        what = {"crashed": "it crashed first", "guest-ended": "it ended first",
                "marker": "it booted to its success marker first",
                "timeout": f"the timeout ({self.config.timeout:g} s) came first"}[why]
        arrivals = f" (it arrived {hits} time{'s' if hits != 1 else ''}; fork.hit is {self.fork.hit})" if hits else ""
        return f"the guest never reached fork.at {self.fork.at}{arrivals}: {what}; {seen}"

    @staticmethod
    def _reset(qmp: QMP, status: str) -> None:
        """Out of a run state that needs a reset (a shutdown paused the machine): system_reset, with the reboot
        action set to reset for that moment (under reboot=shutdown a reset request is a shutdown request)."""
        qmp.command("set-action", reboot="reset")
        try:
            qmp.command("system_reset")
            deadline = time.monotonic() + 10.0
            while str(qmp.command("query-status").get("status")) in NEEDS_RESET:
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"QEMU stayed in run state {status!r} after system_reset; "
                                              "the next point cannot start from the snapshot")
                time.sleep(0.01)
        finally:
            qmp.command("set-action", reboot="shutdown")

    def _stop_guest(self, dbg: Rsp, qmp: QMP) -> None:
        """Leave the guest stopped, with the debugger knowing it. A machine that a power-off or a panic paused
        does not answer the debugger's interrupt (it is not running): it is reset and resumed, so that the
        interrupt stops it (somewhere in its firmware; loadvm replaces all of it next)."""
        if _stopped(dbg):
            return
        for _ in range(3):
            status = str(qmp.command("query-status").get("status"))
            if status in NEEDS_RESET:
                self._reset(qmp, status)
                qmp.command("cont")
            try:
                dbg.interrupt(timeout=5.0)
                return
            except DebuggerTimeout:
                continue        # it paused between the question and the interrupt: ask again
        raise InfrastructureError("the guest could not be stopped after its point (no stop reply to three "
                                  "interrupts); the next point cannot start from the snapshot")

    def _restore(self, dbg: Rsp, qmp: QMP) -> None:
        """Back to the snapshot: the machine reset if a shutdown paused it, then loadvm."""
        status = str(qmp.command("query-status").get("status"))
        if status in NEEDS_RESET:
            self._reset(qmp, status)
        _hmp(qmp, f"loadvm {SNAPSHOT_TAG}")
        dbg.state_replaced()

    def _run_point(self, point: Point, dbg: Rsp, console: ConsoleThread, qmp: QMP, prefix: list[TimedLine],
                   start: int) -> PointDone:
        t0 = time.monotonic()
        cfg = point.config

        def inject_nmi() -> None:
            qmp.command("inject-nmi")

        def note(text: str) -> None:
            self.note(f"point {point.n}/{len(self.points)} ({point.label}): {text}")

        options = Options(scenario=cfg.scenario, config_path=cfg.path, pv_ops=self.pv_ops, pv_sites=self.pv_sites,
                          inject_nmi=inject_nmi)
        session = Session(dbg, console, self.symbols, Plan((), (), False, cfg.timeout, None), options, note)
        error: str | None = None
        try:
            out = session.run()
        except DebuggerError as err:
            out, error = session.out, str(err)
        ended = out.ended
        if ended == "done":         # nothing left to stop for: the guest runs on to its end
            ended = self._run_on(dbg, console, session.deadline)
        if ended == "crashed":      # the rest of the crash report, then stop the guest
            console.wait_quiet(FATAL_GRACE, FATAL_CAP)
        if dbg.connected and ended != "guest-ended":
            try:
                self._stop_guest(dbg, qmp)
                session.disarm_all()
            except DebuggerError as err:
                error = error or f"the guest could not be stopped after the point: {err}"
        reason: EndReason = "done" if ended == "marker" else "fatal" if ended == "crashed" else \
            "timeout" if ended == "timeout" else "exit"
        lines = prefix + console.lines[start:]
        observation = observe(lines, Ending(reason, time.monotonic() - console.started))
        scenario = scenario_log(out, self.symbols) if cfg.scenario is not None else None
        analysis = Analysis(scenario=scenario, error=out.error or error)
        verdict = judge(cfg, observation, analysis, self.mode) if observation.outcome != "unknown" or ended != "exit" \
            else could_not_run(f"QEMU ended during the point: {observation.summary}")
        seconds = time.monotonic() - t0
        self._write_point(point, lines, verdict, observation, analysis, seconds, out.dumps)
        note(f"{verdict.verdict.upper()}: {observation.summary if verdict.passed else verdict.reasons[0]} "
             f"({seconds:.1f} s)")
        return PointDone(point, verdict, seconds, observation.summary)

    def _run_on(self, dbg: Rsp, console: ConsoleThread, deadline: float) -> str:
        console.release()
        dbg.cont()
        stop = self._wait(dbg, console, deadline, poll=0.1)
        if isinstance(stop, str):
            return stop
        console.marker.wait(1.0)        # the guest stopped by itself: its shutdown paused QEMU
        return "marker" if console.marker.is_set() else "crashed" if console.fatal.is_set() else "guest-ended"

    # artefacts -----------------------------------------------------------------------------
    def _write_point(self, point: Point, lines: list[TimedLine], verdict: Verdict, observation: Observation,
                     analysis: Analysis, seconds: float, dumps: list[tuple[str, int, bytes]]) -> None:
        folder = point.directory
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "console.log", "w", encoding="utf-8") as fh:
            fh.writelines(format_line(t or 0.0, text) for t, text in lines)
        if self.config.sweep is not None:
            (folder / "config.yaml").write_text(self.config.sweep.text(point.n - 1))
        for name, _address, data in dumps:
            (folder / name).write_bytes(data)
        fork = {**self.snapshot, "run": str(self.outdir), "point": point.n, "values": point.values}
        write_result(folder, self.make_result(point.config, folder, verdict, observation, analysis, seconds, fork))

    def _write_sweep(self) -> None:
        write_json(self.outdir / SWEEP_FILE, self.summary())

    def summary(self) -> dict[str, object]:
        """sweep.json, and result.json's ``fork``: the snapshot and every point judged so far."""
        return {"snapshot": self.snapshot, "failure": self.failure, "total": len(self.points),
                "points": [{"n": d.point.n, "label": d.point.label, "values": d.point.values,
                            "verdict": d.verdict.verdict, "reasons": list(d.verdict.reasons), "summary": d.summary,
                            "seconds": round(d.seconds, 3), "artifacts": str(d.point.directory)}
                           for d in self.done]}

    def verdict(self) -> Verdict:
        return judge_sweep([(d.point.n, d.point.label, d.verdict) for d in self.done], len(self.points),
                           self.failure)


def _stopped(dbg: Rsp) -> bool:
    try:
        dbg.wait_stop(0)
    except DebuggerTimeout:
        return False
    except DebuggerError:
        return True         # not running: nothing to wait for
    return True

