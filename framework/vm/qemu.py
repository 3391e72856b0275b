"""The QEMU process: launch in its own process group, read its console, tear it down.

Teardown always runs (``with Qemu(...) as vm``): a graceful ``quit`` over QMP,
then SIGTERM to the whole process group, then SIGKILL. The private socket
directory is removed. No QEMU outlives a run, whatever ended it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pexpect

from ..errors import LaunchError, ToolMissingError
from .machine import KVM_PROBE_BANNER, QEMU, kvm_probe_argv
from .qmp import QMP, QMPError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL if patchscope dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise ToolMissingError(QEMU, "qemu-system-x86")
    return path


def private_socket_dir() -> Path:
    """A fresh 0700 directory for the QMP and gdbstub sockets (short path: AF_UNIX limit)."""
    return Path(tempfile.mkdtemp(prefix="patchscope-"))


class Qemu:
    """One QEMU process whose stdio is the guest console."""

    def __init__(self, argv: Sequence[str], qmp_socket: Path, sockdir: Path | None = None) -> None:
        self.argv = list(argv)
        self.qmp_socket = qmp_socket
        self.sockdir = sockdir
        self.child: pexpect.spawn | None = None
        self.qmp: QMP | None = None
        self.exitcode: int | None = None
        self.started = 0.0
        # False while another thread (the console monitor) reads the console.
        self.drain_on_wait = True

    # lifecycle ---------------------------------------------------------------
    def launch(self) -> None:
        require_qemu()
        self.started = time.monotonic()
        try:
            # pexpect forks onto a pty and calls setsid(): QEMU leads its own
            # process group, which teardown signals as a whole.
            self.child = pexpect.spawn(self.argv[0], self.argv[1:], echo=False, timeout=None,
                                       dimensions=(50, 200), env=dict(os.environ, LC_ALL="C"),
                                       preexec_fn=_die_with_parent)
        except (pexpect.ExceptionPexpect, OSError) as err:
            raise LaunchError(f"cannot start {self.argv[0]}: {err}", self.argv) from err

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def connect_qmp(self) -> QMP | None:
        """Connect QMP; None when QEMU has already exited."""
        if self.qmp is None and self.alive():
            qmp = QMP(self.qmp_socket)
            try:
                qmp.connect(alive=self.alive)
            except QMPError:
                if self.alive():
                    raise
                return None
            self.qmp = qmp
        return self.qmp

    def output_at_exit(self, wait: float = 3.0) -> str:
        """What QEMU printed (its own error lines come on the same pty as the console) until it exited, for a
        QEMU that failed to start; waits up to ``wait`` seconds for the end of its output."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            data = self.read(0.2)
            if data is None:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def read(self, timeout: float) -> bytes | None:
        """Console bytes (b"" when none arrived within ``timeout``), or None at EOF."""
        assert self.child is not None
        try:
            data = self.child.read_nonblocking(size=65536, timeout=max(timeout, 0.0))
            return data if isinstance(data, bytes) else data.encode()
        except pexpect.TIMEOUT:
            return b""
        except pexpect.EOF:
            self._reap()
            return None

    def shutdown(self, grace: float = 3.0) -> None:
        """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL to its process group."""
        try:
            if self.child is not None and self.child.isalive():
                if self.qmp is not None:
                    try:
                        self.qmp.command("quit")
                    except QMPError:
                        pass
                if not self._wait(grace):
                    self._signal(signal.SIGTERM)
                    if not self._wait(2.0):
                        self._signal(signal.SIGKILL)
                        self._wait(5.0)
            self._reap()
        finally:
            if self.qmp is not None:
                self.qmp.close()
            if self.child is not None:
                try:
                    self.child.close(force=True)
                except (pexpect.ExceptionPexpect, OSError):
                    pass
            if self.sockdir is not None:
                shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # internals ---------------------------------------------------------------
    def _signal(self, sig: int) -> None:
        if self.child is None or self.child.pid is None:
            return
        try:
            os.killpg(self.child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.child is None or not self.child.isalive():
                self._reap()
                return True
            if not self.drain_on_wait:
                time.sleep(0.05)
                continue
            # Drain output so QEMU never blocks writing to a full pty.
            try:
                self.child.read_nonblocking(size=65536, timeout=0.05)
            except (pexpect.TIMEOUT, pexpect.EOF, OSError, ValueError):
                pass
        return False

    def _reap(self) -> None:
        if self.child is None or self.exitcode is not None:
            return
        try:
            if not self.child.isalive():
                self.exitcode = self.child.exitstatus if self.child.exitstatus is not None \
                    else -(self.child.signalstatus or 0)
        except pexpect.ExceptionPexpect:
            pass


def probe_kvm(kernel: Path, seconds: float = 5.0, note: Callable[[str], None] | None = None) -> tuple[bool, str]:
    """Whether KVM runs ``kernel`` far enough to print its banner; (usable, why)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    argv = kvm_probe_argv(kernel)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    out = b""
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and KVM_PROBE_BANNER.encode() not in out:
            chunk = proc.stdout.read(65536)
            if chunk:
                out += chunk
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if KVM_PROBE_BANNER.encode() in out:
        return True, f"the kernel printed '{KVM_PROBE_BANNER}' under KVM"
    lines = [ln for ln in out.decode(errors="replace").splitlines() if "error" in ln.lower()]
    why = lines[0].strip() if lines else f"no '{KVM_PROBE_BANNER}' within {seconds:.0f} s"
    return False, why
