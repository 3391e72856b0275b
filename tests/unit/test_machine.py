from __future__ import annotations

from pathlib import Path

import pytest

from framework import machine


def _native(**kw: object) -> machine.Machine:
    args: dict[str, object] = {"mode": "native", "kernel": Path("/k/bzImage"), "initrd": Path("/k/i.cpio"),
                               "cmdline": machine.kernel_cmdline(["debug"]), "qmp_socket": Path("/s/qmp.sock"),
                               "cpu": "max", "memory_mib": 512}
    args.update(kw)
    return machine.Machine(**args)  # type: ignore[arg-type]


def test_native_command_line() -> None:
    argv = machine.qemu_argv(_native())
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 nokaslr debug"
    assert argv[argv.index("-kernel") + 1] == "/k/bzImage"
    assert argv[argv.index("-initrd") + 1] == "/k/i.cpio"
    assert "-no-reboot" in argv and argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-qmp") + 1] == "unix:/s/qmp.sock,server=on,wait=off"


def test_nothing_listens_on_tcp() -> None:
    argv = machine.qemu_argv(_native(gdb_socket=Path("/s/gdb.sock"), stopped=True))
    joined = " ".join(argv)
    assert "tcp:" not in joined and "-s" not in argv
    assert argv[argv.index("-gdb") + 1].startswith("unix:/s/gdb.sock")
    assert "-S" in argv


def test_no_initrd_and_extra_args_last() -> None:
    argv = machine.qemu_argv(_native(initrd=None, extra=("-device", "virtio-rng-pci")))
    assert "-initrd" not in argv
    assert argv[-2:] == ["-device", "virtio-rng-pci"]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        machine.qemu_argv(_native(mode="xen-hvm"))


def test_kvm_probe_boots_the_kernel_itself() -> None:
    argv = machine.kvm_probe_argv(Path("/k/bzImage"))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-kernel") + 1] == "/k/bzImage"
