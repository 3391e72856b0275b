"""``patchscope validate`` and ``run --dry-run``: everything a run checks short of booting. An edge.

For each config: the schema (its file and line on any error); its kernel and, for
xen-pv, its hypervisor, resolved and prepared (fetched if needed); ``requires:``
against the kernel; its modules found in the kernel's package; and, when it
inspects or has a scenario, every capture symbol, scenario location and pv op,
and the tables and ORC data it reads, checked against the kernel's own tables
(the same checks the run's inspection makes before QEMU starts). A nightly can
check its configs in seconds, without a boot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .checking import check_mode
from .config import Config, Inspect
from .domain import Note
from .errors import InputError
from .kernel.modules import resolve_modules
from .observe.inspection import Inspection
from .pipeline import applicability, resolve_references


def validate(config: Config, note: Note) -> str:
    """A one-line account of what was checked; InputError (a ConfigError at its line) on the first problem."""
    for mode in config.modes:
        check_mode(mode)
    kernel = resolve_references(config, note)
    why = applicability(config, note)
    if why is not None:
        return f"N/A   {config.name}: not applicable to {config.kernel}: {why}"
    checked = [f"kernel {config.kernel} ({kernel.package or kernel.bzimage} {kernel.version or ''})".rstrip()]
    if "xen-pv" in config.modes:
        checked.append(f"hypervisor {config.hypervisor}")
    modules = resolve_modules(config, kernel, note)
    if modules:
        checked.append(f"{len(modules)} modules")
    if config.inspect is not None or config.scenario is not None:
        inspect = config.inspect or Inspect(captures=())
        Inspection(kernel, inspect, Path("/nonexistent"), note, timeout=config.timeout,
                   where=(config.path, config.lines.get("inspect.capture")), trace=inspect.trace,
                   scenario=config.scenario, trace_modules=inspect.trace_modules,
                   modules=[(m.name, m.path) for m in modules])
        parts = [f"captures {', '.join(inspect.captures)}" if inspect.captures else ""]
        if config.scenario is not None:
            parts.append(f"{len(config.scenario.rules)} scenario rules")
        if inspect.orc or inspect.unwind is not None:
            parts.append("ORC data")
        checked.append("against its tables: " + ", ".join(p for p in parts if p))
    return f"OK    {config.name} [{', '.join(config.modes)}]: " + "; ".join(checked)


def validate_all(configs: Sequence[tuple[Path, Config | InputError]], note: Note) -> int:
    """Validate each (path, config or the error loading it); a line each; 0 when all hold, else 2."""
    failed = 0
    for path, loaded in configs:
        try:
            if isinstance(loaded, InputError):
                raise loaded
            print(validate(loaded, note), flush=True)
        except InputError as err:
            failed += 1
            print(f"ERROR {path}: {err}" if not str(err).startswith(str(path)) else f"ERROR {err}", flush=True)
    return 2 if failed else 0
