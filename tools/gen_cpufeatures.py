"""Regenerate an X86_FEATURE/X86_BUG table (one per kernel line) in ``framework/elf/cpufeatures.py``.

The table is data taken from the kernel's ``arch/x86/include/asm/cpufeatures.h``
(the numbers and names only). Get Debian's exact 6.1 header with::

    cd /tmp && apt-get download linux-source-6.1
    dpkg-deb --fsys-tarfile linux-source-6.1_*_all.deb | tar -x ./usr/src/
    tar -xJf usr/src/linux-source-6.1.tar.xz linux-source-6.1/arch/x86/include/asm/cpufeatures.h

then run::

    .venv/bin/python tools/gen_cpufeatures.py /tmp/linux-source-6.1/arch/x86/include/asm/cpufeatures.h \\
        --source "Debian linux-source-6.1 6.1.192-2"
    .venv/bin/python tools/gen_cpufeatures.py /tmp/linux-source-6.12/arch/x86/include/asm/cpufeatures.h \\
        --table 6.12 --source "Debian linux-source-6.12 6.12.117-1~deb12u1"

It rewrites the block between the ``# BEGIN GENERATED <table>`` and ``# END
GENERATED <table>`` lines of ``framework/elf/cpufeatures.py`` and nothing else. Definitions inside
``#ifdef CONFIG_X86_32`` are left out (patchscope looks at x86-64 kernels only).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "framework" / "elf" / "cpufeatures.py"
BEGIN = "# BEGIN GENERATED"
END = "# END GENERATED"


def markers(table: str) -> tuple[str, str]:
    return f"{BEGIN} {table} ", f"{END} {table}\n"

_WORD_BIT = r"\(\s*(\d+)\s*\*\s*32\s*\+\s*(\d+)\s*\)"
_FEATURE = re.compile(r"#define\s+X86_FEATURE_(\w+)\s+" + _WORD_BIT)
_BUG = re.compile(r"#define\s+X86_BUG_(\w+)\s+X86_BUG\(\s*(?:(\d+)\s*\*\s*32\s*\+\s*)?(\d+)\s*\)")
_COUNT = re.compile(r"#define\s+(NCAPINTS|NBUGINTS)\s+(\d+)")


def parse(text: str) -> tuple[int, int, list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """NCAPINTS, NBUGINTS, features and bugs (word, bit, name) from cpufeatures.h."""
    counts: dict[str, int] = {}
    features: list[tuple[int, int, str]] = []
    bugs: list[tuple[int, int, str]] = []
    skip = 0          # depth inside #ifdef CONFIG_X86_32
    depth = 0
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#if"):
            depth += 1
            if s.split()[:2] == ["#ifdef", "CONFIG_X86_32"] and not skip:
                skip = depth
            continue
        if s.startswith("#endif"):
            if skip == depth:
                skip = 0
            depth -= 1
            continue
        if s.startswith("#else") and skip == depth:
            skip = 0
            continue
        if skip:
            continue
        if m := _COUNT.match(s):
            counts[m.group(1)] = int(m.group(2))
        elif m := _FEATURE.match(s):
            features.append((int(m.group(2)), int(m.group(3)), m.group(1)))
        elif m := _BUG.match(s):
            bugs.append((int(m.group(2) or 0), int(m.group(3)), m.group(1)))
    if "NCAPINTS" not in counts or "NBUGINTS" not in counts or not features:
        raise SystemExit("not a cpufeatures.h: NCAPINTS, NBUGINTS or X86_FEATURE_ defines missing")
    for table in (features, bugs):
        seen: dict[tuple[int, int], str] = {}
        for word, bit, name in table:
            if bit >= 32 or (word, bit) in seen:
                raise SystemExit(f"bad or duplicate bit {word}*32+{bit}: {name} (and {seen.get((word, bit))})")
            seen[(word, bit)] = name
    return counts["NCAPINTS"], counts["NBUGINTS"], features, bugs


def render(table: str, source: str, ncapints: int, nbugints: int, features: list[tuple[int, int, str]],
           bugs: list[tuple[int, int, str]]) -> str:
    v = table.replace(".", "_")
    begin, end = markers(table)
    out = [begin + f"by tools/gen_cpufeatures.py from {source}; do not edit by hand",
           f"NCAPINTS_{v} = {ncapints}", f"NBUGINTS_{v} = {nbugints}",
           "# (word, bit, name): X86_FEATURE_<name> = word*32 + bit", f"_FEATURES_{v}: tuple[tuple[int, int, str], ...] = ("]
    out += [f"    ({w}, {b}, {n!r})," for w, b, n in features]
    out += [")", "# (word, bit, name): X86_BUG_<name> = NCAPINTS*32 + word*32 + bit",
            f"_BUGS_{v}: tuple[tuple[int, int, str], ...] = ("]
    out += [f"    ({w}, {b}, {n!r})," for w, b, n in bugs]
    out += [")", end.rstrip("\n")]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("header", type=Path, help="arch/x86/include/asm/cpufeatures.h of the kernel line")
    ap.add_argument("--table", default="6.1", help="the kernel line the header is from (default: 6.1)")
    ap.add_argument("--source", default="Linux 6.1 arch/x86/include/asm/cpufeatures.h",
                    help="where the header came from (recorded in the generated block)")
    ap.add_argument("--target", type=Path, default=TARGET)
    args = ap.parse_args(argv)
    ncap, nbug, features, bugs = parse(args.header.read_text())
    text = args.target.read_text()
    begin, end_marker = markers(args.table)
    start, end = text.find(begin), text.find(end_marker)
    block = render(args.table, args.source, ncap, nbug, features, bugs)
    if start < 0 and end < 0:      # a new table: appended
        text = text.rstrip("\n") + "\n\n\n" + block + "\n"
    elif start < 0 or end < start:
        raise SystemExit(f"{args.target}: no '{begin.strip()}' ... '{end_marker.strip()}' block")
    else:
        text = text[:start] + block + text[end + len(end_marker) - 1:]
    args.target.write_text(text)
    print(f"{args.target}: table {args.table}: {len(features)} features, {len(bugs)} bugs, NCAPINTS={ncap}, NBUGINTS={nbug}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
