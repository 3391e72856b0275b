"""Boot stages: an ordered table of console patterns. Pure.

A stage is reached the first time its pattern appears. The table's order is
the boot's order, so "the last stage reached" is the furthest one in the
table that was seen. Adding a stage means adding a row here and a line to a
recorded console log under tests/data/console/.

One row stands for many stages: the module loads /init reports
(``patchscope: module N: NAME`` …) each give a stage of their own, named
``module-N`` ("loading module NAME"), ``module-N-loaded`` ("module NAME loaded")
and ``module-N-failed`` ("module NAME failed to load"), in load order after
"patchscope /init".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..guest.markers import MARKER_DONE, MARKER_USERSPACE, MODULE_MARKER


@dataclass(frozen=True)
class StageRow:
    name: str          # short id used in result.json
    label: str         # what a user reads: "hung after 'Run /init'"
    pattern: re.Pattern[str]


def _row(name: str, label: str, regex: str) -> StageRow:
    return StageRow(name, label, re.compile(regex))


# In boot order. Natively under QEMU, SeaBIOS and the decompressor print
# nothing on the serial console, so the first line is Linux's banner. Under
# Xen PV, Xen's own lines ("(XEN) …") come first, then dom0's Linux, then
# Xen's S5 after dom0 powers off. Rows starting "xen-" are Xen's own stages.
STAGES: tuple[StageRow, ...] = (
    _row("xen", "Xen version", r"^\(XEN\) Xen version \d"),
    _row("xen-dom0-build", "Xen: building dom0", r"^\(XEN\) (\*\*\* Building a PV Dom0|\s*Dom0 kernel: )"),
    _row("xen-dom0-start", "Xen: dom0 started", r"^\(XEN\) \*\*\* Serial input to DOM0"),
    _row("decompress", "Decompressing Linux", r"Decompressing Linux"),
    _row("linux", "Linux version", r"\bLinux version \d\S*"),
    # 6.1 prints "on bare hardware" natively and "Booting kernel on Xen" as PV dom0.
    _row("paravirt", "Booting paravirtualized kernel", r"Booting (paravirtualized )?kernel on "),
    _row("smp-alternatives", "Freeing SMP alternatives", r"Freeing SMP alternatives memory"),
    _row("free-initmem", "Freeing unused kernel image", r"Freeing unused kernel image \(initmem\) memory"),
    _row("run-init", "Run /init", r"Run \S+ as init process"),
    _row("userspace", "patchscope /init", re.escape(MARKER_USERSPACE)),
    StageRow("module", "module loads", MODULE_MARKER),     # one stage per marker: see module_stage
    _row("init-done", "init done", re.escape(MARKER_DONE) + r"\s*$"),
    _row("power-off", "reboot: Power down", r"reboot: Power down"),
    _row("xen-s5", "Xen: Entering ACPI S5", r"^\(XEN\) Entering ACPI S5 state"),
)
START_LABEL = "QEMU started"
_ORDER = {row.name: i for i, row in enumerate(STAGES)}


@dataclass(frozen=True)
class Stage:
    name: str
    label: str
    t: float | None    # seconds since QEMU started; None for logs without host times
    line: int          # 1-based console line

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "label": self.label, "t": self.t, "line": self.line}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Stage:
        t = data.get("t")
        return Stage(str(data["name"]), str(data["label"]), None if t is None else float(str(t)), int(str(data["line"])))


_MODULE_RESULTS = {None: ("", "loading module {name}"), "loaded": ("-loaded", "module {name} loaded"),
                   "failed": ("-failed", "module {name} failed to load")}


def module_stage(m: re.Match[str]) -> StageRow:
    """The stage of one module marker (a match of ``MODULE_MARKER``)."""
    suffix, label = _MODULE_RESULTS[m.group("result")]
    return StageRow(f"module-{int(m.group('n'))}{suffix}", label.format(name=m.group("name")), MODULE_MARKER)


def match_stage(text: str) -> StageRow | None:
    for row in STAGES:
        m = row.pattern.search(text)
        if m is not None:
            return module_stage(m) if row.name == "module" else row
    return None


def _rank(name: str) -> tuple[int, int, int]:
    """Where a stage lies in boot order: its row, then (module stages) the load number and start before result."""
    order = _ORDER.get(name)
    if order is not None:
        return order, 0, 0
    m = re.fullmatch(r"module-(\d+)(-loaded|-failed)?", name)
    if m is not None:
        return _ORDER["module"], int(m.group(1)), 1 if m.group(2) else 0
    return -1, 0, 0


def find_stages(lines: Iterable[tuple[float | None, str]]) -> list[Stage]:
    """The first occurrence of each stage, in console order."""
    seen: dict[str, Stage] = {}
    for number, (t, text) in enumerate(lines, start=1):
        row = match_stage(text)
        if row is not None and row.name not in seen:
            seen[row.name] = Stage(row.name, row.label, t, number)
    return list(seen.values())


def last_stage(stages: Sequence[Stage]) -> str:
    """The label of the furthest stage reached, in table order."""
    if not stages:
        return START_LABEL
    return max(stages, key=lambda s: _rank(s.name)).label


def reached(stages: Sequence[Stage], name: str) -> bool:
    return any(s.name == name for s in stages)
