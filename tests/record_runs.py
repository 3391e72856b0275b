"""Record real runs as fixtures: ``python -m tests.record_runs [--mode native] [CONFIG ...]``.

Boots each config in tests/data/runs/setups/ (and the shipped configs/), in
each of the config's modes (or only --mode), and keeps its console.log,
result.json and analysis (sites.json, sites-*.jsonl.gz, trace.json,
scenario.jsonl) under tests/data/runs/<name>-<mode>/.
tests/unit/test_recorded_runs.py re-judges them without booting. Re-run this
to regenerate them after a deliberate change in what a run records.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from framework.cli import main as cli_main
from framework.config import load_config

HERE = Path(__file__).resolve().parent
RUNS = HERE / "data" / "runs"
REPO = HERE.parent
# Fields that differ from run to run and say nothing about the outcome.
VOLATILE = ("started", "duration_s", "artifacts", "qemu", "kernel", "config")


ANALYSIS = ("sites.json", "sites-*.jsonl.gz", "trace.json", "scenario.jsonl")


def record(config: Path, mode: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="patchscope-record-") as tmp:
        cli_main(["run", str(config), "--mode", mode, "--artifacts", tmp, "-q"])
        run = next(Path(tmp).glob(f"*/{mode}"))
        data = json.loads((run / "result.json").read_text())
        dest = RUNS / f"{data['name']}-{mode}"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.copy(run / "console.log", dest / "console.log")
        for pattern in ANALYSIS:
            for path in run.glob(pattern):
                shutil.copy(path, dest / path.name)
        shutil.copy(config, dest / "config.yaml")
        for key in VOLATILE:
            data.pop(key, None)
        (dest / "result.json").write_text(json.dumps(data, indent=2) + "\n")
        return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path)
    ap.add_argument("--mode", help="only this mode (default: each config's own modes)")
    args = ap.parse_args()
    configs = args.configs or sorted((RUNS / "setups").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yaml"))
    for config in configs:
        for mode in [args.mode] if args.mode else load_config(config).modes:
            dest = record(config, mode)
            data = json.loads((dest / "result.json").read_text())
            print(f"{dest.relative_to(REPO)}: {data['verdict']} {data.get('outcome')} {data.get('title')}",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
