#!/usr/bin/env python3
"""What a GDB breakpoint costs a Xen PV dom0 boot under QEMU TCG, and why.

Boots Debian's 6.1 kernel as the PV dom0 of Debian's Xen 4.17 (QEMU 7.2, TCG)
to patchscope's /init marker, once per variant and round, interleaved (A, B, C,
A, B, C, ...) so that machine noise hits every variant alike. Each boot is timed
from QEMU's start to the ``patchscope: init done`` line on the console. Prints
per-variant medians, spreads (min..max) and the ratio to the first variant.

What it shows: QEMU 7.2 (accel/tcg/cpu-exec.c, ``check_for_breakpoints_slow``)
compares every TB's start pc with each breakpoint; a pc on the same 4 KiB
*virtual* page as a breakpoint gets ``CF_NO_GOTO_TB | 1``: one guest instruction
per translation block, unchained, for as long as the breakpoint is inserted.
``xen_start_kernel`` (0xffffffff8308369e) shares its page with the tail of
``xen_vmalloc_p2m_tree``, whose inlined ``xen_rebuild_p2m_list`` scans the whole
512 GiB p2m space (0x8000000 pfns, about nine instructions each) right after
``xen_start_kernel`` during setup_arch. So:

* a breakpoint kept at ``xen_start_kernel`` costs about 22 s more;
* the same breakpoint deleted at its hit (or a ``tbreak``) costs nothing;
* a breakpoint that never hits but sits on that page costs the same 22 s;
  one on the next page, or on the loop head's page before it, costs nothing;
* ``hbreak`` is no cheaper: under TCG both kinds are ``cpu_breakpoint_insert``;
* ``set breakpoint always-inserted on`` changes nothing: in 7.2 inserting or
  removing a breakpoint does not flush translated code.

    .venv/bin/python bench/xen_breakpoints.py [--rounds 3] [--variants a,b,...|all] [--list]

The default five variants take about 5 minutes for 3 rounds on 2 cores; ``all``
about 13.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from framework.debugger.mi import Gdb
from framework.guest import initramfs
from framework.kernel.image import prepare_kernel
from framework.kernel.refs import parse_ref
from framework.kernel.xen import prepare_hypervisor
from framework.vm import machine
from framework.vm.qemu import Qemu, private_socket_dir

MARKER = initramfs.MARKER_DONE.encode()
BOOT_TIMEOUT = 240.0
# dom0's printk time of free_initmem: after it .init.text (and so the page of
# xen_start_kernel) is gone, and no breakpoint on it can cost anything more.
FREE_INITMEM = re.compile(rb"\[\s*(\d+\.\d+)\] Freeing unused kernel image \(initmem\)")


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    gdb: bool = True
    # (location, hardware): "sym" or "sym+0x…" (resolved by GDB). An odd offset such as
    # xen_start_kernel+1 lies inside an instruction: it never hits, yet its page counts.
    breaks: tuple[tuple[str, bool], ...] = ()
    hits: int = 0                        # stops to take before letting the boot run
    delete_after_hit: bool = False       # delete the breakpoints at the last of those stops
    temporary: bool = False              # tbreak: GDB deletes the breakpoint itself at its hit
    settings: tuple[str, ...] = ()       # GDB CLI commands before the breakpoints


VARIANTS = [
    Variant("no-gdb", "no -gdb, no -S", gdb=False),
    Variant("gdb", "GDB attached at -S, no breakpoint"),
    Variant("sw-keep", "break xen_start_kernel, kept after the hit",
            breaks=(("xen_start_kernel", False),), hits=1),
    Variant("sw-delete", "break xen_start_kernel, deleted at the hit",
            breaks=(("xen_start_kernel", False),), hits=1, delete_after_hit=True),
    Variant("sw-temporary", "tbreak xen_start_kernel (GDB deletes it at the hit)",
            breaks=(("xen_start_kernel", False),), hits=1, temporary=True),
    Variant("hw-keep", "hbreak xen_start_kernel, kept after the hit",
            breaks=(("xen_start_kernel", True),), hits=1),
    Variant("alt-keep", "break alternative_instructions, kept after the hit",
            breaks=(("alternative_instructions", False),), hits=1),
    Variant("same-page", "break on xen_start_kernel's page that never hits (xen_start_kernel+1)",
            breaks=(("xen_start_kernel+1", False),)),
    Variant("prev-page", "break on the previous page, never hits (xen_vmalloc_p2m_tree+1: its head)",
            breaks=(("xen_vmalloc_p2m_tree+1", False),)),
    Variant("next-page", "break on the next page, never hits (xen_start_kernel+0x1001)",
            breaks=(("xen_start_kernel+0x1001", False),)),
    Variant("always-inserted", "break xen_start_kernel kept, 'set breakpoint always-inserted on'",
            breaks=(("xen_start_kernel", False),), hits=1, settings=("set breakpoint always-inserted on",)),
    Variant("entry-keep", "break startup_xen (dom0's entry, on another page), kept",
            breaks=(("startup_xen", False),), hits=1),
    # Many stops at a cold spot: what one stop costs (gdbstub's tb_flush at every
    # debug stop, GDB's step over the breakpoint), with GDB removing and
    # re-inserting breakpoints around each stop (the default) or not.
    Variant("stops-200", "break text_poke_early, 200 stops, then deleted",
            breaks=(("text_poke_early", False),), hits=200, delete_after_hit=True),
    Variant("stops-200-ai", "the same with 'set breakpoint always-inserted on'",
            breaks=(("text_poke_early", False),), hits=200, delete_after_hit=True,
            settings=("set breakpoint always-inserted on",)),
]
BY_NAME = {v.name: v for v in VARIANTS}
DEFAULT = ("no-gdb", "sw-keep", "sw-delete", "same-page", "next-page")


@dataclass
class Result:
    marker: float                          # s from QEMU's start to the marker
    hit: float | None = None               # s from QEMU's start to the (first) stop
    free_initmem_printk: float | None = None   # dom0's own clock at free_initmem
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Setup:
    xen: Path
    bzimage: Path
    symbols: Path
    initrd: Path


def prepare(tmp: Path, note: Callable[[str], None]) -> Setup:
    kernel = prepare_kernel(parse_ref("debian-6.1"), note)
    hv = prepare_hypervisor(parse_ref("xen-4.17"), note)
    if kernel.symbols is None:
        sys.exit(f"{kernel.ref}: no symbols")
    initrd = tmp / "initramfs.cpio"
    initrd.write_bytes(initramfs.build(initramfs.find_busybox(note).read_bytes()))
    return Setup(hv.image, kernel.bzimage, kernel.symbols, initrd)


def argv_for(s: Setup, sockdir: Path, gdb: bool) -> list[str]:
    m = machine.Machine(
        mode="xen-pv", kernel=s.bzimage, initrd=s.initrd,
        cmdline=machine.kernel_cmdline((), "xen-pv"), qmp_socket=sockdir / "qmp.sock",
        cpu=machine.DEFAULT_CPU["xen-pv"], memory_mib=machine.DEFAULT_MEMORY_MIB["xen-pv"],
        gdb_socket=sockdir / "gdb.sock" if gdb else None, stopped=gdb,
        hypervisor=s.xen, xen_cmdline=machine.xen_cmdline(256))
    return machine.qemu_argv(m)


class Console(threading.Thread):
    """Reads QEMU's console until EOF (QEMU stalls on a full pty otherwise); notes the marker's time."""

    def __init__(self, vm: Qemu) -> None:
        super().__init__(daemon=True)
        self.vm = vm
        self.data = bytearray()
        self.marker_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            chunk = self.vm.read(0.2)
            if chunk is None:
                break
            if chunk:
                self.data += chunk
                if self.marker_at is None and MARKER in self.data[-len(chunk) - len(MARKER):]:
                    self.marker_at = time.monotonic() - self.vm.started
                    self.done.set()
        self.done.set()


def resolve(g: Gdb, where: str) -> int:
    """An address for ``sym`` or ``sym+0x…`` from GDB's own symbol table."""
    sym, _, off = where.partition("+")
    base = int(g.evaluate(f"(unsigned long)&{sym}").split()[0], 0)
    return base + (int(off, 0) if off else 0)


def boot(s: Setup, v: Variant, work: Path) -> Result:
    sockdir = private_socket_dir()
    argv = argv_for(s, sockdir, v.gdb)
    result = Result(marker=float("nan"))
    vm = Qemu(argv, sockdir / "qmp.sock", sockdir)
    vm.drain_on_wait = False
    try:
        vm.launch()
        console = Console(vm)
        console.start()
        if v.gdb:
            with Gdb(sockdir / "gdb.sock", work / f"gdb-{v.name}.log", s.symbols, alive=vm.alive) as g:
                g.connect()
                for cmd in v.settings:
                    g.console(cmd)
                bps = [g.break_at(resolve(g, loc), hardware=hw, temporary=v.temporary) for loc, hw in v.breaks]
                g.cont()
                for n in range(v.hits):
                    stop = g.wait_stop(BOOT_TIMEOUT)
                    if n == 0:
                        result.hit = time.monotonic() - vm.started
                    if stop.reason != "breakpoint-hit":
                        result.notes.append(f"stop {n + 1}: {stop.describe()}")
                        break
                    if v.delete_after_hit and n == v.hits - 1:
                        for bp in bps:
                            g.delete(bp)
                    g.cont()
                console.done.wait(BOOT_TIMEOUT)
        else:
            console.done.wait(BOOT_TIMEOUT)
        if console.marker_at is None:
            tail = bytes(console.data[-600:]).decode(errors="replace")
            raise SystemExit(f"{v.name}: no marker within {BOOT_TIMEOUT:g} s; console tail:\n{tail}")
        result.marker = console.marker_at
        found = FREE_INITMEM.search(bytes(console.data))
        if found:
            result.free_initmem_printk = float(found.group(1))
    finally:
        vm.shutdown(grace=1.0)
    return result


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f}..{max(values):6.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(DEFAULT),
                    help="comma-separated; --list shows them (default: %(default)s)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for v in VARIANTS:
            print(f"{v.name:16} {v.what}")
        return
    names = [v.name for v in VARIANTS] if args.variants == "all" else [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; --list shows them")
    chosen = [BY_NAME[n] for n in names]
    with tempfile.TemporaryDirectory(prefix="patchscope-xenbp-") as tmpname:
        tmp = Path(tmpname)
        setup = prepare(tmp, lambda text: None)
        results: dict[str, list[Result]] = {v.name: [] for v in chosen}
        for n in range(args.rounds):
            for v in chosen:
                r = boot(setup, v, tmp)
                results[v.name].append(r)
                hit = f", stop at {r.hit:5.2f} s" if r.hit is not None else ""
                printk = f", dom0 clock at free_initmem {r.free_initmem_printk:5.2f} s" \
                    if r.free_initmem_printk is not None else ""
                notes = f"  [{'; '.join(r.notes)}]" if r.notes else ""
                print(f"round {n + 1} {v.name:16} marker {r.marker:6.2f} s{hit}{printk}{notes}", flush=True)
    base = statistics.median(r.marker for r in results[chosen[0].name])
    print(f"\nmedians over {args.rounds} interleaved rounds ({os.cpu_count()} cores, TCG); "
          f"ratio against {chosen[0].name}:")
    print(f"  {'variant':16} {'to marker':>9}  {'min..max':>14}  {'ratio':>5}  "
          f"{'dom0 clock at free_initmem':>26}  what")
    for v in chosen:
        rs = results[v.name]
        marks = [r.marker for r in rs]
        med = statistics.median(marks)
        printks = [r.free_initmem_printk for r in rs if r.free_initmem_printk is not None]
        pk = f"{statistics.median(printks):6.2f} s" if printks else "-"
        print(f"  {v.name:16} {med:7.2f} s  {spread(marks)}  {med / base:5.2f}  {pk:>26}  {v.what}")


if __name__ == "__main__":
    main()
