"""QEMU command lines, per boot mode. Pure: no processes, no files.

Everything the guest talks through is a unix socket or the console pipe: the
QMP socket and the gdbstub socket live in a private 0700 directory; nothing
listens on TCP (``-s`` would listen on every interface, so it is never used).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..domain import MODES, Mode

QEMU = "qemu-system-x86_64"

# Per mode: the console device, the CPU model and memory that are known to work
# under TCG on these machines (see shared/design/FINDINGS.md). Under Xen PV,
# "-cpu max" exposes SMAP/SMEP to Xen and dom0 dies at its first exception
# bounce, so the default leaves them out (configs/xen-pv-smap-tcg.yaml keeps
# that crash as a test).
NATIVE_CONSOLE = "ttyS0"
DEFAULT_CPU = {"native": "max", "xen-pv": "max,-smap,-smep"}
DEFAULT_MEMORY_MIB = {"native": 512, "xen-pv": 1024}

# Kernel arguments patchscope always sets natively: the console, an immediate
# reboot on panic (which -no-reboot turns into a QEMU exit), and link-time
# addresses so symbols and breakpoints line up.
NATIVE_CMDLINE = (f"console={NATIVE_CONSOLE}", "panic=-1", "nokaslr")
# dom0's console is hvc0, which Xen multiplexes onto its own com1; a PV dom0 is
# not randomised.
DOM0_CMDLINE = ("console=hvc0", "panic=-1")
# Xen's: its console on com1, dom0's memory, and no reboot after a crash, so
# the crash report stays the last thing on the console (the monitor ends the run).
XEN_CMDLINE = ("console=com1", "com1=115200,8n1", "noreboot")


@dataclass(frozen=True)
class Machine:
    """What to start: everything needed to build a QEMU command line."""

    mode: Mode
    kernel: Path
    initrd: Path | None
    cmdline: tuple[str, ...]
    qmp_socket: Path
    cpu: str
    memory_mib: int
    smp: int = 1
    accel: Literal["tcg", "kvm"] = "tcg"
    gdb_socket: Path | None = None
    stopped: bool = False           # -S: wait for GDB before the first instruction
    extra: tuple[str, ...] = field(default=())
    hypervisor: Path | None = None  # xen-pv: the Xen ELF QEMU's multiboot loader boots
    xen_cmdline: tuple[str, ...] = ()     # see xen_cmdline(): dom0's memory is one of them


def kernel_cmdline(extra: tuple[str, ...] | list[str] = (), mode: Mode = "native") -> tuple[str, ...]:
    """patchscope's own arguments first; the user's follow and so win where the kernel takes the last."""
    return (DOM0_CMDLINE if mode == "xen-pv" else NATIVE_CMDLINE) + tuple(extra)


def xen_cmdline(dom0_memory_mib: int, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    return XEN_CMDLINE + (f"dom0_mem={dom0_memory_mib}M,max:{dom0_memory_mib}M",) + tuple(extra)


def multiboot_modules(m: Machine) -> str:
    """QEMU's -initrd for multiboot: "<module> <its arguments>,<module>…" (the dom0 kernel, then its initramfs)."""
    for path in (m.kernel, m.initrd):
        if path is not None and ("," in str(path) or " " in str(path)):
            raise ValueError(f"{path}: QEMU's multiboot loader cannot take a module path with ',' or ' '")
    modules = [f"{m.kernel} {' '.join(m.cmdline)}"]
    if m.initrd is not None:
        modules.append(str(m.initrd))
    return ",".join(modules)


def qemu_argv(m: Machine) -> list[str]:
    """The full QEMU argv for ``m``."""
    if m.mode not in MODES:
        raise ValueError(f"no QEMU command line for mode {m.mode!r}")
    if m.mode == "xen-pv" and m.hypervisor is None:
        raise ValueError("xen-pv needs a hypervisor image")
    argv = [
        QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "pc", "-accel", m.accel, "-cpu", m.cpu,
        "-m", str(m.memory_mib), "-smp", str(m.smp),
        # The console is QEMU's stdio; signal=off so a Ctrl-C typed into an
        # interactive console reaches the guest, not QEMU.
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-qmp", f"unix:{m.qmp_socket},server=on,wait=off",
    ]
    if m.mode == "xen-pv":
        assert m.hypervisor is not None
        argv += ["-kernel", str(m.hypervisor), "-append", " ".join(m.xen_cmdline),
                 "-initrd", multiboot_modules(m)]
    else:
        argv += ["-kernel", str(m.kernel), "-append", " ".join(m.cmdline)]
        if m.initrd is not None:
            argv += ["-initrd", str(m.initrd)]
    if m.gdb_socket is not None:
        argv += ["-gdb", f"unix:{m.gdb_socket},server=on,wait=off"]
    if m.stopped:
        argv.append("-S")
    return argv + list(m.extra)


# --- the KVM probe -------------------------------------------------------------
# /dev/kvm can exist and open and still never run the kernel: on these machines a
# 100-byte protected-mode guest runs under KVM while the Debian kernel never
# leaves its decompressor (FINDINGS.md). So the probe boots the kernel under
# test itself, without an initramfs, and KVM counts as usable only when that
# kernel prints its banner within a few seconds.

KVM_PROBE_BANNER = "Linux version"


def kvm_probe_argv(kernel: Path, memory_mib: int = 256) -> list[str]:
    return [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "pc", "-accel", "kvm", "-cpu", "max", "-m", str(memory_mib),
            "-kernel", str(kernel), "-append", f"console={NATIVE_CONSOLE} panic=-1",
            "-serial", "stdio", "-monitor", "none"]
