"""`patchscope boot`: the console is attached to the terminal, the guest answers, Ctrl-] quits.

Under Xen, the keyboard reaches dom0's hvc0 through Xen's com1 ("Serial input to DOM0")."""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest

from tests.conftest import running, spawn_patchscope

pytestmark = pytest.mark.boot


@pytest.mark.parametrize("mode", ["native", "xen-pv"])
def test_boot_gives_a_shell_and_ctrl_close_bracket_quits(tmp_path: Path, mode: str) -> None:
    child = spawn_patchscope("boot", "--artifacts", str(tmp_path), "--mode", mode, "--cmdline", "quiet")
    try:
        child.expect("console attached; Ctrl-] quits")
        child.expect("patchscope: shell")
        child.expect("[#$] ")
        child.sendline("echo answer=$((6*7))")
        child.expect("answer=42")
        child.send("\x1d")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    log = (tmp_path / "boot" / mode / "console.log").read_text()
    assert "answer=42" in log
    pid = int((tmp_path / "boot" / mode / "qemu.pid").read_text())
    assert not running(pid)
