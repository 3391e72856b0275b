"""Real Xen PV boots: Xen 4.17 inside QEMU (TCG), the Debian 6.1 kernel as its PV dom0.

boot-xen-pv.yaml, xen-pv-smap-tcg.yaml and panic-no-initramfs.yaml (both
modes) run as shipped configs; these tests check what the configs cannot:
a Xen that sits silent after a dom0 crash is stopped at once and leaves no
process, both identities are recorded, and the same config runs in either mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import patchscope, result_json, running, write_config

pytestmark = pytest.mark.boot


def test_dom0_crash_under_noreboot_ends_the_run_and_leaves_no_qemu(artifacts: Path) -> None:
    res = patchscope("run", "configs/xen-pv-smap-tcg.yaml", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, "xen-pv-smap-tcg", "xen-pv")
    # Xen with noreboot prints nothing more after the crash: the crash ended the run, not a limit.
    assert data["ending"]["reason"] == "fatal"
    assert data["crashes"][0]["source"] == "xen" and data["crashes"][0]["fatal"]
    pid = data["qemu"]["pid"]
    assert not running(pid)


def test_results_record_kernel_and_hypervisor_and_stages_of_both(artifacts: Path) -> None:
    res = patchscope("run", "configs/boot-xen-pv.yaml", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, "boot-xen-pv", "xen-pv")
    assert data["hypervisor"]["package"] == "xen-hypervisor-4.17-amd64"
    assert data["hypervisor"]["banner"]["version"].startswith("4.17")
    assert data["kernel"]["package"] == "linux-image-6.1.0-56-amd64"
    names = [s["name"] for s in data["stages"]]
    assert names.index("xen") < names.index("linux") < names.index("init-done") < names.index("xen-s5")
    argv = data["qemu"]["argv"]
    assert argv[argv.index("-kernel") + 1].endswith("/xen")


def test_one_config_runs_in_both_modes_side_by_side(tmp_path: Path, artifacts: Path) -> None:
    cfg = tmp_path / "either.yaml"
    cfg.write_text("name: either\ninit_commands: ['cat /sys/hypervisor/type || echo none']\n"
                   "expect: {outcome: boots}\n")      # no mode: both
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    results = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["mode"] for r in results] == ["native", "xen-pv"]
    native = (artifacts / "either" / "native" / "console.log").read_text()
    xen = (artifacts / "either" / "xen-pv" / "console.log").read_text()
    assert "Booting paravirtualized kernel on bare hardware" in native and "(XEN)" not in native
    assert "Booting kernel on Xen" in xen and "| xen\n" in xen


def test_mode_flag_overrides_a_pinned_config(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "pinned", "expect: {outcome: boots}\n")   # pins native
    res = patchscope("run", str(cfg), "--mode", "xen-pv", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    assert result_json(artifacts, "pinned", "xen-pv")["mode"] == "xen-pv"
    assert not (artifacts / "pinned" / "native").exists()


def test_boot_native_runs_under_xen_with_its_xen_pv_expectations(artifacts: Path) -> None:
    # The config pins native mode; --mode xen-pv runs it as dom0 and its expect.xen-pv section applies.
    res = patchscope("run", "configs/boot-native.yaml", "--mode", "xen-pv", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, "boot-native", "xen-pv")
    assert data["verdict"] == "pass" and data["hypervisor"]["package"] == "xen-hypervisor-4.17-amd64"
    assert data["expect"]["xen-pv"] == {"console": {"contains": ["Booting kernel on Xen"]}}
