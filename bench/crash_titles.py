"""Crash recognition against console logs whose titles are known: detection and exact-title agreement per family.

    python bench/crash_titles.py                       # the project's fixtures (tests/data/console)
    python bench/crash_titles.py DIR [DIR ...]         # any folder of logs in the same header format

A log is a file of ``KEY: value`` header lines, an empty line, then the console
output. ``TITLE`` is the expected title of the first crash (``none`` or empty for
a clean log), ``CORRUPTED: Y`` marks a report that cannot be trusted, ``FAMILY``
names the family (without it the family is the title with its `` in FUNC`` part
cut off). syzkaller's own report fixtures have this format, so they can be
measured as they are. Prints one row per family, then the totals; exits 0.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from framework.analysis.crashes import find_crashes, primary


@dataclass
class Tally:
    logs: int = 0
    detected: int = 0          # a crash found exactly when one is expected
    titled: int = 0            # ... and its title is the expected one
    corrupted: int = 0         # ... and the corrupted flag agrees
    misses: list[str] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[str]] | None:
    raw = path.read_bytes().decode("utf-8", "surrogateescape")
    head, sep, body = raw.partition("\n\n")
    if not sep:
        return None
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        key, colon, value = line.partition(":")
        if colon and key.isupper():
            headers.setdefault(key, value.strip())
    return headers, body.split("\n")


def family(headers: dict[str, str]) -> str:
    if headers.get("FAMILY"):
        return headers["FAMILY"]
    title = headers.get("TITLE", "")
    if title in ("", "none"):
        return "(no crash)"
    return re.sub(r" in \S+(?: / \S+)?$", "", title)


def measure(paths: list[Path]) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    for path in paths:
        parsed = parse(path)
        if parsed is None:
            continue
        headers, lines = parsed
        want = headers.get("TITLE", "")
        want = "" if want == "none" else want
        got = primary(find_crashes(lines))
        tally = tallies[family(headers)]
        tally.logs += 1
        if (got is not None) != bool(want):
            tally.misses.append(f"{path.name}: want {want or 'no crash'!r}, got {got.title if got else 'no crash'!r}")
            continue
        tally.detected += 1
        if got is None:
            tally.titled += 1
            tally.corrupted += 1
            continue
        if got.title == want:
            tally.titled += 1
        else:
            tally.misses.append(f"{path.name}: want {want!r}, got {got.title!r}")
        if got.corrupted == (headers.get("CORRUPTED", "N").upper() == "Y"):
            tally.corrupted += 1
    return tallies


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [ROOT / "tests" / "data" / "console"]
    paths = sorted(p for d in dirs for p in d.iterdir() if p.is_file() and not p.name.endswith((".tsv", ".md")))
    start = time.perf_counter()
    tallies = measure(paths)
    elapsed = time.perf_counter() - start
    width = max((len(f) for f in tallies), default=6)
    print(f"{'family':<{width}}  logs  detected  title  corrupted-flag")
    total = Tally()
    for name in sorted(tallies):
        t = tallies[name]
        print(f"{name:<{width}}  {t.logs:4}  {t.detected:8}  {t.titled:5}  {t.corrupted:14}")
        total.logs += t.logs
        total.detected += t.detected
        total.titled += t.titled
        total.corrupted += t.corrupted
    n = max(total.logs, 1)
    print(f"{'total':<{width}}  {total.logs:4}  {total.detected:8}  {total.titled:5}  {total.corrupted:14}")
    print(f"detection {100 * total.detected / n:.1f} %, exact title {100 * total.titled / n:.1f} %, "
          f"corrupted flag {100 * total.corrupted / n:.1f} % of {total.logs} logs in {elapsed:.2f} s")
    misses = [m for t in tallies.values() for m in t.misses]
    if misses:
        print("\nnot agreeing:")
        for line in misses:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
