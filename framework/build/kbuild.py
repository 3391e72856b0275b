"""Building a kernel from a recipe: configure, check, compile out of tree, cache. The edge of build/.

The steps, each visible to the user:

1. the tree is prepared (tree.py): a Debian source package unpacked once, or a
   directory identified by its git commit and uncommitted changes;
2. the base config is made in the work directory (``make O=<work> tinyconfig``, a
   Debian kernel's config, or a file), the fragments are laid over it (kconfig.py),
   ``make olddefconfig`` resolves it, and every value a fragment asked for is
   checked: one that did not survive is an error at the fragment's line;
3. the key is (tree identity, final .config, compiler); a kernel already built
   under that key is used as it is, and the second request builds nothing;
4. otherwise ``make -j<cores> bzImage vmlinux`` runs in the work directory with
   ccache (when installed) and fixed build timestamps, so rebuilding after a small
   change takes little more than the link;
5. bzImage, vmlinux (with its ELF symbol table), .config and the build log become a
   kernel cache entry ``kernels/build-<key>/`` (what ``kernels list`` shows).

A failed build raises :class:`BuildError` with the first compiler error and the
path of the whole log, which is kept (``builds/failed/``). Requests are
remembered (``builds/requests/``), so asking again for a recipe already built
neither configures nor compiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import BuildError, ImageError, ToolMissingError
from ..kernel.fetch import apt_download, building, cache_dir, deb_extract, locked, read_meta, write_meta
from ..kernel.refs import DebianRef
from . import buildlog, kconfig
from .recipe import ConfigFile, MakeTarget, PackageConfig, Recipe, build_key, shown
from .tree import Source, kconfig_symbols, prepare_tree

Note = Callable[[str], None]
# Fixed so that the same sources give the same objects (and ccache hits on init/version.c).
BUILD_ENV = {"KBUILD_BUILD_TIMESTAMP": "1970-01-01", "KBUILD_BUILD_USER": "patchscope", "KBUILD_BUILD_HOST": "patchscope"}
TARGETS = ("bzImage", "vmlinux")
_TOOLS = (("make", "make"), ("gcc", "gcc"), ("flex", "flex"), ("bison", "bison"), ("bc", "bc"))
PROGRESS_EVERY = 15.0


@dataclass(frozen=True)
class Built:
    key: str
    entry: Path                  # kernels/build-<key>/: bzImage, vmlinux, config, build.log, build.json
    cached: bool                 # True when nothing was compiled
    seconds: float               # the whole request, configure included
    steps: int = 0               # kbuild steps run (0 when cached)

    @property
    def log(self) -> Path:
        return self.entry / "build.log"


def jobs_default() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def compiler_version() -> str:
    if shutil.which("gcc") is None:
        raise ToolMissingError("gcc", "gcc")
    proc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    return (proc.stdout.splitlines() or ["gcc (unknown version)"])[0]


def _check_tools() -> None:
    for tool, package in _TOOLS:
        if shutil.which(tool) is None:
            raise ToolMissingError(tool, package)


OWN_OBJTREE = ".patchscope-build"


def owned(tree: Path) -> bool:
    """Is ``tree`` one of patchscope's own (an unpacked Debian source, a bisect's clone), never the user's?"""
    cache = cache_dir().resolve()
    return any(tree.resolve().is_relative_to(cache / sub) for sub in ("sources", "bisect/clones"))


def work_dir(tree: Path, slot: str) -> Path:
    """Where ``tree`` builds. In a tree of patchscope's own, its subdirectory ``.patchscope-build``: kbuild then
    names every source relative to it (``srctree := ..``), so the compiler's arguments are the same whatever
    the tree's path and ccache serves a bisect's clone from the Debian source's build (``.*`` is in the kernel's
    .gitignore: git does not see it). A user's tree is never written: it builds in the cache."""
    if owned(tree):
        return tree / OWN_OBJTREE
    return cache_dir() / "builds" / "work" / slot


def entry_dir(key: str) -> Path:
    return cache_dir() / "kernels" / f"build-{key}"


def _requests() -> Path:
    path = cache_dir() / "builds" / "requests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remembered(request: str) -> str | None:
    path = _requests() / f"{request}.json"
    if not path.exists():
        return None
    try:
        key = json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and (entry_dir(key) / "build.json").exists() else None


def _remember(request: str, key: str) -> None:
    path = _requests() / f"{request}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key}) + "\n")
    tmp.replace(path)


class _Make:
    """make in one work directory, with the environment and variables every call shares."""

    def __init__(self, source: Source, work: Path, jobs: int) -> None:
        self.source = source
        self.work = work
        self.jobs = jobs
        self.env = dict(os.environ, **BUILD_ENV)
        self.variables: list[str] = []
        if shutil.which("ccache") is not None:
            self.variables.append("CC=ccache gcc")
            # A tree always builds in the same work directory, so the paths kbuild gives the compiler
            # stay the same from build to build (relative ones in patchscope's own trees: work_dir),
            # and ccache hits without base_dir.
            self.env.setdefault("CCACHE_DIR", str(cache_dir() / "ccache"))

    def command(self, *targets: str) -> list[str]:
        return ["make", "-C", str(self.source.path), f"O={self.work}", f"-j{self.jobs}", *self.variables, *targets]

    def run(self, targets: Sequence[str], log: IO[str], progress: Callable[[buildlog.Step, int], None] | None = None
            ) -> int:
        """Run make, every line into ``log``; returns its exit status."""
        cmd = self.command(*targets)
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        steps = 0
        # make runs in its own session: on Ctrl-C or SIGTERM patchscope stops it, and every compiler under it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, text=True, errors="replace", bufsize=1, start_new_session=True)
        try:
            with stopped_with_patchscope(proc, log):
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    found = buildlog.step(line)
                    if found is not None:
                        steps += 1
                        if progress is not None:
                            progress(found, steps)
                return proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            log.flush()


@contextlib.contextmanager
def stopped_with_patchscope(proc: subprocess.Popen[str], log: IO[str]) -> Iterator[None]:
    """make (started with start_new_session) and every compiler under it stop when patchscope does:
    on Ctrl-C, SIGTERM or any error, its process group gets SIGTERM and the log says so."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        log.write("patchscope: interrupted; make stopped\n")
        raise


def _fail(what: str, log_path: Path, step: str) -> BuildError:
    kept = _keep(log_path, step)
    with open(kept, errors="replace") as fh:
        error = buildlog.first_error(fh)
    return BuildError(f"{what} failed: {error or 'see the log'}; the whole log is {kept}", log=kept)


def _base_config(recipe: Recipe, make: _Make, log: IO[str], log_path: Path, note: Note | None) -> str:
    config = recipe.config
    dot = make.work / ".config"
    if isinstance(config, MakeTarget):
        if make.run([config.target], log) != 0:
            raise _fail(f"make {config.target}", log_path, "config")
        return dot.read_text()
    if isinstance(config, PackageConfig):
        deb = apt_download(DebianRef(config.package, config.version, config.text()), note)
        got = deb_extract(deb, lambda n: "config" if n.startswith("boot/config-") else None, make.work)
        if "config" not in got:
            raise ImageError(f"{deb.name}: holds no boot/config-*; give a kernel image package for config:")
        return got["config"].read_text()
    assert isinstance(config, ConfigFile)
    try:
        return config.path.read_text()
    except OSError as err:
        raise ImageError(f"{config.path}: cannot read this base config: {err.strerror or err}") from None


def _keep(log_path: Path, step: str) -> Path:
    """A copy of the work directory's log under builds/failed/, which the next build cannot overwrite."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = cache_dir() / "builds" / "failed" / f"{stamp}-{step}-{log_path.parent.name}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log_path, kept)
    return kept


def _configure(recipe: Recipe, make: _Make, log: IO[str], log_path: Path, note: Note | None) -> str:
    """The final .config in the work directory: base, fragments, olddefconfig, checked."""
    make.work.mkdir(parents=True, exist_ok=True)
    base = _base_config(recipe, make, log, log_path, note)
    merged = kconfig.merge(base, [(shown(f.path), f.text) for f in recipe.fragments])
    for line in merged.notes():
        if note:
            note(line)
    (make.work / ".config").write_text(merged.text)
    if make.run(["olddefconfig"], log) != 0:
        raise _fail("make olddefconfig", log_path, "config")
    final = (make.work / ".config").read_text()
    missing = kconfig.lost(merged.requested.values(), final)
    if missing:
        known = kconfig_symbols(make.source.path)
        missing = kconfig.lost(merged.requested.values(), final, known=known)
        for item in missing:
            log.write(f"patchscope: {item.message()}\n")
        log.flush()
        kept = _keep(log_path, "config")
        more = f" ({len(missing) - 1} more in {kept})" if len(missing) > 1 else ""
        raise BuildError(missing[0].message() + more, log=kept)
    return final


def build(recipe: Recipe, note: Note | None = None, *, jobs: int | None = None,
          finish: Callable[[Path], None] | None = None) -> Built:
    """Build (or find) the kernel of ``recipe``. ``finish(tmp)`` completes the cache entry (kernel.json)."""
    started = time.monotonic()
    _check_tools()
    source = prepare_tree(recipe.tree, note)
    compiler = compiler_version()
    request = recipe.request_digest(source.identity, compiler)
    known = _remembered(request)
    if known is not None:
        return Built(known, entry_dir(known), cached=True, seconds=time.monotonic() - started)
    slot = hashlib.sha256(str(source.path).encode()).hexdigest()[:12]
    work = work_dir(source.path, slot)
    with locked(f"build-work-{slot}", note):
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "patchscope-build.log"
        with open(log_path, "w") as log:
            log.write(f"patchscope build: {recipe.describe()}\ntree: {source.path} ({source.identity})\n"
                      f"compiler: {compiler}\n")
            if note:
                note(f"configuring {recipe.describe()}")
            make = _Make(source, work, jobs or jobs_default())
            final = _configure(recipe, make, log, log_path, note)
            key = build_key(source.identity, final, compiler)
            entry = entry_dir(key)
            if (entry / "build.json").exists():
                _remember(request, key)
                return Built(key, entry, cached=True, seconds=time.monotonic() - started)
            steps = _compile(make, log, log_path, note)
            # still holding the work directory: nothing else may build into it before it is copied
            with locked(f"kernel-build-{key}", note), building(entry) as tmp:
                shutil.copyfile(work / "arch" / "x86" / "boot" / "bzImage", tmp / "bzImage")
                shutil.copyfile(work / "vmlinux", tmp / "vmlinux.given")
                shutil.copyfile(work / ".config", tmp / "config")
                shutil.copyfile(log_path, tmp / "build.log")
                seconds = time.monotonic() - started
                write_meta(tmp / "build.json", {
                    "key": key, "recipe": recipe.name, "tree": recipe.tree.text(), "identity": source.identity,
                    "config": recipe.config.text(), "fragments": [str(f.path) for f in recipe.fragments],
                    "compiler": compiler, "ccache": "CC=ccache gcc" in make.variables, "jobs": make.jobs,
                    "steps": steps, "seconds": round(seconds, 1)})
                if finish is not None:
                    finish(tmp)
    _remember(request, key)
    return Built(key, entry, cached=False, seconds=seconds, steps=steps)


def _compile(make: _Make, log: IO[str], log_path: Path, note: Note | None) -> int:
    started = time.monotonic()
    last = [started]
    steps = [0]

    def progress(step: buildlog.Step, count: int) -> None:
        steps[0] = count
        now = time.monotonic()
        if note is not None and now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            note(f"building: {count:,} steps in {_duration(now - started)}, now {step.kind} {step.target}")

    if note:
        note(f"building {' '.join(TARGETS)} with make -j{make.jobs}"
             + (" and ccache" if "CC=ccache gcc" in make.variables else "") + f" (log: {log_path})")
    if make.run(TARGETS, log, progress) != 0:
        raise _fail("the kernel build", log_path, "build")
    if note:
        note(f"built in {_duration(time.monotonic() - started)} ({steps[0]:,} steps)")
    return steps[0]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def build_info(entry: Path) -> dict[str, object] | None:
    """A build entry's build.json, or None for a kernel that was not built here."""
    path = entry / "build.json"
    return read_meta(path) if path.exists() else None
