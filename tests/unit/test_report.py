"""JUnit XML and summary lines from results (run --junit, the CLI's one line per run)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from framework.report.junit import junit
from framework.report.result import RunResult
from framework.report.text import summary_line


def booted(summary: str) -> dict[str, object]:
    """result.json's observation keys for a run that booted."""
    return {"outcome": "boots", "summary": summary, "title": None, "last_stage": "reboot: Power down",
            "crashes": [], "stages": [], "ending": {"reason": "exit", "t": 6.0, "exitcode": 0, "silence": None}}


RESULTS = [
    RunResult.from_json({"name": "boot-native", "mode": "native", "verdict": "pass", "duration_s": 6.1,
                         "reasons": [], "artifacts": "out/boot-native/native",
                         **booted("booted to 'reboot: Power down' in 5.9 s")}),
    RunResult.from_json({"name": "boot-native", "mode": "xen-pv", "verdict": "fail", "duration_s": 10.5,
                         "reasons": ["no console line matches /bare hardware/"], "artifacts": "out/b/xen-pv",
                         **booted("booted")}),
    RunResult.from_json({"name": "broken", "mode": "native", "verdict": "error", "duration_s": 0.1,
                         "error": "unknown kernel reference", "reasons": ["unknown kernel reference"],
                         "artifacts": "out/broken/native"}),
]


def test_junit_has_one_case_per_run_with_failures_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "junit.xml"
    junit(RESULTS, path)
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("patchscope.native", "boot-native"), ("patchscope.xen-pv", "boot-native"), ("patchscope.native", "broken")]
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "no console line matches /bare hardware/"
    error = cases[2].find("error")
    assert error is not None and error.get("message") == "unknown kernel reference"
    assert "out/b/xen-pv" in (cases[1].findtext("system-out") or "")


def test_summary_line() -> None:
    assert summary_line(RESULTS[0]) == ("PASS  boot-native [native]: booted to 'reboot: Power down' in 5.9 s  "
                                        "(out/boot-native/native)")
    assert summary_line(RESULTS[2]).startswith("ERROR broken [native]: unknown kernel reference")
