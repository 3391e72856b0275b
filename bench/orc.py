#!/usr/bin/env python3
"""The cost of the ORC check (seed 004): the static check over every site of a kernel, in a fresh process.

Two commands, run interleaved (A, B, A, B, …) on the same cached kernel:

    A  patchscope sites --kernel K        (reads every patch-site table: the floor of any static check)
    B  patchscope orc --kernel K --json   (reads the tables and the ORC data, checks every stream of every site)

Prints the medians, B's time, the ratio B/A, and the boundaries B checked (goal of issue 14: B under 5 s).
With --live, also a plain inspected boot against the same boot with inspect.orc (the live check's cost).

    .venv/bin/python bench/orc.py [--rounds 5] [--kernel debian-6.1] [--live]
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
CLI = [sys.executable, "-m", "framework.cli"]


def timed(args: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(CLI + args, cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return took, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernel", default="debian-6.1")
    parser.add_argument("--live", action="store_true", help="also time a boot with inspect.orc against one without")
    args = parser.parse_args()
    timed(["orc", "--kernel", args.kernel, "--json"])     # the kernel fetched and indexed before timing
    sites_t, orc_t = [], []
    report: dict[str, object] = {}
    for _ in range(args.rounds):
        sites_t.append(timed(["sites", "--kernel", args.kernel])[0])
        took, out = timed(["orc", "--kernel", args.kernel, "--json"])
        orc_t.append(took)
        report = json.loads(out)
    total = report["total"]
    assert isinstance(total, dict)
    a, b = statistics.median(sites_t), statistics.median(orc_t)
    print(f"{args.kernel}, {args.rounds} rounds, fresh processes, medians:")
    print(f"  patchscope sites (tables only)      {a:6.2f} s")
    print(f"  patchscope orc   (static check)     {b:6.2f} s   ({b / a:.2f}x the tables alone; goal < 5 s)")
    print(f"  boundaries checked {total['boundaries']} in {total['streams']} streams at {total['sites']} sites: "
          f"{total['agree']} agree, {total['disagree']} disagree, {total['unknown']} not simulated")
    if args.live:
        with tempfile.TemporaryDirectory() as tmp:
            plain, checked = Path(tmp, "plain.yaml"), Path(tmp, "orc.yaml")
            plain.write_text(f"name: plain\nmode: native\nkernel: {args.kernel}\ninspect: {{capture: booted}}\n")
            checked.write_text(f"name: orc\nmode: native\nkernel: {args.kernel}\n"
                               "inspect: {capture: booted, orc: true}\nexpect: {orc_known: ['^__switch_to_asm\\+']}\n")
            runs: dict[str, list[float]] = {"plain": [], "orc": []}
            for _ in range(max(1, args.rounds // 2)):
                for name, path in (("plain", plain), ("orc", checked)):
                    runs[name].append(timed(["run", str(path), "--artifacts", str(Path(tmp, "out"))])[0])
            p, o = statistics.median(runs["plain"]), statistics.median(runs["orc"])
            print(f"  live: inspected boot {p:.1f} s, with inspect.orc {o:.1f} s ({o / p:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
