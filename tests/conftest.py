"""Shared helpers: run the real CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.bisect_series import git  # noqa: F401  (the tests' git, with a fixed identity)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def patchscope(*args: str, cwd: Path | None = None, timeout: float = 600) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "framework.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def running(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def spawn_patchscope(*args: str, timeout: float = 180, **env: str) -> pexpect.spawn:
    """The real CLI on a pty, as a user at a terminal runs it."""
    return pexpect.spawn(sys.executable, ["-m", "framework.cli", *args], cwd=str(REPO),
                         env=dict(os.environ, PYTHONPATH=str(REPO), **env), timeout=timeout,
                         encoding="utf-8", codec_errors="replace")


def result_json(artifacts: Path, name: str, mode: str = "native") -> dict[str, Any]:
    data = json.loads((artifacts / name / mode / "result.json").read_text())
    assert isinstance(data, dict)
    return data


def write_config(tmp_path: Path, name: str, body: str) -> Path:
    """A config file; it pins mode: native unless the body says otherwise."""
    path = tmp_path / f"{name}.yaml"
    mode = "" if "mode:" in body else "mode: native\n"
    path.write_text(f"name: {name}\n{mode}" + body)
    return path


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "out"
