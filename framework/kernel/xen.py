"""The Xen hypervisor image for xen-pv mode: fetched, unpacked, checked, identified.

QEMU boots Xen with its multiboot loader, which wants the 32-bit ELF inside
Debian's ``boot/xen-*.gz`` (Xen's own entry code switches to 64-bit). A cache
entry holds::

    hypervisors/<key>/xen        the unpacked ELF
    hypervisors/<key>/xen.json   package, version, sha256
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..domain import Note
from ..errors import ImageError, KernelRefError
from .fetch import (
    apt_download,
    building,
    cache_dir,
    deb_extract,
    deb_file_version,
    locked,
    read_meta,
    safe_key,
    write_meta,
)
from .refs import BuildRef, DebianRef, KernelRef, NewestRef

_XEN_GZ = re.compile(r"^boot/xen-[0-9.]+-amd64\.gz$")
BANNER = re.compile(r"\(XEN\) Xen version (\S+) \(([^)]*)\)")


@dataclass(frozen=True)
class Hypervisor:
    ref: str
    image: Path
    package: str | None
    version: str | None
    sha256: str

    def identity(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def unpack_xen(data: bytes, name: str) -> bytes:
    """The multiboot ELF from a xen.gz (or an already unpacked image); checked."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ImageError(f"{name}: the gzip data does not decompress ({err}); the image is corrupt") from err
    if not data.startswith(b"\x7fELF"):
        raise ImageError(f"{name}: not a Xen image (neither gzip nor ELF); give Debian's boot/xen-*.gz "
                         "or the unpacked xen ELF")
    if data[4] != 1:
        raise ImageError(f"{name}: a 64-bit ELF; QEMU's multiboot loader needs the 32-bit 'xen' image "
                         "(boot/xen-*.gz unpacked), not xen-syms")
    if b"Xen" not in data:
        raise ImageError(f"{name}: this ELF does not look like the Xen hypervisor")
    return data


# Debian names its hypervisor packages xen-hypervisor-<version>-<arch>.
XEN_PACKAGE_PREFIX = "xen-hypervisor-"


def prepare_hypervisor(ref: KernelRef, note: Note | None = None) -> Hypervisor:
    if isinstance(ref, DebianRef):
        deb = apt_download(ref, note)
        key = safe_key(deb.stem)
        final = cache_dir() / "hypervisors" / key
        with locked(f"xen-{key}", note):
            if not (final / "xen.json").exists():
                with building(final) as tmp:
                    got = deb_extract(deb, lambda n: "xen.gz" if _XEN_GZ.match(n) else None, tmp)
                    if "xen.gz" not in got:
                        raise ImageError(f"{deb.name}: holds no boot/xen-*-amd64.gz; "
                                         f"is {ref.package} a Xen hypervisor package?")
                    _write(tmp, unpack_xen(got["xen.gz"].read_bytes(), deb.name), ref.package,
                           deb_file_version(deb))
                    got["xen.gz"].unlink()
        return _load(final, ref.text)
    if isinstance(ref, BuildRef):
        raise KernelRefError(f"{ref.text!r} is a kernel build recipe; patchscope does not build Xen: give a recipe "
                             "(xen-4.17), debian:xen-hypervisor-<version>-amd64 or path:<xen image>")
    if isinstance(ref, NewestRef):
        raise KernelRefError(f"{ref.text!r} names a kernel line; a hypervisor is a recipe (xen-4.17), "
                             "debian:xen-hypervisor-<version>-amd64 or path:<xen image>")
    if not ref.bzimage.is_file():
        raise ImageError(f"{ref.bzimage}: no such Xen image (from {ref.text!r})")
    data = ref.bzimage.read_bytes()
    key = f"path-{hashlib.sha256(data).hexdigest()[:16]}"
    final = cache_dir() / "hypervisors" / key
    with locked(f"xen-{key}", note):
        if not (final / "xen.json").exists():
            with building(final) as tmp:
                _write(tmp, unpack_xen(data, str(ref.bzimage)), None, None)
    return _load(final, ref.text)


def _write(d: Path, image: bytes, package: str | None, version: str | None) -> None:
    (d / "xen").write_bytes(image)
    write_meta(d / "xen.json", {"package": package, "version": version,
                                "sha256": hashlib.sha256(image).hexdigest()})


def _load(d: Path, ref: str) -> Hypervisor:
    meta = read_meta(d / "xen.json")
    return Hypervisor(ref=ref, image=d / "xen", package=meta.get("package"), version=meta.get("version"),
                      sha256=meta.get("sha256", ""))


def banner(lines: list[str]) -> dict[str, str] | None:
    """Xen's own version line from a console log, e.g. {'version': '4.17.7', 'build': 'Debian 4.17.7+…'}."""
    for text in lines:
        m = BANNER.search(text)
        if m:
            return {"version": m.group(1), "build": m.group(2)}
    return None
