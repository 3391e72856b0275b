"""Observation vs expectation: pass or fail, with reasons a user can act on. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .config import Expect
from .crashes import clean_line
from .observe import Observation

VerdictName = Literal["pass", "fail", "error"]
MAX_REASONS = 30


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictName
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def judge(obs: Observation, expect: Expect) -> Verdict:
    reasons: list[str] = []
    if obs.outcome == "unknown":
        return Verdict("error", (obs.summary,))
    if obs.outcome != expect.outcome:
        reasons.append(f"expected outcome '{expect.outcome}', got '{obs.outcome}': {obs.summary}")
    if expect.outcome == "panics" and expect.crash is not None and obs.outcome == "panics":
        title = obs.title or ""
        if not expect.crash.search(title):
            reasons.append(f"expected a crash matching /{expect.crash.pattern}/, got '{title}'")
    if expect.outcome != "panics":
        for crash in obs.crashes:
            if crash.fatal and obs.outcome != "boots":
                continue  # already the outcome's reason
            if not any(p.search(crash.title) for p in expect.allow_crashes):
                reasons.append(f"crash at console line {crash.line}: {crash.title}"
                               + (" (fatal)" if crash.fatal else "")
                               + "; allow it with expect.allow_crashes if it is expected")
    cleaned = [clean_line(ln) for ln in obs.lines]
    for pattern in expect.console.contains:
        if not any(pattern.search(ln) for ln in cleaned):
            reasons.append(f"no console line matches /{pattern.pattern}/")
    for pattern in expect.console.excludes:
        hit = _first(pattern, cleaned)
        if hit is not None:
            reasons.append(f"console line {hit + 1} matches excluded /{pattern.pattern}/: "
                           f"{cleaned[hit][:160]}")
    if len(reasons) > MAX_REASONS:
        reasons = reasons[:MAX_REASONS] + [f"… and {len(reasons) - MAX_REASONS} more"]
    return Verdict("fail" if reasons else "pass", tuple(reasons))


def _first(pattern: re.Pattern[str], lines: list[str]) -> int | None:
    return next((i for i, ln in enumerate(lines) if pattern.search(ln)), None)
