"""Cells of a matrix and how they are split into shards: pure, deterministic.

A cell is one config on one kernel in one mode, named as pytest names it:
``boot-native[debian-6.1-xen-pv]``. Its artefacts live under
``cells/<kernel>/<config>/<mode>`` of the results directory.

Shards (``--shard K/N``) are planned longest first onto the shard with the
least work so far (LPT scheduling), from the durations of a baseline when one
is given, else from a per-mode estimate; every shard of a plan holds the same
cells whoever computes it, and together they hold every cell once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..domain import Mode
from ..errors import PatchscopeError
from .spec import MatrixSpec, safe

# Seconds a cell takes on this kind of machine when no baseline says (FINDINGS: native ~7 s, Xen ~12 s
# for a plain boot; inspection and scenarios add more).
ESTIMATE_S: Mapping[str, float] = {"native": 20.0, "xen-pv": 35.0}


@dataclass(frozen=True, order=True)
class Cell:
    config: str          # the config's name
    kernel: str          # the kernel reference as the matrix file writes it
    mode: Mode

    @property
    def id(self) -> str:
        return f"{self.config}[{self.kernel}-{self.mode}]"

    @property
    def where(self) -> str:
        """The cell's artefacts directory, relative to the results directory."""
        return str(PurePosixPath("cells", safe(self.kernel), self.config, self.mode))


@dataclass(frozen=True)
class Plan:
    spec: MatrixSpec
    cells: tuple[Cell, ...]              # every cell of the matrix, excludes left out, in order
    not_in_modes: Mapping[Cell, str]     # cells whose config does not run in that mode: why

    def order(self, shard: ShardSpec | None, durations: Mapping[str, float] | None) -> list[Cell]:
        """The cells to run (all, or one shard's), longest first; cells no mode runs weigh nothing."""
        free = self.not_in_modes.keys()
        cells = shard_cells(self.cells, shard, durations, free) if shard is not None else list(self.cells)
        return run_order(cells, durations, free)

    @property
    def digest(self) -> str:
        """Names the matrix: the same cells give the same digest, on any machine, in any shard."""
        return hashlib.sha256("\n".join(c.id for c in self.cells).encode()).hexdigest()[:16]


def expand(spec: MatrixSpec) -> Plan:
    cells: list[Cell] = []
    skip: dict[Cell, str] = {}
    for cfg in spec.configs:
        for kernel in spec.kernels:
            for mode in spec.modes:
                if any(ex.matches(cfg.name, kernel, mode) for ex in spec.exclude):
                    continue
                cell = Cell(cfg.name, kernel, mode)
                cells.append(cell)
                if mode not in cfg.modes:
                    skip[cell] = f"the config runs in {', '.join(cfg.modes)} only (its mode: key)"
    return Plan(spec, tuple(cells), skip)


@dataclass(frozen=True)
class ShardSpec:
    index: int     # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardSpec:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise PatchscopeError(f"--shard {text!r}: give K/N, the K-th of N shards, such as --shard 2/4")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise PatchscopeError(f"--shard {text}: K must be from 1 to N (N >= 1), as in --shard 1/{max(n, 1)}")
    return ShardSpec(k, n)


def estimate(cell: Cell, durations: Mapping[str, float] | None, free: Collection[Cell] = ()) -> float:
    """Seconds ``cell`` is expected to take: last run's, else the mode's estimate; 0 for ``free`` cells."""
    if cell in free:
        return 0.0
    if durations and cell.id in durations:
        return durations[cell.id]
    return ESTIMATE_S.get(cell.mode, 30.0)


def shard_cells(cells: Sequence[Cell], shard: ShardSpec, durations: Mapping[str, float] | None = None,
                free: Collection[Cell] = ()) -> list[Cell]:
    """The cells of one shard, in the order they should run (longest first).

    ``free`` cells (known not to run: a mode the config leaves out) weigh nothing;
    each goes to the shard with the least work, and the fewest cells, at its turn.
    """
    loads = [0.0] * shard.count
    counts = [0] * shard.count
    mine: list[Cell] = []
    for cell in sorted(cells, key=lambda c: (-estimate(c, durations, free), c.id)):
        target = min(range(shard.count), key=lambda i: (loads[i], counts[i], i))
        loads[target] += estimate(cell, durations, free)
        counts[target] += 1
        if target == shard.index - 1:
            mine.append(cell)
    return mine


def fits(running_mib: Sequence[int], need_mib: int, available_mib: int, reserve_mib: int) -> bool:
    """May a cell needing ``need_mib`` start beside cells using ``running_mib``? One cell always may."""
    return not running_mib or sum(running_mib) + need_mib <= available_mib - reserve_mib


def run_order(cells: Sequence[Cell], durations: Mapping[str, float] | None = None,
              free: Collection[Cell] = ()) -> list[Cell]:
    """Longest first, so the last cells to finish are short ones."""
    return sorted(cells, key=lambda c: (-estimate(c, durations, free), c.id))
