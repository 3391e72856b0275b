"""``patchscope check LOG`` loads only what it uses (issue 16: 0.35 s for an empty log, almost all of it importing
the debugger, the ELF readers and the disassembler): checked on the modules a fresh process has loaded, not on
time, which this machine cannot promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# What a check of a plain log must never import.
HEAVY = ("capstone", "elftools", "yaml", "pygdbmi", "framework.pipeline", "framework.config", "framework.debugger",
         "framework.elf", "framework.observe", "framework.kernel", "framework.vm", "framework.matrix",
         "framework.bisect", "framework.build", "framework.verdict", "framework.report")

PROBE = """
import json, sys
from framework.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:          # argparse's own errors
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(*argv: str) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    last = proc.stdout.strip().splitlines()[-1]
    data = json.loads(last)
    return data["code"], data["modules"], proc.stdout


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_check_of_a_log_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[    0.000000] Linux version 6.1.0\n[    1.0] Kernel panic - not syncing: x\n")
    code, modules, out = loaded("check", str(log))
    assert code == 0 and "kernel panic: x" in out
    assert heavy(modules) == []


def test_other_commands_still_find_their_modules(tmp_path: Path) -> None:
    # build_parser(command) leaves other modules' commands out; their own command must still parse and run.
    code, modules, _ = loaded("report", "merge", str(tmp_path / "none"), str(tmp_path / "out"))
    assert code == 2 and "framework.matrix.commands" in modules


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["-h", "check"]])
def test_help_lists_every_command_when_asked_for_it(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "framework.cli", *argv], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0
    if argv[0] != "check":
        assert all(cmd in proc.stdout for cmd in ("run", "check", "matrix", "bisect", "build", "orc"))


def test_a_mistyped_command_is_told_from_the_whole_list() -> None:
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "chek", "x.log"], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and "invalid choice: 'chek'" in proc.stderr and "matrix" in proc.stderr
