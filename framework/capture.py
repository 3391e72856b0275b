"""Capturing the guest's text through GDB at chosen moments of the boot (the edge of sites.py).

Capture points, in boot order:

    before-patching   entry of alternative_instructions() (6.1: int3 self-test, paravirt,
                      retpolines, returns, alternatives, SMP locks all follow)
    <symbol>          the first time the kernel reaches that function
    after-patching    alternative_instructions() has returned (a breakpoint at the return
                      address found at *(u64 *)rsp on entry: GDB's `finish` needs an unwinder,
                      and a kernel without frame pointers or DWARF CFI gives it none)
    booted            the generated /init printed its success marker; the guest is
                      interrupted; init text is freed by then and reported as such

At each point the text sections holding patch sites are read in bulk (``dump
binary memory``) while the console thread holds the silence clock. Breakpoints
are software ones under TCG (QEMU does not write int3 into guest memory) and
hardware ones under KVM.

Every breakpoint is temporary. In QEMU 7.2 (accel/tcg/cpu-exec.c,
check_for_breakpoints_slow) code on the same 4 KiB virtual page as any
breakpoint runs one instruction per translation block, unchained, for as long
as the breakpoint exists; a kept breakpoint at xen_start_kernel, whose page
holds the p2m scan loop of xen_vmalloc_p2m_tree, made a Xen PV boot 3.4x
slower, one deleted at its hit costs nothing (bench/xen_breakpoints.py).
Hardware breakpoints take the same path under TCG.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .console import ConsoleThread
from .errors import InfrastructureError
from .gdb import Breakpoint, Gdb, GdbTimeout, Stop
from .sites import Capture
from .vmlinux import Section, Vmlinux

Note = Callable[[str], None]
PATCHING_ENTRY = "alternative_instructions"
INIT_SECTIONS = (".init.text",)


class CaptureError(InfrastructureError):
    """The guest never reached a capture point (it crashed, hung or ended first)."""


@dataclass(frozen=True)
class Plan:
    captures: tuple[str, ...]
    regions: tuple[Section, ...]    # text sections to read (those holding patch sites)
    hardware: bool = False          # hardware breakpoints (KVM)
    timeout: float = 300.0
    # [__init_begin, __init_end): freed by free_initmem() (.init.text, .exit.text, …)
    init: tuple[int, int] | None = None

    def is_init(self, section: Section) -> bool:
        if self.init is None:
            return section.name in INIT_SECTIONS
        return self.init[0] <= section.address and section.address + section.size <= self.init[1]


def text_regions(vmlinux: Vmlinux, site_addresses: Sequence[int]) -> tuple[Section, ...]:
    """The sections that hold at least one of the given sites."""
    found: dict[str, Section] = {}
    for address in site_addresses:
        section = vmlinux.section_at(address)
        if section is not None:
            found.setdefault(section.name, section)
    return tuple(sorted(found.values(), key=lambda s: s.address))


def _wait(gdb: Gdb, console: ConsoleThread, deadline: float, what: str) -> Stop:
    """Wait for the next stop while watching the console for a crash or the end of the run."""
    while True:
        if console.fatal.is_set() or console.finished.is_set():
            raise CaptureError(f"the guest did not reach {what}: it "
                               + ("crashed" if console.fatal.is_set() else "ended") + " first")
        if time.monotonic() > deadline:
            raise CaptureError(f"the guest did not reach {what} within the run's timeout")
        try:
            return gdb.wait_stop(0.5)
        except GdbTimeout:
            continue


def _read(gdb: Gdb, name: str, plan: Plan, freed_init: bool, note: Note) -> Capture:
    t0 = time.monotonic()
    regions: dict[int, bytes] = {}
    freed: list[tuple[int, int]] = []
    for section in plan.regions:
        if freed_init and plan.is_init(section):
            freed.append((section.address, section.address + section.size))
            continue
        regions[section.address] = gdb.read_memory(section.address, section.size)
    size = sum(len(b) for b in regions.values())
    note(f"captured {name}: {size / 1e6:.1f} MB of text in {time.monotonic() - t0:.1f} s")
    return Capture(name, regions, tuple(freed))


def capture(gdb: Gdb, console: ConsoleThread, plan: Plan, note: Note) -> dict[str, Capture]:
    """Run the guest from its first instruction through every capture point; returns the captures in the order taken.

    The guest is left stopped at the last capture point; detaching GDB resumes it.
    """
    deadline = time.monotonic() + plan.timeout
    wanted = list(plan.captures)
    taken: dict[str, Capture] = {}
    symbols = [c for c in wanted if c not in ("before-patching", "after-patching", "booted")]
    breakpoints: dict[int, str] = {}

    def place(location: str | int, label: str, temporary: bool = False) -> Breakpoint:
        bp = gdb.break_at(location, hardware=plan.hardware, temporary=temporary)
        breakpoints[bp.number] = label
        return bp

    if "before-patching" in wanted or "after-patching" in wanted:
        place(PATCHING_ENTRY, "patching-entry", temporary=True)
    for symbol in symbols:
        place(symbol, symbol, temporary=True)
    while len(breakpoints):
        console.release()
        gdb.cont()
        stop = _wait(gdb, console, deadline, " or ".join(sorted(set(breakpoints.values()))))
        console.hold()
        label = breakpoints.pop(stop.breakpoint, None) if stop.breakpoint is not None else None
        if label is None:
            continue   # a stop that is not ours (a signal): carry on
        if label == "patching-entry":
            if "before-patching" in wanted:
                taken["before-patching"] = _read(gdb, "before-patching", plan, False, note)
            if "after-patching" in wanted:
                rsp = gdb.registers(("rsp",))["rsp"]
                place(gdb.read_u64(rsp), "after-patching", temporary=True)
        elif label == "after-patching":
            taken["after-patching"] = _read(gdb, "after-patching", plan, False, note)
        else:
            taken[label] = _read(gdb, label, plan, False, note)
    if "booted" in wanted:
        console.release()
        gdb.cont()
        while not console.marker.wait(0.5):
            if console.fatal.is_set() or console.finished.is_set() or time.monotonic() > deadline:
                raise CaptureError("the guest did not reach the success marker, so 'booted' was not captured")
        gdb.interrupt()
        console.hold()
        taken["booted"] = _read(gdb, "booted", plan, True, note)
    return taken   # in the order they were taken: the boot's order
