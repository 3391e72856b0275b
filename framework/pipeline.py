"""One run as a pipeline of stages: resolve kernel -> initramfs -> launch -> observe -> verdict -> report.

Every stage writes into the run's artefacts directory, and result.json is
written whatever happens (a bad kernel reference, QEMU failing to start, a
timeout, Ctrl-C), so a failed run can always be understood afterwards.
"""

from __future__ import annotations

import datetime
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .analysis.console_log import Ending, LineSplitter, TimedLine, format_line, read_console_file
from .analysis.observation import Observation, observe
from .analysis.stages import match_stage
from .config import Config, Inspect, to_yaml_dict
from .domain import MODES, Note
from .errors import LaunchError, PatchscopeError, UnsupportedError
from .guest import initramfs
from .kernel import xen
from .kernel.image import Kernel, prepare_kernel
from .kernel.refs import parse_ref
from .observe.console import ConsoleThread
from .observe.debug import DebugSession
from .observe.inspection import Inspection
from .report.files import RESULT, read_result, write_json
from .verdict import judge
from .vm import machine
from .vm.qemu import Qemu, private_socket_dir, probe_kvm


@dataclass(frozen=True)
class RunRequest:
    config: Config
    mode: str
    outdir: Path
    accel: str = "tcg"            # tcg | kvm | auto
    interactive: bool = False
    gdb: bool = False             # interactive GDB on the terminal (boot --gdb); console to the log only
    stop_at: str | None = None    # with gdb: where GDB stops the guest first
    trace: bool = False           # record every text write (patchscope trace), whatever the config says
    debugger: str = "auto"        # auto | gdb | rsp: what drives the gdbstub (auto: rsp for traces and scenarios)


@dataclass
class RunResult:
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return str(self.data.get("verdict", "error"))


def artifacts_dir(root: Path, name: str, mode: str) -> Path:
    """<root>/<config name>/<mode>: both modes of one config sit side by side."""
    return root / name / mode


_accel_cache: dict[Path, tuple[str, str]] = {}


def resolve_accel(accel: str, kernel: Path, note: Note) -> tuple[str, str]:
    """(accel, why). 'auto' probes KVM with the kernel itself, once per kernel per process."""
    if accel != "auto":
        return accel, f"--accel {accel}"
    if kernel not in _accel_cache:
        usable, why = probe_kvm(kernel)
        _accel_cache[kernel] = ("kvm", why) if usable else ("tcg", f"KVM unusable ({why}); using TCG")
        note(_accel_cache[kernel][1])
    return _accel_cache[kernel]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UnsupportedError(f"mode {mode!r} is not supported yet; supported: {', '.join(MODES)}")


def prepare(config: Config, note: Note) -> Kernel:
    base = config.path.parent if config.path else None
    return prepare_kernel(parse_ref(config.kernel, base=base), note)


def prepare_xen(config: Config, note: Note) -> xen.Hypervisor:
    base = config.path.parent if config.path else None
    return xen.prepare_hypervisor(parse_ref(config.hypervisor, base=base), note)


def execute(req: RunRequest, note: Note) -> RunResult:
    """Run one config in one mode; never raises PatchscopeError (it becomes verdict 'error')."""
    cfg = req.config
    out = req.outdir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started_at = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    data: dict[str, Any] = {
        "patchscope": __version__, "name": cfg.name, "mode": req.mode,
        "config": str(cfg.path) if cfg.path else None, "artifacts": str(out),
        "started": started_at.isoformat(timespec="seconds"), "verdict": "error",
        "expect": to_yaml_dict(cfg).get("expect"),
    }
    try:
        check_mode(req.mode)
        kernel = prepare(cfg, note)
        data["kernel"] = kernel.identity()
        data["symbol_source"] = kernel.symbol_source
        hypervisor = prepare_xen(cfg, note) if req.mode == "xen-pv" else None
        if hypervisor is not None:
            data["hypervisor"] = hypervisor.identity()
        inspection: DebugStep | None = None
        if req.gdb:
            inspection = DebugSession(kernel.symbols, req.stop_at, out / "console.log")
        elif (cfg.inspect is not None or cfg.scenario is not None or req.trace) and not req.interactive:
            inspect = cfg.inspect or Inspect(captures=())   # a scenario or a trace alone compares no sites
            inspection = Inspection(kernel, inspect, out, note, timeout=cfg.timeout,
                                    where=(cfg.path, cfg.lines.get("inspect.capture")),
                                    trace=req.trace or inspect.trace, scenario=cfg.scenario,
                                    debugger=req.debugger)
        lines, ending = _boot(req, kernel, hypervisor, note, data, inspection)
        if hypervisor is not None:
            data["hypervisor"]["banner"] = xen.banner([text for _, text in lines])
        obs = observe(lines, ending)
        comparisons = inspection.comparisons if isinstance(inspection, Inspection) else None
        verdict = judge(obs, cfg.expect, comparisons)
        reasons = list(verdict.reasons)
        if isinstance(inspection, Inspection):
            data["sites"] = inspection.result()
            reasons += inspection.reasons(cfg.expect)
            if inspection.error:
                reasons.insert(0, f"inspection: {inspection.error}")
        data.update(obs.to_json())
        data.update(verdict="pass" if not reasons and verdict.passed else
                    ("error" if verdict.verdict == "error" else "fail"), reasons=reasons)
    except PatchscopeError as err:
        data.update(verdict="error", error=str(err), reasons=[str(err)])
        if isinstance(err, LaunchError) and err.output:
            data["launch_output"] = err.output.splitlines()[-20:]
    except KeyboardInterrupt:
        data.update(verdict="error", error="interrupted", reasons=["interrupted (Ctrl-C or SIGTERM)"])
        raise
    finally:
        data["duration_s"] = round(time.monotonic() - t0, 3)
        write_json(out / RESULT, data)
    return RunResult(data)


# What a GDB-driven inspection gets: the running QEMU (stopped at its first
# instruction, gdbstub on m.gdb_socket), the console thread, and the machine.
DebugStep = Callable[[Qemu, ConsoleThread, machine.Machine], None]


def _boot(req: RunRequest, kernel: Kernel, hypervisor: xen.Hypervisor | None, note: Note,
          data: dict[str, Any], inspect: DebugStep | None = None) -> tuple[list[TimedLine], Ending]:
    cfg = req.config
    out = req.outdir
    initrd = _initramfs(cfg, out, req.interactive, note)
    accel, why = resolve_accel(req.accel, kernel.bzimage, note)
    sockdir = private_socket_dir()
    m = machine.Machine(
        mode=req.mode, kernel=kernel.bzimage, initrd=initrd,
        cmdline=machine.kernel_cmdline(list(cfg.cmdline), req.mode), qmp_socket=sockdir / "qmp.sock",
        cpu=cfg.qemu.cpu or machine.DEFAULT_CPU[req.mode],
        memory_mib=cfg.qemu.memory_mib or machine.DEFAULT_MEMORY_MIB[req.mode],
        smp=cfg.qemu.smp, accel=accel, extra=cfg.qemu.extra,
        hypervisor=hypervisor.image if hypervisor else None,
        xen_cmdline=machine.xen_cmdline(cfg.dom0_memory_mib, cfg.xen_cmdline),
        gdb_socket=sockdir / "gdb.sock" if inspect is not None else None, stopped=inspect is not None)
    try:
        argv = machine.qemu_argv(m)
    except ValueError as err:
        raise UnsupportedError(str(err)) from err
    (out / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
    data["accel"] = {"used": accel, "why": why}
    data["qemu"] = {"argv": argv}
    vm = Qemu(argv, m.qmp_socket, sockdir)
    try:
        vm.launch()
        data["qemu"]["pid"] = vm.pid
        (out / "qemu.pid").write_text(f"{vm.pid}\n")
        what = f"{kernel.ref} as PV dom0 of {hypervisor.ref}" if hypervisor else kernel.ref
        note(f"{cfg.name} [{req.mode}]: booting {what} ({accel}), artefacts in {out}")
        with open(out / "console.log", "w", encoding="utf-8") as log:
            if req.interactive and not req.gdb:
                lines, ending = _interactive(vm, log)
            else:
                vm.connect_qmp()
                console = ConsoleThread(vm.read, log, vm.started, timeout=cfg.timeout, silence=cfg.silence,
                                        exitcode=lambda: vm.exitcode,
                                        on_line=None if req.gdb else _stage_printer(note, cfg.name, req.mode))
                vm.drain_on_wait = False
                if inspect is not None:
                    console.hold()   # QEMU waits for GDB (-S): no silence before the guest runs
                console.start()
                try:
                    if inspect is not None:
                        inspect(vm, console, m)
                    lines, ending = console.result()
                finally:
                    if not console.finished.is_set():
                        vm.shutdown()
                        console.finished.wait(5.0)
    finally:
        vm.shutdown()
        data["qemu"]["exitcode"] = vm.exitcode
    if ending.reason == "exit" and vm.exitcode not in (0, None) and not _kernel_spoke(lines):
        tail = "\n".join(text for _, text in lines[-20:])
        raise LaunchError(f"QEMU exited with status {vm.exitcode} before the kernel printed anything: "
                          f"{(lines[-1][1] if lines else 'no output')[:200]}", argv, vm.exitcode, tail)
    return lines, ending


def _kernel_spoke(lines: list[TimedLine]) -> bool:
    return any("Linux version" in text or text.startswith("(XEN)") for _, text in lines)


def _initramfs(cfg: Config, out: Path, interactive: bool, note: Note) -> Path | None:
    if cfg.initramfs == "none":
        return None
    if cfg.initramfs != "default":
        return Path(cfg.initramfs)
    busybox = initramfs.find_busybox(note)
    path = out / "initramfs.cpio"
    path.write_bytes(initramfs.build(busybox.read_bytes(), cfg.init_commands, interactive))
    return path


def _stage_printer(note: Note, name: str, mode: str) -> Callable[[float, str], None]:
    seen: set[str] = set()

    def on_line(t: float, text: str) -> None:
        row = match_stage(text)
        if row is not None and row.name not in seen:
            seen.add(row.name)
            note(f"{name} [{mode}]: {t:6.1f} s  {row.label}")
    return on_line


def _interactive(vm: Qemu, log: Any) -> tuple[list[TimedLine], Ending]:
    """Attach the terminal to the console until Ctrl-] or QEMU exits."""
    assert vm.child is not None
    lines: list[TimedLine] = []
    splitter = LineSplitter()

    def tee(data: bytes) -> bytes:
        t = time.monotonic() - vm.started
        for text in splitter.feed(data):
            lines.append((t, text))
            log.write(format_line(t, text))
        log.flush()
        return data

    print("patchscope: console attached; Ctrl-] quits", file=sys.stderr, flush=True)
    vm.child.interact(escape_character="\x1d", output_filter=tee)
    rest = splitter.flush()
    if rest is not None:
        lines.append((time.monotonic() - vm.started, rest))
    alive = vm.alive()
    return lines, Ending("done" if alive else "exit", time.monotonic() - vm.started,
                         None if alive else vm.exitcode)


def check_saved(path: Path) -> tuple[Observation, dict[str, Any] | None]:
    """The observation in a saved console log, or in an artefacts directory."""
    saved: dict[str, Any] | None = None
    if path.is_dir():
        saved = read_result(path)
        log = path / "console.log"
        if not log.exists():
            raise UnsupportedError(f"{path}: no console.log here; give a run's artefacts directory "
                                   "(e.g. patchscope-out/<name>/<mode>) or a console log file")
    else:
        log = path
    lines = read_console_file(log)
    ending_data = (saved or {}).get("ending")
    if isinstance(ending_data, dict) and ending_data.get("reason"):
        ending = Ending(reason=ending_data["reason"], t=float(ending_data.get("t") or 0.0),
                        exitcode=ending_data.get("exitcode"), silence=ending_data.get("silence"))
    else:
        last_t = next((t for t, _ in reversed(lines) if t is not None), 0.0)
        ending = Ending("log-end", last_t or 0.0)
    return observe(lines, ending), saved

