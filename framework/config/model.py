"""A test config as frozen dataclasses: what :mod:`framework.config.schema` builds from YAML.

No YAML here; the schema reference is :mod:`framework.config`'s docstring.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from ..domain import DEFAULT_HYPERVISOR, DEFAULT_KERNEL, MODES, TABLES, Mode, Outcome
from ..scenario import Scenario, StopExpect
from .sweep import Fork, Sweep

__all__ = [
    "DEFAULT_DOM0_MEMORY_MIB",
    "DEFAULT_SILENCE",
    "DEFAULT_TIMEOUT",
    "MODULE_LOADS",
    "Config",
    "ConsoleExpect",
    "Expect",
    "ExpectOverlay",
    "Inspect",
    "ModuleSpec",
    "QemuOptions",
    "SiteAssertion",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0
DEFAULT_SILENCE = 60.0
DEFAULT_DOM0_MEMORY_MIB = 256


@dataclass(frozen=True)
class QemuOptions:
    """The ``qemu:`` section; ``None`` means the mode's default."""

    cpu: str | None = None
    memory_mib: int | None = None
    smp: int = 1
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsoleExpect:
    """``expect.console``: regexes over console lines."""

    contains: tuple[re.Pattern[str], ...] = ()
    excludes: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Expect:
    """The ``expect:`` section."""

    outcome: Outcome = "boots"
    crash: re.Pattern[str] | None = None
    allow_crashes: tuple[re.Pattern[str], ...] = ()
    console: ConsoleExpect = ConsoleExpect()
    sites: tuple[SiteAssertion, ...] = ()
    oversized: int | None = None          # at most this many over-sized patches
    unknown_changes: int | None = None    # at most this many text changes outside every known site
    pv_indirect: int | None = None        # at most this many pv sites left as "call *pv_ops+…"
    stops: tuple[StopExpect, ...] = ()    # checks on the scenario's stops
    nmi: str | tuple[str, ...] | None = None   # every NMI's fate, or each one's in injection order;
                                               # see scenario.effective_nmi
    # Traced module loads (seed 002): exactly the modules one of whose relocations lands on bytes a patch
    # of the same load wrote first; () for none.
    relocation_overlaps: tuple[str, ...] | None = None
    orc_disagreements: int | None = None      # at most this many ORC disagreements (inspect.orc; default 0)
    orc_known: tuple[re.Pattern[str], ...] = ()   # disagreements at symbols matching these are known, not counted
    unwind_disagreements: int | None = None   # at most this many unwinds off the true frame (inspect.unwind; 0)


@dataclass(frozen=True)
class ExpectOverlay:
    """``expect.<mode>``: what changes in that mode. Values given replace the base's;
    lists given (allow_crashes, console, sites, stops) are added to the base's."""

    outcome: Outcome | None = None
    crash: re.Pattern[str] | None = None
    allow_crashes: tuple[re.Pattern[str], ...] = ()
    console: ConsoleExpect = ConsoleExpect()
    sites: tuple[SiteAssertion, ...] = ()
    oversized: int | None = None
    unknown_changes: int | None = None
    pv_indirect: int | None = None
    stops: tuple[StopExpect, ...] = ()
    nmi: str | tuple[str, ...] | None = None
    relocation_overlaps: tuple[str, ...] | None = None
    orc_disagreements: int | None = None
    orc_known: tuple[re.Pattern[str], ...] = ()
    unwind_disagreements: int | None = None

    def over(self, base: Expect) -> Expect:
        def pick(mine: T | None, theirs: T) -> T:
            return theirs if mine is None else mine

        return Expect(
            outcome=pick(self.outcome, base.outcome), crash=pick(self.crash, base.crash),
            allow_crashes=base.allow_crashes + self.allow_crashes,
            console=ConsoleExpect(base.console.contains + self.console.contains,
                                  base.console.excludes + self.console.excludes),
            sites=base.sites + self.sites, oversized=pick(self.oversized, base.oversized),
            unknown_changes=pick(self.unknown_changes, base.unknown_changes),
            pv_indirect=pick(self.pv_indirect, base.pv_indirect), stops=base.stops + self.stops,
            nmi=pick(self.nmi, base.nmi), relocation_overlaps=pick(self.relocation_overlaps,
                                                                   base.relocation_overlaps),
            orc_disagreements=pick(self.orc_disagreements, base.orc_disagreements),
            orc_known=base.orc_known + self.orc_known,
            unwind_disagreements=pick(self.unwind_disagreements, base.unwind_disagreements))


CaptureReader = Literal["qmp", "debugger", "both"]
CAPTURE_READERS: tuple[CaptureReader, ...] = ("qmp", "debugger", "both")


@dataclass(frozen=True)
class Inspect:
    """What GDB captures of the guest's text, and which patch-site tables are compared."""

    captures: tuple[str, ...] = ("after-patching",)   # capture points or kernel symbols, in boot order
    tables: tuple[str, ...] = TABLES
    trace: bool = False     # record every text write of the boot (analysis/trace.py), with its self-check
    trace_modules: bool = False   # trace: modules: only module loading (relocations, patching), from the first load
    orc: bool = False       # seed 004: ORC checked at every instruction boundary of every site's live bytes
    unwind: UnwindSpec | None = None   # seed 004: stop inside patched sites and unwind with ORC there
    # How a capture reads the text: QEMU writes it to a file (QMP memsave, default), the debugger reads it
    # packet by packet, or both, which must agree byte for byte.
    reader: CaptureReader = "qmp"


@dataclass(frozen=True)
class UnwindSpec:
    """``inspect.unwind``: stop at the instruction boundaries inside ``sites`` patched sites of a table (of one
    pv op), from the end of boot-time patching, and unwind one frame with ORC from the live registers."""

    table: str = "paravirt"
    op: str | None = None          # paravirt: a pv op ("irq.save_fl"); None: any
    sites: int = 3
    symbol: re.Pattern[str] | None = None    # only sites whose place ("_raw_spin_lock_irqsave+0x6") matches


@dataclass(frozen=True)
class SiteAssertion:
    """One assertion on patch sites: selectors, then exactly one check."""

    table: str | None = None
    op: str | None = None                      # paravirt: "irq.save_fl"
    feature: str | None = None                 # alternatives: "X86_FEATURE_XENPV" or "!X86_FEATURE_XENPV"
    symbol: re.Pattern[str] | None = None      # regex on "function+0xoff"
    module: str | None = None                  # a loaded module's sites ("*": every module's); None: vmlinux's
    at: str | None = None                      # capture point (default: the last)
    insns: str | None = None                   # every selected site's live instructions, NOPs left out
    insns_regex: re.Pattern[str] | None = None
    state: tuple[str, ...] | None = None       # every selected site is in one of these states
    count: tuple[int, int] | None = None       # number of selected sites, inclusive bounds
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        sel = [f"{k}={v}" for k, v in (("module", self.module), ("table", self.table), ("op", self.op),
                                       ("feature", self.feature),
                                       ("symbol", self.symbol.pattern if self.symbol else None)) if v]
        return " ".join(sel) or "all sites"


ModuleLoad = Literal["ok", "fails"]
MODULE_LOADS: tuple[ModuleLoad, ...] = ("ok", "fails")
# package: a module of the kernel's package, by name; file: a .ko on the host, loaded as it is;
# source: a directory of module sources, built against the kernel (framework.build.kmod; refused for now).
ModuleKind = Literal["package", "file", "source"]


@dataclass(frozen=True)
class ModuleSpec:
    """One entry of ``modules:``: what /init loads with insmod, and whether insmod must take it."""

    name: str                         # the module as patchscope names it: "kvm_intel" (a file's: its stem, - as _)
    kind: ModuleKind = "package"
    path: Path | None = None          # file or source: absolute; package: None
    load: ModuleLoad = "ok"           # "fails": the config expects insmod to refuse the module
    written: str = field(default="", compare=False)       # as the config wrote it, for messages
    line: int | None = field(default=None, compare=False)

    def shown(self) -> str:
        return self.written or (str(self.path) if self.path is not None else self.name)


@dataclass(frozen=True)
class Requires:
    """The ``requires:`` section: the kernels a config makes sense for; elsewhere its run is "not applicable"."""

    kernel: tuple[tuple[str, tuple[int, ...]], ...] = ()    # (operator, version): every one must hold
    symbols: tuple[str, ...] = ()                            # the kernel must define each of these
    tables: tuple[str, ...] = ()                             # the vmlinux must carry each patch-site table

    def __bool__(self) -> bool:
        return bool(self.kernel or self.symbols or self.tables)

    def describe_kernel(self) -> str:
        return ", ".join(f"{op} {'.'.join(map(str, version))}" for op, version in self.kernel)

    def why_not(self, version: tuple[int, ...], has_symbol: Callable[[str], bool],
                has_table: Callable[[str], bool]) -> str | None:
        """Why a kernel of ``version`` with these symbols and tables does not qualify; None when it does."""
        for op, wanted in self.kernel:
            if not _compare(version, op, wanted):
                shown = ".".join(map(str, version))
                return f"requires.kernel {self.describe_kernel()}: the kernel is {shown}"
        missing = [name for name in self.symbols if not has_symbol(name)]
        if missing:
            return f"requires.symbols: the kernel has no {', '.join(missing)}"
        absent = [table for table in self.tables if not has_table(table)]
        if absent:
            return f"requires.tables: the vmlinux has no {', '.join(absent)} table"
        return None


VERSION_OPERATORS = (">=", "<=", "==", "!=", ">", "<")


def _compare(version: tuple[int, ...], op: str, wanted: tuple[int, ...]) -> bool:
    """Compare on the wanted version's precision: 6.1.192 == 6.1, and 6.12.5 >= 6.12."""
    have = tuple(version[:len(wanted)]) + (0,) * max(0, len(wanted) - len(version))
    return {">=": have >= wanted, "<=": have <= wanted, "==": have == wanted, "!=": have != wanted,
            ">": have > wanted, "<": have < wanted}[op]


@dataclass(frozen=True)
class Config:
    """One validated test config."""

    name: str
    path: Path | None = None
    kernel: str = DEFAULT_KERNEL
    modes: tuple[Mode, ...] = MODES
    hypervisor: str = DEFAULT_HYPERVISOR
    cmdline: tuple[str, ...] = ()
    xen_cmdline: tuple[str, ...] = ()
    dom0_memory_mib: int = DEFAULT_DOM0_MEMORY_MIB
    qemu: QemuOptions = QemuOptions()
    initramfs: str = "default"
    init_commands: tuple[str, ...] = ()
    modules: tuple[ModuleSpec, ...] = ()      # loaded by /init, in this order (dependencies first)
    timeout: float = DEFAULT_TIMEOUT
    silence: float = DEFAULT_SILENCE
    expect: Expect = Expect()
    expect_modes: Mapping[Mode, ExpectOverlay] = field(default_factory=dict, hash=False)   # expect.<mode>
    inspect: Inspect | None = None
    scenario: Scenario | None = None
    requires: Requires = Requires()
    fork: Fork | None = None          # boot once to a snapshot there; each sweep point runs from it
    sweep: Sweep | None = None        # the points (one, without a sweep); None in each point's own config
    # Dotted key -> 1-based line ("expect.outcome", "cmdline[2]"); read-only by convention.
    # Not part of equality: the same settings laid out differently are the same config.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def expect_for(self, mode: Mode | None) -> Expect:
        """What a run in ``mode`` must meet: ``expect`` with that mode's section laid over it."""
        overlay = self.expect_modes.get(mode) if mode is not None else None
        return overlay.over(self.expect) if overlay is not None else self.expect

    def module_load(self, name: str) -> ModuleLoad:
        """What the config expects of insmod for module ``name``: its entry's ``load``; "ok" for a dependency."""
        return next((spec.load for spec in self.modules if spec.name == name), "ok")
