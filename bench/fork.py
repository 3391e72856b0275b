#!/usr/bin/env python3
"""N experiments forked from one snapshot against the same N experiments as N boots.

A sweep config (default configs/nmi-sweep.yaml: an NMI at 20 moments of boot-time
patching) runs twice per round, side by side:

    forked   patchscope run <config>: one boot to fork.at, savevm, then each point
             from the snapshot (loadvm)
    reboots  each point as a config of its own (its values written in, fork: and
             sweep: left out), one patchscope run per point: N whole boots

Both judge the same scenario and expectations per point; every run must pass (a boot of its
own stops at every earlier arrival too, so its max_stops is raised to the limit). Prints the
whole commands' seconds (median over rounds), the seconds per point, and the ratio. With
--reboots K only K points (evenly spread) are booted, and their mean stands for all N.

    .venv/bin/python bench/fork.py [--rounds 1] [--mode native|xen-pv] [--config configs/nmi-sweep.yaml] [--reboots K]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.config import load_config
from framework.scenario import MAX_STOPS


def run(cfg: Path, out: Path, mode: str) -> float:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(cfg), "--mode", mode,
                           "--artifacts", str(out), "-q"], cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{cfg.name}: patchscope run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return wall


def point_configs(config: Path, directory: Path) -> list[Path]:
    """Each point of the sweep as a plain config: the point's text, without fork: and sweep:."""
    cfg = load_config(config)
    if cfg.sweep is None:
        sys.exit(f"{config}: not a sweep (no sweep:)")
    out = []
    for i in range(len(cfg.sweep.points)):
        kept, skipping = [f"name: {cfg.name}-point-{i + 1}"], False
        for line in cfg.sweep.text(i).splitlines():
            if line[:1] not in ("", " ", "#"):          # a top-level key starts here
                skipping = line.split(":", 1)[0] in ("fork", "sweep", "name")
            if not skipping:
                # a whole boot stops at every earlier arrival too (ftrace_init's 40,521 text_poke_early calls)
                kept.append(re.sub(r"^(\s*max_stops:\s*)\d+", rf"\g<1>{MAX_STOPS}", line))
        path = directory / f"point-{i + 1}.yaml"
        path.write_text("\n".join(kept) + "\n")
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mode", default="native", choices=("native", "xen-pv"))
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "nmi-sweep.yaml")
    parser.add_argument("--reboots", type=int, default=0,
                        help="boot only this many of the points (evenly spread) and scale their mean to all N; "
                             "0: every point")
    args = parser.parse_args()
    forked: list[float] = []
    reboots: list[float] = []
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-fork-") as tmp:
        directory = Path(tmp)
        points = point_configs(args.config.resolve(), directory)
        for r in range(args.rounds):
            forked.append(run(args.config.resolve(), directory / f"forked-{r}", args.mode))
            sweep = json.loads((directory / f"forked-{r}" / load_config(args.config).name / args.mode /
                                "sweep.json").read_text())
            print(f"round {r + 1}: forked {forked[-1]:.1f} s (snapshot after {sweep['snapshot']['t']:.1f} s, "
                  f"savevm {sweep['snapshot']['savevm_s']:.2f} s)", flush=True)
            chosen = list(range(len(points)))
            if 0 < args.reboots < len(points):
                chosen = [round(k * (len(points) - 1) / max(args.reboots - 1, 1)) for k in range(args.reboots)]
            times = []
            for i in chosen:
                times.append(run(points[i], directory / f"reboot-{r}-{i}", args.mode))
                print(f"  point {i + 1} as a boot of its own: {times[-1]:.1f} s", flush=True)
            reboots.append(statistics.mean(times) * len(points))
            scaled = f" ({len(chosen)} of {len(points)} booted, their mean times {len(points)})" \
                if len(chosen) < len(points) else ""
            print(f"round {r + 1}: {len(points)} reboots {reboots[-1]:.1f} s{scaled}", flush=True)
    n = len(points)
    f, b = statistics.median(forked), statistics.median(reboots)
    print(f"\n{args.mode}, {n} points, {args.rounds} round(s), medians of whole commands:")
    print(f"  forked from one snapshot  {f:7.1f} s   {f / n:5.2f} s a point")
    print(f"  one boot per point        {b:7.1f} s   {b / n:5.2f} s a point")
    print(f"  ratio (reboots / forked)  {b / f:7.2f}x")


if __name__ == "__main__":
    main()
