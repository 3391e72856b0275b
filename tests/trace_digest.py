"""Digests of the boot-time part of real traces: the same kernel must give the same trace run after run.

The digest covers every event before the kernel's live patching (windows
early, setup, patching): source, stage, window, address, old and new bytes,
and the caller. Times and sequence numbers are left out. Record a new one by
running ``patchscope trace`` and ``python -m tests.trace_digest ARTEFACTS_DIR``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from framework.trace import Event

BOOT_WINDOWS = ("early", "setup", "patching")

# (package, version, mode) -> digest
DIGESTS: dict[tuple[str, str, str], str] = {
    ('linux-image-6.1.0-56-amd64', '6.1.192-2', 'native'): '040d5156dc14f679cf58d8cfe58450f1b8758a75a3308a63ad779043870953dc',
    ('linux-image-6.1.0-56-amd64', '6.1.192-2', 'xen-pv'): 'c63ddf57b02e8da271fa4a72be793ea82b993e3cc427640c1356eda4b21dea84',
}


def digest(events: Iterable[Event]) -> str:
    h = hashlib.sha256()
    for e in events:
        if e.window in BOOT_WINDOWS:
            h.update(f"{e.source} {e.stage} {e.window} {e.address:x} {e.old.hex()} {e.new.hex()} "
                     f"{e.caller or 0:x}\n".encode())
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
