"""Debuggers of QEMU's gdbstub (a unix socket): one contract, two back-ends, one way to open either.

The contract (``contract.Debugger``, with ``Stop``, ``Breakpoint``,
``DebuggerError`` and ``DebuggerTimeout``) is what the session loop and the
inspection step ask of a debugger. The back-ends:

* ``"gdb"``: ``mi.Gdb``, GDB over GDB/MI, with the kernel's symbols. For plain
  inspections (a handful of stops); the interactive ``boot --gdb`` runs GDB
  itself on the terminal (observe/debug.py), not through this package.
* ``"rsp"``: ``rsp.Rsp``, the remote protocol spoken directly, addresses only.
  For traces and scenarios, which stop the guest thousands of times: about
  0.8 ms a stop against GDB's 2.3 ms (bench/trace.py).

``open_debugger`` builds either, not yet connected::

    with open_debugger("rsp", socket, outdir / "rsp.log", None) as dbg:
        dbg.connect()
        …
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .contract import Debugger
from .mi import Gdb
from .rsp import Rsp

# A back-end; DebuggerKind (framework.domain) adds "auto", which the caller resolves.
Backend = Literal["gdb", "rsp"]


def open_debugger(kind: Backend, socket: Path, log: Path, symbols: Path | None) -> Debugger:
    """A ``kind`` debugger of the gdbstub at ``socket``, its transcript in ``log``; not yet connected.

    ``symbols``: the ELF GDB loads on ``connect`` (None: addresses only); Rsp takes none.
    Entering it (``with``) starts what it needs (GDB's process); ``connect()`` connects.
    """
    if kind == "gdb":
        return Gdb(socket, log, symbols)
    if kind == "rsp":
        return Rsp(socket, log)
    raise ValueError(f"no debugger back-end {kind!r}: gdb or rsp")


# mypy --strict checks here that each back-end implements the whole contract, signatures included.
def _gdb_is_a_debugger(dbg: Gdb) -> Debugger:
    return dbg


def _rsp_is_a_debugger(dbg: Rsp) -> Debugger:
    return dbg
