"""The console: splitting a byte stream into lines, the timed log, and the monitor loop.

``LineSplitter`` and ``parse_log`` are pure; ``monitor`` is the edge that reads
QEMU's console until the run ends, writing every line to ``console.log`` as it
arrives (with the host time since QEMU started), so nothing is lost when a
run crashes, hangs or is interrupted.

console.log format, one guest line per line::

       5.123 | [    1.886645] Run /init as init process

``parse_log`` reads that format back, and also plain logs (no host times).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from . import crashes, stages
from .initramfs import MARKER_DONE

MAX_LINE = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]")
_TIMED = re.compile(r"^\s*(\d+\.\d{3}) \| ?(.*)$")

TimedLine = tuple[float | None, str]
EndReason = Literal["exit", "fatal", "timeout", "silence", "done", "interrupted", "log-end"]


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
    lines = text.splitlines()
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


# After a fatal crash, keep reading until the console has been quiet this long,
# for the rest of the report (natively panic=-1 makes QEMU exit at once; Xen
# with noreboot goes silent), but never longer than FATAL_CAP.
FATAL_GRACE = 2.0
FATAL_CAP = 10.0
# After the success marker, wait this long for the power-off before stopping QEMU.
DONE_GRACE = 15.0


def monitor(read: Callable[[float], bytes | None], log: TextIO, started: float, *,
            timeout: float, silence: float, exitcode: Callable[[], int | None],
            on_line: Callable[[float, str], None] | None = None,
            held: Callable[[], bool] | None = None,
            touched: Callable[[], float] | None = None,
            fatal: threading.Event | None = None,
            marker: threading.Event | None = None) -> tuple[list[TimedLine], Ending]:
    """Read the console until the run ends; returns every line and how it ended.

    ``read(t)`` returns bytes (b"" if none within t seconds) or None at EOF.
    Times are ``time.monotonic()`` based; ``started`` is QEMU's launch.
    While ``held()`` is true (GDB holds the guest at a breakpoint) silence does not count, and
    ``touched()`` (when the debugger last stopped the guest) restarts it: a guest stopped
    thousands of times, slowly, is busy, not hung.
    ``fatal`` and ``marker`` are set on the first fatal crash line and the success marker.
    """
    splitter = LineSplitter()
    lines: list[TimedLine] = []
    last_output = time.monotonic()
    fatal_at: float | None = None
    done_at: float | None = None

    def take(text: str) -> None:
        nonlocal fatal_at, done_at
        now = time.monotonic()
        lines.append((now - started, text))
        log.write(format_line(now - started, text))
        if on_line is not None:
            on_line(now - started, text)
        if fatal_at is None and crashes.is_fatal_line(text):
            fatal_at = now
            if fatal is not None:
                fatal.set()
        if done_at is None and MARKER_DONE in text and stages.match_stage(text) is not None:
            done_at = now
            if marker is not None:
                marker.set()

    def finish(ending: Ending) -> tuple[list[TimedLine], Ending]:
        rest = splitter.flush()
        if rest is not None:
            take(rest)
        log.flush()
        return lines, ending

    while True:
        now = time.monotonic()
        if held is not None and held():
            last_output = now
        if touched is not None:
            last_output = max(last_output, touched())
        ends: list[tuple[float, EndReason]] = [(started + timeout, "timeout"),
                                               (last_output + silence, "silence")]
        if fatal_at is not None:
            ends.append((min(last_output + FATAL_GRACE, fatal_at + FATAL_CAP), "fatal"))
        if done_at is not None:
            ends.append((done_at + DONE_GRACE, "done"))
        at, reason = min(ends)
        if now >= at:
            return finish(Ending(reason, now - started,
                                 silence=silence if reason == "silence" else None))
        data = read(min(at - now, 0.5))
        if data is None:
            return finish(Ending("exit", time.monotonic() - started, exitcode()))
        if data:
            last_output = time.monotonic()
            for text in splitter.feed(data):
                take(text)
            log.flush()


class ConsoleThread(threading.Thread):
    """``monitor`` in a background thread, so the console is drained and logged
    while the main thread drives GDB. Events let the driver wait for the
    success marker or notice a fatal crash; ``hold()`` stops the silence clock
    while GDB keeps the guest stopped."""

    def __init__(self, read: Callable[[float], bytes | None], log: TextIO, started: float, *,
                 timeout: float, silence: float, exitcode: Callable[[], int | None],
                 on_line: Callable[[float, str], None] | None = None) -> None:
        super().__init__(name="patchscope-console", daemon=True)
        self._read, self._log, self._t0 = read, log, started
        self.started = started              # QEMU's launch, time.monotonic(): the clock of every line
        self._timeout, self._silence, self._exitcode = timeout, silence, exitcode
        self._on_line = on_line
        self._held = threading.Event()
        self._touched = 0.0                 # when the debugger last stopped the guest (hold)
        self.marker = threading.Event()     # the success marker was printed
        self.fatal = threading.Event()      # a fatal crash line was printed
        self.finished = threading.Event()
        self.lines: list[TimedLine] = []
        self.ending: Ending | None = None
        self.error: BaseException | None = None

    def hold(self) -> None:
        self._held.set()
        self._touched = time.monotonic()

    def release(self) -> None:
        self._held.clear()

    def run(self) -> None:
        try:
            self.lines, self.ending = monitor(self._read, self._log, self._t0, on_line=self._on_line,
                                              held=self._held.is_set, touched=lambda: self._touched,
                                              timeout=self._timeout,
                                              silence=self._silence, exitcode=self._exitcode,
                                              fatal=self.fatal, marker=self.marker)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
        finally:
            self.finished.set()

    def result(self) -> tuple[list[TimedLine], Ending]:
        """Wait for the end of the run (interruptible by Ctrl-C)."""
        while not self.finished.wait(0.2):
            pass
        if self.error is not None:
            raise self.error
        assert self.ending is not None
        return self.lines, self.ending


def read_console_file(path: Path) -> list[TimedLine]:
    return parse_log(path.read_text(errors="replace"))


def texts(lines: Sequence[TimedLine]) -> list[str]:
    return [text for _, text in lines]
