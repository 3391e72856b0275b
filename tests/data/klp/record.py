"""Re-record tests/data/klp: the seed-002 modules built against Debian's 6.1 headers and loaded in both orders.

    .venv/bin/python tests/data/klp/record.py            # build, boot natively and as Xen PV dom0, copy

1. builds configs/modules/livepatch-order against linux-headers-6.1.0-56-amd64 (framework.build.kmod);
2. copies the unconverted livepatch modules of the first order (psm_lp_<case>1.ko), debug info stripped,
   as the converter's fixtures;
3. makes an initramfs with the 20 modules and an /init that loads every pair in its order
   (<case>1: target then livepatch, <case>2: livepatch then target), reads each target's
   psm_read() and each livepatch's bytes, then unloads and reloads psm_target_a2 (case a, the
   livepatch still loaded: its module-specific relocation is applied a second time);
4. boots it with ``patchscope boot`` (on a pty, through script(1)) natively and as Xen PV dom0, and
   keeps each console log as console-<mode>.log.

One boot at a time; about 15 s natively and 20 s under Xen on 2 cores.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from framework.build import kmod
from framework.guest.initramfs import Entry, find_busybox, init_script, newc
from framework.kernel.fetch import note_stderr

KERNEL = "6.1.0-56-amd64=6.1.192-2"           # kernels/debian-6.1.yaml
CASES = "abcde"


def wait_for(patch: str) -> str:
    """Wait for the livepatch's transition to end (a later klp_enable_patch would get -EBUSY), then show it."""
    d = f"/sys/kernel/livepatch/{patch}"
    return (f"i=0; while [ \"$(cat {d}/transition 2>/dev/null)\" = 1 ] && [ $i -lt 100 ]; do sleep 0.1; "
            f"i=$((i+1)); done; echo enabled=$(cat {d}/enabled 2>&1) transition=$(cat {d}/transition 2>&1)")


def commands() -> list[str]:
    cmds = ["grep -w -e xen_save_fl_direct -e native_save_fl -e pv_ops /proc/kallsyms"]
    for case in CASES:
        m1, p1, m2, p2 = f"psm_target_{case}1", f"psm_lp_{case}1", f"psm_target_{case}2", f"psm_lp_{case}2"
        cmds += [f"insmod /lib/modules/{m1}.ko", f"insmod /lib/modules/{p1}.ko", wait_for(p1),
                 f"cat /sys/module/{m1}/parameters/value", f"cat /sys/module/{p1}/parameters/text"]
        cmds += [f"insmod /lib/modules/{p2}.ko", wait_for(p2), f"insmod /lib/modules/{m2}.ko", wait_for(p2),
                 f"cat /sys/module/{m2}/parameters/value", f"cat /sys/module/{p2}/parameters/text"]
    cmds += ["rmmod psm_target_a2", "insmod /lib/modules/psm_target_a2.ko", "cat /sys/module/psm_lp_a2/parameters/text",
             "grep -w -e psm_value -e psm_ops -e psm_read -e psm_lp_read /proc/kallsyms", "lsmod",
             "cat /proc/sys/kernel/tainted"]
    return cmds


def initramfs(modules: list[Path]) -> bytes:
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG
    cmds = commands()
    entries = [Entry(n, d) for n in ("bin", "dev", "etc", "lib", "lib/modules", "patchscope", "proc", "root", "sbin",
                                     "sys", "tmp", "usr", "usr/bin", "usr/sbin")]
    entries += [Entry("bin/busybox", f | 0o755, find_busybox(note_stderr).read_bytes()),
                Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
                Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
                Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
                Entry("init", f | 0o755, init_script(cmds).encode())]
    entries += [Entry(f"patchscope/cmd-{n}.sh", f | 0o644, (c + "\n").encode()) for n, c in enumerate(cmds, start=1)]
    entries += [Entry(f"lib/modules/{ko.name}", f | 0o644, ko.read_bytes()) for ko in modules]
    return newc(sorted(entries, key=lambda e: e.name))


def main() -> None:
    modules = kmod.build_module_dir(KERNEL, REPO / "configs" / "modules" / "livepatch-order", note_stderr)
    for case in CASES:
        original = next(ko for ko in modules if ko.name == f"psm_lp_{case}1.ko").with_suffix(".ko.unconverted")
        subprocess.run(["objcopy", "--strip-debug", str(original), str(HERE / f"psm_lp_{case}1.ko")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        cpio = Path(tmp) / "initramfs.cpio"
        cpio.write_bytes(initramfs(modules))
        for mode in ("native", "xen-pv"):
            out = Path(tmp) / mode
            cmd = (f"{sys.executable} -m framework.cli boot --kernel debian-6.1 --mode {mode} "
                   f"--initramfs {cpio} --artifacts {out}")
            subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=REPO, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, check=True, timeout=900)
            shutil.copyfile(next(out.rglob("console.log")), HERE / f"console-{mode}.log")
            print(f"recorded {HERE / f'console-{mode}.log'}")


if __name__ == "__main__":
    main()
