"""``patchscope orc``: seed 004, the ORC data against every stream patching can put at a site. An edge.

Static (default): every site of the vmlinux with every stream that can land
there (framework/analysis/orccheck.py). ``--live``: one boot, stopped at a
capture point, the same check over the bytes patching really wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..analysis import orccheck
from ..checking import check_mode
from ..config import default_config
from ..domain import ACCELS, CAPTURE_POINTS, DEFAULT_KERNEL, MODES
from ..errors import PatchscopeError
from ..kernel.fetch import note_stderr
from ..kernel.image import prepare_kernel
from ..kernel.refs import parse_ref
from ..pipeline import RunRequest, artifacts_dir, execute
from ..report.text import reason_lines
from .inspection import load_tables

EXIT_PASS, EXIT_FAIL = 0, 1
SHOWN = 20      # disagreements printed (all of them: --json, or orc.json of a live run)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], artifacts: Path) -> None:
    orc = sub.add_parser("orc", help="seed 004: the ORC unwind data at every instruction boundary patching can "
                                     "put inside a site (static), or of the text patched at boot (--live)")
    orc.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel reference (default: %(default)s)")
    orc.add_argument("--live", action="store_true", help="boot, stop at --at, and check the live bytes of every site")
    orc.add_argument("--mode", default="native", choices=MODES)
    orc.add_argument("--hypervisor", default=None, help="Xen for xen-pv (default: xen-4.17)")
    orc.add_argument("--at", default="after-patching", choices=CAPTURE_POINTS[1:],
                     help="--live: the capture to check (default: %(default)s)")
    orc.add_argument("--cmdline", action="append", default=[], metavar="ARGS")
    orc.add_argument("--accel", choices=ACCELS, default="tcg")
    orc.add_argument("--artifacts", type=Path, default=artifacts, metavar="DIR")
    orc.add_argument("--json", action="store_true", help="the whole report (rows and every disagreement) as JSON")


def cmd_orc(args: argparse.Namespace) -> int:
    kernel = prepare_kernel(parse_ref(args.kernel), note_stderr)
    if not args.live:
        started = time.monotonic()
        vmlinux, symbols, sites = load_tables(kernel, (lambda _: None) if args.json else note_stderr)
        report = orccheck.check_static(vmlinux.orc, sites, symbols, vmlinux.version)
        took = time.monotonic() - started
        title = f"{args.kernel}: {len(vmlinux.orc)} ORC entries, every stream of every site ({took:.1f} s)"
        return _show(report, title, args.json, [])
    cfg = default_config("orc", kernel=args.kernel, modes=(args.mode,), cmdline=tuple(args.cmdline),
                         hypervisor=args.hypervisor, timeout=300.0,
                         inspect={"capture": [args.at], "orc": True})
    req = RunRequest(cfg, check_mode(args.mode), artifacts_dir(args.artifacts, "orc", args.mode), accel=args.accel)
    result = execute(req, (lambda _: None) if args.json else note_stderr)
    got = result.analysis.orc.get(args.at) if result.analysis is not None else None
    if got is None:
        raise PatchscopeError(str(result.error or f"the run checked no ORC data: {result.summary}"))
    title = f"{args.kernel} [{args.mode}] at {args.at}: {result.summary}  ({req.outdir})"
    code = _show(got, title, args.json, reason_lines(result, "  - "))
    return code if result.verdict != "error" else 2


def _show(report: orccheck.OrcReport, title: str, as_json: bool, reasons: list[str]) -> int:
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(title)
        tables = report.tables()
        print(f"  {'table':<15}{'sites':>8}{'streams':>9}{'boundaries':>12}{'agree':>8}{'disagree':>10}"
              f"{'unknown':>9}{'noreturn':>10}{'no ORC state':>14}")
        for name, c in tables.items():
            print(f"  {name:<15}{c.sites:>8}{c.streams:>9}{c.boundaries:>12}{c.agree:>8}{c.disagree:>10}"
                  f"{c.unknown:>9}{c.unreachable:>10}{c.undescribed:>14}")
        print(f"  {report.summary()}")
        for d in report.disagreements[:SHOWN]:
            print(f"    {d.describe()}")
        if len(report.disagreements) > SHOWN:
            print(f"    … and {len(report.disagreements) - SHOWN} more (--json)")
        print("\n".join(reasons))
    return EXIT_FAIL if report.total().disagree else EXIT_PASS
