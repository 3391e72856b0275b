from __future__ import annotations

from pathlib import Path

import pytest

from framework.vm import machine


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


def _xen(**kw: object) -> machine.Machine:
    args: dict[str, object] = {"mode": "xen-pv", "kernel": Path("/k/bzImage"), "initrd": Path("/k/i.cpio"),
                               "cmdline": machine.kernel_cmdline(["debug"], "xen-pv"),
                               "qmp_socket": Path("/s/qmp.sock"), "cpu": machine.DEFAULT_CPU["xen-pv"],
                               "memory_mib": 1024, "hypervisor": Path("/x/xen"),
                               "xen_cmdline": machine.xen_cmdline(256, ["loglvl=all"])}
    args.update(kw)
    return machine.Machine(**args)  # type: ignore[arg-type]


def test_xen_pv_command_line_boots_xen_with_dom0_as_a_multiboot_module() -> None:
    argv = machine.qemu_argv(_xen())
    assert argv[argv.index("-kernel") + 1] == "/x/xen"
    assert argv[argv.index("-append") + 1] == \
        "console=com1 com1=115200,8n1 noreboot dom0_mem=256M,max:256M loglvl=all"
    assert argv[argv.index("-initrd") + 1] == "/k/bzImage console=hvc0 panic=-1 debug,/k/i.cpio"
    assert argv[argv.index("-cpu") + 1] == "max,-smap,-smep"   # -cpu max kills dom0 under TCG
    assert "-no-reboot" in argv


def test_xen_pv_without_initramfs_and_bad_module_paths() -> None:
    argv = machine.qemu_argv(_xen(initrd=None))
    assert argv[argv.index("-initrd") + 1] == "/k/bzImage console=hvc0 panic=-1 debug"
    with pytest.raises(ValueError, match="multiboot loader cannot take"):
        machine.qemu_argv(_xen(initrd=Path("/k/a,b.cpio")))
    with pytest.raises(ValueError, match="needs a hypervisor"):
        machine.qemu_argv(_xen(hypervisor=None))


def test_boot_gdb_stops_with_a_one_shot_breakpoint() -> None:
    from framework.observe.debug import gdb_argv
    argv = gdb_argv(Path("/k/vmlinux.syms"), Path("/s/gdb.sock"), "xen_start_kernel", hardware=False)
    assert argv[argv.index("target remote /s/gdb.sock") - 1] == "-ex"
    assert "tbreak xen_start_kernel" in argv and "break xen_start_kernel" not in argv
    assert "thbreak xen_start_kernel" in gdb_argv(None, Path("/s/gdb.sock"), "xen_start_kernel", hardware=True)
