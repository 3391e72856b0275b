"""The bisect's page: one self-contained static ``index.html`` from its record. Pure.

Like the matrix's page (its style, its escaping, no script, links relative to
the bisect's directory): the result on top (culprit with its changelog entry or
commit message, verified or not and why, the confidence), then a row per step
with ``<tr class="step decision-<good|bad|skip>" data-role=… data-decision=…
data-flaky=…>``, each run linked to its artefacts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..matrix.html import CSP, CSS, duration, escape, href
from .record import ROLE_WORDS, Record, Step, decision_word, step_signature

PAGE = "index.html"

BISECT_CSS = """
tr.step td { padding: .25em .6em; vertical-align: top; border-bottom: 1px solid #ddd; }
tr.decision-good td.decision { background: #c8eec8; }
tr.decision-bad td.decision { background: #f5a3a3; font-weight: bold; }
tr.decision-skip td.decision { background: #e2e2e2; }
tr[data-flaky="true"] td.decision { background: repeating-linear-gradient(135deg, #ffdf80 0 8px, #fff1c2 8px 16px); }
.result { padding: .6em .9em; border-radius: 3px; margin: .6em 0; }
.result.found { background: #f5e0e0; border: 2px solid #c00; }
.result.ambiguous, .result.running { background: #fff1a8; border: 2px solid #a08000; }
.result.stopped, .result.interrupted { background: #ffd7a8; border: 2px solid #c25400; }
pre.note { background: #f6f6f6; padding: .5em; white-space: pre-wrap; }
"""


def render(record: Record, base: Path | None = None) -> str:
    return "\n".join(_page(record, base)) + "\n"


def write_page(directory: Path, record: Record) -> Path:
    path = directory / PAGE
    tmp = directory / (PAGE + ".tmp")
    tmp.write_text(render(record, directory))
    tmp.replace(path)
    return path


def _rel(path: str, base: Path | None) -> str:
    if base is None or not path:
        return path
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:
        return path


def _page(r: Record, base: Path | None) -> Iterator[str]:
    title = f"bisect {Path(r.config).stem} [{r.mode}]: {r.good} .. {r.bad}"
    yield "<!DOCTYPE html>"
    yield f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">'
    yield f"<title>{escape(title)}</title><style>{CSS}{BISECT_CSS}</style></head><body>"
    yield f"<h1>{escape(title)}</h1>"
    yield '<dl class="meta">'
    span = f"{r.untested} candidates between the ends, ⌈log2 {r.untested + 1}⌉ = {r.expected_steps} steps expected"
    for label, value in (("config", r.config), ("over", f"{r.over}" + (f" tree {r.tree}" if r.tree else "")),
                         ("recipe", r.recipe), ("runs per step", f"{r.runs} (up to {r.max_runs} when they disagree)"),
                         ("range", span),
                         ("signature", "; ".join(r.signature) or "not yet known"),
                         ("started", r.meta.get("started")), ("duration", duration(float(str(r.meta["duration_s"])))
                                                              if "duration_s" in r.meta else None)):
        if value:
            yield f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>"
    yield "</dl>"
    yield from _result(r)
    yield "<h2>Steps</h2>"
    yield ('<table class="steps"><tr><th>#</th><th>what</th><th>kernel or commit</th><th>verdict</th><th>failure</th>'
           "<th>runs</th><th>time</th><th>artefacts</th></tr>")
    for i, s in enumerate(r.steps, 1):
        yield from _row(i, s, r, base)
    yield "</table>"
    if r.candidates:
        yield "<h2>Candidates</h2><ol>" + "".join(f"<li>{escape(c)}</li>" for c in r.candidates) + "</ol>"
    yield f"<footer>patchscope {escape(r.meta.get('patchscope', ''))}</footer></body></html>"


def _result(r: Record) -> Iterator[str]:
    yield f'<div class="result {escape(r.state)}" id="result" data-state="{escape(r.state)}">'
    if r.state == "found" and r.culprit:
        yield f"<p><b>First bad:</b> <code>{escape(r.culprit)}</code></p>"
        if r.culprit_note:
            yield f'<pre class="note">{escape(r.culprit_note)}</pre>'
    elif r.state == "ambiguous":
        yield "<p><b>First bad: one of</b> " + ", ".join(f"<code>{escape(p)}</code>" for p in r.possible) + "</p>"
    else:
        yield f"<p><b>{escape(r.state)}</b>: {escape(r.why)}</p>"
    if r.verified is not None:
        word = "verified" if r.verified else "NOT verified"
        yield f'<p id="verified" data-verified="{str(r.verified).lower()}"><b>{word}</b>: {escape(r.verification)}</p>'
    if r.confidence is not None:
        yield f'<p id="confidence">confidence {r.confidence:.0%}: {escape(r.confidence_why)}</p>'
    if r.flaky:
        yield "<p><b>flaky:</b> " + ", ".join(f"<code>{escape(s.label)}</code>" for s in r.flaky) + "</p>"
    yield "</div>"


def _row(i: int, s: Step, r: Record, base: Path | None) -> Iterator[str]:
    links = " ".join(f'<a href="{href(_rel(run.artifacts, base))}">run {k}: {escape(run.cls)}</a>'
                     for k, run in enumerate(s.runs, 1))
    bad = sum(c == "bad" for c in s.classes)
    yield (f'<tr class="step decision-{escape(s.decision)}" data-role="{escape(s.role)}" '
           f'data-decision="{escape(s.decision)}" data-flaky="{str(s.flaky).lower()}">'
           f"<td>{i}</td><td>{escape(ROLE_WORDS[s.role])}</td><td><code>{escape(s.label)}</code></td>"
           f'<td class="decision">{escape(decision_word(s))}<br><small>{escape(s.why)}</small></td>'
           f"<td>{escape(step_signature(s))}</td><td>{bad}/{len(s.runs)} bad</td>"
           f"<td>{escape(duration(s.duration_s))}<br><small>{escape(s.prepared)}</small></td><td>{links}</td></tr>")
