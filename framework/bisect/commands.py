"""``patchscope bisect`` and ``patchscope bisect-step``: arguments in, exit code out. An edge.

    patchscope bisect configs/pv-sites-native.yaml --good debian:linux-image-6.1.0-47-amd64 \\
        --bad debian:linux-image-6.1.0-57-amd64
    patchscope bisect configs/oversized-pv-patch.yaml --tree ~/src/linux --good v6.1.150 --bad HEAD \\
        --recipe kernels/tiny-6.1.yaml [--verify-revert]
    patchscope bisect --from out/nightly --cell 'pv-sites-native[debian-newest:6.1-native]' --good debian-6.1
    cd ~/src/linux && git bisect start BAD GOOD && \\
        git bisect run patchscope bisect-step configs/int3-selftest.yaml --recipe kernels/tiny-6.1.yaml

``bisect`` exits 0 when it found the first bad kernel and verified it, 1 when
it found one it could not verify or could only narrow the range (skipped
candidates), 2 when it could not start (bad input, ends that do not behave as
ends), 130 when interrupted. ``bisect-step`` exits as ``git bisect run`` reads
it: 0 good, 1 bad, 125 cannot test; 128 (abort the bisect, on purpose) when
its own input is unusable at every commit, and 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..build.commands import named_recipe
from ..build.kbuild import build_info
from ..build.recipe import LocalTree, Recipe
from ..config import Config, load_config, with_overrides
from ..domain import MODES, Note
from ..errors import InputError, KernelRefError, PatchscopeError
from ..kernel.fetch import apt_candidates, apt_download, cache_dir, deb_extract, note_stderr
from ..kernel.image import prepare_kernel
from ..kernel.refs import BuildRef, DebianRef, NewestRef, parse_ref
from . import html
from .debian import DebianSubject, Package, between, first_changelog_entry, flavour
from .driver import Candidate, Stopped, Subject
from .driver import run as run_bisect
from .gittree import GitSubject, clone_of, commit_of, describe, git, in_use, toplevel
from .record import Record, summary, table
from .runner import StepTester
from .search import expected_steps
from .signature import Signature

EXIT_FOUND, EXIT_UNVERIFIED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
STEP_GOOD, STEP_BAD, STEP_SKIP, STEP_ABORT = 0, 1, 125, 128


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("bisect", help="find the first bad kernel between a good and a bad one (Debian packages or a "
                                      "git tree), flake-aware and verified",
                       description="Bisect with a config as the oracle: the bad end's failure is its signature, "
                                   "a step is bad only when it fails the same way, and another failure is a skip. "
                                   "Over Debian packages (--good/--bad are kernel references) or over a git tree "
                                   "(--tree, --recipe; --good/--bad are commits), in patchscope's own clone of the "
                                   "tree: yours is never touched.")
    b.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml")
    b.add_argument("--good", help="a kernel (or, with --tree, a commit) that passes")
    b.add_argument("--bad", help="a kernel (or commit) that fails; with --from, the failing cell's kernel")
    b.add_argument("--tree", type=Path, help="a git checkout to bisect over its commits (never written)")
    b.add_argument("--recipe", help="with --tree: the build recipe (file or name in kernels/) each commit is built "
                                    "with; its tree is replaced by the commit")
    b.add_argument("--verify-revert", action="store_true",
                   help="with --tree: also build the bad end with the culprit reverted, which must pass")
    b.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="a matrix results directory: bisect one of its failing cells (--cell)")
    b.add_argument("--cell", help="with --from: the cell, as CONFIG/KERNEL/MODE or its id CONFIG[KERNEL-MODE]")
    _step_options(b)
    b.add_argument("--json", action="store_true", help="the whole record as JSON on stdout (progress stays on stderr)")

    s = sub.add_parser("bisect-step", help="one bisect step for 'git bisect run': exit 0 good, 1 bad, 125 cannot test",
                       description="Build the tree's checked-out commit with the recipe and run the config. With a "
                                   "git bisect in progress, the bisect's bad end is built and run first (once, "
                                   "cached) and its failure is the signature a bad step must show.")
    s.add_argument("config", type=Path, metavar="CONFIG.yaml")
    s.add_argument("--recipe", required=True, help="the build recipe (file or name in kernels/)")
    s.add_argument("--tree", type=Path, default=Path("."), help="the checkout (default: the current directory)")
    _step_options(s)


def _step_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=MODES, help="the mode to run in (default: the config's first)")
    p.add_argument("--runs", type=int, default=1, metavar="N", help="runs of each step (default 1); more when they "
                                                                    "disagree")
    p.add_argument("--max-runs", type=int, metavar="M", help="runs of a step whose runs disagree (default: 2N+1, "
                                                             "at least 3)")
    p.add_argument("--timeout", type=float, help="seconds before a run counts as hung (default: the config's)")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="where the record and every run go (default: patchscope-out/bisect/<config>-<mode>)")


def _runs(args: argparse.Namespace) -> tuple[int, int]:
    if args.runs < 1:
        raise InputError(f"--runs {args.runs}: give at least 1")
    most = args.max_runs if args.max_runs is not None else max(3, 2 * args.runs + 1)
    if most < args.runs:
        raise InputError(f"--max-runs {most} is below --runs {args.runs}")
    return args.runs, most


def _config(path: Path, mode: str | None, timeout: float | None) -> tuple[Config, str]:
    cfg = with_overrides(load_config(path), timeout=timeout)
    chosen = mode or cfg.modes[0]
    if chosen not in cfg.modes:
        raise InputError(f"--mode {chosen}: {path} runs in {', '.join(cfg.modes)} only")
    return cfg, chosen


def _out_dir(args: argparse.Namespace, cfg: Config, mode: str) -> Path:
    out: Path = args.artifacts or Path("patchscope-out") / "bisect" / f"{cfg.name}-{mode}"
    if out.exists() and any(out.iterdir()) and not (out / "bisect.json").exists():
        raise InputError(f"--artifacts {out}: holds files that are not a bisect's; give an empty or new directory")
    (out / "steps").mkdir(parents=True, exist_ok=True)
    for old in (out / "steps").iterdir():          # a previous bisect's steps: replaced, not mixed in
        if old.is_dir():
            shutil.rmtree(old)
    return out


def _saver(out: Path) -> Callable[[Record], None]:
    def save(record: Record) -> None:
        tmp = out / "bisect.json.tmp"
        tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
        tmp.replace(out / "bisect.json")
        html.write_page(out, record)
    return save


# --- Debian ---------------------------------------------------------------------------------------

def _package(text: str, option: str, carried: dict[str, str] | None) -> Package:
    ref = parse_ref(text)
    if isinstance(ref, NewestRef):
        from ..kernel.fetch import resolve_newest
        ref = resolve_newest(ref)
    if not isinstance(ref, DebianRef):
        raise KernelRefError(f"{option} {text}: a Debian bisect goes between Debian kernel packages "
                             "(debian:<package>, a recipe name); to bisect a tree give --tree and --recipe")
    if ref.version:
        return Package(ref.package, ref.version)
    version = (carried or {}).get(ref.package)
    if version is None:
        raise KernelRefError(f"{option} {text}: the apt sources carry no {ref.package}; check the name with "
                             f"'apt-cache policy {ref.package}' (and run 'apt-get update' as root if the lists are "
                             "empty)")
    return Package(ref.package, version)


def _flavour_of(text: str) -> str | None:
    ref = parse_ref(text)
    return ref.flavour if isinstance(ref, NewestRef) else flavour(ref.package) if isinstance(ref, DebianRef) else None


def _debian_subject(good_text: str, bad_text: str) -> tuple[DebianSubject, list[Package]]:
    wanted = {_flavour_of(good_text) or "amd64", _flavour_of(bad_text) or "amd64"}
    carried, _ = apt_candidates("linux-image-", lambda n: flavour(n) in wanted)
    good, bad = _package(good_text, "--good", carried), _package(bad_text, "--bad", carried)
    packages = between(good, bad, carried)
    return DebianSubject(packages, _changelog), packages


def _changelog_member(name: str) -> str | None:
    """A kernel image package's changelog: changelog.Debian.gz, or (a signed image) the changelog.gz it carries."""
    if name.startswith("usr/share/doc/") and name.endswith(("/changelog.Debian.gz", "/changelog.gz")):
        return "changelog.gz"
    return None


def _changelog(p: Package) -> str:
    """The newest entry of the package's changelog.Debian.gz ('' when it holds none)."""
    try:
        deb = apt_download(DebianRef(p.name, p.version, p.ref))
        with tempfile.TemporaryDirectory(prefix="patchscope-changelog-") as tmp:
            got = deb_extract(deb, _changelog_member, Path(tmp))
            if "changelog.gz" not in got:
                return ""
            return first_changelog_entry(gzip.decompress(got["changelog.gz"].read_bytes()).decode(errors="replace"))
    except (PatchscopeError, OSError, EOFError):
        return ""


def _debian_prepare(note: Note) -> Callable[[Candidate], tuple[str, str]]:
    def prepare(c: Candidate) -> tuple[str, str]:
        ref = parse_ref(c.ref)
        assert isinstance(ref, DebianRef)
        debs = cache_dir() / "debs"
        had = any(debs.glob(f"{ref.package}_*.deb")) if debs.is_dir() else False
        started = time.monotonic()
        prepare_kernel(ref, note)
        return c.ref, ("cached" if had else f"downloaded and prepared in {time.monotonic() - started:.0f} s")
    return prepare


# --- git ------------------------------------------------------------------------------------------

def _build_prepare(recipe: Recipe, tree: Callable[[Candidate], Path], note: Note) -> Callable[[Candidate], tuple[str, str]]:
    """Make a candidate runnable by building it: ``tree(c)`` puts the source at the commit and gives its path."""
    def prepare(c: Candidate) -> tuple[str, str]:
        path = tree(c)
        started = time.time()
        kernel = prepare_kernel(BuildRef(Recipe(LocalTree(path), recipe.config, recipe.fragments, None, recipe.source),
                                         f"{recipe.name or 'build'}@{c.ref[:12]}"), note)
        info = build_info(kernel.bzimage.parent) or {}
        built = (kernel.bzimage.parent / "build.json").stat().st_mtime >= started
        word = f"built in {info.get('seconds', '?')} s ({info.get('steps', '?')} kbuild steps)" if built else "cached"
        ref = f"path:{kernel.bzimage}" + (f",vmlinux={kernel.vmlinux}" if kernel.vmlinux else "")
        return ref, word
    return prepare


def _at_commit(subject: GitSubject) -> Callable[[Candidate], Path]:
    def tree(c: Candidate) -> Path:
        return subject.checkout(c.ref)
    return tree


# --- bisect ---------------------------------------------------------------------------------------

def _from_matrix(args: argparse.Namespace) -> None:
    """--from DIR --cell C: the cell's config, pinned kernel and mode become CONFIG, --bad and --mode."""
    from ..matrix.commands import load_results
    if not args.cell:
        raise InputError("--from needs --cell CONFIG/KERNEL/MODE (a failing cell of that matrix)")
    results = load_results(args.from_dir)
    wanted = args.cell
    m = re.fullmatch(r"([^/\[]+)/(.+)/([a-z-]+)", wanted)
    if m:
        wanted = f"{m.group(1)}[{m.group(2)}-{m.group(3)}]"
    cell = next((c for c in results.cells if c.cell.id == wanted), None)
    if cell is None:
        failing = [c.cell.id for c in results.cells if c.state in ("fail", "flaky")]
        raise InputError(f"--cell {args.cell}: no such cell in {args.from_dir}; its failing cells: "
                         f"{', '.join(failing) or 'none'}")
    if cell.state not in ("fail", "flaky"):
        raise InputError(f"--cell {args.cell}: the cell's state is {cell.state}, not fail: there is nothing to bisect")
    if cell.result is None or not cell.result.config:
        raise InputError(f"--cell {args.cell}: its result.json names no config file; give CONFIG and --bad instead")
    kernel = next((k for k in results.kernels if k.name == cell.cell.kernel), None)
    args.config = Path(cell.result.config)
    args.bad = args.bad or (kernel.ref if kernel is not None else cell.cell.kernel)
    args.mode = args.mode or cell.cell.mode


def cmd_bisect(args: argparse.Namespace) -> int:
    if args.from_dir is not None:
        _from_matrix(args)
    if args.config is None:
        raise InputError("bisect: give a CONFIG.yaml (or --from DIR --cell CELL)")
    if not args.good or not args.bad:
        raise InputError("bisect: give --good and --bad" + (" (with --from, --good only)" if args.from_dir else ""))
    if (args.tree is None) != (args.recipe is None):
        raise InputError("bisect: --tree and --recipe go together (a tree is built with a recipe at every commit)")
    if args.verify_revert and args.tree is None:
        raise InputError("--verify-revert needs --tree: only a commit can be reverted")
    runs, most = _runs(args)
    cfg, mode = _config(args.config, args.mode, args.timeout)
    note = _progress_note()
    subject: Subject
    git_subject: GitSubject | None = None
    if args.tree is not None:
        recipe = named_recipe(args.recipe, "--recipe")
        git_subject = GitSubject.open(args.tree, args.good, args.bad)
        subject = git_subject
        prepare = _build_prepare(recipe, _at_commit(git_subject), note)
        untested = git_subject.untested()
        good_end, bad_end = git_subject.ends()
        record = Record("git", str(args.config), mode, good_end.label, bad_end.label, runs, most, untested,
                        expected_steps(untested), tree=str(git_subject.tree), recipe=str(recipe.source or args.recipe))
        note(f"{untested} commits between {good_end.label} and {bad_end.label}: about {record.expected_steps} "
             f"steps, built in {git_subject.clone} (your tree is not touched)")
    else:
        debian, packages = _debian_subject(args.good, args.bad)
        subject = debian
        prepare = _debian_prepare(note)
        untested = len(packages) - 2
        record = Record("debian", str(args.config), mode, packages[0].label, packages[-1].label, runs, most, untested,
                        expected_steps(untested), candidates=tuple(p.label for p in packages))
        note(f"{len(packages)} kernels from {packages[0].label} to {packages[-1].label}, {untested} between them: "
             f"about {record.expected_steps} steps")
        for i, p in enumerate(packages):
            note(f"  {'good' if i == 0 else 'bad ' if i == len(packages) - 1 else '    '} {p.label}")
    out = _out_dir(args, cfg, mode)
    record.meta = {"patchscope": __version__, "started": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"), "artifacts": str(out), "argv": sys.argv[1:]}
    save = _saver(out)
    save(record)
    tester = StepTester(cfg, mode, out, runs, most, prepare, note, timeout=args.timeout)
    started = time.monotonic()
    try:
        with in_use(git_subject.tree) if git_subject is not None else contextlib.nullcontext():
            run_bisect(subject, tester, record, verify_revert=args.verify_revert, progress=note, saved=save)
    except Stopped as err:
        record.meta["duration_s"] = round(time.monotonic() - started, 1)
        save(record)
        _show(record, out, args.json)
        raise Stopped(f"{err}; the record is {out / 'bisect.json'}") from None
    except KeyboardInterrupt:
        record.state, record.why = "interrupted", "stopped by the user (Ctrl-C or SIGTERM)"
        record.meta["duration_s"] = round(time.monotonic() - started, 1)
        save(record)
        raise
    finally:
        if git_subject is not None:
            log = git_subject.saved_log or git_subject.bisect_log()
            if log:
                (out / "git-bisect.log").write_text(log)
            git_subject.reset()
    record.meta["duration_s"] = round(time.monotonic() - started, 1)
    save(record)
    _show(record, out, args.json)
    if record.state == "found" and record.verified:
        return EXIT_FOUND
    return EXIT_UNVERIFIED


def _progress_note() -> Note:
    started = time.monotonic()

    def note(message: str) -> None:
        elapsed = time.monotonic() - started
        print(f"patchscope: bisect {elapsed / 60:4.1f} min: {message}", file=sys.stderr, flush=True)
    return note


def _show(record: Record, out: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_json(), indent=2))
        return
    for line in table(record):
        print(line)
    print()
    for line in summary(record):
        print(line)
    print(f"record: {out / 'bisect.json'}  page: {out / html.PAGE}")


# --- bisect-step ----------------------------------------------------------------------------------

def cmd_bisect_step(args: argparse.Namespace) -> int:
    """One step for git bisect run; never an exit code that git would read by accident."""
    try:
        runs, most = _runs(args)
        cfg, mode = _config(args.config, args.mode, args.timeout)
        recipe = named_recipe(args.recipe, "--recipe")
        top = toplevel(args.tree)
    except PatchscopeError as err:
        print(f"patchscope: error: {err} (bisect-step exits {STEP_ABORT}: no commit can be tested so, and "
              "git bisect run stops)", file=sys.stderr)
        return STEP_ABORT
    note = note_stderr
    head = "HEAD"
    try:
        head = commit_of(top, "HEAD", "HEAD")
        out: Path = args.artifacts or Path("patchscope-out") / "bisect-step" / f"{cfg.name}-{mode}"
        with in_use(top):
            signature = _step_signature(top, cfg, mode, recipe, runs, most, out, note, args.timeout)
            tester = StepTester(cfg, mode, out / head[:12], runs, most,
                                _build_prepare(recipe, _step_tree(top), note), note, timeout=args.timeout)
            step = tester("step", Candidate(describe(top, head), head), signature)
    except _Abort as err:
        print(f"patchscope: error: {err} (bisect-step exits {STEP_ABORT}: git bisect run stops)", file=sys.stderr)
        return STEP_ABORT
    except PatchscopeError as err:
        print(f"patchscope: bisect-step: cannot test {head[:12]}: {err}")
        return STEP_SKIP
    print(f"bisect-step {step.label}: {step.decision}" + (" (flaky)" if step.flaky else "") + f": {step.why}")
    return {"good": STEP_GOOD, "bad": STEP_BAD, "skip": STEP_SKIP}[step.decision]


def _in_clone(top: Path) -> Callable[[Candidate], Path]:
    """patchscope's clone of ``top`` (fetched once) at each candidate's commit: the path to build."""
    clone: list[Path] = []

    def tree(c: Candidate) -> Path:
        if not clone:
            clone.append(clone_of(top))
        git(clone[0], "checkout", "--quiet", "--force", "--detach", c.ref)
        return clone[0]
    return tree


def _step_tree(top: Path) -> Callable[[Candidate], Path]:
    """Where bisect-step builds the checked-out commit: patchscope's clone of the tree at that commit (the same
    work directory and ccache as ``bisect --tree``), or the tree itself when it has uncommitted changes."""
    in_clone = _in_clone(top)

    def tree(c: Candidate) -> Path:
        if git(top, "status", "--porcelain", "--untracked-files=no").stdout.strip():
            return top
        return in_clone(c)
    return tree


class _Abort(PatchscopeError):
    """bisect-step's premise is wrong at every commit: stop git bisect run (exit 128)."""


def _original_bad(top: Path) -> str | None:
    """The bad end git bisect started with, from ``git bisect log``; None without a bisect in progress."""
    proc = git(top, "bisect", "log", check=False)
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        m = re.match(r"# (?:bad|new): \[([0-9a-f]{40})\]", line)
        if m:
            return m.group(1)
        m = re.match(r"git bisect start '([0-9a-f]{40})'", line)
        if m:
            return m.group(1)
    return None


def _step_signature(top: Path, cfg: Config, mode: str, recipe: Recipe, runs: int, most: int, out: Path,
                    note: Note, timeout: float | None = None) -> Signature | None:
    """The bisect's bad end's signature: recorded once per (bisect, config, mode, recipe), in the cache."""
    bad = _original_bad(top)
    if bad is None:
        note("no git bisect in progress here: any failure of the config counts as bad")
        return None
    assert cfg.path is not None
    key = hashlib.sha256("\0".join((bad, str(cfg.path.resolve()), cfg.path.read_text(), mode,
                                    recipe.describe())).encode()).hexdigest()[:16]
    store = cache_dir() / "bisect" / "signatures" / f"{key}.json"
    if store.exists():
        try:
            return Signature(tuple(json.loads(store.read_text())["facets"]))
        except (OSError, ValueError, KeyError, TypeError):
            store.unlink(missing_ok=True)
    note(f"recording the bad end's failure first: {bad[:12]} (once for this bisect)")
    tester = StepTester(cfg, mode, out / f"bad-end-{bad[:12]}", runs, most,
                        _build_prepare(recipe, _in_clone(top), note), note, timeout=timeout)
    step = tester("bad-end", Candidate(describe(top, bad), bad), None)
    signature = Signature.common([r.facets for r in step.runs if r.cls == "bad"])
    if step.decision != "bad" or not signature.facets:
        raise _Abort(f"the bisect's bad end {step.label} does not fail with {cfg.path} ({step.why})")
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"bad": bad, "config": str(cfg.path), "mode": mode, "facets": signature.facets}) + "\n")
    note(f"signature: {signature.text()}")
    return signature
