"""Test configs: ``configs/*.yaml`` loaded into frozen dataclasses.

Everything is checked here, before anything boots. Every mistake is a
:class:`~framework.errors.ConfigError` that renders as one line naming the
file, the line and the fix, e.g.
``configs/boot.yaml:7: unknown key 'outcom' in expect (did you mean 'outcome'?)``.

Schema (every key is optional)::

    name: boot-native        # [A-Za-z0-9._-]+, at most 100 characters; default: the file's stem
    kernel: debian-6.1       # a kernel reference (resolved elsewhere); default debian-6.1
    mode: native             # native | xen-pv, or a list of them without repeats;
                             # default: both, [native, xen-pv] (a config runs in every mode unless it pins one)
    hypervisor: xen-4.17     # the Xen for xen-pv mode: a recipe name or path:<xen image>; default xen-4.17
    cmdline: [nokaslr, debug]   # extra kernel arguments: a list, or one string split on whitespace
    xen_cmdline: [loglvl=all]   # extra Xen arguments (xen-pv mode), same forms as cmdline
    dom0_memory: 512         # MiB for dom0 in xen-pv mode: 512, "512M" or "1G"; default 256
    qemu:
      cpu: max               # QEMU -cpu model; default: the mode's default
      memory: 1G             # MiB: 512, "512M" or "1G"; default: the mode's default
      smp: 1                 # number of CPUs, >= 1; default 1
      extra: [-device, foo]  # more QEMU arguments, verbatim (a string is split on whitespace)
    initramfs: default       # default (patchscope's own /init) | none | a file; relative paths
                             # are taken from the config file's directory
    init_commands:           # a list of shell commands patchscope's /init runs after boot,
      - cat /proc/interrupts #   in order
    modules:                 # kernel modules /init loads with insmod, in order, before init_commands:
      - test_static_keys     #   a module of the kernel's Debian package by name (kvm-intel = kvm_intel;
      - {module: kvm_amd, load: fails}   # what it depends on (.modinfo depends=) is loaded first), or the
                             #   path of a .ko (.ko.xz/.gz/.zst) file, relative paths from the config
                             #   file's directory ("./NAME" for a file without a suffix or slash);
                             #   load: ok (default) | fails: whether insmod must take the module
    timeout: 120             # seconds for the whole run; default 120
    silence: 60              # seconds without console output that count as a hang;
                             # default 60, or the timeout if that is shorter
    expect:
      outcome: boots         # boots | panics | hangs; default boots
      crash: "VFS: Unable"   # regex searched in the primary crash title (outcome panics only)
      allow_crashes: ["WARNING in foo"]   # regexes: crashes with a matching title are tolerated
      console:
        contains: [regex]    # every regex must match some console line
        excludes: [regex]    # no console line may match any of them
      stops:                 # checks on the scenario's stops (needs scenario:)
        - at: text_poke_early   # a rule's on/at exactly as written there
          count: 1           #   N or [min, max]; default: at least once
          caller: "^apply_paravirt"   # regex every stop's return address ("symbol+0xoff") must match
      nmi: delivered         # delivered | ignored | early | arrived (not lost) | lost: every injected NMI's
                             # fate, or a list with one per NMI in injection order ([delivered, ignored]);
                             # needs an inject-nmi action; default delivered when the scenario injects one
      native:                # what changes in one mode (native or xen-pv), laid over expect for runs in
        console:             # that mode: outcome, crash, oversized, unknown_changes, pv_indirect and nmi
          contains: ["on bare hardware"]   # given here replace expect's; allow_crashes, console,
      xen-pv:                # sites and stops given here are added to expect's
        console:
          contains: ["Booting kernel on Xen"]
    requires:                # the kernels this config makes sense for; on any other its run is
      kernel: ">= 6.1, < 6.12"   # "not applicable" (with the reason), never a failure. Bounds on the
                             # kernel's upstream version, compared at the bound's precision
      symbols: [apply_returns]   # the kernel defines these symbols
      tables: [returns]      # the vmlinux carries these patch-site tables
    scenario:                # at a breakpoint, when conditions hold, do actions (framework/scenario/)
      max_stops: 1000        # at most this many stops at the rules' breakpoints (matched or not),
                             # 1..1000000; default 1000; then the breakpoints go and the run fails
      rules:
        - on: text_poke_bp_batch          # where to stop: symbol, symbol+0x10 (or +16), or 0xffffffff81000000
          do: [inject-nmi]
        - on:
            at: text_poke_early
            hit: 200                      # only the 200th matching stop (>= 1); default every one
            when:                         # all must hold
              caller: "^apply_paravirt[+]"   # regex on the return address *(u64 *)rsp as "symbol+0xoff"
              addr_in: native_flush_tlb_local  # the "addr" argument lies in this symbol
              pv_op: irq.save_fl          # paravirt_patch: the op of its "type"; else of the pv site at "addr"
              len: 6                      # the "len" argument equals (an EXPR)
              regs: {rdi: 0xffffffff81000000}   # registers equal (EXPRs)
          do:                             # in order; a rule always continues after its last action
            - skip                        # return at once: rip = *(u64 *)rsp, rsp += 8 (a function entry only)
            - skip: {return: 0}           #   ... with rax = EXPR
            - write: {at: "rdi + 9", bytes: "02"}   # hex pairs, spaces allowed; or u8/u16/u32/u64: EXPR
            - set: {rdx: "len - 1"}       # registers = EXPRs
            - dump: {at: addr, len: 16}   # memory into the artefacts; len 1..1048576
            - record: [addr, len, rsp]    # EXPRs into the log; bare "record": the function's arguments
            - inject-nmi                  # QMP inject-nmi
            - continue                    # only last

EXPR: integers (decimal, 0x hex), registers (rax … r15, rip, rsp, eflags), the
function's arguments, and kernel symbols (their address), with ``+ - *`` and
parentheses, in 64-bit unsigned arithmetic. Arguments come from
``scenario.SIGNATURES`` (Linux 6.1 prototypes, rdi, rsi, rdx, rcx, r8, r9) and
exist only when ``on`` is exactly a function's entry; ``addr_in``, ``len`` and
``pv_op`` need a function with that argument. Symbols are checked once the
kernel is known (``scenario.resolve``), before it boots.

A forked run boots once, saves the machine at ``fork.at`` and runs every point of its
``sweep`` from there, each judged as a run of its own (:mod:`framework.config.sweep`,
:mod:`framework.observe.fork`)::

    fork:                    # boot once to here, save the machine (savevm), run every point from it
      at: alternative_instructions        # a function, symbol+0x10 or an address
      hit: 1                              # its hit-th arrival (>= 1); default 1
    sweep:                   # the points (needs fork:); every combination of the parameters, at most 1000
      hit: 1..2000 step 100               # a range ("1..20"), or a list: [1, 5, 9], [irq.save_fl, cpu.io_delay]
    scenario:
      rules:
        - on: {at: text_poke_early, hit: ${hit}}   # a parameter's value, in scenario: and expect: only
          do: [inject-nmi]
    expect:
      nmi: ignored

An empty value (``cmdline:`` with nothing after it) means the default for
lists and sections, and for ``qemu.cpu``, ``qemu.memory`` and ``expect.crash``;
anywhere else it is an error. Values of string keys are taken as written, so
``kernel: 6.10`` is the string ``"6.10"``, not a number. Regex lists also
accept a single string. Numbers of seconds may be fractional.

Impossible combinations, each reported at the line of the offending key:

* ``expect.crash`` unless ``expect.outcome`` is ``panics``;
* ``expect.allow_crashes`` with outcome ``hangs``;
* ``init_commands`` or outcome ``boots`` with ``initramfs: none`` (without
  patchscope's /init nothing runs the commands or prints the success marker);
* ``modules`` with ``initramfs: none`` or an initramfs file; a module listed twice
  (``kvm-intel`` and ``kvm_intel`` are one); a ``.ko`` file that does not exist; a
  directory of module sources (not supported yet). A name the kernel's package does not
  hold is reported at its line once the kernel is known, before it boots
  (:func:`framework.kernel.modules.resolve_modules`);
* ``silence`` longer than ``timeout``;
* ``sweep`` without ``fork``; ``fork`` with ``inspect`` or ``modules`` (a forked run
  takes no captures or trace); a ``${name}`` that no sweep parameter has, or outside
  ``scenario:`` and ``expect:``; a parameter never used; more than 1000 points;
* a regex that does not compile, or an empty one (it would match anything);
* ``expect.stops`` without a scenario, or at a place no rule stops at; ``expect.nmi``
  without an ``inject-nmi`` action; a scenario without rules, a rule without
  actions, ``skip`` where ``on`` is not a function's entry, an argument or an
  argument condition the rule's function does not have;
* an ``initramfs`` file that does not exist (the message gives the resolved path);
* a mode other than native and xen-pv, or the same mode twice;
* a ``cmdline``/``xen_cmdline`` entry containing a newline or other control character;
* ``qemu.extra`` options that patchscope controls itself: ``-kernel``, ``-initrd``,
  ``-append``, ``-m``, ``-smp``, ``-cpu``, ``-serial``, ``-chardev``, ``-monitor``,
  ``-mon``, ``-qmp``, ``-nographic``, ``-daemonize``, ``-readconfig``, ``-S``, and
  ``-gdb``/``-s`` (the gdbstub must never listen on TCP).

Unknown keys, duplicate keys, merge keys (``<<``), YAML syntax errors (tabs
included), an empty file (write ``{}`` for every default), files over 256 KiB
and text that is not UTF-8 are errors too. Keys and values are read from the YAML node
tree (``yaml.compose``), never through ``yaml.safe_load``, so every error can
name its line; :attr:`Config.lines` keeps those lines for later messages.

Where the code is: :mod:`framework.config.model` (the dataclasses),
:mod:`framework.config.schema` (this schema and its checks; scenario rules in
:mod:`framework.scenario.parse`, the file:line YAML engine in :mod:`framework.yamlnode`)
and :mod:`framework.config.overrides` (configs without a file, command-line flags, back to data).
"""

from __future__ import annotations

from ..domain import MODES, OUTCOMES, Mode, Outcome
from .model import (
    DEFAULT_DOM0_MEMORY_MIB,
    DEFAULT_SILENCE,
    DEFAULT_TIMEOUT,
    Config,
    ConsoleExpect,
    Expect,
    Inspect,
    ModuleSpec,
    QemuOptions,
    Requires,
    SiteAssertion,
    UnwindSpec,
)
from .overrides import default_config, to_yaml_dict, with_overrides
from .schema import MAX_CONFIG_BYTES, MAX_NAME_LENGTH, load_config, parse_config, sweep_point
from .sweep import Fork, Sweep

__all__ = [
    "DEFAULT_DOM0_MEMORY_MIB",
    "DEFAULT_SILENCE",
    "DEFAULT_TIMEOUT",
    "MAX_CONFIG_BYTES",
    "MAX_NAME_LENGTH",
    "MODES",
    "OUTCOMES",
    "Config",
    "ConsoleExpect",
    "Expect",
    "Fork",
    "Inspect",
    "Mode",
    "ModuleSpec",
    "Outcome",
    "QemuOptions",
    "Requires",
    "SiteAssertion",
    "Sweep",
    "UnwindSpec",
    "default_config",
    "load_config",
    "parse_config",
    "sweep_point",
    "to_yaml_dict",
    "with_overrides",
]
