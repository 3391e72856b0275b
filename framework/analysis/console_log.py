"""The console log: a byte stream split into lines, the timed log format, and how a run ended. Pure.

console.log format, one guest line per line::

       5.123 | [    1.886645] Run /init as init process

``parse_log`` reads that format back, and also plain logs (no host times).
"""

from __future__ import annotations

import math
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

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
    return _split_times(lines) if _is_timed(lines) else [(None, ln) for ln in lines]


def _is_timed(lines: list[str]) -> bool:
    """Whether a log is console.log's timed format: the non-blank ones of its first 20 lines all are."""
    timed = [_TIMED.match(ln) for ln in lines[:20] if ln.strip()]
    return bool(timed) and all(timed)


def _split_times(lines: list[str]) -> list[TimedLine]:
    out: list[TimedLine] = []
    for ln in lines:
        m = _TIMED.match(ln)
        out.append((float(m.group(1)), m.group(2)) if m else (None, ln))
    return out


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



class ConsoleText(Sequence[str]):
    """The text of a ``ConsoleLog``'s lines, read from it on demand (a view: nothing is copied)."""

    def __init__(self, log: ConsoleLog) -> None:
        self._log = log

    def __len__(self) -> int:
        return len(self._log)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._log.text(i) for i in range(*index.indices(len(self)))]
        return self._log.text(index)

    def __iter__(self) -> Iterator[str]:
        return self._log.iter_texts()

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    __hash__ = None  # type: ignore[assignment]


class ConsoleLog(Sequence[TimedLine]):
    """A console log's lines kept compactly: the text of each chunk once (its lines joined), and per line where it
    starts (4 bytes) and, in a timed log, its host time (8 bytes). A 200 MB log costs about its size, not several times it
    as a list of line objects would. Lines and their texts are made when read."""

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._first: list[int] = []     # per chunk: the index of its first line
        self._start = array("I")        # per line: where it starts in its chunk
        self._time: array[float] | None = None   # per line: host time, NaN for none; None while no line has one

    def extend(self, lines: Sequence[TimedLine]) -> None:
        if not lines:
            return
        if self._time is None and any(t is not None for t, _ in lines):
            self._time = array("d", [_NAN]) * len(self._start)
        self._first.append(len(self._start))
        at = 0
        for t, text in lines:
            self._start.append(at)
            if self._time is not None:
                self._time.append(_NAN if t is None else t)
            at += len(text) + 1
        self._chunks.append("\n".join(text for _, text in lines) + "\n")

    def text(self, index: int) -> str:
        if index < 0:
            index += len(self._start)
            if index < 0:
                raise IndexError("line index out of range")
        start = self._start[index]
        chunk = self._chunks[bisect_right(self._first, index) - 1]
        return chunk[start:chunk.index("\n", start)]

    def time(self, index: int) -> float | None:
        if self._time is None:
            self._start[index]          # IndexError as for the text
            return None
        t = self._time[index]
        return None if math.isnan(t) else t

    def iter_texts(self) -> Iterator[str]:
        for chunk in self._chunks:
            yield from chunk[:-1].split("\n")

    def texts(self) -> ConsoleText:
        return ConsoleText(self)

    def __len__(self) -> int:
        return len(self._start)

    @overload
    def __getitem__(self, index: int) -> TimedLine: ...

    @overload
    def __getitem__(self, index: slice) -> list[TimedLine]: ...

    def __getitem__(self, index: int | slice) -> TimedLine | list[TimedLine]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return (self.time(index), self.text(index))

    def __iter__(self) -> Iterator[TimedLine]:
        if self._time is None:
            return ((None, text) for text in self.iter_texts())
        return ((None if math.isnan(t) else t, text) for t, text in zip(self._time, self.iter_texts()))

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    __hash__ = None  # type: ignore[assignment]


def _same(seq: Sequence[object], other: object) -> bool:
    """Equal to any sequence of the same items, as a list would be."""
    return isinstance(other, Sequence) and len(other) == len(seq) and all(a == b for a, b in zip(seq, other))


_NAN = float("nan")


def read_console_file(path: Path, chunk: int = 1 << 20) -> ConsoleLog:
    """``parse_log`` of a file, read a chunk at a time into a ``ConsoleLog``: neither the whole text nor a list of
    its lines is ever held (a 200 MB log cost 4x its size as lines). Lines split as ``str.splitlines`` splits them,
    across chunk ends too; the log is timed when the non-blank ones of its first 20 lines are, as ``parse_log``
    decides."""
    log = ConsoleLog()
    pending: list[str] = []             # lines read before the log's kind (timed or plain) is known
    timed: bool | None = None

    def add(lines: list[str]) -> None:
        nonlocal timed, pending
        if timed is None:
            pending += lines
            if len(pending) < 20:           # _is_timed looks at the first 20 lines, no further
                return
            timed, lines, pending = _is_timed(pending), pending, []
        log.extend(_split_times(lines) if timed else [(None, ln) for ln in lines])

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
            add([part.splitlines()[0] for part in parts])
        if carry:
            add(carry.splitlines())
    if timed is None:
        log.extend(_timed(pending))
    return log


def texts(lines: Sequence[TimedLine]) -> Sequence[str]:
    """The text of each line: a view of a ``ConsoleLog`` (no copy), else a list."""
    if isinstance(lines, ConsoleLog):
        return lines.texts()
    return [text for _, text in lines]
