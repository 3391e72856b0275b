"""A test config as frozen dataclasses: what :mod:`framework.config.schema` builds from YAML.

No YAML here; the schema reference is :mod:`framework.config`'s docstring.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..domain import DEFAULT_HYPERVISOR, DEFAULT_KERNEL, MODES, TABLES, Mode, Outcome
from ..scenario import Scenario, StopExpect

__all__ = [
    "DEFAULT_DOM0_MEMORY_MIB",
    "DEFAULT_SILENCE",
    "DEFAULT_TIMEOUT",
    "Config",
    "ConsoleExpect",
    "Expect",
    "Inspect",
    "QemuOptions",
    "SiteAssertion",
]

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


@dataclass(frozen=True)
class Inspect:
    """What GDB captures of the guest's text, and which patch-site tables are compared."""

    captures: tuple[str, ...] = ("after-patching",)   # capture points or kernel symbols, in boot order
    tables: tuple[str, ...] = TABLES
    trace: bool = False     # record every text write of the boot (analysis/trace.py), with its self-check


@dataclass(frozen=True)
class SiteAssertion:
    """One assertion on patch sites: selectors, then exactly one check."""

    table: str | None = None
    op: str | None = None                      # paravirt: "irq.save_fl"
    feature: str | None = None                 # alternatives: "X86_FEATURE_XENPV" or "!X86_FEATURE_XENPV"
    symbol: re.Pattern[str] | None = None      # regex on "function+0xoff"
    at: str | None = None                      # capture point (default: the last)
    insns: str | None = None                   # every selected site's live instructions, NOPs left out
    insns_regex: re.Pattern[str] | None = None
    state: tuple[str, ...] | None = None       # every selected site is in one of these states
    count: tuple[int, int] | None = None       # number of selected sites, inclusive bounds
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        sel = [f"{k}={v}" for k, v in (("table", self.table), ("op", self.op), ("feature", self.feature),
                                       ("symbol", self.symbol.pattern if self.symbol else None)) if v]
        return " ".join(sel) or "all sites"


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
    timeout: float = DEFAULT_TIMEOUT
    silence: float = DEFAULT_SILENCE
    expect: Expect = Expect()
    inspect: Inspect | None = None
    scenario: Scenario | None = None
    # Dotted key -> 1-based line ("expect.outcome", "cmdline[2]"); read-only by convention.
    # Not part of equality: the same settings laid out differently are the same config.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
