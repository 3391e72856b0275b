"""Fetching for real through the host's apt sources (network to the package registry only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framework.guest import initramfs

pytestmark = pytest.mark.boot


def test_busybox_is_fetched_from_busybox_static_when_the_host_has_none(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    found = initramfs.find_busybox(host=())          # as on a machine without busybox installed
    assert found.is_relative_to(tmp_path / "cache")
    assert initramfs.is_static_elf(found)
    assert initramfs.find_busybox(host=()) == found   # cached: the second call downloads nothing
    assert len(list((tmp_path / "cache" / "debs").glob("busybox-static_*.deb"))) == 1


def test_pytest_plugin_reports_reasons_and_the_console_tail(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "wrong.yaml").write_text("name: wrong\nmode: native\nexpect:\n  outcome: panics\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(configs), "-p", "no:cacheprovider",
                           "--patchscope-artifacts", str(tmp_path / "out"), f"--junitxml={tmp_path / 'j.xml'}"],
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrong.yaml::wrong[native]" in proc.stdout
    assert "FAIL: booted to 'reboot: Power down'" in proc.stdout
    assert "- expected outcome 'panics', got 'boots'" in proc.stdout
    assert "last console lines" in proc.stdout and "reboot: Power down" in proc.stdout
    junit = (tmp_path / "j.xml").read_text()
    assert 'failures="1"' in junit and "expected outcome" in junit


def test_kernels_fetch_prepares_the_xen_recipe_as_a_hypervisor() -> None:
    # It once took every recipe for a kernel package and failed on xen-4.17 ("holds no boot/vmlinuz-*").
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "kernels", "fetch", "xen-4.17"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    identity = json.loads(proc.stdout)
    assert identity["package"] == "xen-hypervisor-4.17-amd64"
    assert Path(identity["image"]).read_bytes()[:4] == b"\x7fELF"
