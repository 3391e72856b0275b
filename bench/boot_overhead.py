#!/usr/bin/env python3
"""Boot overhead: bare qemu-system-x86_64 against `patchscope run`, same kernel, same initramfs.

Interleaved rounds (bare, patchscope, bare, patchscope, …) so machine noise hits
both alike. Each side is timed from process start to QEMU's exit after the
guest printed the success marker and powered off. Prints the medians and the
ratio, per mode: natively, and as Xen PV dom0 (bare QEMU+Xen against
`patchscope run --mode xen-pv`).

    .venv/bin/python bench/boot_overhead.py [--rounds 5] [--mode native|xen-pv|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = b"patchscope: init done"


def bare(argv: list[str]) -> tuple[float, float]:
    """(seconds to the marker, seconds to QEMU's exit) for a plain QEMU run."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    marker_at: float | None = None
    for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
        seen += chunk
        if marker_at is None and MARKER in seen:
            marker_at = time.monotonic() - start
    proc.wait()
    if MARKER not in seen:
        sys.exit(f"bare QEMU did not reach the marker; output tail: {seen[-500:]!r}")
    assert marker_at is not None
    return marker_at, time.monotonic() - start


CONFIGS = {"native": REPO / "configs/boot-native.yaml", "xen-pv": REPO / "configs/boot-xen-pv.yaml"}


def patchscope(config: Path, out: Path, mode: str) -> tuple[float, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(config), "--mode", mode,
                           "--artifacts", str(out), "-q"], cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"patchscope run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    data = json.loads(next(out.glob(f"*/{mode}/result.json")).read_text())
    marker = next(s["t"] for s in data["stages"] if s["name"] == "init-done")
    return marker, wall


def bare_argv(run_dir: Path, tmp: Path) -> list[str]:
    """The run's own QEMU command line, with its initramfs copied aside and no QMP."""
    argv = shlex.split((run_dir / "qemu.cmdline").read_text())
    initrd = tmp / "initramfs.cpio"
    initrd.write_bytes((run_dir / "initramfs.cpio").read_bytes())
    argv = [a.replace(str(run_dir / "initramfs.cpio"), str(initrd)) for a in argv]
    i = argv.index("-qmp")
    del argv[i:i + 2]
    i = argv.index("-chardev")
    del argv[i:i + 2]
    argv[argv.index("-serial") + 1] = "stdio"
    return argv


def measure(mode: str, rounds: int) -> dict[str, float]:
    config = CONFIGS[mode]
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-") as tmp:
        out = Path(tmp) / "out"
        # One warm-up run fetches what is missing and leaves the exact QEMU command line behind.
        patchscope(config, out, mode)
        argv = bare_argv(next(out.glob(f"*/{mode}")), Path(tmp))
        rows: dict[str, list[float]] = {"bare_marker": [], "bare_exit": [], "ps_marker": [], "ps_wall": []}
        for n in range(rounds):
            bm, be = bare(argv)
            pm, pw = patchscope(config, out, mode)
            for key, value in zip(rows, (bm, be, pm, pw)):
                rows[key].append(value)
            print(f"[{mode}] round {n + 1}: bare {bm:5.2f} s to marker, {be:5.2f} s to exit | "
                  f"patchscope {pm:5.2f} s to marker, {pw:5.2f} s wall", flush=True)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=("native", "xen-pv", "both"), default="both")
    args = ap.parse_args()
    modes = ["native", "xen-pv"] if args.mode == "both" else [args.mode]
    medians = {mode: measure(mode, args.rounds) for mode in modes}
    print(f"\nmedians over {args.rounds} interleaved rounds ({os.cpu_count()} cores, TCG):")
    for mode, med in medians.items():
        print(f"  {mode:7} bare QEMU   to marker {med['bare_marker']:5.2f} s, to exit {med['bare_exit']:5.2f} s")
        print(f"  {mode:7} patchscope  to marker {med['ps_marker']:5.2f} s, whole command {med['ps_wall']:5.2f} s")
        print(f"  {mode:7} ratio whole command / bare to exit: {med['ps_wall'] / med['bare_exit']:.2f}; "
              f"to marker: {med['ps_marker'] / med['bare_marker']:.2f}")


if __name__ == "__main__":
    main()
