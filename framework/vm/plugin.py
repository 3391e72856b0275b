"""The text-write tracer's TCG plugin: built with the host's gcc, cached; the QEMU arguments that load it.

The plugin reads each store's value back from guest RAM, so the guest's RAM is
a memory-backend-file shared with it: an anonymous memory file (memfd) that
patchscope holds open and both QEMU and the plugin open through
``/proc/<patchscope's pid>/fd/<n>``. Nothing is left on any filesystem, even
when patchscope is killed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolMissingError, UnsupportedError
from ..kernel.fetch import cache_dir, locked

SOURCE = Path(__file__).with_name("plugin") / "textwrites.c"
CFLAGS = ("-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter")
BACKEND_ID = "patchscope.ram"
# The PC machine keeps RAM below 4 GiB up to here (gigabyte-aligned) when there is 3.5 GiB or more.
PC_LOWMEM_LIMIT = 0xE0000000
PC_LOWMEM_SPLIT = 0xC0000000


@functools.cache
def _compiler_id(gcc: str) -> str:
    """gcc's first --version line, part of the cache key; asked once a process (a traced run builds twice:
    to choose the tracer, then to load it)."""
    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else gcc


def build_plugin(note: Callable[[str], None] | None = None) -> Path:
    """The plugin's shared object, built once per source and compiler (cached); UnsupportedError if gcc fails."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolMissingError("gcc", "gcc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + _compiler_id(gcc).encode() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    folder = cache_dir() / "plugins"
    final = folder / f"textwrites-{key}.so"
    if final.exists():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    with locked("plugin"):
        if final.exists():
            return final
        if note:
            note(f"trace: building the text-write plugin ({SOURCE.name}) with {gcc}")
        tmp = final.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([gcc, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            said = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines() or ["?"]
            raise UnsupportedError(f"the text-write plugin does not build with {gcc}: {said[0][:200]}; "
                                   "trace with --tracer breakpoints")
        tmp.replace(final)
    return final


@dataclass(frozen=True)
class PluginSetup:
    """What the plugin is told: where to log, the guest RAM, the text, the functions to watch."""

    log: Path
    ram: str                                    # the RAM file's path (see GuestRam)
    ram_bytes: int
    text: tuple[tuple[int, int], ...]          # virtual [start, end) of each text region
    watches: tuple[str, ...]                    # "watch=ID:START:END:KIND" arguments (textwrites.Watch.arg)
    arm: tuple[int, int]                        # logging starts at the first instruction run in here
    free: tuple[int, tuple[int, int]] | None = None     # free_initmem's address, and the init text it frees
    return_thunk: int | None = None


def lowmem(ram_bytes: int) -> int:
    """How much RAM QEMU's PC machine maps below 4 GiB (the rest is mapped from 4 GiB on)."""
    return PC_LOWMEM_SPLIT if ram_bytes >= PC_LOWMEM_LIMIT else ram_bytes


def _page_range(lo: int, hi: int) -> str:
    return f"{lo & ~0xFFF:x}-{(hi + 0xFFF) & ~0xFFF:x}"


def plugin_args(so: Path, setup: PluginSetup) -> list[str]:
    """QEMU's arguments: the RAM as a shared file backend, and the plugin with its arguments."""
    for path in (str(so), str(setup.log), setup.ram):
        if "," in path:
            raise UnsupportedError(f"{path}: QEMU's -plugin and -object options cannot take a path with ','")
    args = [str(so), f"out={setup.log}", f"ram={setup.ram}", f"ramsize={setup.ram_bytes:#x}",
            f"lowmem={lowmem(setup.ram_bytes):#x}", *(f"vtext={_page_range(lo, hi)}" for lo, hi in setup.text),
            f"arm={setup.arm[0]:x}-{setup.arm[1]:x}", *setup.watches]
    if setup.free is not None:
        at, (lo, hi) = setup.free
        args.append(f"free={at:x}:{lo:x}-{hi:x}")
    if setup.return_thunk is not None:
        args.append(f"thunk={setup.return_thunk:x}")
    return ["-machine", f"memory-backend={BACKEND_ID}",
            "-object", f"memory-backend-file,id={BACKEND_ID},size={setup.ram_bytes},mem-path={setup.ram},share=on",
            "-plugin", ",".join(args)]


class GuestRam:
    """An anonymous file for the guest's RAM, open in this process; QEMU and the plugin open it by its /proc path."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("patchscope-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def text_args(text: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Text regions merged where their pages touch (the plugin tests a store against each)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(text):
        if merged and lo <= ((merged[-1][1] + 0xFFF) & ~0xFFF):
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)
