"""One debugger session over a boot: captures, the patch-event trace, scenario rules, NMI arrival (the edge).

Everything that stops the guest goes through one loop, so a capture, a traced
write and a scenario rule at the same moment see the same stop:

    breakpoint            what happens at its stop
    ─────────────────     ─────────────────────────────────────────────────────────
    start_kernel          trace: snapshot (writes before it, e.g. by xen_start_kernel)
    alternative_          before-patching capture; trace snapshot; a breakpoint at the
      instructions          return address *(u64 *)rsp for after-patching
    <return address>      after-patching capture; trace snapshot and self-check
    <symbol>              a capture at that function
    text_poke_early,      trace: one event (address, new bytes, old bytes read live, caller
      __text_poke           *(u64 *)rsp; trace.TRACED); kept for the whole boot (__text_poke
                            from the return of alternative_instructions on)
    scenario rules        conditions, then effects (registers, memory, inject-nmi, …)
    exc_nmi               after an inject-nmi: the NMI arrived (where it interrupted,
                            and whether ignore_nmis was set); removed at its hit
    (success marker)      booted capture; the session ends

The debugger is any ``framework.debugger.contract.Debugger``: ``mi.Gdb``
(GDB/MI) or ``rsp.Rsp`` (the remote protocol spoken directly, for stop-heavy work).

A traced writer is resumed past its first instruction (a 5-byte NOP, or a call
to ``__fentry__``, which returns at once during boot): the debugger then
continues from an address without a breakpoint, and needs no step-over, which
costs a breakpoint removal and re-insertion, each a flush of QEMU's translated code.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..analysis.modules import ModuleCapture
from ..analysis.relocorder import Relocation, written_ranges
from ..analysis.sites import Capture
from ..analysis.trace import (
    APPLY_RELOCATE_ADD,
    MAX_EVENT_LEN,
    MEMSET,
    MODULE_FINALIZE,
    SNAPSHOT_PATCHING,
    SNAPSHOT_START,
    TRACED,
    Event,
    Model,
    stage_of,
)
from ..debugger.contract import Breakpoint, Debugger, DebuggerError, DebuggerTimeout, Stop
from ..domain import Note
from ..elf.vmlinux import Symbols
from ..errors import InfrastructureError
from ..scenario import (
    NMI_ENTRY,
    REGISTERS,
    Dump,
    Effect,
    InjectNmi,
    NmiRecord,
    Scenario,
    SetRegister,
    StopContext,
    StopRecord,
    WriteMemory,
    effects,
    function_of,
    matches,
    resolve,
)
from ..vm.qmp import QMPError
from .capture import Plan
from .console import ConsoleThread
from .unwinding import UnwindProbe

# The registers read at each stop: every one a scenario expression may name (scenario.REGISTERS),
# rip and rsp first. The order is kept for the recorded sessions (tests/data/sessions), which
# replay the registers() call argument for argument; the names are scenario's.
STOP_REGISTERS = ("rip", "rsp", *(name for name in REGISTERS if name not in ("rip", "rsp")))
# Where an injected NMI shows that it arrived (helper research, 6.1 and Xen 4.17):
# - exc_nmi(regs), natively (asm_exc_nmi) and for a Xen PV guest (Xen forwards
#   unknown NMIs to dom0: opt_nmi "dom0"; xenpv_exc_nmi calls exc_nmi). It counts
#   the NMI (/proc/interrupts) and handles it only when ignore_nmis is 0; between
#   stop_nmi() and restart_nmi() in alternative_instructions() it is ignored.
# - early_idt_handler_common, before trap_init() installs the real IDT: the
#   early handler takes vector 2 and early_fixup_exception() drops it ("Ignore
#   early NMIs"), uncounted. Its stack then holds the vector, an error code, rip.
EARLY_ENTRY = "early_idt_handler_common"
X86_TRAP_NMI = 2
PT_REGS_IP = 16 * 8             # struct pt_regs: r15 … di, orig_ax, then ip
NOP5 = bytes.fromhex("0f1f440000")
POWER_OFF = "kernel_power_off"      # reboot(RB_POWER_OFF), which /init's "poweroff -f" makes after its marker
MARKER_WAIT = 2.0                   # seconds for the marker line, printed just before, to reach the console thread
SHDR = struct.Struct("<IIQQQQIIQQ")     # Elf64_Shdr
SHF_RELA_LIVEPATCH = 0x00100000
MAX_RELA_BYTES = 16 << 20               # a relocation section read whole up to this size
FENTRY = "__fentry__"


@dataclass
class Outcome:
    """What a session saw."""

    captures: dict[str, Capture] = field(default_factory=dict)   # in the order taken
    events: list[Event] = field(default_factory=list)            # the trace, when traced
    model: Model | None = None                                   # the trace's replay and self-check
    stops: list[StopRecord] = field(default_factory=list)         # scenario stops
    nmis: list[NmiRecord] = field(default_factory=list)
    bound_reached: bool = False
    dumps: list[tuple[str, int, bytes]] = field(default_factory=list)   # (file name, address, data)
    error: str | None = None            # a capture or snapshot that was never reached, and why
    ended: str = ""                      # why the loop ended: marker, guest-ended, crashed, timeout, done
    stop_count: int = 0                  # every stop the loop handled
    modules: list[ModuleCapture] | None = None   # the loaded modules' text at the marker (config modules:)
    relocations: list[Relocation] = field(default_factory=list)   # traced apply_relocate_add() calls


@dataclass
class _Point:
    bp: Breakpoint
    labels: list[str]


@dataclass
class Options:
    trace: bool = False
    scenario: Scenario | None = None
    config_path: Path | None = None
    pv_ops: Mapping[int, str] = field(default_factory=dict)
    pv_sites: Mapping[int, int] = field(default_factory=dict)
    inject_nmi: Callable[[], None] | None = None
    model: Model | None = None          # the trace's model (vmlinux text of the plan's regions)
    progress: float = 10.0              # seconds between progress notes
    # At the marker: walk the module list and read the loaded modules' text through this memory reader.
    modules: Callable[[Callable[[int, int], bytes]], list[ModuleCapture]] | None = None
    # Traced runs: offsetof(struct module, name) (from BTF), to follow module loading; None: not followed.
    module_name_offset: int | None = None
    trace_modules: bool = False         # trace module loading only: the writers are armed at the first load
    unwind: UnwindProbe | None = None   # inspect.unwind: armed at the end of boot-time patching
    # Captures: text read by QEMU itself (QMP memsave) instead of through the debugger; None: the debugger.
    bulk_read: Callable[[int, int], bytes] | None = None
    cross_check: bool = False           # inspect.reader: both: read each capture both ways, and they must agree


class Session:
    def __init__(self, dbg: Debugger, console: ConsoleThread, symbols: Symbols, plan: Plan,
                 options: Options, note: Note) -> None:
        self.dbg = dbg
        self.console = console
        self.symbols = symbols
        self.plan = plan
        self.opt = options
        self.note = note
        self.out = Outcome(model=options.model)
        self.points: dict[int, _Point] = {}
        self.deadline = time.monotonic() + plan.timeout
        self.window = "early"
        self.rule_hits: dict[int, int] = {}
        self.rule_stops = 0             # every stop at a rule's breakpoint, matched or not (max_stops)
        self.scenario_stops = 0         # stops at which a rule fired (StopRecord.n)
        self.pending_nmis: list[int] = []
        self._skippable: dict[int, bool] = {}
        self._rules_at: dict[int, list[int]] = {}
        self._wanted = list(plan.captures)
        self._marker_stop = False
        self.module: str | None = None     # the module being loaded, from its last module_finalize/apply_relocate_add

    # breakpoints ---------------------------------------------------------------------------
    def _arm(self, address: int, label: str) -> None:
        point = self.points.get(address)
        if point is None:
            bp = self.dbg.break_at(address, hardware=self.plan.hardware)
            self.points[address] = _Point(bp, [label])
        elif label not in point.labels:
            point.labels.append(label)

    def disarm_all(self) -> None:
        """Remove every breakpoint the session placed (a forked run's next point starts without them)."""
        for address, point in list(self.points.items()):
            del self.points[address]
            self.dbg.delete(point.bp)

    def _disarm(self, address: int, label: str) -> None:
        point = self.points.get(address)
        if point is None or label not in point.labels:
            return
        point.labels.remove(label)
        if not point.labels:
            del self.points[address]
            self.dbg.delete(point.bp)

    def _need(self, name: str) -> int:
        address = self.symbols.address(name)
        if address is None:
            raise DebuggerError(f"break at {name}", message=f"the kernel has no symbol {name!r}")
        return address

    def _arm_initial(self) -> None:
        captures = set(self._wanted)
        if captures & {"before-patching", "after-patching"} or self.opt.trace:
            self._arm(self._need(SNAPSHOT_PATCHING), "patching-entry")
        for name in captures - {"before-patching", "after-patching", "booted"}:
            self._arm(self._need(name), f"capture:{name}")
        if self.opt.trace:
            self._arm(self._need(SNAPSHOT_START), "snapshot:start")
            for writer in TRACED:
                if not writer.live_only:
                    self._arm(self._need(writer.name), f"trace:{writer.name}")
        if self.opt.trace_modules:
            self._arm_module_loading()
        if "booted" in captures or self.opt.modules is not None:
            # /init powers off right after its marker: stopping the guest on the way there is sure,
            # interrupting it when the marker line arrives is a race the power-off can win.
            address = self.symbols.address(POWER_OFF)
            if address is not None:
                self._arm(address, "booted")
        if self.opt.scenario is not None:
            addresses = resolve(self.opt.scenario, self.symbols, self.opt.config_path, self.opt.pv_ops)
            for i, address in enumerate(addresses):
                self._rules_at.setdefault(address, []).append(i)
                self._arm(address, f"rule:{i}")

    def _arm_module_loading(self) -> None:
        """Follow module loading: module_finalize() and apply_relocate_add() (needs the name offset from BTF)."""
        if self.opt.module_name_offset is None:
            return
        for name in (MODULE_FINALIZE, APPLY_RELOCATE_ADD):
            address = self.symbols.address(name)
            if address is not None:
                self._arm(address, f"module:{name}")

    # the loop ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """From the guest's first instruction until the marker, the end of the guest, or nothing left to do.

        The guest is left stopped (or gone); the caller detaches.
        """
        self._arm_initial()
        last_note = time.monotonic()
        while True:
            if not self.points and "booted" not in self._wanted:
                self.out.ended = "done"
                break
            self.console.release()
            self.dbg.cont()
            stop = self._wait()
            self.console.hold()
            if stop is None:
                break
            self.out.stop_count += 1
            if stop.reason in ("exited", "disconnected"):
                self.out.ended = "guest-ended"
                break
            if self._marker_stop:
                self._at_marker()
                break
            if stop.reason == "breakpoint-hit" and stop.address in self.points:
                if "booted" in self.points[stop.address].labels and self.console.marker.wait(MARKER_WAIT):
                    self._at_marker()       # the power-off after the marker: the end of the session
                    break
                self._handle(stop.address)
            if time.monotonic() - last_note > self.opt.progress:
                last_note = time.monotonic()
                self.note(self._progress())
        self._finish()
        return self.out

    def _wait(self) -> Stop | None:
        while True:
            if self.console.fatal.is_set():
                self.out.ended = "crashed"
                return None
            if self.console.finished.is_set():
                self.out.ended = "guest-ended"
                return None
            if self.console.marker.is_set():
                try:
                    stop = self.dbg.interrupt()
                except DebuggerError:          # /init powers off right after its marker: QEMU may be gone
                    self.out.ended = "guest-ended"
                    return None
                if stop.reason == "breakpoint-hit" and stop.address in self.points:
                    return stop          # a breakpoint raced the marker: handle it first
                self._marker_stop = True
                return stop
            if time.monotonic() > self.deadline:
                self.out.ended = "timeout"
                try:
                    self.dbg.interrupt()
                except DebuggerError:
                    pass
                return None
            try:
                return self.dbg.wait_stop(0.5)
            except DebuggerTimeout:
                continue

    def _progress(self) -> str:
        parts = [f"{self.out.stop_count} stops"]
        if self.opt.trace:
            parts.append(f"{len(self.out.events)} text writes traced ({self.window})")
        if self.opt.scenario is not None:
            parts.append(f"{len(self.out.stops)} scenario stops")
        return "session: " + ", ".join(parts)

    def _handle(self, address: int) -> None:
        labels = list(self.points[address].labels)
        regs = self.dbg.registers(STOP_REGISTERS)
        resume: int | None = None
        event: Event | None = None
        t = time.monotonic() - self.console.started
        for label in labels:
            if label.startswith("trace:"):
                event = self._trace_call(label[6:], regs, t)
            elif label.startswith("module:"):
                if self.opt.trace_modules and self.window != "live":
                    self.window = "live"    # the first module load: from here every text write is traced
                    for writer in TRACED:
                        self._arm(self._need(writer.name), f"trace:{writer.name}")
                event = self._module_event(label[7:], regs, t)
        rules = [int(label[5:]) for label in labels if label.startswith("rule:")]
        if rules:
            resume = self._rules(address, rules, regs, t)
            if resume is not None and event is not None:
                event = replace(event, skipped=True)
        if event is not None and self.out.model is not None:
            self.out.events += self.out.model.call(event)
        elif event is not None:             # trace: modules: no model to replay, numbered here
            self.out.events.append(replace(event, seq=len(self.out.events) + 1))
        if event is not None and event.source == APPLY_RELOCATE_ADD and self.out.relocations:
            self.out.relocations[-1] = replace(self.out.relocations[-1], seq=self.out.events[-1].seq)
        if "unwind-entry" in labels or "unwind-at" in labels:
            self._unwind_stop(address, labels, regs)
        if "nmi" in labels:
            self._nmi_arrived(regs)
        if "nmi-early" in labels:
            self._nmi_arrived_early(regs)
        if "patching-entry" in labels or "after-patching" in labels or any(
                label.startswith(("capture:", "snapshot:")) for label in labels):
            self._snapshot_points(address, labels, regs, t)
        # resume: past the traced writer's first instruction when that is a no-op
        if resume is None and any(label.startswith(("trace:", "module:")) for label in labels) \
                and self._can_skip_entry(address):
            self.dbg.set_register("rip", address + len(NOP5))
        if event is not None:
            # It is about to rewrite a traced writer's first instruction (its own, or another's): look again.
            end = event.address + len(event.new)
            for entry in [a for a in self._skippable if event.address < a + len(NOP5) and a < end]:
                del self._skippable[entry]

    # inspect.unwind ---------------------------------------------------------------------------
    def _arm_unwind(self, probe: UnwindProbe, capture: Capture) -> None:
        at, entries = probe.plan(capture)
        for address in entries:
            self._arm(address, "unwind-entry")
        for address in at:
            self._arm(address, "unwind-at")
        self.note(probe.note_text)

    def _read_u64(self, address: int) -> int | None:
        try:
            return self.dbg.read_u64(address)
        except DebuggerError:
            return None

    def _unwind_stop(self, address: int, labels: list[str], regs: Mapping[str, int]) -> None:
        probe = self.opt.unwind
        assert probe is not None
        if "unwind-entry" in labels:
            probe.at_entry(address, regs, self._read_u64)
        if "unwind-at" in labels and probe.at_boundary(address, regs, self._read_u64):
            self._disarm(address, "unwind-at")
        if probe.finished() and not probe.done:
            probe.done = True
            for point in [a for a, p in self.points.items() if {"unwind-entry", "unwind-at"} & set(p.labels)]:
                self._disarm(point, "unwind-entry")
                self._disarm(point, "unwind-at")
            self.note(probe.summary())

    # the trace -----------------------------------------------------------------------------
    def _trace_call(self, function: str, regs: Mapping[str, int], t: float) -> Event:
        writer = next(w for w in TRACED if w.name == function)
        addr, src, length = regs[writer.addr], regs[writer.src], regs[writer.len]
        n = min(length, MAX_EVENT_LEN)
        old = self.dbg.read_memory(addr, n) if n else b""
        if writer.memset_with is not None and regs[writer.memset_with] == self.symbols.address(MEMSET):
            new = self.dbg.read_memory(src, 1) * n if n else b""
        else:
            new = self.dbg.read_memory(src, n) if n else b""
        caller = self.dbg.read_u64(regs["rsp"])
        resolved = self.symbols.resolve(caller)
        # After boot, text_poke_early() writes only the text of a module being loaded (not yet read-only).
        module = self.module if writer.name == "text_poke_early" and self.window == "live" else None
        return Event(0, t, function, stage_of(resolved[0] if resolved else None), addr, old, new,
                     caller, self.symbols.format(caller), self.symbols.format(addr), self.window, module=module)

    def _module_event(self, function: str, regs: Mapping[str, int], t: float) -> Event:
        """module_finalize(hdr, sechdrs, me) or apply_relocate_add(sechdrs, strtab, symindex, relsec, me):
        a marker in the trace, and for a relocation section the bytes its entries write."""
        offset = self.opt.module_name_offset
        assert offset is not None
        me = regs["rdx"] if function == MODULE_FINALIZE else regs["r8"]
        self.module = self.dbg.read_memory(me + offset, 56).split(b"\0", 1)[0].decode("ascii", "replace")
        caller = self.dbg.read_u64(regs["rsp"])
        resolved = self.symbols.resolve(caller)
        stage = "module_finalize" if function == MODULE_FINALIZE else stage_of(resolved[0] if resolved else None)
        address, symbol = me, f"struct module {self.module}"
        if function == APPLY_RELOCATE_ADD:
            sechdrs, relsec = regs["rdi"], regs["rcx"] & 0xFFFFFFFF
            _n, _type, flags, rela_addr, _off, size, _link, info, _al, _es = SHDR.unpack(
                self.dbg.read_memory(sechdrs + SHDR.size * relsec, SHDR.size))
            target_header = SHDR.unpack(self.dbg.read_memory(sechdrs + SHDR.size * info, SHDR.size))
            target, target_size = target_header[3], target_header[5]
            livepatch = bool(flags & SHF_RELA_LIVEPATCH)
            entries = self.dbg.read_memory(rela_addr, min(size, MAX_RELA_BYTES)) if size else b""
            stage = "livepatch_relocations" if livepatch else "relocations"
            address, symbol = target, f"section {info} of {self.module}"
            self.out.relocations.append(Relocation(0, self.module, f"section {relsec}", target, livepatch,
                                                   written_ranges(entries, target), target_size))
        return Event(0, t, function, stage, address, b"", b"", caller, self.symbols.format(caller), symbol,
                     self.window, module=self.module)

    def _can_skip_entry(self, address: int) -> bool:
        """The traced writer's first instruction is a 5-byte NOP or a call to __fentry__ (a no-op at boot)."""
        known = self._skippable.get(address)
        if known is None:
            head = self.dbg.read_memory(address, 5)
            fentry = self.symbols.address(FENTRY)
            call = head[0] == 0xE8 and fentry is not None and \
                (address + 5 + int.from_bytes(head[1:5], "little", signed=True)) & (2**64 - 1) == fentry
            known = head == NOP5 or call
            self._skippable[address] = known
        return known

    # captures and snapshots ----------------------------------------------------------------
    def _read(self, name: str, freed_init: bool) -> Capture:
        t0 = time.monotonic()
        regions: dict[int, bytes] = {}
        freed: list[tuple[int, int]] = []
        for section in self.plan.regions:
            if freed_init and self.plan.is_init(section):
                freed.append((section.address, section.address + section.size))
                continue
            regions[section.address] = self._read_text(name, section.name, section.address, section.size)
        size = sum(len(b) for b in regions.values())
        how = "QEMU (QMP memsave)" if self.opt.bulk_read is not None else "the debugger"
        self.note(f"captured {name}: {size / 1e6:.1f} MB of text in {time.monotonic() - t0:.2f} s through {how}"
                  + (", the same bytes through the debugger" if self.opt.cross_check else ""))
        return Capture(name, regions, tuple(freed))

    def _read_text(self, capture: str, section: str, address: int, size: int) -> bytes:
        """One region of a capture: through QEMU when it can (else the debugger, said once), checked against the
        debugger's read with ``cross_check``."""
        if self.opt.bulk_read is None:
            return self.dbg.read_memory(address, size)
        try:
            data = self.opt.bulk_read(address, size)
        except QMPError as err:
            if self.opt.cross_check:
                raise InfrastructureError(f"capture {capture}: QMP memsave of {section} failed, so it cannot be "
                                          f"compared with the debugger's read: {err}") from None
            self.note(f"captures: QMP memsave failed ({err}); reading through the debugger from now on")
            self.opt.bulk_read = None
            return self.dbg.read_memory(address, size)
        if self.opt.cross_check:
            other = self.dbg.read_memory(address, size)
            if other != data:
                at = next(i for i, (a, b) in enumerate(zip(data, other)) if a != b) if len(other) == len(data) else 0
                raise InfrastructureError(
                    f"capture {capture}: QMP memsave and the debugger read {section} differently "
                    f"(first at {address + at:#x}: {data[at:at + 8].hex()} against {other[at:at + 8].hex()})")
        return data

    def _snapshot_points(self, address: int, labels: list[str], regs: Mapping[str, int], t: float) -> None:
        taken: Capture | None = None

        def read(name: str) -> Capture:
            nonlocal taken
            if taken is None:
                taken = self._read(name, False)
            return taken

        for label in labels:
            if label == "snapshot:start":
                self._disarm(address, label)
                self._trace_snapshot("start_kernel", read("start_kernel").regions, "early", t)
                self.window = "setup"
            elif label == "patching-entry":
                self._disarm(address, label)
                if "before-patching" in self._wanted:
                    self.out.captures["before-patching"] = read("before-patching")
                if self.opt.trace:
                    self._trace_snapshot("alternative_instructions", read("before-patching").regions, "setup", t)
                    self.window = "patching"
                if "after-patching" in self._wanted or self.opt.trace:
                    self._arm(self.dbg.read_u64(regs["rsp"]), "after-patching")
            elif label == "after-patching":
                self._disarm(address, label)
                if "after-patching" in self._wanted:
                    self.out.captures["after-patching"] = read("after-patching")
                if self.opt.trace:
                    self._trace_snapshot("after-patching", read("after-patching").regions, "patching", t)
                    self.window = "live"
                    for writer in TRACED:
                        if writer.live_only:
                            self._arm(self._need(writer.name), f"trace:{writer.name}")
                    # Modules load from /init, after boot-time patching. Armed from the start, these two
                    # made a traced boot's 106k stops 1.8x slower (280 s against 154 s natively).
                    self._arm_module_loading()
                if self.opt.unwind is not None:
                    self._arm_unwind(self.opt.unwind, read("after-patching"))
            elif label.startswith("capture:"):
                self._disarm(address, label)
                name = label[8:]
                self.out.captures[name] = read(name)

    def _trace_snapshot(self, name: str, live: Mapping[int, bytes], window: str, t: float) -> None:
        model = self.out.model
        if model is None:
            return
        found = model.snapshot(name, live, window, t)
        self.out.events += found
        self.note(f"trace: {name}: {model.check.calls} calls so far, {len(found)} bypass writes found")

    # scenario ------------------------------------------------------------------------------
    def _rules(self, address: int, rules: list[int], regs: Mapping[str, int], t: float) -> int | None:
        """Apply every matching rule at this stop; returns the new rip when one moved it."""
        scenario = self.opt.scenario
        assert scenario is not None
        caller: int | None = None
        try:
            caller = self.dbg.read_u64(regs["rsp"])
        except DebuggerError:
            pass
        resume: int | None = None
        self.rule_stops += 1
        n = self.scenario_stops + 1     # this stop's number, should any rule fire (several rules: one stop)
        for i in rules:
            rule = scenario.rules[i]
            ctx = StopContext(registers=dict(regs), read=self.dbg.read_memory, symbols=self.symbols,
                              pv_ops=self.opt.pv_ops, pv_sites=self.opt.pv_sites,
                              function=function_of(rule.on), caller=caller, path=self.opt.config_path)
            if not matches(rule.on, ctx):
                continue
            self.rule_hits[i] = self.rule_hits.get(i, 0) + 1
            hit = self.rule_hits[i]
            if rule.on.hit is not None and hit != rule.on.hit:
                continue
            done: list[Effect] = []
            for action in rule.do:
                for effect in effects(action, ctx):
                    self._apply(effect, n)
                    done.append(effect)
                    if isinstance(effect, SetRegister):
                        regs = {**regs, effect.name: effect.new}
                        if effect.name == "rip":
                            resume = effect.new
                ctx = replace(ctx, registers=dict(regs))   # the next action sees what this one set
            self.scenario_stops = n
            record = StopRecord(n=n, rule=i, at=rule.on.at, address=address, caller=caller,
                                caller_symbol=self.symbols.format(caller) if caller is not None else None,
                                hit=hit, effects=tuple(done), t=t)
            self.out.stops.append(record)
            if rule.on.hit is not None and all(
                    r.on.hit is not None and self.rule_hits.get(j, 0) >= r.on.hit
                    for j in self._rules_at.get(address, []) for r in [scenario.rules[j]]):
                # every rule here has had its one hit: the breakpoint is no longer needed
                for j in self._rules_at.get(address, []):
                    self._disarm(address, f"rule:{j}")
        if self.rule_stops >= scenario.max_stops:
            self.out.bound_reached = True
            self.note(f"scenario: max_stops={scenario.max_stops} reached; its breakpoints are removed")
            for addr, idx in list(self._rules_at.items()):
                for j in idx:
                    self._disarm(addr, f"rule:{j}")
        return resume

    def _apply(self, effect: Effect, n: int) -> None:
        if isinstance(effect, SetRegister):
            self.dbg.set_register(effect.name, effect.new)
        elif isinstance(effect, WriteMemory):
            self.dbg.write_memory(effect.address, effect.new)
        elif isinstance(effect, InjectNmi):
            if self.opt.inject_nmi is None:
                raise DebuggerError("inject-nmi", message="no QMP connection to inject an NMI through")
            self.opt.inject_nmi()
            self.pending_nmis.append(n)
            self._arm(self._need(NMI_ENTRY), "nmi")
            early = self.symbols.address(EARLY_ENTRY)
            if early is not None:
                self._arm(early, "nmi-early")
        elif isinstance(effect, Dump):
            k = sum(1 for name, _, _ in self.out.dumps if name.startswith(f"dump-{n}-"))
            self.out.dumps.append((f"dump-{n}-{effect.address:x}{f'-{k + 1}' if k else ''}.bin",
                                   effect.address, effect.data))

    def _nmi_arrived(self, regs: Mapping[str, int]) -> None:
        if not self.pending_nmis:
            return
        n = self.pending_nmis.pop(0)
        where: str | None = None
        try:
            where = self.symbols.format(self.dbg.read_u64(regs["rdi"] + PT_REGS_IP))
        except DebuggerError:
            pass
        ignored = False
        flag = self.symbols.address("ignore_nmis")
        if flag is not None:
            ignored = int.from_bytes(self.dbg.read_memory(flag, 4), "little") != 0
        self.out.nmis.append(NmiRecord(stop=n, state="ignored" if ignored else "delivered", where=where))
        self.note(f"scenario: the NMI injected at stop {n} arrived in {where}"
                  + (" while ignore_nmis was set (counted, not handled)" if ignored else ""))
        self._nmi_watch_done()

    def _nmi_arrived_early(self, regs: Mapping[str, int]) -> None:
        """An exception through the early IDT: an NMI if the vector on the stack is 2."""
        if not self.pending_nmis or self.dbg.read_u64(regs["rsp"]) != X86_TRAP_NMI:
            return
        n = self.pending_nmis.pop(0)
        where = self.symbols.format(self.dbg.read_u64(regs["rsp"] + 16))
        self.out.nmis.append(NmiRecord(stop=n, state="early", where=where))
        self.note(f"scenario: the NMI injected at stop {n} arrived in {where} before trap_init(): "
                  "the early exception handler drops it")
        self._nmi_watch_done()

    def _nmi_watch_done(self) -> None:
        if not self.pending_nmis:
            self._disarm(self._need(NMI_ENTRY), "nmi")
            early = self.symbols.address(EARLY_ENTRY)
            if early is not None:
                self._disarm(early, "nmi-early")

    # the end -------------------------------------------------------------------------------
    def _at_marker(self) -> None:
        self.out.ended = "marker"
        if "booted" in self._wanted:
            self.out.captures["booted"] = self._read("booted", True)
        if self.opt.modules is not None:
            t0 = time.monotonic()
            self.out.modules = self.opt.modules(self.dbg.read_memory)
            size = sum(len(b) for m in self.out.modules for b in m.capture.regions.values())
            self.note(f"captured {len(self.out.modules)} loaded modules: {size / 1e6:.1f} MB of text "
                      f"in {time.monotonic() - t0:.1f} s")

    def _finish(self) -> None:
        for n in self.pending_nmis:
            self.out.nmis.append(NmiRecord(stop=n, state="lost", where=None))
        self.pending_nmis.clear()
        missing = [c for c in self._wanted if c not in self.out.captures]
        if missing:
            why = {"crashed": "it crashed first", "guest-ended": "it ended first",
                   "timeout": "the run's timeout came first"}.get(self.out.ended, self.out.ended)
            self.out.error = f"the guest did not reach {', '.join(missing)}: {why}"
        if self.opt.trace and self.out.model is not None and "after-patching" not in self.out.model.check.snapshots:
            why = self.out.ended
            self.out.error = (self.out.error + "; " if self.out.error else "") + \
                f"the trace did not reach after-patching ({why}), so its self-check is incomplete"
