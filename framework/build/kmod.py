"""Out-of-tree kernel modules built against a Debian kernel's headers. The edge of module builds.

For a Debian kernel ABI (``6.1.0-56-amd64``: package ``linux-image-6.1.0-56-amd64``)
the headers are three packages, fetched with ``apt-get download`` and never
installed:

- ``linux-headers-<abi>``: the flavour's ``.config``, ``Module.symvers``,
  generated headers, and a one-line ``Makefile`` that includes the common one;
- ``linux-headers-<abi-without-flavour>-common`` (the same version): the
  kernel's ``Makefile``, ``include/`` and ``arch/*/include``;
- ``linux-kbuild-<line>``: ``scripts/`` and ``tools/objtool`` (host programs).
  The headers package asks for it with ``>=`` (``linux-kbuild-6.1 (>=
  6.1.192-2)``) and the archive may carry only a newer one: the candidate
  ``apt-cache policy`` gives is taken, and recorded.

Which common and kbuild packages, and which compiler (``linux-compiler-gcc-12-x86``
→ ``gcc-12``), is read from the headers package's ``Depends``. All three are
unpacked into one root, ``headers/<abi>_<version>/root/``, so that the
packages' relative symlinks (``usr/src/linux-headers-<abi>/scripts ->
../../lib/linux-kbuild-6.1/scripts``) resolve inside it; the one absolute path
the packages hold in a Makefile (``include /usr/src/linux-headers-…-common/
Makefile``) is made relative, and absolute symlinks are made relative to the
root. Cached, locked and atomic, once per ABI and version.

:func:`build_module_dir` copies a module source directory (a ``Kbuild`` or
``Makefile`` with ``obj-m``) into the cache, runs ``make -C
<root>/usr/src/linux-headers-<abi> M=<copy> modules`` with the host's compiler,
and returns the ``.ko`` files. The entry ``modules/<key>/`` is keyed by the
sources, the ABI and version, and the compiler; the log is kept there
(``build.log``). A module carrying ``.note.klp_convert`` rules is converted
afterwards (:mod:`framework.elf.klp`: livepatch relocations; the original is
kept as ``<name>.ko.unconverted``). A failed build raises :class:`BuildError`
with the first compiler error and the log's path (a copy under
``modules/failed/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ..debversion import compare_debian_versions
from ..elf import klp
from ..errors import BuildError, FetchError, ImageError, KernelRefError, ToolMissingError, UnsupportedError
from ..kernel.fetch import (
    apt_download,
    building,
    cache_dir,
    deb_file_version,
    deb_members,
    locked,
    parse_policy,
    read_meta,
    safe_key,
    write_meta,
)
from ..kernel.refs import DebianRef
from . import buildlog
from .kbuild import jobs_default, stopped_with_patchscope

Note = Callable[[str], None]

# Files of a module source directory that are not sources (build products, notes): never copied, never hashed.
_NOT_SOURCES = re.compile(r"(?:\.o|\.ko|\.mod|\.mod\.c|\.cmd|\.unconverted|\.order|\.symvers|\.d|\.tmp|\.md)$"
                          r"|^README")
_ABI = re.compile(r"^\d+\.\d+[0-9A-Za-z.+~-]*$")


class KernelLike(Protocol):
    """What :func:`build_module_dir` needs of a prepared kernel (:class:`framework.kernel.image.Kernel`)."""

    @property
    def release(self) -> str: ...          # "6.1.0-56-amd64 (debian-kernel@…) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 …"

    @property
    def package(self) -> str | None: ...  # "linux-image-6.1.0-56-amd64"

    @property
    def version(self) -> str | None: ...  # "6.1.192-2"


@dataclass(frozen=True)
class Headers:
    """A Debian kernel's headers, unpacked into one root in the cache."""

    abi: str                               # "6.1.0-56-amd64"
    version: str                           # of linux-headers-<abi>
    root: Path                             # headers/<abi>_<version>/root
    packages: tuple[tuple[str, str], ...]  # (package, version) unpacked, headers first
    compiler: str                          # "gcc-12": the CC the headers' .kernelvariables name

    @property
    def build_dir(self) -> Path:
        """What ``make -C`` gets: ``/usr/src/linux-headers-<abi>`` inside the root (``/lib/modules/<abi>/build``)."""
        return self.root / "usr" / "src" / f"linux-headers-{self.abi}"


@dataclass(frozen=True)
class Target:
    """The kernel modules are built for: an ABI, and the headers' version when it is known."""

    abi: str
    version: str | None


def target_of(kernel: str | DebianRef | KernelLike) -> Target:
    """The ABI and version to build for, from an ABI (``6.1.0-56-amd64``, ``6.1.0-56-amd64=6.1.192-2``),
    a Debian kernel reference or a prepared kernel."""
    if isinstance(kernel, str):
        abi, _, version = kernel.strip().partition("=")
        if not _ABI.match(abi):
            raise KernelRefError(f"{kernel!r} is not a kernel release; give one like 6.1.0-56-amd64 "
                                 "(optionally =<version>: 6.1.0-56-amd64=6.1.192-2)")
        return Target(abi, version or None)
    if isinstance(kernel, DebianRef):
        return Target(_abi_of_package(kernel.package, kernel.text), kernel.version)
    release = kernel.release.split()[0] if kernel.release.split() else ""
    if kernel.package is None or not kernel.package.startswith("linux-image-"):
        raise UnsupportedError(f"modules are built against a Debian kernel package's headers; this kernel "
                               f"({release or 'unknown release'}) is not from one")
    abi = _abi_of_package(kernel.package, kernel.package)
    if release and release != abi:
        raise ImageError(f"{kernel.package}: its image says release {release}, not {abi}")
    return Target(abi, kernel.version)


def _abi_of_package(package: str, shown: str) -> str:
    m = re.fullmatch(r"linux-image-(.+?)(?:-unsigned)?", package)
    if m is None or not _ABI.match(m.group(1)):
        raise KernelRefError(f"{shown}: {package} is not a Debian kernel image package (linux-image-<abi>)")
    return m.group(1)


# --- the headers ---

def headers(kernel: str | DebianRef | KernelLike, note: Note | None = None) -> Headers:
    """The headers of ``kernel``, fetched and unpacked once (cached, locked, atomic)."""
    target = target_of(kernel)
    package = f"linux-headers-{target.abi}"
    version = target.version or _candidate(package)
    deb = apt_download(DebianRef(package, version, f"debian:{package}={version}"), note)
    key = safe_key(f"{target.abi}_{version}")
    final = cache_dir() / "headers" / key
    with locked(f"headers-{key}", note):
        if not (final / "headers.json").exists():
            started = time.monotonic()
            depends = _depends(deb)
            debs = [deb] + [_fetch_dependency(name, op, ver, note) for name, op, ver in depends
                            if name.startswith(("linux-headers-", "linux-kbuild-"))]
            with building(final) as tmp:
                root = tmp / "root"
                for d in debs:
                    if note:
                        note(f"unpacking {d.name}")
                    _unpack(d, root)
                fixed = _fix_makefiles(root, target.abi)
                compiler = _compiler(depends, root / "usr" / "src" / f"linux-headers-{target.abi}")
                if not (root / "usr" / "src" / f"linux-headers-{target.abi}" / "Makefile").exists():
                    raise ImageError(f"{deb.name}: no usr/src/linux-headers-{target.abi}/Makefile after unpacking")
                write_meta(tmp / "headers.json", {
                    "abi": target.abi, "version": version, "compiler": compiler,
                    "packages": [[_control(d).get("Package", d.name), deb_file_version(d)] for d in debs],
                    "depends": [" ".join(x for x in dep if x) for dep in depends], "fixed": fixed,
                    "seconds": round(time.monotonic() - started, 1)})
            if note:
                note(f"headers for {target.abi} ready in {final / 'root'}")
        meta = read_meta(final / "headers.json")
    return Headers(abi=target.abi, version=version, root=final / "root",
                   packages=tuple((str(p), str(v)) for p, v in meta["packages"]), compiler=str(meta["compiler"]))


def _candidate(package: str) -> str:
    """The version ``apt-cache policy`` would install of ``package``."""
    if shutil.which("apt-cache") is None:
        raise ToolMissingError("apt-cache", "apt")
    cmd = ["apt-cache", "policy", package]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    found = parse_policy(proc.stdout).get(package)
    if found is None:
        raise FetchError(f"the apt sources carry no {package} with a candidate version; check it with "
                         f"'apt-cache policy {package}', and run 'apt-get update' (as root) if the lists are empty",
                         cmd, proc.stderr)
    return found


def _fetch_dependency(name: str, op: str | None, version: str | None, note: Note | None) -> Path:
    """The .deb of a dependency: the exact version for ``=``, else the candidate, which must satisfy ``>=``."""
    if op == "=" and version:
        return apt_download(DebianRef(name, version, f"debian:{name}={version}"), note)
    candidate = _candidate(name)
    if op == ">=" and version and compare_debian_versions(candidate, version) < 0:
        raise FetchError(f"{name}: the apt sources' candidate {candidate} is older than the {version} the headers "
                         f"need; check with 'apt-cache policy {name}'")
    if note and version and candidate != version:
        note(f"{name} {op} {version} wanted: taking the candidate {candidate}")
    return apt_download(DebianRef(name, candidate, f"debian:{name}={candidate}"), note)


def _control(deb: Path) -> dict[str, str]:
    """The fields of a .deb's control file (continuation lines joined)."""
    members = deb_members(deb)
    name = next((n for n in members if n.startswith("control.tar")), None)
    if name is None:
        raise ImageError(f"{deb}: no control.tar member; delete it and fetch again")
    try:
        with tarfile.open(fileobj=io.BytesIO(members[name]), mode="r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "control"), None)
            fh = tar.extractfile(member) if member is not None else None
            text = fh.read().decode("utf-8", "replace") if fh is not None else ""
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImageError(f"{deb}: corrupt control archive ({err}); delete it and fetch again") from err
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1].isspace() and last is not None:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _depends(deb: Path) -> list[tuple[str, str | None, str | None]]:
    """(package, operator, version) of each Depends entry (the first of alternatives)."""
    out: list[tuple[str, str | None, str | None]] = []
    for entry in _control(deb).get("Depends", "").split(","):
        first = entry.split("|")[0].strip()
        m = re.fullmatch(r"([a-z0-9][a-z0-9+.-]*)(?::\S+)?\s*(?:\((<<|<=|=|>=|>>)\s*([^)\s]+)\))?", first)
        if m:
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


def _compiler(depends: Sequence[tuple[str, str | None, str | None]], build_dir: Path) -> str:
    """The C compiler the headers were made for: ``gcc-12`` from ``linux-compiler-gcc-12-x86`` (or .kernelvariables)."""
    for name, _, _ in depends:
        m = re.fullmatch(r"linux-compiler-(gcc-\d+)-.*", name)
        if m:
            return m.group(1)
    variables = build_dir / ".kernelvariables"
    if variables.exists():
        m = re.search(r"^CC\s*=.*?\b(gcc(?:-\d+)?)\s*$", variables.read_text(errors="replace"), re.MULTILINE)
        if m:
            return m.group(1)
    return "gcc"


def _unpack(deb: Path, root: Path) -> None:
    """Every file, directory and symlink of ``deb``'s data.tar under ``root``; absolute symlinks made relative."""
    members = deb_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ImageError(f"{deb}: no data.tar member; delete it and fetch again")
    root.mkdir(parents=True, exist_ok=True)
    hardlinks: list[tuple[Path, str]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
            for info in tar:
                name = posixpath.normpath(info.name.lstrip("/"))
                if name in (".", "") or name.startswith("../"):
                    continue
                path = root / name
                if info.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                elif info.issym():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    target = info.linkname
                    if target.startswith("/"):
                        target = posixpath.relpath(posixpath.normpath(target.lstrip("/")), posixpath.dirname(name))
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    path.symlink_to(target)
                elif info.islnk():
                    hardlinks.append((path, posixpath.normpath(info.linkname.lstrip("/"))))
                elif info.isfile():
                    fh = tar.extractfile(info)
                    if fh is None:
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    path.write_bytes(fh.read())
                    os.chmod(path, 0o755 if info.mode & 0o111 else 0o644)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImageError(f"{deb}: corrupt package data ({err}); delete it and fetch again") from err
    for path, target in hardlinks:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / target, path)


_ABSOLUTE_INCLUDE = re.compile(r"^(\s*-?include\s+)/usr/src/(\S+)", re.MULTILINE)


def _fix_makefiles(root: Path, abi: str) -> list[str]:
    """Make the headers' top Makefiles include each other relative to themselves, not by /usr/src paths."""
    fixed: list[str] = []
    for makefile in sorted((root / "usr" / "src").glob("linux-headers-*/Makefile")):
        text = makefile.read_text(errors="replace")
        new = _ABSOLUTE_INCLUDE.sub(lambda m: f"{m.group(1)}$(dir $(lastword $(MAKEFILE_LIST)))../{m.group(2)}", text)
        if new != text:
            makefile.write_text(new)
            fixed.append(str(makefile.relative_to(root)))
    return fixed


# --- building ---

@dataclass(frozen=True)
class ModuleBuild:
    """One build of a module source directory: its cache entry and what it made."""

    key: str
    entry: Path                       # modules/<key>/: src/ (the copy, built in), build.log, modules.json
    modules: tuple[Path, ...]         # the .ko files, converted where the source asked
    cached: bool
    seconds: float

    @property
    def log(self) -> Path:
        return self.entry / "build.log"


def build_module_dir(kernel_release_or_kernel: str | DebianRef | KernelLike, source_dir: Path,
                     note: Note | None = None, *, jobs: int | None = None) -> list[Path]:
    """Build the modules of ``source_dir`` for a Debian kernel; the ``.ko`` paths (cached by sources and kernel)."""
    return list(build_modules(kernel_release_or_kernel, source_dir, note, jobs=jobs).modules)


def build_modules(kernel: str | DebianRef | KernelLike, source_dir: Path, note: Note | None = None, *,
                  jobs: int | None = None) -> ModuleBuild:
    """:func:`build_module_dir`, with the cache entry and whether it was built now."""
    started = time.monotonic()
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise BuildError(f"{source_dir}: no such module source directory")
    if not (source_dir / "Kbuild").exists() and not (source_dir / "Makefile").exists():
        raise BuildError(f"{source_dir}: neither Kbuild nor Makefile: nothing tells kbuild which modules to build")
    sources = _sources(source_dir)
    make_tool = shutil.which("make")
    if make_tool is None:
        raise ToolMissingError("make", "make")
    hdrs = headers(kernel, note)
    if shutil.which(hdrs.compiler) is None:
        raise ToolMissingError(hdrs.compiler, hdrs.compiler)
    compiler = _version_line(hdrs.compiler)
    digest = hashlib.sha256()
    for rel, path in sources:
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    digest.update(f"\0{hdrs.abi}\0{hdrs.version}\0{compiler}\0{_CONVERTER_VERSION}".encode())
    key = f"{safe_key(source_dir.resolve().name)}-{digest.hexdigest()[:16]}"
    final = cache_dir() / "modules" / key
    with locked(f"modules-{key}", note):
        if (final / "modules.json").exists():
            meta = read_meta(final / "modules.json")
            return ModuleBuild(key, final, tuple(final / "src" / str(m) for m in meta["modules"]), cached=True,
                               seconds=time.monotonic() - started)
        with building(final) as tmp:
            src = tmp / "src"
            src.mkdir()
            for rel, path in sources:
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, src / rel)
            log_path = tmp / "build.log"
            cmd = ["make", "-C", str(hdrs.build_dir), f"M={src}", f"-j{jobs or jobs_default()}", "modules"]
            if note:
                note(f"building the modules of {source_dir} against linux-headers-{hdrs.abi} with {hdrs.compiler} "
                     f"(log: {final / 'build.log'})")
            with open(log_path, "w") as log:
                log.write(f"patchscope module build: {source_dir} for {hdrs.abi}\n"
                          f"headers: {', '.join(f'{p}={v}' for p, v in hdrs.packages)}\ncompiler: {compiler}\n")
                status = _make(cmd, log)
            if status != 0:
                raise _failed(source_dir, hdrs, log_path, key)
            built = sorted(src.rglob("*.ko"))
            if not built:
                raise _failed(source_dir, hdrs, log_path, key, "make succeeded but built no .ko")
            conversions = _convert(built, note)
            seconds = time.monotonic() - started
            write_meta(tmp / "modules.json", {
                "key": key, "source": str(source_dir.resolve()), "abi": hdrs.abi, "headers": hdrs.version,
                "packages": [list(p) for p in hdrs.packages], "compiler": compiler,
                "command": [c.replace(str(tmp), str(final)) for c in cmd],   # built in tmp, renamed to final
                "modules": [str(p.relative_to(src)) for p in built], "klp": conversions,
                "seconds": round(seconds, 1)})
        if note:
            note(f"built {len(built)} modules in {seconds:.1f} s: {final / 'src'}")
        return ModuleBuild(key, final, tuple(final / "src" / p.relative_to(src) for p in built), cached=False,
                           seconds=seconds)


_CONVERTER_VERSION = "klp-1"      # part of the key: a change to the conversion rebuilds


def _sources(source_dir: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every source file: no hidden files, no build products, no notes (*.md, README*)."""
    out: list[tuple[str, Path]] = []
    for path in sorted(source_dir.rglob("*")):
        rel = path.relative_to(source_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or _NOT_SOURCES.search(path.name):
            continue
        out.append((rel.as_posix(), path))
    return out


def _version_line(tool: str) -> str:
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    return (proc.stdout.splitlines() or [f"{tool} (unknown version)"])[0]


def _make(cmd: list[str], log: IO[str]) -> int:
    """Run make with every line into ``log``; make and its children stop with patchscope."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    with stopped_with_patchscope(proc, log):
        return proc.wait()


def _failed(source_dir: Path, hdrs: Headers, log_path: Path, key: str, why: str | None = None) -> BuildError:
    kept = cache_dir() / "modules" / "failed" / f"{time.strftime('%Y%m%dT%H%M%S')}-{key}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log_path, kept)
    if why is None:
        with open(kept, errors="replace") as fh:
            why = buildlog.first_error(fh) or "see the log"
    return BuildError(f"building the modules of {source_dir} against linux-headers-{hdrs.abi} failed: {why}; "
                      f"the whole log is {kept}", log=kept)


def _convert(modules: Sequence[Path], note: Note | None) -> dict[str, dict[str, object]]:
    """Convert, in place, every module that carries klp_convert rules; what each conversion did."""
    done: dict[str, dict[str, object]] = {}
    for ko in modules:
        data = ko.read_bytes()
        if klp.spec_of(data, ko.name) is None:
            continue
        converted = klp.convert(data, name=ko.name)
        if not converted.changed:
            continue
        shutil.copyfile(ko, ko.with_name(ko.name + ".unconverted"))
        tmp = ko.with_name(ko.name + ".tmp")
        tmp.write_bytes(converted.data)
        tmp.replace(ko)
        done[ko.name] = {"moved": dict(converted.moved), "symbols": list(converted.symbols),
                         "rules": [r.text() for r in converted.rules]}
        if note:
            moved = ", ".join(f"{n} into {s}" for s, n in converted.moved.items())
            note(f"{ko.name}: livepatch relocations: {moved}")
    return done

