"""Results on disk and on screen: result.json, JUnit XML, one-line summaries."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULT = "result.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_result(directory: Path) -> dict[str, Any] | None:
    path = directory / RESULT
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def summary_line(result: dict[str, Any]) -> str:
    """PASS boot-native [native]: booted to 'reboot: Power down' in 5.1 s  (out/boot-native/native)"""
    verdict = str(result.get("verdict", "error")).upper()
    what = result.get("summary") or result.get("error") or ""
    return f"{verdict:5} {result.get('name')} [{result.get('mode')}]: {what}  ({result.get('artifacts')})"


def junit(results: Sequence[dict[str, Any]], path: Path) -> None:
    suite = ET.Element("testsuite", name="patchscope", tests=str(len(results)),
                       failures=str(sum(r.get("verdict") == "fail" for r in results)),
                       errors=str(sum(r.get("verdict") == "error" for r in results)),
                       time=f"{sum(float(r.get('duration_s') or 0) for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"patchscope.{r.get('mode')}",
                             name=str(r.get("name")), time=f"{float(r.get('duration_s') or 0):.3f}")
        reasons = "\n".join(r.get("reasons") or [])
        if r.get("verdict") == "fail":
            ET.SubElement(case, "failure", message=(r.get("reasons") or [""])[0]).text = reasons
        elif r.get("verdict") == "error":
            ET.SubElement(case, "error", message=str(r.get("error") or "")).text = reasons
        ET.SubElement(case, "system-out").text = f"artifacts: {r.get('artifacts')}\n{r.get('summary') or ''}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
