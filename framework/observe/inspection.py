"""A run's debugger step: tables from the vmlinux, a session (captures, trace, scenario), its Analysis.

``Inspection`` is built before QEMU starts (reading the tables costs about a
second and fails early on a layout that does not fit); its ``__call__`` is
the run pipeline's inspection step and leaves ``self.analysis``
(``analysis/findings.py``), which the pipeline judges and writes
(``report/artefacts.py``: sites.json, sites-<capture>.jsonl.gz, trace.json,
scenario.jsonl). The inspection itself writes the debugger transcript
(``gdb.mi.log`` or ``rsp.log``), ``trace.jsonl.gz`` (traced runs: every text
write, in order) and ``dump-<stop>-<address>.bin`` (a scenario's ``dump``
actions).

Plain inspections talk GDB/MI; traced runs and scenarios, which stop the guest
thousands of times, speak the remote protocol to QEMU's gdbstub directly
(debugger/rsp.py): about 0.8 ms a stop against 2.3 ms through GDB (bench/trace.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..analysis.findings import Analysis, LoggedStop, ScenarioLog, TraceSummary
from ..analysis.sites import Capture, Comparison, compare
from ..analysis.trace import Explainer, Model, counts, write_jsonl
from ..config import Inspect
from ..debugger import Backend, open_debugger
from ..debugger.contract import DebuggerError
from ..domain import CAPTURE_POINTS, DebuggerKind, Note
from ..elf.vmlinux import Site, Symbols, Vmlinux
from ..errors import ConfigError, ImageError
from ..kernel.image import Kernel
from ..scenario import Scenario, resolve
from ..vm.machine import Machine
from ..vm.qemu import Qemu
from .capture import Plan, text_regions
from .console import ConsoleThread
from .session import Options, Outcome, Session

# arch/x86/include/asm/static_call.h (6.1): a trampoline is "jmp rel32" or "ret; int3…",
# 5 bytes, then a ud1 signature that is never rewritten.
STATIC_CALL_TRAMP_SIZE = 5

# Text the kernel writes outside every patch table, by name: (symbol, bytes, who writes it).
# 6.1 and 6.12 arch/x86/xen/enlighten_pv.c: xen_start_kernel() turns the jmp at
# early_xen_iret_patch (entry_64.S) into "jmp xen_iret" with __text_gen_insn().
KNOWN_WRITES = (("early_xen_iret_patch", 5, "xen_start_kernel(): jmp xen_iret"),)


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


def comparisons_for(vmlinux: Vmlinux, symbols: Symbols, sites: Mapping[str, list[Site]],
                    captures: Mapping[str, Capture], report_tables: Sequence[str]) -> dict[str, Comparison]:
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
    reported = {table: sites[table] for table in report_tables if table in sites}
    out: dict[str, Comparison] = {}
    for name, cap in captures.items():
        elf = {start: vmlinux.read(start, len(data)) for start, data in cap.regions.items()}
        comparison = compare(reported, cap, elf, symbols, pv_targets, extra_known=known)
        out[name] = dataclasses.replace(comparison, notes=tuple(vmlinux.notes))
    return out


class Inspection:
    """The inspection step of one run."""

    def __init__(self, kernel: Kernel, inspect: Inspect, outdir: Path, note: Note, *, timeout: float,
                 where: tuple[Path | None, int | None] = (None, None), trace: bool = False,
                 scenario: Scenario | None = None, debugger: DebuggerKind = "auto") -> None:
        self.kernel = kernel
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
        pv = self.sites.get("paravirt", [])
        self.pv_ops = {s.slot: s.op for s in pv if s.slot is not None and s.op}
        self.pv_sites = {s.address: s.slot for s in pv if s.slot is not None}
        if scenario is not None:
            # every location, symbol and pv op of the scenario, checked before anything boots
            resolve(scenario, self.symbols, self.config_path, self.pv_ops)
        addresses = [s.address for table in self.sites.values() for s in table]
        begin, end = self.symbols.address("__init_begin"), self.symbols.address("__init_end")
        self.plan = Plan(inspect.captures, text_regions(self.vmlinux, addresses), False, timeout,
                         (begin, end) if begin is not None and end is not None else None)
        self.analysis: Analysis | None = None     # once the session is over
        self.error: str | None = None
        self.outcome = Outcome()

    def _options(self, vm: Qemu) -> Options:
        model = None
        if self.trace:
            elf = {sec.address: self.vmlinux.read(sec.address, sec.size) for sec in self.plan.regions}
            model = Model(elf, Explainer(self.sites, self.symbols), self.symbols)

        def inject_nmi() -> None:
            qmp = vm.connect_qmp()
            if qmp is None:
                raise DebuggerError("inject-nmi", message="QEMU is gone")
            qmp.command("inject-nmi")

        return Options(trace=self.trace, scenario=self.scenario, config_path=self.config_path,
                       pv_ops=self.pv_ops, pv_sites=self.pv_sites,
                       inject_nmi=inject_nmi, model=model)

    def __call__(self, vm: Qemu, console: ConsoleThread, machine: Machine) -> None:
        assert machine.gdb_socket is not None
        # Under KVM software breakpoints would write int3 into the text being compared.
        plan = dataclasses.replace(self.plan, hardware=machine.accel == "kvm")
        # auto: the remote protocol for traces and scenarios (thousands of stops), GDB/MI otherwise.
        kind: Backend = "rsp" if self.debugger == "rsp" or (
            self.debugger == "auto" and (self.trace or self.scenario is not None)) else "gdb"
        log = self.outdir / ("rsp.log" if kind == "rsp" else "gdb.mi.log")
        with open_debugger(kind, machine.gdb_socket, log, self.kernel.symbols or self.kernel.vmlinux) as dbg:
            dbg.connect()
            session = Session(dbg, console, self.symbols, plan, self._options(vm), self.note)
            try:
                self.outcome = session.run()
                self.error = self.outcome.error
            except DebuggerError as err:
                # The guest crashed, ended or hung mid-session; it is running (or
                # gone): closing the debugger below lets it go on.
                self.outcome = session.out
                self.error = f"{err}"
            try:
                if dbg.connected:
                    dbg.detach()   # resumes the guest
            except DebuggerError as err:
                # A guest that crashed or powered off may take QEMU (and the gdbstub) with it.
                if self.outcome.ended not in ("crashed", "guest-ended", "marker", "timeout"):
                    self.error = self.error or f"{err}"
            finally:
                console.release()
        comparisons = comparisons_for(self.vmlinux, self.symbols, self.sites, self.outcome.captures,
                                      self.inspect.tables)
        self.analysis = self._analysis(comparisons)
        self.write_extras()

    def _analysis(self, comparisons: dict[str, Comparison]) -> Analysis:
        """What the session found, in the form the verdict reads and the artefacts keep."""
        out = self.outcome
        trace = None
        if self.trace:
            trace = TraceSummary(len(out.events), out.stop_count, out.ended, counts(out.events),
                                 out.model.check.result() if out.model is not None else None)
        scenario = None
        if self.scenario is not None:
            scenario = ScenarioLog(tuple(LoggedStop.from_json(s.to_json(self.symbols)) for s in out.stops),
                                   tuple(out.nmis), out.bound_reached)
        return Analysis(comparisons, trace, scenario, self.error)

    def write_extras(self) -> None:
        """What the run keeps besides its analysis: every traced write, and the scenario's memory dumps."""
        out = self.outcome
        if self.trace:
            with gzip.open(self.outdir / "trace.jsonl.gz", "wt", compresslevel=1) as fh:
                write_jsonl(out.events, fh)
        for name, _address, data in out.dumps:
            (self.outdir / name).write_bytes(data)
