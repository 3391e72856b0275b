"""Results for CI: JUnit XML, one testcase a run (class ``patchscope.<mode>``, name the config's)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from .result import RunResult


def junit(results: Sequence[RunResult], path: Path) -> None:
    suite = ET.Element("testsuite", name="patchscope", tests=str(len(results)),
                       failures=str(sum(r.verdict == "fail" for r in results)),
                       errors=str(sum(r.verdict == "error" for r in results)),
                       time=f"{sum(r.duration_s for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"patchscope.{r.mode}", name=r.name,
                             time=f"{r.duration_s:.3f}")
        reasons = "\n".join(r.reasons)
        if r.verdict == "fail":
            ET.SubElement(case, "failure", message=r.reasons[0] if r.reasons else "").text = reasons
        elif r.verdict == "error":
            ET.SubElement(case, "error", message=r.error or "").text = reasons
        ET.SubElement(case, "system-out").text = f"artifacts: {r.artifacts}\n{r.summary}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
