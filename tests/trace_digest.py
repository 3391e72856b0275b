"""Digests of the boot-time part of real traces: the same kernel must make the same writes run after run.

The digest covers every event before the kernel's live patching (windows
early, setup, patching): source, stage, address, old and new bytes, and the
caller, as a sorted multiset. Their order is not part of it: where the
kernel's own timing decides, it varies (in Debian 6.1 under TCG the
sched_clock static keys, native_sched_clock and the tsc_*_sched_clock_state
sites, flip once TSC calibration is done: before ftrace_init in some runs,
after it in others). Times and sequence numbers are left out. Record a new one by
running ``patchscope trace`` and ``python -m tests.trace_digest ARTEFACTS_DIR``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from framework.analysis.trace import Event

BOOT_WINDOWS = ("early", "setup", "patching")

# (package, version, mode) -> digest
DIGESTS: dict[tuple[str, str, str], str] = {
    ('linux-image-6.1.0-56-amd64', '6.1.192-2', 'native'): '0693b11a40356c8e53b2ed065aa2a03917b63bbf7e4228598252641b6e97070f',
    ('linux-image-6.1.0-56-amd64', '6.1.192-2', 'xen-pv'): '887d9a954d01363f322858cd7144214c487e10e1193f80eeffac3887cc74b5a4',
}


def digest(events: Iterable[Event]) -> str:
    h = hashlib.sha256()
    for line in sorted(f"{e.source} {e.stage} {e.address:x} {e.old.hex()} {e.new.hex()} {e.caller or 0:x}\n"
                       for e in events if e.window in BOOT_WINDOWS):
        h.update(line.encode())
    return h.hexdigest()


def main(argv: list[str]) -> None:
    for name in argv:
        outdir = Path(name)
        result = json.loads((outdir / "result.json").read_text())
        with gzip.open(outdir / "trace.jsonl.gz", "rt") as fh:
            events = [Event.from_json(json.loads(line)) for line in fh]
        key = (result["kernel"]["package"], result["kernel"]["version"], result["mode"])
        print(f"    {key!r}: {digest(events)!r},")


if __name__ == "__main__":
    main(sys.argv[1:])
