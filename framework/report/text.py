"""Results on a terminal: one line a run, its reasons below."""

from __future__ import annotations

from .result import RunResult


def summary_line(result: RunResult) -> str:
    """PASS boot-native [native]: booted to 'reboot: Power down' in 5.1 s  (out/boot-native/native)"""
    return f"{result.verdict.upper():5} {result.name} [{result.mode}]: {result.summary}  ({result.artifacts})"


def reason_lines(result: RunResult, indent: str = "      - ") -> list[str]:
    return [f"{indent}{reason}" for reason in result.reasons]
