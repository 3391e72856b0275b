"""Which function names a crash, and how a title is made stable: syzkaller's conventions. Pure.

Users dedup kernel crashes by title across tools (syzbot, KernelCI, mailing-list
reports all quote syzkaller's titles), so patchscope names a crash the way
syzkaller's ``pkg/report`` does. This module holds the parts of that convention
that are not tied to one kind of crash:

* **Candidate frames** (``candidates``): a row of the crash table lists where its
  frames come from, in order, and the candidates are those places' functions
  concatenated: ``header`` (the header's ``func`` group), ``rip`` (the first
  ``RIP: 0010:func+0x…`` line, or ``e030`` for Xen PV), ``stack`` (the frames after
  ``Call Trace:``), ``next`` (frames right after the header, as KMSAN prints them),
  ``at`` (lockdep's ``…, at: func+0x…`` lines, and the frames after a line ending
  in ``at:``), ``pc`` (the first ``[<ffffffff81234567>] func+0x…`` or ``at: func``
  line: lockdep's released-lock site), ``backtrace`` (kmemleak's ``backtrace:``
  frames) and ``irq`` (an RCU stall: the ``RIP:`` after the first
  ``apic_timer_interrupt`` line, then the interrupted task's frames).
  Frames marked ``?`` (unreliable) are never candidates.
* **Infrastructure** (``is_infrastructure``): a candidate whose name *contains*
  one of ``INFRASTRUCTURE`` (reporting, sanitizers, locking, string and memory
  helpers, allocation, retpoline thunks …) or the row's own extra patterns is
  skipped. Names lose compiler suffixes first (``foo.isra.0`` -> ``foo``).
* **Choosing** (``choose``): ``first`` takes the first candidate left;
  ``stall`` (soft lockups, RCU stalls, stack overflows) walks to the first
  *anchor* frame (an entry point: syscall, workqueue, kthread, timer …) and takes
  the frame before it, so the same stall gets one title wherever it was sampled;
  ``hang`` (hung tasks) groups every wait in ``synchronize_*rcu`` under
  ``synchronize_rcu`` and otherwise skips the waiting machinery. Syscall
  prefixes are then stripped (``__do_sys_finit_module`` -> ``finit_module``).
* **Stable text** (``sanitize``): what still varies between runs in a title is
  replaced: ``func+0x1a/0x40`` -> ``func``, ``file.c:123`` -> ``file.c:LINE``,
  hex of six digits or more -> ``ADDR``, ``CPU#1`` -> ``CPU``, other numbers ->
  ``NUM``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from typing import Literal

FrameSource = Literal["header", "rip", "stack", "next", "at", "pc", "backtrace", "irq"]
Extractor = Literal["first", "stall", "hang"]

_NAME = r"[A-Za-z_$][\w.$]*"
# A stack frame line: "func+0x1a/0x40", " [<ffffffff81234567>] func+0x1a/0x40 [mod]", "? func+0x…".
FRAME = re.compile(r"^\s*(?:\[<?[0-9a-f]+>?\]\s*){0,2}(?P<unreliable>\?\s*)?(?P<func>" + _NAME + r")\+0x[0-9a-f]+/0x[0-9a-f]+")
# "RIP: 0010:func+0x…", 4.x "RIP: 0010:[<ffffffff81234567>]  [<…>] func+0x…", 4.9 and older "IP: [<…>] func+0x…".
_RIP = re.compile(r"\bR?IP: (?:(?P<cs>[0-9a-f]{4}):)?(?:\[<[0-9a-f]+>\]\s*){0,2}(?P<func>" + _NAME + r")?\+0x")
_ANY_RIP = re.compile(r"\bR?IP: (?:[0-9a-f]{4}:|\[<)")
_KERNEL_CS = frozenset({"0010", "e030"})   # native, Xen PV 64-bit kernel
_CALL_TRACE = re.compile(r"\bCall Trace:")
_AT_FUNC = re.compile(r"\bat: (?:\[<[0-9a-f]+>\]\s*)?(?P<func>" + _NAME + r")\+0x")
_AT_END = re.compile(r"\bat:\s*$")
_PC_FUNC = re.compile(r"(?:\[<[0-9a-f]+>\]\s+|\bat: )(?P<func>" + _NAME + r")\+0x")
_BACKTRACE = re.compile(r"(?:^|[^k] )backtrace(?: \(crc [0-9a-f]+\))?:")
_IRQ_MARK = re.compile(r"apic_timer_interrupt|Exception stack")
_STOP = re.compile(r"---\[ end |^Modules linked in:|^Kernel Offset:")
# Where a report's stack is, for "does it have one at all".
STACK_KEYWORDS = re.compile(r"Call (?:T|t)race|Allocated by task \d+:|Freed by task \d+:|(?:^|[^k] )backtrace"
                            r"(?: \(crc [0-9a-f]+\))?:|Backtrace:|Uninit was stored to memory at")

# Frames that are the machinery around a bug, never its culprit: a frame whose name
# contains one of these is skipped (syzkaller's list, grouped here by what they are).
INFRASTRUCTURE: tuple[str, ...] = (
    # sanitizers
    "__sanitizer", "__asan", "kasan", "__msan", "kmsan", "kcsan_setup_watchpoint", "check_memory_region",
    "check_heap_object", "check_object", "read_word_at_a_time", "(read|write)_once_.*nocheck",
    "print_address_description",
    # reporting: panic, BUG(), WARN(), traps, stack dumping
    "panic", "invalid_op", "report_bug", "fixup_bug", "print_report", "print_usage_bug", "do_error",
    "_trap$|do_trap", "show_stack", "dump_stack", "walk_stack", "dump_backtrace", "warn_slowpath",
    "warn_alloc", "warn_bogus", "__warn", "print_tainted", "stack_trace_consume_entry", "arch_stack_walk",
    "stack_trace_save", "hex_dump_to_buffer", "print_hex_dump", "assertfail",
    # allocation
    "alloc_page", "k?v?(?:m|z|c)alloc", "krealloc", "kmem_cache", "allocate_slab", "folio_alloc",
    "filemap_alloc_folio", "__filemap_get_folio", "find_or_create_page", "do_read_cache_folio",
    "read_cache_page", "pagecache_get_page", "grab_cache_page_write_begin", "slab_", "^kv?free$",
    "kfree_skb",
    # debug objects
    "debug_object", "timer_is_static_object", "work_is_static_object",
    # locking and lockdep
    "__might_fault", "print_unlock", "imbalance_bug", "lockdep", "bh_enable", "bh_disable", "perf_trace",
    "lock_acquire", "lock_release", "lock_class", "mark_lock", "(reacquire|mark)_held_locks", "raw_spin_rq",
    "spin_lock", "spin_trylock", "spin_unlock", "read_lock", "read_trylock", "write_lock", "write_trylock",
    "read_unlock", "write_unlock", "^down$", "down_read", "down_write", "down_read_trylock",
    "down_write_trylock", "down_trylock", "up_read", "up_write", "^mutex_", "^__mutex_", "^rt_mutex_",
    "owner_on_cpu", "osq_lock", "osq_unlock", "(trace|lockdep)_(hard|soft)irq",
    "^(un)?lock_page", "^folio_(un)?lock",
    # atomics, bits, reference counts
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)", "(set|clear|change|test)_bit",
    "__wake_up", "^refcount_", "^kref_", "ref_tracker", "seqprop_assert",
    # memory and string helpers, user copies
    "memcpy", "memcmp", "memset", "memchr", "memmove", "memdup", "strcmp", "strncmp", "strcpy", "strlcpy",
    "strncpy", "strscpy", "strlen", "strstr", "strnstr", "strnlen", "strchr", "strdup", "strndup",
    "copy_to_user", "copy_from_user", "copy_to_iter", "copy_from_iter", "copy_page_to_iter",
    "copy_page_from_iter", "copy_folio_to_iter", "^copyin$", "^copyout$", "put_user", "get_user",
    "might_fault", "might_sleep", "__might_resched", "^crc\\d+", "crc_itu_t",
    # data structures
    "list_add", "list_del", "list_replace", "list_move", "list_splice", "^rb_", "^__rb_", "^klist_",
    "xas_(?:start|load|find)",
    # retpolines
    "_indirect_thunk_",
    # printing
    "string", "pointer", "snprintf", "scnprintf", "kasprintf", "kvasprintf", "printk", "va_format",
    "dev_info", "dev_notice", "dev_warn", "dev_err", "dev_alert", "dev_crit", "dev_emerg",
    # timers, work, waiting
    "del_timer", "flush_work", "__cancel_work_timer", "cancel_work_sync", "try_to_grab_pending",
    "flush_workqueue", "drain_workqueue", "destroy_workqueue", "queue_work", "insert_work",
    "__queue_delayed_work", "queue_delayed_work_on", "finish_wait", "kthread_stop", "^complete$",
    "wait_for_completion",
    # device model and teardown helpers
    "kobject_", "add_uevent_var", "get_device_parent", "device_add", "device_del", "device_unregister",
    "device_destroy", "device_release", "devres_release_all", "hwrng_unregister", "i2c_del_adapter",
    "__unregister_client", "device_for_each_child", "rollback_registered", "unregister_netdev",
    "sysfs_remove", "device_remove_file", "tty_unregister_device", "^iput$", "^iput_final$", "^ihold$",
    "find_lock_entries", "truncate_inode_pages_range",
    # USB plumbing
    "dummy_urb_enqueue", "usb_kill_urb", "usb_kill_anchored_urbs", "usb_control_msg", "usb_hcd_submit_urb",
    "usb_submit_urb",
    # port I/O
    "readb$", "readw$", "readl$", "readq$", "writeb$", "writew$", "writel$", "writeq$", "logic_in", "logic_out",
    # other architectures' fault paths (harmless on x86)
    "program_check_exception", "program_check_common", "do_(kernel|translation)_fault", "do_mem_abort",
    "el1_abort", "el1h_64_sync(?:_handler)?",
)


# Entry points for the stall rule: the frame before the first of these names the stall.
STALL_ANCHORS: tuple[str, ...] = (
    "process_one_work", "do_syscall_", "do_fast_syscall_", "sysenter_dispatch", "tracesys_phase2",
    "el0_svc_handler", "invoke_syscall", "ret_fast_syscall", "netif_receive_skb", "do_softirq",
    "call_timer_fn", "_run_timers", "run_timer_softirq", "hrtimer_run", "run_ksoftirqd", "smpboot_thread_fn",
    "^kthread$", "start_secondary", "cpu_startup_entry", "ret_from_fork",
    "vfs_write", "vfs_read", "vfs_iter_read", "vfs_iter_write", "do_iter_read", "do_iter_write",
    "call_read_iter", "call_write_iter", "new_sync_read", "new_sync_write", "vfs_ioctl", "ksys_ioctl",
    "compat_ioctl", "compat_sys_ioctl", "blkdev_driver_ioctl", "blkdev_ioctl", "do_iter_readv_writev",
    "^call_mmap", "mmap_region", "do_mmap", "do_dentry_open", "vfs_open",
    "^sock_sendmsg", "^sock_recvmsg", "^sock_release", "^__sock_release", "^setsockopt$", "kernel_setsockopt",
    "sock_common_setsockopt", "^listen$", "kernel_listen", "sk_common_release", "^sock_mmap", "^accept$",
    "kernel_accept", "^sock_do_ioctl", "^sock_ioctl", "^compat_sock_ioctl", "^nfnetlink_rcv_msg",
    "^rtnetlink_rcv_msg", "^netlink_dump", "^(sys_)?(socketpair|connect|ioctl)",
    "__do_fault", "do_page_fault", "^page_fault$", "__fput", "task_work_run", "exit_to_usermode",
    "smp_call_function", "tasklet_action", "tasklet_hi_action",
)


@functools.cache
def _alternation(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex of many, compiled when a crash first needs it (``check`` of a clean log never does)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_HANG_ANCHORS = {"rtnl_lock": "", "synchronize_rcu": "synchronize_rcu", "synchronize_srcu": "synchronize_rcu",
                 "synchronize_net": "synchronize_rcu", "synchronize_sched": "synchronize_rcu"}
_HANG_SKIP = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait", "synchronize",
              "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")

# Stripped once each, in this order (as syzkaller does).
SYSCALL_PREFIXES = ("SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_",
                    "__se_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_")


def norm(name: str) -> str:
    """A function name without compiler suffixes (``foo.isra.0``, ``foo.cold`` -> ``foo``)."""
    return name.split(".", 1)[0][:100]


def is_infrastructure(name: str, extra: re.Pattern[str] | None = None) -> bool:
    return _alternation(INFRASTRUCTURE).search(name) is not None or (extra is not None and extra.search(name) is not None)


def candidates(sources: Sequence[FrameSource], header_func: str | None,
               report: Sequence[str]) -> list[str]:
    """The candidate function names of a report, from its row's sources in order."""
    out: list[str] = []
    for source in sources:
        if source == "header":
            if header_func:
                out.append(norm(header_func))
        elif source == "rip":
            out.extend(_rip(report, 0)[1])
        elif source == "stack":
            out.extend(_frames_after(report, _first(report, _CALL_TRACE)))
        elif source == "next":
            out.extend(_frames_after(report, 1, contiguous=True))
        elif source == "at":
            out.extend(_at(report))
        elif source == "pc":
            out.extend(_pc(report))
        elif source == "backtrace":
            out.extend(_frames_after(report, _first(report, _BACKTRACE)))
        else:                                   # "irq"
            mark = _first(report, _IRQ_MARK)
            if mark is not None:
                line, rip = _rip(report, mark)
                start = line if rip and line is not None else mark
                out.extend(rip)
                out.extend(_frames_after(report, start))
    return out


def choose(names: Sequence[str], extra: re.Pattern[str] | None = None,
           extractor: Extractor = "first") -> str | None:
    """The function that names a crash, from its candidates (None when every one is skipped)."""
    kept = [n for n in names if n and not is_infrastructure(n, extra)]
    if extractor == "hang":
        name = _hang(kept)
    elif extractor == "stall":
        name = _stall(kept)
    else:
        name = kept[0] if kept else None
    return strip_syscall_prefix(name) if name else None


def strip_syscall_prefix(name: str) -> str:
    for prefix in SYSCALL_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def has_stack(report: Sequence[str]) -> bool:
    return any(STACK_KEYWORDS.search(line) for line in report)


_FUNC_OFFSET = re.compile(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+")
_FILE_LINE = re.compile(r"(\.\w+)(:[0-9]+)+")
_ADDR = re.compile(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}")
_CPU = re.compile(r"CPU#[0-9]+")
_NUM = re.compile(r"(\W)(\d+)(\W|$)")


def sanitize(title: str) -> str:
    """A title without what changes between runs: offsets, line numbers, addresses, CPU and other numbers."""
    title = _FUNC_OFFSET.sub(r"\1", title)
    title = _FILE_LINE.sub(r"\1:LINE", title)
    title = _ADDR.sub(r"\1ADDR", title)
    title = _CPU.sub("CPU", title)
    for _ in range(8):                          # overlapping numbers ("(0,0)") need more than one pass
        new = _NUM.sub(r"\1NUM\3", title)
        if new == title:
            break
        title = new
    return title


# ---------------------------------------------------------------------------

def _first(report: Sequence[str], pattern: re.Pattern[str], start: int = 0) -> int | None:
    for n in range(start, len(report)):
        if pattern.search(report[n]):
            return n
    return None


def _rip(report: Sequence[str], start: int) -> tuple[int | None, list[str]]:
    """The first RIP line from ``start`` and its function, if that is kernel code ([] for user space)."""
    n = _first(report, _ANY_RIP, start)
    if n is None:
        return None, []
    m = _RIP.search(report[n])
    if m is None or (m.group("cs") or "0010") not in _KERNEL_CS or not m.group("func"):
        return n, []
    return n, [norm(m.group("func"))]


def _frames_after(report: Sequence[str], start: int | None, contiguous: bool = False) -> Iterator[str]:
    """Reliable frames after the keyword line ``start``, past lines that are not frames (register dumps
    inside a trace, markers), up to the end of the trace. ``contiguous``: from line ``start`` itself, the first
    run of frames only (KFENCE's and KMSAN's access stack, not the allocation stacks after it)."""
    if start is None:
        return
    seen = False
    for line in report[start:] if contiguous else report[start + 1:]:
        if _STOP.search(line):
            return
        m = FRAME.match(line)
        if m is None:
            if contiguous and seen:
                return
            continue
        seen = True
        if not m.group("unreliable"):
            yield norm(m.group("func"))


def _at(report: Sequence[str]) -> Iterator[str]:
    for n, line in enumerate(report):
        m = _AT_FUNC.search(line)
        if m is not None:
            yield norm(m.group("func"))
        elif _AT_END.search(line):
            yield from _frames_after(report, n)
            return


def _pc(report: Sequence[str]) -> Iterator[str]:
    for line in report[1:]:
        if _CALL_TRACE.search(line):
            break
        m = _PC_FUNC.search(line)
        if m is not None:
            yield norm(m.group("func"))
            break
    yield from _frames_after(report, _first(report, _CALL_TRACE))


def _stall(frames: Sequence[str]) -> str | None:
    if not frames:
        return None
    prev = frames[0]
    for frame in frames:
        if _alternation(STALL_ANCHORS).search(frame):
            return "smp_call_function" if "smp_call_function" in frame else prev
        prev = frame
    return None


def _hang(frames: Sequence[str]) -> str | None:
    for frame in frames:
        for anchor, instead in _HANG_ANCHORS.items():
            if anchor in frame:
                return instead or frame
    for frame in frames:
        if not any(word in frame for word in _HANG_SKIP):
            return frame
    return None
