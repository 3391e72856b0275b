"""One run as a pipeline of stages: resolve kernel -> initramfs -> launch -> observe -> analyse -> judge -> report.

Resolving the kernel includes the config's modules (``kernel.modules.resolve_modules``): the
``.ko`` files /init loads, before anything boots; they are listed in the artefacts' modules.json.

``execute`` runs them all; ``check`` runs the last three on a saved run (its
console.log, result.json and analysis files), so a saved run is judged exactly
as the live one was.

Every stage writes into the run's artefacts directory, and result.json is
written whatever happens (a bad kernel reference, QEMU failing to start, a
timeout, Ctrl-C), so a failed run can always be understood afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .analysis.console_log import Ending, LineSplitter, TimedLine, format_line
from .analysis.findings import Analysis
from .analysis.observation import Observation, observe
from .analysis.stages import match_stage
from .checking import check_mode
from .config import Config, Inspect, to_yaml_dict
from .domain import Accel, DebuggerKind, Mode, Note, Tracer
from .elf.vmlinux import Symbols, Vmlinux, upstream_version
from .errors import ConfigError, InputError, KernelRefError, LaunchError, PatchscopeError, UnsupportedError
from .guest import initramfs
from .kernel import xen
from .kernel.fetch import cache_dir
from .kernel.image import Kernel, prepare_kernel
from .kernel.modules import ModuleFile, resolve_modules
from .kernel.refs import DebianRef, KernelRef, list_recipes, parse_ref
from .observe.console import ConsoleThread
from .observe.debug import DebugSession
from .observe.fork import Forking, MakeResult
from .observe.inspection import Inspection
from .report.result import QemuRun, RunResult, write_result
from .verdict import Verdict, could_not_run, judge
from .vm import machine, plugin
from .vm.qemu import Qemu, private_socket_dir, probe_kvm


@dataclass(frozen=True)
class RunRequest:
    config: Config
    mode: Mode
    outdir: Path
    accel: Accel = "tcg"
    interactive: bool = False
    gdb: bool = False             # interactive GDB on the terminal (boot --gdb); console to the log only
    stop_at: str | None = None    # with gdb: where GDB stops the guest first
    trace: bool = False           # record every text write (patchscope trace), whatever the config says
    debugger: DebuggerKind = "auto"   # what drives the gdbstub; auto: rsp for traces and scenarios, else gdb
    tracer: Tracer | None = None  # what records a trace; None: as tracer_for() decides


def tracer_for(req: RunRequest, plugin_builds: Callable[[], str | None] = lambda: None) -> Tracer:
    """The tracer a run uses: the plugin unless told otherwise, or under KVM (no TCG, no plugins), with a
    scenario (which can skip a write: only a breakpoint on the writer sees that), with modules to load (the
    plugin follows the kernel's own text, not a module's), or when the plugin does not build here
    (``plugin_builds``: why not, or None)."""
    if req.tracer is not None:
        return req.tracer
    plugin_blind = req.accel == "kvm" or req.config.scenario is not None or bool(req.config.modules)
    return "breakpoints" if plugin_blind or plugin_builds() is not None else "plugin"


def _plugin_builds(note: Note) -> Callable[[], str | None]:
    def why_not() -> str | None:
        try:
            plugin.build_plugin(note)
        except PatchscopeError as err:
            note(f"trace: by breakpoints, as the text-write plugin cannot be had here: {err}")
            return str(err)
        return None
    return why_not


def artifacts_dir(root: Path, name: str, mode: str) -> Path:
    """<root>/<config name>/<mode>: both modes of one config sit side by side."""
    return root / name / mode


_accel_cache: dict[Path, tuple[Literal["tcg", "kvm"], str]] = {}


def resolve_accel(accel: Accel, kernel: Path, note: Note) -> tuple[Literal["tcg", "kvm"], str]:
    """(accel, why). 'auto' probes KVM with the kernel itself, once per kernel per process."""
    if accel != "auto":
        return accel, f"--accel {accel}"
    if kernel not in _accel_cache:
        usable, why = probe_kvm(kernel)
        _accel_cache[kernel] = ("kvm", why) if usable else ("tcg", f"KVM unusable ({why}); using TCG")
        note(_accel_cache[kernel][1])
    return _accel_cache[kernel]


def prepare(config: Config, note: Note) -> Kernel:
    base = config.path.parent if config.path else None
    return prepare_kernel(parse_ref(config.kernel, base=base), note)


def prepare_xen(config: Config, note: Note) -> xen.Hypervisor:
    base = config.path.parent if config.path else None
    return xen.prepare_hypervisor(parse_ref(config.hypervisor, base=base), note)


def resolve_references(config: Config, note: Note) -> Kernel:
    """The config's kernel (and, when a mode is xen-pv, its hypervisor) parsed, told apart and prepared
    (fetched if needed): a ConfigError at the key's line before anything boots, never after another config or
    the other mode already ran. Returns the prepared kernel."""
    base = config.path.parent if config.path else None

    def ref_of(key: str, text: str) -> KernelRef:
        try:
            ref = parse_ref(text, base=base)
        except KernelRefError as err:
            reason = str(err)
            if key == "hypervisor":
                hypervisors = [n for n, p in list_recipes().items() if _is_xen_recipe(p)]
                reason = (f"unknown hypervisor reference {text!r}: use a recipe name ({', '.join(hypervisors)}), "
                          f"debian:{xen.XEN_PACKAGE_PREFIX}<version>-amd64[=<version>] or path:<xen.gz>") \
                    if reason.startswith("unknown kernel reference") else reason
            raise ConfigError(config.path, config.lines.get(key), f"{key}: {reason}") from None
        package = ref.package if isinstance(ref, DebianRef) else ""
        if key == "kernel" and package.startswith(xen.XEN_PACKAGE_PREFIX):
            raise ConfigError(config.path, config.lines.get(key), f"kernel: {text!r} is a Xen hypervisor, not a "
                                                                  "kernel; give it as hypervisor: and run mode xen-pv")
        if key == "hypervisor" and package.startswith("linux-image"):
            raise ConfigError(config.path, config.lines.get(key), f"hypervisor: {text!r} is a Linux kernel, not a "
                                                                  "Xen hypervisor; give it as kernel:")
        return ref

    kernel = ref_of("kernel", config.kernel)
    hypervisor = ref_of("hypervisor", config.hypervisor) if "xen-pv" in config.modes else None
    try:
        prepared = prepare_kernel(kernel, note)
    except InputError as err:       # a corrupt image, a package the archive does not have: at the config's line
        raise ConfigError(config.path, config.lines.get("kernel"), f"kernel: {err}") from None
    if hypervisor is not None:
        try:
            xen.prepare_hypervisor(hypervisor, note)
        except InputError as err:
            raise ConfigError(config.path, config.lines.get("hypervisor"), f"hypervisor: {err}") from None
    return prepared


def _is_xen_recipe(path: Path) -> bool:
    try:
        ref = parse_ref(path.stem)
    except KernelRefError:
        return False
    return isinstance(ref, DebianRef) and ref.package.startswith(xen.XEN_PACKAGE_PREFIX)


@functools.lru_cache(maxsize=4)
def _vmlinux_of(kernel: Kernel) -> Vmlinux:
    """A kernel's vmlinux with its symbols, read once however many configs ask (a matrix asks per cell)."""
    assert kernel.vmlinux is not None
    symbols = Symbols.from_elf(kernel.symbols) if kernel.symbols is not None else None
    return Vmlinux(kernel.vmlinux, symbols, kernel.release)


def not_applicable(config: Config, kernel: Kernel) -> str | None:
    """Why ``config`` does not apply to ``kernel`` (its ``requires:``); None when it does."""
    req = config.requires
    if not req:
        return None
    vm: Vmlinux | None = None
    if req.symbols or req.tables:
        if kernel.vmlinux is None:
            raise UnsupportedError(f"{config.path or config.name}: requires.symbols and requires.tables need the "
                                   f"kernel's vmlinux, and {kernel.ref} has none; give path:<bzImage>,vmlinux=<file>")
        vm = _vmlinux_of(kernel)

    def has_symbol(name: str) -> bool:
        return vm is not None and vm.symbols.address(name) is not None

    def has_table(table: str) -> bool:
        return vm is not None and vm.table_bounds(table) is not None

    return req.why_not(upstream_version(kernel.release), has_symbol, has_table)


def applicability(config: Config, note: Note) -> str | None:
    """Why ``config`` does not apply to its kernel (the kernel is prepared to tell); None when it does.

    A config that applies and loads modules has them resolved here too, so that a module the
    kernel's package does not hold fails now (a ConfigError at its line), before anything boots.
    """
    if not config.requires and not config.modules:
        return None
    kernel = prepare(config, note)
    why = not_applicable(config, kernel)
    if why is None:
        resolve_modules(config, kernel, note)
    return why


@dataclass
class _Facts:
    """What the stages learn about a run before it is judged (filled in as they go)."""

    kernel: dict[str, object] | None = None
    symbol_source: str | None = None
    hypervisor: dict[str, object] | None = None
    accel: tuple[str, str] | None = None
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    exitcode: int | None = None
    launch_output: tuple[str, ...] = ()


@contextlib.contextmanager
def owning(out: Path) -> Iterator[None]:
    """Held while a run writes ``out``: a second run given the same directory is refused (its files would mix
    with these, and its cleanup would delete them), with the pid of the run that has it."""
    lockdir = cache_dir() / "locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    with open(lockdir / f"artifacts-{key}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise InputError(f"{out}: another patchscope run (pid {holder}) is writing its artefacts there; give "
                             "each run its own --artifacts directory (or wait for it)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def execute(req: RunRequest, note: Note) -> RunResult:
    """Run one config in one mode: prepare -> boot (observe, inspect) -> judge -> report.

    Never raises PatchscopeError (it becomes verdict 'error'), except when another run holds the same artefacts
    directory (InputError, nothing touched); result.json is written whatever happens, Ctrl-C included.
    """
    with owning(req.outdir):
        return _execute(req, note)


INTERNAL_ERROR = "internal-error.txt"


def _execute(req: RunRequest, note: Note) -> RunResult:
    cfg = req.config
    out = req.outdir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    facts = _Facts()
    observation: Observation | None = None
    inspection: DebugStep | None = None
    unfinished = "the run did not finish"
    error: str | None = unfinished               # until it does, whatever stops it
    verdict = could_not_run(unfinished)
    try:
        check_mode(req.mode)
        kernel = prepare(cfg, note)
        facts.kernel, facts.symbol_source = kernel.identity(), kernel.symbol_source
        modules = resolve_modules(cfg, kernel, note)      # a module that cannot be had fails before the boot
        if modules:
            write_modules(out, modules)
        hypervisor = prepare_xen(cfg, note) if req.mode == "xen-pv" else None
        if hypervisor is not None:
            facts.hypervisor = hypervisor.identity()
        if cfg.fork is not None:
            if req.gdb or req.interactive or req.trace:
                raise UnsupportedError(f"{cfg.path or cfg.name}: a forked run (fork:) drives the guest through its "
                                       "points itself; boot --gdb, --interactive and trace do not apply to it")
            inspection = Forking(kernel, cfg, req.mode, out, note, _point_result(req, facts))
        elif req.gdb:
            inspection = DebugSession(kernel.symbols, req.stop_at, out / "console.log")
        elif (cfg.inspect is not None or cfg.scenario is not None or req.trace) and not req.interactive:
            inspect = cfg.inspect or Inspect(captures=())   # a scenario or a trace alone compares no sites
            inspection = Inspection(kernel, inspect, out, note, timeout=cfg.timeout,
                                    where=(cfg.path, cfg.lines.get("inspect.capture")),
                                    trace=req.trace or inspect.trace, scenario=cfg.scenario,
                                    trace_modules=inspect.trace_modules,
                                    debugger=req.debugger, modules=[(m.name, m.path) for m in modules],
                                    tracer=tracer_for(req, _plugin_builds(note)) if req.trace or inspect.trace
                                    else "breakpoints")
        lines, ending = _boot(req, kernel, hypervisor, note, facts, inspection, modules)
        if facts.hypervisor is not None:
            facts.hypervisor["banner"] = xen.banner([text for _, text in lines])
        if isinstance(inspection, Forking):
            verdict = inspection.verdict()      # every point was judged on its own console (points/<n>-…/)
        else:
            observation = observe(lines, ending)
            verdict = judge(cfg, observation, _analysis(inspection), req.mode)
        error = None
    except PatchscopeError as err:
        error = str(err)
        verdict = could_not_run(error)
        if isinstance(err, LaunchError) and err.output:
            facts.launch_output = tuple(err.output.splitlines()[-20:])
    except KeyboardInterrupt:
        error = "interrupted"
        verdict = could_not_run("interrupted (Ctrl-C or SIGTERM)")
        raise
    except Exception as err:  # noqa: BLE001  # a patchscope bug: an error verdict, its traceback kept, no crash
        (out / INTERNAL_ERROR).write_text(traceback.format_exc())
        error = (f"internal error (a patchscope bug, please report it): {type(err).__name__}: {err}; "
                 f"the traceback is in {out / INTERNAL_ERROR}")
        verdict = could_not_run(error)
    finally:
        result = RunResult(
            name=cfg.name, mode=req.mode, verdict=verdict.verdict, reasons=verdict.reasons, artifacts=str(out),
            started=started, duration_s=round(time.monotonic() - t0, 3), patchscope=__version__,
            config=str(cfg.path) if cfg.path else None, expect=_expect_values(cfg), error=error,
            launch_output=facts.launch_output, kernel=facts.kernel, symbol_source=facts.symbol_source,
            hypervisor=facts.hypervisor, accel=facts.accel,
            qemu=QemuRun(tuple(facts.argv), facts.pid, facts.exitcode) if facts.argv else None,
            observation=observation, analysis=_analysis(inspection),
            fork=inspection.summary() if isinstance(inspection, Forking) else None)
        write_result(out, result)
    return result


def _point_result(req: RunRequest, facts: _Facts) -> MakeResult:
    """How a forked run's point becomes a result of its own, with the run's kernel, QEMU and accel."""
    cfg = req.config

    def make(point: Config, folder: Path, verdict: Verdict, observation: Observation | None,
             analysis: Analysis | None, seconds: float, fork: dict[str, object]) -> RunResult:
        return RunResult(
            name=cfg.name, mode=req.mode, verdict=verdict.verdict, reasons=verdict.reasons, artifacts=str(folder),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            duration_s=round(seconds, 3), patchscope=__version__,
            config=str(cfg.path) if cfg.path else None, expect=_expect_values(point),
            kernel=facts.kernel, symbol_source=facts.symbol_source, hypervisor=facts.hypervisor, accel=facts.accel,
            qemu=QemuRun(tuple(facts.argv), facts.pid, None) if facts.argv else None,
            observation=observation, analysis=analysis, fork=fork)
    return make


def _analysis(inspection: DebugStep | None) -> Analysis | None:
    return inspection.analysis if isinstance(inspection, Inspection) else None


def _expect_values(cfg: Config) -> Mapping[str, object] | None:
    expect = to_yaml_dict(cfg).get("expect")
    return expect if isinstance(expect, dict) else None


# What a GDB-driven inspection gets: the running QEMU (stopped at its first
# instruction, gdbstub on m.gdb_socket), the console thread, and the machine.
DebugStep = Callable[[Qemu, ConsoleThread, machine.Machine], None]


def _boot(req: RunRequest, kernel: Kernel, hypervisor: xen.Hypervisor | None, note: Note,
          facts: _Facts, inspect: DebugStep | None = None,
          modules: Sequence[ModuleFile] = ()) -> tuple[list[TimedLine], Ending]:
    cfg = req.config
    out = req.outdir
    initrd = _initramfs(cfg, out, req.interactive, note, modules)
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
    if isinstance(inspect, Forking):
        m = dataclasses.replace(m, extra=(*m.extra, *inspect.qemu_args(m)))
    if isinstance(inspect, Inspection):
        if inspect.plugin is not None and accel == "kvm":
            raise UnsupportedError("the plugin tracer needs TCG (QEMU runs no TCG plugin under KVM): trace with "
                                   "--accel tcg, or with --tracer breakpoints")
        m = dataclasses.replace(m, extra=(*m.extra, *inspect.qemu_args(m)))
    try:
        argv = machine.qemu_argv(m)
    except ValueError as err:
        raise UnsupportedError(str(err)) from err
    (out / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
    facts.accel, facts.argv = (accel, why), argv
    vm = Qemu(argv, m.qmp_socket, sockdir)
    try:
        vm.launch()
        facts.pid = vm.pid
        (out / "qemu.pid").write_text(f"{vm.pid}\n")
        what = f"{kernel.ref} as PV dom0 of {hypervisor.ref}" if hypervisor else kernel.ref
        note(f"{cfg.name} [{req.mode}]: booting {what} ({accel}), artefacts in {out}")
        with open(out / "console.log", "w", encoding="utf-8") as log:
            if req.interactive and not req.gdb:
                lines, ending = _interactive(vm, log)
            else:
                try:
                    vm.connect_qmp()
                except LaunchError as err:      # QEMU refused its arguments: its own words, not the socket's
                    printed = vm.output_at_exit()
                    log.write(printed)
                    said = [ln.strip() for ln in printed.splitlines() if ln.strip()]
                    own = [ln for ln in said if ln.startswith(Path(argv[0]).name) or "qemu-system" in ln]
                    vm.shutdown()
                    hint = ("; if this QEMU cannot load TCG plugins, trace with --tracer breakpoints"
                            if isinstance(inspect, Inspection) and inspect.plugin is not None else "")
                    raise LaunchError(f"QEMU did not start: {(own or said or [str(err)])[-1][:300]}{hint}", argv,
                                      vm.exitcode, printed[-4000:]) from None
                forking = inspect if isinstance(inspect, Forking) else None
                printer = _stage_printer(note, cfg.name, req.mode)
                console = ConsoleThread(vm.read, log, vm.started, silence=cfg.silence, exitcode=lambda: vm.exitcode,
                                        timeout=forking.console_timeout() if forking else cfg.timeout,
                                        # a forked run: the stages of the boot to its snapshot, not every point's
                                        on_line=None if req.gdb else printer if forking is None else
                                        lambda t, text: None if forking.forked else printer(t, text),
                                        forked=forking is not None)
                vm.drain_on_wait = False
                if inspect is not None:
                    console.hold()   # QEMU waits for GDB (-S): no silence before the guest runs
                console.start()
                try:
                    if inspect is not None:
                        inspect(vm, console, m)
                    if forking is not None:
                        vm.shutdown()       # the last point's guest is stopped, or paused by its power-off
                    lines, ending = console.result()
                finally:
                    if not console.finished.is_set():
                        vm.shutdown()
                        console.finished.wait(5.0)
    finally:
        vm.shutdown()
        facts.exitcode = vm.exitcode
        if isinstance(inspect, (Inspection, Forking)):
            inspect.close()
    if ending.reason == "exit" and vm.exitcode is not None and vm.exitcode < 0:
        # QEMU ends by itself with a status; a signal that patchscope did not send killed it (the OOM killer,
        # a user): the machine failed, not the guest, whatever the console shows last.
        raise LaunchError(f"QEMU (pid {facts.pid}) was killed by signal {-vm.exitcode} "
                          f"({_signal_name(-vm.exitcode)}) {ending.t:.1f} s into the run; the guest's console "
                          "is in console.log", argv, vm.exitcode)
    if ending.reason == "exit" and vm.exitcode not in (0, None) and not _kernel_spoke(lines):
        tail = "\n".join(text for _, text in lines[-20:])
        raise LaunchError(f"QEMU exited with status {vm.exitcode} before the kernel printed anything: "
                          f"{(lines[-1][1] if lines else 'no output')[:200]}", argv, vm.exitcode, tail)
    return lines, ending


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "an unknown signal"


def _kernel_spoke(lines: list[TimedLine]) -> bool:
    return any("Linux version" in text or text.startswith("(XEN)") for _, text in lines)


def _initramfs(cfg: Config, out: Path, interactive: bool, note: Note,
               modules: Sequence[ModuleFile] = ()) -> Path | None:
    if cfg.initramfs == "none":
        return None
    if cfg.initramfs != "default":
        return Path(cfg.initramfs)
    busybox = initramfs.find_busybox(note)
    path = out / "initramfs.cpio"
    loads = [initramfs.Module(m.name, m.path.read_bytes()) for m in modules]
    path.write_bytes(initramfs.build(busybox.read_bytes(), cfg.init_commands, interactive, loads))
    return path


MODULES_FILE = "modules.json"


def write_modules(out: Path, modules: Sequence[ModuleFile]) -> None:
    """modules.json in the artefacts: the modules /init loads, in order, with the host .ko each one is."""
    data = [{"n": n, "name": m.name, "path": str(m.path), "origin": m.origin, "load": m.load,
             "dependency": m.dependency} for n, m in enumerate(modules, start=1)]
    (out / MODULES_FILE).write_text(json.dumps(data, indent=2) + "\n")


def _stage_printer(note: Note, name: str, mode: Mode) -> Callable[[float, str], None]:
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


