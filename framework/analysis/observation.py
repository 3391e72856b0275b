"""What happened in a run, from its console lines and how the monitor stopped. Pure.

    outcome   boots    the success marker (or, without patchscope's /init, a power-off) and no fatal crash
              panics   a fatal crash: a kernel panic, a Xen dom0/hypervisor crash, or a reset
                       (QEMU exited with neither a power-off nor a panic: triple fault or reboot)
              hangs    the timeout, or no console output for ``silence`` seconds, with no fatal crash
              unknown  the run was interrupted before any of the above
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..domain import ObservedOutcome
from . import crashes, stages
from .console_log import ConsoleText, Ending, TimedLine, texts
from .crashes import Crash
from .stages import Stage

Outcome = ObservedOutcome


@dataclass(frozen=True)
class Observation:
    outcome: Outcome
    crashes: tuple[Crash, ...]
    stages: tuple[Stage, ...]
    ending: Ending
    last_stage: str
    summary: str                  # one line for humans
    lines: Sequence[str]          # console text, without host times (a view of a ConsoleLog read from a file)
    crashes_dropped: int = 0      # crashes past crashes.MAX_DISTINCT, only counted

    @property
    def title(self) -> str | None:
        first = crashes.primary(self.crashes)
        return first.title if first else None

    @staticmethod
    def from_json(data: Mapping[str, object], lines: Sequence[str]) -> Observation:
        """An observation back from ``to_json()`` (a result.json) and the run's console text."""
        outcome = str(data["outcome"])
        if outcome not in ("boots", "panics", "hangs", "unknown"):
            raise ValueError(f"unknown outcome {outcome!r}")
        crashes_, stages_, ending = data.get("crashes"), data.get("stages"), data.get("ending")
        if not isinstance(ending, dict):
            raise TypeError("no ending")
        return Observation(outcome,  # type: ignore[arg-type]  # checked above
                           tuple(Crash.from_json(c) for c in crashes_ if isinstance(c, dict))
                           if isinstance(crashes_, list) else (),
                           tuple(Stage.from_json(s) for s in stages_ if isinstance(s, dict))
                           if isinstance(stages_, list) else (),
                           Ending.from_json(ending), str(data["last_stage"]), str(data["summary"]),
                           lines if isinstance(lines, ConsoleText) else tuple(lines),
                           int(str(data.get("crashes_dropped", 0))))

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome, "summary": self.summary, "title": self.title,
            "last_stage": self.last_stage,
            "crashes": [c.to_json() for c in self.crashes],
            "stages": [s.to_json() for s in self.stages],
            "ending": self.ending.to_json(),
            **({"crashes_dropped": self.crashes_dropped} if self.crashes_dropped else {}),
        }


# The machine starting again after Linux ran: a second kernel banner, the firmware, the decompressor, a second
# Xen banner. A reset, whatever ended the log.
RESTART = re.compile(r"^(?:\[\s*\d+\.\d+\]\s*)?(?:Linux version \d|Decompressing Linux|early console in extract_kernel)"
                     r"|^SeaBIOS \(version|^Booting from ROM|^iPXE \(|^\(XEN\) Xen version \d")


def restarted(text: Sequence[str], reached: Sequence[stages.Stage]) -> int | None:
    """The 1-based line where the machine starts again after Linux printed its banner; None if it never does."""
    banner = next((s.line for s in reached if s.name == "linux"), None)
    if banner is None:
        return None
    for index in range(banner, len(text)):      # text[banner] is the line after the banner
        if RESTART.match(text[index]) is not None:
            return index + 1
    return None


def observe(lines: Sequence[TimedLine], ending: Ending) -> Observation:
    text = texts(lines)
    found, dropped = crashes.count_crashes(text)
    reached = stages.find_stages(lines)
    last = stages.last_stage(reached)
    again = restarted(text, reached)
    if again is not None and not any(c.fatal and c.line < again for c in found):
        before = stages.last_stage([s for s in reached if s.line < again])
        found = sorted([*found, crashes.reset_crash(before, again)], key=lambda c: c.line)
        reached = [s for s in reached if s.line < again]
        last = before
    done = stages.reached(reached, "init-done")
    powered_off = stages.reached(reached, "power-off")
    fatal = [c for c in found if c.fatal]
    if not fatal and not done and not powered_off and ending.reason == "exit":
        found.append(crashes.reset_crash(last, len(text)))
        fatal = found[-1:]
    outcome: Outcome
    if fatal:
        outcome = "panics"
        summary = f"panicked after '{last}': {crashes.primary(found).title}"  # type: ignore[union-attr]
    elif done or powered_off:
        outcome = "boots"
        t = next((s.t for s in reached if s.name in ("init-done", "power-off")), None)
        summary = f"booted to '{last}'" + (f" in {t:.1f} s" if t is not None else "")
    elif ending.reason in ("timeout", "silence"):
        outcome = "hangs"
        why = (f"no console output for {ending.silence:.0f} s" if ending.reason == "silence"
               else f"timeout after {ending.t:.0f} s")
        summary = f"hung after '{last}': {why}"
    else:
        outcome = "unknown"
        summary = (f"the log ends after '{last}' with no power-off, panic or hang in it (cut short?)"
                   if ending.reason == "log-end" else f"ended ({ending.reason}) after '{last}' with no outcome")
    return Observation(outcome, tuple(found), tuple(reached), ending, last, summary,
                       text if isinstance(text, ConsoleText) else tuple(text), dropped)
