"""Kernel source trees: Debian's linux-source packages unpacked into the cache, or a directory on disk.

Each tree has an *identity*, the part of a build's cache key that says which
sources were compiled:

- ``linux-source-6.1=6.1.192-2``: a Debian source package at an exact version;
- ``git:<commit>`` or ``git:<commit>+dirty-<hash>``: a git checkout at HEAD, plus a
  hash of its uncommitted changes and untracked files (``.gitignore``d files left out);
- ``dir:<hash>``: any other directory, by the paths, sizes and mtimes of its files.

Trees are only read: builds go to a separate ``O=`` directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FetchError, KernelRefError, ToolMissingError
from ..kernel.fetch import apt_download, building, cache_dir, deb_extract, locked, parse_policy, safe_key
from ..kernel.refs import DebianRef
from .recipe import DebianSource, LocalTree, Tree

Note = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    path: Path             # the top of the tree (holds Makefile, Kconfig, arch/)
    identity: str
    commit: str | None = None


def prepare_tree(tree: Tree, note: Note | None = None) -> Source:
    if isinstance(tree, DebianSource):
        return _debian_source(tree, note)
    return _local(tree)


def resolve_version(tree: DebianSource, note: Note | None = None) -> str:
    """The exact version: the recipe's, or the candidate of the host's apt sources."""
    if tree.version:
        return tree.version
    if shutil.which("apt-cache") is None:
        raise ToolMissingError("apt-cache", "apt")
    cmd = ["apt-cache", "policy", tree.package]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    version = parse_policy(proc.stdout).get(tree.package)
    if version is None:
        raise FetchError(f"{tree.text()}: the apt sources carry no {tree.package}; check 'apt-cache policy "
                         f"{tree.package}', and run 'apt-get update' (as root) if the package lists are empty",
                         cmd, proc.stderr)
    if note:
        note(f"{tree.text()} is {tree.package}={version}")
    return version


def _debian_source(tree: DebianSource, note: Note | None) -> Source:
    version = resolve_version(tree, note)
    identity = f"{tree.package}={version}"
    final = cache_dir() / "sources" / safe_key(f"{tree.package}_{version}")
    with locked(safe_key(f"source-{tree.package}-{version}"), note):
        if not (final / "Makefile").exists():
            deb = apt_download(DebianRef(tree.package, version, identity), note)
            if shutil.which("tar") is None or shutil.which("xz") is None:
                raise ToolMissingError("tar/xz", "xz-utils")
            with building(final) as tmp:
                if note:
                    note(f"unpacking {deb.name} (about 15 s)")
                got = deb_extract(deb, lambda n: "source.tar" if n.startswith("usr/src/linux-source-")
                                  and ".tar" in n else None, tmp)
                if "source.tar" not in got:
                    raise FetchError(f"{deb.name}: holds no usr/src/linux-source-*.tar.*; is {tree.package} "
                                     "a kernel source package?", ["dpkg-deb", "-c", str(deb)], "")
                cmd = ["tar", "-xf", str(got["source.tar"]), "-C", str(tmp), "--strip-components=1",
                       "--no-same-owner"]
                proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
                got["source.tar"].unlink()
                if proc.returncode != 0:
                    raise FetchError(f"{deb.name}: unpacking the source failed: "
                                     f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}; delete it and retry",
                                     cmd, proc.stderr)
    return Source(final, identity)


def _local(tree: LocalTree) -> Source:
    path = tree.path.resolve()
    if not path.is_dir():
        raise KernelRefError(f"{tree.path}: no such kernel source directory")
    if not (path / "Makefile").is_file() or not (path / "arch" / "x86" / "Kconfig").is_file():
        raise KernelRefError(f"{tree.path}: not a Linux source tree (no Makefile and arch/x86/Kconfig)")
    if (path / ".config").exists() or (path / "include" / "config").is_dir():
        raise KernelRefError(f"{tree.path}: the tree has been configured or built in place, which blocks "
                             f"out-of-tree builds; run 'make mrproper' in it (patchscope never builds in the tree)")
    if (path / ".git").exists() and shutil.which("git") is not None:
        return _git(path)
    return Source(path, f"dir:{_stat_digest(path)}")


def _run_git(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, stdin=subprocess.DEVNULL,
                          check=False)


def _git(path: Path) -> Source:
    head = _run_git(path, "rev-parse", "--verify", "HEAD")
    if head.returncode != 0:
        raise KernelRefError(f"{path}: a git checkout without a commit at HEAD; commit first "
                             f"({head.stderr.decode(errors='replace').strip()})")
    commit = head.stdout.decode().strip()
    h = hashlib.sha256()
    diff = _run_git(path, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color")
    h.update(diff.stdout)
    untracked = _run_git(path, "ls-files", "--others", "--exclude-standard", "-z")
    for name in sorted(n for n in untracked.stdout.split(b"\0") if n):
        h.update(name + b"\0")
        file = path / os.fsdecode(name)
        if file.is_file():
            h.update(file.read_bytes())
    dirty = bool(diff.stdout) or bool(untracked.stdout.strip(b"\0"))
    identity = f"git:{commit}" + (f"+dirty-{h.hexdigest()[:12]}" if dirty else "")
    return Source(path, identity, commit=commit)


def _stat_digest(path: Path) -> str:
    h = hashlib.sha256()
    for top, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            st = os.lstat(os.path.join(top, name))
            h.update(f"{os.path.relpath(os.path.join(top, name), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def kconfig_symbols(path: Path) -> set[str]:
    """Every ``config``/``menuconfig`` symbol the tree's Kconfig files define (for clearer errors)."""
    out: set[str] = set()
    for top, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("Kconfig"):
                continue
            try:
                text = Path(top, name).read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("config", "menuconfig"):
                    out.add(words[1])
    return out
