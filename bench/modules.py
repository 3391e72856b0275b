#!/usr/bin/env python3
"""The cost of inspecting loaded modules: an inspected boot with N modules against the same boot with none.

Three configs, run interleaved (A, B, C, A, B, C, …) on the same kernel, each
inspected at the booted capture (the vmlinux text read and compared):

    A  no modules
    B  the same N modules loaded by /init, not inspected (no inspect: section)
    C  the same N modules loaded and inspected: the module list walked, each
       module's text read, each .ko linked and its sites compared

C against B is what inspecting the modules costs; B against a plain boot is
what loading them costs the guest. Prints medians of the whole command and
the ratios, and how many module sites were compared.

    .venv/bin/python bench/modules.py [--rounds 3] [--mode native|xen-pv] [--module kvm --module …]
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
DEFAULT_MODULES = ("kvm", "test_static_keys", "xfs", "btrfs", "ext4")


def config(directory: Path, name: str, modules: list[str], inspect: bool) -> Path:
    path = directory / f"{name}.yaml"
    lines = [f"name: {name}", "timeout: 300"]
    if modules:
        lines.append(f"modules: [{', '.join(modules)}]")
    if inspect:
        lines.append("inspect: {capture: booted}")
    lines.append("expect: {outcome: boots}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run(cfg: Path, out: Path, mode: str) -> tuple[float, int]:
    """(seconds for the whole command, module sites compared)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(cfg), "--mode", mode,
                           "--artifacts", str(out), "-q"], cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{cfg.name}: patchscope run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    sites = 0
    for loaded in out.glob(f"*/{mode}/modules/loaded.json"):
        sites += sum(sum(m.get("sites", {}).values()) for m in json.loads(loaded.read_text()))
    return wall, sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="native", choices=("native", "xen-pv"))
    parser.add_argument("--module", action="append", default=[], help=f"default: {', '.join(DEFAULT_MODULES)}")
    args = parser.parse_args()
    modules = args.module or list(DEFAULT_MODULES)
    with tempfile.TemporaryDirectory(prefix="bench-modules-") as tmp:
        d = Path(tmp)
        variants = {"A none": config(d, "bench-none", [], True),
                    "B loaded": config(d, "bench-loaded", modules, False),
                    "C inspected": config(d, "bench-inspected", modules, True)}
        # one untimed run of C: module index, extraction and kernel preparation are cached from then on
        run(variants["C inspected"], d / "warm", args.mode)
        times: dict[str, list[float]] = {k: [] for k in variants}
        sites = 0
        for r in range(args.rounds):
            for label, cfg in variants.items():
                wall, n = run(cfg, d / f"{label[0]}-{r}", args.mode)
                times[label].append(wall)
                sites = max(sites, n)
        med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.mode}, {len(modules)} modules named ({', '.join(modules)}), {args.rounds} interleaved rounds:")
    for label, value in med.items():
        print(f"  {label:<12} {value:6.1f} s   (runs: {', '.join(f'{t:.1f}' for t in times[label])})")
    print(f"  module sites compared in C: {sites}")
    print(f"  inspecting the modules (C / B): {med['C inspected'] / med['B loaded']:.2f}x")
    print(f"  loading them (B / A):           {med['B loaded'] / med['A none']:.2f}x  (B is not inspected, A is)")
    print(f"  the whole (C / A):              {med['C inspected'] / med['A none']:.2f}x")


if __name__ == "__main__":
    main()
