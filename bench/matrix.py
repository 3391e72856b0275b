#!/usr/bin/env python3
"""Matrix parallelism: the same matrix at -j 1 and at -j 2, interleaved, side by side.

The matrix is every shipped config that runs in both modes, on the default
kernel, natively and as Xen PV dom0 (the cells a night spends most of its time on).
Rounds alternate -j 1 and -j 2 so machine noise hits both alike; prints each
round's wall time, the medians and the speedup (goal on 2 cores: >= 1.8x).

    .venv/bin/python bench/matrix.py [--rounds 2] [--matrix FILE] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULT_MATRIX = """\
name: bench
kernels: [debian-6.1]
modes: [native, xen-pv]
configs: ["{configs}/*.yaml"]
"""


def run(matrix: Path, jobs: int, out: Path) -> tuple[float, dict[str, int]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "matrix", str(matrix), "-j", str(jobs),
                           "--artifacts", str(out), "-q"], cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"patchscope matrix -j {jobs} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    counts: dict[str, int] = json.loads((out / "results.json").read_text())["counts"]
    return wall, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="the parallel side (default 2)")
    ap.add_argument("--matrix", type=Path, help="a matrix file instead of the default one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        base = Path(tmp)
        matrix = args.matrix
        if matrix is None:
            matrix = base / "bench.yaml"
            matrix.write_text(DEFAULT_MATRIX.format(configs=REPO / "configs"))
        times: dict[int, list[float]] = {1: [], args.jobs: []}
        for r in range(args.rounds):
            for jobs in (1, args.jobs):
                wall, counts = run(matrix, jobs, base / f"r{r}-j{jobs}")
                times[jobs].append(wall)
                ran = {k: v for k, v in counts.items() if v}
                print(f"round {r + 1}: -j {jobs}: {wall:7.1f} s  {ran}", flush=True)
        one, many = statistics.median(times[1]), statistics.median(times[args.jobs])
        print(f"median -j 1: {one:.1f} s   -j {args.jobs}: {many:.1f} s   speedup: {one / many:.2f}x")


if __name__ == "__main__":
    main()
