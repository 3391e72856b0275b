"""Line splitting, the timed log format, and the monitor loop on scripted input."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

from framework.analysis.console_log import LineSplitter, format_line, parse_log
from framework.observe.console import monitor


def test_splitter_handles_crlf_partial_and_junk() -> None:
    s = LineSplitter(max_line=16)
    assert s.feed(b"hello\r\nwor") == ["hello"]
    assert s.feed(b"ld\n\x00\xff\x1b[31mred\n") == ["world", "\\x00\ufffd\x1b[31mred"]
    assert s.feed(b"x" * 40) == ["x" * 16, "x" * 16]
    assert s.flush() == "x" * 8
    assert s.flush() is None


def test_timed_log_round_trips_and_plain_logs_parse() -> None:
    text = format_line(1.5, "[    0.000000] Linux version 6.1") + format_line(12.25, "| odd | line")
    assert parse_log(text) == [(1.5, "[    0.000000] Linux version 6.1"), (12.25, "| odd | line")]
    assert parse_log("plain\nlog\n") == [(None, "plain"), (None, "log")]


def _reader(script: list[tuple[float, bytes | None]]) -> Iterator[bytes | None]:
    for delay, chunk in script:
        time.sleep(delay)
        yield chunk
    while True:
        yield None


def _run(script: list[tuple[float, bytes | None]], **kw: float) -> tuple[list[str], str]:
    chunks = _reader(script)
    def read(timeout: float) -> bytes | None:
        return next(chunks)
    log = io.StringIO()
    lines, ending = monitor(read, log, time.monotonic(), timeout=kw.get("timeout", 30),
                            silence=kw.get("silence", 30), exitcode=lambda: 0)
    assert log.getvalue().count("\n") == len(lines)
    return [t for _, t in lines], ending.reason


def test_monitor_ends_at_qemu_exit() -> None:
    lines, reason = _run([(0, b"[ 0.1] Linux version 6.1\n"), (0, b"patchscope: init done\n"), (0, None)])
    assert reason == "exit" and lines[-1] == "patchscope: init done"


def test_monitor_ends_at_silence_and_keeps_partial_line() -> None:
    state = {"calls": 0}

    def read(timeout: float) -> bytes | None:
        state["calls"] += 1
        if state["calls"] == 1:
            return b"Run /init as init process\nhalf a li"
        time.sleep(timeout)
        return b""
    log = io.StringIO()
    lines, ending = monitor(read, log, time.monotonic(), timeout=30, silence=0.3, exitcode=lambda: None)
    assert ending.reason == "silence" and ending.silence == 0.3
    assert [t for _, t in lines] == ["Run /init as init process", "half a li"]


def test_monitor_stops_soon_after_a_fatal_line_without_waiting_for_the_timeout() -> None:
    calls = {"n": 0}
    def read(timeout: float) -> bytes | None:
        calls["n"] += 1
        if calls["n"] == 1:
            return b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
        time.sleep(timeout)
        return b""
    log = io.StringIO()
    start = time.monotonic()
    _, ending = monitor(read, log, start, timeout=60, silence=60, exitcode=lambda: None)
    assert ending.reason == "fatal"
    assert ending.t < 30  # ended by the crash, long before the 60 s limits


def test_monitor_times_out() -> None:
    def read(timeout: float) -> bytes | None:
        time.sleep(min(timeout, 0.05))
        return b"still talking\n"
    _, ending = monitor(read, io.StringIO(), time.monotonic(), timeout=0.4, silence=10, exitcode=lambda: None)
    assert ending.reason == "timeout"


def test_escape_sequences_reach_clean_line_whole() -> None:
    from framework.analysis.crashes import clean_line
    [line] = LineSplitter().feed(b"\x1b[31m[    1.0] Kernel panic\x1b[0m\r\n")
    assert clean_line(line) == "Kernel panic"


def test_debugger_stops_keep_a_silent_guest_from_counting_as_hung() -> None:
    """A guest the debugger keeps stopping (thousands of short stops, no output) is busy, not hung."""
    start = time.monotonic()
    stopped_at = {"t": start}

    def read(timeout: float) -> bytes | None:
        time.sleep(min(timeout, 0.05))
        now = time.monotonic()
        if now - start < 1.0:
            stopped_at["t"] = now          # the session stopped the guest just now, and let it go
            return b""
        return b"" if now - start < 1.2 else None
    _, ending = monitor(read, io.StringIO(), start, timeout=30, silence=0.3, exitcode=lambda: 0,
                        held=lambda: False, touched=lambda: stopped_at["t"])
    assert ending.reason == "exit"          # 1 s without output, silence 0.3 s: not a hang
    # Without the stops, the same silence is a hang.
    _, ending = monitor(lambda t: (time.sleep(min(t, 0.05)), b"")[1], io.StringIO(), time.monotonic(),
                        timeout=30, silence=0.3, exitcode=lambda: 0, held=lambda: False)
    assert ending.reason == "silence"
