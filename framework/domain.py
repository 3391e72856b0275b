"""The domain's words, defined once: modes, accelerators, debuggers, outcomes, verdicts, tables, states.

Every module that speaks of one of these imports it from here; nothing here
imports anything, so the lightest module (a config check, a report reader)
can use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

# A progress note for the user (stderr in the CLI, nothing under -q).
Note = Callable[[str], None]

Mode = Literal["native", "xen-pv"]
MODES: tuple[Mode, ...] = ("native", "xen-pv")

Accel = Literal["tcg", "kvm", "auto"]
ACCELS: tuple[Accel, ...] = ("tcg", "kvm", "auto")

# What drives QEMU's gdbstub: GDB over MI, or patchscope's own remote-protocol client.
DebuggerKind = Literal["auto", "gdb", "rsp"]
DEBUGGERS: tuple[DebuggerKind, ...] = ("auto", "gdb", "rsp")
# What records a trace's writes: a TCG plugin logging every store into text (the default under TCG), or
# breakpoints on the text-writing functions (under KVM, and as a cross-check).
Tracer = Literal["plugin", "breakpoints"]
TRACERS: tuple[Tracer, ...] = ("plugin", "breakpoints")

# What a config may expect, and what a run may be observed to do (unknown: interrupted first).
Outcome = Literal["boots", "panics", "hangs"]
OUTCOMES: tuple[Outcome, ...] = ("boots", "panics", "hangs")
ObservedOutcome = Literal["boots", "panics", "hangs", "unknown"]

VerdictName = Literal["pass", "fail", "error"]

# The patch-site tables, named as the kernel's mechanisms are (in the order
# alternative_instructions() applies them, then the ones patched elsewhere):
# call_sites are the calls callthunks_patch_builtin_calls() redirects to call
# depth tracking thunks (6.2+), ibt_endbr_seal the ENDBR64s apply_seal_endbr()
# poisons (6.2+; apply_ibt_endbr() before), runtime_consts the immediates
# runtime_const_init() fills in (6.11+, the runtime_ptr_*/runtime_shift_* sections).
TABLES = ("paravirt", "alternatives", "retpolines", "returns", "call_sites", "ibt_endbr_seal", "smp_locks",
          "jump_labels", "static_calls", "ftrace", "runtime_consts")

# A site's state in a capture.
SiteStateName = Literal["unchanged", "patched", "freed", "unread"]
SITE_STATES: tuple[SiteStateName, ...] = ("unchanged", "patched", "freed", "unread")

# Where an inspection may capture the text, besides any kernel function.
CAPTURE_POINTS = ("before-patching", "after-patching", "booted")

DEFAULT_KERNEL = "debian-6.1"
DEFAULT_HYPERVISOR = "xen-4.17"
