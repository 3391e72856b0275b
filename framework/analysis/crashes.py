"""Crash recognition on a serial console: Linux and Xen, natively and as Xen PV dom0. Pure.

Recognition is data, in the style of syzkaller's ``pkg/report``: ``PATTERNS`` is an
ordered table with one row (a ``CrashPattern``) per kind of crash. A row says

* ``header``   the regex of the line that starts a report, anchored where a console
               message starts (see "Where a header may start" below);
* ``keyword``  a literal that every matching line contains: a cheap prefilter, so that
               most console lines are rejected by a handful of substring tests;
* ``title``    a ``str.format`` template over the header's named groups (see "Titles");
* ``func``     where the " in FUNC" part of the title comes from, tried in order:
               ``"header"`` (the header's ``func`` group), ``"rip"`` (the report's first
               ``RIP: 0010:func+0x1d/0x40`` line, or ``RIP: e030:`` for Xen PV), ``"stack"``
               (the first reliable Call Trace frame that is not infrastructure:
               dump_stack, __schedule, mutex_lock, kasan_report ... see ``_SKIP_FRAME``);
* ``fatal``    whether this line means the machine is dying (kernel panic, a dom0 or
               hypervisor crash): the console monitor ends a run on it (``is_fatal_line``);
* ``chain``/``stage``  how one physical crash that prints several headers stays ONE crash;
* ``end``/``complete`` what closes a report, and what proves it was printed in full.

The first row that matches wins, so specific rows come before generic ones
(``Kernel panic - not syncing: stack-protector: ...`` before ``Kernel panic``,
``BUG: KASAN:`` before ``BUG:``, lockdep's ``WARNING: possible ...`` before ``WARNING:``).

Titles
------
A title is the row's template filled from the header, plus `` in FUNC`` when a
function was found (``BUG: kernel NULL pointer dereference in do_thing``); without
one the suffix is simply left out. Titles are dedup keys across kernel versions,
so they never contain line numbers, addresses, CPU or PID numbers, and compiler
suffixes are dropped from function names (``do_exit.cold`` -> ``do_exit``,
``__mutex_lock.constprop.0`` -> ``__mutex_lock``). Header variants of different
kernel versions give the same title (``BUG: unable to handle kernel paging request``
and 6.x ``BUG: unable to handle page fault for address`` are both
``BUG: unable to handle page fault``). Formats that carry a file keep it, without
the line number: ``kernel BUG at arch/x86/kernel/alternative.c in apply_paravirt``,
``UBSAN: shift-out-of-bounds in lib/foo.c``, ``xen: BUG at spinlock.c``.
Xen titles start with ``xen: ``; a domain is named ``d0`` without its vCPU
(``xen: d0 unhandled page fault``), vectors by name (14 -> ``page fault``).

One crash, several headers
--------------------------
A header that arrives while a report is being collected either continues that
report or starts a new crash. It continues it when the two rows share a
``chain`` and the new row's ``stage`` is higher than that of the last row joined:

* chain ``die``: ``kernel tried to execute NX-protected page`` (0) ->
  ``BUG: unable to handle page fault`` / ``BUG: kernel NULL pointer dereference`` /
  ``kernel BUG at`` / ``PANIC: double fault`` (1) -> ``Oops: 0002 [#1]`` /
  ``invalid opcode: 0000 [#1]`` / ``general protection fault`` (2). A second
  ``Oops: [#2]`` has no higher stage, so it is a second crash.
* chain ``warn``: ``list_add corruption.`` (0) -> ``WARNING: CPU: ...`` (1).
* chain ``xen-dom0``: ``(XEN) d0v0 Unhandled: vec 14`` (0) -> ``domain_crash_sync`` (1)
  -> ``Domain 0 (vcpu#0) crashed on cpu#0`` (2) -> ``Hardware Dom0 crashed`` (3).
* chain ``xen-panic``: ``(XEN) Xen BUG at`` / ``Assertion`` (0) -> ``Panic on CPU`` (1).

The title, kind and source come from the first row; the crash is fatal when any
row joined is. ``Kernel panic - not syncing`` is in no chain, so the panic that
follows an Oops is a crash of its own (the Oops non-fatal, then the panic fatal),
and so is Xen's ``Hardware Dom0 crashed`` after a dom0 Linux panic.
``------------[ cut here ]------------`` is not a header: the ``WARNING:`` or
``kernel BUG at`` line after it is. Rows marked ``repeats`` (soft lockup, hung
task, RCU stall ...) are re-printed by the kernel while the condition lasts: a
repeat with the title of an earlier crash is not a new crash.

Reports
-------
After its header a report collects lines until the next header that does not
join it, an end line (``---[ end trace``, ``---[ end Kernel panic``, a sanitizer's
``=====`` rule, Xen's ``Reboot in five seconds``), a terminal row
(``Hardware Dom0 crashed``), or ``MAX_REPORT_LINES`` lines. It is ``truncated``
when the log ended before any proof of completeness (``Call Trace:``,
``Kernel Offset:``, an end line; for Xen the dom0 death or the panic banner).
Lines are cleaned (``clean_line``) and cut to ``MAX_LINE_CHARS`` characters.

Where a header may start
------------------------
At the start of the cleaned line, right after a kernel timestamp embedded in the
line (kernel output interleaved into a partial user-space line), or at an
embedded ``(XEN) ``, but never inside a quoted string: ``patchscope: run 1: echo
'Kernel panic - not syncing: x'`` is user space talking, not a panic. A header
printed by user space at the very start of a line cannot be told apart.

Adding a row
------------
Add a ``_row(...)`` to ``PATTERNS`` above the generic rows it refines, with a
keyword that every matching line contains, then add a console log under
``tests/data/console/`` (recorded if at all possible, else synthetic and faithful
to the kernel's format) and a sample header to ``tests/unit/test_crashes.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

Source = Literal["linux", "xen"]
FuncSource = Literal["header", "rip", "stack"]

MAX_REPORT_LINES = 100
MAX_LINE_CHARS = 1024
MAX_TITLE_CHARS = 200
# A header is recognised within this many characters of where it starts, and at
# most this many places per line are tried: bounded work on hostile lines.
_HEADER_SPAN = 1024
_MAX_STARTS = 16


@dataclass(frozen=True)
class CrashPattern:
    """One row of the table: one kind of crash header."""

    kind: str
    keyword: str                      # literal contained in every line the header matches
    header: re.Pattern[str]           # matched (not searched) where a console message starts
    title: str                        # str.format template over the header's named groups
    fatal: bool = False
    source: Source = "linux"
    func: tuple[FuncSource, ...] = ()
    chain: frozenset[str] = frozenset()
    stage: int = 0
    end: re.Pattern[str] | None = None       # a later line that closes the report (kept in it)
    complete: re.Pattern[str] | None = None  # a later line proving the report is whole; None: always whole
    terminal: bool = False            # this header is the report's last line
    message_next: bool = False        # the next line is this crash's message (Xen's "Panic on CPU N:")
    repeats: bool = False             # re-printed while the condition lasts


@dataclass(frozen=True)
class Crash:
    title: str
    fatal: bool
    line: int                         # 1-based index of the header line in the input
    header: str
    kind: str
    source: str
    report: tuple[str, ...]
    truncated: bool
    repeats: int = 1                  # past MAX_KEPT crashes, later ones with this title are counted here

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title, "fatal": self.fatal, "line": self.line, "header": self.header,
            "kind": self.kind, "source": self.source, "report": list(self.report),
            "truncated": self.truncated, **({"repeats": self.repeats} if self.repeats > 1 else {}),
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Crash:
        report = data.get("report")
        return Crash(str(data["title"]), bool(data["fatal"]), int(str(data["line"])), str(data["header"]),
                     str(data["kind"]), str(data["source"]),
                     tuple(str(r) for r in report) if isinstance(report, list) else (), bool(data.get("truncated")),
                     int(str(data.get("repeats", 1))))


# ---------------------------------------------------------------------------
# Regex building blocks.

_SYM = r"(?P<func>[A-Za-z_$][\w.$]*)"
_DIE = r"(?:Oops: )?"                  # 6.9+ prefixes every die() header with "Oops: "
_DIE_TAIL = r": [0-9a-f]{4} \[#\d+\]"  # ": 0002 [#1]", then " PREEMPT SMP NOPTI" ...
_FILE = r"(?P<file>[^\s:]+):\d+"

_LINUX_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_SANITIZER_END = re.compile(r"---\[ end (?:trace|Kernel panic)|^={20,}\s*$")
_LINUX_COMPLETE = re.compile(r"Call Trace:|Kernel Offset:|---\[ end ")
_XEN_DOM0_DEAD = re.compile(r"^\(XEN\) (?:Hardware Dom0|Domain 0) crashed: ")
_XEN_PANIC_END = re.compile(r"^\(XEN\) (?:Manual reset required|Reboot in five seconds|Crash in five seconds)")
_XEN_PANIC_COMPLETE = re.compile(r"^\(XEN\) (?:Panic on CPU|\*{20,})")


def _row(kind: str, keyword: str, header: str, title: str, *, fatal: bool = False,
         source: Source = "linux", func: tuple[FuncSource, ...] = (), chain: str = "",
         stage: int = 0, end: re.Pattern[str] | None = _LINUX_END,
         complete: re.Pattern[str] | None = _LINUX_COMPLETE, terminal: bool = False,
         message_next: bool = False, repeats: bool = False) -> CrashPattern:
    return CrashPattern(kind=kind, keyword=keyword, header=re.compile(header), title=title,
                        fatal=fatal, source=source, func=func, chain=frozenset(chain.split()),
                        stage=stage, end=end, complete=complete, terminal=terminal,
                        message_next=message_next, repeats=repeats)


def _xen(kind: str, keyword: str, header: str, title: str, *, fatal: bool = False,
         func: tuple[FuncSource, ...] = (), chain: str = "", stage: int = 0,
         end: re.Pattern[str] | None = None, complete: re.Pattern[str] | None = None,
         terminal: bool = False, message_next: bool = False) -> CrashPattern:
    return _row(kind, keyword, r"\(XEN\) " + header, title, fatal=fatal, source="xen", func=func,
                chain=chain, stage=stage, end=end, complete=complete, terminal=terminal,
                message_next=message_next)


_RF: tuple[FuncSource, ...] = ("rip", "stack")
_HF: tuple[FuncSource, ...] = ("header", "rip", "stack")
_SF: tuple[FuncSource, ...] = ("stack",)

# The table. Order matters: the first row that matches a line wins.
PATTERNS: tuple[CrashPattern, ...] = (
    # --- Linux panics: fatal, never part of another crash's report.
    _row("stack-corruption", "stack-protector: Kernel stack is corrupted",
         r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: " + _SYM,
         "stack-protector: Kernel stack is corrupted", fatal=True, func=("header",)),
    _row("panic", "Kernel panic - not syncing",
         r"Kernel panic - not syncing: ?(?P<msg>.*)", "kernel panic: {msg}", fatal=True),

    # --- Sanitizers.
    _row("kasan", "BUG: KASAN: ", r"BUG: KASAN: (?P<type>.+?) in " + _SYM, "KASAN: {type}",
         func=("header",), end=_SANITIZER_END),
    _row("kmsan", "BUG: KMSAN: ", r"BUG: KMSAN: (?P<type>.+?) in " + _SYM, "KMSAN: {type}",
         func=("header",), end=_SANITIZER_END),
    _row("kfence", "BUG: KFENCE: ", r"BUG: KFENCE: (?P<type>.+?) in " + _SYM, "KFENCE: {type}",
         func=("header",), end=_SANITIZER_END),
    _row("kcsan", "BUG: KCSAN: ", r"BUG: KCSAN: (?P<type>[\w-]+) in (?P<funcs>[\w.$]+(?: / [\w.$]+)?)",
         "KCSAN: {type} in {funcs}", end=_SANITIZER_END),
    _row("ubsan", "UBSAN: ", r"UBSAN: (?P<type>[\w -]+?) in (?P<where>\S+)", "UBSAN: {type} in {where}",
         end=_SANITIZER_END),

    # --- Page faults and other BUG:s that die() follows (chain "die", stage 1).
    _row("null-deref", "NULL pointer dereference",
         r"BUG: (?:kernel NULL pointer dereference, address|unable to handle kernel NULL pointer dereference at)\b",
         "BUG: kernel NULL pointer dereference", func=_RF, chain="die", stage=1),
    _row("page-fault", "BUG: unable to handle ",
         r"BUG: unable to handle (?:page fault for address|kernel paging request at)\b",
         "BUG: unable to handle page fault", func=_RF, chain="die", stage=1),
    _row("stack-overflow", "stack guard page was hit",
         r"BUG: (?:\w+ )?stack guard page was hit\b", "BUG: stack guard page was hit",
         func=_RF, chain="die", stage=1),

    # --- Watchdogs: periodic while the condition lasts.
    _row("soft-lockup", "BUG: soft lockup",
         r"(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!", "BUG: soft lockup",
         func=_RF, repeats=True),
    _row("hard-lockup", "hard LOCKUP",
         r"(?:NMI watchdog: )?Watchdog detected hard LOCKUP on cpu \d+", "BUG: hard lockup",
         func=_RF, repeats=True),
    _row("workqueue-lockup", "BUG: workqueue lockup", r"BUG: workqueue lockup\b", "BUG: workqueue lockup",
         repeats=True),
    _row("hung-task", "INFO: task ", r"INFO: task .+?:\d+ blocked for more than \d+ seconds",
         "INFO: task hung", func=_SF, repeats=True),
    _row("rcu-stall", "INFO: rcu",
         r"(?:rcu: )?INFO: rcu\w* (?:detected (?:expedited )?stalls?|self-detected stall) on",
         "INFO: rcu detected stall", func=_RF, repeats=True),

    # --- Other BUG:s.
    _row("sleep-in-atomic", "BUG: sleeping function called from invalid context",
         r"BUG: sleeping function called from invalid context\b",
         "BUG: sleeping function called from invalid context", func=_SF),
    _row("sched-atomic", "BUG: scheduling while atomic", r"BUG: scheduling while atomic\b",
         "BUG: scheduling while atomic", func=_SF),
    _row("bad-page", "BUG: Bad ", r"BUG: Bad (?P<what>page state|page map|rss-counter state)\b",
         "BUG: Bad {what}"),
    _row("spinlock", "BUG: ", r"BUG: (?P<lock>spinlock|rwlock) (?P<what>[a-z ]+?) on CPU#\d+",
         "BUG: {lock} {what}", func=_SF),
    _row("bug", "BUG: ", r"BUG: (?P<what>.+)", "BUG: {what}", func=_RF),

    # --- BUG() and friends, then die()'s own header lines (chain "die", stage 2).
    _row("kernel-bug", "kernel BUG at ", r"kernel BUG at " + _FILE + "!", "kernel BUG at {file}",
         func=_RF, chain="die", stage=1),
    _row("nx", "NX-protected page", r"kernel tried to execute NX-protected page - exploit attempt\?",
         "kernel tried to execute NX-protected page", func=_RF, chain="die", stage=0),
    _row("smep", "(SMEP?)", r"unable to execute userspace code \(SMEP\?\)",
         "unable to execute userspace code (SMEP?)", func=_RF, chain="die", stage=0),
    _row("double-fault", "PANIC: double fault", r"(?:traps: )?PANIC: double fault, error_code: 0x[0-9a-f]+",
         "PANIC: double fault", fatal=True, func=_RF, chain="die", stage=1),
    _row("gpf", "general protection fault", _DIE + r"general protection fault(?:, [^:]*)?" + _DIE_TAIL,
         "general protection fault", func=_RF, chain="die", stage=2),
    _row("invalid-opcode", "invalid opcode", _DIE + r"invalid opcode" + _DIE_TAIL, "invalid opcode",
         func=_RF, chain="die", stage=2),
    _row("double-fault", "double fault", _DIE + r"double fault" + _DIE_TAIL, "double fault",
         fatal=True, func=_RF, chain="die", stage=2),
    _row("oops", "Oops: ", _DIE + r"Oops" + _DIE_TAIL, "Oops", func=_RF, chain="die", stage=2),
    _row("oops", " [#", _DIE + r"(?P<trap>[a-z][a-z0-9 ()-]*)" + _DIE_TAIL, "{trap}",
         func=_RF, chain="die", stage=2),

    # --- Data corruption, lockdep, then WARN() (chain "warn").
    _row("list-corruption", "list_", r"(?P<op>list_add|list_del) (?:corruption|double add)\b",
         "{op} corruption", func=_SF, chain="die warn", stage=0),
    _row("lockdep", "WARNING: possible ",
         r"WARNING: possible (?:circular locking dependency|recursive locking|irq lock inversion dependency)"
         r" detected", "possible deadlock", func=_SF),
    _row("lockdep", "-unsafe lock order detected", r"WARNING: \w+-safe -> \w+-unsafe lock order detected",
         "possible deadlock", func=_SF),
    _row("lockdep", "WARNING: ",
         r"WARNING: (?P<what>inconsistent lock state|suspicious RCU usage|bad unlock balance"
         r"|held lock freed|lock held when returning to user space)",
         "{what}", func=_SF),
    _row("warning", "WARNING: ",
         r"WARNING: (?:CPU: \d+ PID: \d+ at (?:[^\s:]+:\d+ )?|at [^\s:]+:\d+ |[^\s:]+:\d+ at )"
         r"(?:" + _SYM + r"\+0x)?",
         "WARNING", func=_HF, chain="warn", stage=1),

    # --- Xen. Lines start with "(XEN) ". A dom0 death (chain "xen-dom0") and a
    # hypervisor panic (chain "xen-panic") print several headers each.
    _xen("xen", "Unhandled: vec",
         r"(?:[^\s:]+:\d+:)?d(?P<dom>\d+)(?:v\d+)? Unhandled: vec (?P<vec>\d+)\b",
         "xen: d{dom} unhandled {vector}", chain="xen-dom0", stage=0, complete=_XEN_DOM0_DEAD),
    _xen("xen", " fault/trap [#",
         r"(?:[^\s:]+:\d+:)?d(?P<dom>\d+)(?:v\d+)? Unhandled .*? fault/trap \[#(?P<vec>\d+)",
         "xen: d{dom} unhandled {vector}", chain="xen-dom0", stage=0, complete=_XEN_DOM0_DEAD),
    _xen("xen", "domain_crash_sync called from",
         r"domain_crash_sync called from entry\.S(?:: (?:fault at|issue around) [0-9a-f]+ (?:\S+#)?" + _SYM + ")?",
         "xen: domain_crash_sync", fatal=True, func=("header",), chain="xen-dom0", stage=1,
         complete=_XEN_DOM0_DEAD),
    _xen("xen", "Domain 0 ",
         r"Domain 0 (?:\(vcpu#\d+\) crashed on cpu#\d+|reported crashed by domain \d+ on cpu#\d+):",
         "xen: dom0 crashed", fatal=True, chain="xen-dom0", stage=2, complete=_XEN_DOM0_DEAD),
    _xen("xen", " crashed: ", r"(?:Hardware Dom0|Domain 0) crashed: ", "xen: dom0 crashed", fatal=True,
         chain="xen-dom0", stage=3, terminal=True),
    _xen("xen", "Xen BUG at ", r"Xen BUG at " + _FILE, "xen: BUG at {file}", fatal=True,
         chain="xen-panic", stage=0, end=_XEN_PANIC_END, complete=_XEN_PANIC_COMPLETE),
    _xen("xen", "Assertion '", r"Assertion '.*' failed at " + _FILE, "xen: assertion failed at {file}",
         fatal=True, chain="xen-panic", stage=0, end=_XEN_PANIC_END, complete=_XEN_PANIC_COMPLETE),
    _xen("xen", "FATAL TRAP: ", r"FATAL TRAP: (?:vec (?P<vec>\d+),|vector = (?P<vec_old>\d+) )",
         "xen: FATAL TRAP: {vector}", fatal=True, chain="xen-panic", stage=0, end=_XEN_PANIC_END),
    _xen("xen", "Panic on CPU ", r"Panic on CPU \d+:", "xen: panic: {message}", fatal=True,
         chain="xen-panic", stage=1, end=_XEN_PANIC_END, complete=_XEN_PANIC_COMPLETE, message_next=True),
    _xen("xen-warning", "Xen WARN at ", r"Xen WARN at " + _FILE, "xen: WARN at {file}"),
)

_PREFILTER = re.compile("|".join(re.escape(k) for k in sorted({row.keyword for row in PATTERNS})))

# x86 exception vectors, for Xen's "vec 14" / "vector = 14".
_VECTORS = {
    0: "divide error", 1: "debug", 2: "NMI", 3: "breakpoint", 4: "overflow", 5: "bounds",
    6: "invalid opcode", 7: "device not available", 8: "double fault",
    9: "coprocessor segment overrun", 10: "invalid TSS", 11: "segment not present",
    12: "stack segment fault", 13: "general protection fault", 14: "page fault",
    16: "x87 floating point error", 17: "alignment check", 18: "machine check",
    19: "SIMD floating point error", 20: "virtualisation exception", 21: "control protection",
}

# Frames that are the machinery of reporting, scheduling, locking or sanitizing,
# never the culprit: "stack" skips them (and "rip" hands over to "stack" on them).
_SKIP_FRAME = re.compile(r"""^(?:
    dump_stack\w*|show_stack\w*|show_trace_log_lvl|show_regs|__show_regs|
    panic|__warn\w*|warn_slowpath\w*|report_bug|handle_bug|__report_bug|
    die|__die\w*|oops_end|do_error_trap|do_trap|exc_\w+|asm_exc_\w+|
    sysvec_\w+|__sysvec_\w+|asm_sysvec_\w+|asm_common_interrupt|common_interrupt|
    page_fault_oops|kernelmode_fixup_or_oops|no_context|__bad_area_nosemaphore|bad_area_nosemaphore|
    do_user_addr_fault|do_kern_addr_fault|handle_page_fault|
    __might_\w+|___might_sleep|might_fault|__cant_\w+|
    check_preemption_disabled|debug_smp_processor_id|
    __schedule|schedule|schedule_timeout\w*|schedule_preempt_disabled|schedule_hrtimeout\w*|
    io_schedule\w*|preempt_schedule\w*|context_switch|__switch_to\w*|
    mutex_lock\w*|__mutex_lock\w*|mutex_unlock\w*|
    down|down_read\w*|down_write\w*|down_interruptible|down_killable|down_timeout|down_trylock|
    __down\w*|rwsem_down_\w+|
    wait_for_completion\w*|__wait_for_common|wait_for_common\w*|do_wait_for_common|
    __wait_on_bit\w*|out_of_line_wait_on_bit\w*|bit_wait\w*|__wait_on_buffer|
    folio_wait_bit\w*|folio_wait_\w+|__folio_lock\w*|__lock_page\w*|wait_on_page_bit\w*|
    rt_mutex\w*|__rt_mutex\w*|rtlock\w*|
    lock_acquire|__lock_acquire|lock_release|__lock_release|validate_chain|check_prev_add|
    check_prevs_add|check_noncircular|print_circular_bug\w*|print_usage_bug|mark_lock\w*|
    lockdep_\w+|__lockdep_\w+|
    _raw_spin_lock\w*|_raw_spin_unlock\w*|_raw_read_lock\w*|_raw_write_lock\w*|
    do_raw_spin_lock|do_raw_spin_unlock|queued_spin_lock_slowpath|native_queued_spin_lock_slowpath|
    spin_dump|spin_bug|
    kasan_\w+|__kasan_\w+|__asan_\w+|print_report|print_address_description\w*|
    kmsan_\w+|__msan_\w+|kfence_\w+|kcsan_\w+|__tsan_\w+|ubsan_\w+|__ubsan_handle_\w+|
    __list_add_valid\w*|__list_del_entry_valid\w*|__list_add|__list_del_entry|
    __check_object_size|check_heap_object|
    rcu_dump_cpu_stacks|nmi_cpu_backtrace\w*|nmi_trigger_cpumask_backtrace|arch_trigger_cpumask_backtrace|
    print_cpu_stall\w*|check_cpu_stall|rcu_pending|rcu_sched_clock_irq|update_process_times|
    tick_\w+|__hrtimer_run_queues|hrtimer_interrupt|__run_hrtimer|watchdog_timer_fn|
    __stack_chk_fail
)$""", re.VERBOSE)

_COMPILER_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|lto_priv|llvm|localalias|specialized)(?:\.\w+)?)+$")
_RIP = re.compile(r"\bRIP: (?P<cs>[0-9a-f]{4}):(?:\[<[0-9a-f]+>\]\s*){0,2}" + _SYM + r"?\+0x")
_ANY_RIP = re.compile(r"\bRIP: [0-9a-f]{4}:")
_KERNEL_CS = frozenset({"0010", "e030"})   # native, Xen PV 64-bit kernel
_CALL_TRACE = re.compile(r"\bCall Trace:")
_FRAME = re.compile(r"^\s*(?:\[<[0-9a-f]+>\]\s*)?(?P<unreliable>\?\s*)?" + _SYM + r"\+0x[0-9a-f]+/0x[0-9a-f]+")
_TRACE_MARK = re.compile(r"^\s*</?(?:TASK|IRQ|NMI|SOFTIRQ|EOI|EOE|#?DF|#?VC|#?DB|MCE)>\s*$")

# clean_line
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# "<4>" (dmesg -r), "[    1.234567]", "[    1.234567][    T1]", "[    C0]", then one space.
_KERNEL_PREFIX = re.compile(r"^(?:<\d{1,3}>)?(?:\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?|\[\s*[TC]\d+\] ?)?")
_XEN_TIME = re.compile(r"^\(XEN\) \[[0-9:. -]+\] ")
# Where a message can start inside a line: after an embedded kernel timestamp, or at "(XEN) ".
_EMBEDDED_START = re.compile(r"\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?|(?=\(XEN\) )")


def clean_line(text: str) -> str:
    """One console line without its kernel timestamp and caller id, escapes, control characters
    (tab kept) and trailing whitespace. Xen's "(XEN) " prefix is kept; a Xen timestamp after it is not."""
    if not text:
        return ""
    text = _SURROGATE.sub("\ufffd", text)
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    text = _CONTROL.sub("", text)
    text = _KERNEL_PREFIX.sub("", text, count=1)
    if text.startswith("(XEN) ["):
        text = _XEN_TIME.sub("(XEN) ", text, count=1)
    return text.rstrip()


def match_header(text: str) -> CrashPattern | None:
    """The first row whose header matches this one line (raw or cleaned), or None."""
    found = _match(clean_line(text))
    return found[0] if found else None


def is_fatal_line(text: str) -> bool:
    """True when this line alone says the machine is dying (a fatal row's header)."""
    row = match_header(text)
    return row is not None and row.fatal


MAX_KEPT = 100          # crashes kept whole, in order; past them a title seen before is only counted (repeats)
MAX_DISTINCT = 1000     # crashes kept at all; past them, only counted (Observation.crashes_dropped)


def find_crashes(lines: Sequence[str]) -> list[Crash]:
    """Every crash in a console log, in order of appearance (bounded: see ``count_crashes``)."""
    return count_crashes(lines)[0]


class _Cleaned(Sequence[str]):
    """``lines`` as ``clean_line`` gives them, cleaned when read and not kept: a 200 MB log is not copied whole
    (the scan reads each line once, a report's lines once more)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self._lines = lines

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [clean_line(ln) for ln in self._lines[index]]
        return clean_line(self._lines[index])


def count_crashes(lines: Sequence[str]) -> tuple[list[Crash], int]:
    """The crashes of a console log, and how many more were dropped: a log of 100,000 Oopses is not 100,000
    entries. Up to MAX_KEPT every crash is kept; then a crash whose title was seen adds to that crash's
    ``repeats``, a new title is kept up to MAX_DISTINCT, and past that only counted."""
    cleaned = _Cleaned(lines)
    crashes: list[Crash] = []
    first: dict[str, int] = {}
    dropped = 0
    i = 0
    while i < len(cleaned):
        found = _match(cleaned[i])
        if found is None:
            i += 1
            continue
        row, m = found
        crash, i = _collect(cleaned, i, row, m)
        seen = first.get(crash.title)
        if row.repeats and seen is not None:
            continue            # re-printed while the condition lasts: one crash
        if seen is not None and len(crashes) >= MAX_KEPT:
            crashes[seen] = dataclasses.replace(crashes[seen], repeats=crashes[seen].repeats + 1)
        elif len(crashes) >= MAX_DISTINCT:
            dropped += 1
        else:
            first.setdefault(crash.title, len(crashes))
            crashes.append(crash)
    return crashes, dropped


def reset_crash(last_stage: str, line: int) -> Crash:
    """The crash of a run that QEMU ended with neither a power-off nor a panic."""
    return Crash(title=f"reset or triple fault after '{last_stage}'", fatal=True, line=line, header="",
                 kind="reset", source="linux", report=(), truncated=False)


def primary(crashes: Sequence[Crash]) -> Crash | None:
    """The root cause: the first crash of the log."""
    return crashes[0] if crashes else None


# ---------------------------------------------------------------------------
# Matching.

def _starts(text: str) -> list[int]:
    """Where a console message may start in this line: 0, and embedded ones not inside quotes."""
    starts = [0]
    quotes = {"'": 0, '"': 0, "`": 0}
    seen = 0
    for n, m in enumerate(_EMBEDDED_START.finditer(text, 1)):
        if n >= _MAX_STARTS:
            break
        pos = m.end()
        for q in quotes:
            quotes[q] += text.count(q, seen, pos)
        seen = pos
        if not any(count % 2 for count in quotes.values()):
            starts.append(pos)
    return starts


def _match(text: str) -> tuple[CrashPattern, re.Match[str]] | None:
    """The first row matching a cleaned line, with its match."""
    if not _PREFILTER.search(text):
        return None
    rows = [row for row in PATTERNS if row.keyword in text]
    starts = _starts(text)
    for row in rows:
        for pos in starts:
            m = row.header.match(text, pos, pos + _HEADER_SPAN)
            if m is not None:
                return row, m
    return None


# ---------------------------------------------------------------------------
# Collecting a report and naming it.

def _collect(cleaned: Sequence[str], start: int, row: CrashPattern,
             m: re.Match[str]) -> tuple[Crash, int]:
    """The crash whose header is at ``start``, and the index where scanning resumes."""
    header = cleaned[start][m.start():][:MAX_LINE_CHARS]
    report = [header]
    joined = [row]
    closed = row.terminal
    complete = row.complete is None
    message: str | None = None
    want_message = row.message_next
    j = start + 1
    while not closed and j < len(cleaned) and len(report) < MAX_REPORT_LINES:
        text = cleaned[j]
        if want_message:
            want_message = False
            if text.startswith("(XEN) "):
                message = text[len("(XEN) "):].strip()
                report.append(text[:MAX_LINE_CHARS])
                j += 1
                continue
        found = _match(text)
        if found is not None:
            nxt = found[0]
            last = joined[-1]
            if not (nxt.chain & last.chain and nxt.stage > last.stage):
                break                           # a new crash starts here
            joined.append(nxt)
            closed = nxt.terminal
            want_message = nxt.message_next
        report.append(text[:MAX_LINE_CHARS])
        j += 1
        end = joined[-1].end
        if end is not None and end.search(text):
            closed = True
        if row.complete is not None and row.complete.search(text):
            complete = True
    ran_off = j >= len(cleaned) and not closed and len(report) < MAX_REPORT_LINES
    truncated = ran_off and not complete
    title, kind, fatal = _name(row, m, report, message)
    crash = Crash(title=title, fatal=fatal or any(r.fatal for r in joined), line=start + 1,
                  header=header, kind=kind, source=row.source, report=tuple(report), truncated=truncated)
    return crash, j


def _name(row: CrashPattern, m: re.Match[str], report: Sequence[str],
          message: str | None) -> tuple[str, str, bool]:
    """Title, kind and fatality of a report whose first header matched ``row``."""
    if row.message_next and message is not None:
        inner = _match("(XEN) " + message)
        if inner is not None and inner[0].source == "xen" and not inner[0].message_next:
            return _name(inner[0], inner[1], report, None)[0], inner[0].kind, inner[0].fatal
    fields = _fields(m)
    fields["message"] = message or ""
    title = row.title.format_map(fields)
    func = _func(row, m, report)
    if func:
        title = f"{_tidy(title)} in {func}"
    return _tidy(title), row.kind, row.fatal


class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _fields(m: re.Match[str]) -> _Fields:
    out = _Fields({k: (v or "") for k, v in m.groupdict().items()})
    if "msg" in out:
        out["msg"] = out["msg"].strip()
    if "what" in out:
        out["what"] = _plain(out["what"])
    if "where" in out:                          # "lib/foo.c:12:3" or "func+0x1/0x2"
        out["where"] = re.sub(r"(?::\d+)+$|\+0x.*$", "", out["where"])
    vec = out.get("vec") or out.get("vec_old")
    if vec:
        out["vector"] = _VECTORS.get(int(vec[:3]), f"vector {vec}")
    return out


def _plain(text: str) -> str:
    """Free text of a generic header, without what changes between runs (numbers, addresses)."""
    text = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", " ", text)
    text = re.split(r"[:,!]", text, maxsplit=1)[0]
    return " ".join(w for w in text.split() if not re.search(r"\d", w))


def _tidy(title: str) -> str:
    title = " ".join(title.split())
    title = re.sub(r"[\s:]+$", "", title)
    return title[:MAX_TITLE_CHARS]


def _func(row: CrashPattern, m: re.Match[str], report: Sequence[str]) -> str | None:
    for source in row.func:
        name: str | None
        if source == "header":
            name = m.group("func") if "func" in m.re.groupindex else None
            name = _norm_func(name) if name else None
        elif source == "rip":
            name = _rip_func(report)
        else:
            name = _stack_func(report)
        if name:
            return name
    return None


def _norm_func(name: str) -> str:
    return _COMPILER_SUFFIX.sub("", name)[:100]


def _rip_func(report: Sequence[str]) -> str | None:
    """The function of the report's first RIP line, if that is kernel code and not infrastructure."""
    for line in report:
        if _ANY_RIP.search(line) is None:
            continue
        m = _RIP.search(line)
        if m is None or m.group("cs") not in _KERNEL_CS or not m.group("func"):
            return None
        name = _norm_func(m.group("func"))
        return None if _SKIP_FRAME.match(name) else name
    return None


def _stack_func(report: Sequence[str]) -> str | None:
    """The first reliable frame of the report's Call Trace that is not infrastructure."""
    in_trace = False
    for line in report:
        if not in_trace:
            in_trace = _CALL_TRACE.search(line) is not None
            continue
        if _TRACE_MARK.match(line):
            continue
        m = _FRAME.match(line)
        if m is None:
            return None
        if m.group("unreliable"):
            continue
        name = _norm_func(m.group("func"))
        if not _SKIP_FRAME.match(name):
            return name
    return None
