"""Crash recognition: the console fixtures under tests/data/console, and the table row by row.

Every fixture's TITLE/FATAL/CRASHES/CORRUPTED header is the expectation for find_crashes() on
its log (TITLE and CORRUPTED are the first crash's); FAMILY is the file's stem, one family a
file, as ``bench/crash_titles.py`` counts them. ``PATCHSCOPE_UPDATE_FIXTURES=1 pytest tests/unit/test_crashes.py`` rewrites
those headers from what the code produces instead (review the diff before committing).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from framework.analysis.crashes import (
    MAX_LINE_CHARS,
    MAX_REPORT_LINES,
    PATTERNS,
    Crash,
    CrashPattern,
    clean_line,
    find_crashes,
    is_fatal_line,
    match_header,
    primary,
    reset_crash,
)
from tests.unit.fixtures import Fixture, all_fixtures, format_fixture, load_fixture, write_fixture

CONSOLE = Path(__file__).resolve().parent.parent / "data" / "console"
FIXTURES = all_fixtures(CONSOLE)
UPDATE = os.environ.get("PATCHSCOPE_UPDATE_FIXTURES") == "1"


def expected_headers(crashes: list[Crash]) -> dict[str, str]:
    first = primary(crashes)
    return {"TITLE": first.title if first else "none",
            "FATAL": "Y" if any(c.fatal for c in crashes) else "N",
            "CRASHES": str(len(crashes)),
            "CORRUPTED": "Y" if first is not None and first.corrupted else "N"}


# --- The fixtures.

@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_fixture(fixture: Fixture) -> None:
    crashes = find_crashes(fixture.lines)
    got = expected_headers(crashes)
    if UPDATE:
        headers = {**fixture.headers, **got}
        if headers != fixture.headers:
            write_fixture(fixture.path, headers, fixture.lines, final_newline=fixture.final_newline)
        return
    want = {k: fixture.headers.get(k) for k in got}
    assert got == want, "\n".join(f"  {c.line}: {c.title} (fatal={c.fatal})" for c in crashes)


def test_fixture_set_is_complete() -> None:
    names = {f.name for f in FIXTURES}
    recorded = {"boot-native.log", "panic-vfs.log", "panic-sysrq.log", "panic-killinit.log",
                "xen-pv-boot.log", "xen-dom0-smap-crash.log", "xen-dom0-vfs-panic.log"}
    synthetic = {
        "oops-null-deref-panic.log", "gpf-noncanonical.log", "xen-dom0-kernel-bug-alternative.log",
        "warning-6.1.log", "soft-lockup.log", "hung-task.log", "rcu-stall.log", "kasan-slab-oob.log",
        "ubsan-shift.log", "double-fault.log", "invalid-opcode.log",
        "xen-dom0-linux-panic.log", "xen-pv-int3-gpf-2019.log", "hostile.log", "truncated-null-deref.log",
    }
    assert recorded | synthetic <= names
    for f in FIXTURES:
        assert set(f.headers) >= {"TITLE", "FATAL", "CRASHES", "CORRUPTED", "FAMILY", "SOURCE"}, f.name
        assert f.headers["FAMILY"] == f.path.stem, f.name
        assert f.headers["FATAL"] in ("Y", "N"), f.name
        assert f.headers["SOURCE"].startswith("recorded") == (f.name in recorded), f.name


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_fixture_reports_are_well_formed(fixture: Fixture) -> None:
    for crash in find_crashes(fixture.lines):
        assert 1 <= crash.line <= len(fixture.lines)
        assert crash.header and crash.header in clean_line(fixture.lines[crash.line - 1])
        assert crash.report[0] == crash.header
        assert 1 <= len(crash.report) <= MAX_REPORT_LINES
        assert all(len(ln) <= MAX_LINE_CHARS for ln in crash.report)
        assert crash.source in ("linux", "xen")
        assert "\n" not in crash.title and len(crash.title) <= 200
        json.dumps(crash.to_json())


def test_recorded_panics_in_detail() -> None:
    vfs = find_crashes(load_fixture(CONSOLE / "panic-vfs.log").lines)
    assert len(vfs) == 1
    crash = vfs[0]
    assert crash.kind == "panic" and crash.source == "linux" and crash.fatal and not crash.truncated
    assert crash.header == "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
    assert crash.report[-1] == "Kernel Offset: disabled"
    assert " mount_block_root+0x1d3/0x1e6" in crash.report
    assert all("\r" not in ln and not ln.startswith("[ ") for ln in crash.report)


def test_null_deref_oops_then_panic() -> None:
    oops, panic = find_crashes(load_fixture(CONSOLE / "oops-null-deref-panic.log").lines)
    assert (oops.kind, oops.fatal, oops.title) == ("null-deref", False,
                                                   "BUG: unable to handle kernel NULL pointer dereference in ps_null_write")
    assert not oops.corrupted
    assert "Oops: 0002 [#1] PREEMPT SMP NOPTI" in oops.report
    assert oops.report[-1] == "---[ end trace 0000000000000000 ]---"
    assert (panic.kind, panic.fatal, panic.title) == ("panic", True, "kernel panic: Fatal exception")
    # Alone, this panic would be the tail of a crash whose start was lost.
    assert panic.corrupted and "start was lost" in panic.corrupted_reason


def test_xen_dom0_crash_is_one_crash() -> None:
    (crash,) = find_crashes(load_fixture(CONSOLE / "xen-dom0-smap-crash.log").lines)
    assert (crash.source, crash.kind, crash.fatal, crash.truncated) == ("xen", "xen", True, False)
    assert crash.header == "(XEN) d0v0 Unhandled: vec 14, #PF[0001]"
    # The real report: Xen walks the page tables before it kills dom0.
    assert crash.report[1].startswith("(XEN) Pagetable walk from ")
    assert any(ln.startswith("(XEN) domain_crash_sync called from entry.S") for ln in crash.report)
    assert crash.report[-1] == "(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting."


def test_dom0_linux_panic_comes_first() -> None:
    crashes = find_crashes(load_fixture(CONSOLE / "xen-dom0-linux-panic.log").lines)
    assert [(c.source, c.title) for c in crashes] == [
        ("linux", "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"),
        ("xen", "xen: dom0 crashed"),
    ]
    assert primary(crashes) is crashes[0]


def test_truncated_report() -> None:
    (crash,) = find_crashes(load_fixture(CONSOLE / "truncated-null-deref.log").lines)
    assert crash.truncated and crash.report == (crash.header,)
    assert crash.corrupted and crash.corrupted_reason == "the log ends inside the report"
    (whole,) = find_crashes(load_fixture(CONSOLE / "panic-sysrq.log").lines)
    assert not whole.truncated
    assert find_crashes(["Kernel panic - not syncing: x"])[0].truncated
    # Cut off by the next crash, not by the end of the log: not truncated.
    first, _ = find_crashes(["BUG: kernel NULL pointer dereference, address: 0", "Kernel panic - not syncing: x",
                             "Kernel Offset: disabled"])
    assert not first.truncated
    # A Xen dom0 death whose last line never came.
    (xen,) = find_crashes(["(XEN) d0v0 Unhandled: vec 13, #GP[0000]"])
    assert xen.truncated and not xen.fatal and xen.title == "xen: d0 unhandled general protection fault"


@pytest.mark.parametrize("lines, reason", [
    # Another message's timestamp inside the header line: interleaved output.
    (["BUG: unable to handle page f[    2.100001] ps_test: tick", "RIP: 0010:ps_poke+0x1/0x2", "Call Trace:",
      " ps_poke+0x1/0x2"], "the header was cut short"),
    (["WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2 [    2.1] x", "RIP: 0010:f+0x1/0x2", "Call Trace:",
      " f+0x1/0x2", "---[ end trace 0 ]---"], "another message's timestamp is inside the header line"),
    (["BUG: KASAN: slab-out-of-bounds in ps_oob+0x1/0x2", "CPU: 0 PID: 1 Comm: a", "Call Trace:",
      " ps_oob+0x1/0x2", "=================================================================="],
     "no Read or Write line"),
    (["WARNING: CPU: 0 PID: 1 at a.c:1 kfree+0x1/0x2", "RIP: 0010:kfree+0x1/0x2", "Call Trace:",
      " memcpy+0x1/0x2", "---[ end trace 0 ]---"], "no function to name it by"),
    (["BUG: unable to handle page fault for address: ffffc90000a1b000", "RIP: 0010:ps_poke+0x1/0x2",
      "---[ end trace 0 ]---"], "no stack trace in the report"),
])
def test_corrupted_reports(lines: list[str], reason: str) -> None:
    crash = find_crashes(lines)[0]
    assert crash.corrupted and crash.corrupted_reason.startswith(reason)
    assert crash.to_json()["corrupted"] is True and Crash.from_json(crash.to_json()) == crash


def test_a_panic_named_by_its_header_is_not_corrupted_by_what_follows() -> None:
    # A run ends at the panic line; after an Oops, panic() prints no stack.
    (panic,) = find_crashes(["Kernel panic - not syncing: Attempted to kill the idle task!"])
    assert panic.truncated and not panic.corrupted


def test_whole_reports_are_not_corrupted() -> None:
    for name in ("warning-6.1.log", "gpf-noncanonical.log", "panic-vfs.log", "lockdep-circular.log"):
        crash = find_crashes(load_fixture(CONSOLE / name).lines)[0]
        assert not crash.corrupted, (name, crash.corrupted_reason)


# --- clean_line.

@pytest.mark.parametrize("raw, clean", [
    ("[    1.234567] Run /init as init process\r", "Run /init as init process"),
    ("[    1.234567]  dump_stack_lvl+0x44/0x5c", " dump_stack_lvl+0x44/0x5c"),
    ("[12345.000001] x", "x"),
    ("[    1.234567][    T1] Kernel panic - not syncing: x", "Kernel panic - not syncing: x"),
    ("[    C0] rcu: INFO: y", "rcu: INFO: y"),
    ("<4>[  920.087343] double fault: 0000 [#1]", "double fault: 0000 [#1]"),
    ("(XEN) Hardware Dom0 crashed: 'noreboot' set", "(XEN) Hardware Dom0 crashed: 'noreboot' set"),
    ("(XEN) [    5.123456] Freed 652kB init memory", "(XEN) Freed 652kB init memory"),
    ("(XEN) [2026-11-22 05:14:08.123] Freed 652kB", "(XEN) Freed 652kB"),
    ("\x1b[1;31mred\x1b[0m text \x1b]0;title\x07end", "red text end"),
    ("a\x00b\x07c\x7fd\x85e\tf  \t \r", "abcde\tf"),
    ("rcu: \t0-....: (5249 ticks this GP)", "rcu: \t0-....: (5249 ticks this GP)"),
    ("\udcff\ud800 x", "\ufffd\ufffd x"),
    ("", ""),
    ("\r\r\r", ""),
    ("\x1b[", "["),
    ("no prefix here", "no prefix here"),
])
def test_clean_line(raw: str, clean: str) -> None:
    assert clean_line(raw) == clean
    assert clean_line(clean) == clean


def test_clean_line_never_raises() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        text = "".join(chr(rnd.choice([rnd.randrange(0, 0x80), rnd.randrange(0, 0x110000)]))
                       for _ in range(rnd.randrange(0, 60)))
        out = clean_line(text)
        assert not any(ord(ch) < 0x20 and ch != "\t" for ch in out)
        out.encode("utf-8")


# --- Single lines: one sample header per table row (at least).

SAMPLES: list[tuple[str, str, bool]] = [
    ("[    1.9] Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: do_thing+0x7c/0x80",
     "stack-corruption", True),
    ("[    1.402078] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", "panic", True),
    ("BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right+0x6a/0x80 [test_kasan]", "kasan", False),
    ("BUG: KMSAN: uninit-value in kmsan_test_uninit+0x1/0x2", "kmsan", False),
    ("BUG: KFENCE: out-of-bounds read in test_out_of_bounds_read+0xa8/0x22b", "kfence", False),
    ("BUG: KCSAN: data-race in test_kernel_read / test_kernel_write", "kcsan", False),
    ("UBSAN: shift-out-of-bounds in lib/test_ubsan.c:41:11", "ubsan", False),
    ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "null-deref", False),
    ("BUG: unable to handle page fault for address: ffffffffff600000", "page-fault", False),
    ("BUG: TASK stack guard page was hit at ffffc90000477ff8 (stack is ffffc90000478000..ffffc9000047c000)",
     "stack-overflow", False),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]", "soft-lockup", False),
    ("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "hard-lockup", False),
    ("BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 30s!", "workqueue-lockup", False),
    ("INFO: task kworker/0:1:23 blocked for more than 120 seconds.", "hung-task", False),
    ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall", False),
    ("BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580", "sleep-in-atomic", False),
    ("BUG: scheduling while atomic: swapper/0/1/0x00000002", "sched-atomic", False),
    ("BUG: Bad page state in process swapper/0  pfn:01234", "bad-page", False),
    ("BUG: spinlock bad magic on CPU#0, swapper/0/1", "spinlock", False),
    ("BUG: Dentry ffff888003a0e0c0{i=1,n=/}  still in use (1) [unmount of tmpfs tmpfs]", "dentry", False),
    ("kernel BUG at arch/x86/kernel/alternative.c:1055!", "kernel-bug", False),
    ("traps: PANIC: double fault, error_code: 0x0", "double-fault", True),
    ("general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI",
     "gpf", False),
    ("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "invalid-opcode", False),
    ("double fault: 0000 [#1] PREEMPT SMP NOPTI", "double-fault", True),
    ("Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops", False),
    ("stack guard page: 0000 [#1] PREEMPT SMP NOPTI", "oops", False),
    ("WARNING: possible circular locking dependency detected", "lockdep", False),
    ("WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", "lockdep", False),
    ("WARNING: suspicious RCU usage", "lockdep", False),
    ("WARNING: CPU: 0 PID: 1 at kernel/foo.c:123 do_thing+0x12/0x34 [mod]", "warning", False),
    ("(XEN) d0v0 Unhandled: vec 14, #PF[0001]", "xen", False),
    ("(XEN) d0v0 Unhandled page fault fault/trap [#14, ec=0002]", "xen", False),
    (("(XEN) domain_crash_sync called from entry.S: fault at ffff82d04038e2a3 "
      "x86_64/entry.S#create_bounce_frame+0x15b/0x177"), "xen", True),
    ("(XEN) Domain 0 (vcpu#0) crashed on cpu#0:", "xen", True),
    ("(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.", "xen", True),
    ("(XEN) Xen BUG at common/page_alloc.c:1354", "xen", True),
    ("(XEN) Assertion 'v->processor == cpu' failed at common/sched/credit2.c:2345", "xen", True),
    ("(XEN) FATAL TRAP: vector = 14 (page fault)", "xen", True),
    ("(XEN) Panic on CPU 0:", "xen", True),
    ("(XEN) Xen WARN at arch/x86/mm.c:1234", "xen-warning", False),
    # Variants of rows above.
    ("[    0.772876] general protection fault: 0000 [#1] SMP NOPTI", "gpf", False),
    (("Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] "
      "PREEMPT SMP KASAN NOPTI"), "gpf", False),
    ("Oops: invalid opcode: 0000 [#1] PREEMPT SMP", "invalid-opcode", False),
    ("Oops: double fault: 0000 [#1] SMP KASAN PTI", "double-fault", True),
    ("BUG: unable to handle kernel paging request at ffffffffc0402000", "page-fault", False),
    ("BUG: unable to handle kernel NULL pointer dereference at 0000000000000008", "null-deref", False),
    ("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu-stall", False),
    ("INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu-stall", False),
    ("WARNING: at fs/foo.c:123 foo_write+0x1/0x2()", "warning", False),
    ("WARNING: kernel/foo.c:123 at bar+0x3c/0x60, CPU#0: swapper/0/1", "warning", False),
    ("WARNING: [!ps_ok()] kernel/ps.c:42 at ps_check+0x1a/0x40, CPU#0: swapper/0/1", "warning", False),
    ("Kernel panic - not syncing: corrupted stack end detected inside scheduler", "stack-corruption", True),
    ("Kernel panic - not syncing: kernel stack overflow", "stack-overflow", True),
    ("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b", "panic", True),
    ("Kernel panic - not syncing: Couldn't open N_TTY ldisc for ptm0 --- error -12.", "panic", True),
    ("Kernel panic - not syncing: Fatal exception in interrupt", "panic", True),
    ("Kernel panic - not syncing: panic_on_warn set ...", "panic", True),
    ("BUG: KASAN: double-free in kfree+0x8f/0x1d0", "kasan", False),
    ("BUG: KASAN: slab-out-of-bounds on address ffff88000c00c0c0", "kasan", False),
    ("BUG: KMSAN: uninit-value in ps_read+0x1/0x2", "kmsan", False),
    ("BUG: KFENCE: use-after-free read in ps_uaf+0x1/0x2", "kfence", False),
    ("BUG: KFENCE: invalid free in ps_free+0x1/0x2", "kfence", False),
    ("UBSAN: Undefined behaviour in lib/ps.c:12:3", "ubsan", False),
    ("BUG: unable to handle page f", "page-fault", False),
    ("NMI watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]", "soft-lockup", False),
    ("INFO: task ps_worker:123 can't die for more than 143 seconds.", "hung-task", False),
    ("[ INFO: possible circular locking dependency detected ]", "lockdep", False),
    ("WARNING: possible recursive locking detected", "lockdep", False),
    ("WARNING: inconsistent lock state", "lockdep", False),
    ("INFO: trying to register non-static key.", "lockdep", False),
    ("[ BUG: Invalid wait context ]", "lockdep", False),
    ("[ BUG: bad unlock balance detected! ]", "lockdep", False),
    ("WARNING: held lock freed!", "lockdep", False),
    ("WARNING: ps_worker/123 still has locks held!", "lockdep", False),
    ("WARNING: lock held when returning to user space!", "lockdep", False),
    ("WARNING: Nested lock was not taken", "lockdep", False),
    ("BUG: using smp_processor_id() in preemptible [00000000] code: swapper/0/1", "preemptible", False),
    ("2026/11/30 10:00:01 BUG: memory leak", "memory-leak", False),
    ("unreferenced object 0xffff888100a1b2c0 (size 32):", "memory-leak", False),
    ("BUG: non-zero nr_ptes on freeing mm: 4", "bad-mm", False),
    ("BUG kmalloc-64 (Not tainted): Object already free", "slub", False),
    ("BUG: something nobody has named yet", "bug", False),
    ("kernel BUG at mm/usercopy.c:99!", "kernel-bug", False),
    ("kernel BUG at lib/list_debug.c:62!", "kernel-bug", False),
    ("stack segment: 0000 [#1] PREEMPT SMP NOPTI", "stack-segment", False),
    ("divide error: 0000 [#1] PREEMPT SMP NOPTI", "divide-error", False),
    ("divide_error: 0000 [#1] PREEMPT SMP NOPTI", "divide-error", False),
    ("WARNING: CPU: 0 PID: 1 at lib/debugobjects.c:509 debug_print_object+0x8d/0xb0", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at mm/usercopy.c:101 usercopy_warn+0x1/0x2", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at lib/kobject.c:700 kobject_put+0x1/0x2", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at fs/proc/generic.c:380 proc_register+0x1/0x2", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at lib/refcount.c:25 refcount_warn_saturate+0x97/0x110", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at kernel/locking/lockdep.c:232 __lock_acquire+0x1/0x2", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at mm/vmalloc.c:3000 __vmalloc_node_range+0x1/0x2", "warning", False),
    ("WARNING: CPU: 0 PID: 1 at mm/page_alloc.c:5000 __alloc_pages+0x1/0x2 kmalloc", "warning", False),
    ("unregister_netdevice: waiting for lo to become free. Usage count = 2", "netdev", False),
    ("  BUG: KCSAN: data-race in ps_reader / ps_writer", "kcsan", False),
    ("(XEN) traps.c:458:d0 Unhandled invalid opcode fault/trap [#6] on VCPU 0 [ec=0000]", "xen", False),
    ("(XEN) FATAL TRAP: vec 7, #NM[0000]", "xen", True),
    ("(XEN) Domain 0 crashed: rebooting machine in 5 seconds.", "xen", True),
    ("(XEN) [    5.123456] Hardware Dom0 crashed: rebooting machine in 5 seconds.", "xen", True),
    ("\x1b[31m[    1.9] Kernel panic - not syncing: x\x1b[0m\r", "panic", True),
    ("patchscope: run 1: cat /dev/zero[    3.000000] Kernel panic - not syncing: Out of memory", "panic", True),
    ("dom0 partial line(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.", "xen", True),
]


@pytest.mark.parametrize("line, kind, fatal", SAMPLES)
def test_match_header(line: str, kind: str, fatal: bool) -> None:
    row = match_header(line)
    assert row is not None and row.kind == kind
    assert is_fatal_line(line) is fatal
    assert match_header(clean_line(line)) is row


def test_every_row_has_a_sample() -> None:
    hit = {match_header(line) for line, _, _ in SAMPLES}
    missing = [(row.kind, row.header.pattern) for row in PATTERNS if row not in hit]
    assert not missing


def test_rows_are_sane() -> None:
    assert len(set(PATTERNS)) == len(PATTERNS)
    for row in PATTERNS:
        assert isinstance(row, CrashPattern)
        assert row.keyword and row.title
        assert row.source == ("xen" if row.header.pattern.startswith(r"\(XEN\) ") else "linux")
        assert not (row.terminal and row.message_next)


@pytest.mark.parametrize("line", [
    "patchscope: running: echo panic",
    "panic",
    "patchscope: run 1: echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'",
    "patchscope: run 1: echo \"[    1.000000] Kernel panic - not syncing: nope\"",
    "'Kernel panic - not syncing: in quotes'",
    "echo Kernel panic - not syncing: not at a message start",
    "[    1.9] ---[ end Kernel panic - not syncing: Fatal exception ]---",
    "[    1.9] ---[ end trace 0000000000000000 ]---",
    "[    1.9] ------------[ cut here ]------------",
    "[    1.9] traps: init[1] general protection fault ip:4011d6 sp:7ffd5f1c0a20 error:0 in init[401000+95000]",
    "[    1.9] traps: init[1] trap invalid opcode ip:401000 sp:7ffd5f1c0a20 error:0 in init[401000+95000]",
    "[    1.2] AMD-Vi: AMD IOMMUv2 functionality not available on this system - This is not a bug.",
    "[    1.9] sysrq: Trigger a crash",
    "[    1.9] Kernel Offset: disabled",
    "[    1.9] Call Trace:",
    "WARNING: at least one of your users is angry",
    "[    1.9] kernel tried to execute NX-protected page - exploit attempt? (uid: 0)",
    "[    1.9] unable to execute userspace code (SMEP?) (uid: 0)",
    "[    1.9] list_add corruption. next->prev should be prev (ffff8880), but was 0. (next=ffff8881).",
    "Oops: nothing to see here",
    "INFO: task foo:1 is fine",
    "rcu: INFO: rcu_preempt kthread starved for 10 jiffies!",
    "(XEN) Hardware Dom0 halted: halting machine",
    "(XEN) Hardware Dom0 shutdown: rebooting machine",
    "(XEN) ----[ Xen-4.17.6-pre  x86_64  debug=n  Not tainted ]----",
    "(XEN) Std. Loglevel: All",
    "NMI:          0   Non-maskable interrupts",
    "",
    "\x00" * 100,
])
def test_not_a_header(line: str) -> None:
    assert match_header(line) is None
    assert not is_fatal_line(line)
    assert find_crashes([line]) == []


def test_match_header_is_fast_on_hostile_lines() -> None:
    rnd = random.Random(3)
    junk = "".join(rnd.choice("ab []().:'\"0123456789BUGXEN") for _ in range(1_000_000))
    stamps = "[    1.000000] " * 20_000 + "nothing"
    brackets = "[" * 100_000 + "    1.0] Kernel"
    quoted = "echo '" + "[    1.0] Kernel panic - not syncing: " * 30_000
    started = time.monotonic()
    for line in (junk, stamps, brackets, quoted, "(XEN) " * 50_000, "BUG: " + "x" * 500_000):
        match_header(line)
        find_crashes([line, line])
    assert time.monotonic() - started < 5.0


def test_find_crashes_never_raises_on_junk() -> None:
    rnd = random.Random(11)
    pieces = [h for h, _, _ in SAMPLES] + ["RIP: 0010:", "Call Trace:", " ? x+0x1/0x2", "(XEN) ", "\x00", "\ud800",
                                           "---[ end trace", "=" * 30, "\x1b[", "'", "[    1.0] "]
    for _ in range(300):
        lines = ["".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 4))) for _ in range(rnd.randrange(0, 40))]
        for crash in find_crashes(lines):
            json.dumps(crash.to_json())


# --- Titles and grouping on small logs.

@pytest.mark.parametrize("lines, title", [
    (["general protection fault: 0000 [#1] SMP NOPTI", "RIP: e030:int3_magic+0x0/0x7"],
     "general protection fault in int3_magic"),
    (["BUG: unable to handle kernel paging request at ffffffffc0402000",
      "RIP: 0010:[<ffffffff81234567>]  [<ffffffff81234567>] foo_bar.isra.3+0x12/0x40"],
     "BUG: unable to handle kernel paging request in foo_bar"),
    (["BUG: unable to handle kernel NULL pointer dereference at 0000000000000008",
      "RIP: 0010:do_exit.cold+0x1/0x2"], "BUG: unable to handle kernel NULL pointer dereference in do_exit"),
    (["BUG: kernel NULL pointer dereference, address: 0000000000000000", "RIP: 0010:0x0", "Call Trace:",
      " <TASK>", " ? __die_body+0x1a/0x60", " caller_fn+0x15/0x30", " </TASK>"],
     "BUG: unable to handle kernel NULL pointer dereference in caller_fn"),
    (["WARNING: at fs/foo.c:123 foo_write+0x1/0x2()", "Call Trace:",
      " [<ffffffff8105cc2a>] warn_slowpath_common+0x8a/0xc0", " [<ffffffff8105cc7a>] foo_write+0x1/0x2"],
     "WARNING in foo_write"),
    (["WARNING: kernel/foo.c:123 at bar+0x3c/0x60, CPU#0: swapper/0/1", "RIP: 0010:bar+0x3c/0x60"], "WARNING in bar"),
    # The header's function is not enough: syzkaller takes it from the RIP line or the stack.
    (["WARNING: kernel/foo.c:123 at bar+0x3c/0x60, CPU#0: swapper/0/1"], "WARNING in corrupted"),
    (["IP: [<ffffffff8148e81d>] ps_old_ip+0x2bd/0x3410", "BUG: unable to handle kernel NULL pointer dereference"][::-1],
     "BUG: unable to handle kernel NULL pointer dereference in ps_old_ip"),
    (["WARNING: lib/refcount.c:19 at 0x0, CPU#1: a/1", "RIP: 0010:refcount_warn_saturate+0xc5/0x110",
      "Call Trace:", " <TASK>", " __refcount_add+0x1/0x2", " ps_vma_get+0x1/0x2", " </TASK>"],
     "WARNING: refcount bug in ps_vma_get"),
    (["BUG: KFENCE: use-after-free read in memcmp+0x57/0x150", "",
      "Use-after-free read at 0xffff88823bc8cf68 (in kfence-#69):", " memcmp+0x57/0x150", " ps_find+0x57/0x150",
      "", "kfence-#69 [0xffff88823bc8ce00-0xffff88823bc8cfa7, size=424, cache=kmalloc-512] allocated by task 1",
      " ps_alloc+0x19c/0x850"], "KFENCE: use-after-free in ps_find"),
    (["unreferenced object 0xffff880039a55260 (size 64):", "  backtrace:",
      "    [<ffffffff848a2f5f>] sock_kmalloc+0x7f/0xc0", "    [<ffffffff84e5bea0>] ps_leaky.isra.7+0x15d0/0x2830"],
     "memory leak in ps_leaky"),
    (["WARNING: CPU: 1 PID: 0 at kernel/foo.c:123", "RIP: 0010:baz_fn+0x3c/0x60"], "WARNING in baz_fn"),
    (["kernel BUG at mm/slub.c:4321!", "invalid opcode: 0000 [#1] SMP"], "kernel BUG in corrupted"),
    (["kernel BUG at mm/slub.c:4321!", "Oops: invalid opcode: 0000 [#1] SMP", "RIP: 0010:kfree+0x1/0x2",
      "Call Trace:", " <TASK>", " ps_free_twice+0x1/0x2", " </TASK>"], "kernel BUG in ps_free_twice"),
    (["kernel BUG at fs/ps.c:77!", "Oops: invalid opcode: 0000 [#1] SMP", "RIP: 0010:ps_bug_fn+0x1/0x2"],
     "kernel BUG in ps_bug_fn"),
    (["Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: do_thing+0x7c/0x80"],
     "kernel panic: stack is corrupted in do_thing"),
    (["Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: ffffffff8343632e",
      "Call Trace:", " <TASK>", " dump_stack_lvl+0x1/0x2", " panic+0x1/0x2", " __stack_chk_fail+0x1/0x2",
      " ps_smash+0x1/0x2", " </TASK>"], "kernel panic: stack is corrupted in ps_smash"),
    (["Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"],
     "kernel panic: Attempted to kill init!"),
    (["Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"],
     "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"),
    (["Kernel panic - not syncing: Attempted to kill the idle task!   "],
     "kernel panic: Attempted to kill the idle task!"),
    (["Kernel panic - not syncing: "], "kernel panic"),
    (["int3: 0000 [#1] SMP", "RIP: 0010:foo_int3+0x0/0x2"], "int3 in foo_int3"),
    (["BUG: KCSAN: data-race in test_kernel_read / test_kernel_write"],
     "KCSAN: data-race in test_kernel_read / test_kernel_write"),
    (["BUG: KFENCE: out-of-bounds read in test_out_of_bounds_read+0xa8/0x22b"],
     "KFENCE: out-of-bounds in test_out_of_bounds_read"),
    (["BUG: KASAN: double-free or invalid-free in kfree+0x1/0x2", "Call Trace:", " kfree+0x1/0x2",
      " ps_free+0x1/0x2"], "KASAN: invalid-free in ps_free"),
    (["BUG: KASAN: slab-out-of-bounds in ps_oob+0x1/0x2", "Read of size 4 at addr ffff888003a0e0c0 by task a/1"],
     "KASAN: slab-out-of-bounds Read in ps_oob"),
    (["UBSAN: array-index-out-of-bounds in /build/linux-Ab1/drivers/x/y.c:99:5", "Call Trace:", " <TASK>",
      " dump_stack_lvl+0x1/0x2", " __ubsan_handle_out_of_bounds+0x1/0x2", " y_lookup+0x1/0x2", " </TASK>"],
     "UBSAN: array-index-out-of-bounds in y_lookup"),
    (["BUG: using smp_processor_id() in preemptible [00000000] code: swapper/0/1", "Call Trace:", " <TASK>",
      " dump_stack_lvl+0x44/0x5c", " check_preemption_disabled+0xd9/0xe0", " foo_percpu+0x1/0x2", " </TASK>"],
     "BUG: using smp_processor_id() in preemptible code in foo_percpu"),
    (["BUG: Dentry ffff888003a0e0c0{i=1,n=/}  still in use (1) [unmount of tmpfs tmpfs]"],
     "BUG: Dentry still in use in unmount"),
    (["BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580", "Call Trace:",
      " <TASK>", " dump_stack_lvl+0x44/0x5c", " __might_resched.cold+0xcc/0xdd", " mutex_lock+0x1a/0x40",
      " foo_irq_handler+0x1e/0x40 [foo]", " </TASK>"],
     "BUG: sleeping function called from invalid context in foo_irq_handler"),
    (["BUG: spinlock bad magic on CPU#0, swapper/0/1", "Call Trace:", " do_raw_spin_lock+0x1/0x2",
      " _raw_spin_lock+0x1/0x2", " ps_grab_it+0x1/0x2"], "BUG: spinlock bad magic in ps_grab_it"),
    (["BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 30s!"], "BUG: workqueue lockup"),
    (["INFO: task init:1 blocked for more than 120 seconds.", "Call Trace:", " <TASK>", " __schedule+0x1/0x2",
      " schedule+0x1/0x2", " io_schedule+0x1/0x2", " folio_wait_bit+0x1/0x2", " ps_read_page+0x1/0x2",
      " </TASK>"], "INFO: task hung in ps_read_page"),
    (["INFO: task init:1 blocked for more than 120 seconds.", "Call Trace:", " <TASK>", " __schedule+0x1/0x2",
      " schedule+0x1/0x2", " synchronize_srcu+0x1/0x2", " ps_teardown+0x1/0x2", " </TASK>"],
     "INFO: task hung in synchronize_rcu"),
    (["(XEN) d0v0 Unhandled page fault fault/trap [#14, ec=0002]"], "xen: d0 unhandled page fault"),
    (["(XEN) traps.c:458:d0 Unhandled invalid opcode fault/trap [#6] on VCPU 0 [ec=0000]"],
     "xen: d0 unhandled invalid opcode"),
    (["(XEN) d1v3 Unhandled: vec 99, #??[0000]"], "xen: d1 unhandled vector NUM"),
    ([("(XEN) domain_crash_sync called from entry.S: fault at ffff82d04036e5b0 "
       "x86_64/entry.S#domain_crash_page_fault_6x8+0/0x4")], "xen: domain_crash_sync in domain_crash_page_fault_6x8"),
    (["(XEN) Assertion 'v->processor == cpu' failed at common/sched/credit2.c:2345"],
     "xen: assertion failed at common/sched/credit2.c"),
    (["(XEN) FATAL TRAP: vector = 6 (invalid opcode)"], "xen: FATAL TRAP: invalid opcode"),
    (["(XEN) ****************************************", "(XEN) Panic on CPU 0:",
      "(XEN) FATAL TRAP: vector = 2 (nmi)", "(XEN) [error_code=0000] , IN INTERRUPT CONTEXT",
      "(XEN) ****************************************", "(XEN) ", "(XEN) Reboot in five seconds..."],
     "xen: FATAL TRAP: NMI"),
    (["(XEN) Panic on CPU 0:", "(XEN) Could not set up DOM0 guest OS (rc = -22)",
      "(XEN) ****************************************"], "xen: panic: Could not set up DOM0 guest OS (rc = -NUM)"),
    (["(XEN) Panic on CPU 0:"], "xen: panic"),
    (["[    1.234567][    T1] Kernel panic - not syncing: x"], "kernel panic: x"),
    # RIP in locking machinery: the culprit is the first real caller; "? " frames are unreliable.
    (["watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]",
      "RIP: 0010:native_queued_spin_lock_slowpath+0x6a/0x2a0", "Call Trace:", " <TASK>",
      " ? stale_frame+0x1/0x2", " _raw_spin_lock+0x29/0x30", " take_the_lock+0x12/0x40 [m]",
      " do_one_initcall+0x1/0x2", " kernel_init+0x1/0x2", " ret_from_fork+0x1/0x2", " </TASK>"],
     "BUG: soft lockup in kernel_init"),
    # A stall has no entry point in view: nothing names it.
    (["watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]", "RIP: 0010:spin+0x1/0x2", "Call Trace:",
      " <TASK>", " take_the_lock+0x12/0x40 [m]", " </TASK>"], "BUG: soft lockup in corrupted"),
])
def test_titles(lines: list[str], title: str) -> None:
    assert primary(find_crashes(lines)) == find_crashes(lines)[0]
    assert find_crashes(lines)[0].title == title


def test_one_physical_crash_is_one_crash() -> None:
    warn = ["------------[ cut here ]------------", "WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "Call Trace:",
            " f+0x1/0x2", "---[ end trace 0000000000000000 ]---"]
    assert [c.title for c in find_crashes(warn)] == ["WARNING in f"]
    listcorrupt = ["------------[ cut here ]------------",
                   "list_add corruption. prev->next should be next (ffff8880), but was 0. (prev=ffff8881).",
                   "WARNING: CPU: 0 PID: 1 at lib/list_debug.c:30 __list_add_valid+0x7b/0xa0",
                   "RIP: 0010:__list_add_valid+0x7b/0xa0", "Call Trace:", " <TASK>", " ? __warn+0x7d/0xc0",
                   " add_thing+0x2c/0x50 [foo]", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    assert [(c.kind, c.title) for c in find_crashes(listcorrupt)] == [("warning", "WARNING in add_thing")]
    # panic_on_warn: the panic is the warning's own end, and makes it fatal.
    on_warn = ["WARNING: CPU: 0 PID: 1 at kernel/workqueue.c:2911 __flush_work+0x740/0x880",
               "Kernel panic - not syncing: panic_on_warn set ...", "Call Trace:", " __flush_work+0x1/0x2",
               " ps_sync_queue+0x1/0x2", "RIP: 0010:__flush_work+0x740/0x880", "Kernel Offset: disabled"]
    (crash,) = find_crashes(on_warn)
    assert (crash.title, crash.fatal, crash.corrupted) == ("WARNING in ps_sync_queue", True, False)
    nx = ["kernel tried to execute NX-protected page - exploit attempt? (uid: 0)",
          "BUG: unable to handle page fault for address: ffff888003c1e000",
          "#PF: supervisor instruction fetch in kernel mode", "#PF: error_code(0x0011) - permissions violation",
          "Oops: 0011 [#1] PREEMPT SMP NOPTI", "RIP: 0010:0xffff888003c1e000", "Call Trace:", " <TASK>",
          " call_data+0x12/0x20", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    (crash,) = find_crashes(nx)
    assert (crash.kind, crash.title) == ("page-fault", "BUG: unable to handle kernel paging request in call_data")
    assert crash.report == tuple(nx[1:])


def test_separate_crashes_stay_separate() -> None:
    two_oopses = ["Oops: 0000 [#1] SMP", "RIP: 0010:a_fn+0x1/0x2", "Call Trace:", " a_fn+0x1/0x2",
                  "Oops: 0000 [#2] SMP", "RIP: 0010:b_fn+0x1/0x2"]
    assert [c.title for c in find_crashes(two_oopses)] == ["Oops in a_fn", "Oops in b_fn"]
    warn_then_oops = ["WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "RIP: 0010:f+0x1/0x2", "Call Trace:",
                      "Oops: 0000 [#1] SMP",
                      "RIP: 0010:g+0x1/0x2"]
    assert [c.title for c in find_crashes(warn_then_oops)] == ["WARNING in f", "Oops in g"]
    bug_then_bug = ["BUG: kernel NULL pointer dereference, address: 0", "RIP: 0010:a_fn+0x1/0x2",
                    "BUG: kernel NULL pointer dereference, address: 8", "RIP: 0010:b_fn+0x1/0x2"]
    assert len(find_crashes(bug_then_bug)) == 2


def test_repeated_watchdog_reports() -> None:
    def lockup(secs: int, func: str) -> list[str]:
        return [f"watchdog: BUG: soft lockup - CPU#0 stuck for {secs}s! [a:1]", f"RIP: 0010:{func}+0x4/0x10",
                "Call Trace:", " <TASK>", f" {func}+0x4/0x10", " kthread+0x1/0x2", " </TASK>"]
    same = lockup(22, "spin") + ["some line"] + lockup(48, "spin")
    assert [c.title for c in find_crashes(same)] == ["BUG: soft lockup in spin"]
    other = lockup(22, "spin") + lockup(22, "other")
    assert [c.title for c in find_crashes(other)] == ["BUG: soft lockup in spin", "BUG: soft lockup in other"]
    # Only watchdogs repeat: two identical Oopses are two crashes.
    oops = ["Oops: 0000 [#1] SMP", "RIP: 0010:a_fn+0x1/0x2", "---[ end trace 0 ]---"]
    assert len(find_crashes(oops + oops)) == 2


def test_report_extent() -> None:
    lines = ["Kernel panic - not syncing: x"] + [f"line {n}" for n in range(MAX_REPORT_LINES * 2)]
    lines[MAX_REPORT_LINES + 50] = "Kernel panic - not syncing: y"
    first, second = find_crashes(lines)
    assert len(first.report) == MAX_REPORT_LINES and not first.truncated
    assert (second.line, second.title) == (MAX_REPORT_LINES + 51, "kernel panic: y")
    ended = find_crashes(["WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "---[ end trace 0 ]---", "after"])
    assert ended[0].report == ("WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "---[ end trace 0 ]---")
    xen = find_crashes(["(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds.", "(XEN) more"])
    assert xen[0].report == ("(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds.",)
    death = ["(XEN) d0v0 Unhandled: vec 6, #UD[0000]", "(XEN) Domain 0 (vcpu#0) crashed on cpu#0:",
             "(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting."]
    (xen_death,) = find_crashes([*death, "(XEN) later chatter", "later line"])
    assert xen_death.report == tuple(death) and xen_death.title == "xen: d0 unhandled invalid opcode"
    mid = find_crashes(["user junk[    3.0] Kernel panic - not syncing: z"])
    assert mid[0].header == "Kernel panic - not syncing: z" and mid[0].line == 1


def test_input_is_not_modified() -> None:
    lines = ["[    1.0] Kernel panic - not syncing: x\r", "[    1.1] Kernel Offset: disabled\r"]
    copy = list(lines)
    find_crashes(lines)
    assert lines == copy
    assert find_crashes(tuple(lines)) == find_crashes(lines)


# --- reset_crash, primary, to_json.

def test_reset_crash() -> None:
    crash = reset_crash("Run /init", 42)
    assert crash == Crash(title="reset or triple fault after 'Run /init'", fatal=True, line=42, header="",
                          kind="reset", source="linux", report=(), truncated=False)


def test_primary() -> None:
    assert primary([]) is None
    crashes = find_crashes(["WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "RIP: 0010:f+0x1/0x2", "---[ end trace 0 ]---",
                            "Kernel panic - not syncing: later"])
    assert [c.title for c in crashes] == ["WARNING in f", "kernel panic: later"]
    assert primary(crashes) is crashes[0]
    assert primary(tuple(reversed(crashes))) is crashes[1]


def test_to_json() -> None:
    (crash,) = find_crashes(["Kernel panic - not syncing: x", "Kernel Offset: disabled"])
    assert crash.to_json() == {"title": "kernel panic: x", "fatal": True, "line": 1,
                               "header": "Kernel panic - not syncing: x", "kind": "panic", "source": "linux",
                               "report": ["Kernel panic - not syncing: x", "Kernel Offset: disabled"],
                               "truncated": False, "corrupted": False}
    assert json.loads(json.dumps(crash.to_json())) == crash.to_json()


# --- The fixture format itself.

@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_fixture_round_trip(fixture: Fixture) -> None:
    text = format_fixture(fixture.headers, fixture.lines, final_newline=fixture.final_newline)
    assert text.encode("utf-8", "surrogateescape") == fixture.path.read_bytes()


def test_fixture_write_and_load(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    lines = ["a\r", "\udcff", "", "z"]
    write_fixture(path, {"TITLE": "none", "SOURCE": "synthetic"}, lines, final_newline=False)
    assert path.read_bytes() == b"TITLE: none\nSOURCE: synthetic\n\na\r\n\xff\n\nz"
    f = load_fixture(path)
    assert (f.headers, f.lines, f.final_newline) == ({"TITLE": "none", "SOURCE": "synthetic"}, lines, False)
    write_fixture(path, f.headers, lines)
    assert load_fixture(path).lines == lines and load_fixture(path).final_newline
    with pytest.raises(ValueError):
        load_fixture(_write(tmp_path / "bad.log", b"no header line\n\nlog\n"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
