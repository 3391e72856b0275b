"""The nightly matrix for real: 2 kernels x 2 modes x 2 configs at -j 2, shards merged, a baseline, a flaky
cell, Ctrl-C, and the page in a real browser.

The second kernel is ``debian-newest:6.1``: the newest 6.1 ABI the apt sources carry,
resolved as a nightly resolves it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pexpect
import pytest
from junitparser import JUnitXml

from tests.browser import parse, render_page, require_chromium
from tests.conftest import REPO, patchscope, spawn_patchscope, write_config

pytestmark = pytest.mark.boot

KERNELS = ("debian-6.1", "debian-newest:6.1")
CONFIGS = ("boot", "panic-no-initramfs")      # both run in both modes; one boots, one panics


def boot_config(extra_line: str | None = None) -> str:
    """configs/boot-native.yaml without its mode: (its expect.native and expect.xen-pv cover both modes)."""
    text = (REPO / "configs" / "boot-native.yaml").read_text()
    text = text.replace("name: boot-native\n", "name: boot\n", 1).replace("mode: native\n", "", 1)
    if extra_line is not None:
        text = text.replace('      - "patchscope: exit 2: 0"\n', f'      - "patchscope: exit 2: 0"\n      - "{extra_line}"\n', 1)
        assert extra_line in text
    return text


def write_matrix(directory: Path, name: str, configs: tuple[str, ...], kernels: tuple[str, ...] = KERNELS,
                 modes: str = "[native, xen-pv]", extra: str = "") -> Path:
    cdir = directory / "configs"
    cdir.mkdir(parents=True, exist_ok=True)
    for config in configs:
        if config == "boot":
            (cdir / "boot.yaml").write_text(boot_config())
        elif not (cdir / f"{config}.yaml").exists():
            shutil.copy(REPO / "configs" / f"{config}.yaml", cdir / f"{config}.yaml")
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\nkernels: [{', '.join(kernels)}]\nmodes: {modes}\n"
                    f"configs: [\"configs/*.yaml\"]\n{extra}")
    return path


def results(directory: Path) -> dict[str, Any]:
    data = json.loads((directory / "results.json").read_text())
    assert isinstance(data, dict)
    return data


def states(directory: Path) -> dict[str, str]:
    return {c["id"]: c["state"] for c in results(directory)["cells"]}


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(matrix file, results directory) of the whole 8-cell matrix run at -j 2."""
    base = tmp_path_factory.mktemp("matrix")
    matrix = write_matrix(base, "mini", CONFIGS)
    out = base / "full"
    run = patchscope("matrix", str(matrix), "-j", "2", "--artifacts", str(out), timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    yield matrix, out


def test_every_cell_runs_two_at_a_time_and_is_reported_three_ways(nightly: tuple[Path, Path]) -> None:
    _, out = nightly
    data = results(out)
    cells = data["cells"]
    assert len(cells) == 8 and {c["state"] for c in cells} == {"pass"}
    assert {(c["kernel"], c["mode"]) for c in cells} == {(k, m) for k in KERNELS for m in ("native", "xen-pv")}
    # Each cell kept its own artefacts, and its result is the run's own.
    for c in cells:
        where = out / c["attempts"][-1]["artifacts"]
        assert (where / "console.log").exists()
        assert json.loads((where / "result.json").read_text())["verdict"] == "pass"
        assert c["result"]["mode"] == c["mode"]
    panics = [c for c in cells if c["config"] == "panic-no-initramfs"]
    assert all(c["result"]["title"].startswith("kernel panic: VFS") for c in panics)
    # The floating kernel is recorded with what it was tonight, and is not the pinned one.
    kernels = {k["name"]: k for k in data["kernels"]}
    assert kernels["debian-6.1"]["package"] == "linux-image-6.1.0-56-amd64"
    newest = kernels["debian-newest:6.1"]
    assert newest["package"].startswith("linux-image-6.1.0-") and newest["version"]
    assert newest["ref"] == f"debian:{newest['package']}={newest['version']}"
    assert {c["result"]["kernel"]["package"] for c in cells if c["kernel"] == "debian-newest:6.1"} == {newest["package"]}
    assert data["meta"]["qemu"].startswith("QEMU emulator version") and data["meta"]["jobs"] == 2
    assert data["meta"]["xen"] and data["meta"]["xen"][0]["package"].startswith("xen-hypervisor-")
    # Two at a time: some cells overlapped in time, and the whole took less than the cells one after another.
    total = sum(c["duration_s"] for c in cells)
    assert data["meta"]["duration_s"] < total
    # JUnit: one testsuite per kernel x mode, read by a JUnit library.
    xml = JUnitXml.fromfile(str(out / "junit.xml"))
    suites = {s.name: s for s in xml}
    assert set(suites) == {f"{k} {m}" for k in KERNELS for m in ("native", "xen-pv")}
    assert all(s.tests == 2 and s.failures == 0 and s.errors == 0 for s in suites.values())
    assert (out / "index.html").read_text().count('data-cell="') == 8


def test_the_page_in_a_real_browser(nightly: tuple[Path, Path], tmp_path: Path) -> None:
    require_chromium()
    _, out = nightly
    shots = REPO / "patchscope-out" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    dom = parse(render_page(out / "index.html", shots / "matrix-boot.png"))
    cells = dom.find_all("td", class_="cell")
    assert len(cells) == 8 and {"state-pass"} == {c for cell in cells for c in cell.classes if c.startswith("state-")}
    panic = dom.find("td", data_cell="panic-no-initramfs[debian-newest:6.1-xen-pv]")
    assert "kernel panic: VFS" in panic.text
    href = panic.find("a", class_="console").attrs["href"]
    assert (out / unquote(href)).is_file()
    assert (shots / "matrix-boot.png").stat().st_size > 10_000


def test_two_shards_merged_equal_the_whole(nightly: tuple[Path, Path], tmp_path: Path) -> None:
    matrix, full = nightly
    shards = []
    for k in (1, 2):
        out = tmp_path / f"shard-{k}"
        run = patchscope("matrix", str(matrix), "-j", "2", "--shard", f"{k}/2", "--baseline", str(full),
                         "--artifacts", str(out), timeout=1800)
        assert run.returncode == 0, run.stdout + run.stderr
        shards.append(out)
    one, two = (set(states(s)) for s in shards)
    assert one and two and not one & two
    merged = tmp_path / "nightly"
    run = patchscope("report", "merge", *map(str, shards), "-o", str(merged))
    assert run.returncode == 0, run.stdout + run.stderr
    assert states(merged) == states(full)
    data = results(merged)
    assert data["shards"] is None and data["matrix"]["digest"] == results(full)["matrix"]["digest"]
    for c in data["cells"]:                                   # the merged directory holds every cell's artefacts
        assert (merged / c["attempts"][-1]["artifacts"] / "console.log").exists()
    # Refused: the same shard twice, and one shard of another matrix.
    again = patchscope("report", "merge", str(shards[0]), str(shards[0]), "-o", str(tmp_path / "x"))
    assert again.returncode == 2 and "given twice" in again.stderr and "Traceback" not in again.stderr
    other = write_matrix(tmp_path / "other", "other", ("panic-no-initramfs",), ("debian-6.1",), "[native]")
    lone = tmp_path / "lone"
    assert patchscope("matrix", str(other), "--artifacts", str(lone)).returncode == 0
    mixed = patchscope("report", "merge", str(shards[0]), str(lone), "-o", str(tmp_path / "y"))
    assert mixed.returncode == 2 and "different matrices" in mixed.stderr


def test_a_baseline_marks_the_cell_made_to_fail(nightly: tuple[Path, Path], tmp_path: Path) -> None:
    _, full = nightly
    # The same configs, natively; boot now expects a console line that never comes.
    matrix = write_matrix(tmp_path, "mini", ("panic-no-initramfs",), KERNELS, "[native]")
    (tmp_path / "configs" / "boot.yaml").write_text(boot_config("a line no kernel prints"))
    out = tmp_path / "tonight"
    run = patchscope("matrix", str(matrix), "-j", "2", "--baseline", str(full), "--artifacts", str(out),
                     timeout=1800)
    assert run.returncode == 1, run.stdout + run.stderr
    assert states(out)["boot[debian-6.1-native]"] == "fail"
    page = (out / "index.html").read_text()
    assert 'data-mark="new failure"' in page
    diff = patchscope("report", "diff", str(full / "results.json"), str(out / "results.json"))
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "new failure (2):" in diff.stdout
    assert "boot[debian-6.1-native]: pass -> fail" in diff.stdout
    assert "panic-no-initramfs[debian-6.1-native]" not in diff.stdout.split("gone")[0]   # unchanged


PANICS = "initramfs: none\ntimeout: 60\nexpect: {outcome: panics, crash: '^kernel panic: VFS'}\n"


def native_matrix(directory: Path, configs: dict[str, str], extra: str = "") -> Path:
    """A matrix of the default kernel, natively, over configs (name -> body) written into directory/configs."""
    cdir = directory / "configs"
    cdir.mkdir()
    for name, body in configs.items():
        write_config(cdir, name, body)
    matrix = directory / "m.yaml"
    matrix.write_text("kernels: [debian-6.1]\nmodes: [native]\nconfigs: ['configs/*.yaml']\n" + extra)
    return matrix


FAIL_FIRST = """#!/bin/sh
# QEMU that fails a cell's first attempt (the matrix sets PATCHSCOPE_MATRIX_ATTEMPT), then is QEMU.
if [ "$PATCHSCOPE_MATRIX_ATTEMPT" = 1 ] && [ "$1" != --version ]; then
  echo "qemu: simulated failure of attempt 1" >&2
  exit 1
fi
exec {qemu} "$@"
"""


def test_a_cell_that_fails_once_then_passes_is_flaky(tmp_path: Path) -> None:
    matrix = native_matrix(tmp_path, {"flaky": PANICS}, "retries: 1\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    (bindir / "qemu-system-x86_64").write_text(FAIL_FIRST.replace("{qemu}", qemu))
    (bindir / "qemu-system-x86_64").chmod(0o755)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "matrix", str(matrix), "--artifacts", str(out)],
                          capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bindir}:{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cell = results(out)["cells"][0]
    assert cell["state"] == "flaky"
    assert [a["verdict"] for a in cell["attempts"]] == ["error", "pass"]
    first = out / cell["attempts"][0]["artifacts"]
    assert first.name == "native.attempt-1" and json.loads((first / "result.json").read_text())["verdict"] == "error"
    assert "flaky" in proc.stdout
    case = next(iter(next(iter(JUnitXml.fromfile(str(out / "junit.xml"))))))
    assert case.is_passed and "attempt 1: error" in (case.system_out or "")
    assert 'data-state="flaky"' in (out / "index.html").read_text()


def qemu_of(directory: Path) -> list[int]:
    """QEMU processes whose command line names ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-system-x86_64") and any(str(directory).encode() in a for a in argv):
                found.append(int(proc.name))
    return found


def test_ctrl_c_stops_every_guest_and_keeps_what_finished(tmp_path: Path) -> None:
    slow = "init_commands: ['sleep 600']\ntimeout: 600\nsilence: 600\n"     # runs until stopped
    matrix = native_matrix(tmp_path, {"quick": PANICS, "slow-1": slow, "slow-2": slow})
    out = tmp_path / "out"
    log = tmp_path / "matrix.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "matrix", str(matrix), "-j", "2",
                                 "--artifacts", str(out)], stdout=handle, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Wait until one cell is done and QEMU runs for another.
        while time.monotonic() < deadline:
            if "PASS  quick[" in log.read_text() and qemu_of(out):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no cell finished while another ran: {log.read_text()}")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "INTERRUPTED" in output
    assert qemu_of(out) == []
    data = results(out)
    assert data["meta"]["interrupted"] is True
    cells = {c["config"]: c for c in data["cells"]}
    assert set(cells) == {"quick", "slow-1", "slow-2"}
    finished = [c for c in cells.values() if c["state"] == "pass"]
    stopped = [c for c in cells.values() if c["state"] == "not-run"]
    assert finished and stopped and len(finished) + len(stopped) == 3
    assert all("stopped (SIGINT)" in c["reason"] for c in stopped)
    assert (out / "index.html").exists() and (out / "junit.xml").exists()


def test_a_terminal_gets_one_live_status_line(tmp_path: Path) -> None:
    matrix = native_matrix(tmp_path, {"quick": PANICS})
    child = spawn_patchscope("matrix", str(matrix), "--artifacts", str(tmp_path / "out"), CI="")
    child.expect(r"\[0/1\] 1 running \(quick\[debian-6.1-native\] \d+s\) · 0 failed · ~\d+ s left")
    child.expect(r"\r\x1b\[Kpatchscope: PASS  quick\[debian-6.1-native\]")
    child.expect("PASS  matrix m: 1 pass")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
