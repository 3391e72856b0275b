"""The matrix's morning page: one self-contained static ``index.html`` from a results set. Pure.

``render(results, marks)`` is the page's text; ``write_page(dir, results, marks)``
writes it to ``<dir>/index.html`` atomically. The page needs nothing else: its
style is inline, it runs no script (a Content-Security-Policy forbids any, and
any fetch), and every link is relative to the results directory, so the
directory can be moved, archived or uploaded as it is.

What the page shows, top to bottom:

- the matrix (name, start, duration, versions, host), its kernels
  (package=version) and the number of cells in each state, under an
  "interrupted" or "partial: shards K,L of N" banner when the results say so;
- with ``marks`` (``results.marks(results.diff(base, new))``), what changed
  since the baseline, new failures first;
- the grid: a row per config, a column per (kernel, mode), in the order of
  ``results.all_cells``; each cell a ``<td class="cell state-<state>"
  data-cell="<id>" data-state="<state>" [data-mark="<mark>"] id="cell-<slug>">``;
- failing, erroring and flaky cells grouped by crash title, largest group first;
- the reasons of each of those cells (``id="reasons-<slug>"``), attempt by attempt.

Everything that comes from a config, a kernel or a console is escaped: a crash
title is text the guest printed.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..domain import MODES
from .plan import Cell
from .results import STATES, CellResult, CellState, KernelInfo, MatrixResults

PAGE = "index.html"
# The states whose cells are listed by crash title and get a reasons entry.
TROUBLED: tuple[CellState, ...] = ("fail", "error", "flaky")
# The order of the marks in the summary of changes: what needs a look first.
MARK_ORDER = ("new failure", "still failing", "flaky", "fixed", "gone")
OUTCOME_WORDS = {"boots": "booted", "panics": "panicked", "hangs": "hung", "unknown": "no outcome"}
STATE_WORDS = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "flaky": "flaky", "not-applicable": "n/a",
               "not-run": "not run"}
TITLE_MAX = 160       # a crash title is shown whole up to this
SUMMARY_MAX = 90      # a summary (no crash) is shortened to this in the grid
META_KEYS = (("started", "started"), ("duration_s", "duration"), ("patchscope", "patchscope"), ("host", "host"),
             ("qemu", "QEMU"), ("xen", "Xen"), ("jobs", "jobs"), ("merged_from", "merged from"))

# No script, no fetch of anything: the page is its own whole.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSAFE_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- small helpers

def slug(cell_id: str) -> str:
    """A cell id as an HTML id and URL fragment: ``boot-native[debian-6.1-xen-pv]`` -> ``boot-native_debian-6.1-xen-pv``

    The grid cell is ``#cell-<slug>``, its reasons ``#reasons-<slug>`` (should two ids of one page
    give the same slug, the later gets ``-2``, ``-3``...).
    """
    return _UNSAFE_SLUG.sub("_", cell_id.replace("]", "")).strip("_") or "cell"


def _e(text: object) -> str:
    """Text as HTML (also fit for a quoted attribute); control characters become U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", str(text)), quote=True)


def _href(path: str) -> str:
    """A relative link to a path under the results directory, percent-encoded (never a scheme or a host)."""
    return _e(quote(path.lstrip("/").replace("\\", "/"), safe="/-._~"))


escape, href = _e, _href      # for the other pages in this style (the bisect's)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def duration(seconds: float) -> str:
    """``6.1 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _meta_text(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_meta_text(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return ", ".join(_meta_text(v) for v in value)
    return str(value)


def _mark_class(mark: str) -> str:
    return "mark-" + (_UNSAFE_SLUG.sub("-", mark).strip("-") or "other")


def _parse_id(cell_id: str) -> Cell | None:
    """The cell an id names (config names hold no ``[``), or None for an id that is not a cell's."""
    config, bracket, rest = cell_id.partition("[")
    if not bracket or not rest.endswith("]"):
        return None
    rest = rest[:-1]
    for mode in MODES:
        if rest.endswith("-" + mode) and len(rest) > len(mode) + 1:
            return Cell(config, rest[: -len(mode) - 1], mode)
    return None


# --------------------------------------------------------------------------- what the page shows of a cell

@dataclass(frozen=True)
class _Entry:
    """One cell as the page shows it: a result, or a not-run placeholder for a cell the results lack."""

    id: str
    anchor: str                  # its slug, unique on the page
    config: str
    column: tuple[str, str]      # (kernel, mode)
    state: CellState
    reason: str
    result: CellResult | None
    mark: str | None

    @property
    def artifacts(self) -> str | None:
        return self.result.artifacts if self.result is not None else None

    @property
    def troubled(self) -> bool:
        return self.state in TROUBLED

    @property
    def crash(self) -> str | None:
        run = self.result.result if self.result is not None else None
        if run is not None and run.observation is not None:
            return run.observation.title
        return None

    @property
    def summary(self) -> str:
        """The last attempt's one line: its summary, else the run's, else why it did not run."""
        if self.result is not None and self.result.attempts and self.result.attempts[-1].summary:
            return self.result.attempts[-1].summary
        if self.result is not None and self.result.result is not None and self.result.result.summary:
            return self.result.result.summary
        return self.reason

    @property
    def title(self) -> str:
        """What the cell is grouped by: the crash title, else the summary (as ``CellResult.title``)."""
        if self.result is not None and self.result.result is not None:
            return self.result.title
        return self.summary

    @property
    def outcome(self) -> str | None:
        run = self.result.result if self.result is not None else None
        if run is None or run.outcome is None:
            return None
        return OUTCOME_WORDS.get(run.outcome, run.outcome)


def _entries(results: MatrixResults, marks: Mapping[str, str]) -> list[_Entry]:
    by_id = results.by_id()
    listed = set(results.all_cells)
    ids = [*results.all_cells, *(c.cell.id for c in results.cells if c.cell.id not in listed)]
    if results.shards is not None:
        missing = (f"not in these results: they hold shards {','.join(map(str, results.shards))}"
                   + (f" of {results.shard_count}" if results.shard_count else "") + " only")
    elif results.meta.get("interrupted"):
        missing = "not in these results: the run was interrupted before it ran"
    else:
        missing = "not in these results"
    used: dict[str, int] = {}
    out: list[_Entry] = []
    for cid in dict.fromkeys(ids):
        found = by_id.get(cid)
        cell = found.cell if found is not None else _parse_id(cid)
        base = slug(cid)
        used[base] = used.get(base, 0) + 1
        anchor = base if used[base] == 1 else f"{base}-{used[base]}"
        config, column = (cell.config, (cell.kernel, str(cell.mode))) if cell is not None else (cid, ("?", "?"))
        if found is not None:
            out.append(_Entry(cid, anchor, config, column, found.state, found.reason, found, marks.get(cid)))
        else:
            out.append(_Entry(cid, anchor, config, column, "not-run", missing, None, marks.get(cid)))
    return out


# --------------------------------------------------------------------------- the page

CSS = """
:root { color-scheme: light; }
body { font: 13px/1.4 sans-serif; margin: 1em 1.5em; color: #111; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .5em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: .8em 0 .3em; }
a { color: #0645ad; }
code, .mono { font-family: monospace; }
.banner { padding: .5em .8em; margin: .5em 0; font-weight: bold; border-radius: 3px; }
.banner.interrupted { background: #ffd7a8; border: 2px solid #c25400; }
.banner.partial { background: #fff1a8; border: 2px solid #a08000; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: .5em 0; }
dl.meta dt { color: #555; }
dl.meta dd { margin: 0; }
table { border-collapse: separate; border-spacing: 3px; }
table.kernels td, table.kernels th { text-align: left; padding: .1em .6em .1em 0; }
.counts span { display: inline-block; padding: .15em .6em; margin: 0 .3em .3em 0; border-radius: 3px; }
table.grid th { background: #f0f0f0; padding: .3em .5em; text-align: left; vertical-align: bottom; }
table.grid th.config { vertical-align: top; white-space: nowrap; }
table.grid th small { font-weight: normal; color: #444; display: block; }
td.cell { vertical-align: top; padding: .35em .5em; min-width: 13em; max-width: 26em; border: 2px solid transparent;
          border-radius: 3px; }
td.absent { background: repeating-linear-gradient(135deg, #fafafa 0 4px, #f0f0f0 4px 8px); }
.state-pass { background: #c8eec8; border-color: #6cbf6c !important; }
.state-fail { background: #f5a3a3; border-color: #c00 !important; }
.state-error { background: #f0a050; border-color: #8b0000 !important; }
.state-flaky { background: repeating-linear-gradient(135deg, #ffdf80 0 8px, #fff1c2 8px 16px);
               border-color: #b38600 !important; }
.state-not-applicable { background: #e2e2e2; color: #555; border-color: #bbb !important; }
.state-not-run { background: #fff; color: #555; border: 2px dashed #999 !important; }
td.cell .head { display: flex; gap: .6em; flex-wrap: wrap; align-items: baseline; }
td.cell .verdict { font-weight: bold; }
td.cell .duration, td.cell .attempts { color: #333; font-size: .92em; }
td.cell .title { margin: .2em 0; word-break: break-word; }
td.cell .title.crash { font-family: monospace; font-size: .95em; }
td.cell .reason { margin: .2em 0; font-style: italic; }
td.cell .links a { margin-right: .6em; font-size: .92em; }
.badge { display: inline-block; font-size: .8em; font-weight: bold; text-transform: uppercase; padding: 0 .4em;
         border-radius: 3px; background: #fff; border: 1px solid #666; }
.badge.mark-new-failure { background: #b00; color: #fff; border-color: #b00; }
.badge.mark-still-failing { background: #fff; color: #900; border-color: #900; }
.badge.mark-flaky { background: #fff8d0; color: #805f00; border-color: #b38600; }
.badge.mark-fixed { background: #fff; color: #060; border-color: #060; }
.badge.mark-gone { background: #fff; color: #555; border-style: dashed; }
a.cell-link { padding: 0 .3em; border-radius: 3px; color: #111; }
section#changes ul, section#failures ul { margin: .2em 0 .6em; }
li.group { margin-bottom: .6em; }
li.group .group-title { font-family: monospace; }
li.group .size { font-weight: bold; margin-right: .4em; }
div.reasons { border-left: 4px solid #ccc; padding: .2em .8em; margin: .6em 0; }
div.reasons.state-fail, div.reasons.state-error, div.reasons.state-flaky { background: none; }
div.reasons.state-fail { border-left-color: #c00; }
div.reasons.state-error { border-left-color: #8b0000; }
div.reasons.state-flaky { border-left-color: #b38600; }
div.reasons .summary { font-family: monospace; }
:target { outline: 3px solid #0645ad; }
footer { margin-top: 2em; color: #666; font-size: .9em; }
"""


def render(results: MatrixResults, marks: Mapping[str, str] | None = None) -> str:
    """The page of ``results``; ``marks`` (cell id -> "new failure", "fixed", ...) badge the cells that changed."""
    marks = dict(marks or {})
    entries = _entries(results, marks)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="generator" content="patchscope">',
        f"<title>{_e(results.name)} — patchscope matrix</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *_header(results, entries),
        *_changes(entries, marks),
        *_grid(results, entries),
        *_failures(entries),
        *_reasons(entries),
        '<footer>Written by patchscope; every link is relative to this page\'s directory.</footer>',
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def write_page(directory: Path, results: MatrixResults, marks: Mapping[str, str] | None = None) -> Path:
    """``<directory>/index.html``, written atomically (a reader sees the old page or the new one); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PAGE
    tmp = directory / f".{PAGE}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(render(results, marks).encode("utf-8", "replace"))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _header(results: MatrixResults, entries: Sequence[_Entry]) -> Iterator[str]:
    meta = results.meta
    yield "<header>"
    yield f'<h1>Matrix <span class="matrix-name">{_e(results.name)}</span></h1>'
    interrupted = meta.get("interrupted")
    if interrupted:
        why = f" ({_e(interrupted)})" if isinstance(interrupted, str) else ""
        yield (f'<div class="banner interrupted">interrupted{why}: the run was stopped before every cell ran; '
               "the cells it did not reach are not run</div>")
    if results.shards is not None:
        of = f" of {results.shard_count}" if results.shard_count else ""
        yield (f'<div class="banner partial">partial: shards {",".join(map(str, results.shards))}{of} — '
               "the cells of the other shards are not run here</div>")
    yield '<dl class="meta">'
    yield (f'<dt>file</dt><dd class="meta-file"><code>{_e(results.file)}</code> '
           f"(digest <code>{_e(results.digest)}</code>)</dd>")
    known = {key for key, _ in META_KEYS} | {"interrupted"}
    rows = [(label, meta.get(key), key) for key, label in META_KEYS]
    rows += [(key, value, key) for key, value in meta.items() if key not in known]
    for label, value, key in rows:
        if value is None or value == "" or value == []:
            continue
        if key == "duration_s":
            try:
                text = duration(float(str(value)))
            except ValueError:
                text = str(value)
        else:
            text = _meta_text(value)
        yield f'<dt>{_e(label)}</dt><dd class="meta-{_e(key)}">{_e(text)}</dd>'
    yield "</dl>"
    if results.kernels:
        yield '<table class="kernels"><tr><th>kernel</th><th>package=version</th><th>release</th><th>ref</th></tr>'
        for k in results.kernels:
            yield (f'<tr><td>{_e(k.name)}</td><td class="package"><code>{_e(_package(k))}</code></td>'
                   f"<td>{_e(k.release or '')}</td><td><code>{_e(k.ref)}</code></td></tr>")
        yield "</table>"
    counts = dict.fromkeys(STATES, 0)
    for entry in entries:
        counts[entry.state] += 1
    chips = " ".join(f'<span class="count state-{s}" data-state="{s}">{_e(s)} <b>{n}</b></span>'
                     for s, n in counts.items() if n or s in ("pass", "fail", "error"))
    yield f'<p class="counts">{len(entries)} cells: {chips}</p>'
    yield "</header>"


def _package(k: KernelInfo) -> str:
    if k.package and k.version:
        return f"{k.package}={k.version}"
    return k.package or k.version or "—"


def _cell_link(entry: _Entry) -> str:
    return f'<a href="#cell-{_e(entry.anchor)}" class="cell-link state-{entry.state}">{_e(entry.id)}</a>'


def _changes(entries: Sequence[_Entry], marks: Mapping[str, str]) -> Iterator[str]:
    if not marks:
        return
    where = {e.id: e for e in entries}
    order = {m: i for i, m in enumerate(MARK_ORDER)}
    kinds = sorted(dict.fromkeys(marks.values()), key=lambda m: (order.get(m, len(order)), m))
    yield '<section id="changes"><h2>Since the baseline</h2>'
    for kind in kinds:
        ids = [cid for cid in [*where, *marks] if marks.get(cid) == kind]
        ids = list(dict.fromkeys(ids))
        yield (f'<h3 class="change" data-mark="{_e(kind)}"><span class="badge {_mark_class(kind)}">{_e(kind)}</span> '
               f"{len(ids)}</h3><ul>")
        for cid in ids:
            entry = where.get(cid)
            if entry is None:
                yield f"<li>{_e(cid)} (no longer in the matrix)</li>"
            else:
                yield f"<li>{_cell_link(entry)} — {_e(_short(entry.title, TITLE_MAX))}</li>"
        yield "</ul>"
    yield "</section>"


def _columns(entries: Iterable[_Entry]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(e.column for e in entries))


def _grid(results: MatrixResults, entries: Sequence[_Entry]) -> Iterator[str]:
    columns = _columns(entries)
    configs = list(dict.fromkeys(e.config for e in entries))
    at = {(e.config, e.column): e for e in entries}
    kernels = {k.name: k for k in results.kernels}
    yield '<section id="grid"><h2>Cells</h2>'
    yield '<table class="grid"><thead><tr><th rowspan="2" class="corner">config</th>'
    i = 0
    while i < len(columns):
        kernel = columns[i][0]
        span = 1
        while i + span < len(columns) and columns[i + span][0] == kernel:
            span += 1
        info = kernels.get(kernel)
        small = f"<small>{_e(_package(info))}</small>" if info is not None else ""
        yield f'<th colspan="{span}" class="kernel">{_e(kernel)}{small}</th>'
        i += span
    yield "</tr><tr>"
    for _kernel, mode in columns:
        yield f'<th class="mode">{_e(mode)}</th>'
    yield "</tr></thead><tbody>"
    for config in configs:
        yield f'<tr><th scope="row" class="config">{_e(config)}</th>'
        for column in columns:
            entry = at.get((config, column))
            yield _td(entry) if entry is not None else '<td class="absent"></td>'
        yield "</tr>"
    yield "</tbody></table></section>"


def _td(entry: _Entry) -> str:
    mark = f' data-mark="{_e(entry.mark)}"' if entry.mark else ""
    out = [(f'<td class="cell state-{entry.state}" id="cell-{_e(entry.anchor)}" data-cell="{_e(entry.id)}" '
            f'data-state="{entry.state}"{mark}>'),
           '<div class="head">', f'<span class="verdict">{_e(STATE_WORDS[entry.state])}</span>']
    if entry.outcome:
        out.append(f'<span class="outcome">{_e(entry.outcome)}</span>')
    if entry.result is not None and entry.result.attempts:
        out.append(f'<span class="duration">{_e(duration(entry.result.duration_s))}</span>')
        if len(entry.result.attempts) > 1:
            out.append(f'<span class="attempts">{len(entry.result.attempts)} attempts</span>')
    out.append("</div>")
    if entry.mark:
        out.append(f'<div><span class="badge {_mark_class(entry.mark)}">{_e(entry.mark)}</span></div>')
    if entry.state in ("not-applicable", "not-run") and entry.reason:
        out.append(f'<div class="reason">{_e(entry.reason)}</div>')
    elif entry.crash:
        out.append(f'<div class="title crash" title="{_e(entry.crash)}">{_e(_short(entry.crash, TITLE_MAX))}</div>')
    elif entry.summary:
        out.append(f'<div class="title" title="{_e(entry.summary)}">{_e(_short(entry.summary, SUMMARY_MAX))}</div>')
    links = []
    if entry.artifacts is not None:
        base = entry.artifacts.rstrip("/")
        links.append(f'<a class="console" href="{_href(base + "/console.log")}">console.log</a>')
        links.append(f'<a class="result" href="{_href(base + "/result.json")}">result.json</a>')
    if entry.troubled:
        links.append(f'<a class="reasons-link" href="#reasons-{_e(entry.anchor)}">reasons</a>')
    if links:
        out.append(f'<div class="links">{"".join(links)}</div>')
    out.append("</td>")
    return "".join(out)


def _failures(entries: Sequence[_Entry]) -> Iterator[str]:
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        if entry.troubled:
            groups.setdefault(entry.title or "(no title)", []).append(entry)
    ranked = sorted(enumerate(groups.items()), key=lambda item: (-len(item[1][1]), item[0]))
    yield '<section id="failures"><h2>Failures by crash title</h2>'
    if not ranked:
        yield '<p class="none">No cell failed, erred or was flaky.</p></section>'
        return
    yield '<ol class="groups">'
    for _i, (title, members) in ranked:
        yield (f'<li class="group" data-size="{len(members)}"><span class="size">{len(members)}×</span>'
               f'<span class="group-title">{_e(title)}</span><ul>')
        for entry in members:
            yield f"<li>{_cell_link(entry)} <span class=\"state\">{_e(entry.state)}</span></li>"
        yield "</ul></li>"
    yield "</ol></section>"


def _reasons(entries: Sequence[_Entry]) -> Iterator[str]:
    troubled = [e for e in entries if e.troubled]
    if not troubled:
        return
    yield '<section id="reasons"><h2>Reasons</h2>'
    for entry in troubled:
        run = entry.result.result if entry.result is not None else None
        reasons = list(run.reasons) if run is not None else []
        if run is not None and run.error and run.error not in reasons:
            reasons.append(run.error)
        yield (f'<div class="reasons state-{entry.state}" id="reasons-{_e(entry.anchor)}" data-cell="{_e(entry.id)}">'
               f"<h3>{_cell_link(entry)} — {_e(entry.state)}</h3>")
        if reasons:
            yield "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>"
        elif entry.state == "flaky":
            yield "<p>It passed at its last attempt, after failing before; see the attempts.</p>"
        yield f'<p>Last attempt: <span class="summary">{_e(entry.summary)}</span></p>'
        attempts = entry.result.attempts if entry.result is not None else ()
        if attempts:
            yield '<ol class="attempts">'
            for a in attempts:
                log = _href(a.artifacts.rstrip("/") + "/console.log")
                yield (f'<li data-verdict="{_e(a.verdict)}"><b>{_e(a.verdict)}</b> in {_e(duration(a.duration_s))}'
                       f'{": " + _e(a.summary) if a.summary else ""} (<a href="{log}">console.log</a>)</li>')
            yield "</ol>"
        yield "</div>"
    yield "</section>"
