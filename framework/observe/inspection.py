"""A run's debugger step: tables from the vmlinux, a session (captures, trace, scenario), its Analysis.

``Inspection`` is built before QEMU starts (reading the tables costs about a
second and fails early on a layout that does not fit); its ``__call__`` is
the run pipeline's inspection step and leaves ``self.analysis``
(``analysis/findings.py``), which the pipeline judges and writes
(``report/artefacts.py``: sites.json, sites-<capture>.jsonl.gz, trace.json,
scenario.jsonl). The inspection itself writes the debugger transcript
(``gdb.mi.log`` or ``rsp.log``), ``trace.jsonl.gz`` (traced runs: every text
write, in order) and ``dump-<stop>-<address>.bin`` (a scenario's ``dump``
actions). Each capture is compared, and its ``sites-<capture>.jsonl.gz``
written, as soon as the session has taken it, in a thread, while the guest
boots on (``CompareAhead``).

Plain inspections talk GDB/MI; traced runs and scenarios, which stop the guest
thousands of times, speak the remote protocol to QEMU's gdbstub directly
(debugger/rsp.py): about 0.8 ms a stop against 2.3 ms through GDB (bench/trace.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import gzip
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Self

from ..analysis import modules as modules_mod
from ..analysis import orccheck, relocorder
from ..analysis.findings import Analysis, LoggedStop, ScenarioLog, TraceSummary
from ..analysis.relocorder import Relocation
from ..analysis.sites import Baseline, Capture, Comparison
from ..analysis.trace import APPLY_RELOCATE_ADD, MODULE_EVENTS, Event, Explainer, Model, counts, write_jsonl
from ..analysis.unwind import UnwindCheck
from ..config import Inspect
from ..debugger import Backend, open_debugger
from ..debugger.contract import DebuggerDied, DebuggerError
from ..domain import CAPTURE_POINTS, DebuggerKind, Note, Tracer
from ..elf import kmodlist
from ..elf import ko as ko_mod
from ..elf.orc import OrcTable
from ..elf.vmlinux import Site, Symbols, Vmlinux
from ..errors import ConfigError, ImageError, InfrastructureError, LaunchError
from ..kernel.image import Kernel
from ..report.artefacts import sites_file, write_sites_file
from ..scenario import Scenario, resolve
from ..vm.machine import Machine
from ..vm.qemu import Qemu
from ..vm.qmp import QmpMemory
from .capture import Plan, text_regions
from .console import ConsoleThread
from .plugintrace import PluginTracer
from .session import Options, Outcome, Session
from .unwinding import UnwindProbe, unwind_candidates

# arch/x86/include/asm/static_call.h (6.1): a trampoline is "jmp rel32" or "ret; int3…",
# 5 bytes, then a ud1 signature that is never rewritten.
STATIC_CALL_TRAMP_SIZE = 5

# Text the kernel writes outside every patch table, by name: (symbol, bytes, who writes it).
# 6.1 and 6.12 arch/x86/xen/enlighten_pv.c: xen_start_kernel() turns the jmp at
# early_xen_iret_patch (entry_64.S) into "jmp xen_iret" with __text_gen_insn().
# arch/x86/kernel/ftrace_64.S: the "call ftrace_stub" at ftrace_call and ftrace_regs_call in the ftrace
# trampolines, retargeted by ftrace_update_ftrace_func() when a tracer (livepatch's ftrace ops) registers.
KNOWN_WRITES = (("early_xen_iret_patch", 5, "xen_start_kernel(): jmp xen_iret"),
                ("ftrace_call", 5, "ftrace_update_ftrace_func(): call <the tracer>"),
                ("ftrace_regs_call", 5, "ftrace_update_ftrace_func(): call <the tracer>"))
# kernel/module/main.c: static LIST_HEAD(modules), every loaded module's struct module.list.
MODULE_LIST = "modules"


def load_tables(kernel: Kernel, note: Note) -> tuple[Vmlinux, Symbols, dict[str, list[Site]]]:
    """The vmlinux, its symbols, and every table's sites (all tables: any of them explains a change)."""
    if kernel.vmlinux is None:
        raise ImageError(f"{kernel.ref}: no vmlinux could be taken from the image; "
                         "give one with path:<bzImage>,vmlinux=<file>")
    t0 = time.monotonic()
    symbols = Symbols.from_elf(kernel.symbols) if kernel.symbols else None
    vmlinux = Vmlinux(kernel.vmlinux, symbols, kernel.release)
    sites = vmlinux.all_sites()
    note(f"read {sum(len(s) for s in sites.values())} patch sites from {len(sites)} tables "
         f"in {time.monotonic() - t0:.1f} s")
    return vmlinux, symbols or Symbols.from_elf(kernel.vmlinux), sites


def pv_maps(sites: Mapping[str, list[Site]]) -> tuple[dict[int, str], dict[int, int]]:
    """(pv_ops slot -> op name, paravirt site address -> slot): what scenario conditions on pv ops read."""
    pv = sites.get("paravirt", [])
    return ({s.slot: s.op for s in pv if s.slot is not None and s.op},
            {s.address: s.slot for s in pv if s.slot is not None})


def scenario_log(out: Outcome, symbols: Symbols) -> ScenarioLog:
    """A session's scenario stops and NMIs as the verdict reads them and scenario.jsonl keeps them."""
    return ScenarioLog(tuple(LoggedStop.from_json(s.to_json(symbols)) for s in out.stops), tuple(out.nmis),
                       out.bound_reached)


def baseline_for(vmlinux: Vmlinux, symbols: Symbols, sites: Mapping[str, list[Site]], report_tables: Sequence[str],
                 known_more: Sequence[tuple[int, int]] = ()) -> Baseline:
    """What every capture of the reported tables is compared against."""
    pv_ops = vmlinux.pv_ops_address()
    pv_targets = ({s.address: pv_ops + 8 * s.slot for s in sites.get("paravirt", []) if s.slot is not None}
                  if pv_ops is not None else {})
    # Static-call trampolines (__SCT__<name>: a 5-byte jmp, or ret when the
    # call is off) are rewritten by static_call_update(): known, not table sites.
    known = [(address, address + STATIC_CALL_TRAMP_SIZE) for _, address in symbols.with_prefix("__SCT__")]
    known += [(address, address + size) for name, size, _ in KNOWN_WRITES
              if (address := symbols.address(name)) is not None]
    # Only the reported tables are compared site by site; every other table's
    # sites still count as known for the whole-text checks.
    known += [(s.address, s.address + s.length) for table, found in sites.items()
              if table not in report_tables for s in found]
    known += known_more
    reported = {table: sites[table] for table in report_tables if table in sites}
    return Baseline(reported, symbols, pv_targets, extra_known=known)


def compared(vmlinux: Vmlinux, baseline: Baseline, capture: Capture) -> Comparison:
    elf = {start: vmlinux.read(start, len(data)) for start, data in capture.regions.items()}
    return dataclasses.replace(baseline.compare(capture, elf), notes=tuple(vmlinux.notes))


def comparisons_for(vmlinux: Vmlinux, symbols: Symbols, sites: Mapping[str, list[Site]],
                    captures: Mapping[str, Capture], report_tables: Sequence[str],
                    known_more: Sequence[tuple[int, int]] = ()) -> dict[str, Comparison]:
    # One baseline for every capture: the known ranges, the names, and the sites' states carried over.
    baseline = baseline_for(vmlinux, symbols, sites, report_tables, known_more)
    return {name: compared(vmlinux, baseline, cap) for name, cap in captures.items()}


class CompareAhead:
    """Compares each capture as soon as the session has taken it, while the guest boots on.

    Comparing 130k sites and making their site file's lines costs about a second a capture, and the
    session spends the boot waiting on the guest (QEMU and GDB are processes of their own): the guest
    runs for seconds after after-patching before its marker. So a thread builds the baseline and names
    every site while the guest boots, then compares each capture that appears; what it has not done
    when the session ends (a capture at the marker, or all of them if it failed) is done then. Only
    this thread touches the baseline until it has stopped. Used as a context manager around the session.
    """

    def __init__(self, make: Callable[[], Baseline], vmlinux: Vmlinux, outdir: Path | None = None) -> None:
        self._make = make
        self._vmlinux = vmlinux
        self._outdir = outdir      # where each capture's site file is written as soon as it is compared
        self._baseline: Baseline | None = None
        self._done: dict[str, tuple[Capture, Comparison]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, captures: Mapping[str, Capture], ignore: Collection[str] = ()) -> None:
        """Start comparing the captures the session puts into ``captures`` (but those named in ``ignore``)."""
        self._thread = threading.Thread(target=self._run, args=(captures, frozenset(ignore)), name="compare-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, captures: Mapping[str, Capture], ignore: frozenset[str]) -> None:
        try:
            baseline = self._baseline = self._make()
            baseline.prepare()
            while not self._stop.is_set():
                for name, cap in list(captures.items()):      # list(): one step, under the GIL
                    if self._stop.is_set():
                        return
                    if name not in ignore and self._done.get(name, (None,))[0] is not cap:
                        self._done[name] = (cap, self._compare(baseline, name, cap))
                self._stop.wait(0.05)
        except Exception:  # noqa: BLE001  # comparisons() does it again in the caller's thread, and raises there
            self._baseline = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self._stop.set()
        if self._thread is not None and kind is None:
            self._thread.join()

    def comparisons(self, captures: Mapping[str, Capture]) -> dict[str, Comparison]:
        """Every capture compared: what the thread did, and the rest now."""
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        out = {}
        for name, cap in captures.items():
            done = self._done.get(name)
            if done is not None and done[0] is cap:
                out[name] = done[1]
            else:       # the rest now: while the guest boots on, when the session ended before its marker
                self._baseline = self._baseline or self._make()
                out[name] = self._compare(self._baseline, name, cap)
        for name in self._done.keys() - captures.keys():     # taken, then dropped (the plugin tracer's booted)
            if self._outdir is not None:
                (self._outdir / sites_file(name)).unlink(missing_ok=True)
        return out

    def _compare(self, baseline: Baseline, name: str, capture: Capture) -> Comparison:
        comparison = compared(self._vmlinux, baseline, capture)
        baseline.encode(comparison)
        if self._outdir is not None:
            write_sites_file(self._outdir, name, comparison)
        return comparison


def _wait_for_gdbstub(vm: Qemu, console: ConsoleThread, socket: Path, limit: float = 30.0) -> None:
    """Until QEMU's gdbstub socket exists; a QEMU that exits first (it refused an argument) is a LaunchError in
    QEMU's own words, not a debugger's 30 s wait for a socket."""
    deadline = time.monotonic() + limit
    while not socket.exists() and time.monotonic() < deadline:
        if not vm.alive():
            console.finished.wait(5.0)
            said = [text.strip() for _, text in console.lines if text.strip()]
            own = [text for text in said if "qemu-system" in text]
            raise LaunchError(f"QEMU exited (status {vm.exitcode}) before its gdbstub came up: "
                              f"{(own or said or ['no output'])[-1][:300]}", vm.argv, vm.exitcode,
                              "\n".join(said[-20:]))
        time.sleep(0.05)


class Inspection:
    """The inspection step of one run."""

    def __init__(self, kernel: Kernel, inspect: Inspect, outdir: Path, note: Note, *, timeout: float,
                 where: tuple[Path | None, int | None] = (None, None), trace: bool = False,
                 scenario: Scenario | None = None, debugger: DebuggerKind = "auto",
                 modules: Sequence[tuple[str, Path]] = (), trace_modules: bool = False,
                 tracer: Tracer = "breakpoints") -> None:
        self.kernel = kernel
        # trace: modules: module loading only (no replay of the boot, so no self-check)
        self.trace_modules = trace_modules and not trace
        self.debugger = debugger
        self.trace = trace
        self.scenario = scenario
        self.config_path = where[0]
        self.inspect = inspect
        self.outdir = outdir
        self.note = note
        self.vmlinux, self.symbols, self.sites = load_tables(kernel, note)
        for name in inspect.captures:
            if name not in CAPTURE_POINTS and self.symbols.address(name) is None:
                # Names sharing the first letters: cheap to search, and where typos are.
                candidates = [n for n, _ in self.symbols.with_prefix(name[:3])]
                close = difflib.get_close_matches(name, candidates, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(where[0], where[1], f"inspect.capture: {kernel.ref} has no symbol {name!r}"
                                  f"{hint}; capture at before-patching, after-patching, booted or a function")
        self.pv_ops, self.pv_sites = pv_maps(self.sites)
        if scenario is not None:
            # every location, symbol and pv op of the scenario, checked before anything boots
            resolve(scenario, self.symbols, self.config_path, self.pv_ops)
        addresses = [s.address for table in self.sites.values() for s in table]
        begin, end = self.symbols.address("__init_begin"), self.symbols.address("__init_end")
        # Modules are loaded by /init: their text is read at its success marker, next to the booted capture.
        self.kos = [(name, ko_mod.parse(path.read_bytes(), str(path))) for name, path in modules]
        self.module_layout: kmodlist.ModuleLayout | None = None
        captures = inspect.captures
        # seed 004: the ORC table, read (and its layout checked) before anything boots
        self.orc_table = self.vmlinux.orc if inspect.orc or inspect.unwind is not None else None
        self.probe: UnwindProbe | None = None
        if inspect.unwind is not None:
            assert self.orc_table is not None
            init = (begin, end) if begin is not None and end is not None else (0, 0)
            self.probe = UnwindProbe(inspect.unwind, self.orc_table, self.symbols, unwind_candidates(
                self.sites, inspect.unwind, lambda a: init[0] <= a < init[1], self.symbols))
            if not self.probe.sites:
                raise ConfigError(where[0], where[1], f"inspect.unwind: {kernel.ref} has no {inspect.unwind.table} "
                                  f"site{f' of {inspect.unwind.op}' if inspect.unwind.op else ''}"
                                  f"{f' matching {inspect.unwind.symbol.pattern!r}' if inspect.unwind.symbol else ''}"
                                  " outside init text "
                                  "to stop in" + ("; pv ops are named like irq.save_fl" if inspect.unwind.op else ""))
            if "after-patching" not in captures:     # the probe is armed from the live text at the end of patching
                captures = ("after-patching", *captures) if "before-patching" not in captures else \
                    ("before-patching", "after-patching", *captures[1:])
        if self.kos:
            self.module_layout = kmodlist.module_layout(self.vmlinux.btf, str(kernel.vmlinux))
            if self.symbols.address(MODULE_LIST) is None:
                raise ImageError(f"{kernel.ref}: no symbol {MODULE_LIST!r} (the kernel's module list) in "
                                 f"{kernel.symbols}; loaded modules cannot be found")
            captures = captures if "booted" in captures else (*captures, "booted")
        init_text = (begin, end) if begin is not None and end is not None else None
        regions = text_regions(self.vmlinux, addresses)
        # --tracer plugin: the writes are logged by QEMU, and the guest stops once, for the booted capture
        self.plugin: PluginTracer | None = None
        self._booted_for_trace = trace and tracer == "plugin" and "booted" not in captures
        if trace and tracer == "plugin":
            self.plugin = PluginTracer(self.symbols, self.sites,
                                       {sec.address: self.vmlinux.read(sec.address, sec.size) for sec in regions},
                                       init_text, outdir, note)
            captures = captures if "booted" in captures else (*captures, "booted")
        self.plan = Plan(captures, regions, False, timeout, init_text)
        self.module_symbols: dict[str, Symbols] = {}    # each loaded module's own, once linked
        self.module_orc: dict[str, OrcTable] = {}        # inspect.orc: each loaded module's ORC table
        self.everything = self.symbols                   # vmlinux's symbols and every loaded module's
        self.analysis: Analysis | None = None     # once the session is over
        self.error: str | None = None
        self.outcome = Outcome()

    def _options(self, vm: Qemu) -> Options:
        model = None
        if self.trace and self.plugin is None:
            elf = {sec.address: self.vmlinux.read(sec.address, sec.size) for sec in self.plan.regions}
            model = Model(elf, Explainer(self.sites, self.symbols), self.symbols)

        def inject_nmi() -> None:
            qmp = vm.connect_qmp()
            if qmp is None:
                raise DebuggerError("inject-nmi", message="QEMU is gone")
            qmp.command("inject-nmi")

        name_offset = None
        if (self.trace or self.trace_modules) and self.vmlinux.btf is not None:
            try:
                name_offset = kmodlist.module_layout(self.vmlinux.btf, str(self.kernel.vmlinux)).name
            except ImageError as err:
                self.note(f"trace: module loading is not followed: {err}")
        bulk_read = None
        if self.inspect.reader != "debugger":
            qmp = vm.connect_qmp()
            if qmp is not None:
                bulk_read = QmpMemory(qmp, vm.qmp_socket.parent).read
        return Options(trace=self.trace and self.plugin is None, scenario=self.scenario, config_path=self.config_path,
                       pv_ops=self.pv_ops, pv_sites=self.pv_sites,
                       inject_nmi=inject_nmi, model=model,
                       modules=self._capture_modules if self.kos else None, module_name_offset=name_offset,
                       trace_modules=self.trace_modules, unwind=self.probe,
                       bulk_read=bulk_read, cross_check=self.inspect.reader == "both")

    def qemu_args(self, m: Machine) -> list[str]:
        """What QEMU's command line needs for this inspection (the plugin tracer's RAM file and plugin)."""
        return self.plugin.qemu_args(m) if self.plugin is not None else []

    def close(self) -> None:
        if self.plugin is not None:
            self.plugin.close()

    def _capture_modules(self, read: kmodlist.Read) -> list[modules_mod.ModuleCapture]:
        """At the marker: the module list, and the text of each module the config loads."""
        assert self.module_layout is not None
        head = self.symbols.address(MODULE_LIST)
        assert head is not None
        loaded = {m.name: m for m in kmodlist.walk(read, head, self.module_layout)}
        out = []
        for name, ko in self.kos:
            mod = loaded.get(name)
            if mod is None:
                continue
            regions, freed = modules_mod.text_to_read(ko, mod)
            out.append(modules_mod.ModuleCapture(
                mod, Capture("booted", {a: read(a, n) for a, n in regions}, tuple(freed))))
        return out

    def _module_comparisons(self, comparisons: dict[str, Comparison]) -> dict[str, Comparison]:
        """Each loaded module's sites against its .ko linked where it was loaded, merged into the booted capture."""
        captured = {m.module.name: m for m in self.outcome.modules or []}
        linked = modules_mod.link_all(self.kos, {n: m.module for n, m in captured.items()}, self.symbols.address)
        folder = self.outdir / "modules"
        folder.mkdir(exist_ok=True)
        found: list[tuple[str, Comparison]] = []
        listing: list[dict[str, object]] = []
        for name, image_of in linked.items():
            path = folder / f"{name}.linked.ko"
            path.write_bytes(image_of.data)
            self.module_symbols[name] = Symbols.from_elf(path)
        # One table of every loaded module's symbols and vmlinux's: its address index is built once.
        everything = self.symbols
        for own in self.module_symbols.values():
            everything = own.merged(everything)
        self.everything = everything
        for name, _ko in self.kos:
            got, mod = linked.get(name), captured.get(name)
            if got is None or mod is None:
                listing.append({"module": name, "loaded": False})
                continue
            path = folder / f"{name}.linked.ko"
            image = Vmlinux.module(path, name, self.vmlinux, everything)
            sites = image.all_sites()
            if self.inspect.orc:
                try:
                    self.module_orc[name] = image.orc       # its own .orc_unwind, linked where it was loaded
                except ImageError as err:
                    self.note(f"orc: {name}'s sites are not checked: {err}")
            known = [(w.address, w.address + w.size) for w in got.skipped + got.pending]
            one = comparisons_for(image, image.symbols, sites, {"booted": mod.capture}, self.inspect.tables, known)
            comparison = one["booted"]
            found.append((name, dataclasses.replace(comparison, notes=tuple(
                f"{name}: {n}" for n in (*got.notes, *image.notes)))))
            listing.append({"module": name, "loaded": True, "state": mod.module.state,
                            "address": hex(mod.module.address),
                            "sections": {k: hex(v) for k, v in sorted(mod.module.sections.items(), key=lambda x: x[1])},
                            "relocations": len(got.writes), "livepatch_relocations": len(got.pending),
                            "unresolved": list(got.unresolved),
                            "sites": {t: len(v) for t, v in sites.items() if v}})
        (folder / "loaded.json").write_text(json.dumps(listing, indent=1) + "\n")
        out = dict(comparisons)
        out["booted"] = modules_mod.merge(comparisons.get("booted"), "booted", found)
        return out

    def __call__(self, vm: Qemu, console: ConsoleThread, machine: Machine) -> None:
        assert machine.gdb_socket is not None
        # Under KVM software breakpoints would write int3 into the text being compared.
        plan = dataclasses.replace(self.plan, hardware=machine.accel == "kvm")
        # auto: the remote protocol for traces and scenarios (thousands of stops), GDB/MI otherwise.
        kind: Backend = "rsp" if self.debugger == "rsp" or (self.debugger == "auto" and (
            self.trace or self.trace_modules or self.scenario is not None or self.probe is not None)) else "gdb"
        log = self.outdir / ("rsp.log" if kind == "rsp" else "gdb.mi.log")
        _wait_for_gdbstub(vm, console, machine.gdb_socket)
        ahead = CompareAhead(lambda: baseline_for(self.vmlinux, self.symbols, self.sites, self.inspect.tables),
                             self.vmlinux, self.outdir)
        with open_debugger(kind, machine.gdb_socket, log, self.kernel.symbols or self.kernel.vmlinux) as dbg, ahead:
            dbg.connect()
            session = Session(dbg, console, self.symbols, plan, self._options(vm), self.note)
            # the plugin tracer's own booted capture is for its self-check, not compared
            ignore = ("booted",) if self._booted_for_trace else ()
            if set(plan.captures) - set(ignore):
                ahead.follow(session.out.captures, ignore)
            try:
                self.outcome = session.run()
                self.error = self.outcome.error
            except DebuggerDied as err:
                # GDB itself died (killed, crashed): the guest may be left stopped. An infrastructure error,
                # never the guest's hang; the boot step stops QEMU on the way out.
                self.outcome = session.out
                console.release()
                raise InfrastructureError(f"{err}; the debugger died mid-run, not the guest: run again") from None
            except DebuggerError as err:
                # The guest crashed, ended or hung mid-session; it is running (or
                # gone): closing the debugger below lets it go on.
                self.outcome = session.out
                self.error = f"{err}"
            if self.plugin is not None:         # the guest is stopped at its marker (or ended): the log is whole
                booted = self.outcome.captures.get("booted")
                if self._booted_for_trace:
                    self.outcome.captures.pop("booted", None)
                self.outcome.events, self.outcome.model = self.plugin.finish(
                    booted, console.started, time.monotonic() - console.started)
            try:
                if dbg.connected:
                    dbg.detach()   # resumes the guest
            except DebuggerError as err:
                # A guest that crashed or powered off may take QEMU (and the gdbstub) with it.
                if self.outcome.ended not in ("crashed", "guest-ended", "marker", "timeout"):
                    self.error = self.error or f"{err}"
            finally:
                console.release()
        comparisons = ahead.comparisons(self.outcome.captures)
        if self.kos and self.outcome.modules is not None:
            comparisons = self._module_comparisons(comparisons)
        self.analysis = self._analysis(comparisons)
        self.write_extras()

    def _analysis(self, comparisons: dict[str, Comparison]) -> Analysis:
        """What the session found, in the form the verdict reads and the artefacts keep."""
        out = self.outcome
        trace = None
        if self.trace or self.trace_modules:
            out.events, relocations = self._module_trace(out.events, out.relocations)
            trace = TraceSummary(len(out.events), out.stop_count, out.ended, counts(out.events),
                                 out.model.check.result() if out.model is not None else None,
                                 tuple(r.to_json() for r in relocations),
                                 tuple(relocorder.check_order(out.events, relocations)),
                                 "plugin" if self.plugin is not None else "breakpoints",
                                 self.plugin.stats.to_json() if self.plugin is not None and self.plugin.stats else None)
        scenario = None
        if self.scenario is not None:
            scenario = scenario_log(out, self.symbols)
        orc = {}
        if self.inspect.orc and self.orc_table is not None:
            for name, comparison in comparisons.items():
                orc[name] = orccheck.check_live(self.orc_table, comparison.sites, self.everything, name,
                                                self.module_orc)
                self.note(orc[name].summary())
        unwinds: tuple[UnwindCheck, ...] = ()
        if self.probe is not None:
            unwinds = tuple(self.probe.checks)
            if not self.probe.done:
                self.note(self.probe.summary())
        return Analysis(comparisons, trace, scenario, self.error, orc, unwinds)

    def _module_trace(self, events: list[Event], relocations: list[Relocation]) -> tuple[list[Event],
                                                                                      list[Relocation]]:
        """The trace with module text writes named by module (from where the loaded modules are), and each
        relocation section named from its .ko when the config loads it."""
        kos = dict(self.kos)
        spans = []
        for m in self.outcome.modules or []:
            for sec in kos[m.module.name].sections:     # captured modules are the config's (kos) only
                address = m.module.sections.get(sec.name)
                if sec.executable and address is not None:
                    spans.append((address, address + sec.size, m.module.name))
        spans.sort()
        starts = [s[0] for s in spans]
        named: list[Event] = []
        for e in events:
            i = bisect.bisect_right(starts, e.address) - 1 if spans else -1
            if i >= 0 and e.address < spans[i][1] and e.source not in MODULE_EVENTS:
                # a write into a loaded module's text: its module, and its place named by the module's symbols
                own = self.module_symbols.get(spans[i][2])
                e = dataclasses.replace(e, module=e.module or spans[i][2],
                                        symbol=own.format(e.address) if own else e.symbol)
            named.append(e)
        out = []
        for r in relocations:
            ko = kos.get(r.module)
            index = int(r.section.split()[-1]) if r.section.startswith("section ") else -1
            if ko is not None and 0 <= index < len(ko.sections):
                r = dataclasses.replace(r, section=ko.sections[index].name)
            out.append(r)
        # each apply_relocate_add marker named by its relocation section (".rela.text", ".klp.rela.<M>..text")
        sections = {r.seq: r.section for r in out}
        named = [dataclasses.replace(e, symbol=sections[e.seq]) if e.source == APPLY_RELOCATE_ADD
                 and e.seq in sections else e for e in named]
        return named, out

    def write_extras(self) -> None:
        """What the run keeps besides its analysis: every traced write, and the scenario's memory dumps."""
        out = self.outcome
        if self.trace or self.trace_modules:
            with gzip.open(self.outdir / "trace.jsonl.gz", "wt", compresslevel=1) as fh:
                write_jsonl(out.events, fh)
        for name, _address, data in out.dumps:
            (self.outdir / name).write_bytes(data)
