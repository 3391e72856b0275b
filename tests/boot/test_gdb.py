"""framework.debugger.mi against real GDB, real QEMU (TCG) and the real Debian 6.1 kernel.

QEMU starts halted (``-S``) with its gdbstub on a unix socket in a private
directory; nothing here listens on TCP. The kernel has no initramfs: it panics
on the missing root file system long after everything tested here (the early
boot up to ``alternative_instructions``).

The two ``scenario_*`` functions are also replayed, without GDB or QEMU, by
tests/unit/test_gdb_mi.py from the transcripts they left in tests/data/gdb/.
``PATCHSCOPE_UPDATE_GDB_RECORDINGS=1`` rewrites those recordings from a real run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from framework.debugger.contract import DebuggerError, DebuggerTimeout, Stop
from framework.debugger.mi import Gdb
from framework.kernel.image import Kernel, prepare_kernel
from framework.kernel.refs import parse_ref
from framework.vm.machine import DEFAULT_CPU, DEFAULT_MEMORY_MIB, Machine, kernel_cmdline, qemu_argv
from framework.vm.qemu import Qemu, private_socket_dir
from tests.conftest import REPO

pytestmark = pytest.mark.boot

RECORDINGS = REPO / "tests" / "data" / "gdb"
UPDATE = os.environ.get("PATCHSCOPE_UPDATE_GDB_RECORDINGS") == "1"


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    k = prepare_kernel(parse_ref("debian-6.1"))
    assert k.symbols is not None, "the Debian kernel's kallsyms ELF is missing"
    return k


class Elf:
    """What the tests compare GDB against: the kernel ELF's own sections and symbols."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            elf = ELFFile(f)
            self.sections = {s.name: (s["sh_addr"], s["sh_size"], s["sh_offset"]) for s in elf.iter_sections()}
            symtab = elf.get_section_by_name(".symtab")
            wanted = ("text_poke_early", "alternative_instructions", "int3_magic", "int3_selftest",
                      "int3_selftest_ip")
            self.symbols = {}
            for name in wanted:
                syms = symtab.get_symbol_by_name(name) if isinstance(symtab, SymbolTableSection) else None
                if syms:
                    self.symbols[name] = (syms[0]["st_value"], syms[0]["st_size"])

    def bytes_at(self, address: int, length: int) -> bytes:
        for start, size, offset in self.sections.values():
            if start <= address and address + length <= start + size:
                with self.path.open("rb") as f:
                    f.seek(offset + address - start)
                    return f.read(length)
        raise KeyError(hex(address))

    def inside(self, address: int, *names: str) -> bool:
        return any(self.sections[n][0] <= address < self.sections[n][0] + self.sections[n][1] for n in names)


@contextmanager
def booted(kernel: Kernel) -> Iterator[tuple[Qemu, Path]]:
    """QEMU halted before the first instruction, its gdbstub on a unix socket, its console drained."""
    sockdir = private_socket_dir()
    machine = Machine(mode="native", kernel=kernel.bzimage, initrd=None, cmdline=kernel_cmdline(),
                      qmp_socket=sockdir / "qmp.sock", cpu=DEFAULT_CPU["native"],
                      memory_mib=DEFAULT_MEMORY_MIB["native"], gdb_socket=sockdir / "gdb.sock", stopped=True)
    assert machine.gdb_socket is not None
    with Qemu(qemu_argv(machine), machine.qmp_socket, sockdir) as vm:
        vm.connect_qmp()                       # so teardown can quit QEMU at once
        done = threading.Event()

        def drain() -> None:                   # a full console pty would block the guest
            while not done.is_set() and vm.read(0.1) is not None:
                pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            yield vm, machine.gdb_socket
        finally:
            done.set()
            reader.join(5)


def no_process(pid: int | None) -> bool:
    """The process is gone (not even a zombie: GDB's parent has reaped it)."""
    assert pid is not None
    return not Path(f"/proc/{pid}").exists()


# --- the brief's checks -------------------------------------------------------------------------

def test_text_poke_early_arguments_text_and_int3_selftest(kernel: Kernel, tmp_path: Path) -> None:
    assert kernel.symbols is not None
    elf = Elf(kernel.symbols)
    tpe, _ = elf.symbols["text_poke_early"]
    text_start, text_size, _ = elf.sections[".text"]
    transcript = tmp_path / "gdb.transcript"
    with booted(kernel) as (vm, sock), Gdb(sock, transcript, kernel.symbols, alive=vm.alive) as gdb:
        pid = gdb.pid
        first = gdb.connect()
        assert first is not None and first.address == 0xFFF0          # the reset vector, halted by -S

        # 1. text_poke_early(addr, opcode, len): the arguments are in rdi, rsi, rdx.
        bp = gdb.break_at("text_poke_early")
        assert bp.address == tpe and not bp.hardware
        gdb.cont()
        stop = gdb.wait_stop(60)
        assert (stop.reason, stop.function, stop.breakpoint) == ("breakpoint-hit", "text_poke_early", bp.number)
        regs = gdb.registers()
        assert regs["rip"] == tpe == stop.address
        assert elf.inside(regs["rdi"], ".text", ".init.text"), hex(regs["rdi"])   # a call site in kernel text
        assert 1 <= regs["rdx"] <= 64
        assert regs["rsi"] >= 0xFFFF800000000000                                  # the new bytes, in the kernel
        assert gdb.read_memory(regs["rsi"], regs["rdx"])                          # … and readable

        # 2. All of .text in one read; text_poke_early itself is not patched (yet).
        text = gdb.read_memory(text_start, text_size)
        assert len(text) == text_size == 14687538
        assert text[tpe - text_start:tpe - text_start + 64] == elf.bytes_at(tpe, 64)

        # 3. int3_selftest (inside alternative_instructions) calls int3_magic exactly once,
        #    through an emulated call from its int3: finish lands back in int3_selftest.
        gdb.delete(bp)
        entry = gdb.break_at("alternative_instructions", hardware=True)
        assert entry.hardware and entry.address == elf.symbols["alternative_instructions"][0]
        gdb.cont()
        assert gdb.wait_stop(60).breakpoint == entry.number
        ret = gdb.read_u64(gdb.registers(["rsp"])["rsp"])        # where alternative_instructions returns
        back = gdb.break_at(ret, temporary=True)
        magic = gdb.break_at("int3_magic")
        hits: list[Stop] = []
        gdb.cont()
        while (stop := gdb.wait_stop(60)).breakpoint != back.number:
            assert stop.breakpoint == magic.number, stop
            hits.append(stop)
            caller = gdb.finish(10)
            # int3_emulate_call() pushes the address after a 5-byte call at the int3, which
            # sits at the label int3_selftest_ip inside int3_selftest (kallsyms lists both).
            assert caller.reason == "function-finished"
            assert caller.address == elf.symbols["int3_selftest_ip"][0] + 5
            assert caller.function in ("int3_selftest", "int3_selftest_ip")
            assert elf.symbols["int3_selftest"][0] < caller.address < elf.symbols["alternative_instructions"][0]
            gdb.cont()
        assert stop.address == ret and len(hits) == 1 and gdb.hit_count(magic) == 1

    # 5. The transcript has the MI exchange; GDB is gone.
    assert no_process(pid)
    log = transcript.read_text()
    assert "-> 1-gdb-set mi-async on" in log
    assert '*stopped,reason="breakpoint-hit"' in log
    assert "dump binary memory" in log and "-exec-finish" in log


def test_finish_interrupt_registers_memory_and_teardown_while_running(kernel: Kernel, tmp_path: Path) -> None:
    assert kernel.symbols is not None
    elf = Elf(kernel.symbols)
    tpe, _ = elf.symbols["text_poke_early"]
    with booted(kernel) as (_vm, sock), Gdb(sock, tmp_path / "gdb.transcript", kernel.symbols, timeout=20) as gdb:
        pid = gdb.pid
        gdb.connect()
        gdb.break_at("alternative_instructions", hardware=True)
        gdb.cont()
        gdb.wait_stop(60)
        ret = gdb.read_u64(gdb.registers(["rsp"])["rsp"])
        stop = gdb.finish(30)                                        # all of boot-time patching runs here
        assert stop.reason == "function-finished" and stop.address == ret
        assert stop.function is not None and stop.function != "alternative_instructions"
        assert "finalize" in stop.function or "bugs" in stop.function   # arch_cpu_finalize_init / check_bugs

        gdb.cont()
        with pytest.raises(DebuggerTimeout, match=r"gdb: wait for a stop: no \*stopped record within 0.3 s"):
            gdb.wait_stop(0.3)                                       # running, no breakpoint left
        stop = gdb.interrupt()
        assert (stop.reason, stop.signal) == ("signal-received", "SIGINT")

        rax = gdb.registers(["rax"])["rax"]
        gdb.set_register("rax", 0x1122334455667788)
        assert gdb.registers(["rax"]) == {"rax": 0x1122334455667788}
        gdb.set_register("rax", rax)
        original = gdb.read_memory(tpe, 8)
        gdb.write_memory(tpe, b"\xcc" * 8)
        assert gdb.read_memory(tpe, 8) == b"\xcc" * 8 and gdb.read_u64(tpe) == 0xCCCCCCCCCCCCCCCC
        gdb.write_memory(tpe, original)
        assert gdb.read_memory(tpe, 8) == original

        with pytest.raises(DebuggerError, match="Cannot access memory at address 0x0") as err:
            gdb.read_memory(0, 16)
        assert "\n" not in str(err.value)
        with pytest.raises(DebuggerError, match="no register named nosuch"):
            gdb.registers(["nosuch"])
        with pytest.raises(DebuggerError, match="the target is not running and no stop is pending"):
            gdb.wait_stop(30)                                        # stopped, nothing pending: at once

        gdb.cont()                                                   # leave it running: close() must cope
    assert no_process(pid)


def test_errors_are_one_line_and_leave_no_gdb(kernel: Kernel, tmp_path: Path) -> None:
    assert kernel.symbols is not None
    transcript = tmp_path / "gdb.transcript"
    with Gdb(tmp_path / "never.sock", transcript, kernel.symbols) as gdb:
        pid = gdb.pid
        start = time.monotonic()
        gdb.load_symbols(kernel.symbols)
        load = time.monotonic() - start
        assert load < 2.0, f"loading symbols took {load:.2f} s"
        with pytest.raises(DebuggerError) as err:
            gdb.break_at("no_such_symbol")
        assert str(err.value) == ('gdb: break at no_such_symbol: -break-insert "no_such_symbol": '
                                  'Function "no_such_symbol" not defined.')
        with pytest.raises(DebuggerError) as err:
            gdb.evaluate("&no_such_symbol")
        assert str(err.value).startswith("gdb: evaluate &no_such_symbol: -data-evaluate-expression "
                                          "\"&no_such_symbol\": no symbol in '&no_such_symbol' is known to GDB")
        with pytest.raises(DebuggerError, match="no such file"):
            gdb.load_symbols(tmp_path / "missing.elf")

        gdb.timeout = 1.0                                # how long connect() waits for the socket
        start = time.monotonic()
        with pytest.raises(DebuggerError) as err:
            gdb.connect()                                # the symbols are loaded already: not again
        assert time.monotonic() - start < 3.0
        assert "the socket does not exist (waited 1 s)" in str(err.value) and "\n" not in str(err.value)
        assert not gdb.connected
    assert no_process(pid)
    assert "Function \\\"no_such_symbol\\\" not defined." in transcript.read_text()
    assert transcript.read_text().count("-file-exec-and-symbols") == 1     # connect() did not load them again

    # A socket that exists but where nobody listens: refused until the deadline.
    refused = tmp_path / "refused.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, Gdb(refused, tmp_path / "refused.transcript") as gdb:
        s.bind(str(refused))
        gdb.timeout = 0.5
        with pytest.raises(DebuggerError, match="Connection refused"):
            gdb.connect()
        assert not gdb.connected


def test_no_gdb_survives_an_exception_in_the_with_block(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Gdb(tmp_path / "gdb.sock", tmp_path / "gdb.transcript") as gdb:
        pid = gdb.pid
        raise RuntimeError("boom")
    assert no_process(pid)


# --- recorded scenarios (replayed by tests/unit/test_gdb_mi.py) ---------------------------------

def scenario_stops(gdb: Gdb) -> dict[str, object]:
    """Stops at text_poke_early: each *stopped arrives right behind the ^running of its continue."""
    facts: dict[str, object] = {"initial": _stop(gdb.connect())}
    bp = gdb.break_at("text_poke_early", hardware=True)
    facts["breakpoint"] = [bp.number, bp.address, bp.location, bp.hardware, bp.temporary]
    stops = []
    for _ in range(3):
        gdb.cont()
        stops.append({**(_stop(gdb.wait_stop(60)) or {}), "registers": gdb.registers(["rip", "rdi", "rsi", "rdx"])})
    facts["stops"] = stops
    facts["finish"] = _stop(gdb.finish(10))
    facts["hits"] = gdb.hit_count(bp)
    gdb.delete(bp)
    gdb.cont()
    time.sleep(0.2)
    facts["interrupt"] = _stop(gdb.interrupt())
    return facts


def scenario_disconnect(gdb: Gdb) -> dict[str, object]:
    """The guest panics (no root fs) and QEMU exits (-no-reboot) while GDB waits for a stop."""
    gdb.connect()
    gdb.cont()
    stop = gdb.wait_stop(120)
    return {"stop": _stop(stop), "connected": gdb.connected}


def _stop(stop: Stop | None) -> dict[str, object] | None:
    if stop is None:
        return None
    return {"reason": stop.reason, "address": stop.address, "function": stop.function,
            "breakpoint": stop.breakpoint, "signal": stop.signal}


def _record(name: str, transcript: Path, facts: dict[str, object]) -> None:
    if UPDATE:
        RECORDINGS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(transcript, RECORDINGS / f"{name}.transcript")
        (RECORDINGS / f"{name}.json").write_text(json.dumps(facts, indent=1) + "\n")


def test_scenario_stops(kernel: Kernel, tmp_path: Path) -> None:
    assert kernel.symbols is not None
    transcript = tmp_path / "gdb.transcript"
    with booted(kernel) as (_vm, sock), Gdb(sock, transcript, kernel.symbols) as gdb:
        facts = scenario_stops(gdb)
    stops = facts["stops"]
    assert isinstance(stops, list) and len(stops) == 3
    assert all(s["function"] == "text_poke_early" and s["reason"] == "breakpoint-hit" for s in stops)
    assert facts["hits"] == 3
    assert isinstance(facts["finish"], dict) and facts["finish"]["reason"] == "function-finished"
    assert isinstance(facts["interrupt"], dict) and facts["interrupt"]["signal"] == "SIGINT"
    _record("stops", transcript, facts)


def test_scenario_disconnect(kernel: Kernel, tmp_path: Path) -> None:
    assert kernel.symbols is not None
    transcript = tmp_path / "gdb.transcript"
    with booted(kernel) as (vm, sock), Gdb(sock, transcript, kernel.symbols) as gdb:
        facts = scenario_disconnect(gdb)
        deadline = time.monotonic() + 10
        while vm.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not vm.alive()
    stop = facts["stop"]
    assert isinstance(stop, dict)
    # QEMU either says goodbye (GDB: exited-normally) or the socket just breaks (patchscope: disconnected).
    assert stop["reason"] in ("exited-normally", "disconnected") and facts["connected"] is False
    _record(f"disconnect-{stop['reason']}", transcript, facts)   # each variant has its recording
