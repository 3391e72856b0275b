"""framework.debugger.rsp against real QEMU (TCG) and the real Debian 6.1 kernel, without GDB.

QEMU starts halted (``-S``) with its gdbstub on a unix socket in a private
directory (nothing listens on TCP), with the generated initramfs, so a guest
that was stopped thousands of times and then let go must still reach
``patchscope: init done``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from framework.debugger.contract import DebuggerError, DebuggerTimeout
from framework.debugger.rsp import Rsp
from framework.elf.vmlinux import Symbols, Vmlinux
from framework.guest import initramfs
from framework.kernel.image import Kernel, prepare_kernel
from framework.kernel.refs import parse_ref
from framework.vm.machine import DEFAULT_CPU, DEFAULT_MEMORY_MIB, Machine, kernel_cmdline, qemu_argv
from framework.vm.qemu import Qemu, private_socket_dir

pytestmark = pytest.mark.boot

STOPS = 50
CALL_OR_NOP5 = (b"\xe8", b"\x0f\x1f\x44\x00\x00")   # call __fentry__, or the NOP ftrace leaves


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    k = prepare_kernel(parse_ref("debian-6.1"))
    assert k.symbols is not None, "the Debian kernel's kallsyms ELF is missing"
    return k


@pytest.fixture(scope="module")
def image(kernel: Kernel) -> Iterator[Vmlinux]:
    assert kernel.symbols is not None
    with Vmlinux(kernel.symbols, Symbols.from_elf(kernel.symbols), kernel.release) as vml:
        yield vml


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("initramfs") / "initramfs.cpio"
    path.write_bytes(initramfs.build(initramfs.find_busybox().read_bytes()))
    return path


class Console:
    """Everything the guest printed, read by a thread so a full pty never blocks the guest."""

    def __init__(self, vm: Qemu) -> None:
        self.vm = vm
        self.data = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.done.is_set() and (chunk := self.vm.read(0.1)) is not None:
            self.data += chunk

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.data:
            if time.monotonic() >= deadline or not self.thread.is_alive():
                return text.encode() in self.data
            time.sleep(0.1)
        return True

    def tail(self) -> str:
        return self.data[-2000:].decode(errors="replace")


@contextmanager
def booted(kernel: Kernel, initrd: Path) -> Iterator[tuple[Qemu, Path, Console]]:
    """QEMU halted before the first instruction, its gdbstub on a unix socket, its console collected."""
    sockdir = private_socket_dir()
    machine = Machine(mode="native", kernel=kernel.bzimage, initrd=initrd, cmdline=kernel_cmdline(),
                      qmp_socket=sockdir / "qmp.sock", cpu=DEFAULT_CPU["native"],
                      memory_mib=DEFAULT_MEMORY_MIB["native"], gdb_socket=sockdir / "gdb.sock", stopped=True)
    assert machine.gdb_socket is not None
    with Qemu(qemu_argv(machine), machine.qmp_socket, sockdir) as vm:    # its teardown ends QEMU by its pid
        vm.connect_qmp()
        console = Console(vm)
        try:
            yield vm, machine.gdb_socket, console
        finally:
            console.done.set()
            console.thread.join(5)


def test_trace_text_poke_early_then_let_the_guest_boot(kernel: Kernel, image: Vmlinux, initrd: Path,
                                                        tmp_path: Path) -> None:
    start_kernel = image.symbols.address("start_kernel")
    tpe = image.symbols.address("text_poke_early")
    assert start_kernel is not None and tpe is not None
    # Resuming at text_poke_early+5 skips its first instruction: harmless only when that is a
    # 5-byte call __fentry__ (or the NOP that replaces it), which pushes nothing we keep.
    assert image.read(tpe, 5).startswith(CALL_OR_NOP5)
    text = image.sections[".text"]
    transcript = tmp_path / "rsp.transcript"
    with booted(kernel, initrd) as (_vm, sock, console), Rsp(sock, transcript) as rsp:
        rsp.connect()
        first = rsp.break_at(start_kernel, temporary=True)
        rsp.cont()
        stop = rsp.wait_stop(60)
        assert (stop.reason, stop.address, stop.breakpoint) == ("breakpoint-hit", start_kernel, first.number)

        # Memory: the image's bytes, also across the stub's packet size; registers by the XML's names.
        assert rsp.read_memory(tpe, 64) == image.read(tpe, 64)
        assert rsp.read_memory(text.address, 5000) == image.read(text.address, 5000)
        regs = rsp.registers()
        assert regs["rip"] == start_kernel and regs["rsp"] >= 0xFFFF800000000000
        system = rsp.registers(["cr0", "cr3", "cr4", "efer", "cs", "eflags", "gs_base"])
        assert system["cr0"] & (1 << 31) and system["efer"] & (1 << 10)           # paging on, long mode active
        assert system["cs"] == 0x10

        # 50 calls of text_poke_early(addr, opcode, len), each resumed past its first instruction.
        bp = rsp.break_at(tpe)
        calls: list[tuple[int, int, int, int]] = []
        wall, cpu = time.monotonic(), time.process_time()
        rsp.cont()
        for _ in range(STOPS):
            stop = rsp.wait_stop(60)
            assert (stop.reason, stop.address, stop.breakpoint) == ("breakpoint-hit", tpe, bp.number), stop
            r = rsp.registers(["rdi", "rsi", "rdx", "rsp"])
            calls.append((r["rdi"], r["rsi"], r["rdx"], rsp.read_u64(r["rsp"])))
            rsp.set_register("rip", tpe + 5)
            rsp.cont()
        stop = rsp.wait_stop(60)                  # the 51st stop ends the timed part
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        print(f"\n{STOPS} text_poke_early stops: {wall / STOPS * 1e3:.2f} ms each, "
              f"{cpu / STOPS * 1e3:.3f} ms of it in this process")
        assert stop.breakpoint == bp.number
        assert len({rdi for rdi, _, _, _ in calls}) >= STOPS * 0.8, calls
        assert all(1 <= n <= 64 for _, _, n, _ in calls), calls
        for rdi, rsi, n, ret in calls:
            site = image.section_at(rdi)
            assert site is not None and site.executable, hex(rdi)                  # a patch site in kernel text
            assert rsi >= 0xFFFF800000000000, hex(rsi)                            # the new bytes, in the kernel
            caller = image.section_at(ret)
            assert caller is not None and caller.executable, hex(ret)             # returns into kernel text

        # Let go: no breakpoint left, QEMU resumes the guest on detach, and it boots on.
        rsp.delete(bp)
        rsp.detach()
        assert not rsp.connected
        assert console.wait_for(initramfs.MARKER_DONE, 60), console.tail()
    log = transcript.read_text()
    assert f"-> z0,{start_kernel:x},1" in log                                     # the temporary one, at its hit
    assert f"-> Z0,{tpe:x},1" in log and "-> D" in log


def test_cont_steps_off_a_breakpoint_interrupt_and_errors(kernel: Kernel, image: Vmlinux, initrd: Path,
                                                           tmp_path: Path) -> None:
    tpe = image.symbols.address("text_poke_early")
    assert tpe is not None
    transcript = tmp_path / "rsp.transcript"
    with booted(kernel, initrd) as (_vm, sock, console):
        with Rsp(sock, transcript, timeout=20) as rsp:
            rsp.connect()
            bp = rsp.break_at(tpe, hardware=True)
            rsp.cont()
            first = rsp.wait_stop(60)
            rdi = rsp.registers(["rdi"])["rdi"]
            rsp.cont()                                # rip is at the breakpoint: QEMU steps off it, then runs
            second = rsp.wait_stop(60)
            assert first.breakpoint == second.breakpoint == bp.number and first.address == second.address == tpe
            assert rsp.registers(["rdi"])["rdi"] != rdi                               # the next call, not the same

            rsp.delete(bp)
            rsp.cont()
            with pytest.raises(DebuggerTimeout, match=r"rsp: wait for a stop: no stop reply within 0.3 s"):
                rsp.wait_stop(0.3)                    # running, no breakpoint left
            stop = rsp.interrupt()
            assert (stop.reason, stop.signal, stop.breakpoint) == ("signal-received", "SIGINT", None)
            assert stop.address is not None and stop.address >= 0xFFFF800000000000

            original = rsp.read_memory(tpe, 8)
            rsp.write_memory(tpe, b"\xcc" * 8)
            assert rsp.read_u64(tpe) == 0xCCCCCCCCCCCCCCCC
            rsp.write_memory(tpe, original)
            assert rsp.read_memory(tpe, 8) == original
            rax = rsp.registers(["rax"])["rax"]
            rsp.set_register("rax", 0x1122334455667788)
            assert rsp.registers(["rax"]) == {"rax": 0x1122334455667788}
            rsp.set_register("rax", rax)
            with pytest.raises(DebuggerError, match="Cannot access memory at address 0x0") as err:
                rsp.read_memory(0, 16)
            assert "\n" not in str(err.value)
            with pytest.raises(DebuggerError, match="no register named nosuch"):
                rsp.registers(["nosuch"])
            with pytest.raises(DebuggerError, match="resolve symbols"):
                rsp.break_at("text_poke_early")

            rsp.cont()                                # left running: close() interrupts and detaches
        assert console.wait_for(initramfs.MARKER_DONE, 60), console.tail()

    # Between the two hits: one step and one continue, no breakpoint removed or inserted.
    sent = [line.split(" -> ", 1)[1] for line in transcript.read_text().splitlines() if " -> " in line]
    between = sent[sent.index("c") + 1:sent.index(f"z1,{tpe:x},1")]
    assert [p for p in between if p[:1] in "sczZ"] == ["s", "c"], between
