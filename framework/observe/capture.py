"""Where and what to capture: the capture points and the text regions read at each (session.py reads them).

Capture points, in boot order:

    before-patching   entry of alternative_instructions() (6.1: int3 self-test, paravirt,
                      retpolines, returns, alternatives, SMP locks all follow)
    <symbol>          the first time the kernel reaches that function
    after-patching    alternative_instructions() has returned (a breakpoint at the return
                      address found at *(u64 *)rsp on entry: GDB's `finish` needs an unwinder,
                      and a kernel without frame pointers or DWARF CFI gives it none)
    booted            the generated /init printed its success marker; the guest is
                      interrupted; init text is freed by then and reported as such

At each point the text sections holding patch sites are read in bulk while
the console thread holds the silence clock. Breakpoints
are software ones under TCG (QEMU does not write int3 into guest memory) and
hardware ones under KVM.

Capture breakpoints are removed at their hit. In QEMU 7.2 (accel/tcg/cpu-exec.c,
check_for_breakpoints_slow) code on the same 4 KiB virtual page as any
breakpoint runs one instruction per translation block, unchained, for as long
as the breakpoint exists; a kept breakpoint at xen_start_kernel, whose page
holds the p2m scan loop of xen_vmalloc_p2m_tree, made a Xen PV boot 3.4x
slower, one deleted at its hit costs nothing (bench/xen_breakpoints.py).
Hardware breakpoints take the same path under TCG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..elf.vmlinux import Section, Vmlinux

INIT_SECTIONS = (".init.text",)


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
