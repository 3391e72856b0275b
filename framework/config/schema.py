"""The config schema and its checks: YAML text or file to a :class:`~framework.config.model.Config`.

Keys and values are read by :mod:`framework.yamlnode` (scenario rules by
:mod:`framework.scenario.parse`); checks that involve several keys are in :func:`build_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import yaml

from .. import yamlnode as yn
from ..domain import CAPTURE_POINTS, DEFAULT_HYPERVISOR, DEFAULT_KERNEL, MODES, OUTCOMES, TABLES, Mode, Outcome
from ..domain import SITE_STATES as STATES
from ..elf.modinfo import KO_SUFFIXES, module_name, strip_ko_suffix
from ..scenario import Scenario, StopExpect, parse_location
from ..scenario import parse as scenario_parse
from .model import (
    CAPTURE_READERS,
    DEFAULT_DOM0_MEMORY_MIB,
    DEFAULT_SILENCE,
    DEFAULT_TIMEOUT,
    VERSION_OPERATORS,
    CaptureReader,
    Config,
    ConsoleExpect,
    Expect,
    ExpectOverlay,
    Inspect,
    ModuleSpec,
    QemuOptions,
    Requires,
    SiteAssertion,
    UnwindSpec,
)
from .model import MODULE_LOADS as _MODULE_LOADS
from .sweep import PLACEHOLDER, Fork, Sweep, parse_sweep, probe_sweep

# The tables inspect.unwind may stop in: those whose patched sites can hold several instructions.
UNWIND_TABLES = ("paravirt", "alternatives")

__all__ = ["MAX_CONFIG_BYTES", "MAX_NAME_LENGTH", "SCHEMA", "build_config", "load_config", "parse_config",
           "parse_modes", "sweep_point"]

MAX_CONFIG_BYTES = 256 * 1024
MAX_NAME_LENGTH = 100


def _one_line(ctx: yn.Ctx, node: yaml.Node, key: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise ctx.fail(node, f"{key}: {yn.quote(text)} contains a newline; the command line is one line")
    bad = [c for c in text if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise ctx.fail(node, f"{key}: {yn.quote(text)} contains control character U+{ord(bad[0]):04X}")


def _capture_name(text: str) -> str | None:
    if text in CAPTURE_POINTS or re.fullmatch(scenario_parse.SYMBOL, text):
        return None
    return (f"{yn.quote(text)} is not a capture point: use {', '.join(CAPTURE_POINTS)} "
            "or a kernel symbol to stop at")


def _table_name(text: str) -> str | None:
    return None if text in TABLES else (f"{yn.quote(text)} is not a patch-site table (one of "
                                        f"{', '.join(TABLES)}){yn.suggest(text, TABLES)}")


def _state_name(text: str) -> str | None:
    return None if text in STATES else (f"{yn.quote(text)} is not a site state (one of "
                                        f"{', '.join(STATES)}){yn.suggest(text, STATES)}")


def _at_most(ctx: yn.Ctx, node: yaml.Node, key: str) -> int | None:
    if yn.is_null(node):
        return None
    value = yn.whole(node)
    if value is None or value < 0:
        raise ctx.fail(node, f"{key} must be a whole number >= 0 (the most allowed), not {yn.describe(node)}")
    return value


def _count_range(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[int, int]:
    """A count: N, or [min, max]."""
    value = yn.whole(node)
    if value is not None and value >= 0:
        return value, value
    if isinstance(node, yaml.SequenceNode) and len(node.value) == 2:
        low, high = (yn.whole(n) for n in node.value)
        if low is not None and high is not None and 0 <= low <= high:
            return low, high
    raise ctx.fail(node, f"{key} must be a number of sites or [min, max] with min <= max, not {yn.describe(node)}")


def _insns(ctx: yn.Ctx, node: yaml.Node, key: str) -> str:
    """Instructions: "pushf; pop %rax", or a list of them; [] means only NOPs."""
    if isinstance(node, yaml.SequenceNode):
        return "; ".join(text for _, _, text in yn.items(ctx, node, key, "a list of instructions", split=False))
    text = yn.scalar_text(ctx, node, key, "instructions such as 'pushf; pop %rax', or [] for only NOPs")
    if not text.strip():
        raise ctx.fail(node, f"{key}: write [] for a site that holds only NOPs")
    return text


def _symbol_name(text: str) -> str | None:
    return None if re.fullmatch(scenario_parse.SYMBOL, text) else f"{yn.quote(text)} is not a kernel symbol name"


_RANGE_ITEM = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*")


def _kernel_range(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Version bounds on the kernel's upstream release: ">= 6.1, < 6.12"."""
    text = yn.scalar_text(ctx, node, key, "a version range such as '>= 6.1, < 6.12'")
    out: list[tuple[str, tuple[int, ...]]] = []
    for part in text.split(","):
        m = _RANGE_ITEM.fullmatch(part)
        if m is None:
            raise ctx.fail(node, f"{key}: {yn.quote(part.strip())} is not a bound; write comparisons "
                                 f"joined by commas, such as '>= 6.1, < 6.12' (operators: {', '.join(VERSION_OPERATORS)})")
        out.append((m.group(1), tuple(int(x) for x in m.group(2).split("."))))
    return tuple(out)


_SITE_CHECKS = ("insns", "insns_regex", "state", "count")

_SITE_RULE = yn.Section({
    "table": yn.choice(TABLES),
    "op": yn.text("a pv_ops member such as 'irq.save_fl'", pattern=r"[a-z_]+(\.[a-z0-9_]+)+"),
    "feature": yn.text("a CPU feature such as 'X86_FEATURE_XENPV' or '!X86_FEATURE_XENPV'",
                       pattern=r"!?X86_FEATURE_\S+"),
    "symbol": yn.optional_regex,
    "module": yn.text("a loaded module's name such as 'kvm', or '*' for every module",
                      pattern=r"\*|[A-Za-z0-9_-]+"),
    "at": yn.text("a capture point", pattern=r"\S+"),
    "insns": _insns,
    "insns_regex": yn.regex,
    "state": yn.names("a site state or a list of them", _state_name),
    "count": _count_range,
})


def _module_name(text: str | None) -> str | None:
    """Module names as the kernel spells them: kvm-intel.ko is module kvm_intel."""
    return None if text is None else text.replace("-", "_")


def _site_assertions(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[SiteAssertion, ...]:
    if yn.is_null(node):
        return ()
    out: list[SiteAssertion] = []
    for item_key, item in yn.mappings(ctx, node, key, "of site assertions, e.g. [{table: paravirt, state: patched}]",
                                      "{op: irq.save_fl, insns: 'pushf; pop %rax'}"):
        values = yn.read_section(ctx, item, _SITE_RULE, item_key + ".")
        checks = [c for c in _SITE_CHECKS if values.get(c) is not None]
        if len(checks) != 1:
            raise ctx.fail(item, f"{item_key} needs exactly one of {', '.join(_SITE_CHECKS)}"
                                 + (f" (it has {', '.join(checks)})" if checks else ""))
        out.append(SiteAssertion(
            table=cast(str | None, values.get("table")), op=cast(str | None, values.get("op")),
            feature=cast(str | None, values.get("feature")),
            symbol=cast(re.Pattern[str] | None, values.get("symbol")), at=cast(str | None, values.get("at")),
            module=_module_name(cast(str | None, values.get("module"))),
            insns=cast(str | None, values.get("insns")),
            insns_regex=cast(re.Pattern[str] | None, values.get("insns_regex")),
            state=cast(tuple[str, ...] | None, values.get("state")),
            count=cast(tuple[int, int] | None, values.get("count")), line=yn.line_of(item)))
    return tuple(out)


def parse_modes(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[Mode, ...]:
    """``mode:``: one mode, or a list of them without repeats."""
    valid = ", ".join(MODES)
    items: list[tuple[str, yaml.Node, str]]
    if isinstance(node, yaml.ScalarNode):
        items = [(key, node, yn.scalar_text(ctx, node, key, f"one of {valid} or a list of them"))]
    else:
        items = yn.items(ctx, node, key, f"one of {valid} or a list of them", split=False)
        if not items:
            raise ctx.fail(node, f"{key} must name at least one of {valid}")
    seen: list[str] = []
    for item_key, item, text in items:
        if text not in MODES:
            close = difflib.get_close_matches(text, MODES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ctx.fail(item, f"{item_key}: unknown mode {yn.quote(text)} "
                                 f"({hint}valid modes: {valid})")
        if text in seen:
            raise ctx.fail(item, f"{item_key}: mode {yn.quote(text)} is listed twice")
        seen.append(text)
    return cast(tuple[Mode, ...], tuple(seen))


def _stat_path(ctx: yn.Ctx, node: yaml.Node, key: str, text: str) -> tuple[str, int | None]:
    """A path from the config, resolved against the config's directory, and its st_mode (None: not there);
    a path that exists but cannot be used is a one-line error."""
    resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(text)))
    try:
        return resolved, os.stat(resolved).st_mode
    except (OSError, ValueError) as err:
        if isinstance(err, OSError) and err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ctx.fail(node, f"{key}: cannot use {resolved} ({err.strerror or err})") from None
        return resolved, None


def _initramfs(ctx: yn.Ctx, node: yaml.Node, key: str) -> str:
    text = yn.text("'default', 'none' or the path of an initramfs file")(ctx, node, key)
    assert isinstance(text, str)
    if text in ("default", "none"):
        return text
    resolved, mode = _stat_path(ctx, node, key, text)
    if mode is None:
        close = difflib.get_close_matches(text, ("default", "none"), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.fail(node, f"{key}: file {resolved} not found{hint}")
    if not stat.S_ISREG(mode):
        raise ctx.fail(node, f"{key}: {resolved} is not a regular file")
    return resolved


# Options of qemu.extra that patchscope sets itself, with the reason shown to the user.
_RESERVED_QEMU_OPTIONS: Mapping[str, str] = {
    "kernel": "patchscope sets -kernel itself; use the kernel: key",
    "initrd": "patchscope sets -initrd itself; use the initramfs: key",
    "append": "patchscope sets -append itself; use the cmdline: key (xen_cmdline: for Xen)",
    "m": "patchscope sets -m itself; use qemu.memory (dom0_memory for xen-pv dom0)",
    "smp": "patchscope sets -smp itself; use qemu.smp",
    "cpu": "patchscope sets -cpu itself; use qemu.cpu",
    "serial": "patchscope owns the serial console it reads; remove -serial",
    "chardev": "patchscope owns QEMU's character devices (console, monitor, gdb); remove -chardev",
    "monitor": "patchscope owns the QEMU monitor; remove -monitor",
    "mon": "patchscope owns the QEMU monitor; remove -mon",
    "qmp": "patchscope owns the QMP socket; remove -qmp",
    "qmp-pretty": "patchscope owns the QMP socket; remove -qmp-pretty",
    "nographic": "patchscope sets up the display and console itself; remove -nographic",
    "daemonize": "patchscope needs QEMU in the foreground; remove -daemonize",
    "readconfig": "patchscope cannot check options inside a QEMU config file; "
                  "put them in qemu.extra instead",
    "S": "patchscope starts the guest CPUs itself; remove -S",
    "gdb": "the gdbstub must never listen on TCP and patchscope attaches gdb itself; remove -gdb",
    "s": "-s opens a gdbstub on TCP port 1234, which is never allowed; "
         "patchscope attaches gdb itself; remove -s",
}


def _qemu_arg(ctx: yn.Ctx, node: yaml.Node, key: str, text: str) -> None:
    if text.startswith("-"):
        words = text.lstrip("-").split("=", 1)[0].split()
        option = words[0] if words else ""
        if option in _RESERVED_QEMU_OPTIONS:
            raise ctx.fail(node, f"{key}: {_RESERVED_QEMU_OPTIONS[option]}")


# Options whose value can make QEMU listen on TCP; a run must never open a TCP listener (the only sockets are
# patchscope's own, unix ones). Each: why, and what to write instead.
_CHAR_BACKENDS = ("parallel", "debugcon")     # -serial, -monitor and -chardev are patchscope's alone
_NETWORK_BACKENDS = ("tcp:", "telnet:", "websocket:", "udp:")


def tcp_listener(args: Sequence[str]) -> tuple[int, str] | None:
    """(index, reason) of the first QEMU argument in ``args`` that would open a network listener, or None.

    -vnc, -spice and -display vnc= serve on TCP (unless given a unix socket or none); -incoming tcp: waits for a
    migration; -netdev/-nic hostfwd= and socket listen= forward host ports; -parallel and -debugcon on tcp:,
    telnet: or websocket: listen or dial out."""
    for i, arg in enumerate(args):
        option = arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") else ""
        if not option:
            continue
        value = args[i + 1] if i + 1 < len(args) else ""
        if "=" in arg:
            value = arg.split("=", 1)[1]
        lowered = value.lower()
        if option == "vnc" and not (lowered == "none" or lowered.startswith("unix:")):
            return i, f"-vnc {value} serves VNC on TCP; no run may open a TCP listener (use -vnc unix:PATH or none)"
        if option == "spice" and not any(part in ("unix", "unix=on") for part in lowered.split(",")):
            return i, "-spice serves on TCP; no run may open a TCP listener (use -spice unix=on,addr=PATH)"
        if option == "display" and lowered.startswith("vnc"):
            return i, "-display vnc serves VNC on TCP; no run may open a TCP listener"
        if option == "incoming" and lowered.startswith(("tcp:", "rdma:", "socket:")):
            return i, f"-incoming {value} listens on the network; no run may open a TCP listener (use unix:PATH)"
        if option in ("netdev", "nic", "net") and any(
                part.startswith(("hostfwd=", "guestfwd=", "listen=", "server=on", "server=yes"))
                or part in ("server", "type=socket", "socket")
                for part in lowered.split(",")) and "path=" not in lowered and "unix" not in lowered:
            return i, f"-{option} {value} forwards or listens on host ports; no run may open a TCP listener"
        if option in _CHAR_BACKENDS and lowered.startswith(_NETWORK_BACKENDS):
            return i, f"-{option} {value} uses the network; no run may open a TCP listener (use a unix socket)"
    return None


def _qemu_extra(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
    """qemu.extra: QEMU arguments, none that patchscope owns and none that would listen on the network."""
    found = yn.items(ctx, node, key, "a list of QEMU arguments", True)
    for item_key, item, value in found:
        _qemu_arg(ctx, item, item_key, value)
    values = tuple(value for _, _, value in found)
    listener = tcp_listener(values)
    if listener is not None:
        index, reason = listener
        raise ctx.fail(found[index][1], f"{found[index][0]}: {reason}")
    return values


# --------------------------------------------------------------------------- modules

_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]+")
MODULE_NAME_MAX = 55          # MODULE_NAME_LEN (64 - sizeof(unsigned long)) less the NUL
_MODULE_ENTRY = yn.Section({
    "module": yn.text("a module name such as 'kvm' or the path of a .ko file"),
    "build": yn.text("a directory of module sources (a Kbuild file and its .c files)"),
    "load": yn.choice(_MODULE_LOADS),
})
_MODULE_EXAMPLE = "{module: kvm_amd, load: fails}"
_BUILD_EXAMPLE = "{module: psm_target_a1, build: modules/livepatch-order}"


def _module_names(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
    """A list of module names ([] for none), as the kernel spells them."""
    if yn.is_list(node) and not node.value:
        return ()
    names = cast(tuple[str, ...],
                 yn.words("a list of module names, e.g. [psm_lp_c1], or [] for none", split=False)(ctx, node, key))
    bad = [n for n in names if not _MODULE_NAME.fullmatch(n)]
    if bad:
        raise ctx.fail(node, f"{key}: {yn.quote(bad[0])} is not a module name")
    return tuple(module_name(n) for n in names)


def _trace(ctx: yn.Ctx, node: yaml.Node, key: str) -> bool | str:
    """inspect.trace: true (every text write of the boot), false, or modules (only the loading of modules)."""
    if isinstance(node, yaml.ScalarNode) and node.value == "modules":
        return "modules"
    if isinstance(node, yaml.ScalarNode) and node.tag == yn.TAG_BOOL:
        return yn.flag(ctx, node, key)
    raise ctx.fail(node, f"{key} must be true (every text write of the boot), false, or modules (the "
                         f"loading of modules only: relocations and patching, in order), not {yn.describe(node)}")


def _unwind_table(ctx: yn.Ctx, node: yaml.Node, key: str) -> str:
    """inspect.unwind.table: a table whose sites patching rewrites into more than one instruction."""
    value = yn.scalar_text(ctx, node, key, "a table name")
    if value not in UNWIND_TABLES:
        raise ctx.fail(node, f"{key} must be one of {', '.join(UNWIND_TABLES)} (the tables whose patched sites "
                             f"hold more than one instruction), not {yn.quote(value)}")
    return value


def _module_sources(ctx: yn.Ctx, node: yaml.Node, key: str, text: str, directory: str) -> ModuleSpec:
    """A directory given where a module was expected: which of its modules is not said."""
    raise ctx.fail(node, f"{key}: {directory} is a directory; name the module to build from it and load, "
                         f"as in {_BUILD_EXAMPLE}")


def _module_build(ctx: yn.Ctx, node: yaml.Node, key: str, name: str, text: str) -> ModuleSpec:
    """``{module: NAME, build: DIR}``: module NAME, built from the sources in DIR against the run's kernel
    (framework.build.kmod: Debian's headers for that kernel, cached)."""
    if not _MODULE_NAME.fullmatch(name) or strip_ko_suffix(name) is not None or len(name) > MODULE_NAME_MAX:
        raise ctx.fail(node, f"{key}.module: with build:, module names the module to load, as its Kbuild "
                             f"names it ({yn.quote(name)} is not a module name)")
    resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(text)))
    if not os.path.isdir(resolved):
        raise ctx.fail(node, f"{key}.build: {resolved} is not a directory of module sources")
    if not any(os.path.exists(os.path.join(resolved, f)) for f in ("Kbuild", "Makefile")):
        raise ctx.fail(node, f"{key}.build: {resolved} has no Kbuild or Makefile; kbuild cannot build it")
    return ModuleSpec(module_name(name), "source", Path(resolved), written=f"{name} (built from {text})",
                      line=yn.line_of(node))


def _module_entry(ctx: yn.Ctx, node: yaml.Node, key: str, text: str) -> ModuleSpec:
    """A module name of the kernel's package, or the path of a .ko file (relative to the config's directory)."""
    if _MODULE_NAME.fullmatch(text) and strip_ko_suffix(text) is None:
        if len(text) > MODULE_NAME_MAX:
            raise ctx.fail(node, f"{key}: module name {yn.quote(text)} is longer than the kernel's "
                                 f"{MODULE_NAME_MAX} characters")
        return ModuleSpec(module_name(text), "package", None, written=text, line=yn.line_of(node))
    if "/" not in text and strip_ko_suffix(text) is None:
        raise ctx.fail(node, f"{key}: {yn.quote(text)} is neither a module name (letters, digits, '_' and '-', "
                             f"such as 'kvm_intel') nor the path of a module file ({', '.join(KO_SUFFIXES)})")
    resolved, mode = _stat_path(ctx, node, key, text)
    if mode is None:
        raise ctx.fail(node, f"{key}: module file {resolved} not found")
    if stat.S_ISDIR(mode):
        return _module_sources(ctx, node, key, text, resolved)
    stem = strip_ko_suffix(os.path.basename(resolved))
    if not stat.S_ISREG(mode) or stem is None:
        raise ctx.fail(node, f"{key}: {resolved} is not a module file (a regular file named NAME.ko, "
                             f"or compressed: {', '.join(KO_SUFFIXES[1:])})")
    if not _MODULE_NAME.fullmatch(stem) or len(stem) > MODULE_NAME_MAX:
        raise ctx.fail(node, f"{key}: {os.path.basename(resolved)}: a module file is named after its module: "
                             f"1-{MODULE_NAME_MAX} letters, digits, '_' or '-', then .ko")
    return ModuleSpec(module_name(stem), "file", Path(resolved), written=text, line=yn.line_of(node))


def _modules(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[ModuleSpec, ...]:
    """``modules:``: names or .ko paths, or mappings {module: …, load: ok|fails}; each module once."""
    if yn.is_null(node):
        return ()
    entries = node.value if yn.is_list(node) else [node] if isinstance(node, yaml.ScalarNode) else None
    if entries is None:
        raise ctx.fail(node, f"{key} must be a list of module names or .ko paths, not {yn.describe(node)}")
    out: list[ModuleSpec] = []
    for index, item in enumerate(entries):
        item_key = f"{key}[{index}]" if yn.is_list(node) else key
        ctx.note(item_key, item)
        load = "ok"
        if yn.is_mapping(item):
            values = yn.read_section(ctx, item, _MODULE_ENTRY, item_key + ".")
            if "module" not in values:
                raise ctx.fail(item, f"{item_key} needs module: (a name or a .ko path), as in {_MODULE_EXAMPLE}")
            text, load = str(values["module"]), str(values.get("load", "ok"))
            where = next(value for name, value in item.value if name.value == "module")
            if "build" in values:
                built = _module_build(ctx, item, item_key, text, str(values["build"]))
                if any(other.name == built.name for other in out):
                    raise ctx.fail(item, f"{item_key}: module {built.name!r} is listed twice")
                out.append(dataclasses.replace(built, load="fails" if load == "fails" else "ok"))
                continue
        elif isinstance(item, yaml.ScalarNode) and not yn.is_null(item):
            where, text = item, yn.scalar_text(ctx, item, item_key, "a module name or a .ko path")
            if text == "":
                raise ctx.fail(item, f"{item_key} is empty")
        else:
            raise ctx.fail(item, f"{item_key} must be a module name, a .ko path or a mapping such as "
                                 f"{_MODULE_EXAMPLE}, not {yn.describe(item)}")
        spec = _module_entry(ctx, where, item_key, text)
        spec = ModuleSpec(spec.name, spec.kind, spec.path, "fails" if load == "fails" else "ok",
                          written=spec.written, line=yn.line_of(item))
        first = next((i for i, other in enumerate(out) if other.name == spec.name), None)
        if first is not None:
            again = f" (first as {key}[{first}], line {out[first].line})" if out[first].line else ""
            raise ctx.fail(item, f"{item_key}: module {spec.name!r} is listed twice{again}")
        out.append(spec)
    return tuple(out)


# --------------------------------------------------------------------------- the schema

_NAME_PATTERN = rf"(?![.]+$)[A-Za-z0-9._-]{{1,{MAX_NAME_LENGTH}}}"
_NAME_WHAT = f"1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' (not only dots)"

_EXPECT_KEYS: dict[str, yn.Parser | yn.Section] = {
    "stops": scenario_parse.stop_expects,
    "nmi": scenario_parse.nmi,
    "sites": _site_assertions,
    "oversized": _at_most,
    "unknown_changes": _at_most,
    "pv_indirect": _at_most,
    "relocation_overlaps": _module_names,
    "orc_disagreements": _at_most,
    "orc_known": yn.regexes,
    "unwind_disagreements": _at_most,
    "outcome": yn.choice(OUTCOMES),
    "crash": yn.optional_regex,
    "allow_crashes": yn.regexes,
    "console": yn.Section({
        "contains": yn.regexes,
        "excludes": yn.regexes,
    }),
}

SCHEMA = yn.Section({
    "name": yn.text(_NAME_WHAT, pattern=_NAME_PATTERN),
    "kernel": yn.text("a kernel reference such as 'debian-6.1'"),
    "mode": parse_modes,
    "hypervisor": yn.text("a hypervisor reference such as 'xen-4.17' or 'path:/boot/xen'"),
    "cmdline": yn.words("a list of kernel arguments", split=True, check=_one_line),
    "xen_cmdline": yn.words("a list of Xen arguments", split=True, check=_one_line),
    "dom0_memory": yn.mib(),
    "qemu": yn.Section({
        "cpu": yn.text("a QEMU CPU model such as 'max' (no spaces)", pattern=r"\S+", optional=True),
        "memory": yn.mib(optional=True),
        "smp": yn.count,
        "extra": _qemu_extra,
    }),
    "initramfs": _initramfs,
    "init_commands": yn.words("a list of shell commands, e.g. ['cat /proc/interrupts']",
                              split=False),
    "modules": _modules,
    "timeout": yn.seconds,
    "silence": yn.seconds,
    "inspect": yn.Section({
        "capture": yn.names("a capture point or a list of them", _capture_name),
        "tables": yn.names("a table name or a list of them", _table_name),
        "trace": _trace,
        "orc": yn.flag,
        "reader": yn.choice(CAPTURE_READERS),
        "unwind": yn.Section({
            "table": _unwind_table,
            "op": yn.text("a pv op such as 'irq.save_fl'", pattern=r"[A-Za-z_][A-Za-z0-9_.\[\]]*"),
            "sites": yn.count,
            "symbol": yn.regex,
        }),
    }),
    "scenario": scenario_parse.SCENARIO,
    "fork": yn.Section({
        "at": yn.text("a kernel function (or symbol+offset, or an address) where the snapshot is taken, "
                      "e.g. alternative_instructions", pattern=r"\S+"),
        "hit": yn.count,
    }),
    "sweep": parse_sweep,
    "requires": yn.Section({
        "kernel": _kernel_range,
        "symbols": yn.names("a kernel symbol or a list of them", _symbol_name),
        "tables": yn.names("a table name or a list of them", _table_name),
    }),
    "expect": yn.Section({**_EXPECT_KEYS, **{mode: yn.Section(_EXPECT_KEYS) for mode in MODES}}),
})


# --------------------------------------------------------------------------- building


def _unwind_spec(ctx: yn.Ctx, values: Mapping[str, object]) -> UnwindSpec | None:
    spec = cast(Mapping[str, object] | None, values.get("unwind"))
    if spec is None:
        return None
    table = cast(str, spec.get("table", "paravirt"))
    op = cast(str | None, spec.get("op"))
    if op is not None and table != "paravirt":
        raise ctx.fail(ctx.lines.get("inspect.unwind.op"), f"inspect.unwind.op names a pv op, but the table is "
                                                           f"{table}; remove op or use table: paravirt")
    return UnwindSpec(table=table, op=op, sites=cast(int, spec.get("sites", UnwindSpec.sites)),
                      symbol=cast(re.Pattern[str] | None, spec.get("symbol")))


def build_config(ctx: yn.Ctx, values: Mapping[str, object], name: str, path: Path | None) -> Config:
    """Dataclasses from values read against :data:`SCHEMA`, after the checks that involve several keys."""
    get = yn.get
    qemu = get(values, "qemu", cast(Mapping[str, object], {}))
    expect = get(values, "expect", cast(Mapping[str, object], {}))
    requires = get(values, "requires", cast(Mapping[str, object], {}))
    console = get(expect, "console", cast(Mapping[str, object], {}))
    lines = ctx.lines

    outcome = get(expect, "outcome", "boots")
    crash = get(expect, "crash", cast(re.Pattern[str] | None, None))
    allow_crashes = get(expect, "allow_crashes", cast(tuple[re.Pattern[str], ...], ()))
    initramfs = get(values, "initramfs", "default")
    init_commands = get(values, "init_commands", cast(tuple[str, ...], ()))
    modules = get(values, "modules", cast(tuple[ModuleSpec, ...], ()))
    timeout = get(values, "timeout", DEFAULT_TIMEOUT)
    silence = get(values, "silence", min(DEFAULT_SILENCE, timeout))

    if crash is not None and outcome != "panics":
        raise ctx.fail(lines.get("expect.crash"),
                       f"expect.crash only applies to outcome 'panics' (outcome is {outcome!r}); "
                       "remove it or set expect.outcome: panics")
    if allow_crashes and outcome == "hangs":
        raise ctx.fail(lines.get("expect.allow_crashes"),
                       "expect.allow_crashes cannot be used with outcome 'hangs' (a run that "
                       "crashes did not hang); remove it or change expect.outcome")
    if init_commands and initramfs == "none":
        raise ctx.fail(lines.get("init_commands"),
                       "init_commands need patchscope's /init, but initramfs is 'none'; "
                       "remove them or use initramfs: default")
    if modules and initramfs != "default":
        what = "'none'" if initramfs == "none" else f"your own file ({initramfs})"
        raise ctx.fail(lines.get("modules"),
                       f"modules are loaded by patchscope's /init, but initramfs is {what}; "
                       "remove modules or use initramfs: default")
    if outcome == "boots" and initramfs == "none":
        raise ctx.fail(lines.get("initramfs", lines.get("expect.outcome")),
                       "initramfs: none cannot go with outcome 'boots': without patchscope's /init "
                       "nothing prints the success marker; use initramfs: default or set "
                       "expect.outcome to panics or hangs")
    if silence > timeout:
        raise ctx.fail(lines.get("silence"),
                       f"silence ({silence:g}s) must not be longer than timeout ({timeout:g}s)")
    inspect_values = cast(Mapping[str, object] | None, values.get("inspect"))
    inspect = None
    if inspect_values is not None:
        inspect = Inspect(captures=get(inspect_values, "capture", Inspect.captures),
                          tables=get(inspect_values, "tables", Inspect.tables),
                          trace=inspect_values.get("trace") is True,
                          trace_modules=inspect_values.get("trace") == "modules",
                          orc=inspect_values.get("orc") is True, unwind=_unwind_spec(ctx, inspect_values),
                          reader=cast(CaptureReader, inspect_values.get("reader", "qmp")))
    sites = get(expect, "sites", cast(tuple[SiteAssertion, ...], ()))
    _check_sites(ctx, "expect", expect, sites, inspect)

    scenario = scenario_parse.build_scenario(ctx, values)
    fork = _fork(ctx, values, inspect, modules)
    stops = get(expect, "stops", cast(tuple[StopExpect, ...], ()))
    nmi = cast(str | tuple[str, ...] | None, expect.get("nmi"))
    _check_scenario_checks(ctx, "expect", stops, nmi, scenario)

    base = Expect(
        outcome=cast(Outcome, outcome),
        crash=crash,
        allow_crashes=allow_crashes,
        console=ConsoleExpect(
            contains=get(console, "contains", ()),
            excludes=get(console, "excludes", ()),
        ),
        sites=sites,
        oversized=cast(int | None, expect.get("oversized")),
        unknown_changes=cast(int | None, expect.get("unknown_changes")),
        pv_indirect=cast(int | None, expect.get("pv_indirect")),
        stops=stops,
        nmi=nmi,
        relocation_overlaps=cast(tuple[str, ...] | None, expect.get("relocation_overlaps")),
        orc_disagreements=cast(int | None, expect.get("orc_disagreements")),
        orc_known=get(expect, "orc_known", cast(tuple[re.Pattern[str], ...], ())),
        unwind_disagreements=cast(int | None, expect.get("unwind_disagreements")),
    )
    overlays: dict[Mode, ExpectOverlay] = {}
    for mode in MODES:
        section = cast(Mapping[str, object] | None, expect.get(mode))
        if section is not None:
            overlays[mode] = _overlay(ctx, mode, section, base, initramfs, inspect, scenario)

    return Config(
        name=get(values, "name", name),
        path=path,
        kernel=get(values, "kernel", DEFAULT_KERNEL),
        modes=get(values, "mode", MODES),
        hypervisor=get(values, "hypervisor", DEFAULT_HYPERVISOR),
        cmdline=get(values, "cmdline", ()),
        xen_cmdline=get(values, "xen_cmdline", ()),
        dom0_memory_mib=get(values, "dom0_memory", DEFAULT_DOM0_MEMORY_MIB),
        qemu=QemuOptions(
            cpu=get(qemu, "cpu", None),
            memory_mib=get(qemu, "memory", None),
            smp=get(qemu, "smp", 1),
            extra=get(qemu, "extra", ()),
        ),
        initramfs=initramfs,
        init_commands=init_commands,
        modules=modules,
        timeout=float(timeout),
        silence=float(silence),
        expect=base,
        expect_modes=overlays,
        inspect=inspect,
        scenario=scenario,
        requires=Requires(kernel=get(requires, "kernel", ()), symbols=get(requires, "symbols", ()),
                          tables=get(requires, "tables", ())),
        fork=fork,
        sweep=cast(Sweep | None, values.get("sweep")),
        lines=dict(lines),
    )


def _fork(ctx: yn.Ctx, values: Mapping[str, object], inspect: Inspect | None,
          modules: tuple[ModuleSpec, ...]) -> Fork | None:
    """``fork:``, checked against what a forked run can do; a sweep needs it."""
    section = cast(Mapping[str, object] | None, values.get("fork"))
    lines = ctx.lines
    if section is None:
        if "sweep" in values:
            raise ctx.fail(lines.get("sweep"), "sweep: runs each point from one snapshot, and needs fork: to say "
                                               "where it is taken, e.g. fork: {at: alternative_instructions}")
        return None
    if "at" not in section:
        raise ctx.fail(lines.get("fork"), "fork needs at: the function where the snapshot is taken, "
                                          "e.g. fork: {at: alternative_instructions}")
    at = cast(str, section["at"])
    try:
        parse_location(at)
    except ValueError as err:
        raise ctx.fail(lines.get("fork.at"), f"fork.at: {err}") from None
    if inspect is not None:
        raise ctx.fail(lines.get("inspect", lines.get("fork")),
                       "inspect: is not supported in a forked run (fork:): its points take no captures or trace; "
                       "remove inspect: or fork:")
    if modules:
        raise ctx.fail(lines.get("modules", lines.get("fork")),
                       "modules: are not supported in a forked run (fork:); remove modules: or fork:")
    return Fork(at, cast(int, section.get("hit", 1)), lines.get("fork"))


def _overlay(ctx: yn.Ctx, mode: Mode, values: Mapping[str, object], base: Expect, initramfs: str,
             inspect: Inspect | None, scenario: Scenario | None) -> ExpectOverlay:
    """``expect.<mode>``, checked as it will be judged: laid over the base expectation."""
    get, lines, prefix = yn.get, ctx.lines, f"expect.{mode}"
    console = get(values, "console", cast(Mapping[str, object], {}))
    outcome = cast(Outcome | None, values.get("outcome"))
    overlay = ExpectOverlay(
        outcome=outcome, crash=get(values, "crash", cast(re.Pattern[str] | None, None)),
        allow_crashes=get(values, "allow_crashes", ()),
        console=ConsoleExpect(contains=get(console, "contains", ()), excludes=get(console, "excludes", ())),
        sites=get(values, "sites", ()), oversized=cast(int | None, values.get("oversized")),
        unknown_changes=cast(int | None, values.get("unknown_changes")),
        pv_indirect=cast(int | None, values.get("pv_indirect")), stops=get(values, "stops", ()),
        nmi=cast(str | tuple[str, ...] | None, values.get("nmi")),
        relocation_overlaps=cast(tuple[str, ...] | None, values.get("relocation_overlaps")),
        orc_disagreements=cast(int | None, values.get("orc_disagreements")),
        orc_known=get(values, "orc_known", ()),
        unwind_disagreements=cast(int | None, values.get("unwind_disagreements")))
    merged = overlay.over(base)

    def line(key: str) -> int | None:
        return lines.get(f"{prefix}.{key}", lines.get(f"expect.{key}"))

    where = f"in {mode} mode ({prefix} over expect)"
    if merged.crash is not None and merged.outcome != "panics":
        raise ctx.fail(line("crash") if "crash" in values else line("outcome"),
                       f"expect.crash only applies to outcome 'panics' (outcome is {merged.outcome!r} {where}); "
                       f"set {prefix}.outcome: panics or remove the crash")
    if merged.allow_crashes and merged.outcome == "hangs":
        raise ctx.fail(line("allow_crashes") if "allow_crashes" in values else line("outcome"),
                       f"expect.allow_crashes cannot be used with outcome 'hangs' {where}; "
                       "remove it or change the outcome")
    if merged.outcome == "boots" and initramfs == "none":
        raise ctx.fail(line("outcome"), f"initramfs: none cannot go with outcome 'boots' {where}: without "
                                        "patchscope's /init nothing prints the success marker")
    _check_sites(ctx, prefix, values, overlay.sites, inspect)
    _check_scenario_checks(ctx, prefix, overlay.stops, overlay.nmi, scenario)
    return overlay


def _check_sites(ctx: yn.Ctx, prefix: str, values: Mapping[str, object], sites: tuple[SiteAssertion, ...],
                 inspect: Inspect | None) -> None:
    """Site checks (under ``prefix``: expect, or expect.<mode>) need an inspection that captures what they name."""
    lines = ctx.lines
    for key in ("sites", "oversized", "unknown_changes", "pv_indirect"):
        if values.get(key) not in (None, ()) and inspect is None:
            raise ctx.fail(lines.get(f"{prefix}.{key}"),
                           f"{prefix}.{key} needs an inspect: section saying what to capture, "
                           "e.g. inspect: {capture: after-patching}")
    for key, needs in (("orc_disagreements", "orc: true"), ("orc_known", "orc: true"),
                       ("unwind_disagreements", "unwind: {op: irq.save_fl}")):
        if values.get(key) not in (None, ()) and (inspect is None or not (inspect.orc if key.startswith("orc")
                                                                     else inspect.unwind)):
            raise ctx.fail(lines.get(f"{prefix}.{key}"), f"{prefix}.{key} needs inspect: {{{needs}}}")
    for index, assertion in enumerate(sites):
        assert inspect is not None
        if assertion.at is not None and assertion.at not in inspect.captures:
            raise ctx.fail(lines.get(f"{prefix}.sites[{index}].at"),
                           f"{prefix}.sites[{index}].at: {assertion.at!r} is not captured; "
                           f"inspect.capture has {', '.join(inspect.captures)}")
        if assertion.table is not None and assertion.table not in inspect.tables:
            raise ctx.fail(lines.get(f"{prefix}.sites[{index}].table"),
                           f"{prefix}.sites[{index}].table: {assertion.table!r} is not in inspect.tables")


def _check_scenario_checks(ctx: yn.Ctx, prefix: str, stops: tuple[StopExpect, ...],
                           nmi: str | tuple[str, ...] | None, scenario: Scenario | None) -> None:
    """Stop and NMI checks (under ``prefix``) need scenario rules that stop there and inject NMIs."""
    lines = ctx.lines
    if stops and scenario is None:
        raise ctx.fail(lines.get(f"{prefix}.stops"),
                       f"{prefix}.stops needs a scenario: section whose rules stop there, "
                       "e.g. scenario: {rules: [{on: int3_magic, do: [record]}]}")
    rule_ats = [rule.on.at for rule in scenario.rules] if scenario is not None else []
    for index, stop in enumerate(stops):
        if stop.at not in rule_ats:
            raise ctx.fail(lines.get(f"{prefix}.stops[{index}].at"),
                           f"{prefix}.stops[{index}].at: no scenario rule stops at {stop.at!r}"
                           f"{yn.suggest(stop.at, rule_ats)}; write a rule's on: exactly as it is written "
                           f"({', '.join(dict.fromkeys(rule_ats))})")
    if nmi is not None and (scenario is None or not scenario.injects_nmi()):
        raise ctx.fail(lines.get(f"{prefix}.nmi"),
                       f"{prefix}.nmi needs a scenario rule that injects an NMI (do: [inject-nmi]); "
                       f"add one or remove {prefix}.nmi")


def _default_name(path: Path | None) -> str:
    if path is None:
        return "adhoc"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)[:MAX_NAME_LENGTH]
    return name if name.strip(".") else "adhoc"


# --------------------------------------------------------------------------- parsing text


def parse_config(text: str, path: Path | None = None) -> Config:
    """Parse and validate config text; ``path`` names it in errors and anchors relative paths."""
    base = Path(os.path.abspath(path.parent)) if path is not None else Path.cwd()
    ctx = yn.Ctx(path, base, SCHEMA)
    sweep: Sweep | None = None
    if PLACEHOLDER.search(text) is not None or "sweep" in text:
        # The sweep is read first, from the text with each ${…} as 0, then the config is the first point's.
        probe = yn.parse_yaml(yn.Ctx(path, base, SCHEMA), PLACEHOLDER.sub("0", text), kind="config",
                              limit=MAX_CONFIG_BYTES, if_empty="write '{}' to take every default")
        sweep = probe_sweep(yn.Ctx(path, base, SCHEMA), text, probe)
        if sweep is not None:
            text = sweep.text(0)
    root = yn.parse_yaml(ctx, text, kind="config", limit=MAX_CONFIG_BYTES,
                         if_empty="write '{}' to take every default")
    if not yn.is_null(root) and not yn.is_mapping(root):
        raise ctx.fail(root, f"a config must be a mapping of keys (like 'timeout: 60'), not {yn.describe(root)}")
    values = yn.read_section(ctx, root, SCHEMA)
    config = build_config(ctx, values, _default_name(path), path)
    return dataclasses.replace(config, sweep=sweep) if sweep is not None else config


def sweep_point(config: Config, index: int) -> Config:
    """Point ``index`` (0-based) of ``config``'s sweep: its scenario and expectations, with the point's values
    written in; everything else is ``config``'s (command-line overrides included). Not a sweep itself."""
    sweep = config.sweep
    if sweep is None:
        return config
    text = sweep.text(index)
    base = Path(os.path.abspath(config.path.parent)) if config.path is not None else Path.cwd()
    ctx = yn.Ctx(config.path, base, SCHEMA)
    root = yn.parse_yaml(ctx, text, kind="config", limit=MAX_CONFIG_BYTES)
    point = build_config(ctx, yn.read_section(ctx, root, SCHEMA), config.name, config.path)
    return dataclasses.replace(config, scenario=point.scenario, expect=point.expect, expect_modes=point.expect_modes,
                               sweep=None)


def load_config(path: Path) -> Config:
    """Read and parse the config file at ``path``."""
    path = Path(path)
    return parse_config(yn.read_text(path, MAX_CONFIG_BYTES), path)
