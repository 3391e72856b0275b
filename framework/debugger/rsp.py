"""The GDB remote serial protocol, spoken to QEMU's gdbstub directly: no GDB in between.

A patch-event trace stops the guest at every ``text_poke_early`` call of a boot
(~106,000 times). Through GDB each stop costs ~2.3 ms: to step over a breakpoint
GDB removes every breakpoint, single-steps and inserts them again, and QEMU 7.2
flushes translated code at each insert and removal. ``Rsp`` resumes from a
breakpoint with one ``s`` and one ``c`` instead: QEMU ignores its breakpoints
while single-stepping (accel/tcg/cpu-exec.c, "Singlestep overrides breakpoints"),
so no breakpoint is touched. It implements ``framework.debugger.contract.Debugger``
as ``framework.debugger.mi.Gdb`` does, so one session loop runs on either; unlike
GDB it knows no symbols: breakpoints take addresses.

Two layers:

* pure: ``frame``/``next_frame`` (packets ``$data#cs`` and acks), ``checksum``,
  ``expand``/``unescape`` (run-length and ``}`` escapes in replies),
  ``parse_stop``, ``parse_features``, ``parse_location``, ``le_bytes``, and
  ``RegisterLayout`` (the ``g`` packet's layout, from the target description
  XML via ``register_layout``);
* socket: ``Rsp`` connects to the gdbstub's unix socket (never TCP), one request
  and one reply at a time (all-stop), over a single receive buffer.

Only the last ``RING`` packets each way are kept (with monotonic timestamps) and
written to the transcript on ``close``: a trace of 100k stops is not logged.

Errors are the contract's: ``RspError``, a ``DebuggerError`` (an ``Exx`` reply, a lost
connection, a protocol error) and ``RspTimeout``, a ``DebuggerTimeout`` (no stop or reply in time).
"""

from __future__ import annotations

import os
import re
import socket as socketlib
import stat
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from .contract import DEFAULT_REGISTERS, Breakpoint, DebuggerError, DebuggerTimeout, Stop

# Packets kept for the transcript, each way.
RING = 400
# The stub's packet size when qSupported does not say (GDB's own default is smaller still).
DEFAULT_PACKET_SIZE = 0x400
# How long close() gives an interrupt and a detach of a target left running.
CLOSE_GRACE = 3.0
# Steps off a breakpoint that may end where they began (see Rsp._step_off) before giving up.
STEP_RETRIES = 1000
# The program counter's name in the x86-64 target description.
PC = "rip"

# GDB's signal numbers (include/gdb/signals.def), which stop replies carry.
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGEMT",
           8: "SIGFPE", 9: "SIGKILL", 10: "SIGBUS", 11: "SIGSEGV", 12: "SIGSYS", 13: "SIGPIPE",
           14: "SIGALRM", 15: "SIGTERM"}
SIGTRAP = 5
# QEMU writes errno values in decimal digits ("E14" is EFAULT) although GDB reads them as hex.
ERRNOS = {"E01": "EPERM", "E02": "ENOENT", "E14": "EFAULT", "E22": "EINVAL", "E34": "ERANGE"}


# --- the pure layer -----------------------------------------------------------------------------

def checksum(data: bytes) -> int:
    """The packet checksum: the sum of the bytes between ``$`` and ``#``, modulo 256."""
    return sum(data) & 0xFF


_SPECIAL = re.compile(rb"[$#}*]")


def escape(data: bytes) -> bytes:
    """``$ # } *`` as ``}`` followed by the byte XOR 0x20 (binary data in a packet)."""
    if _SPECIAL.search(data) is None:
        return data
    return _SPECIAL.sub(lambda m: b"}" + bytes((m.group()[0] ^ 0x20,)), data)


def frame(payload: bytes) -> bytes:
    """``$payload#cs``, with the payload escaped."""
    body = escape(payload)
    return b"$%s#%02x" % (body, checksum(body))


def expand(body: bytes) -> bytes:
    """Undo run-length encoding: ``c*N`` is ``c`` and ``ord(N) - 29`` more copies of it."""
    if b"*" not in body:
        return body
    out = bytearray()
    pos = 0
    while (star := body.find(b"*", pos)) >= 0:
        out += body[pos:star]
        if not out or star + 1 >= len(body):
            raise ValueError(f"bad run-length encoding at {star}: {body[:80]!r}")
        out += out[-1:] * (body[star + 1] - 29)
        pos = star + 2
    out += body[pos:]
    return bytes(out)


def unescape(body: bytes) -> bytes:
    """Undo ``}`` escaping of binary data (``qXfer`` replies)."""
    if b"}" not in body:
        return body
    out = bytearray()
    pos = 0
    while (brace := body.find(b"}", pos)) >= 0:
        if brace + 1 >= len(body):
            raise ValueError(f"escape at the end of {body[:80]!r}")
        out += body[pos:brace]
        out.append(body[brace + 1] ^ 0x20)
        pos = brace + 2
    out += body[pos:]
    return bytes(out)


class RspError(DebuggerError):
    """A DebuggerError from the remote-protocol client: its message starts ``rsp:``."""

    backend = "rsp"


class RspTimeout(DebuggerTimeout):
    """A DebuggerTimeout from the remote-protocol client."""

    backend = "rsp"


@dataclass(frozen=True)
class Frame:
    """One unit of the byte stream: a packet (``$``), a notification (``%``), an ack or junk."""

    kind: str           # "$", "%", "+", "-", or "junk"
    body: bytes         # a packet's bytes between '$' and '#', as sent (escaped, run-length encoded)
    ok: bool            # its checksum matches
    end: int            # where the next frame starts


def next_frame(buf: bytes | bytearray, pos: int = 0) -> Frame | None:
    """The frame at ``buf[pos:]``; None when there is none yet (empty, or a packet still incomplete)."""
    n = len(buf)
    if pos >= n:
        return None
    c = buf[pos]
    if c in (0x24, 0x25):                                   # '$' '%'
        hash_ = buf.find(b"#", pos + 1)
        if hash_ < 0 or hash_ + 3 > n:
            return None
        body = bytes(buf[pos + 1:hash_])
        try:
            ok = int(buf[hash_ + 1:hash_ + 3], 16) == checksum(body)
        except ValueError:
            ok = False
        return Frame(chr(c), body, ok, hash_ + 3)
    if c in (0x2B, 0x2D):                                   # '+' '-'
        return Frame(chr(c), b"", True, pos + 1)
    end = pos + 1
    while end < n and buf[end] not in (0x24, 0x25, 0x2B, 0x2D):
        end += 1
    return Frame("junk", bytes(buf[pos:end]), True, end)


def parse_features(reply: bytes) -> dict[str, str]:
    """qSupported's reply: ``PacketSize=1000;qXfer:features:read+`` → {"PacketSize": "1000", "qXfer…": "+"}."""
    out: dict[str, str] = {}
    for item in reply.decode("ascii", "replace").split(";"):
        if "=" in item:
            name, value = item.split("=", 1)
            out[name] = value
        elif item[-1:] in ("+", "-", "?"):
            out[item[:-1]] = item[-1]
    return out


@dataclass(frozen=True)
class StopReply:
    kind: str                   # "T" or "S" (a signal), "W" (exited), "X" (killed by a signal)
    code: int                   # the signal, or the exit status
    fields: Mapping[str, str]   # a T packet's n:r pairs ("thread": "01", "watch": …)


def parse_stop(packet: bytes) -> StopReply | None:
    """A stop reply (``T05thread:01;``, ``S02``, ``W00``, ``X09``); None for any other packet."""
    kind = packet[:1].decode("ascii", "replace")
    if kind not in ("T", "S", "W", "X") or len(packet) < 3:
        return None
    try:
        code = int(packet[1:3], 16)
    except ValueError:
        return None
    fields: dict[str, str] = {}
    if kind == "T":
        for item in packet[3:].decode("ascii", "replace").split(";"):
            if ":" in item:
                name, value = item.split(":", 1)
                fields[name] = value
    return StopReply(kind, code, fields)


def describe_error(reply: bytes) -> str | None:
    """``E14`` → "E14 (EFAULT)", ``E.message`` → "message"; None when the reply is no error."""
    if reply[:2] == b"E." and len(reply) > 2:
        return reply[2:].decode("utf-8", "replace")
    if len(reply) == 3 and reply[:1] == b"E" and all(c in b"0123456789abcdefABCDEF" for c in reply[1:]):
        text = reply.decode("ascii")
        name = ERRNOS.get(text)
        return f"{text} ({name})" if name else text
    return None


def parse_location(location: str | int) -> tuple[int, str]:
    """(address, location as shown) of ``0xffffffff81000000``, ``"*0x…"`` or ``"0x…"``; ValueError otherwise."""
    if isinstance(location, int):
        if not 0 <= location < 1 << 64:
            raise ValueError(f"address {location:#x} out of range")
        return location, f"*{location:#x}"
    text = location.strip()
    word = text[1:].strip() if text.startswith("*") else text
    if not word.lower().startswith("0x"):
        raise ValueError(f"{location!r} is not an address")
    try:
        address = int(word, 16)
    except ValueError:
        raise ValueError(f"{location!r} is not an address") from None
    if not 0 <= address < 1 << 64:
        raise ValueError(f"address {location!r} out of range")
    return address, location


def le_bytes(value: int, size: int) -> bytes:
    """``value`` as ``size`` little-endian bytes; negative values as two's complement."""
    bits = size * 8
    if not -(1 << (bits - 1)) <= value < 1 << bits:
        raise ValueError(f"{value:#x} does not fit in {bits} bits")
    return (value & ((1 << bits) - 1)).to_bytes(size, "little")


def hex_bytes(text: bytes) -> bytes:
    """Hex digits as bytes; ``xx`` (a value the stub does not have) reads as zero."""
    if b"x" in text:
        text = text.replace(b"x", b"0")
    return bytes.fromhex(text.decode("ascii"))


@dataclass(frozen=True)
class Register:
    name: str
    regnum: int          # what 'p'/'P' take
    bitsize: int


@dataclass(frozen=True)
class RegisterLayout:
    """The registers of a target description, by number, and where each sits in a ``g`` reply."""

    registers: tuple[Register, ...]
    architecture: str | None = None
    by_name: dict[str, Register] = field(init=False, repr=False, compare=False)
    offsets: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Register] = {}
        offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        expected = 0
        for reg in sorted(self.registers, key=lambda r: r.regnum):
            by_name.setdefault(reg.name, reg)
            # 'g' holds the registers from number 0 on, in order, without gaps: a gap ends it.
            if reg.regnum == expected and reg.bitsize % 8 == 0 and offset >= 0:
                offsets.setdefault(reg.name, (offset, reg.bitsize // 8))
                offset += reg.bitsize // 8
                expected += 1
            else:
                offset = -1
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "offsets", offsets)

    def decode(self, g: bytes | bytearray, names: Sequence[str]) -> dict[str, int]:
        """The registers ``names`` from a ``g`` reply's bytes; KeyError for a name not in ``g``."""
        out = {}
        for name in names:
            off, size = self.offsets[name]
            if off + size > len(g):
                raise KeyError(name)
            out[name] = int.from_bytes(g[off:off + size], "little")
        return out


def _xml(text: str) -> ET.Element:
    # GDB's documents use the xi: prefix without declaring its namespace, which ElementTree refuses.
    return ET.fromstring(text.replace("<xi:include", "<include").encode("utf-8"))


def register_layout(fetch: Callable[[str], str], annex: str = "target.xml") -> RegisterLayout:
    """The registers of the target description ``annex``, following ``xi:include`` documents.

    ``fetch(name)`` returns a document's text. A register without ``regnum`` takes
    the number after the previous one's (GDB's features/gdb-target.dtd).
    """
    registers: list[Register] = []
    architecture: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            raise ValueError(f"target description {name} includes itself")
        seen.add(name)
        try:
            root = _xml(fetch(name))
        except ET.ParseError as err:
            raise ValueError(f"target description {name}: {err}") from None
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
            if tag == "include":
                href = el.get("href")
                if not href:
                    raise ValueError(f"target description {name}: an include without href")
                walk(href)
            elif tag == "architecture" and el.text:
                architecture.append(el.text.strip())
            elif tag == "reg":
                reg_name, bitsize = el.get("name"), el.get("bitsize")
                if not reg_name or not bitsize:
                    raise ValueError(f"target description {name}: a reg without name or bitsize")
                regnum = el.get("regnum")
                try:
                    number = int(regnum) if regnum else (registers[-1].regnum + 1 if registers else 0)
                    registers.append(Register(reg_name, number, int(bitsize)))
                except ValueError:
                    raise ValueError(f"target description {name}: register {reg_name}: regnum {regnum!r} "
                                     f"or bitsize {bitsize!r} is not a number") from None

    walk(annex)
    return RegisterLayout(tuple(registers), architecture[0] if architecture else None)


# --- the socket ---------------------------------------------------------------------------------

class _TimedOut(Exception):
    """Nothing (complete) arrived before the deadline."""


Packet = tuple[float, bytes]


class Rsp:
    """One connection to QEMU's gdbstub; ``with Rsp(socket) as rsp: rsp.connect(); …`` closes it on every path.

    ``timeout`` bounds each request and the wait for the socket; the last packets
    go to ``transcript`` (when given) on ``close``.

    All-stop: a request is answered before the next is sent, and while the guest
    runs nothing but an interrupt may be sent (QEMU stops the guest at any byte).
    """

    def __init__(self, socket: Path, transcript: Path | None = None, timeout: float = 30.0) -> None:
        self.socket = Path(socket)
        self.timeout = timeout
        self._transcript = Path(transcript) if transcript is not None else None
        self._sock: socketlib.socket | None = None
        self._buf = bytearray()
        self._eof = False
        self._ack = True                     # until QStartNoAckMode is accepted
        self._ack_due = False                # a packet received and not acked yet: '+' goes with the next send
        self._connected = False
        self._running = False
        self._pending: Stop | None = None    # a stop cont() met while stepping off a breakpoint
        self._last_sent = b""                # resent on '-'
        self.features: dict[str, str] = {}
        self._packet_size = DEFAULT_PACKET_SIZE
        self._layout = RegisterLayout(())
        self._g: bytearray | None = None     # the registers as of this stop ('g'), while stopped
        self._pc: int | None = None          # rip, while stopped, when known
        self._breakpoints: dict[int, list[Breakpoint]] = {}
        self._numbers = 0
        self._t0 = time.monotonic()
        self._sent: deque[Packet] = deque(maxlen=RING)
        self._received: deque[Packet] = deque(maxlen=RING)
        self._notes: deque[tuple[float, str]] = deque(maxlen=RING)
        self._counts = [0, 0]                # packets sent, received

    # lifecycle ---------------------------------------------------------------------------------
    @property
    def transcript_path(self) -> Path | None:
        return self._transcript

    @property
    def connected(self) -> bool:
        """Connected, and the target has not gone away (EOF, or an exit reply)."""
        return self._connected and not self._eof

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> Stop | None:
        """Connect to the unix socket (waiting up to ``timeout`` for it to exist and accept), then handshake.

        The handshake: ``qSupported``; ``QStartNoAckMode`` (QEMU 7.2 answers empty: acks
        stay on); the target description (QEMU refuses ``P`` until it was read); ``?``.
        Returns None: the reply to ``?`` is noted in the transcript, not made a ``Stop``
        (that would cost a ``g`` for its address).
        """
        if self._sock is not None:
            raise RspError("connect", message="already connected")
        path = os.path.abspath(self.socket)
        what = f"connect to {path}"
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        last = "the socket does not exist"
        while True:
            try:
                mode: int | None = os.stat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat.S_ISSOCK(mode):
                raise RspError(what, message="not a unix socket")
            if mode is not None:
                sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                try:
                    sock.connect(path)
                    break
                except (ConnectionRefusedError, FileNotFoundError) as err:
                    # bound but not listening yet, or one left over from an earlier QEMU
                    sock.close()
                    last = err.strerror or str(err)
                except OSError as err:
                    sock.close()
                    raise RspError(what, message=str(err)) from err
            if time.monotonic() >= deadline:
                raise RspError(what, message=f"{last} (waited {timeout:g} s)")
            time.sleep(0.05)
        self._t0 = time.monotonic()
        self._note(f"{time.strftime('%Y-%m-%d %H:%M:%S')} connected to {path}")
        self._sock, self._buf, self._eof, self._ack, self._ack_due = sock, bytearray(), False, True, False
        self._connected, self._running, self._pending = True, False, None
        self._breakpoints.clear()
        try:
            self._handshake(what)
        except BaseException:
            self._connected = False
            self._close_socket()
            raise
        return None

    def _handshake(self, what: str) -> None:
        self.features = parse_features(self._command(b"qSupported:xmlRegisters=i386", what))
        try:
            self._packet_size = int(self.features.get("PacketSize", ""), 16)
        except ValueError:
            self._packet_size = DEFAULT_PACKET_SIZE
        if self._command(b"QStartNoAckMode", what, empty_ok=True) == b"OK":
            self._flush_ack(what)            # the OK itself is acked; from then on neither side acks
            self._ack = False
        if self.features.get("qXfer:features:read") != "+":
            raise RspError(what, message="the stub offers no target description (qXfer:features:read)")
        documents: dict[str, str] = {}

        def fetch(annex: str) -> str:
            if annex not in documents:
                documents[annex] = self._read_feature(annex, what)
            return documents[annex]

        try:
            self._layout = register_layout(fetch)
        except ValueError as err:
            raise RspError(what, message=str(err)) from None
        missing = [n for n in (PC, "rsp") if n not in self._layout.offsets]
        if missing:
            raise RspError(what, message=f"the target description has no {', '.join(missing)} in 'g' "
                           f"(architecture {self._layout.architecture})")
        reply = self._command(b"?", what)
        if parse_stop(reply) is None:
            raise RspError(what, "?", f"not a stop reply: {reply[:80]!r}{self._recent()}")
        self._note(f"stopped: {reply.decode('ascii', 'replace')}")

    def _read_feature(self, annex: str, what: str) -> str:
        """One target description document, in pieces (``qXfer:features:read``)."""
        data = b""
        size = max(self._packet_size - 8, 64)
        while True:
            request = b"qXfer:features:read:%s:%x,%x" % (annex.encode(), len(data), size)
            reply = self._command(request, what)
            if reply[:1] not in (b"m", b"l"):
                raise RspError(what, request.decode(), f"unexpected reply {reply[:80]!r}{self._recent()}")
            data += unescape(reply[1:])
            if reply[:1] == b"l" or len(reply) == 1:
                return data.decode("utf-8", "replace")

    def close(self) -> None:
        """Detach if connected (interrupting a running guest first), close the socket, write the transcript.

        Safe to call twice. Without the detach QEMU would keep the guest halted, or
        its breakpoints inserted, for a debugger that never comes back.
        """
        try:
            if self._sock is not None and self.connected:
                try:
                    if self._running and self._pending is None:
                        self.interrupt(timeout=CLOSE_GRACE)
                    self.detach(timeout=CLOSE_GRACE)
                except DebuggerError as err:
                    self._note(f"teardown: {err}")
        finally:
            self._connected = False
            self._close_socket()
            self._write_transcript()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def detach(self, timeout: float | None = None) -> None:
        """``D``: QEMU removes the breakpoints and lets the guest run on; nothing more can be asked."""
        if not self.connected:
            return
        wait = self.timeout if timeout is None else timeout
        if self._pending is not None:
            self.wait_stop(0)
        elif self._running:
            self.interrupt(timeout=wait)        # any byte, even a '$', stops a running QEMU guest
        self._command(b"D", "detach", timeout=wait)
        self._connected = False
        self._breakpoints.clear()

    # breakpoints -----------------------------------------------------------------------------
    def break_at(self, location: str | int, *, hardware: bool = False, temporary: bool = False) -> Breakpoint:
        """A breakpoint at an address: an int, ``"*0x…"`` or ``"0x…"`` (``Z0``, or ``Z1`` when ``hardware``).

        No symbols here: resolve them first (``framework.elf.vmlinux.Symbols``). Numbers
        count from 1 per connection object. Under TCG neither kind touches guest memory.
        """
        try:
            address, where = parse_location(location)
        except ValueError as err:
            raise RspError(f"break at {location}", message=f"{err}: Rsp takes addresses only; resolve symbols "
                           "before (framework.elf.vmlinux.Symbols)") from None
        self._command(b"Z%d,%x,1" % (1 if hardware else 0, address), f"break at {where}")
        self._numbers += 1
        bp = Breakpoint(number=self._numbers, address=address, location=where, hardware=hardware,
                        temporary=temporary)
        self._breakpoints.setdefault(address, []).append(bp)
        return bp

    def delete(self, bp: Breakpoint) -> None:
        what = f"delete breakpoint {bp.number} at {bp.location}"
        address = bp.address
        inserted = self._breakpoints.get(address) if address is not None else None
        if address is None or not inserted or bp not in inserted:
            raise RspError(what, message="no such breakpoint")
        self._command(b"z%d,%x,1" % (1 if bp.hardware else 0, address), what)
        inserted.remove(bp)
        if not inserted:
            del self._breakpoints[address]

    # execution -------------------------------------------------------------------------------
    def cont(self) -> None:
        """Resume; does not wait (``wait_stop`` does).

        At a breakpoint's address, step off it first (``s``: QEMU single-steps over
        its own breakpoints) and then ``c``; a step that stops at a breakpoint (or
        anywhere but a plain trap) is the stop ``wait_stop`` returns, with no ``c``.
        """
        what = "continue"
        self._check_stopped(what)
        if self._buf:
            self._discard_buffered(what)
        if self._breakpoints:
            pc = self._pc if self._pc is not None else self._read_pc(what)
            if pc in self._breakpoints:
                stop = self._step_off(pc, what)
                if stop is not None:
                    self._pending, self._running = stop, True
                    return
        self._resume(b"c")

    def _step_off(self, pc: int, what: str) -> Stop | None:
        """Single-step from the breakpoint at ``pc`` until the pc moves; the stop to report, if any.

        A step can end where it began: QEMU reports the step done without executing the
        instruction when it handled an interrupt request first (an APIC poll, with the
        guest's timer ticking while the host is busy: accel/tcg/cpu-exec.c raises
        EXCP_DEBUG "so that GDB doesn't miss the next instruction"), and a ``rep``
        string instruction moves one iteration a step. Such a step is stepped again, up
        to STEP_RETRIES times; it is never reported as a second hit of the breakpoint.
        """
        for attempt in range(STEP_RETRIES):
            self._resume(b"s")
            try:
                stop = self._stop(self._read_stop(time.monotonic() + self.timeout))
            except _TimedOut:
                raise RspTimeout(what, "stop reply of the step off the breakpoint", self.timeout,
                                 "s") from None
            trap = stop.reason == "breakpoint-hit" or (stop.reason == "signal-received" and stop.signal == "SIGTRAP")
            if trap and stop.address == pc:
                if attempt == 0:
                    self._note(f"-- the step off {pc:#x} did not move the pc: stepping again")
                continue
            if stop.reason != "signal-received" or stop.signal != "SIGTRAP":
                return stop
            return None
        self._note(f"-- still at {pc:#x} after {STEP_RETRIES} steps: reported as a stop there")
        return stop

    def wait_stop(self, timeout: float) -> Stop:
        """The next stop, waiting up to ``timeout`` seconds; on DebuggerTimeout the guest runs on."""
        what = "wait for a stop"
        if self._pending is not None:
            stop, self._pending, self._running = self._pending, None, False
            return stop
        if not self._running:
            raise RspError(what, message="the target is not running and no stop is pending")
        try:
            packet = self._read_stop(time.monotonic() + timeout)
        except _TimedOut:
            raise RspTimeout(what, "stop reply", timeout) from None
        return self._stop(packet)

    def interrupt(self, timeout: float | None = None) -> Stop:
        """Stop the running guest (``\\x03``) and return the stop; a stop that raced the interrupt wins."""
        what = "interrupt"
        if self._pending is not None:
            return self.wait_stop(0)
        if not self._running:
            raise RspError(what, message="the target is not running")
        wait = self.timeout if timeout is None else timeout
        try:
            packet = self._read_stop(time.monotonic())      # a stop already here
        except _TimedOut:
            # A stopped QEMU drops the byte, so a stop racing it is the only one that comes.
            self._note("-> ^C")
            self._send_raw(b"\x03", what)
            try:
                packet = self._read_stop(time.monotonic() + wait)
            except _TimedOut:
                raise RspTimeout(what, "stop reply", wait, "^C") from None
        return self._stop(packet)

    def state_replaced(self) -> None:
        """The stopped guest's state was replaced behind the gdbstub's back (QMP loadvm of a snapshot): what
        was read at the last stop (the registers, the pc a continue steps off from) no longer holds."""
        self._check_stopped("forget the stop's registers")
        self._g, self._pc = None, None

    # registers and memory --------------------------------------------------------------------
    def registers(self, names: Sequence[str] = DEFAULT_REGISTERS) -> dict[str, int]:
        """``names`` as the target description names them, from one ``g`` per stop (``p`` for the rest)."""
        what = "read registers"
        unknown = [n for n in names if n not in self._layout.by_name]
        if unknown:
            raise RspError(what, message=f"no register named {', '.join(unknown)}")
        if self._g is None:
            self._read_g(what)
        assert self._g is not None
        try:
            return self._layout.decode(self._g, names)
        except KeyError:
            pass
        out = {}
        for name in names:
            try:
                out.update(self._layout.decode(self._g, (name,)))
            except KeyError:
                reg = self._layout.by_name[name]
                out[name] = int.from_bytes(hex_bytes(self._command(b"p%x" % reg.regnum, what)), "little")
        return out

    def set_register(self, name: str, value: int) -> None:
        what = f"set {name}"
        reg = self._layout.by_name.get(name)
        if reg is None:
            raise RspError(what, message=f"no register named {name}")
        try:
            data = le_bytes(value, max(reg.bitsize // 8, 1))
        except ValueError as err:
            raise RspError(what, message=str(err)) from None
        self._command(b"P%x=%s" % (reg.regnum, data.hex().encode()), what)
        slot = self._layout.offsets.get(name)
        if self._g is not None and slot is not None and slot[0] + slot[1] <= len(self._g):
            self._g[slot[0]:slot[0] + slot[1]] = data
        if name == PC:
            self._pc = int.from_bytes(data, "little")

    def read_memory(self, address: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``address`` (``m``, in pieces whose replies fit the stub's packet), or DebuggerError."""
        if length < 0:
            raise ValueError(f"negative length {length}")
        if length == 0:
            return b""
        what = f"read {length} bytes at {address:#x}"
        self._check_range(what, address, length)
        size = max((self._packet_size - 8) // 2, 16)
        pieces = []
        for start in range(address, address + length, size):
            n = min(size, address + length - start)
            reply = self._command(b"m%x,%x" % (start, n), what, memory=start)
            if len(reply) != 2 * n:
                raise RspError(what, f"m{start:x},{n:x}", f"got {len(reply) // 2} of {n} bytes at {start:#x}")
            try:
                pieces.append(bytes.fromhex(reply.decode("ascii")))
            except ValueError:
                raise RspError(what, f"m{start:x},{n:x}", f"not hex: {reply[:80]!r}") from None
        return b"".join(pieces)

    def write_memory(self, address: int, data: bytes) -> None:
        if not data:
            return
        what = f"write {len(data)} bytes at {address:#x}"
        self._check_range(what, address, len(data))
        size = max((self._packet_size - 48) // 2, 16)
        for off in range(0, len(data), size):
            piece = data[off:off + size]
            self._command(b"M%x,%x:%s" % (address + off, len(piece), piece.hex().encode()), what,
                          memory=address + off)

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read_memory(address, 8), "little")

    # internals -------------------------------------------------------------------------------
    def _check_stopped(self, what: str) -> None:
        if self._sock is None or not self.connected:
            raise RspError(what, message="not connected")
        if self._running or self._pending is not None:
            raise RspError(what, message="the target is running")

    @staticmethod
    def _check_range(what: str, address: int, length: int) -> None:
        if address < 0 or address + length > 1 << 64:
            raise RspError(what, message="outside the 64-bit address space")

    def _command(self, payload: bytes, what: str, *, timeout: float | None = None, empty_ok: bool = False,
                 memory: int | None = None) -> bytes:
        """Send one request and return its reply; DebuggerError for ``Exx``, an empty reply, a lost stub."""
        self._check_stopped(what)
        wait = self.timeout if timeout is None else timeout
        self._send(payload, what)
        try:
            reply = self._read_packet(time.monotonic() + wait)
        except _TimedOut:
            raise RspTimeout(what, "reply", wait, _show(payload)) from None
        if reply is None:
            raise RspError(what, _show(payload), "the stub closed the connection")
        error = describe_error(reply)
        if error is not None:
            if memory is not None and reply == b"E14":
                error = f"Cannot access memory at address {memory:#x}: {error}"
            raise RspError(what, _show(payload), error)
        if not reply and not empty_ok:
            raise RspError(what, _show(payload), "not supported by the stub (empty reply)")
        return reply

    def _resume(self, payload: bytes) -> None:
        self._send(payload, "continue" if payload == b"c" else "step")
        self._running, self._g, self._pc = True, None, None

    def _read_g(self, what: str) -> None:
        reply = self._command(b"g", what)
        try:
            self._g = bytearray(hex_bytes(reply))
        except ValueError:
            raise RspError(what, "g", f"not hex: {reply[:80]!r}") from None
        if PC in self._layout.offsets:
            self._pc = self._layout.decode(self._g, (PC,))[PC]

    def _read_pc(self, what: str) -> int:
        self._read_g(what)
        assert self._pc is not None
        return self._pc

    def _stop(self, packet: bytes | None) -> Stop:
        """The Stop for a stop reply (None: the connection closed); deletes temporary breakpoints it hit."""
        self._running = False
        if packet is None:
            self._connected = False
            return Stop(reason="disconnected", address=None, function=None, breakpoint=None, signal=None,
                        raw={"packet": None})
        text = packet.decode("ascii", "replace")
        reply = parse_stop(packet)
        assert reply is not None
        if reply.kind in ("W", "X"):
            self._connected = False
            key = "exit-code" if reply.kind == "W" else "signal"
            return Stop(reason="exited", address=None, function=None, breakpoint=None,
                        signal=SIGNALS.get(reply.code) if reply.kind == "X" else None,
                        raw={"packet": text, key: reply.code})
        pc = self._read_pc("read the registers at a stop")
        raw = {"packet": text}
        hits = self._breakpoints.get(pc)
        if hits and reply.code == SIGTRAP:
            number = hits[0].number
            for bp in [b for b in hits if b.temporary]:
                self.delete(bp)                 # as GDB deletes a temporary breakpoint at its hit
            return Stop(reason="breakpoint-hit", address=pc, function=None, breakpoint=number, signal=None,
                        raw=raw)
        if reply.code == 0:
            return Stop(reason="unknown", address=pc, function=None, breakpoint=None, signal=None, raw=raw)
        return Stop(reason="signal-received", address=pc, function=None, breakpoint=None,
                    signal=SIGNALS.get(reply.code, f"signal {reply.code}"), raw=raw)

    def _read_stop(self, deadline: float) -> bytes | None:
        """The next stop reply (None at EOF); console output (``O``) and strays are noted and skipped."""
        while True:
            packet = self._read_packet(deadline)
            if packet is None or parse_stop(packet) is not None:
                return packet
            self._note(f"not a stop reply, skipped: {_show(packet)}")
            self._flush_ack("ack a packet")         # a stub may wait for it before it sends the stop

    def _discard_buffered(self, what: str) -> None:
        while (f := next_frame(self._buf)) is not None:
            del self._buf[:f.end]
            if f.kind in ("$", "%"):
                self._note(f"{what}: dropping a packet nobody waited for: {_show(f.body)}")

    def _send(self, payload: bytes, what: str) -> None:
        data = frame(payload)
        self._last_sent = data
        self._sent.append((time.monotonic(), payload))
        self._counts[0] += 1
        self._send_raw(data, what)

    def _flush_ack(self, what: str) -> None:
        if self._ack_due:
            self._send_raw(b"", what)

    def _send_raw(self, data: bytes, what: str) -> None:
        """Send ``data``, after the '+' owed for the last packet received (one write instead of two)."""
        if self._sock is None:
            raise RspError(what, message="not connected")
        if self._ack_due:
            data, self._ack_due = b"+" + data, False
        try:
            self._sock.sendall(data)
        except OSError as err:
            self._eof, self._running = True, False
            raise RspError(what, _show(data), f"the stub is gone ({err})") from err

    def _read_packet(self, deadline: float) -> bytes | None:
        """The next packet's payload (acked when acks are on, run-length encoding undone); None at EOF."""
        buf = self._buf
        while True:
            f = next_frame(buf)
            if f is None:
                if not self._fill(deadline):
                    return None
                continue
            del buf[:f.end]
            if f.kind == "$":
                if not f.ok:
                    self._note(f"bad checksum: {_show(f.body)}")
                    if self._ack:
                        self._send_raw(b"-", "nak a packet")
                        continue
                elif self._ack:
                    # Acked with the next send: all-stop, the stub has nothing to send before
                    # it (QEMU's system-mode stub does not even wait for acks).
                    self._flush_ack("ack a packet")
                    self._ack_due = True
                try:
                    body = expand(f.body)
                except ValueError as err:
                    raise RspError("read a packet", message=f"{err}{self._recent()}") from None
                self._received.append((time.monotonic(), body))
                self._counts[1] += 1
                return body
            if f.kind == "-" and self._last_sent:
                self._note("nak: sending again")
                self._send_raw(self._last_sent, "send again")
            elif f.kind in ("%", "junk"):
                self._note(f"ignored {f.kind}: {_show(f.body)}")

    def _fill(self, deadline: float) -> bool:
        """Receive what is there, waiting until ``deadline``; False at EOF."""
        if self._eof or self._sock is None:
            return False
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.0))
            data = self._sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError):
            raise _TimedOut from None
        except OSError as err:
            self._note(f"receive: {err}")
            data = b""
        if not data:
            self._eof = True
            self._note("the stub closed the connection")
            return False
        self._buf += data
        return True

    def _note(self, text: str) -> None:
        self._notes.append((time.monotonic(), text))

    def _recent(self, n: int = 3) -> str:
        """The last packets each way, for an error message."""
        sent = " ".join(_show(p, 40) for _, p in list(self._sent)[-n:])
        received = " ".join(_show(p, 40) for _, p in list(self._received)[-n:])
        return f" (last sent: {sent or '-'}; last received: {received or '-'})"

    def _write_transcript(self) -> None:
        if self._transcript is None or not (self._sent or self._received or self._notes):
            return
        rows = [(t, "->", _show(p, 300)) for t, p in self._sent]
        rows += [(t, "<-", _show(p, 300)) for t, p in self._received]
        rows += [(t, "--", text) for t, text in self._notes]
        rows.sort(key=lambda row: row[0])
        sent, received = self._counts
        self._transcript.parent.mkdir(parents=True, exist_ok=True)
        with open(self._transcript, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(f"{0.0:10.3f} -- {sent} packets sent, {received} received; the last {RING} each way "
                     f"follow\n")
            fh.writelines(f"{t - self._t0:10.3f} {direction} {text}\n" for t, direction, text in rows)
        self._sent.clear()
        self._received.clear()
        self._notes.clear()


def _show(payload: bytes, limit: int = 120) -> str:
    """A packet's payload for a message or the transcript: ASCII, cut at ``limit``."""
    text = payload[:limit].decode("ascii", "backslashreplace")
    return text + (f"…(+{len(payload) - limit})" if len(payload) > limit else "")
