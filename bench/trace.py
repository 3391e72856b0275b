#!/usr/bin/env python3
"""Cost of a full patch-event trace on the Debian 6.1 kernel, against the same boot without a debugger.

Per mode (native, Xen PV dom0), interleaved rounds of:

- plain:  ``patchscope run`` of a config that only boots (no debugger attached);
- traced: ``patchscope trace`` (every text_poke_early / text_poke call stopped at,
  snapshots at start_kernel, alternative_instructions and its return), through
  the remote protocol spoken directly (rsp.py);

and, with ``--gdb``, one traced boot through GDB/MI for comparison (slow: minutes).
Prints the medians of the time to the success marker and of the whole
command, their ratios, the number of text writes recorded, and the cost per stop.

    .venv/bin/python bench/trace.py [--rounds 2] [--mode native|xen-pv|both] [--gdb]
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def patchscope(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)
    return time.monotonic() - start, proc


def marker(result: dict[str, Any]) -> float:
    return float(next(s["t"] for s in result["stages"] if s["name"] == "init-done"))


def plain(tmp: Path, mode: str, n: int) -> tuple[float, float]:
    cfg = tmp / f"plain-{mode}.yaml"
    cfg.write_text(f"name: bench-plain\nmode: {mode}\ntimeout: 300\nexpect: {{outcome: boots}}\n")
    out = tmp / f"plain{n}"
    wall, proc = patchscope("run", str(cfg), "--artifacts", str(out), "-q")
    if proc.returncode != 0:
        sys.exit(f"plain boot failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return marker(json.loads((out / "bench-plain" / mode / "result.json").read_text())), wall


def traced(tmp: Path, mode: str, n: int, debugger: str) -> tuple[float, float, dict[str, Any]]:
    out = tmp / f"trace{n}-{debugger}"
    wall, proc = patchscope("trace", "--mode", mode, "--summary", "--debugger", debugger, "--artifacts", str(out))
    result = json.loads((out / "trace" / mode / "result.json").read_text())
    if proc.returncode != 0:
        sys.exit(f"trace failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return marker(result), wall, result["sites"]["trace"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", choices=("native", "xen-pv", "both"), default="both")
    ap.add_argument("--gdb", action="store_true", help="also one traced boot through GDB/MI")
    args = ap.parse_args()
    modes = ["native", "xen-pv"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for mode in modes:
            plain(tmp, mode, -1)   # warm-up: fetches, caches
            rows: dict[str, list[float]] = {"pm": [], "pw": [], "tm": [], "tw": []}
            summary: dict[str, Any] = {}
            for n in range(args.rounds):
                pm, pw = plain(tmp, mode, n)
                tm, tw, summary = traced(tmp, mode, n, "rsp")
                for key, value in zip(rows, (pm, pw, tm, tw)):
                    rows[key].append(value)
                print(f"[{mode}] round {n + 1}: no debugger {pm:6.2f} s to marker, {pw:6.2f} s wall | "
                      f"traced {tm:6.2f} s to marker, {tw:6.2f} s wall, {summary['events']} writes, "
                      f"{summary['stops']} stops", flush=True)
            med = {k: statistics.median(v) for k, v in rows.items()}
            per_stop = (med["tm"] - med["pm"]) / max(1, summary["stops"]) * 1000
            print(f"[{mode}] medians: no debugger {med['pm']:.2f} s / {med['pw']:.2f} s; traced "
                  f"{med['tm']:.2f} s / {med['tw']:.2f} s; ratio to marker {med['tm'] / med['pm']:.1f}, "
                  f"whole command {med['tw'] / med['pw']:.1f}; {summary['events']} writes "
                  f"({json.dumps(summary['counts'])}); {per_stop:.2f} ms a stop; "
                  f"self-check: {summary['self_check']['summary']}", flush=True)
            if args.gdb:
                gm, gw, gsum = traced(tmp, mode, 99, "gdb")
                print(f"[{mode}] through GDB/MI: {gm:.2f} s to marker, {gw:.2f} s wall "
                      f"({gm / med['tm']:.1f}x the direct protocol), {gsum['events']} writes; "
                      f"{(gm - med['pm']) / max(1, gsum['stops']) * 1000:.2f} ms a stop", flush=True)


if __name__ == "__main__":
    main()
