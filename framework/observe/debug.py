"""``patchscope boot --gdb``: GDB on the terminal, symbols loaded, the guest stopped where asked.

The run pipeline starts QEMU stopped (-S) with its gdbstub on a unix socket;
this step hands the terminal to an interactive GDB that loads the kernel's
symbols, connects, sets a breakpoint at ``--stop-at`` and continues to it.
The console goes to console.log (``tail -f`` it in another terminal). When
GDB exits, QEMU is stopped. Ctrl-C belongs to GDB (it interrupts the guest),
so patchscope ignores it while GDB runs.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import ToolMissingError
from ..vm.machine import Machine
from ..vm.qemu import Qemu
from .console import ConsoleThread


def gdb_argv(symbols: Path | None, socket: Path, stop_at: str | None, hardware: bool) -> list[str]:
    """The interactive GDB command line. Pure."""
    argv = ["gdb", "-q", "-nx", "-ex", "set pagination off", "-ex", "set confirm off"]
    if symbols is not None:
        argv += ["-ex", f"file {symbols}"]
    argv += ["-ex", f"target remote {socket}"]
    if stop_at:
        # One-shot: under TCG a breakpoint that stays makes every instruction on
        # its 4 KiB page run one per block (3.4x for xen_start_kernel under Xen;
        # bench/xen_breakpoints.py), while a temporary one costs nothing.
        argv += ["-ex", f"{'thbreak' if hardware else 'tbreak'} {stop_at}", "-ex", "continue"]
    return argv


class DebugSession:
    def __init__(self, symbols: Path | None, stop_at: str | None, console_log: Path) -> None:
        self.symbols = symbols
        self.stop_at = stop_at
        self.console_log = console_log
        self.exitcode: int | None = None

    def __call__(self, vm: Qemu, console: ConsoleThread, machine: Machine) -> None:
        if shutil.which("gdb") is None:
            raise ToolMissingError("gdb", "gdb")
        assert machine.gdb_socket is not None
        argv = gdb_argv(self.symbols, machine.gdb_socket, self.stop_at, machine.accel == "kvm")
        print(f"patchscope: console in {self.console_log} (tail -f it); quitting GDB stops QEMU\n"
              f"patchscope: {shlex.join(argv)}", file=sys.stderr, flush=True)
        console.hold()   # the guest runs only when GDB says so; silence means nothing here
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.exitcode = subprocess.run(argv, check=False).returncode
        finally:
            signal.signal(signal.SIGINT, previous)
            vm.shutdown()
