"""Crash recognition on a serial console: Linux and Xen, natively and as Xen PV dom0. Pure.

Recognition is data, in the style of syzkaller's ``pkg/report``, and titles follow
syzkaller's conventions, which users already dedup by (syzbot, KernelCI and
mailing-list reports quote them). ``PATTERNS`` is an ordered table with one row
(a ``CrashPattern``) per kind of crash. A row says

* ``header``   the regex of the line that starts a report, anchored where a console
               message starts (see "Where a header may start" below);
* ``keyword``  a literal that every matching line contains: a cheap prefilter, so that
               most console lines are rejected by a handful of substring tests;
* ``title``    a ``str.format`` template over the header's named groups, ``{frame}``
               (the function that names the crash) and ``{access}`` (KASAN's Read/Write);
* ``frames``   where the candidates for ``{frame}`` come from, ``skip`` what more to skip
               among them than the common infrastructure, ``extractor`` how to choose
               (see ``crashframes``);
* ``fatal``    whether this line means the machine is dying (kernel panic, a dom0 or
               hypervisor crash): the console monitor ends a run on it (``is_fatal_line``);
* ``stack``    whether a whole report of this kind carries a stack trace;
* ``chain``/``stage``  how one physical crash that prints several headers stays ONE crash;
* ``end``/``complete`` what closes a report, and what proves it was printed in full.

The first row that matches wins, so specific rows come before generic ones
(``stack-protector`` before ``Kernel panic``, ``lib/refcount.c`` warnings before
``WARNING:``, ``kernel BUG at lib/list_debug.c`` before ``kernel BUG at``).

Titles
------
Titles are dedup keys across runs and kernel versions. As syzkaller makes them:

* the function is the first one of the report that is not infrastructure, taken
  from where the kind of crash puts it (``WARNING in ps_check`` from the RIP line;
  ``possible deadlock in ps_take_a`` from lockdep's ``at:`` lines; ``memory leak in
  ps_leak_init`` from kmemleak's backtrace; a stall by the frame before its entry
  point), and a report that should name one but does not is titled ``… in corrupted``;
* header variants of different kernel versions give the same title (``BUG: unable
  to handle page fault for address`` and ``BUG: unable to handle kernel paging
  request`` are both ``BUG: unable to handle kernel paging request in f``);
* the wording is syzkaller's: ``kernel BUG in f``, ``KASAN: slab-out-of-bounds Read
  in f``, ``WARNING: refcount bug in f``, ``INFO: task hung in f``,
  ``kernel panic: stack is corrupted in f``, ``BUG: corrupted list in f``;
* what still varies is replaced (``crashframes.sanitize``): ``NUM``, ``ADDR``, ``LINE``.

Xen titles, which syzkaller has none of, start with ``xen: ``; a domain is named
``d0`` without its vCPU (``xen: d0 unhandled page fault``), vectors by name
(14 -> ``page fault``).

Corrupted reports
-----------------
``Crash.corrupted`` says a report cannot be trusted to name its bug, and
``corrupted_reason`` why: another message's timestamp is inside its header line
(interleaved output), its header is the tail of a crash whose start was lost
(``Kernel panic - not syncing: Fatal exception`` alone, ``BUG: unable to
handle`` cut short), or, for a kind whose title needs the report's body (a
function, KASAN's access), the log ended inside it (``truncated``), it has no
stack, or no function could be chosen. A panic whose header names it is not
corrupted for lacking a stack: after an Oops the kernel prints none, and a run
ends at the panic line.

One crash, several headers
--------------------------
A header that arrives while a report is being collected either continues that
report or starts a new crash. It continues it when the two rows share a
``chain`` and the new row's ``stage`` is higher than that of the last row joined:

* chain ``die``: ``BUG: unable to handle kernel paging request`` /
  ``BUG: kernel NULL pointer dereference`` / ``kernel BUG at`` /
  ``PANIC: double fault`` / ``BUG: stack guard page was hit`` (1) ->
  ``Oops: 0002 [#1]`` / ``invalid opcode: 0000 [#1]`` / ``general protection fault``
  (2). A second ``Oops: [#2]`` has no higher stage, so it is a second crash.
* chain ``xen-dom0``: ``(XEN) d0v0 Unhandled: vec 14`` (0) -> ``domain_crash_sync`` (1)
  -> ``Domain 0 (vcpu#0) crashed on cpu#0`` (2) -> ``Hardware Dom0 crashed`` (3).
* chain ``xen-panic``: ``(XEN) Xen BUG at`` / ``Assertion`` (0) -> ``Panic on CPU`` (1).

The title, kind and source come from the first row; the crash is fatal when any
row joined is. ``Kernel panic - not syncing`` is in no chain, so the panic that
follows an Oops is a crash of its own (the Oops non-fatal, then the panic fatal),
and so is Xen's ``Hardware Dom0 crashed`` after a dom0 Linux panic. Lines such as
``kernel tried to execute NX-protected page`` or ``list_add corruption.`` are not
headers: the ``BUG:``, ``WARNING:`` or ``kernel BUG at`` line after them is. Rows
marked ``repeats`` (soft lockup, hung task, RCU stall ...) are re-printed by the
kernel while the condition lasts: a repeat with the title of an earlier crash is
not a new crash.

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
At the start of the cleaned line (after its indentation, and after a user-space
``2026/11/30 10:00:01`` timestamp), right after a kernel timestamp embedded in the
line (kernel output interleaved into a partial user-space line), or at an embedded
``(XEN) ``, but never inside a quoted string: ``patchscope: run 1: echo 'Kernel
panic - not syncing: x'`` is user space talking, not a panic. A header printed by
user space at the very start of a line cannot be told apart.

Adding a row
------------
Add a ``_row(...)`` to ``PATTERNS`` above the generic rows it refines, with a
keyword that every matching line contains, then add a console log under
``tests/data/console/`` (recorded if at all possible, else synthetic and faithful
to the kernel's format) with its expected title, family and corrupted flag in its
header.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from . import crashframes
from .crashframes import Extractor, FrameSource

Source = Literal["linux", "xen"]

MAX_REPORT_LINES = 200
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
    header_regex: str                 # see ``header``
    title: str                        # str.format template over the header's groups, {frame}, {access}
    fatal: bool = False
    source: Source = "linux"
    frames: tuple[FrameSource, ...] = ()
    skip_regex: str = ""              # more infrastructure for this kind (searched in a frame's name)
    extractor: Extractor = "first"
    stack: bool = True                # a whole report of this kind carries a stack trace
    corrupted: str = ""               # why a report that starts with this header is corrupted anyway
    chain: frozenset[str] = frozenset()
    stage: int = 0
    end: re.Pattern[str] | None = None       # a later line that closes the report (kept in it)
    complete: re.Pattern[str] | None = None  # a later line proving the report is whole; None: always whole
    terminal: bool = False            # this header is the report's last line
    message_next: bool = False        # the next line is this crash's message (Xen's "Panic on CPU N:")
    repeats: bool = False             # re-printed while the condition lasts

    @functools.cached_property
    def header(self) -> re.Pattern[str]:
        """The header, matched (not searched) where a console message starts; compiled when first needed, so a
        process that checks a clean log compiles none of the table."""
        return re.compile(self.header_regex)

    @functools.cached_property
    def skip(self) -> re.Pattern[str] | None:
        return re.compile(self.skip_regex) if self.skip_regex else None


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
    corrupted: bool = False
    corrupted_reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title, "fatal": self.fatal, "line": self.line, "header": self.header,
            "kind": self.kind, "source": self.source, "report": list(self.report),
            "truncated": self.truncated, "corrupted": self.corrupted,
            **({"corrupted_reason": self.corrupted_reason} if self.corrupted else {}),
            **({"repeats": self.repeats} if self.repeats > 1 else {}),
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Crash:
        report = data.get("report")
        return Crash(str(data["title"]), bool(data["fatal"]), int(str(data["line"])), str(data["header"]),
                     str(data["kind"]), str(data["source"]),
                     tuple(str(r) for r in report) if isinstance(report, list) else (), bool(data.get("truncated")),
                     int(str(data.get("repeats", 1))), bool(data.get("corrupted")),
                     str(data.get("corrupted_reason", "")))


# ---------------------------------------------------------------------------
# Regex building blocks.

_SYM = r"(?P<func>[A-Za-z_$][\w.$]*)"
_DIE = r"(?:Oops: )?"                  # 6.9+ prefixes every die() header with "Oops: "
_DIE_TAIL = r": [0-9a-f]{4} \[#\d+\]"  # ": 0002 [#1]", then " PREEMPT SMP NOPTI" ...
_FILE = r"(?P<file>[^\s:]+):\d+"
_OLD = r"(?:\[ )?"                     # 4.x lockdep banners: "[ INFO: possible circular ... ]"

_LINUX_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_SANITIZER_END = re.compile(r"---\[ end (?:trace|Kernel panic)|^={20,}\s*$")
_LINUX_COMPLETE = re.compile(r"Call Trace:|Kernel Offset:|---\[ end |(?:^|[^k] )backtrace")
_XEN_DOM0_DEAD = re.compile(r"^\(XEN\) (?:Hardware Dom0|Domain 0) crashed: ")
_XEN_PANIC_END = re.compile(r"^\(XEN\) (?:Manual reset required|Reboot in five seconds|Crash in five seconds)")
_XEN_PANIC_COMPLETE = re.compile(r"^\(XEN\) (?:Panic on CPU|\*{20,})")


def _row(kind: str, keyword: str, header: str, title: str, *, fatal: bool = False,
         source: Source = "linux", frames: tuple[FrameSource, ...] = (), skip: str = "",
         extractor: Extractor = "first", stack: bool = True, corrupted: str = "", chain: str = "",
         stage: int = 0, end: re.Pattern[str] | None = _LINUX_END,
         complete: re.Pattern[str] | None = _LINUX_COMPLETE, terminal: bool = False,
         message_next: bool = False, repeats: bool = False) -> CrashPattern:
    return CrashPattern(kind=kind, keyword=keyword, header_regex=header, title=title,
                        fatal=fatal, source=source, frames=frames, skip_regex=skip,
                        extractor=extractor, stack=stack, corrupted=corrupted, chain=frozenset(chain.split()),
                        stage=stage, end=end, complete=complete, terminal=terminal,
                        message_next=message_next, repeats=repeats)


def _xen(kind: str, keyword: str, header: str, title: str, *, fatal: bool = False,
         frames: tuple[FrameSource, ...] = (), chain: str = "", stage: int = 0,
         end: re.Pattern[str] | None = None, complete: re.Pattern[str] | None = None,
         terminal: bool = False, message_next: bool = False) -> CrashPattern:
    return _row(kind, keyword, r"\(XEN\) " + header, title, fatal=fatal, source="xen", frames=frames,
                stack=False, chain=chain, stage=stage, end=end, complete=complete, terminal=terminal,
                message_next=message_next)


def _warn(keyword: str, file: str, func: str, title: str, skip: str = "") -> CrashPattern:
    """A WARN() whose header's file and function say what kind of bug it is (the newest header may name only the
    file: ``WARNING: lib/refcount.c:19 at 0x0, CPU#1: …``)."""
    return _row("warning", keyword, r"WARNING: .*" + file + r"(?:.* " + func + r"|:\d+ at 0x[0-9a-f]+\b)", title,
                frames=_RS, skip=skip, chain="warn", stage=0)


_RS: tuple[FrameSource, ...] = ("rip", "stack")
_HS: tuple[FrameSource, ...] = ("header", "stack")
_S: tuple[FrameSource, ...] = ("stack",)
_R: tuple[FrameSource, ...] = ("rip",)
_LEAK_SKIP = ("kmemleak|mmap|kmem|slab|alloc|create_object|idr_get|list_lru_init|kasprintf|kvasprintf|pcpu_create"
              "|strdup|strndup|memdup")
_LOST_START = "the report's start was lost: this line only follows another crash's header"

# The table. Order matters: the first row that matches a line wins.
PATTERNS: tuple[CrashPattern, ...] = (
    # --- Linux panics: fatal, never part of another crash's report.
    _row("stack-corruption", "stack-protector: Kernel stack is corrupted",
         r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
         r"(?:[0-9a-f]{8,16}\b(?!\+)|" + _SYM + ")?", "kernel panic: stack is corrupted in {frame}",
         fatal=True, frames=_HS, skip="stack_chk", stack=False),
    _row("stack-corruption", "corrupted stack end",
         r"Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {frame}",
         fatal=True, frames=_S, skip="schedule|retint_kernel", extractor="stall"),
    _row("stack-overflow", "kernel stack overflow", r"Kernel panic - not syncing: kernel stack overflow",
         "kernel stack overflow in {frame}", fatal=True, frames=_S, skip="bad_stack", extractor="stall"),
    _row("panic", "Attempted to kill init!", r"Kernel panic - not syncing: Attempted to kill init!",
         "kernel panic: Attempted to kill init!", fatal=True),
    _row("panic", "Couldn't open N_TTY ldisc", r"Kernel panic - not syncing: Couldn't open N_TTY ldisc",
         "kernel panic: Couldn't open N_TTY ldisc", fatal=True),
    _row("panic", "panic_on_warn set", r"Kernel panic - not syncing: (?P<msg>panic_on_warn set)",
         "kernel panic: {msg}", fatal=True, corrupted=_LOST_START, chain="warn", stage=1),
    _row("panic", "Kernel panic - not syncing",
         r"Kernel panic - not syncing: (?P<msg>Fatal exception|hung_task: blocked tasks)",
         "kernel panic: {msg}", fatal=True, corrupted=_LOST_START),
    _row("panic", "Kernel panic - not syncing",
         r"Kernel panic - not syncing: ?(?P<msg>.*)", "kernel panic: {msg}", fatal=True),

    # --- Sanitizers.
    _row("kasan", "BUG: KASAN: ",
         r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in " + _SYM,
         "KASAN: invalid-free in {frame}", frames=_HS, skip="slab_|kfree|vunmap|vfree", end=_SANITIZER_END),
    _row("kasan", "BUG: KASAN: ", r"BUG: KASAN: (?P<type>[a-z-]+) in " + _SYM, "KASAN: {type} {access} in {frame}",
         frames=_HS, skip="kernel_fault|tag_check|mem_abort|^el1_|^el1h_", end=_SANITIZER_END),
    _row("kasan", "BUG: KASAN: ", r"BUG: KASAN: (?P<what>.+)", "KASAN: {what}",
         corrupted="a KASAN header in no known form", end=_SANITIZER_END),
    _row("kmsan", "BUG: KMSAN: ", r"BUG: KMSAN: (?P<type>[a-z-]+) in " + _SYM, "KMSAN: {type} in {frame}",
         frames=("next",), skip="alloc_skb|netlink_ack|netlink_rcv_skb", stack=False, end=_SANITIZER_END),
    _row("kfence", "BUG: KFENCE: ", r"BUG: KFENCE: (?P<type>use-after-free|out-of-bounds) (?:read|write) in " + _SYM,
         "KFENCE: {type} in {frame}", frames=("header", "next"), stack=False, end=_SANITIZER_END),
    _row("kfence", "BUG: KFENCE: ", r"BUG: KFENCE: (?P<what>invalid free|invalid read|invalid write|memory corruption)"
         r" in " + _SYM, "KFENCE: {what} in {frame}", frames=("header", "next"), stack=False, end=_SANITIZER_END),
    _row("kcsan", "BUG: KCSAN: ", r"BUG: KCSAN: (?P<what>.+)", "KCSAN: {what}", stack=False, end=_SANITIZER_END),
    _row("ubsan", "UBSAN: Undefined behaviour in", r"UBSAN: Undefined behaviour in",
         "UBSAN: undefined-behaviour in {frame}", frames=_S, skip="ubsan|overflow", end=_SANITIZER_END),
    _row("ubsan", "UBSAN: ", r"UBSAN: (?P<type>.+?) in ", "UBSAN: {type} in {frame}", frames=_S,
         skip="ubsan|overflow", end=_SANITIZER_END),

    # --- Page faults and other BUG:s that die() follows (chain "die", stage 1).
    _row("page-fault", "to handle ",
         r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
         r"|Unable to handle kernel data access)", "BUG: unable to handle kernel paging request in {frame}",
         frames=_RS, chain="die", stage=1),
    _row("null-deref", "NULL pointer dereference",
         r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
         r"|Kernel NULL pointer dereference)", "BUG: unable to handle kernel NULL pointer dereference in {frame}",
         frames=_RS, chain="die", stage=1),
    _row("page-fault", "to handle ", r"BUG: (?:unable|Unable) to handle ", "BUG: unable to handle kernel",
         corrupted="the header was cut short", chain="die", stage=1),
    _row("stack-overflow", "stack guard page was hit", r"BUG: (?:\w+ )?stack guard page was hit\b",
         "BUG: stack guard page was hit in {frame}", frames=_RS, extractor="stall", chain="die", stage=1),

    # --- Watchdogs: periodic while the condition lasts.
    _row("soft-lockup", "BUG: soft lockup",
         r"(?:NMI )?(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!", "BUG: soft lockup in {frame}",
         frames=_RS, extractor="stall", repeats=True),
    _row("hard-lockup", "hard LOCKUP",
         r"(?:NMI watchdog: )?Watchdog detected hard LOCKUP on cpu \d+", "BUG: hard lockup in {frame}",
         frames=_RS, extractor="stall", repeats=True),
    _row("workqueue-lockup", "BUG: workqueue lockup", r"BUG: workqueue lockup\b", "BUG: workqueue lockup",
         stack=False, repeats=True),
    _row("hung-task", "INFO: task ", r"INFO: task .+?:\d+ blocked for more than \d+ seconds",
         "INFO: task hung in {frame}", frames=_S, extractor="hang", repeats=True),
    _row("hung-task", "INFO: task ", r"INFO: task .+? can't die for more than \d+ seconds",
         "INFO: task can't die in {frame}", frames=_S, skip="schedule", repeats=True),
    _row("rcu-stall", "INFO: rcu",
         r"(?:rcu: )?INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stall",
         "INFO: rcu detected stall in {frame}", frames=("irq",), skip="apic_timer_interrupt|rcu",
         extractor="stall", repeats=True),

    # --- Lockdep, old and new banners.
    _row("lockdep", "possible circular locking dependency detected",
         _OLD + r"(?:WARNING|INFO): possible circular locking dependency detected", "possible deadlock in {frame}",
         frames=("at",), skip="process_one_work|flush_workqueue|drain_workqueue|destroy_workqueue"),
    _row("lockdep", " detected", _OLD + r"(?:WARNING|INFO): (?:possible recursive locking|possible irq lock inversion"
         r" dependency|\S+-safe -> \S+-unsafe lock order) detected", "possible deadlock in {frame}", frames=("at",)),
    _row("lockdep", "inconsistent lock state", _OLD + r"(?:WARNING|INFO): inconsistent lock state",
         "inconsistent lock state in {frame}", frames=("stack", "at")),
    _row("lockdep", "suspicious RCU usage", _OLD + r"(?P<cls>WARNING|INFO): suspicious RCU usage",
         "{cls}: suspicious RCU usage in {frame}", frames=_S, skip="rcu|kmem|slab"),
    _row("lockdep", "trying to register non-static key", r"INFO: trying to register non-static key",
         "INFO: trying to register non-static key in {frame}", frames=_S, skip="stack|lock|IRQ"),
    _row("lockdep", "Invalid wait context", _OLD + r"BUG: Invalid wait context", "WARNING: locking bug in {frame}",
         frames=_S, skip="lock_sock|release_sock"),
    _row("lockdep", "bad unlock balance detected!", _OLD + r"(?P<cls>BUG|WARNING): bad unlock balance detected!",
         "{cls}: bad unlock balance in {frame}", frames=("pc",)),
    _row("lockdep", "held lock freed!", _OLD + r"(?P<cls>BUG|WARNING): held lock freed!",
         "{cls}: held lock freed in {frame}", frames=("at", "pc")),
    _row("lockdep", "still has locks held!", _OLD + r"(?P<cls>BUG|WARNING): .*still has locks held!",
         "{cls}: still has locks held in {frame}", frames=("at", "pc")),
    _row("lockdep", "lock held when returning to user space",
         _OLD + r"(?P<cls>BUG|WARNING): lock held when returning to user space",
         "{cls}: lock held when returning to user space in {frame}", frames=("at",), stack=False),
    _row("lockdep", "Nested lock was not taken", r"WARNING: Nested lock was not taken",
         "WARNING: nested lock was not taken in {frame}", frames=_RS),

    # --- Other BUG:s.
    _row("sleep-in-atomic", "BUG: sleeping function called from invalid context",
         r"BUG: sleeping function called from invalid context\b",
         "BUG: sleeping function called from invalid context in {frame}", frames=_S),
    _row("sched-atomic", "BUG: scheduling while atomic", r"BUG: scheduling while atomic\b",
         "BUG: scheduling while atomic in {frame}", frames=_S, skip="schedule"),
    _row("preemptible", "in preemptible", r"BUG: using (?P<what>[a-z_]+)\(\) in preemptible",
         "BUG: using {what}() in preemptible code in {frame}", frames=_S,
         skip="dump_stack|preemption|preempt|debug_|processor_id|this_cpu"),
    _row("spinlock", "BUG: ", r"BUG: (?P<lock>spinlock|rwlock) (?P<what>lockup suspected|already unlocked|recursion"
         r"|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)", "BUG: {lock} {what} in {frame}",
         frames=_S, skip="spin_|_lock|_unlock"),
    _row("memory-leak", "BUG: memory leak", r"BUG: memory leak", "memory leak in {frame}", frames=("backtrace",),
         skip=_LEAK_SKIP, chain="leak", stage=0),
    _row("memory-leak", "unreferenced object 0x", r"unreferenced object 0x[0-9a-f]+ \(size \d+\):",
         "memory leak in {frame}", frames=("backtrace",), skip=_LEAK_SKIP, chain="leak", stage=1),
    _row("bad-page", "BUG: Bad ", r"BUG: Bad (?P<what>page state|page map|rss-counter state)\b",
         "BUG: Bad {what}", stack=False),
    _row("bad-mm", "on freeing mm", r"BUG: non-zero (?P<what>nr_ptes|nr_pmds) on freeing mm",
         "BUG: non-zero {what} on freeing mm", stack=False),
    _row("dentry", "still in use", r"BUG: Dentry .* still in use", "BUG: Dentry still in use in unmount",
         stack=False),
    _row("slub", "BUG ", r"BUG [\w.-]+ \([^)]*\): (?P<what>.+)", "BUG: {what}", stack=False),
    _row("bug", "BUG: ", r"BUG: (?P<what>.+)", "BUG: {what}", stack=False),

    # --- BUG() and friends, then die()'s own header lines (chain "die", stage 2).
    _row("kernel-bug", "kernel BUG at mm/usercopy.c", r"kernel BUG at mm/usercopy\.c", "BUG: bad usercopy in {frame}",
         frames=_S, skip="usercopy|__check", chain="die", stage=1),
    _row("kernel-bug", "kernel BUG at lib/list_debug.c", r"kernel BUG at lib/list_debug\.c",
         "BUG: corrupted list in {frame}", frames=_S, chain="die", stage=1),
    _row("kernel-bug", "kernel BUG at ", r"kernel BUG at " + _FILE, "kernel BUG in {frame}",
         frames=_RS, skip="^skb_", chain="die", stage=1),
    _row("double-fault", "PANIC: double fault", r"(?:traps: )?PANIC: double fault, error_code: 0x[0-9a-f]+",
         "PANIC: double fault in {frame}", fatal=True, frames=_R, chain="die", stage=1),
    _row("gpf", "general protection fault", _DIE + r"general protection fault(?:, [^:]*)?" + _DIE_TAIL,
         "general protection fault in {frame}", frames=_RS, chain="die", stage=2),
    _row("stack-segment", "stack segment", _DIE + r"stack segment" + _DIE_TAIL, "stack segment fault in {frame}",
         frames=_RS, chain="die", stage=2),
    _row("invalid-opcode", "invalid opcode", _DIE + r"invalid opcode" + _DIE_TAIL, "invalid opcode in {frame}",
         frames=_R, chain="die", stage=2),
    _row("divide-error", "divide", _DIE + r"divide(?: |_)error" + _DIE_TAIL, "divide error in {frame}",
         frames=_R, chain="die", stage=2),
    _row("double-fault", "double fault", _DIE + r"double fault" + _DIE_TAIL, "PANIC: double fault in {frame}",
         fatal=True, frames=_R, chain="die", stage=2),
    _row("oops", "Oops: ", _DIE + r"Oops" + _DIE_TAIL, "Oops in {frame}", frames=_RS, chain="die", stage=2),
    _row("oops", " [#", _DIE + r"(?P<trap>[a-z][a-z0-9 ()-]*)" + _DIE_TAIL, "{trap} in {frame}",
         frames=_RS, chain="die", stage=2),

    # --- WARN(): kinds of bug told apart by the file and function in the header, then any.
    _warn("lib/debugobjects.c", r"lib/debugobjects\.c", "(?:debug_print|debug_check)",
          "WARNING: ODEBUG bug in {frame}",
          skip="debug_|rcu|hrtimer_|timer_|work_|percpu_|vunmap|vfree|__free_|debug_check|kobject_"),
    _warn("mm/usercopy.c", r"mm/usercopy\.c", "usercopy_warn", "WARNING: bad usercopy in {frame}",
          skip="usercopy|__check"),
    _warn("lib/kobject.c", r"lib/kobject\.c", "kobject_", "WARNING: kobject bug in {frame}", skip="kobject_"),
    _warn("fs/proc/generic.c", r"fs/proc/generic\.c", "proc_register", "WARNING: proc registration bug in {frame}",
          skip="proc_"),
    _warn("lib/refcount.c", r"lib/refcount\.c", "refcount_", "WARNING: refcount bug in {frame}",
          skip="refcount|kobject_"),
    _warn("kernel/locking/lockdep.c", r"kernel/locking/lockdep\.c", "(?:.*)lock_", "WARNING: locking bug in {frame}",
          skip="lock_sock|release_sock"),
    _warn("mm/vmalloc.c", r"mm/vmalloc\.c", "(?:.*)__vmalloc_node", "WARNING: zero-size vmalloc in {frame}"),
    _warn("malloc", r"mm/.*\.c", "k?.?malloc", "WARNING: kmalloc bug in {frame}", skip="kmalloc|krealloc|slab|kmem"),
    _row("warning", "WARNING: ",
         r"WARNING: (?:CPU: \d+ PID: \d+ at (?:[^\s:]+:\d+ )?(?:" + _SYM + r"\+0x)?"
         r"|at [^\s:]+:\d+ (?:" + _SYM.replace("func", "func2") + r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\(\))?"
         r"|(?:\[.*\] )?[^\s:\[]+:\d+ at (?:" + _SYM.replace("func", "func3") + r"\+0x)?)",
         "WARNING in {frame}", frames=_RS, chain="warn", stage=0),

    _row("netdev", "unregister_netdevice: waiting for",
         r"unregister_netdevice: waiting for .* to become free",
         "unregister_netdevice: waiting for DEV to become free", stack=False),

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
         "xen: domain_crash_sync", fatal=True, frames=("header",), chain="xen-dom0", stage=1,
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

# clean_line
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# "<4>" (dmesg -r), "[    1.234567]", "[    1.234567][    T1]", "[    C0]", then one space.
_KERNEL_PREFIX = re.compile(r"^(?:<\d{1,3}>)?(?:\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?|\[\s*[TC]\d+\] ?)?")
_XEN_TIME = re.compile(r"^\(XEN\) \[[0-9:. -]+\] ")
# A user-space timestamp at the start of a line: "2026/11/30 10:00:01 " (kmemleak read by a test harness).
_USER_TIME = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)? ")
# Where a message can start inside a line: after an embedded kernel timestamp, or at "(XEN) ".
_EMBEDDED_START = re.compile(r"\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?|(?=\(XEN\) )")


def clean_line(text: str) -> str:
    """One console line without its kernel timestamp and caller id (or a user-space timestamp), escapes,
    control characters (tab kept) and trailing whitespace. Xen's "(XEN) " prefix is kept; a Xen timestamp after it is not."""
    if not text:
        return ""
    text = _SURROGATE.sub("\ufffd", text)
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    text = _CONTROL.sub("", text)
    text = _KERNEL_PREFIX.sub("", text, count=1)
    if text[:1].isdigit():
        text = _USER_TIME.sub("", text, count=1)
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
    indent = len(text) - len(text.lstrip())
    starts = [0, indent] if indent else [0]
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
    name = _name(row, m, report, message)
    reason = _corrupted(row, name, header, report, truncated)
    crash = Crash(title=name.title, fatal=name.fatal or any(r.fatal for r in joined), line=start + 1,
                  header=header, kind=name.kind, source=row.source, report=tuple(report), truncated=truncated,
                  corrupted=bool(reason), corrupted_reason=reason)
    return crash, j


@dataclass(frozen=True)
class _Named:
    title: str
    kind: str
    fatal: bool
    missing_frame: bool = False       # the title should name a function and could not
    missing_access: bool = False      # KASAN without its "Read of size" / "Write of size" line


_ACCESS = re.compile(r"\b(?P<access>Read|Write) (?:of size|at addr)")
_EMBEDDED_TIMESTAMP = re.compile(r"\[\s*\d+\.\d+\]")


def _name(row: CrashPattern, m: re.Match[str], report: Sequence[str], message: str | None) -> _Named:
    """Title, kind and fatality of a report whose first header matched ``row``."""
    if row.message_next and message is not None:
        inner = _match("(XEN) " + message)
        if inner is not None and inner[0].source == "xen" and not inner[0].message_next:
            named = _name(inner[0], inner[1], report, None)
            return dataclasses.replace(named, fatal=inner[0].fatal)
    fields = _fields(m)
    fields["message"] = message or ""
    missing_access = False
    if "{access}" in row.title:
        access = next((a.group("access") for a in map(_ACCESS.search, report) if a), None)
        missing_access = access is None
        fields["access"] = access or ""
    frame = None
    if row.frames:
        header_func = next((m.group(g) for g in ("func", "func2", "func3")
                            if g in m.re.groupindex and m.group(g)), None)
        frame = crashframes.choose(crashframes.candidates(row.frames, header_func, report), row.skip, row.extractor)
    template = row.title
    missing_frame = False
    if "{frame}" in template:
        missing_frame = frame is None
        fields["frame"] = frame or "corrupted"
    elif frame:
        template += " in {frame}"
        fields["frame"] = frame
    title = crashframes.sanitize(" ".join(template.format_map(fields).split()))
    return _Named(_tidy(title), row.kind, row.fatal, missing_frame, missing_access)


def _corrupted(row: CrashPattern, name: _Named, header: str, report: Sequence[str], truncated: bool) -> str:
    """Why this report cannot be trusted to name its bug ("" when it can)."""
    if row.corrupted:
        return row.corrupted
    if _EMBEDDED_TIMESTAMP.search(header):
        return "another message's timestamp is inside the header line (interleaved output)"
    if not row.frames and "{access}" not in row.title:
        return ""                       # the header alone names it: what follows cannot make it wrong
    if truncated:
        return "the log ends inside the report"
    if name.missing_access:
        return "no Read or Write line: the access is unknown"
    if name.missing_frame:
        return "no function to name it by"
    if row.stack and row.source == "linux" and not crashframes.has_stack(report):
        return "no stack trace in the report"
    return ""


class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _fields(m: re.Match[str]) -> _Fields:
    out = _Fields({k: (v or "") for k, v in m.groupdict().items()})
    for key in ("msg", "what"):
        if key in out:
            out[key] = out[key].strip()
    vec = out.get("vec") or out.get("vec_old")
    if vec:
        out["vector"] = _VECTORS.get(int(vec[:3]), f"vector {vec}")
    return out


def _tidy(title: str) -> str:
    title = " ".join(title.split())
    title = re.sub(r"[\s:]+$", "", title)
    return title[:MAX_TITLE_CHARS]
