"""Downloads through the host's apt sources, and the cache they land in.

The cache (``$PATCHSCOPE_CACHE`` or ``~/.cache/patchscope``) holds::

    debs/<package>_<version>_<arch>.deb    what apt-get download fetched
    kernels/<key>/                         unpacked, prepared kernels (see image.py)
    locks/<key>.lock                       flock(2) locks; concurrent runs wait, never race

Entries are built in a temporary directory beside their final place and
renamed into it, so a crash never leaves a half-written entry behind.
No root is needed: .deb files are read here in Python (ar + tar), not by dpkg.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..debversion import compare_debian_versions
from ..errors import FetchError, ImageError, InfrastructureError, ToolMissingError
from .refs import DebianRef, NewestRef


def cache_dir() -> Path:
    env = os.environ.get("PATCHSCOPE_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "patchscope"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(name: str, note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cache lock ``name`` (an flock on locks/<name>.lock)."""
    lockdir = cache_dir() / "locks"
    lockdir.mkdir(exist_ok=True)
    with open(lockdir / f"{name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if note:
                note(f"waiting for another patchscope process to finish preparing {name}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """A temporary directory renamed to ``final`` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_meta(path: Path, meta: Mapping[str, object]) -> None:
    """A cache entry's metadata file; written last, so its presence marks a complete entry."""
    path.write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ImageError(f"{path}: unreadable cache entry ({err}); delete {path.parent} and retry") from err
    if not isinstance(meta, dict):
        raise ImageError(f"{path}: unreadable cache entry; delete {path.parent} and retry")
    return meta


def deb_file_version(deb: Path) -> str | None:
    """The version in a .deb's file name (<package>_<version>_<arch>.deb), epoch restored."""
    parts = deb.stem.split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 2 else None


def safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def apt_download(ref: DebianRef, note: Callable[[str], None] | None = None) -> Path:
    """The .deb for ``ref`` in the cache, downloading it with apt-get when missing."""
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    pattern = f"{ref.package}_{_deb_version(ref.version) if ref.version else '*'}_*.deb"
    with locked(safe_key(f"deb-{ref.package}-{ref.version}"), note):
        found = sorted(debs.glob(pattern))
        if found and ref.version:
            return found[-1]
        if shutil.which("apt-get") is None:
            raise ToolMissingError("apt-get", "apt")
        spec = f"{ref.package}={ref.version}" if ref.version else ref.package
        if note:
            note(f"downloading {spec} with apt-get download")
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            cmd = ["apt-get", "download", "-q", spec]
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  check=False)
            got = sorted(Path(tmp).glob("*.deb"))
            if proc.returncode != 0 or not got:
                raise FetchError(_apt_failure(spec, proc.stderr or proc.stdout), cmd, proc.stderr)
            dest = debs / got[0].name
            got[0].rename(dest)
            return dest


def parse_policy(text: str) -> dict[str, str]:
    """Package -> candidate version, from ``apt-cache policy PKG…`` output ("(none)" left out)."""
    out: dict[str, str] = {}
    package: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            package = line.rstrip()[:-1]
        elif package is not None and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                out[package] = version
    return out


def newest(candidates: Mapping[str, str]) -> tuple[str, str] | None:
    """The (package, version) with the highest version; among equal versions the last name in ABI order."""
    def abi(package: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", package))

    best: tuple[str, str] | None = None
    for package, version in sorted(candidates.items(), key=lambda kv: abi(kv[0])):
        if best is None or compare_debian_versions(version, best[1]) >= 0:
            best = (package, version)
    return best


def apt_candidates(prefix: str, matches: Callable[[str], bool]) -> tuple[dict[str, str], list[str]]:
    """Package -> candidate version for every package named ``prefix…`` that ``matches``, from the apt sources;
    and the last command run (for an error message)."""
    if shutil.which("apt-cache") is None:
        raise ToolMissingError("apt-cache", "apt")
    cmd = ["apt-cache", "pkgnames", prefix]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    names = sorted(n for n in proc.stdout.split() if matches(n))
    if not names:
        return {}, cmd
    cmd = ["apt-cache", "policy", *names]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    return parse_policy(proc.stdout), cmd


def resolve_newest(ref: NewestRef, note: Callable[[str], None] | None = None) -> DebianRef:
    """The exact package and version ``ref`` names today, asked of the host's apt sources."""
    prefix = f"linux-image-{ref.line}"
    found, cmd = apt_candidates(prefix, ref.matches)
    best = newest(found)
    if best is None:
        raise FetchError(f"{ref.text}: the apt sources carry no {prefix}.*-{ref.flavour} package with a candidate "
                         "version; check the line with 'apt-cache pkgnames " + prefix + "', and run 'apt-get update' "
                         "(as root) if the package lists are empty", cmd, "")
    if note:
        note(f"{ref.text} is {best[0]}={best[1]}")
    return DebianRef(package=best[0], version=best[1], text=ref.text)


def _deb_version(version: str) -> str:
    """Debian file names drop the epoch's colon: 1:1.35 -> 1%3a1.35."""
    return version.replace(":", "%3a")


def _apt_failure(spec: str, stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.startswith("E:")]
    why = lines[0] if lines else (stderr.strip().splitlines() or ["no output"])[-1]
    hint = "check the name and version with 'apt-cache policy " + spec.split("=")[0] + "'"
    if "Unable to locate" in why or "not found" in why:
        hint += "; if the package lists are empty, run 'apt-get update' (as root) first"
    return f"apt-get download {spec} failed: {why}; {hint}"


# --- reading .deb files (ar archive: debian-binary, control.tar.*, data.tar.*) ---

def deb_members(deb: Path) -> dict[str, bytes]:
    """The top-level members of a .deb (an ar archive), by name."""
    try:
        data = deb.read_bytes()
    except OSError as err:
        raise ImageError(f"{deb}: cannot read: {err.strerror}") from err
    if not data.startswith(b"!<arch>\n"):
        raise ImageError(f"{deb}: not a Debian package (no ar header); delete it and fetch again")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as err:
            raise ImageError(f"{deb}: corrupt ar header at byte {pos}; delete it and fetch again") from err
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return members


def deb_extract(deb: Path, wanted: Callable[[str], str | None], dest: Path) -> dict[str, Path]:
    """Extract the regular files of ``deb``'s data.tar for which ``wanted(name)``
    gives a target name; returns target name -> path. Symlinks are followed within the archive."""
    members = deb_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ImageError(f"{deb}: no data.tar member; delete it and fetch again")
    out: dict[str, Path] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                target = wanted(name)
                if target is None:
                    continue
                if info.issym():
                    links[target] = os.path.normpath(os.path.join(os.path.dirname(name), info.linkname))
                    continue
                fh = tar.extractfile(info)
                if fh is None:
                    continue
                path = dest / target
                path.write_bytes(fh.read())
                os.chmod(path, 0o755 if info.mode & 0o111 else 0o644)
                out[target] = path
    except OSError as err:
        raise unwritable(err, dest, f"unpacking {deb.name}") or ImageError(
            f"{deb}: corrupt package data ({err}); delete it and fetch again") from err
    except (tarfile.TarError, EOFError) as err:
        raise ImageError(f"{deb}: corrupt package data ({err}); delete it and fetch again") from err
    for target, linkname in links.items():
        if target not in out:
            raise ImageError(f"{deb}: {target} is a link to {linkname}, which the package does not hold")
    return out


def unwritable(err: OSError, where: Path, doing: str) -> InfrastructureError | None:
    """A full disk (or quota) met while ``doing``, said as such; None for any other error. The cache is not to
    blame and nothing in it is to be deleted."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    try:
        free = f"{shutil.disk_usage(where if where.exists() else where.parent).free // (1 << 20)} MB free"
    except OSError:
        free = "free space unknown"
    return InfrastructureError(f"no space left on the device holding {where} while {doing} ({free}): free some "
                               f"space (patchscope's cache is {cache_dir()}) and run again")


def note_stderr(message: str) -> None:
    """Default progress sink: one line on stderr."""
    print(f"patchscope: {message}", file=sys.stderr, flush=True)
