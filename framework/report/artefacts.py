"""A run's analysis on disk: written at the end of a live run, loaded back by ``check``.

Files in the artefacts directory::

    sites.json                   the index: per capture, counts and every whole-text finding (over-sized
                                 patches and pv sites left indirect by table and index into the site
                                 file); the debugger's error; whether max_stops cut the scenario short
    sites-<capture>.jsonl.gz     every compared site, one ``SiteState.to_json()`` a line (``json_line``); the
                                 inspection writes each ahead, while the guest boots (``write_sites_file``)
    trace.json                   (traced runs) counts per window and stage, the self-check
    scenario.jsonl               (scenarios) every stop with its effects, then each NMI's fate
    orc.json                     (inspect.orc) per capture: boundaries checked per table and op, disagreements
    unwind.json                  (inspect.unwind) every stop inside a patched site: ORC's frame against the truth

``load_analysis(write_analysis(a)) == a``: what ``check`` judges is what the run judged.
"""

from __future__ import annotations

import gzip
import json
import weakref
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..analysis.findings import Analysis, ScenarioLog, TraceSummary
from ..analysis.orccheck import OrcReport
from ..analysis.sites import Comparison, SiteState
from ..analysis.unwind import UnwindCheck
from ..elf.vmlinux import Site
from ..errors import ArtefactError

SITES_INDEX = "sites.json"
TRACE = "trace.json"
ORC = "orc.json"          # inspect.orc: the ORC check of each capture (seed 004)
UNWIND = "unwind.json"    # inspect.unwind: every stop inside a patched site, unwound
SCENARIO = "scenario.jsonl"


def sites_file(capture: str) -> str:
    return f"sites-{capture}.jsonl.gz"


# Site files written ahead of the analysis (the inspection writes each while the guest boots on), by path,
# and the comparison each holds: write_analysis() does not write one again for the same comparison.
_ahead: weakref.WeakValueDictionary[Path, Comparison] = weakref.WeakValueDictionary()


def write_sites_file(directory: Path, capture: str, comparison: Comparison) -> None:
    """``sites-<capture>.jsonl.gz`` now, ahead of ``write_analysis`` (which then leaves it as it is)."""
    path = directory / sites_file(capture)
    _write_gzip(path, _site_lines(comparison))
    _ahead[path] = comparison


def write_analysis(directory: Path, analysis: Analysis) -> None:
    for name, comparison in analysis.comparisons.items():
        if _ahead.pop(path := directory / sites_file(name), None) is not comparison:
            _write_gzip(path, _site_lines(comparison))
    _write_index(directory, analysis)


def _site_lines(comparison: Comparison) -> bytes:
    """Every site a line, ``json.dumps(st.to_json())`` (made ahead by inspection.py while the guest booted)."""
    return "".join([st.json_line for states in comparison.sites.values() for st in states]).encode("ascii")


def _write_gzip(path: Path, data: bytes) -> None:
    # mtime 0: one zlib call (gzip.compress), and the same bytes for the same sites
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))


def _write_index(directory: Path, analysis: Analysis) -> None:
    index: dict[str, object] = {
        "captures": {name: _summary(c) for name, c in analysis.comparisons.items()}, "error": analysis.error}
    if analysis.scenario is not None:
        index["scenario"] = {"bound_reached": analysis.scenario.bound_reached}
    (directory / SITES_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    if analysis.trace is not None:
        (directory / TRACE).write_text(json.dumps(analysis.trace.to_json(), indent=1) + "\n")
    if analysis.orc:
        (directory / ORC).write_text(json.dumps([r.to_json() for r in analysis.orc.values()], indent=1) + "\n")
    if analysis.unwinds:
        (directory / UNWIND).write_text(json.dumps([u.to_json() for u in analysis.unwinds], indent=1) + "\n")
    if analysis.scenario is not None:
        with open(directory / SCENARIO, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in analysis.scenario.lines())


def _summary(comparison: Comparison) -> dict[str, object]:
    """A capture's index entry: site findings name their site (every one is in the site file) instead of repeating it."""
    data = comparison.to_json(with_sites=False)
    data["oversized"] = [{**_ref(o.state), "extra_bytes": o.extra} for o in comparison.oversized]
    data["pv_indirect"] = [_ref(st) for st in comparison.pv_indirect]
    return data


def _ref(st: SiteState) -> dict[str, object]:
    """How the index names a site of the site file: table and index (and module, for a module's site)."""
    module = {"module": st.site.module} if st.site.module is not None else {}
    return {**module, "table": st.site.table, "index": st.site.index}


def _expand(summary: Mapping[str, object], sites: Sequence[SiteState]) -> dict[str, object]:
    """The index entry with its site references replaced by the sites (entries already whole are kept)."""
    by_key: dict[tuple[object, object, object], SiteState] = {
        (st.site.module, st.site.table, st.site.index): st for st in sites}

    def whole(ref: object) -> object:
        if not isinstance(ref, dict) or "state" in ref:
            return ref
        st = by_key.get((ref.get("module"), ref.get("table"), ref.get("index")))
        if st is None:
            raise KeyError(f"no site {ref.get('table')}[{ref.get('index')}] in the site file")
        return {**st.to_json(), **({"extra_bytes": ref["extra_bytes"]} if "extra_bytes" in ref else {})}

    return {**summary, **{key: [whole(ref) for ref in value] for key in ("oversized", "pv_indirect")
                          if isinstance(value := summary.get(key), list)}}


def load_analysis(directory: Path) -> Analysis | None:
    """The analysis a run wrote, or None when no debugger looked at it (no sites.json)."""
    index_path = directory / SITES_INDEX
    if not index_path.exists():
        return None
    index = read_json_object(index_path)
    try:
        captures = index.get("captures") or {}
        if not isinstance(captures, dict):
            raise TypeError("'captures' is not an object")
        comparisons = {}
        heads: dict[str, tuple[Site, str]] = {}
        for name, summary in captures.items():
            if isinstance(summary, dict):
                sites = _sites(directory / sites_file(str(name)), heads)
                comparisons[str(name)] = Comparison.from_json(_expand(summary, sites), sites)
        trace = TraceSummary.from_json(read_json_object(directory / TRACE)) if (directory / TRACE).exists() else None
        scenario = None
        if (directory / SCENARIO).exists():
            meta = index.get("scenario")
            bound = bool(meta.get("bound_reached")) if isinstance(meta, dict) else False
            scenario = ScenarioLog.from_lines(_json_lines(directory / SCENARIO), bound)
        error = index.get("error")
        orc = {}
        if (directory / ORC).exists():
            for row in _json_list(directory / ORC):
                report = OrcReport.from_json(row)
                orc[report.where] = report
        unwinds = tuple(UnwindCheck.from_json(row) for row in _json_list(directory / UNWIND)) \
            if (directory / UNWIND).exists() else ()
        return Analysis(comparisons, trace, scenario, None if error is None else str(error), orc, unwinds)
    except (KeyError, ValueError, TypeError) as err:
        raise ArtefactError(f"{directory}: the saved analysis cannot be read ({type(err).__name__}: {err}); "
                         "re-run the config to record it again") from None


def read_json_object(path: Path) -> Mapping[str, object]:
    """A JSON file holding one object, or a one-line ArtefactError that says to re-run."""
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ArtefactError(f"{path}: not JSON ({err}); the file is damaged: re-run the config") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{path}: not a JSON object; the file is damaged: re-run the config")
    return data


def _json_list(path: Path) -> list[Mapping[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtefactError(f"{path}: unreadable ({err}); re-run the config to record it again") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ArtefactError(f"{path}: not a list of objects; re-run the config to record it again")
    return data


def _json_lines(path: Path) -> list[Mapping[str, object]]:
    rows: list[Mapping[str, object]] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ArtefactError(f"{path}:{n}: not JSON ({err}); the file is damaged: re-run the config") from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _sites(path: Path, heads: dict[str, tuple[Site, str]]) -> list[SiteState]:
    if not path.exists():
        raise ArtefactError(f"{path}: missing, but {SITES_INDEX} names its capture; re-run the config")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [_site_state(line, heads) for line in fh if line.strip()]
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise ArtefactError(f"{path}: damaged ({err}); re-run the config") from None


_STATE = ', "state": '
_STATE_KEYS = {"state", "live", "live_insns"}


def _site_state(line: str, heads: dict[str, tuple[Site, str]]) -> SiteState:
    """One line of a site file. A site's part of its line (its table entry and symbol, everything before
    "state") is the same in every capture's file: ``heads`` keeps each one read, and the line's own part is
    all that is parsed again. A line in another form is read whole."""
    head, _, tail = line.rpartition(_STATE)
    try:
        known = heads.get(head) if head else None
        if known is None and head:
            data = json.loads(head + "}")
            if isinstance(data, dict) and "symbol" in data and not _STATE_KEYS & data.keys():
                known = heads[head] = (Site.from_json(data), str(data["symbol"] or ""))
        rest = json.loads('{"state": ' + tail) if known is not None else None
    except (KeyError, TypeError, ValueError):      # not a line as SiteState.json_line spells it
        known = rest = None
    if known is None or not isinstance(rest, dict) or not rest.keys() <= _STATE_KEYS:
        return SiteState.from_json(json.loads(line))
    return SiteState.from_json({**rest, "symbol": known[1]}, known[0])


