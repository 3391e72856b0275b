#!/usr/bin/env python3
"""Kernel builds: the shipped tiny recipe cold (empty ccache), warm (ccache full, fresh work directory),
an incremental rebuild after touching one file, and a second request (served from the cache), side by side.

Runs in a scratch cache that shares only the downloaded and unpacked sources with
~/.cache/patchscope, so nothing of the real cache is rebuilt or lost. Prints each
time and the ratios against the cold build.

    .venv/bin/python bench/build.py [--recipe kernels/tiny-6.1.yaml] [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def real_cache() -> Path:
    env = os.environ.get("PATCHSCOPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "patchscope"


def build(recipe: Path, env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", "build", str(recipe)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"patchscope build failed ({proc.returncode}): {proc.stderr}")
    return wall


def forget_builds(cache: Path) -> None:
    """Drop every built kernel and remembered request (the work directory stays unless asked)."""
    for entry in (cache / "kernels").glob("build-*"):
        shutil.rmtree(entry)
    shutil.rmtree(cache / "builds" / "requests", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "kernels" / "tiny-6.1.yaml")
    ap.add_argument("--skip-cold", action="store_true", help="leave out the cold build (about 4 minutes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for shared in ("debs", "sources"):
            if (real_cache() / shared).is_dir():
                (cache / shared).symlink_to(real_cache() / shared)
        env = dict(os.environ, PATCHSCOPE_CACHE=str(cache), CCACHE_DIR=str(cache / "ccache"),
                   PYTHONPATH=str(REPO))
        times: dict[str, float] = {}
        if not args.skip_cold:
            times["cold (empty ccache)"] = build(args.recipe, env)
        else:
            build(args.recipe, env)      # fills ccache; not reported
        forget_builds(cache)
        shutil.rmtree(cache / "builds" / "work")
        times["warm (ccache, fresh work dir)"] = build(args.recipe, env)
        forget_builds(cache)
        # an incremental rebuild: the work directory kept, one object made stale
        work = next((cache / "builds" / "work").iterdir())
        stale = work / "init" / "calibrate.o"
        if stale.exists():
            stale.unlink()
        times["rebuild (work dir kept, 1 object)"] = build(args.recipe, env)
        times["second request (cached)"] = build(args.recipe, env)
    base = times.get("cold (empty ccache)")
    print(f"{'build of ' + args.recipe.name:<40}{'seconds':>10}{'vs cold':>10}")
    for name, seconds in times.items():
        ratio = f"{base / seconds:>9.1f}x" if base else ""
        print(f"{name:<40}{seconds:>10.1f}{ratio}")


if __name__ == "__main__":
    main()
