"""The console log: a byte stream split into lines, the timed log format, and how a run ended. Pure.

console.log format, one guest line per line::

       5.123 | [    1.886645] Run /init as init process

``parse_log`` reads that format back, and also plain logs (no host times).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MAX_LINE = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]")
_TIMED = re.compile(r"^\s*(\d+\.\d{3}) \| ?(.*)$")

TimedLine = tuple[float | None, str]
EndReason = Literal["exit", "fatal", "timeout", "silence", "done", "interrupted", "log-end"]
END_REASONS: tuple[EndReason, ...] = ("exit", "fatal", "timeout", "silence", "done", "interrupted", "log-end")


class LineSplitter:
    """Bytes in, complete text lines out: \\r dropped, very long lines cut, bad UTF-8 replaced."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        out: list[str] = []
        while True:
            nl = self._pending.find(b"\n")
            if nl < 0 or nl > self.max_line:
                if len(self._pending) >= self.max_line:
                    out.append(self._decode(self._pending[:self.max_line]))
                    self._pending = self._pending[self.max_line:]
                    continue
                break
            out.append(self._decode(self._pending[:nl]))
            self._pending = self._pending[nl + 1:]
        return out

    def flush(self) -> str | None:
        rest, self._pending = self._pending, b""
        return self._decode(rest) if rest.strip() else None

    @staticmethod
    def _decode(raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").replace("\r", "")
        # ESC is kept so clean_line() can remove whole escape sequences.
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def format_line(t: float, text: str) -> str:
    return f"{t:8.3f} | {text}\n"


def parse_log(text: str) -> list[TimedLine]:
    """Lines of a console.log (timed) or of any plain console log."""
    return _timed(text.splitlines())


def _timed(lines: list[str]) -> list[TimedLine]:
    timed = [_TIMED.match(ln) for ln in lines[:20] if ln.strip()]
    if timed and all(timed):
        out: list[TimedLine] = []
        for ln in lines:
            m = _TIMED.match(ln)
            out.append((float(m.group(1)), m.group(2)) if m else (None, ln))
        return out
    return [(None, ln) for ln in lines]


@dataclass(frozen=True)
class Ending:
    """How the monitor stopped: the raw facts observe() interprets."""

    reason: EndReason
    t: float                    # seconds since launch
    exitcode: int | None = None
    silence: float | None = None  # the silence limit, when that ended it

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "t": round(self.t, 3), "exitcode": self.exitcode,
                "silence": self.silence}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Ending:
        reason = str(data["reason"])
        if reason not in END_REASONS:
            raise ValueError(f"unknown ending {reason!r}")
        exitcode, silence = data.get("exitcode"), data.get("silence")
        return Ending(reason, float(str(data.get("t") or 0.0)),
                      None if exitcode is None else int(str(exitcode)),
                      None if silence is None else float(str(silence)))



def read_console_file(path: Path, chunk: int = 1 << 20) -> list[TimedLine]:
    """``parse_log`` of a file, read a chunk at a time: the whole text is never held beside its lines (a 200 MB
    log cost 4x its size). Lines split as ``str.splitlines`` splits them, across chunk ends too."""
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        carry = ""
        while True:
            data = fh.read(chunk)
            if not data:
                break
            parts = (carry + data).splitlines(keepends=True)
            # the last line may go on in the next chunk (no line break after it yet, or a "\r" whose "\n" is next)
            last = parts[-1]
            carry = "" if last.splitlines()[0] != last and not last.endswith("\r") else parts.pop()
            lines += [part.splitlines()[0] for part in parts]
        if carry:
            lines += carry.splitlines()
    return _timed(lines)


def texts(lines: Sequence[TimedLine]) -> list[str]:
    return [text for _, text in lines]
