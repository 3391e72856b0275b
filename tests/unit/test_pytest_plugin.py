"""The pytest plugin's items: one per config, kernel and mode, with ids that say which (collection only, no boot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = "name: demo\nmode: [native, xen-pv]\ntimeout: 30\n"


def collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    (configs / "demo.yaml").write_text(CONFIG)
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(configs), *args], cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=120)


def ids(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line]


def test_a_config_is_one_item_per_mode(tmp_path: Path) -> None:
    assert ids(collect(tmp_path)) == ["demo[native]", "demo[xen-pv]"]


def test_mode_overrides_the_configs_modes(tmp_path: Path) -> None:
    assert ids(collect(tmp_path, "--mode", "xen-pv")) == ["demo[xen-pv]"]
    assert ids(collect(tmp_path, "--patchscope-mode", "native", "--mode", "native")) == ["demo[native]"]


def test_each_kernel_times_each_mode(tmp_path: Path) -> None:
    proc = collect(tmp_path, "--kernel", "debian-6.1", "--kernel", "debian:linux-image-6.1.0-50-amd64",
                   "--mode", "native", "--mode", "xen-pv")
    assert ids(proc) == ["demo[debian-6.1-native]", "demo[debian-6.1-xen-pv]",
                         "demo[debian:linux-image-6.1.0-50-amd64-native]",
                         "demo[debian:linux-image-6.1.0-50-amd64-xen-pv]"], proc.stdout + proc.stderr


def test_a_bad_kernel_reference_is_a_collection_error_with_its_reason(tmp_path: Path) -> None:
    proc = collect(tmp_path, "--kernel", "debian:")
    assert proc.returncode != 0
    assert "--kernel: 'debian:': '' is not a Debian package name" in proc.stdout and "demo.yaml" in proc.stdout
