"""What patchscope asks of a debugger of QEMU's gdbstub, whichever back-end speaks to it.

``Debugger`` is the whole contract: everything the session loop
(``framework.observe.session``) and the inspection step
(``framework.observe.inspection``) call on a debugger, from ``connect`` to
``close``. Its values are ``Stop`` (where and why the guest stopped) and
``Breakpoint``; its errors are ``DebuggerError`` and ``DebuggerTimeout``;
``DEFAULT_REGISTERS`` is what ``registers()`` reads when not told.

Two back-ends implement it, both built with the socket (and what else they
need) and connected by ``connect()`` with no arguments:

* ``framework.debugger.mi.Gdb``: GDB driven over GDB/MI, with the kernel's
  symbols. For plain inspections (a handful of stops). GDB is also the
  debugger of the interactive ``boot --gdb``, which hands it the terminal
  (observe/debug.py) rather than driving it through this contract.
* ``framework.debugger.rsp.Rsp``: the remote protocol spoken directly, no GDB.
  Addresses only; a stop costs about a third of GDB's, so it is for traces and
  scenarios, which stop the guest thousands of times.

``framework.debugger.open_debugger`` builds either.

Errors::

    InfrastructureError
     └── DebuggerError         one line: what failed, the request (MI command or packet), the answer
          └── DebuggerTimeout  a stop or an answer did not come in time; says what was awaited
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from ..errors import InfrastructureError

# What registers() reads when not told: rip, rsp and the arguments of a call (rdi … r9), rax.
DEFAULT_REGISTERS = ("rip", "rsp", "rdi", "rsi", "rdx", "rcx", "r8", "r9", "rax")


# --- errors -------------------------------------------------------------------------------------

class DebuggerError(InfrastructureError):
    """The debugger failed to do what was asked: ``<backend>: <what>: <request>: <the answer>``.

    ``backend`` names the debugger that said it (``gdb``; ``rsp`` for the
    remote-protocol client's ``RspError``); ``command`` is the MI command or the
    remote-protocol packet, ``message`` what came back (or what went wrong);
    both may be None.
    """

    backend = "gdb"

    def __init__(self, what: str, command: str | None = None, message: str | None = None) -> None:
        self.what = what
        self.command = command
        self.message = message
        parts = [f"{self.backend}: {what}"] + [p for p in (command, message) if p]
        super().__init__(" ".join(": ".join(parts).split()))


class DebuggerDied(DebuggerError):
    """The debugger's own process ended mid-session (killed, crashed): the machine failed, not the guest."""


class DebuggerTimeout(DebuggerError):
    """A stop, or the answer to a request, did not arrive in time."""

    def __init__(self, what: str, waited_for: str, timeout: float, command: str | None = None) -> None:
        self.waited_for = waited_for
        self.timeout = timeout
        super().__init__(what, command, f"no {waited_for} within {timeout:g} s")


# --- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stop:
    """Where and why the target stopped."""

    reason: str            # GDB's words: "breakpoint-hit", "signal-received", "end-stepping-range",
    #                        "function-finished", "exited", … ; "unknown" when none is given (the stop
    #                        reported on connecting); "disconnected" when the target went away while running
    address: int | None    # the frame's address (rip)
    function: str | None   # only a back-end that knows symbols (Gdb) names it
    breakpoint: int | None  # the number of the breakpoint hit
    signal: str | None
    raw: Mapping[str, object] = field(compare=False, hash=False)   # the back-end's own record of it

    def describe(self) -> str:
        where = f"{self.address:#x}" if self.address is not None else "?"
        if self.function:
            where += f" in {self.function}"
        extra = f" (breakpoint {self.breakpoint})" if self.breakpoint is not None else ""
        extra += f" ({self.signal})" if self.signal else ""
        return f"{self.reason} at {where}{extra}"


@dataclass(frozen=True)
class Breakpoint:
    number: int
    address: int | None    # None when GDB has several or none ("<MULTIPLE>", "<PENDING>")
    location: str          # what was asked for
    hardware: bool
    temporary: bool


# --- the contract -------------------------------------------------------------------------------

class Debugger(Protocol):
    """One debugger of one guest: ``with dbg: dbg.connect(); …``; leaving the block detaches and closes.

    All-stop: ``cont`` resumes without waiting, ``wait_stop``/``interrupt`` return
    the stop; everything else needs a stopped guest. Every failure is a
    ``DebuggerError`` (``DebuggerTimeout`` when something did not come in time).
    """

    @property
    def connected(self) -> bool:
        """Connected to a target that has not gone away."""
        ...

    def connect(self) -> Stop | None:
        """Connect to the socket given at construction, waiting for it to appear and accept.

        Returns the stop the target reported on connecting when the back-end makes
        one of it (Gdb does; Rsp returns None).
        """
        ...

    def detach(self, timeout: float | None = None) -> None:
        """Let the guest go (QEMU removes the breakpoints and resumes it); nothing when not connected."""
        ...

    def close(self) -> None:
        """Detach if connected (interrupting a running guest first), then release everything; idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def break_at(self, location: str | int, *, hardware: bool = False, temporary: bool = False) -> Breakpoint:
        """A breakpoint at an address (an int or ``"*0x…"``; Gdb also takes symbols)."""
        ...

    def delete(self, bp: Breakpoint) -> None: ...

    def cont(self) -> None:
        """Resume; does not wait (``wait_stop`` does)."""
        ...

    def wait_stop(self, timeout: float) -> Stop:
        """The next stop, waiting up to ``timeout`` seconds (DebuggerTimeout: the guest runs on)."""
        ...

    def interrupt(self, timeout: float | None = None) -> Stop:
        """Stop the running guest and return the stop (a stop that raced the interrupt wins)."""
        ...

    def registers(self, names: Sequence[str] = DEFAULT_REGISTERS) -> dict[str, int]:
        """``names`` (the target description's) → values, in the order asked."""
        ...

    def set_register(self, name: str, value: int) -> None: ...

    def read_memory(self, address: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``address``, or DebuggerError."""
        ...

    def write_memory(self, address: int, data: bytes) -> None: ...

    def read_u64(self, address: int) -> int:
        """The little-endian u64 at ``address``."""
        ...
