"""The pytest plugin over kernels x modes, in parallel under pytest-xdist, for real."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

# Two references to the default kernel: the recipe and its pinned package, so no second download.
KERNELS = ("debian-6.1", "debian:linux-image-6.1.0-56-amd64=6.1.192-2")


def test_each_kernel_runs_each_config_in_its_own_directory_two_at_a_time(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "panics.yaml").write_text("name: panics\nmode: native\ninitramfs: none\ntimeout: 60\n"
                                         "expect: {outcome: panics, crash: '^kernel panic: VFS'}\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(configs), "-p", "no:cacheprovider", "-n", "2",
                           "--patchscope-artifacts", str(out), *[a for k in KERNELS for a in ("--kernel", k)],
                           "--mode", "native", f"--junitxml={tmp_path / 'j.xml'}", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    cases = sorted(c.get("name") or "" for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    assert cases == [f"panics[{k}-native]" for k in sorted(KERNELS)]
    results = sorted(out.glob("*/panics/native/result.json"))
    assert len(results) == 2
    refs = {json.loads(r.read_text())["kernel"]["ref"] for r in results}
    assert refs == set(KERNELS)
