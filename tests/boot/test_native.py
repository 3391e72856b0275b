"""Real boots of the real Debian kernel in QEMU (TCG), driven through the CLI.

The shipped configs themselves are collected from configs/ by the pytest
plugin; these tests cover what a config cannot say about itself: wrong
expectations fail with reasons, crashes and hangs get their titles, Ctrl-C
leaves nothing behind, saved artefacts can be re-judged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, patchscope, result_json, running, write_config

pytestmark = pytest.mark.boot


def test_wrong_expectation_fails_with_reasons(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "expects-panic", """
init_commands: [uname -r]
expect:
  outcome: panics
  console:
    contains: ["this line never appears"]
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL  expects-panic [native]" in res.stdout
    assert "expected outcome 'panics', got 'boots'" in res.stdout
    assert "no console line matches /this line never appears/" in res.stdout
    data = result_json(artifacts, "expects-panic")
    assert data["verdict"] == "fail" and data["outcome"] == "boots"
    assert len(data["reasons"]) == 2


def test_sysrq_crash_is_a_titled_panic_that_ends_the_run(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "sysrq", """
init_commands: ["echo c > /proc/sysrq-trigger"]
timeout: 300
expect:
  outcome: panics
  crash: "^kernel panic: sysrq triggered crash"
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, "sysrq")
    assert data["title"] == "kernel panic: sysrq triggered crash"
    assert data["crashes"][0]["fatal"] is True
    assert data["ending"]["reason"] in ("exit", "fatal")   # ended by the panic, not the 300 s timeout
    assert data["last_stage"] == "patchscope /init"


def test_silent_guest_is_a_hang_that_names_the_last_stage(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "sleeper", """
init_commands: ["sleep 600"]
silence: 8
timeout: 120
expect:
  outcome: hangs
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, "sleeper")
    assert data["outcome"] == "hangs"
    assert data["summary"] == "hung after 'patchscope /init': no console output for 8 s"
    assert data["ending"]["reason"] == "silence"


def test_reboot_without_power_off_is_a_reset(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "rebooter", """
init_commands: ["reboot -f"]
expect:
  outcome: panics
  crash: "^reset or triple fault"
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    assert result_json(artifacts, "rebooter")["title"] == "reset or triple fault after 'patchscope /init'"


def test_check_rejudges_saved_artefacts_without_booting(artifacts: Path) -> None:
    res = patchscope("run", "configs/boot-native.yaml", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    saved = artifacts / "boot-native"
    ok = patchscope("check", str(saved), "--expect", "configs/boot-native.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "boots: booted to 'reboot: Power down'" in ok.stdout
    wrong = patchscope("check", str(saved / "native"), "--expect", "configs/panic-no-initramfs.yaml", "--json")
    assert wrong.returncode == 1
    out = json.loads(wrong.stdout)
    assert out["verdict"] == "fail" and "expected outcome 'panics', got 'boots'" in out["reasons"][0]
    plain = patchscope("check", str(saved / "native" / "console.log"), "--json")
    assert plain.returncode == 0 and json.loads(plain.stdout)["outcome"] == "boots"


@pytest.mark.parametrize("mode, sig", [("native", signal.SIGINT), ("native", signal.SIGTERM),
                                       ("xen-pv", signal.SIGINT)])
def test_interrupt_during_boot_leaves_no_qemu(tmp_path: Path, artifacts: Path, mode: str, sig: int) -> None:
    cfg = write_config(tmp_path, "interrupted", f"mode: {mode}\ninit_commands: ['sleep 600']\ntimeout: 300\n")
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", str(cfg), "--artifacts",
                             str(artifacts), "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    console = artifacts / "interrupted" / mode / "console.log"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if console.exists() and "Linux version" in console.read_text(errors="replace"):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the kernel never started")
    qemu_pid = int((artifacts / "interrupted" / mode / "qemu.pid").read_text())
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not running(qemu_pid), "QEMU survived the interrupt"
    data = result_json(artifacts, "interrupted", mode)
    assert data["verdict"] == "error" and data["error"] == "interrupted"
    assert "Linux version" in console.read_text()   # the log up to the interrupt is kept



def test_accel_auto_records_its_decision(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "auto", "expect: {outcome: boots}\n")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "--accel", "auto")
    assert res.returncode == 0, res.stdout + res.stderr
    accel = result_json(artifacts, "auto")["accel"]
    assert accel["used"] in ("tcg", "kvm")
    if accel["used"] == "tcg":   # these machines: /dev/kvm opens but the kernel never runs under it
        assert accel["why"].startswith("KVM unusable")
        assert accel["why"] in res.stderr   # said once, to the user
