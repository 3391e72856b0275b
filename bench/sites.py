#!/usr/bin/env python3
"""Cost of patch-site inspection on the Debian 6.1 kernel.

1. Static: a fresh process reads every table of the vmlinux (127,739 sites),
   with the page cache dropped first (cold; needs root) and warm.
2. Live: the same boot with and without GDB inspection (captures at
   before-patching and after-patching, every table compared), interleaved,
   natively and as Xen PV dom0: medians of the time to the success marker and
   of the whole command, and their ratios. Every round prints the load
   average: the comparison runs while the guest boots, so on a machine whose
   cores are busy with other guests it takes the guest's CPU.

    .venv/bin/python bench/sites.py [--rounds 3] [--mode native|xen-pv|both]
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
STATIC = ("from framework.kernel.image import prepare_kernel; from framework.kernel.refs import parse_ref; "
          "from framework.observe.inspection import load_tables; "
          "k = prepare_kernel(parse_ref('debian-6.1')); v, s, t = load_tables(k, lambda m: None); "
          "print(sum(len(x) for x in t.values()))")


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def load() -> float:
    """The 1-minute load average (other QEMUs on the machine show up here)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def static_once() -> tuple[float, int]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STATIC], cwd=REPO, capture_output=True, text=True, check=True)
    return time.monotonic() - start, int(proc.stdout.strip())


def config(tmp: Path, mode: str, inspect: bool) -> Path:
    name = f"bench-{'inspect' if inspect else 'plain'}"
    body = f"name: {name}\nmode: {mode}\ntimeout: 300\nexpect: {{outcome: boots}}\n"
    if inspect:
        body += "inspect: {capture: [before-patching, after-patching]}\n"
    path = tmp / f"{name}-{mode}.yaml"
    path.write_text(body)
    return path


def run(cfg: Path, out: Path, mode: str) -> tuple[float, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(cfg), "--artifacts", str(out), "-q"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{cfg.name}: patchscope run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    data = json.loads(next(out.glob(f"*/{mode}/result.json")).read_text())
    return next(s["t"] for s in data["stages"] if s["name"] == "init-done"), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=("native", "xen-pv", "both"), default="both")
    args = ap.parse_args()
    cold, warm = [], []
    count = 0
    for _ in range(args.rounds):
        if drop_caches():
            t, count = static_once()
            cold.append(t)
        t, count = static_once()
        warm.append(t)
    print(f"static, every table ({count} sites), fresh process:")
    if cold:
        print(f"  cold page cache: median {statistics.median(cold):.2f} s over {len(cold)}")
    else:
        print("  cold page cache: not measured (cannot drop the page cache without root)")
    print(f"  warm page cache: median {statistics.median(warm):.2f} s over {len(warm)}", flush=True)
    modes = ["native", "xen-pv"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for mode in modes:
            plain, inspected = config(tmp, mode, False), config(tmp, mode, True)
            run(plain, tmp / "warm", mode)   # warm-up: fetches, caches
            rows: dict[str, list[float]] = {"plain_marker": [], "plain_wall": [], "gdb_marker": [], "gdb_wall": []}
            for n in range(args.rounds):
                pm, pw = run(plain, tmp / f"p{n}", mode)
                gm, gw = run(inspected, tmp / f"g{n}", mode)
                for key, value in zip(rows, (pm, pw, gm, gw)):
                    rows[key].append(value)
                print(f"[{mode}] round {n + 1}: no GDB {pm:5.2f} s to marker, {pw:5.2f} s wall | "
                      f"inspected {gm:5.2f} s to marker, {gw:5.2f} s wall | load {load():.2f}", flush=True)
            med = {k: statistics.median(v) for k, v in rows.items()}
            print(f"[{mode}] medians: no GDB {med['plain_marker']:.2f} s / {med['plain_wall']:.2f} s; "
                  f"inspected {med['gdb_marker']:.2f} s / {med['gdb_wall']:.2f} s; ratio to marker "
                  f"{med['gdb_marker'] / med['plain_marker']:.2f}, whole command "
                  f"{med['gdb_wall'] / med['plain_wall']:.2f}", flush=True)


if __name__ == "__main__":
    main()
