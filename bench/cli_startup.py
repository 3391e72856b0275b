"""``patchscope check`` of a small log in a fresh process, against Python starting and doing nothing.

    python bench/cli_startup.py [-n 20]

Runs, interleaved ``-n`` times each: ``python -c pass``, and ``patchscope check``
(as ``python -m framework.cli check``) on a two-line log. Prints the median wall
time of each and the difference: what patchscope itself costs to start and check.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "console.log"
        log.write_text("[    0.000000] Linux version 6.1.0\n[    1.000000] reboot: Power down\n")
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    "patchscope check LOG": [sys.executable, "-m", "framework.cli", "check", str(log)]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.n):
            for name, cmd in commands.items():
                times[name].append(once(cmd))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:<22} median {median * 1000:6.0f} ms over {args.n} runs")
    base, check = medians["python -c pass"], medians["patchscope check LOG"]
    print(f"patchscope's own start-up and check: {(check - base) * 1000:.0f} ms ({check / base:.1f}x python -c pass)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
