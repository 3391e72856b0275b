"""GDB over GDB/MI against QEMU's gdbstub: one process, one inbox, typed results.

Two layers, as pygdbmi has them, wrapped once so nothing else in patchscope sees
pygdbmi's untyped dicts:

* pure: ``parse_record`` turns one MI line into a ``Record`` (pygdbmi's parser does
  the MI syntax); ``stop_from_record``, ``breakpoint_from_mi``, ``parse_registers``,
  ``parse_int`` and ``Inbox`` (the one place records are dispatched) work on
  recorded lines as well as live ones.
* process: ``Gdb`` spawns ``gdb --interpreter=mi3`` in its own session, writes
  commands with MI tokens, reads every line GDB prints, tees it (timestamped,
  flushed) into the transcript and feeds it to the ``Inbox``.

Why not ``pygdbmi.GdbController``: its ``write()`` returns whatever was ready,
including the *next* ``*stopped`` (dropping it left the guest halted and looking
hung); it waits 0.2 s of silence after every command; it cannot start GDB in a
process group of its own; ``exit()`` waits on GDB without a limit; and it keeps
no raw lines for a transcript. Here every line is read in one place, results are
matched by token, and stops wait in order until ``wait_stop`` takes them.

Connecting: GDB 13 has no ``unix:`` prefix for ``target remote``: any name with a
``:`` is taken for ``host:port`` (``unix::/p`` fails with "cannot resolve name").
A plain path that ``stat``\\s as a socket is opened as a unix-domain socket
(gdb/serial.c), so ``-target-select remote /abs/path`` once the socket exists.

``Gdb`` implements ``framework.debugger.contract.Debugger``; its values
(``Stop``, ``Breakpoint``) and errors (``DebuggerError`` with the MI command and
GDB's message, ``DebuggerTimeout``) are the contract's. Beyond it, GDB's own:
symbols (``load_symbols``, ``evaluate``), ``finish``, ``hit_count``, ``console``.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

from pygdbmi.gdbmiparser import parse_response

from ..errors import ToolMissingError
from .contract import DEFAULT_REGISTERS, Breakpoint, DebuggerDied, DebuggerError, DebuggerTimeout, Stop

T = TypeVar("T")

# An MI value: a C string, a list or a tuple of results (GDB manual, "GDB/MI Output Syntax").
MiValue = str | list["MiValue"] | dict[str, "MiValue"]

# How long a target that went away may take to be reported with a *stopped before
# wait_stop reports it "disconnected"; GDB prints that *stopped in the same breath.
DISCONNECT_GRACE = 0.5
# The longest one read waits before the waiting loop looks at its state again.
POLL = 0.1
# Teardown: how long GDB gets to exit after -gdb-exit, and after SIGTERM, before SIGKILL.
EXIT_GRACE = 2.0
TERM_GRACE = 2.0

# Settings made right after GDB starts. mi-async on: GDB keeps reading commands
# while the target runs, so -exec-interrupt works and a command that needs a
# stopped target fails at once instead of waiting for the next stop.
SETTINGS = (
    "-gdb-set mi-async on",
    "-gdb-set pagination off",
    "-gdb-set confirm off",
    "-gdb-set print pretty off",
    "-gdb-set auto-load off",
    "-gdb-set architecture i386:x86-64",
)


# --- the pure layer -----------------------------------------------------------------------------

# The first character of an MI output record (after its token) says what it is.
_KINDS = {"^": "result", "*": "exec", "+": "status", "=": "notify",
          "~": "console", "@": "target", "&": "log"}
_TOKEN = re.compile(r"^(\d*)(.)")


@dataclass(frozen=True)
class Record:
    """One line of GDB/MI output.

    kind: "result" (^), "exec" (*), "status" (+), "notify" (=), "console" (~),
    "target" (@), "log" (&), "prompt" ("(gdb)"), or "output" (not MI: GDB's stderr
    or a line MI could not parse).
    cls: the result or async class ("done", "error", "stopped", "breakpoint-modified" …).
    """

    kind: str
    cls: str | None
    token: int | None
    results: Mapping[str, MiValue]
    text: str                       # a stream record's text; the line itself for "output"
    line: str


def mi_value(value: object) -> MiValue:
    """pygdbmi's parsed value, checked and typed."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [mi_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): mi_value(v) for k, v in value.items()}
    raise ValueError(f"not an MI value: {value!r}")


def parse_record(line: str) -> Record:
    """Parse one line of MI output (without its newline)."""
    line = line.rstrip("\r\n")
    if line.strip() == "(gdb)":
        return Record("prompt", None, None, {}, "", line)
    match = _TOKEN.match(line)
    kind = _KINDS.get(match.group(2), "output") if match else "output"
    if kind == "output":
        return Record("output", None, None, {}, line, line)
    try:
        parsed = parse_response(line)
    except Exception:       # noqa: BLE001 - a line pygdbmi cannot parse is kept, as output
        return Record("output", None, None, {}, line, line)
    ptype = parsed.get("type")
    if kind in ("console", "target", "log"):
        if ptype != kind:
            return Record("output", None, None, {}, line, line)
        payload = parsed.get("payload")
        return Record(kind, None, None, {}, payload if isinstance(payload, str) else "", line)
    if kind == "status":       # pygdbmi has no pattern for "+" records; keep the text
        rest = line[match.end(1) + 1:] if match else line
        return Record(kind, rest.split(",", 1)[0], int(match.group(1)) if match and match.group(1) else None,
                      {}, rest, line)
    if ptype not in ("result", "notify"):
        return Record("output", None, None, {}, line, line)
    payload = parsed.get("payload")
    try:
        results = mi_value(payload) if payload is not None else {}
    except ValueError:
        return Record("output", None, None, {}, line, line)
    if not isinstance(results, dict):
        results = {}
    message = parsed.get("message")
    token = parsed.get("token")
    return Record(kind, str(message) if message is not None else None,
                  token if isinstance(token, int) else None, results, "", line)


def parse_int(text: str) -> int:
    """An integer as GDB prints it: ``0x1f``, ``-0x1``, ``31``, or ``0xffffffff81000000 <startup_64>``."""
    word = text.strip().split(None, 1)[0] if text.strip() else ""
    try:
        if word.lower().lstrip("-").startswith("0x"):
            return int(word, 16)
        return int(word, 10)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _get(results: Mapping[str, MiValue], key: str) -> str | None:
    value = results.get(key)
    return value if isinstance(value, str) else None


def _get_int(results: Mapping[str, MiValue], key: str) -> int | None:
    value = _get(results, key)
    if value is None:
        return None
    try:
        return parse_int(value)
    except ValueError:
        return None


def _get_map(results: Mapping[str, MiValue], key: str) -> Mapping[str, MiValue]:
    value = results.get(key)
    return value if isinstance(value, dict) else {}


def stop_from_record(record: Record) -> Stop:
    """The ``Stop`` of a ``*stopped`` record; ValueError for any other record.

    GDB's reason as it says it ("unknown" when it gives none: the stop it reports
    on connecting), the frame's address and function, ``bkptno``, ``signal-name``.
    """
    if record.kind != "exec" or record.cls != "stopped":
        raise ValueError(f"not a *stopped record: {record.line}")
    r = record.results
    frame = _get_map(r, "frame")
    func = _get(frame, "func")
    return Stop(reason=_get(r, "reason") or "unknown", address=_get_int(frame, "addr"),
                function=None if func in (None, "??") else func, breakpoint=_get_int(r, "bkptno"),
                signal=_get(r, "signal-name"), raw=dict(r))


def breakpoint_from_mi(bkpt: Mapping[str, MiValue], location: str | None = None) -> Breakpoint:
    """The ``Breakpoint`` of a ``bkpt={…}`` tuple; ``location``: what was asked for, when known."""
    number = _get_int(bkpt, "number")
    if number is None:
        raise ValueError(f"breakpoint without a number: {bkpt!r}")
    return Breakpoint(number=number, address=_get_int(bkpt, "addr"),
                      location=location or _get(bkpt, "original-location") or _get(bkpt, "at") or "",
                      hardware=(_get(bkpt, "type") or "").startswith("hw"),
                      temporary=_get(bkpt, "disp") == "del")


def parse_registers(results: Mapping[str, MiValue], names_by_number: Mapping[int, str]) -> dict[str, int]:
    """``register-values=[{number=,value=}…]`` of ``-data-list-register-values x`` → {name: value}."""
    values = results.get("register-values")
    out: dict[str, int] = {}
    if not isinstance(values, list):
        return out
    for item in values:
        if not isinstance(item, dict):
            continue
        number, value = _get_int(item, "number"), _get(item, "value")
        if number is None or value is None or number not in names_by_number:
            continue
        out[names_by_number[number]] = parse_int(value)
    return out


def parse_register_names(results: Mapping[str, MiValue]) -> dict[str, int]:
    """``register-names=[…]`` → {name: number}; GDB leaves gaps as empty names."""
    names = results.get("register-names")
    if not isinstance(names, list):
        return {}
    return {name: i for i, name in enumerate(names) if isinstance(name, str) and name}


def parse_memory(results: Mapping[str, MiValue]) -> bytes:
    """``memory=[{begin=,offset=,end=,contents=}…]`` of ``-data-read-memory-bytes`` → the bytes, in order."""
    blocks = results.get("memory")
    data = b""
    if isinstance(blocks, list):
        for block in blocks:
            if isinstance(block, dict):
                data += bytes.fromhex(_get(block, "contents") or "")
    return data


def error_message(record: Record) -> str:
    """GDB's message in an ``^error`` record."""
    return _get(record.results, "msg") or record.line


def mi_quote(text: str) -> str:
    """A C string for an MI argument."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class Inbox:
    """Every record GDB prints goes through ``feed``, in order, and nothing is dropped.

    Results wait by token until their command takes them; ``*stopped`` records wait,
    in order, until ``take_stop`` takes the first one not yet taken; stream output
    is kept since the last ``mark`` (the start of the current command); notify and
    other async records are kept in ``events`` (the latest ``max_events``).
    """

    def __init__(self, max_events: int = 10000) -> None:
        self.results: dict[int, Record] = {}
        self.stops: deque[Stop] = deque()
        self.streams: list[Record] = []
        self.events: deque[Record] = deque(maxlen=max_events)
        self.running = False
        self.target_exited = False
        self.disconnect: Record | None = None     # =thread-group-exited while running, no *stopped yet
        self.stopped_count = 0
        self.untokened_results: deque[Record] = deque(maxlen=100)

    def feed(self, line: str) -> Record:
        record = parse_record(line)
        self.dispatch(record)
        return record

    def dispatch(self, record: Record) -> None:
        if record.kind == "result":
            if record.cls == "running":     # ^running comes before *running
                self.running = True
            if record.token is not None:
                self.results[record.token] = record
            else:
                self.untokened_results.append(record)
        elif record.kind == "exec":
            self.events.append(record)
            if record.cls == "running":
                self.running = True
            elif record.cls == "stopped":
                self.running = False
                self.disconnect = None
                self.stopped_count += 1
                self.stops.append(stop_from_record(record))
        elif record.kind in ("console", "target", "log", "output"):
            self.streams.append(record)
        elif record.kind != "prompt":
            self.events.append(record)
            if record.cls == "thread-group-exited":
                # The remote end went away (QEMU exited). When QEMU says so (a W packet),
                # GDB follows with *stopped,reason="exited-normally"; when the socket just
                # breaks it prints no *stopped at all, and take_disconnect stands in.
                self.target_exited = True
                if self.running:
                    self.disconnect = record

    def mark(self) -> None:
        """A command starts: its stream output is what arrives from now on."""
        self.streams.clear()

    def take_result(self, token: int) -> Record | None:
        return self.results.pop(token, None)

    def take_stop(self) -> Stop | None:
        return self.stops.popleft() if self.stops else None

    def take_disconnect(self) -> Stop | None:
        """A "disconnected" stop for a target that went away while running without a *stopped."""
        record, self.disconnect = self.disconnect, None
        if record is None:
            return None
        self.running = False
        self.stopped_count += 1
        return Stop(reason="disconnected", address=None, function=None, breakpoint=None, signal=None,
                    raw={"record": record.line})

    def discard_stops(self) -> list[Stop]:
        """The stops nobody took; called before resuming, when they can no longer be the answer."""
        stale = list(self.stops)
        self.stops.clear()
        return stale

    def text(self, kinds: Iterable[str] = ("console",)) -> str:
        wanted = set(kinds)
        return "".join(r.text for r in self.streams if r.kind in wanted)


def replay(lines: Iterable[str], inbox: Inbox | None = None) -> Inbox:
    """Feed recorded MI lines (a transcript's received lines) through an ``Inbox``."""
    box = inbox if inbox is not None else Inbox()
    for line in lines:
        box.feed(line)
    return box


def transcript_received(lines: Iterable[str]) -> list[str]:
    """The MI lines GDB sent, from a transcript (``<elapsed> <- <line>``)."""
    out = []
    for line in lines:
        fields = line.rstrip("\n").lstrip().split(" ", 2)
        if len(fields) >= 2 and fields[1] == "<-":
            out.append(fields[2] if len(fields) == 3 else "")
    return out


# --- the process --------------------------------------------------------------------------------

class Gdb:
    """One GDB process speaking GDB/MI, for one gdbstub socket.

    ``with Gdb(socket, transcript, symbols) as gdb: gdb.connect(); …``: entering
    spawns GDB, ``connect`` loads ``symbols`` (an ELF; None: addresses only) and
    connects; leaving detaches and tears GDB down on every path. ``timeout``
    bounds each command and the wait for the socket; ``alive``, a callable returning
    False once QEMU died, ends that wait early.
    """

    def __init__(self, socket: Path, transcript: Path, symbols: Path | None = None, *, gdb: str = "gdb",
                 timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> None:
        self.socket = Path(socket)
        self.symbols = Path(symbols) if symbols is not None else None
        self._target_alive = alive              # False: QEMU is gone, stop waiting for its socket
        self._transcript_path = Path(transcript)
        self.gdb = gdb
        self.timeout = timeout
        self.inbox = Inbox()
        self._connected = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None
        self._buf = b""
        self._eof = False
        self._token = 0
        self._t0 = time.monotonic()
        self._register_numbers: dict[str, int] = {}
        self._tmpdir: Path | None = None
        self._symbols: Path | None = None

    # lifecycle ---------------------------------------------------------------------------------
    @property
    def transcript_path(self) -> Path:
        return self._transcript_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def connected(self) -> bool:
        """Connected to a target that has not gone away (as far as GDB has told us)."""
        return self._connected and not self.inbox.target_exited

    def start(self) -> None:
        """Spawn ``gdb --interpreter=mi3 -nx -q`` in its own session and make its settings."""
        if self._proc is not None:
            raise DebuggerError("start", message="already started")
        path = shutil.which(self.gdb)
        if path is None:
            raise ToolMissingError(self.gdb, "gdb")
        argv = [path, "--interpreter=mi3", "-nx", "-q"]
        self._transcript_path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole session (closed in close()); every line is flushed as it goes.
        self._log = open(self._transcript_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._t0 = time.monotonic()
        self._note(f"{time.strftime('%Y-%m-%d %H:%M:%S')} spawn {' '.join(argv)}")
        try:
            # Its own session: Ctrl-C on the terminal reaches patchscope, which tears GDB
            # down; GDB itself never sees it. stderr joins stdout so ordering is kept.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, bufsize=0, start_new_session=True,
                                          env=dict(os.environ, LC_ALL="C"))
        except OSError as err:
            raise DebuggerError("start", " ".join(argv), str(err)) from err
        self._note(f"pid {self._proc.pid}")
        try:
            for setting in SETTINGS:
                self._command(setting, what="start")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Detach if connected, ``-gdb-exit``, then SIGTERM and SIGKILL; safe to call twice."""
        proc = self._proc
        if proc is None:
            if self._log is not None:
                self._log.close()
                self._log = None
            return
        try:
            if proc.poll() is None and self.connected:
                try:
                    self._pump(time.monotonic())
                    if self.inbox.running:
                        self.interrupt(timeout=3.0)
                    self.detach(timeout=3.0)
                except DebuggerError as err:
                    self._note(f"teardown: {err}")
            if proc.poll() is None:
                try:
                    self._send("-gdb-exit")
                    deadline = time.monotonic() + EXIT_GRACE
                    while proc.poll() is None and time.monotonic() < deadline:
                        self._pump(min(deadline, time.monotonic() + 0.1))
                    # What GDB printed just before it exited ("^exit") may still be in the pipe: read it (and
                    # its end), so the transcript is whole however the two processes were scheduled.
                    end = time.monotonic() + 1.0
                    while proc.poll() is not None and not self._eof and time.monotonic() < end:
                        self._pump(time.monotonic() + 0.05)
                except DebuggerError as err:
                    self._note(f"teardown: {err}")
        finally:
            self._kill(proc)
            self._note(f"gdb exited with status {proc.returncode}")
            self._proc = None
            self._connected = False
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            if self._log is not None:
                self._log.close()
                self._log = None

    # symbols and the target ------------------------------------------------------------------
    def load_symbols(self, elf: Path) -> None:
        """``file`` the ELF: its symbols, and its sections for GDB's address lookups."""
        path = Path(elf).resolve()
        if not path.is_file():
            raise DebuggerError(f"load symbols from {elf}", message="no such file")
        self._command(f"-file-exec-and-symbols {mi_quote(str(path))}", what=f"load symbols from {elf}")
        self._symbols = path

    def connect(self) -> Stop | None:
        """Load the symbols (once), then ``target remote`` over the socket, waiting up to ``timeout`` for it.

        Returns the stop GDB reports on connecting (QEMU halts the guest for a new
        debugger), or None if none came.
        """
        path = os.path.abspath(self.socket)
        what = f"connect to {path}"
        if ":" in path or any(c.isspace() for c in path):
            # GDB takes a name with ':' for host:port, and passes quotes through.
            raise DebuggerError(what, message="GDB cannot open a socket path with ':' or white space")
        if self.symbols is not None and self._symbols != self.symbols.resolve():
            self.load_symbols(self.symbols)
        timeout, alive = self.timeout, self._target_alive
        deadline = time.monotonic() + timeout
        command = f"-target-select remote {path}"
        self._pump(time.monotonic())
        self.inbox.discard_stops()          # nothing from an earlier target answers for this one
        self.inbox.target_exited = False
        last = "the socket does not exist"
        while True:
            if alive is not None and not alive():
                raise DebuggerError(what, message="QEMU exited before GDB could connect")
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat.S_ISSOCK(mode):
                raise DebuggerError(what, message="not a unix socket")
            if mode is not None:
                try:
                    self._command(command, timeout=max(deadline - time.monotonic(), 1.0), what=what)
                    break
                except DebuggerTimeout:
                    raise
                except DebuggerError as err:
                    # A socket QEMU has bound but not yet listens on, or one left
                    # over from an earlier QEMU: retry until the deadline.
                    if "refused" not in (err.message or "") and "No such file" not in (err.message or ""):
                        raise
                    last = err.message or str(err)
            if time.monotonic() >= deadline:
                raise DebuggerError(what, command, f"{last} (waited {timeout:g} s)")
            time.sleep(0.05)
        self._connected = True
        self._register_numbers = {}
        # GDB asks the stub why the target stopped and prints that *stopped before ^connected.
        self._pump(time.monotonic())
        return self.inbox.take_stop()

    def detach(self, timeout: float | None = None) -> None:
        """Detach; QEMU removes GDB's breakpoints and lets the guest run on."""
        if not self.connected:
            return
        self._command("-target-detach", timeout=timeout, what="detach")
        self._connected = False

    # breakpoints -----------------------------------------------------------------------------
    def break_at(self, location: str | int, *, hardware: bool = False, temporary: bool = False) -> Breakpoint:
        """A breakpoint at a symbol, ``*0xaddr``, or an int address.

        ``hardware=True`` (``-break-insert -h``) never writes guest memory; under KVM a
        software breakpoint is an int3 in the guest's text. Under TCG neither touches it.
        """
        where = f"*{location:#x}" if isinstance(location, int) else location
        args = ["-break-insert"]
        if temporary:
            args.append("-t")
        if hardware:
            args.append("-h")
        args.append(mi_quote(where))
        result = self._command(" ".join(args), what=f"break at {where}")
        return breakpoint_from_mi(_get_map(result.results, "bkpt"), where)

    def delete(self, bp: Breakpoint) -> None:
        self._command(f"-break-delete {bp.number}", what=f"delete breakpoint {bp.number} at {bp.location}")

    def hit_count(self, bp: Breakpoint) -> int:
        """How often GDB has seen ``bp`` hit (``times`` of ``-break-info``)."""
        result = self._command(f"-break-info {bp.number}", what=f"hit count of breakpoint {bp.number}")
        body = _get_map(result.results, "BreakpointTable").get("body")
        for entry in body if isinstance(body, list) else []:
            # body=[bkpt={…}]: pygdbmi drops the "bkpt=" of a result inside a list
            bkpt = (_get_map(entry, "bkpt") or entry) if isinstance(entry, dict) else {}
            if _get_int(bkpt, "number") == bp.number:
                return _get_int(bkpt, "times") or 0
        raise DebuggerError(f"hit count of breakpoint {bp.number}", message="GDB does not list it")

    # execution -------------------------------------------------------------------------------
    def cont(self) -> None:
        """``-exec-continue``; does not wait (``wait_stop`` does)."""
        self._resume("-exec-continue", "continue")

    def wait_stop(self, timeout: float) -> Stop:
        """The first stop not yet taken, waiting up to ``timeout`` seconds for one."""
        deadline = time.monotonic() + timeout
        gone_since: list[float] = []

        def take() -> Stop | None:
            stop = self.inbox.take_stop()
            if stop is None and self.inbox.disconnect is not None:
                # Give GDB a moment to print the *stopped that may follow; then stand in for it.
                gone_since.append(time.monotonic())
                if gone_since[-1] - gone_since[0] >= DISCONNECT_GRACE:
                    stop = self.inbox.take_disconnect()
            elif stop is None and not self.inbox.running and self._proc is not None:
                # Stopped, and its stop already taken: no stop can come without a resume.
                raise DebuggerError("wait for a stop", message="the target is not running and no stop is pending")
            return stop

        return self._wait_for(take, deadline, "wait for a stop", "*stopped record", timeout)

    def interrupt(self, timeout: float | None = None) -> Stop:
        """Stop the running target and return the stop (a breakpoint hit that raced the interrupt wins)."""
        self._pump(time.monotonic())
        stop = self.inbox.take_stop()
        if stop is not None:
            return stop
        if not self.inbox.running:
            raise DebuggerError("interrupt", message="the target is not running")
        wait = self.timeout if timeout is None else timeout
        try:
            self._command("-exec-interrupt", timeout=wait, what="interrupt")
        except DebuggerTimeout:
            raise
        except DebuggerError as err:
            # The target stopped on its own between our look and GDB's: take that stop.
            self._note(f"interrupt: {err}")
        return self.wait_stop(wait)

    def finish(self, timeout: float) -> Stop:
        """Run until the current function returns (``-exec-finish``); another breakpoint may stop it first.

        GDB labels the stop "function-finished" only for a function with debug info
        (``finish_command_fsm::should_stop`` needs a symtab function); for a kernel with
        ELF symbols only, the stop at the return address comes without a reason. Every
        other stop (breakpoint, signal, disconnect) has one, so a reasonless stop after
        ``-exec-finish`` is the finish, and is returned as "function-finished" (``raw`` unchanged).
        """
        self._resume("-exec-finish", "finish")
        stop = self.wait_stop(timeout)
        if stop.reason == "unknown" and "reason" not in stop.raw:
            stop = replace(stop, reason="function-finished")
        return stop

    # registers and memory --------------------------------------------------------------------
    def registers(self, names: Sequence[str] = DEFAULT_REGISTERS) -> dict[str, int]:
        numbers = self._numbers(names, "read registers")
        result = self._command("-data-list-register-values x " + " ".join(str(n) for n in numbers.values()),
                               what="read registers")
        values = parse_registers(result.results, {n: name for name, n in numbers.items()})
        missing = [n for n in names if n not in values]
        if missing:
            raise DebuggerError("read registers", message=f"GDB gave no value for {', '.join(missing)}")
        return {name: values[name] for name in names}

    def set_register(self, name: str, value: int) -> None:
        self._numbers([name], f"set {name}")
        self._command(f"-data-evaluate-expression {mi_quote(f'${name} = {value:#x}')}",
                      what=f"set {name}")

    def read_memory(self, address: int, length: int) -> bytes:
        """``length`` bytes at ``address`` via ``dump binary memory``; exactly that many, or DebuggerError."""
        if length < 0:
            raise ValueError(f"negative length {length}")
        if length == 0:
            return b""
        what = f"read {length} bytes at {address:#x}"
        if self._tmpdir is None:
            # GDB's dump takes its file name up to the first blank, quotes and all.
            base = tempfile.gettempdir()
            self._tmpdir = Path(tempfile.mkdtemp(prefix="patchscope-gdb-",
                                                 dir=base if not any(c.isspace() for c in base) else "/tmp"))
        out = self._tmpdir / "memory.bin"
        out.unlink(missing_ok=True)
        try:
            self.console(f"dump binary memory {out} {address:#x} {address + length:#x}", what=what,
                         timeout=max(self.timeout, length / 2_000_000))
            data = out.read_bytes() if out.exists() else b""
        finally:
            out.unlink(missing_ok=True)
        if len(data) != length:
            raise DebuggerError(what, message=f"got {len(data)} bytes")
        return data

    def write_memory(self, address: int, data: bytes) -> None:
        if not data:
            return
        self._command(f"-data-write-memory-bytes {address:#x} {data.hex()}",
                      what=f"write {len(data)} bytes at {address:#x}")

    def read_u64(self, address: int) -> int:
        what = f"read u64 at {address:#x}"
        result = self._command(f"-data-read-memory-bytes {address:#x} 8", what=what)
        data = parse_memory(result.results)
        if len(data) != 8:
            raise DebuggerError(what, message=f"got {len(data)} bytes")
        return int.from_bytes(data, "little")

    def evaluate(self, expression: str) -> str:
        """GDB's value of ``expression``, as GDB prints it."""
        what = f"evaluate {expression}"
        try:
            result = self._command(f"-data-evaluate-expression {mi_quote(expression)}", what=what)
        except DebuggerError as err:
            if self._symbols is not None and (err.message or "").startswith("No symbol table is loaded"):
                # An ELF with ELF symbols but no debug info: GDB answers any unknown name so.
                raise DebuggerError(what, err.command, f"no symbol in {expression!r} is known to GDB "
                               f"({self._symbols.name} has ELF symbols only; GDB said: {err.message})") from None
            raise
        return _get(result.results, "value") or ""

    def console(self, command: str, timeout: float | None = None, *, what: str | None = None) -> str:
        """A CLI command through ``-interpreter-exec console``; returns what it printed on the console."""
        self._command(f"-interpreter-exec console {mi_quote(command)}", timeout=timeout,
                      what=what or f"run '{command}'")
        return self.inbox.text()

    # internals -------------------------------------------------------------------------------
    def _numbers(self, names: Sequence[str], what: str) -> dict[str, int]:
        if not self._register_numbers:
            result = self._command("-data-list-register-names", what="list register names")
            self._register_numbers = parse_register_names(result.results)
        unknown = [n for n in names if n not in self._register_numbers]
        if unknown:
            raise DebuggerError(what, message=f"no register named {', '.join(unknown)}")
        return {n: self._register_numbers[n] for n in names}

    def _resume(self, command: str, what: str) -> None:
        self._pump(time.monotonic())
        for stale in self.inbox.discard_stops():
            self._note(f"{what}: dropping a stop nobody waited for: {stale.describe()}")
        self._command(command, what=what)

    def _command(self, command: str, timeout: float | None = None, what: str | None = None) -> Record:
        """Send one MI command with a fresh token and wait for its result record."""
        self._token += 1
        token = self._token
        self.inbox.mark()
        self._send(f"{token}{command}")
        wait = self.timeout if timeout is None else timeout
        record = self._wait_for(lambda: self.inbox.take_result(token), time.monotonic() + wait,
                                what or command, "result", wait, command)
        if record.cls == "error":
            raise DebuggerError(what or command, command, error_message(record))
        return record

    def _wait_for(self, take: Callable[[], T | None], deadline: float, what: str, waited_for: str,
                  timeout: float, command: str | None = None) -> T:
        while True:
            item = take()
            if item is not None:
                return item
            if self._eof or self._proc is None:
                status = None
                if self._proc is not None:
                    try:
                        status = self._proc.wait(1.0)
                    except subprocess.TimeoutExpired:
                        pass
                pid = self._proc.pid if self._proc is not None else "?"
                raise DebuggerDied(what, command, f"gdb (pid {pid}) exited (status {status}) while waiting for "
                                                  f"{waited_for}")
            if time.monotonic() >= deadline:
                raise DebuggerTimeout(what, waited_for, timeout, command)
            self._pump(deadline)

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise DebuggerDied("send", line, "gdb is not running")
        self._log_line("->", line)
        try:
            self._proc.stdin.write(line.encode() + b"\n")
        except (BrokenPipeError, OSError) as err:
            raise DebuggerError("send", line, f"gdb is gone ({err})") from err

    def _pump(self, deadline: float) -> None:
        """Feed every line GDB printed; wait for the first bytes until ``deadline``, at most ``POLL``."""
        if self._proc is None or self._proc.stdout is None or self._eof:
            return
        fd = self._proc.stdout.fileno()
        wait = min(max(deadline - time.monotonic(), 0.0), POLL)
        while True:
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self._eof = True
                if self._buf:
                    self._receive(self._buf)
                    self._buf = b""
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for raw in lines:
                self._receive(raw)
            wait = 0.0      # take everything already there, then return

    def _receive(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self._log_line("<-", line)
        self.inbox.feed(line)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._note(f"gdb (pid {proc.pid}) outlived {signal.Signals(sig).name}")
        if proc.poll() is None:
            proc.wait()

    def _log_line(self, direction: str, line: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.monotonic() - self._t0:10.3f} {direction} {line}\n")
            self._log.flush()

    def _note(self, text: str) -> None:
        self._log_line("--", text)
