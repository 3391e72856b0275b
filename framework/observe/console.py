"""The console monitor: reads QEMU's console until the run ends. The edge.

``monitor`` writes every line to ``console.log`` as it arrives (with the host
time since QEMU started; the format is in :mod:`framework.analysis.console_log`),
so nothing is lost when a run crashes, hangs or is interrupted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..analysis import crashes, stages
from ..analysis.console_log import Ending, EndReason, LineSplitter, TimedLine, format_line
from ..guest.markers import MARKER_DONE

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
            marker: threading.Event | None = None,
            segment: Callable[[], int] | None = None,
            lines: list[TimedLine] | None = None) -> tuple[list[TimedLine], Ending]:
    """Read the console until the run ends; returns every line and how it ended.

    ``read(t)`` returns bytes (b"" if none within t seconds) or None at EOF.
    Times are ``time.monotonic()`` based; ``started`` is QEMU's launch.
    While ``held()`` is true (GDB holds the guest at a breakpoint) silence does not count, and
    ``touched()`` (when the debugger last stopped the guest) restarts it: a guest stopped
    thousands of times, slowly, is busy, not hung.
    ``fatal`` and ``marker`` are set on the first fatal crash line and the success marker.
    With ``segment`` (a forked run: one boot, then one guest after another from a snapshot) neither a
    crash nor the marker ends the monitor; each new value of ``segment()`` starts a new guest, whose
    crash and marker are looked for afresh. ``lines``, when given, is filled as the lines arrive.
    """
    splitter = LineSplitter()
    lines = [] if lines is None else lines
    last_output = time.monotonic()
    fatal_at: float | None = None
    done_at: float | None = None
    current = segment() if segment is not None else 0

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
        if segment is not None and segment() != current:
            current = segment()
            fatal_at = done_at = None
        if held is not None and held():
            last_output = now
        if touched is not None:
            last_output = max(last_output, touched())
        ends: list[tuple[float, EndReason]] = [(started + timeout, "timeout"),
                                               (last_output + silence, "silence")]
        if fatal_at is not None and segment is None:
            ends.append((min(last_output + FATAL_GRACE, fatal_at + FATAL_CAP), "fatal"))
        if done_at is not None and segment is None:
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
                 on_line: Callable[[float, str], None] | None = None, forked: bool = False) -> None:
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
        self.lines: list[TimedLine] = []   # filled as lines arrive
        self.ending: Ending | None = None
        self.error: BaseException | None = None
        self._forked = forked
        self._segment = 0

    def new_segment(self, quiet: float = 0.15, limit: float = 1.0) -> int:
        """A forked run's next guest starts: once the console has been quiet for ``quiet`` seconds (what the
        stopped guest printed last has arrived; at most ``limit``), its crash and marker are looked for
        afresh. Returns the index in ``lines`` of the new guest's first line."""
        assert self._forked, "new_segment() is for a console made with forked=True"
        self.wait_quiet(quiet, limit)
        self.marker.clear()
        self.fatal.clear()
        self._segment += 1
        return len(self.lines)

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Until no line has arrived for ``quiet`` seconds, at most ``limit`` seconds, or the console's end."""
        deadline = time.monotonic() + limit
        seen = len(self.lines)
        while (left := deadline - time.monotonic()) > 0 and not self.finished.is_set():
            time.sleep(min(quiet, left))
            if len(self.lines) == seen:
                return
            seen = len(self.lines)

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
                                              fatal=self.fatal, marker=self.marker, lines=self.lines,
                                              segment=(lambda: self._segment) if self._forked else None)
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


