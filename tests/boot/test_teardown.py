"""No QEMU outlives patchscope, even when patchscope itself is killed with SIGKILL (no finally runs then)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, running

pytestmark = pytest.mark.boot

LAUNCH = r'''
import sys, time
from framework.kernel.image import prepare_kernel
from framework.vm.machine import Machine, kernel_cmdline, qemu_argv
from framework.vm.qemu import Qemu, private_socket_dir
from framework.kernel.refs import parse_ref
kernel = prepare_kernel(parse_ref("debian-6.1"))
d = private_socket_dir()
m = Machine(mode="native", kernel=kernel.bzimage, initrd=None, cmdline=kernel_cmdline(),
            qmp_socket=d / "qmp.sock", cpu="max", memory_mib=256)
vm = Qemu(qemu_argv(m), m.qmp_socket, d)
vm.launch()
print(vm.pid, flush=True)
time.sleep(120)
'''



def test_qemu_dies_with_a_killed_patchscope() -> None:
    parent = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert parent.stdout is not None
    qemu = int(parent.stdout.readline())
    assert running(qemu)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while running(qemu) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(qemu), "QEMU outlived a SIGKILLed patchscope"
