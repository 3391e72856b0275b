#!/usr/bin/env python3
"""Bisects, measured: steps and boots against ⌈log2(N+1)⌉, wall time per step, and what verification costs.

- Debian: tests/data/bisect/srso-alternatives.yaml over bookworm's 6.1 ABIs (the X86_FEATURE_SRSO
  alternatives go from 1 to 3 at linux-image-6.1.0-53-amd64), over the whole range 47..57 and over 51..54.
- git: tests/bisect_series.py's tree (six commits on Debian's 6.1 source; c5 breaks apply_paravirt(),
  c3 panics before init) bisected with kernels/tiny-6.1.yaml and --verify-revert, twice, each in a scratch
  cache that shares only the downloads and unpacked sources with ~/.cache/patchscope: once with an empty
  ccache (every build compiles: the first from scratch, the others incrementally in the clone's work
  directory), once with the ccache the first run filled (a fresh clone; what a second bisect of another
  tree of the same kernel costs).

    .venv/bin/python bench/bisecting.py [--skip-debian] [--skip-git] [--skip-cold]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bisect_series import make_series

SRSO = REPO / "tests" / "data" / "bisect" / "srso-alternatives.yaml"
PV_PATCHED = REPO / "tests" / "data" / "bisect" / "pv-patched.yaml"


def real_cache() -> Path:
    env = os.environ.get("PATCHSCOPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "patchscope"


def bisect(args: list[str], env: dict[str, str]) -> tuple[dict[str, object], float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "bisect", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"patchscope bisect failed ({proc.returncode}): {proc.stderr[-2000:]}")
    record = json.loads(proc.stdout)
    assert isinstance(record, dict)
    return record, wall


def report(name: str, record: dict[str, object], wall: float) -> None:
    steps = [s for s in record["steps"] if isinstance(s, dict)]  # type: ignore[attr-defined]
    result = record["result"]
    assert isinstance(result, dict)
    untested = int(str(record["untested"]))
    bound = math.ceil(math.log2(untested + 1)) if untested else 0
    bisect_steps = [s for s in steps if s["role"] == "step"]
    verify = [s for s in steps if s["role"].startswith("verify")]
    boots = sum(len(s["runs"]) for s in steps)
    prepare = sum(s["prepare_s"] for s in steps)
    print(f"\n{name}: {untested} candidates between the ends, found {result['culprit']} "
          f"({'verified' if result['verified'] else 'NOT verified'}) in {wall:.0f} s")
    print(f"  bisect steps {len(bisect_steps)} (⌈log2 {untested + 1}⌉ = {bound}), boots {boots} "
          f"(ends {sum(len(s['runs']) for s in steps if s['role'].endswith('-end'))}, steps "
          f"{sum(len(s['runs']) for s in bisect_steps)}, verification {sum(len(s['runs']) for s in verify)})")
    print(f"  {'step':<22}{'kernel or commit':<52}{'prepare':>10}{'runs':>8}{'total':>9}")
    for s in steps:
        print(f"  {s['role']:<22}{s['label'][:50]:<52}{s['prepare_s']:>9.1f}s{len(s['runs']):>8}{s['duration_s']:>8.1f}s"
              f"   {s['prepared']}")
    per_step = sum(s["duration_s"] for s in bisect_steps) / max(1, len(bisect_steps))
    cost = sum(s["duration_s"] for s in verify)
    print(f"  mean wall per bisect step {per_step:.1f} s; preparing kernels {prepare:.0f} s in all; "
          f"verification {cost:.0f} s = {cost / wall:.0%} of the bisect")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-debian", action="store_true")
    ap.add_argument("--skip-git", action="store_true")
    ap.add_argument("--skip-cold", action="store_true",
                    help="git: only the run with a warm ccache (the one in ~/.cache/patchscope)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="patchscope-bench-bisect-") as tmp:
        out = Path(tmp)
        if not args.skip_debian:
            for good, bad in ((47, 57), (51, 54)):
                record, wall = bisect([str(SRSO), "--good", f"debian:linux-image-6.1.0-{good}-amd64",
                                       "--bad", f"debian:linux-image-6.1.0-{bad}-amd64",
                                       "--artifacts", str(out / f"debian-{good}-{bad}")], env)
                report(f"Debian 6.1.0-{good} .. 6.1.0-{bad}", record, wall)
        if not args.skip_git:
            source = real_cache() / "sources" / "linux-source-6.1_6.1.192-2"
            if not (source / "Makefile").exists():
                sys.exit(f"{source}: not unpacked; run .venv/bin/patchscope build kernels/tiny-6.1.yaml first")
            # --skip-cold: the ccache your builds filled (the tiny-6.1 build, earlier bisects)
            ccache = Path(os.environ.get("CCACHE_DIR", real_cache() / "ccache")) if args.skip_cold else out / "ccache"
            runs = [("warm ccache", "warm")] if args.skip_cold else [("empty ccache", "cold"), ("warm ccache", "warm")]
            for label, name in runs:
                # a scratch cache of its own (no built kernel, no clone), its sources unpacked from the real one
                cache = out / f"cache-{name}"
                cache.mkdir()
                (cache / "debs").symlink_to(real_cache() / "debs")
                senv = dict(os.environ, PATCHSCOPE_CACHE=str(cache), CCACHE_DIR=str(ccache), PYTHONPATH=str(REPO))
                shas = make_series(source, out / f"tree-{name}")
                record, wall = bisect([str(PV_PATCHED), "--tree", shas["tree"], "--recipe", "tiny-6.1",
                                       "--good", shas["base"], "--bad", "main", "--verify-revert",
                                       "--artifacts", str(out / f"git-{name}")], senv)
                report(f"git, 6 commits, {label}", record, wall)


if __name__ == "__main__":
    main()
