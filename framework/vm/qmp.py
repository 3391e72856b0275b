"""A small synchronous QMP client over QEMU's unix socket.

QMP interleaves asynchronous events (``RESUME``, ``STOP``, ``SHUTDOWN`` …)
with command replies; ``command`` keeps the events it passes in ``events`` and
returns only the reply to its own command.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import LaunchError


class QMPError(LaunchError):
    """QMP answered a command with an error, or the connection broke."""


class QMP:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, alive: Any = None) -> None:
        """Connect, retrying while the socket does not exist yet; ``alive()`` False aborts."""
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                sock.close()
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise QMPError(f"cannot connect to QMP at {self.path}: {err}") from err
                time.sleep(0.05)
        self._sock = sock
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, msg: dict[str, Any]) -> None:
        if self._sock is None:
            raise QMPError("QMP is not connected")
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\r\n")
        except OSError as err:
            raise QMPError(f"QMP send failed: {err}") from err

    def _read(self) -> dict[str, Any]:
        if self._sock is None:
            raise QMPError("QMP is not connected")
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as err:
                raise QMPError(f"QMP receive failed: {err}") from err
            if not chunk:
                raise QMPError("QMP connection closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError as err:
            raise QMPError(f"QMP sent something that is not JSON: {line[:200]!r}") from err
        if not isinstance(value, dict):
            raise QMPError(f"QMP sent a non-object: {line[:200]!r}")
        return value


class QmpMemory:
    """Guest memory read by QEMU itself: QMP ``memsave`` writes a range of the guest's virtual memory (through the
    given vCPU's page tables) straight to a file, which is read back and removed. For text of megabytes this is
    one command instead of thousands of debugger packets; the guest must be stopped (at a breakpoint) for the
    bytes to be a snapshot. The file lives in QEMU's private 0700 socket directory."""

    def __init__(self, qmp: QMP, directory: Path, cpu: int = 0) -> None:
        self.qmp = qmp
        self.directory = directory
        self.cpu = cpu
        self._n = 0

    def read(self, address: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._n += 1
        path = self.directory / f"memsave-{self._n}.bin"
        try:
            # QMP's val is an int64: a kernel address (0xffffffff81000000) goes as its two's complement.
            val = address - (1 << 64) if address >= 1 << 63 else address
            self.qmp.command("memsave", val=val, size=length, filename=str(path), **{"cpu-index": self.cpu})
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        if len(data) != length:
            raise QMPError(f"QMP memsave of {length} bytes at {address:#x} wrote {len(data)}")
        return data
