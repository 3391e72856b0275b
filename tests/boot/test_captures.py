"""Captures read by QEMU itself (QMP memsave) instead of through the debugger (issue 16).

``inspect.reader: both`` reads every region of every capture both ways at the same
stop and fails the run if a byte differs; these runs pass, natively and as Xen PV
dom0, before and after boot-time patching. The default (qmp) must give the same
site comparison as the debugger's reads.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import patchscope, result_json, write_config

pytestmark = pytest.mark.boot

SAME = "through QEMU (QMP memsave), the same bytes through the debugger"


@pytest.mark.parametrize("mode", ["native", "xen-pv"])
def test_captures_through_qmp_equal_the_debuggers_byte_for_byte(tmp_path: Path, artifacts: Path, mode: str) -> None:
    cfg = write_config(tmp_path, f"reader-both-{mode}", f"""
mode: {mode}
inspect: {{capture: [before-patching, after-patching], tables: [paravirt, alternatives], reader: both}}
expect: {{outcome: boots}}
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stdout + res.stderr
    captured = [line for line in res.stderr.splitlines() if "captured " in line]
    assert len(captured) == 2 and all(SAME in line for line in captured), captured
    assert result_json(artifacts, f"reader-both-{mode}", mode)["verdict"] == "pass"


def sites(directory: Path) -> list[dict[str, object]]:
    with gzip.open(directory / "sites-after-patching.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def test_the_default_reader_gives_the_debuggers_comparison(tmp_path: Path, artifacts: Path) -> None:
    runs = {}
    for reader in ("qmp", "debugger"):
        cfg = write_config(tmp_path, f"reader-{reader}", f"""
inspect: {{capture: after-patching, tables: [paravirt], reader: {reader}}}
expect: {{outcome: boots}}
""")
        res = patchscope("run", str(cfg), "--artifacts", str(artifacts))
        assert res.returncode == 0, res.stdout + res.stderr
        how = "QEMU (QMP memsave)" if reader == "qmp" else "the debugger"
        assert any("captured after-patching" in ln and ln.endswith(f"through {how}") for ln in res.stderr.splitlines())
        runs[reader] = sites(artifacts / f"reader-{reader}" / "native")
    assert len(runs["qmp"]) == 3848 and runs["qmp"] == runs["debugger"]
