"""Infrastructure failures are errors that name what failed, never a guest outcome (issue 15): QEMU refusing an
argument (with and without a debugger), QEMU killed mid-run, GDB killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, patchscope, result_json, write_config

pytestmark = pytest.mark.boot


@pytest.mark.parametrize("inspect", ["", "inspect: {capture: after-patching}\n"])
def test_qemu_refusing_an_argument_is_reported_in_its_own_words(tmp_path: Path, inspect: str) -> None:
    config = write_config(tmp_path, "baddev", "qemu:\n  extra: [-device, no-such-device]\n" + inspect)
    started = time.monotonic()
    res = patchscope("run", str(config), "--artifacts", str(tmp_path / "out"), "-q", timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    data = result_json(tmp_path / "out", "baddev")
    assert data["verdict"] == "error"
    assert "qemu-system-x86_64: -device no-such-device: 'no-such-device' is not a valid device model name" \
        in data["error"], data["error"]
    # not the 30 s a debugger waited for a socket QEMU never made (a bound, not a timing: a boot takes longer)
    assert time.monotonic() - started < 25


def _run_and_kill(tmp_path: Path, body: str, victim: str) -> tuple[int, dict[str, object]]:
    """Start a run, wait until it boots, SIGKILL the named process of it, and return (exit code, result.json)."""
    config = write_config(tmp_path, "victim", body)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", str(config), "--artifacts", str(out), "-q"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    pidfile = out / "victim" / "native" / "qemu.pid"
    console = out / "victim" / "native" / "console.log"
    deadline = time.monotonic() + 120
    # mid-run: the kernel has started printing (a machine under load takes longer to get there)
    while time.monotonic() < deadline and not (pidfile.exists() and console.exists()
                                               and "Linux version" in console.read_text(errors="replace")):
        time.sleep(0.1)
    if victim == "qemu":
        pid = int(pidfile.read_text())
    else:                                 # the run's GDB: a child of the patchscope process
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "gdb"], capture_output=True, text=True,
                                  check=True).stdout
        pid = int(children.split()[0])
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    data = result_json(out, "victim")
    data["stderr"] = err.decode(errors="replace")[-2000:]     # shown when an assertion fails
    return proc.returncode, data


def test_qemu_killed_mid_run_is_an_error_naming_qemu_not_a_reset(tmp_path: Path) -> None:
    code, data = _run_and_kill(tmp_path, "kernel: debian-6.1\n", "qemu")
    assert code == 2 and data["verdict"] == "error", data
    assert "was killed by signal 9 (SIGKILL)" in str(data["error"]) and "reset" not in str(data["error"])


def test_gdb_killed_mid_run_is_an_error_naming_gdb_not_a_hang(tmp_path: Path) -> None:
    code, data = _run_and_kill(tmp_path, "kernel: debian-6.1\ninspect: {capture: booted}\n", "gdb")
    assert code == 2 and data["verdict"] == "error", data
    assert "the debugger died mid-run, not the guest" in str(data["error"]), data["error"]
