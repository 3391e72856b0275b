"""``patchscope check`` on a large console log: time and peak memory, against reading the file alone.

    python bench/check_log.py [--mb 200]

Builds a log of about ``--mb`` MB from the recorded native boot (with a WARNING
report every 50 boots), then runs, side by side in one run: ``patchscope check``
on it, and a plain Python pass over its lines (the floor any check must pay).
Prints the time and the peak resident memory of each, and the ratios: check's
time to the plain pass's, and check's peak memory to the size of the log.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = ROOT / "tests" / "data" / "console"


FLOOR = "import sys\nn = 0\nfor line in open(sys.argv[1], errors='replace'):\n    n += 1\n"


def body(name: str) -> list[str]:
    text = (CONSOLE / name).read_bytes().decode("utf-8", "surrogateescape")
    return text.split("\n\n", 1)[1].splitlines()


def build(path: Path, mb: int) -> int:
    boot = [ln for ln in body("boot-native.log") if "Power down" not in ln]
    warn = body("warning-6.1.log")[25:60]          # its cut-here ... end-trace report
    size = n = 0
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as out:
        while size < mb << 20:
            chunk = "\n".join(boot) + "\n"
            n += 1
            if n % 50 == 0:
                chunk += "\n".join(warn) + "\n"
            out.write(chunk)
            size += len(chunk)
    return path.stat().st_size


def measured(cmd: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "console.log"
        size = build(log, args.mb)
        # The floor first (its peak is small), then check: RUSAGE_CHILDREN keeps the largest child's peak.
        floor_t, floor_rss = measured([sys.executable, "-c", FLOOR, str(log)])
        check_t, check_rss = measured([sys.executable, "-m", "framework.cli", "check", str(log)])
    print(f"log: {size / 1e6:.0f} MB")
    print(f"plain pass over the lines: {floor_t:6.1f} s, peak {floor_rss / 1e6:5.0f} MB")
    print(f"patchscope check:          {check_t:6.1f} s, peak {check_rss / 1e6:5.0f} MB")
    print(f"check / plain pass: {check_t / floor_t:.1f}x time; check's peak memory / log size: {check_rss / size:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
