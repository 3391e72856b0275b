"""What importing the config loads: no ELF, disassembly or debugger library, and no import cycle.

Each check runs in a fresh interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_config_loads_no_elf_disassembly_or_debugger_library() -> None:
    loaded = _run("import framework.config, sys; "
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('elftools', 'capstone', 'pygdbmi', 'pexpect')))")
    assert loaded == "[]"


def test_scenario_does_not_import_config() -> None:
    assert _run("import framework.scenario, sys; print('framework.config' in sys.modules)") == "False"


def test_yamlnode_knows_no_config_or_scenario() -> None:
    code = ("import framework.yamlnode, sys; "
            "print(sorted(m for m in sys.modules if m.startswith(('framework.config', 'framework.scenario'))))")
    assert _run(code) == "[]"
