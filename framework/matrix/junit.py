"""A matrix as JUnit XML: one testsuite per kernel x mode, one testcase per config.

CI systems' JUnit views (GitHub's test reporters, GitLab's "Tests" tab) show a
failure's message and text: here the verdict's first reason, then every reason
and the console's last lines. Flaky cells pass, with their history in
system-out; not-applicable and not-run cells are skipped with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .results import MatrixResults

CONSOLE_TAIL = 30
# XML 1.0 has no place for most control characters; a console can hold any byte.
_BAD_XML = {c: None for c in (*range(0x20), 0xFFFE, 0xFFFF) if c not in (0x09, 0x0A, 0x0D)}


def clean(text: str) -> str:
    return text.translate(_BAD_XML)


def console_tail(root: Path, artifacts: str | None, n: int = CONSOLE_TAIL) -> list[str]:
    if artifacts is None:
        return []
    path = root / artifacts / "console.log"
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def write_junit(results: MatrixResults, root: Path, path: Path) -> None:
    suites = ET.Element("testsuites", name=f"patchscope matrix {results.name}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(results.cells):
        groups.setdefault((c.cell.kernel, c.cell.mode), []).append(i)
    for (kernel, mode), indices in groups.items():
        cells = [results.cells[i] for i in indices]
        suite = ET.SubElement(
            suites, "testsuite", name=f"{kernel} {mode}", tests=str(len(cells)),
            failures=str(sum(c.state == "fail" for c in cells)), errors=str(sum(c.state == "error" for c in cells)),
            skipped=str(sum(c.state in ("not-applicable", "not-run") for c in cells)),
            time=f"{sum(c.duration_s for c in cells):.3f}")
        for c in cells:
            case = ET.SubElement(suite, "testcase", classname=f"patchscope.{kernel}.{mode}", name=c.cell.config,
                                 time=f"{c.duration_s:.3f}")
            reasons = list(c.result.reasons) if c.result is not None else ([c.reason] if c.reason else [])
            if c.state in ("fail", "error"):
                text = "\n".join([c.title, *(f"- {r}" for r in reasons), "", "last console lines:",
                                  *console_tail(root, c.artifacts)])
                tag = "failure" if c.state == "fail" else "error"
                ET.SubElement(case, tag, message=clean(c.title or (reasons[0] if reasons else c.state)),
                              type=c.state).text = clean(text)
            elif c.state in ("not-applicable", "not-run"):
                ET.SubElement(case, "skipped", message=clean(f"{c.state}: {c.reason}"))
            history = ", ".join(f"attempt {n}: {a.verdict}" for n, a in enumerate(c.attempts, 1))
            out = [f"state: {c.state}" + (f" ({history})" if len(c.attempts) > 1 else "")]
            if c.artifacts:
                out.append(f"artifacts: {c.artifacts}")
            if c.result is not None:
                out.append(c.result.summary)
            ET.SubElement(case, "system-out").text = clean("\n".join(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ET.ElementTree(suites).write(tmp, encoding="unicode", xml_declaration=True)
    tmp.replace(path)
