"""Loaded modules against their ``.ko``: what to capture, the link, and one comparison per module. Pure.

A run that loads modules (config ``modules:``) captures, once /init printed
its success marker, the text of every loaded module it was asked about: the
module list is walked through the debugger (:mod:`framework.elf.kmodlist`),
each module's executable sections are read where ``sect_attrs`` says they
are, its init sections are reported freed. Then, on the host, each ``.ko``
is linked at those addresses (:func:`framework.elf.ko.link`: the bytes as the
loader wrote them before ``module_finalize()`` patched them), its tables are
read like vmlinux's, and every site is compared with the live text by
:func:`framework.analysis.sites.compare`, unchanged.

Module sites join the capture's comparison under the table key
``<module>:<table>`` (``kvm:paravirt``), each site carrying its module's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..elf import ko as ko_mod
from ..elf.kmodlist import LoadedModule
from .sites import Capture, Comparison, table_key

INIT_PREFIXES = (".init.",)


@dataclass(frozen=True)
class ModuleCapture:
    """One loaded module as the session saw it: where its sections are, and its text."""

    module: LoadedModule
    capture: Capture


def text_to_read(ko: ko_mod.Ko, loaded: LoadedModule) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """([start, size) of each placed executable section to read, [start, end) of those already freed (init))."""
    read: list[tuple[int, int]] = []
    freed: list[tuple[int, int]] = []
    for sec in ko.sections:
        address = loaded.sections.get(sec.name)
        if not sec.executable or not sec.alloc or not sec.size or address is None:
            continue
        if sec.name.startswith(INIT_PREFIXES):
            freed.append((address, address + sec.size))
        else:
            read.append((address, sec.size))
    return read, freed


def exported(ko: ko_mod.Ko, placement: Mapping[str, int], percpu: int | None) -> dict[str, int]:
    """The global symbols a linked module defines (what later modules' undefined symbols resolve to)."""
    out: dict[str, int] = {}
    for sym in ko.symbols:
        if sym.name and sym.shndx not in (ko_mod.SHN_UNDEF, ko_mod.SHN_LIVEPATCH) and sym.info >> 4 in (1, 2):
            value = ko_mod.symbol_value(ko, sym, placement, lambda _n: None, percpu)
            if value is not None:
                out[sym.name] = value
    return out


def link_all(kos: Sequence[tuple[str, ko_mod.Ko]], loaded: Mapping[str, LoadedModule],
             kernel_symbol: Callable[[str], int | None]) -> dict[str, ko_mod.Linked]:
    """Each loaded module linked where the kernel put it, in load order: undefined symbols from the modules
    linked before it, then from vmlinux."""
    others: dict[str, int] = {}
    out: dict[str, ko_mod.Linked] = {}
    for name, ko in kos:
        mod = loaded.get(name)
        if mod is None:
            continue

        def resolve(symbol: str) -> int | None:
            got = others.get(symbol)
            return got if got is not None else kernel_symbol(symbol)

        out[name] = ko_mod.link(ko, mod.sections, resolve, mod.percpu)
        others.update(exported(ko, mod.sections, mod.percpu))
    return out


def merge(base: Comparison | None, capture: str, modules: Sequence[tuple[str, Comparison]]) -> Comparison:
    """``base`` (vmlinux's comparison at ``capture``, if one was made) with every module's sites and findings
    added: its tables under ``<module>:<table>``, its text changes named ``symbol [module]`` as the kernel
    names module addresses."""
    sites = dict(base.sites) if base is not None else {}
    changes = list(base.unknown_changes) if base is not None else []
    oversized = list(base.oversized) if base is not None else []
    indirect = list(base.pv_indirect) if base is not None else []
    notes = list(base.notes) if base is not None else []
    for module, c in modules:
        for table, states in c.sites.items():
            sites[table_key(table, module)] = states
        changes += [replace(t, symbol=f"{t.symbol} [{module}]") for t in c.unknown_changes]
        oversized += c.oversized
        indirect += c.pv_indirect
        notes += [n for n in c.notes if n not in notes]
    if base is not None:
        return replace(base, sites=sites, unknown_changes=tuple(changes), oversized=tuple(oversized),
                       pv_indirect=tuple(indirect), notes=tuple(notes))
    return Comparison(capture, sites, tuple(changes), tuple(oversized), tuple(indirect), tuple(notes))
