#!/usr/bin/env python3
"""Cost of a full patch-event trace on the Debian 6.1 kernel, against the same boot without a debugger.

Per mode (native, Xen PV dom0), interleaved rounds of:

- plain:  ``patchscope run`` of a config that only boots (no debugger attached);
- plugin: ``patchscope trace --tracer plugin`` (the TCG plugin logs every store
  into text; the guest stops once, at its marker, for the self-check's capture);
- breakpoints: ``patchscope trace --tracer breakpoints`` (every text_poke_early /
  text_poke call stopped at, snapshots at start_kernel, alternative_instructions
  and its return), through the remote protocol spoken directly (rsp.py);

and, with ``--per-stop N``, the cost of one stop through each debugger side by
side: a scenario that stops at the first N text_poke_early calls and records
their arguments, run through GDB/MI and through the remote protocol (both
step over the breakpoint: GDB by removing and re-inserting it, rsp.py with a
single step), against the same boot without a debugger.
Prints the medians of the time to the success marker and of the whole
command, their ratios, the number of text writes recorded, and the cost per stop.

    .venv/bin/python bench/trace.py [--rounds 2] [--mode native|xen-pv|both] [--tracer plugin|breakpoints|both]
                                    [--per-stop 5000]
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


def traced(tmp: Path, mode: str, n: int, tracer: str) -> tuple[float, float, dict[str, Any]]:
    out = tmp / f"trace-{tracer}{n}"
    wall, proc = patchscope("trace", "--mode", mode, "--summary", "--tracer", tracer, "--artifacts", str(out))
    if proc.returncode != 0:
        sys.exit(f"trace failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    result = json.loads((out / "trace" / mode / "result.json").read_text())
    return marker(result), wall, result["sites"]["trace"]


def per_stop(tmp: Path, mode: str, stops: int) -> None:
    """Seconds a stop costs through GDB/MI and through the remote protocol, side by side."""
    from framework.config import load_config
    from framework.pipeline import RunRequest, execute

    cfg_path = tmp / f"stops-{mode}.yaml"
    cfg_path.write_text(f"name: bench-stops\nmode: {mode}\ntimeout: 900\nexpect: {{outcome: boots}}\n"
                        f"scenario:\n  max_stops: {stops}\n  rules:\n    - on: text_poke_early\n"
                        f"      do: [record]\n")
    cfg = load_config(cfg_path)
    times: dict[str, float] = {}
    for debugger in ("rsp", "gdb"):
        req = RunRequest(cfg, mode, tmp / f"stops-{debugger}", debugger=debugger)
        data = execute(req, lambda _: None).data
        if data["verdict"] == "error":
            sys.exit(f"{debugger}: {data.get('error')}")
        times[debugger] = marker(data)
    base, _ = plain(tmp, mode, 100)
    rsp, gdb = ((times[d] - base) / stops * 1000 for d in ("rsp", "gdb"))
    print(f"[{mode}] {stops} stops at text_poke_early, stepped over: no debugger {base:.2f} s; "
          f"remote protocol {times['rsp']:.2f} s ({rsp:.2f} ms a stop); GDB/MI {times['gdb']:.2f} s "
          f"({gdb:.2f} ms a stop): GDB/MI costs {gdb / rsp:.1f}x a stop", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", choices=("native", "xen-pv", "both"), default="both")
    ap.add_argument("--tracer", choices=("plugin", "breakpoints", "both"), default="both")
    ap.add_argument("--per-stop", type=int, default=0, metavar="N",
                    help="also the cost of N stops through GDB/MI and the remote protocol")
    args = ap.parse_args()
    modes = ["native", "xen-pv"] if args.mode == "both" else [args.mode]
    tracers = ["plugin", "breakpoints"] if args.tracer == "both" else [args.tracer]
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for mode in modes:
            plain(tmp, mode, -1)   # warm-up: fetches, caches, the plugin's build
            rows: dict[str, list[float]] = {"pm": [], "pw": []}
            summary: dict[str, dict[str, Any]] = {}
            for n in range(args.rounds):
                pm, pw = plain(tmp, mode, n)
                rows["pm"].append(pm)
                rows["pw"].append(pw)
                line = f"[{mode}] round {n + 1}: no debugger {pm:6.2f} s to marker, {pw:6.2f} s wall"
                for tracer in tracers:
                    tm, tw, summary[tracer] = traced(tmp, mode, n, tracer)
                    rows.setdefault(f"{tracer}m", []).append(tm)
                    rows.setdefault(f"{tracer}w", []).append(tw)
                    line += (f" | {tracer} {tm:6.2f} s to marker, {tw:6.2f} s wall, "
                             f"{summary[tracer]['events']} writes, {summary[tracer]['stops']} stops")
                print(line, flush=True)
            med = {k: statistics.median(v) for k, v in rows.items()}
            print(f"[{mode}] medians: no debugger {med['pm']:.2f} s to marker / {med['pw']:.2f} s wall", flush=True)
            for tracer in tracers:
                got = summary[tracer]
                per = ""
                if tracer == "breakpoints":
                    per = f"; {(med[tracer + 'm'] - med['pm']) / max(1, got['stops']) * 1000:.2f} ms a stop"
                print(f"[{mode}] {tracer}: {med[tracer + 'm']:.2f} s / {med[tracer + 'w']:.2f} s; ratio to marker "
                      f"{med[tracer + 'm'] / med['pm']:.2f}, whole command {med[tracer + 'w'] / med['pw']:.2f}; "
                      f"{got['events']} writes ({json.dumps(got['counts'])}){per}; "
                      f"self-check: {got['self_check']['summary']}", flush=True)
            if args.per_stop:
                per_stop(tmp, mode, args.per_stop)


if __name__ == "__main__":
    main()
