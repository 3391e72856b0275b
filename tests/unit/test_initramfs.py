"""The newc writer, checked by the system's own cpio, and the generated /init."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from framework.guest import initramfs
from framework.guest.initramfs import Entry, newc

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")


@needs_cpio
def test_newc_lists_and_extracts_with_system_cpio(tmp_path: Path) -> None:
    archive = newc([
        Entry("bin", stat.S_IFDIR | 0o755),
        Entry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        Entry("bin/link", stat.S_IFLNK | 0o777, b"hello"),
        Entry("odd", stat.S_IFREG | 0o644, b"x" * 5),  # length not a multiple of 4
    ])
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/hello", "bin/link", "odd"]
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=archive,
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/hello").stat().st_mode & 0o111
    assert (tmp_path / "bin/link").is_symlink() and (tmp_path / "bin/link").readlink() == Path("hello")
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def test_newc_is_deterministic_and_aligned() -> None:
    entries = [Entry("a", stat.S_IFREG | 0o644, b"abc")]
    assert newc(entries) == newc(entries)
    assert len(newc(entries)) % 512 == 0
    assert newc(entries).startswith(b"070701")
    assert b"TRAILER!!!" in newc(entries)


@needs_cpio
def test_build_holds_console_device_init_and_commands() -> None:
    archive = initramfs.build(b"\x7fELF-fake-busybox", ["echo 'one two'", "cat /proc/interrupts"])
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True)
    text = listing.stdout.decode()
    assert "dev/console" in text and text.split("dev/console")[0].splitlines()[-1].startswith("crw")
    names = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True,
                           check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "patchscope/cmd-1.sh", "patchscope/cmd-2.sh"} <= set(names)


def test_init_script_marks_each_command_and_ends_with_poweroff() -> None:
    script = initramfs.init_script(["echo 'quoted; stuff'", "false"])
    assert script.startswith("#!/bin/busybox sh\n")
    lines = script.splitlines()
    assert lines.index(f"echo '{initramfs.MARKER_USERSPACE}'") < lines.index("sh /patchscope/cmd-1.sh")
    assert "sh /patchscope/cmd-2.sh" in lines
    assert 'echo "patchscope: exit 2: $?"' in lines
    assert lines[-1] == "poweroff -f"
    assert lines.index(f"echo '{initramfs.MARKER_DONE}'") < lines.index("poweroff -f")
    # The command text is shown quoted, so a hostile command cannot break the script.
    assert "echo 'patchscope: run 1: echo '\"'\"'quoted; stuff'\"'\"''" in lines


def test_interactive_init_starts_a_shell_before_poweroff() -> None:
    lines = initramfs.init_script([], interactive=True).splitlines()
    assert lines.index("setsid cttyhack sh -l") < lines.index("poweroff -f")


def test_busybox_found_is_static() -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("no host busybox; fetching is covered by the boot tests")
    assert initramfs.is_static_elf(initramfs.find_busybox())
