"""The patchscope command line. The only place that maps errors to exit codes.

Exit codes: 0 verdict met, 1 verdict not met, 2 bad input or infrastructure
failure, 130 interrupted (which also aborts a ``git bisect run``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import __version__
from .domain import ACCELS, DEFAULT_KERNEL, MODES, TABLES, TRACERS, VerdictName
from .errors import InputError, PatchscopeError

# Each command imports what it uses when it runs: ``patchscope check LOG`` does not load the debugger, the ELF
# readers, the disassembler or the config schema (tests/unit/test_cli_startup.py keeps it so).
if TYPE_CHECKING:
    from .analysis.sites import Oversize, SiteState, TextChange
    from .config import Config
    from .kernel.image import Kernel
    from .report.result import RunResult

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_ARTIFACTS = Path("patchscope-out")


def _quiet(_: str) -> None:
    pass


# This module's commands, and those whose parsers live with their own (heavier) modules, imported only when the
# command is theirs.
_OWN = {"run", "validate", "check", "boot", "sites", "trace", "kernels"}
_ELSEWHERE = {"matrix": "matrix", "report": "matrix", "orc": "orc", "build": "build", "bisect": "bisect"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``command``: the command given) all of it but other modules' commands, which
    are then not imported: ``patchscope check LOG`` starts without the matrix, bisect, build or ORC code."""
    def wanted(group: str) -> bool:
        return command is None or _ELSEWHERE.get(command) == group

    p = argparse.ArgumentParser(prog="patchscope", description=(
        "Boot real x86-64 kernels in QEMU and judge each run against a YAML expectation."))
    p.add_argument("--version", action="version", version=f"patchscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="boot each config and judge it against its expectation")
    run.add_argument("configs", nargs="+", type=Path, metavar="CONFIG.yaml")
    run.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, metavar="DIR",
                     help="where each run's artefacts go: DIR/<name>/<mode>/ (default: %(default)s)")
    _machine_options(run)
    run.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    run.add_argument("--json", action="store_true", help="print each result.json on stdout")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything short of booting (as patchscope validate), then stop")

    validate = sub.add_parser("validate", help="check configs without booting: the schema, every kernel and "
                                               "hypervisor reference (fetched if needed), every symbol, pv op "
                                               "and table against the kernel")
    validate.add_argument("configs", nargs="+", type=Path, metavar="CONFIG.yaml")
    validate.add_argument("--mode", action="append", choices=MODES, help="only this mode (repeatable)")
    validate.add_argument("--kernel", default=None, help="check against this kernel instead of the config's")

    check = sub.add_parser("check", help="re-judge a saved console log or artefacts directory; boots nothing")
    check.add_argument("path", type=Path, metavar="LOG|DIR")
    check.add_argument("--expect", type=Path, metavar="CONFIG.yaml", help="judge against this config's expect:")
    check.add_argument("--json", action="store_true", help="print the observation as JSON")
    check.add_argument("--mode", choices=MODES,
                       help="the mode the log came from (default: the saved run's): picks the config's "
                            "expect.<mode> section; both crash tables always apply")

    boot = sub.add_parser("boot", help="boot interactively: console attached, Ctrl-] quits")
    boot.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel reference (default: %(default)s)")
    boot.add_argument("--mode", default="native", choices=MODES,
                      help="native (default) or xen-pv: the kernel as PV dom0 of Xen inside QEMU")
    boot.add_argument("--hypervisor", default=None, help="Xen for xen-pv (default: xen-4.17)")
    boot.add_argument("--cmdline", action="append", default=[], metavar="ARGS",
                      help="extra kernel arguments (repeatable)")
    boot.add_argument("--initramfs", default="default", help="default, none, or a cpio file")
    boot.add_argument("--accel", choices=ACCELS, default="tcg")
    boot.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, metavar="DIR")
    boot.add_argument("--gdb", action="store_true",
                      help="GDB on the terminal instead of the console: symbols loaded, guest stopped")
    boot.add_argument("--stop-at", metavar="SYMBOL", help="with --gdb: continue to this function first")

    sites = sub.add_parser("sites", help="patch sites: every table of the vmlinux, or compared live after a boot")
    sites.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel reference (default: %(default)s)")
    sites.add_argument("--table", action="append", choices=TABLES, metavar="TABLE",
                       help=f"only these tables (repeatable): {', '.join(TABLES)}")
    sites.add_argument("--json", action="store_true", help="one JSON object per site on stdout")
    sites.add_argument("--live", action="store_true", help="boot, stop with GDB and compare each site")
    sites.add_argument("--mode", default="native", choices=MODES)
    sites.add_argument("--hypervisor", default=None, help="Xen for xen-pv (default: xen-4.17)")
    sites.add_argument("--at", default=None, metavar="POINT",
                       help="before-patching, after-patching (default; booted with --module), booted, or a kernel symbol")
    sites.add_argument("--cmdline", action="append", default=[], metavar="ARGS")
    sites.add_argument("--accel", choices=ACCELS, default="tcg")
    sites.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, metavar="DIR")
    sites.add_argument("--module", action="append", default=[], metavar="NAME",
                       help="with --live: load this module of the kernel's package (or a .ko file) from /init "
                            "and compare its sites too, at 'booted' (repeatable)")

    trace = sub.add_parser("trace", help="boot once with every text write the kernel makes recorded, in order")
    trace.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel reference (default: %(default)s)")
    trace.add_argument("--mode", default="native", choices=MODES)
    trace.add_argument("--hypervisor", default=None, help="Xen for xen-pv (default: xen-4.17)")
    trace.add_argument("--cmdline", action="append", default=[], metavar="ARGS")
    trace.add_argument("--init-command", action="append", default=[], metavar="CMD",
                       help="a shell command for /init after boot (repeatable), e.g. to trigger live patching")
    trace.add_argument("--module", action="append", default=[], metavar="NAME",
                       help="load this module (of the kernel's package, or a .ko file) from /init before the "
                            "init commands: its load, relocations and patching join the trace (repeatable)")
    trace.add_argument("--timeout", type=float, default=900.0, help="seconds (default: %(default)s)")
    trace.add_argument("--accel", choices=ACCELS, default="tcg")
    trace.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, metavar="DIR")
    trace.add_argument("--json", action="store_true", help="one JSON object per write on stdout (JSON lines)")
    trace.add_argument("--summary", action="store_true", help="only the counts and the self-check, no events")
    trace.add_argument("--modules-only", action="store_true",
                       help="trace only the loading of the --module modules (relocations, patching, in order): "
                            "about the cost of a plain boot; no replay of the boot, so no self-check")
    trace.add_argument("--tracer", choices=TRACERS, default=None,
                       help="what records the writes: a TCG plugin logging every store into text (default under "
                            "TCG), or breakpoints on the text-writing functions (the default under KVM)")
    trace.add_argument("--debugger", choices=("rsp", "gdb"), default="rsp",
                       help="rsp: speak the remote protocol to QEMU's gdbstub (default; a stop costs ~2.5x less than through GDB); "
                            "gdb: through GDB/MI")

    if wanted("matrix"):
        from .matrix.commands import add_parsers
        add_parsers(sub)
    if wanted("orc"):
        from .observe.orc_commands import add_parser as add_orc_parser
        add_orc_parser(sub, DEFAULT_ARTIFACTS)
    if wanted("build"):
        from .build.commands import add_parser as add_build_parser
        add_build_parser(sub)
    if wanted("bisect"):
        from .bisect.commands import add_parsers as add_bisect_parsers
        add_bisect_parsers(sub)

    kernels = sub.add_parser("kernels", help="list or fetch kernels")
    ksub = kernels.add_subparsers(dest="kcommand", required=True, metavar="ACTION")
    ksub.add_parser("list", help="recipes in kernels/ and kernels prepared in the cache")
    fetch = ksub.add_parser("fetch", help="download and prepare a kernel (symbols included) or a Xen hypervisor")
    fetch.add_argument("ref", nargs="?", default=DEFAULT_KERNEL)
    return p


def _machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", action="append", choices=MODES,
                   help="run in this mode instead of the config's (repeatable)")
    p.add_argument("--kernel", help="kernel reference instead of the config's")
    p.add_argument("--cmdline", action="append", default=[], metavar="ARGS",
                   help="extra kernel arguments, after the config's (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds before the run counts as hung")
    p.add_argument("--accel", choices=ACCELS, default="tcg",
                   help="tcg (default), kvm, or auto: KVM only if a probe boots the kernel")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["bisect-step"]:
        return _bisect_step(words)
    first = next((w for w in words if not w.startswith("-")), None)
    known = first in _OWN or first in _ELSEWHERE
    if first is not None and {"-h", "--help"} & set(words[:words.index(first)]):
        known = False
    args = build_parser(first if known else None).parse_args(words)
    try:
        with _interruptible():
            return _dispatch(args)
    except PatchscopeError as err:
        print(f"patchscope: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:   # the machine refused: a read-only artefacts directory, a full disk …
        where = f"{err.filename}: " if err.filename else ""
        print(f"patchscope: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        what = {"build": "make stopped, its log kept",
                "bisect": "the bisect stopped, its record kept (your tree was never touched)"}.get(
                    args.command, "QEMU stopped, artefacts kept")
        print(f"patchscope: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt while the command runs (then the handlers are put back).

    Ctrl-C must stop QEMU and keep the artefacts even when patchscope was started with SIGINT
    ignored (a background job of a non-interactive shell inherits SIG_IGN, and Python keeps it)."""
    previous = signal.signal(signal.SIGTERM, _sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _bisect_step(words: list[str]) -> int:
    """``bisect-step`` under ``git bisect run``: whatever goes wrong, never an exit code git would read as "bad"
    (1-127 but 125). Unusable arguments abort the bisect (128); anything unforeseen is "cannot test" (125)."""
    from .bisect.commands import STEP_ABORT, STEP_SKIP
    try:
        args = build_parser().parse_args(words)
    except SystemExit as done:
        return 0 if done.code == 0 else STEP_ABORT       # --help is 0; a usage error aborts the bisect
    try:
        with _interruptible():
            return _dispatch(args)
    except KeyboardInterrupt:
        print("patchscope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  (a step must end in 0, 1, 125 or an abort, never a traceback's 1)
        print(f"patchscope: bisect-step: cannot test: {type(err).__name__}: {err}", file=sys.stderr)
        return STEP_SKIP


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "boot":
        return cmd_boot(args)
    if args.command == "sites":
        return cmd_sites(args)
    if args.command == "trace":
        return cmd_trace(args)
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "orc":
        from .observe.orc_commands import cmd_orc
        return cmd_orc(args)
    if args.command == "build":
        from .build.commands import cmd_build
        return cmd_build(args)
    if args.command in ("bisect", "bisect-step"):
        from .bisect import commands as bisect
        return bisect.cmd_bisect(args) if args.command == "bisect" else bisect.cmd_bisect_step(args)
    if args.command in ("matrix", "report"):
        from .matrix import commands  # the matrix's modules load only when asked for
        return commands.cmd_matrix(args) if args.command == "matrix" else commands.cmd_report(args)
    return cmd_kernels(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config, with_overrides
    from .kernel.fetch import note_stderr
    from .validation import validate_all
    loaded: list[tuple[Path, Config | InputError]] = []
    for path in args.configs:
        try:
            loaded.append((path, with_overrides(load_config(path), modes=tuple(args.mode) if args.mode else None,
                                                kernel=args.kernel)))
        except InputError as err:
            loaded.append((path, err))
    return validate_all(loaded, note_stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from .checking import check_mode
    from .config import load_config, with_overrides
    from .kernel.fetch import note_stderr
    from .pipeline import RunRequest, applicability, artifacts_dir, execute, resolve_references
    from .report.junit import junit
    from .report.text import reason_lines, summary_line
    note = _quiet if args.quiet else note_stderr
    # Every config is validated before anything boots.
    configs: list[Config] = [
        with_overrides(load_config(path), modes=tuple(args.mode) if args.mode else None,
                       timeout=args.timeout, extra_cmdline=tuple(args.cmdline), kernel=args.kernel)
        for path in args.configs]
    names = [c.name for c in configs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PatchscopeError(f"two configs share the name {min(dup)!r}; their artefacts would collide: "
                              "give each a distinct name:")
    for cfg in configs:
        for mode in cfg.modes:
            check_mode(mode)
    if args.dry_run:
        from .validation import validate_all
        return validate_all([(c.path or Path(c.name), c) for c in configs], note)
    for cfg in configs:      # every kernel and hypervisor resolved (fetched if needed) before anything boots
        resolve_references(cfg, note)
    results: list[RunResult] = []
    for cfg in configs:
        why = applicability(cfg, note)
        if why is not None:
            print(f"N/A   {cfg.name}: not applicable to {cfg.kernel}: {why}", flush=True)
            continue
        for mode in cfg.modes:
            req = RunRequest(cfg, check_mode(mode), artifacts_dir(args.artifacts, cfg.name, mode), accel=args.accel)
            result = execute(req, note)
            results.append(result)
            if args.json:
                print(json.dumps(result.to_json(), default=str), flush=True)
            else:
                print("\n".join([summary_line(result), *reason_lines(result)]), flush=True)
    if args.junit:
        junit(results, args.junit)
    return _exit_code(r.verdict for r in results)


def _exit_code(verdicts: Iterable[VerdictName]) -> int:
    seen = set(verdicts)
    if "error" in seen:
        return EXIT_ERROR
    return EXIT_FAIL if "fail" in seen else EXIT_PASS


def cmd_check(args: argparse.Namespace) -> int:
    from .checking import check, check_mode
    path: Path = args.path
    if not path.exists():
        raise PatchscopeError(f"{path}: no such file or directory")
    targets = [path]
    if path.is_dir() and not (path / "console.log").exists():
        targets = sorted(d for d in path.iterdir() if (d / "console.log").exists())
        if not targets:
            raise PatchscopeError(f"{path}: no console.log here or in its subdirectories")
    cfg = None
    if args.expect:
        from .config import load_config
        cfg = load_config(args.expect)
    verdicts: list[VerdictName] = []
    for target in targets:
        checked = check(target, cfg, check_mode(args.mode) if args.mode else None)
        saved = checked.saved
        out: dict[str, Any] = {"path": str(target), "mode": args.mode or (saved.mode if saved else None),
                               **checked.observation.to_json()}
        if checked.verdict is not None:
            out.update(verdict=checked.verdict.verdict, reasons=list(checked.verdict.reasons))
            verdicts.append(checked.verdict.verdict)
        elif saved is not None:
            out["saved_verdict"] = saved.verdict
        if args.json:
            print(json.dumps(out, indent=2, default=str))
        else:
            _print_observation(out)
    return _exit_code(verdicts)


def _print_observation(out: dict[str, Any]) -> None:
    print(f"{out['path']}: {out['outcome']}: {out['summary']}")
    for stage in out["stages"]:
        t = f"{stage['t']:7.1f} s" if stage.get("t") is not None else f"line {stage['line']:>5}"
        print(f"  stage  {t}  {stage['label']}")
    for crash in out["crashes"]:
        notes = [*(["fatal"] if crash["fatal"] else []),
                 *([f"corrupted: {crash.get('corrupted_reason', '')}"] if crash.get("corrupted") else [])]
        print(f"  crash  line {crash['line']:>5}  {crash['title']}" + (f"  ({'; '.join(notes)})" if notes else ""))
    if "verdict" in out:
        print(f"  verdict {out['verdict'].upper()}")
        for reason in out.get("reasons") or []:
            print(f"    - {reason}")


def cmd_boot(args: argparse.Namespace) -> int:
    from .checking import check_mode
    from .config import default_config
    from .kernel.fetch import note_stderr
    from .pipeline import RunRequest, artifacts_dir, execute
    # An interactive boot is not judged; without patchscope's /init nothing can
    # print the success marker, so it is not expected either.
    expect = {"outcome": "hangs"} if args.initramfs == "none" else None
    cfg = default_config("boot", kernel=args.kernel, modes=(args.mode,), cmdline=tuple(args.cmdline),
                         initramfs=args.initramfs, timeout=24 * 3600.0, silence=24 * 3600.0, expect=expect,
                         hypervisor=args.hypervisor)
    check_mode(args.mode)
    if args.stop_at and not args.gdb:
        raise PatchscopeError("--stop-at needs --gdb")
    req = RunRequest(cfg, check_mode(args.mode), artifacts_dir(args.artifacts, "boot", args.mode),
                     accel=args.accel, interactive=True, gdb=args.gdb, stop_at=args.stop_at)
    result = execute(req, note_stderr)
    if result.verdict == "error" and result.error not in (None, "interrupted"):
        raise PatchscopeError(str(result.error))
    print(f"patchscope: console log in {req.outdir / 'console.log'}", file=sys.stderr)
    return EXIT_PASS


def cmd_sites(args: argparse.Namespace) -> int:
    from .checking import check_mode
    from .config import default_config
    from .kernel.fetch import note_stderr
    from .kernel.image import prepare_kernel
    from .kernel.refs import parse_ref
    from .pipeline import RunRequest, artifacts_dir, execute
    from .report.artefacts import sites_file
    from .report.text import reason_lines
    tables = tuple(args.table) if args.table else TABLES
    if args.module and not args.live:
        raise InputError("sites --module needs --live: a module's sites are compared where the kernel loaded it")
    kernel = prepare_kernel(parse_ref(args.kernel), note_stderr)
    if not args.live:
        return _static_sites(kernel, tables, args.json)
    at = args.at or ("booted" if args.module else "after-patching")
    cfg = default_config("sites", kernel=args.kernel, modes=(args.mode,), cmdline=tuple(args.cmdline),
                         hypervisor=args.hypervisor, timeout=300.0, modules=args.module or None,
                         inspect={"capture": [at], "tables": list(tables)})
    req = RunRequest(cfg, check_mode(args.mode), artifacts_dir(args.artifacts, "sites", args.mode), accel=args.accel)
    result = execute(req, _quiet if args.json else note_stderr)
    report = req.outdir / sites_file(at)
    if result.verdict == "error" and not report.exists():
        raise PatchscopeError(str(result.error))
    if args.json:
        if report.exists():
            with gzip.open(report, "rt") as fh:
                for line in fh:
                    sys.stdout.write(line)
    else:
        print(f"{args.kernel} [{args.mode}] at {at}: {result.summary}  ({req.outdir})")
        captured = result.analysis.comparisons.get(at) if result.analysis is not None else None
        if captured is not None:
            _print_counts(captured.counts())
            findings: tuple[tuple[str, Sequence[SiteState | Oversize | TextChange]], ...] = (
                ("pv sites still 'call *pv_ops'", captured.pv_indirect),
                ("over-sized patches", captured.oversized),
                ("text changes outside every known site", captured.unknown_changes))
            for label, found in findings:
                print(f"  {label}: {len(found)}")
                for item in found[:10]:
                    print(f"    {_finding(item)}")
        print("\n".join(reason_lines(result, "  - ")))
    return _exit_code([result.verdict])


def _finding(item: SiteState | Oversize | TextChange) -> str:
    from .analysis.sites import Oversize, TextChange
    if isinstance(item, TextChange):
        return f"{item.symbol} {item.start:#x} {item.before.hex()} -> {item.after.hex()}"
    st = item.state if isinstance(item, Oversize) else item
    return f"{st.symbol} {st.site.address:#x}" + (f" {list(st.insns)}" if st.insns else "")


def cmd_trace(args: argparse.Namespace) -> int:
    from .analysis.trace import Event
    from .checking import check_mode
    from .config import default_config
    from .kernel.fetch import note_stderr
    from .pipeline import RunRequest, artifacts_dir, execute
    from .report.text import reason_lines
    if args.modules_only and not args.module:
        raise InputError("trace --modules-only needs the modules to load: --module NAME (repeatable)")
    cfg = default_config("trace", kernel=args.kernel, modes=(args.mode,), cmdline=tuple(args.cmdline),
                         hypervisor=args.hypervisor, timeout=args.timeout,
                         init_commands=tuple(args.init_command), modules=args.module or None,
                         inspect={"capture": ["booted"], "trace": "modules"} if args.modules_only else None)
    req = RunRequest(cfg, check_mode(args.mode), artifacts_dir(args.artifacts, "trace", args.mode), accel=args.accel,
                     trace=not args.modules_only, debugger=args.debugger, tracer=args.tracer)
    result = execute(req, note_stderr)
    events = req.outdir / "trace.jsonl.gz"
    if result.verdict == "error" and not events.exists():
        raise PatchscopeError(str(result.error))
    if not args.summary and events.exists():
        with gzip.open(events, "rt") as fh:
            for line in fh:
                sys.stdout.write(line if args.json else Event.from_json(json.loads(line)).describe() + "\n")
    trace = result.analysis.trace if result.analysis is not None else None
    out = sys.stderr if args.json else sys.stdout
    print(f"{args.kernel} [{args.mode}]: {trace.events if trace else 0} text writes, "
          f"{result.summary}  ({req.outdir})", file=out)
    if trace is not None:
        for window, stages in trace.counts.items():
            print(f"  {window:<9} " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items(), key=lambda x: -x[1])),
                  file=out)
        if trace.check is not None:
            print(f"  {trace.check.summary()}", file=out)
        if trace.relocations:
            late = sum(1 for r in trace.relocations if r.get("livepatch"))
            print(f"  relocation sections applied: {len(trace.relocations)} ({late} livepatch); writes under a "
                  f"relocation applied later: {len(trace.overlaps)}", file=out)
            for overlap in trace.overlaps[:10]:
                print(f"    {overlap.describe()}", file=out)
    for line in reason_lines(result, "  - "):
        print(line, file=out)
    return _exit_code([result.verdict])


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    """One row a table: vmlinux's, then each module's (``kvm:paravirt``)."""
    counts = {t: c for t, c in counts.items() if c["sites"] or ":" not in t}    # a module's empty tables: left out
    width = max([14, *(len(table) + 2 for table in counts)])
    print(f"  {'table':<{width}}{'sites':>8}{'patched':>9}{'unchanged':>11}{'freed':>7}")
    for table, c in counts.items():
        print(f"  {table:<{width}}{c['sites']:>8}{c['patched']:>9}{c['unchanged']:>11}{c['freed']:>7}")


def _static_sites(kernel: Kernel, tables: tuple[str, ...], as_json: bool) -> int:
    from .kernel.fetch import note_stderr
    from .observe.inspection import load_tables
    vmlinux, _, sites = load_tables(kernel, _quiet if as_json else note_stderr)
    if as_json:
        for table in tables:
            for site in sites.get(table, []):
                sys.stdout.write(json.dumps(site.to_json()) + "\n")
        return EXIT_PASS
    print(f"{kernel.ref}: {kernel.package or kernel.bzimage} {kernel.version or ''} "
          f"(symbols: {kernel.symbol_source})")
    print(f"  {'table':<14}{'sites':>8}  sections")
    for table in tables:
        found = sites.get(table)
        if found is None:
            print(f"  {table:<14}{'-':>8}  (not read: see notes)")
            continue
        per_section: dict[str, int] = {}
        for site in found:
            per_section[site.section] = per_section.get(site.section, 0) + 1
        where = ", ".join(f"{name} {n}" for name, n in sorted(per_section.items(), key=lambda x: -x[1]))
        print(f"  {table:<14}{len(found):>8}  {where}")
    for note in vmlinux.notes:
        print(f"  note: {note}")
    return EXIT_PASS


def cmd_kernels(args: argparse.Namespace) -> int:
    from .build.kbuild import build_info
    from .kernel import xen
    from .kernel.fetch import note_stderr
    from .kernel.image import cached_kernels, prepare_kernel
    from .kernel.refs import BuildRef, DebianRef, list_recipes, parse_ref
    if args.kcommand == "list":
        print("recipes (kernels/):")
        for name in list_recipes():
            ref = parse_ref(name)
            pinned = (f"{ref.package}={ref.version}" if isinstance(ref, DebianRef)
                      else ref.recipe.describe() if isinstance(ref, BuildRef) else ref.text)
            print(f"  {name:<16} {pinned}")
        print("prepared in the cache:")
        for entry in cached_kernels():
            meta = json.loads((entry / "kernel.json").read_text())
            built = build_info(entry)
            origin = f"  built from {built.get('identity')} ({built.get('recipe') or built.get('config')})" if built else ""
            print(f"  {entry.name:<48} symbols: {meta.get('symbol_source')}{origin}")
        return EXIT_PASS
    ref = parse_ref(args.ref)
    if isinstance(ref, DebianRef) and ref.package.startswith(xen.XEN_PACKAGE_PREFIX):
        print(json.dumps(xen.prepare_hypervisor(ref, note_stderr).identity(), indent=2))
    else:
        print(json.dumps(prepare_kernel(ref, note_stderr).identity(), indent=2))
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
