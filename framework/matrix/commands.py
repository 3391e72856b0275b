"""``patchscope matrix`` and ``patchscope report merge|diff``: arguments in, exit code out.

    patchscope matrix ci/nightly.yaml -j 2                          every cell, two at a time
    patchscope matrix ci/nightly.yaml --shard 2/4 --artifacts out/shard-2
    patchscope matrix ci/nightly.yaml --kernels                     the kernels it resolves to; boots nothing
    patchscope matrix ci/nightly.yaml --list                        its cells (this shard's with --shard)
    patchscope report merge out/shard-* -o out/nightly
    patchscope report diff last-night/results.json out/nightly/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import PatchscopeError
from ..kernel.fetch import resolve_newest
from ..kernel.refs import DebianRef, NewestRef, parse_ref
from .plan import expand, parse_shard
from .results import KIND, MatrixResults, ResultsError, diff, merge
from .spec import MatrixSpec, load_matrix

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_parsers(sub: Any) -> None:
    m = sub.add_parser("matrix", help="run a matrix file: every config x kernel x mode, in parallel")
    m.add_argument("file", type=Path, metavar="MATRIX.yaml")
    m.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                   help="cells at once (default: the number of cores, %(default)s here); memory permitting")
    m.add_argument("--shard", metavar="K/N", help="run only the K-th of N shards (1-based)")
    m.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="the results directory (default: patchscope-out/matrix/<matrix name>)")
    m.add_argument("--baseline", type=Path, metavar="DIR",
                   help="last run's results directory (or results.json): marks regressions, balances shards")
    m.add_argument("--kernels", action="store_true", help="print the kernels the matrix resolves to and exit")
    m.add_argument("--list", action="store_true", help="print the cells it would run and exit")
    m.add_argument("-q", "--quiet", action="store_true", help="only the summary")

    r = sub.add_parser("report", help="merge shards' results, or compare two results")
    rsub = r.add_subparsers(dest="rcommand", required=True, metavar="WHAT")
    mg = rsub.add_parser("merge", help="combine shards' results directories into one")
    mg.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    mg.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    mg.add_argument("--baseline", type=Path, metavar="DIR", help="last run's results: marks regressions on the page")
    df = rsub.add_parser("diff", help="new failures, fixed, still failing and flaky cells between two results")
    df.add_argument("base", type=Path, metavar="BASE")
    df.add_argument("new", type=Path, metavar="NEW")


def load_results(path: Path) -> MatrixResults:
    """A results directory or its results.json."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"{path}: no results.json there; give a directory written by patchscope matrix or "
                           "report merge")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ResultsError(f"{file}: not readable JSON ({err}); it is damaged: re-run the matrix") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{file}: not a matrix's results.json")
    return MatrixResults.from_json(data, str(file))


def _results_dir(out: Path) -> None:
    """Make ``out`` ready for new results; only a directory patchscope wrote (or an empty one) is cleared."""
    if out.exists():
        if not out.is_dir():
            raise PatchscopeError(f"--artifacts {out}: not a directory")
        entries = list(out.iterdir())
        ours = _is_ours(out / "results.json")
        if entries and not ours and {p.name for p in entries} - {"cells", "logs"}:
            raise PatchscopeError(f"--artifacts {out}: holds files that are not a matrix's results; "
                                  "give an empty or new directory")
        for name in ("cells", "logs"):
            if (out / name).exists():
                shutil.rmtree(out / name)
        for name in ("results.json", "junit.xml", "index.html"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _is_ours(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("kind") == KIND)
    except (OSError, ValueError, AttributeError):
        return False


def resolved_refs(spec: MatrixSpec) -> list[tuple[str, str]]:
    """(name, what it is tonight) for every kernel and hypervisor of the matrix; downloads nothing.

    Debian packages as ``<package>=<version>`` (floating refs resolved, a recipe's pin
    as written); ``path:`` kernels as written, built or not. One line each, in the
    file's order: CI keys its download cache on this list.
    """
    out: list[tuple[str, str]] = []
    base = spec.path.parent
    names = list(spec.kernels)
    if "xen-pv" in spec.modes:
        names += sorted({c.hypervisor for c in spec.configs if "xen-pv" in c.modes})
    for name in names:
        ref = parse_ref(name, base=base)
        if isinstance(ref, NewestRef):
            ref = resolve_newest(ref)
        if isinstance(ref, DebianRef):
            out.append((name, f"{ref.package}={ref.version}" if ref.version else ref.package))
        else:
            out.append((name, ref.text))
    return out


def cmd_matrix(args: argparse.Namespace) -> int:
    from .runner import MatrixRun, check_kernel
    spec = load_matrix(args.file, check_kernel)
    plan = expand(spec)
    if args.jobs < 1:
        raise PatchscopeError(f"-j {args.jobs}: give at least 1")
    shard = parse_shard(args.shard) if args.shard else None
    baseline = load_results(args.baseline) if args.baseline else None
    if args.kernels:
        for name, ref in resolved_refs(spec):
            print(f"{name} {ref}")
        return EXIT_PASS
    cells = plan.order(shard, baseline.durations() if baseline is not None else None)
    if args.list:
        for cell in cells:
            print(cell.id)
        return EXIT_PASS
    out = args.artifacts or Path("patchscope-out") / "matrix" / spec.name
    _results_dir(out)
    quiet = args.quiet
    live = sys.stderr.isatty() and not os.environ.get("CI")
    width = shutil.get_terminal_size((120, 20)).columns

    def line(text: str) -> None:
        if quiet:
            return
        if live:
            sys.stderr.write("\r\x1b[K")
        print(f"patchscope: {text}", file=sys.stderr, flush=True)

    def status(text: str) -> None:
        sys.stderr.write("\r\x1b[K" + text[: width - 1])
        sys.stderr.flush()

    line(f"matrix {spec.name}: {len(cells)} cells"
         + (f" (shard {shard} of {len(plan.cells)})" if shard else "") + f", -j {args.jobs}, artefacts in {out}")
    run = MatrixRun(plan, out, args.jobs, (lambda _m: None) if quiet else line, line,
                    status if live and not quiet else None, shard, baseline)
    outcome = run.run()
    if live and not quiet:
        sys.stderr.write("\r\x1b[K")
    return _summary(outcome.results, out, interrupted=outcome.interrupted)


def _summary(results: MatrixResults, out: Path, interrupted: bool = False) -> int:
    counts = results.counts()
    shown = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    print(f"{'INTERRUPTED' if interrupted else 'FAIL' if results.failed else 'PASS'}  matrix {results.name}: "
          f"{shown or 'no cells'}  ({out / 'index.html'})")
    for c in results.cells:
        if c.state in ("fail", "error", "flaky"):
            print(f"  {c.state:<6} {c.cell.id}: {c.title}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAIL if results.failed else EXIT_PASS


def cmd_report(args: argparse.Namespace) -> int:
    from .runner import write_outputs
    if args.rcommand == "diff":
        base, new = load_results(args.base), load_results(args.new)
        changes = diff(base, new)
        order = ["new failure", "still failing", "flaky", "fixed", "gone", "new cell"]
        for kind in order:
            these = [c for c in changes if c.change == kind]
            if these:
                print(f"{kind} ({len(these)}):")
                for c in these:
                    print(f"  {c.id}: {c.before or '-'} -> {c.after or '-'}" + (f"  {c.title}" if c.title else ""))
        same = sum(c.change == "unchanged" for c in changes)
        print(f"{sum(c.change == 'new failure' for c in changes)} new failures, "
              f"{sum(c.change == 'fixed' for c in changes)} fixed, {same} unchanged")
        return EXIT_FAIL if any(c.change == "new failure" for c in changes) else EXIT_PASS
    parts = [(str(d), load_results(d)) for d in args.dirs]
    merged = merge(parts)
    out: Path = args.output
    if out.resolve() in {d.resolve() for d in args.dirs}:
        raise PatchscopeError(f"-o {out}: is one of the inputs; merge into a new directory")
    _results_dir(out)
    for d in args.dirs:
        cells = d / "cells"
        if cells.is_dir():
            shutil.copytree(cells, out / "cells", dirs_exist_ok=True, copy_function=_link_or_copy)
    baseline = load_results(args.baseline) if args.baseline else None
    write_outputs(out, merged, baseline)
    return _summary(merged, out)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
