#!/usr/bin/env python3
"""``patchscope sites`` (static) on Debian 6.1 and 6.12: a fresh process each time, warm page cache.

6.12 carries three more tables than 6.1 (.call_sites alone holds 237,717
entries) and its paravirt table is derived from .altinstructions, so reading it
costs more; this measures how much. Each round runs the real command
(``python -m framework.cli sites --kernel K``, output discarded) once per kernel,
interleaved, after one unmeasured warm-up run each; it prints the medians and
their ratio.

    .venv/bin/python bench/sites_kernels.py [--rounds 5] [--kernel debian-6.1 --kernel debian-6.12]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def once(kernel: str) -> tuple[float, int]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "sites", "--kernel", kernel], cwd=REPO,
                          capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"patchscope sites --kernel {kernel} failed ({proc.returncode}): {proc.stderr.strip()}")
    sites = sum(int(line.split()[1]) for line in proc.stdout.splitlines()[2:]
                if line.startswith("  ") and len(line.split()) > 1 and line.split()[1].isdigit())
    return took, sites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kernel", action="append", help="kernels to compare (default: debian-6.1 and debian-6.12)")
    args = ap.parse_args()
    kernels = args.kernel or ["debian-6.1", "debian-6.12"]
    times: dict[str, list[float]] = {k: [] for k in kernels}
    sites: dict[str, int] = {}
    for k in kernels:
        once(k)                       # warm the page cache (and prepare the kernel once)
    for _ in range(args.rounds):
        for k in kernels:
            took, sites[k] = once(k)
            times[k].append(took)
    base = statistics.median(times[kernels[0]])
    print(f"patchscope sites (static), fresh process, warm page cache, median of {args.rounds}:")
    for k in kernels:
        med = statistics.median(times[k])
        print(f"  {k:<14} {sites[k]:>8} sites  {med:6.2f} s  (min {min(times[k]):.2f}, max {max(times[k]):.2f})"
              f"  ratio {med / base:.2f}")


if __name__ == "__main__":
    main()
