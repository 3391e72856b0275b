"""A matrix's results: every cell's state and run, the matrix's metadata, merge and diff. Pure.

``results.json`` in a results directory is ``MatrixResults.to_json()``::

    {"schema": 1, "kind": "patchscope-matrix", "matrix": {"name", "file", "digest", "cells": [ids…]},
     "shards": [1, 3] | null, "shard_count": 4 | null,
     "kernels": [{"name", "ref", "package", "version", "release", "sha256"}…],
     "meta": {"patchscope", "host", "qemu", "xen", "started", "duration_s", "jobs", "interrupted"},
     "cells": [{"id", "config", "kernel", "mode", "state", "reason", "duration_s",
                "attempts": [{"verdict", "duration_s", "artifacts", "summary"}…],
                "result": <the last attempt's result.json> | null}…]}

A cell's state is its last attempt's verdict, except ``flaky`` (it passed after
failing), ``not-applicable`` (the config's ``requires:`` or ``mode:`` rule it out;
the reason says which) and ``not-run`` (interrupted, or in a shard not merged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, cast

from ..domain import MODES
from ..errors import PatchscopeError
from ..report.result import RunResult
from .plan import Cell

SCHEMA = 1
KIND = "patchscope-matrix"
CellState = Literal["pass", "fail", "error", "flaky", "not-applicable", "not-run"]
STATES: tuple[CellState, ...] = ("pass", "fail", "error", "flaky", "not-applicable", "not-run")
FAILED: frozenset[str] = frozenset({"fail", "error"})


class ResultsError(PatchscopeError):
    """Results that cannot be read, merged or compared; the message says which and what to do."""


@dataclass(frozen=True)
class Attempt:
    verdict: str
    duration_s: float
    artifacts: str             # relative to the results directory
    summary: str = ""

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "duration_s": round(self.duration_s, 3), "artifacts": self.artifacts,
                "summary": self.summary}


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    state: CellState
    reason: str = ""                          # not-applicable / not-run: why
    attempts: tuple[Attempt, ...] = ()
    result: RunResult | None = None           # the last attempt's run

    @property
    def duration_s(self) -> float:
        return sum(a.duration_s for a in self.attempts)

    @property
    def artifacts(self) -> str | None:
        return self.attempts[-1].artifacts if self.attempts else None

    @property
    def title(self) -> str:
        """What the page and the grouping show: the crash title or the summary of the last attempt."""
        if self.result is not None and self.result.observation is not None:
            obs = self.result.observation
            return obs.title or obs.summary
        if self.result is not None:
            return self.result.summary
        return self.reason

    def to_json(self) -> dict[str, object]:
        return {"id": self.cell.id, "config": self.cell.config, "kernel": self.cell.kernel, "mode": self.cell.mode,
                "state": self.state, "reason": self.reason, "duration_s": round(self.duration_s, 3),
                "attempts": [a.to_json() for a in self.attempts],
                "result": self.result.to_json() if self.result is not None else None}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> CellResult:
        mode, state = str(data["mode"]), str(data["state"])
        if mode not in MODES or state not in STATES:
            raise ValueError(f"cell {data.get('id')!r}: unknown mode {mode!r} or state {state!r}")
        attempts = data.get("attempts") or []
        result = data.get("result")
        return CellResult(
            cell=Cell(str(data["config"]), str(data["kernel"]), mode), state=state,
            reason=str(data.get("reason") or ""),
            attempts=tuple(Attempt(str(a["verdict"]), float(str(a["duration_s"])), str(a["artifacts"]),
                                   str(a.get("summary") or "")) for a in cast(list[dict[str, object]], attempts)),
            result=RunResult.from_json(cast(Mapping[str, object], result)) if isinstance(result, dict) else None)


def cell_state(verdicts: Sequence[str]) -> CellState:
    """The state of a cell from its attempts' verdicts, in order."""
    if not verdicts:
        return "not-run"
    last = verdicts[-1]
    if last == "pass":
        return "flaky" if len(verdicts) > 1 else "pass"
    return "fail" if last == "fail" else "error"


@dataclass(frozen=True)
class KernelInfo:
    name: str                    # as the matrix file writes it (a cell's kernel)
    ref: str                     # what was fetched: debian:<package>=<version>, or the path
    package: str | None = None
    version: str | None = None
    release: str | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ref": self.ref, "package": self.package, "version": self.version,
                "release": self.release, "sha256": self.sha256}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> KernelInfo:
        def opt(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)
        return KernelInfo(str(data["name"]), str(data["ref"]), opt("package"), opt("version"), opt("release"),
                          opt("sha256"))


@dataclass(frozen=True)
class MatrixResults:
    name: str
    file: str
    digest: str
    all_cells: tuple[str, ...]                 # every cell id of the matrix, in order (whatever ran)
    cells: tuple[CellResult, ...]
    kernels: tuple[KernelInfo, ...] = ()
    shards: tuple[int, ...] | None = None      # which shards these are (None: the whole matrix)
    shard_count: int | None = None
    meta: Mapping[str, object] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(STATES, 0)
        for c in self.cells:
            out[c.state] += 1
        return out

    @property
    def failed(self) -> bool:
        return any(c.state in FAILED for c in self.cells)

    def by_id(self) -> dict[str, CellResult]:
        return {c.cell.id: c for c in self.cells}

    def durations(self) -> dict[str, float]:
        """Seconds each cell that ran took: what shards are balanced with."""
        return {c.cell.id: c.duration_s for c in self.cells if c.attempts}

    def to_json(self) -> dict[str, object]:
        return {"schema": SCHEMA, "kind": KIND,
                "matrix": {"name": self.name, "file": self.file, "digest": self.digest, "cells": list(self.all_cells)},
                "shards": list(self.shards) if self.shards is not None else None, "shard_count": self.shard_count,
                "kernels": [k.to_json() for k in self.kernels], "meta": dict(self.meta),
                "counts": self.counts(), "cells": [c.to_json() for c in self.cells]}

    @staticmethod
    def from_json(data: Mapping[str, object], source: str = "results.json") -> MatrixResults:
        if data.get("kind") != KIND:
            raise ResultsError(f"{source}: not a matrix's results.json (no \"kind\": \"{KIND}\"); give the "
                               "results.json that patchscope matrix or report merge wrote")
        if data.get("schema") != SCHEMA:
            raise ResultsError(f"{source}: results format {data.get('schema')} is not supported (this patchscope "
                               f"reads format {SCHEMA}); re-run the matrix with this version")
        try:
            matrix = cast(Mapping[str, object], data["matrix"])
            shards = data.get("shards")
            return MatrixResults(
                name=str(matrix["name"]), file=str(matrix["file"]), digest=str(matrix["digest"]),
                all_cells=tuple(str(c) for c in cast(list[object], matrix["cells"])),
                cells=tuple(CellResult.from_json(c) for c in cast(list[Mapping[str, object]], data["cells"])),
                kernels=tuple(KernelInfo.from_json(k) for k in cast(list[Mapping[str, object]], data.get("kernels") or [])),
                shards=tuple(int(str(s)) for s in cast(list[object], shards)) if isinstance(shards, list) else None,
                shard_count=int(str(data["shard_count"])) if data.get("shard_count") is not None else None,
                meta=cast(Mapping[str, object], data.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsError(f"{source}: cannot be read ({type(err).__name__}: {err}); it is damaged: "
                               "re-run the matrix") from None


# --------------------------------------------------------------------------- merge

def merge(parts: Sequence[tuple[str, MatrixResults]]) -> MatrixResults:
    """One results set from shards of one matrix (``(source, results)`` each); refuses what does not fit.

    Cells no part holds are listed as not-run, so a missing shard shows on the page.
    """
    if not parts:
        raise ResultsError("report merge: give at least one results directory")
    first_src, first = parts[0]
    seen: dict[str, str] = {}
    kernels: dict[str, KernelInfo] = {k.name: k for k in first.kernels}
    shards: list[int] = []
    for src, part in parts:
        if part.digest != first.digest or part.name != first.name:
            raise ResultsError(f"report merge: {src} is from matrix {part.name!r} ({part.digest}), {first_src} from "
                               f"{first.name!r} ({first.digest}): they are different matrices; merge the shards of "
                               "one run of one matrix file")
        if part.shard_count != first.shard_count:
            raise ResultsError(f"report merge: {src} is a shard of {part.shard_count}, {first_src} of "
                               f"{first.shard_count}; merge shards planned with the same --shard K/N")
        for k in part.kernels:
            known = kernels.setdefault(k.name, k)
            if (known.package, known.version) != (k.package, k.version):
                raise ResultsError(f"report merge: kernel {k.name!r} is {known.package}={known.version} in one part "
                                   f"and {k.package}={k.version} in {src}: the shards resolved it differently "
                                   "(different nights?); merge shards of one run")
        for shard in part.shards or ():
            if shard in shards:
                raise ResultsError(f"report merge: shard {shard}/{part.shard_count} is given twice ({src}); "
                                   "give each shard's directory once")
            shards.append(shard)
        for c in part.cells:
            if c.state == "not-run" and not c.attempts:
                continue          # a placeholder (a cell of a shard not merged) holds nothing
            if c.cell.id in seen:
                raise ResultsError(f"report merge: cell {c.cell.id} is in both {seen[c.cell.id]} and {src}; "
                                   "the parts overlap: merge distinct shards")
            seen[c.cell.id] = src
    cells: dict[str, CellResult] = {}
    for _src, part in parts:
        for c in part.cells:
            if c.cell.id not in cells or cells[c.cell.id].state == "not-run":
                cells[c.cell.id] = c
    order = {cid: i for i, cid in enumerate(first.all_cells)}
    complete = first.shard_count is not None and sorted(shards) == list(range(1, first.shard_count + 1))
    missing = [cid for cid in first.all_cells if cid not in cells]
    filled = [*cells.values(), *(_not_run(cid, "its shard was not merged") for cid in missing)]
    meta = dict(first.meta)
    meta["merged_from"] = [src for src, _ in parts]
    meta["duration_s"] = max(float(str(p.meta.get("duration_s") or 0)) for _, p in parts)
    meta["interrupted"] = any(bool(p.meta.get("interrupted")) for _, p in parts)
    return replace(first, cells=tuple(sorted(filled, key=lambda c: order.get(c.cell.id, len(order)))),
                   kernels=tuple(kernels.values()),
                   shards=None if complete or first.shard_count is None else tuple(sorted(shards)),
                   shard_count=None if complete else first.shard_count, meta=meta)


def _not_run(cell_id: str, reason: str) -> CellResult:
    m = cell_id.split("[", 1)          # config names have no '['; kernel paths may
    config, rest = m[0], m[1].rstrip("]")
    for mode in MODES:
        if rest.endswith("-" + mode):
            return CellResult(Cell(config, rest[: -len(mode) - 1], mode), "not-run", reason)
    raise ResultsError(f"cell id {cell_id!r} names no mode")


# --------------------------------------------------------------------------- diff

Change = Literal["new failure", "fixed", "still failing", "flaky", "new cell", "gone", "unchanged"]


@dataclass(frozen=True)
class CellChange:
    id: str
    change: Change
    before: str | None
    after: str | None
    title: str = ""


def diff(base: MatrixResults, new: MatrixResults) -> list[CellChange]:
    """How each cell moved from ``base`` (last night) to ``new``; cells that ran in neither are left out."""
    old, now = base.by_id(), new.by_id()
    out: list[CellChange] = []
    for cid in [*new.all_cells, *(c for c in base.all_cells if c not in set(new.all_cells))]:
        b, n = old.get(cid), now.get(cid)
        before = b.state if b is not None and b.state != "not-run" else None
        after = n.state if n is not None and n.state != "not-run" else None
        if after is None and before is None:
            continue
        title = n.title if n is not None else ""
        out.append(CellChange(cid, _classify(before, after), before, after, title))
    return out


def _classify(before: str | None, after: str | None) -> Change:
    if after is None:
        return "gone"
    if after == "flaky":
        return "flaky"
    if before is None:
        return "new cell"
    if after in FAILED:
        return "still failing" if before in FAILED else "new failure"
    if before in FAILED and after == "pass":
        return "fixed"
    return "unchanged"


def marks(changes: Iterable[CellChange]) -> dict[str, str]:
    """Cell id -> the mark the page shows, for the cells that changed or keep failing."""
    return {c.id: c.change for c in changes if c.change not in ("unchanged", "new cell")}
