"""Kernel images: bzImage header, the vmlinux inside it, and its symbols.

``prepare_kernel`` turns a reference into a prepared cache entry::

    kernels/<key>/bzImage        the image QEMU boots
    kernels/<key>/config         the kernel's .config, when the package has one
    kernels/<key>/vmlinux        the ELF inside the bzImage (Debian's keeps section headers, no symbols)
    kernels/<key>/vmlinux.syms   the same ELF with a symbol table recovered from kallsyms
    kernels/<key>/kernel.json    identity: package, version, release, sha256, symbol source

Symbols come from a vmlinux the user gives (``path:…,vmlinux=``) when it has a
symbol table; otherwise from the kernel's own kallsyms, recovered once by
vmlinux-to-elf and cached. Debian's System.map is an 83-byte stub and is never
used. The source is recorded, never guessed silently.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib
import lzma
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..build import kbuild
from ..domain import Note
from ..errors import ImageError, ToolMissingError
from .fetch import (
    apt_download,
    building,
    cache_dir,
    deb_extract,
    deb_file_version,
    locked,
    read_meta,
    resolve_newest,
    safe_key,
    write_meta,
)
from .refs import BuildRef, DebianRef, KernelRef, NewestRef, PathRef

# Compressed payload magics (arch/x86/boot/compressed/Makefile's suffixes).
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the x86 boot protocol header (Documentation/x86/boot.rst) patchscope uses."""

    protocol: int          # e.g. 0x20f
    release: str           # kernel_version string, e.g. "6.1.0-56-amd64 (debian-kernel@…) #1 SMP …"
    payload_offset: int    # file offset of the compressed vmlinux
    payload_length: int
    compression: str


def read_setup_header(data: bytes, name: str = "bzImage") -> SetupHeader:
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ImageError(f"{name}: not an x86 bzImage (no 'HdrS' boot header at 0x202)")
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    if protocol < 0x208:
        raise ImageError(f"{name}: boot protocol {protocol:#x} is older than 2.08; no payload fields")
    setup_sects = data[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    version_ptr = struct.unpack_from("<H", data, 0x20E)[0]
    release = ""
    if version_ptr:
        raw = data[version_ptr + 0x200:version_ptr + 0x200 + 256]
        release = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = pm_start + payload_offset
    if payload_length == 0 or start + payload_length > len(data):
        raise ImageError(f"{name}: payload ({payload_length} bytes at {start:#x}) lies outside the "
                         f"{len(data)}-byte file; the image is truncated or corrupt")
    head = data[start:start + 8]
    compression = next((kind for magic, kind in _MAGICS if head.startswith(magic)), "unknown")
    return SetupHeader(protocol, release, start, payload_length, compression)


def extract_vmlinux(data: bytes, name: str = "bzImage") -> bytes:
    """The ELF vmlinux inside a bzImage."""
    hdr = read_setup_header(data, name)
    payload = data[hdr.payload_offset:hdr.payload_offset + hdr.payload_length]
    try:
        if hdr.compression == "xz":
            # The kernel appends the uncompressed size; lzma stops at the stream end.
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif hdr.compression == "gzip":
            out = gzip.decompress(payload)
        elif hdr.compression == "bzip2":
            out = bz2.decompress(payload)
        elif hdr.compression == "lzma":
            out = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        elif hdr.compression == "zstd":
            try:
                zstandard = importlib.import_module("zstandard")
            except ImportError as err:
                raise ImageError(f"{name}: zstd-compressed; install the 'zstandard' Python package") from err
            out = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        else:
            raise ImageError(f"{name}: {hdr.compression} payload compression is not supported; "
                             "give the vmlinux with path:<bzImage>,vmlinux=<file>")
    except (lzma.LZMAError, OSError, EOFError, ValueError) as err:
        raise ImageError(f"{name}: the {hdr.compression} payload does not decompress ({err}); "
                         "the image is corrupt") from err
    if not out.startswith(b"\x7fELF"):
        raise ImageError(f"{name}: the decompressed payload is not an ELF file")
    return out


def elf_symbol_source(path: Path) -> str | None:
    """'dwarf' or 'symtab' when the ELF at ``path`` carries them, else None."""
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            if elf.get_section_by_name(".debug_info") is not None:
                return "dwarf"
            symtab = elf.get_section_by_name(".symtab")
            if symtab is not None and symtab["sh_size"] > 0:
                return "symtab"
    except (ELFError, OSError, struct.error) as err:
        raise ImageError(f"{path}: not a readable ELF file ({err})") from err
    return None


def recover_symbols(vmlinuz: Path, out: Path, log: Path) -> None:
    """Rebuild a symbol table from the kernel's kallsyms with vmlinux-to-elf."""
    tool = Path(sys.executable).parent / "vmlinux-to-elf"
    exe = str(tool) if tool.exists() else shutil.which("vmlinux-to-elf")
    if exe is None:
        raise ToolMissingError("vmlinux-to-elf", "the Python package vmlinux-to-elf (pip install vmlinux-to-elf)")
    cmd = [exe, str(vmlinuz), str(out)]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"{vmlinuz}: recovering symbols from kallsyms failed: {tail[0]}; "
                         "give a vmlinux with symbols: path:<bzImage>,vmlinux=<file>")


@dataclass(frozen=True)
class Kernel:
    """A prepared kernel: files in the cache and what identifies them."""

    ref: str                    # the reference as the user wrote it
    bzimage: Path
    vmlinux: Path | None        # ELF with section headers
    symbols: Path | None        # ELF with a symbol table (may be the same file as vmlinux)
    config: Path | None
    package: str | None
    version: str | None
    release: str                # from the boot header: "6.1.0-56-amd64 (…) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (…)"
    sha256: str
    symbol_source: str          # "kallsyms (vmlinux-to-elf)", "vmlinux symtab", "vmlinux DWARF", or "none"

    def identity(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def prepare_kernel(ref: KernelRef, note: Note | None = None) -> Kernel:
    """Fetch (if needed) and prepare a kernel; cached, locked, atomic."""
    if isinstance(ref, NewestRef):
        return _prepare_debian(resolve_newest(ref, note), note)
    if isinstance(ref, DebianRef):
        return _prepare_debian(ref, note)
    if isinstance(ref, BuildRef):
        return _prepare_build(ref, note)
    return _prepare_path(ref, note)


def _prepare_build(ref: BuildRef, note: Note | None) -> Kernel:
    """Build the recipe's kernel (or find it built): an entry kernels/build-<key>/ with the ELF's symbols."""
    def finish(tmp: Path) -> None:
        _prepare_files(tmp, ref.text, None, None, note)

    built = kbuild.build(ref.recipe, note, finish=finish)
    return _load(built.entry, ref.text)


def _prepare_debian(ref: DebianRef, note: Note | None) -> Kernel:
    deb = apt_download(ref, note)
    key = safe_key(deb.stem)
    final = cache_dir() / "kernels" / key
    with locked(f"kernel-{key}", note):
        if not (final / "kernel.json").exists():
            with building(final) as tmp:
                if note:
                    note(f"unpacking {deb.name}")

                def wanted(name: str) -> str | None:
                    if name.startswith("boot/vmlinuz-"):
                        return "bzImage"
                    if name.startswith("boot/config-"):
                        return "config"
                    return None

                got = deb_extract(deb, wanted, tmp)
                if "bzImage" not in got:
                    raise ImageError(f"{deb.name}: holds no boot/vmlinuz-*; is {ref.package} a kernel image package?")
                _prepare_files(tmp, ref.text, ref.package, deb_file_version(deb), note)
        return _load(final, ref.text)


def _prepare_path(ref: PathRef, note: Note | None) -> Kernel:
    if not ref.bzimage.is_file():
        raise ImageError(f"{ref.bzimage}: no such kernel image (from {ref.text!r})")
    if ref.vmlinux is not None and not ref.vmlinux.is_file():
        raise ImageError(f"{ref.vmlinux}: no such vmlinux (from {ref.text!r})")
    digest = hashlib.sha256(ref.bzimage.read_bytes()).hexdigest()
    vm_digest = hashlib.sha256(ref.vmlinux.read_bytes()).hexdigest()[:12] if ref.vmlinux else "none"
    key = f"path-{digest[:16]}-{vm_digest}"
    final = cache_dir() / "kernels" / key
    with locked(f"kernel-{key}", note):
        if not (final / "kernel.json").exists():
            with building(final) as tmp:
                shutil.copyfile(ref.bzimage, tmp / "bzImage")
                if ref.vmlinux is not None:
                    shutil.copyfile(ref.vmlinux, tmp / "vmlinux.given")
                _prepare_files(tmp, ref.text, None, None, note)
        return _load(final, ref.text)


def _prepare_files(d: Path, ref: str, package: str | None, version: str | None, note: Note | None) -> None:
    """Fill a cache entry holding bzImage (and maybe vmlinux.given) with the rest."""
    data = (d / "bzImage").read_bytes()
    hdr = read_setup_header(data, str(d / "bzImage"))
    vmlinux: Path | None = d / "vmlinux"
    symbols: Path | None = None
    source = "none"
    given = d / "vmlinux.given"
    if given.exists():
        given.rename(d / "vmlinux")
        kind = elf_symbol_source(d / "vmlinux")
        if kind is not None:
            symbols = d / "vmlinux"
            source = "vmlinux DWARF" if kind == "dwarf" else "vmlinux symtab"
    else:
        try:
            (d / "vmlinux").write_bytes(extract_vmlinux(data, ref))
        except ImageError as err:
            if note:
                note(f"{err}; continuing without a vmlinux")
            vmlinux = None
    if symbols is None:
        if note:
            note("recovering the symbol table from kallsyms (vmlinux-to-elf, once per kernel, ~15 s)")
        recover_symbols(d / "bzImage", d / "vmlinux.syms", d / "vmlinux-to-elf.log")
        symbols = d / "vmlinux.syms"
        source = "kallsyms (vmlinux-to-elf)"
    meta = {
        "package": package, "version": version, "release": hdr.release,
        "sha256": hashlib.sha256(data).hexdigest(), "symbol_source": source,
        "vmlinux": vmlinux.name if vmlinux else None, "symbols": symbols.name,
        "config": "config" if (d / "config").exists() else None,
    }
    write_meta(d / "kernel.json", meta)


def _load(d: Path, ref: str) -> Kernel:
    meta = read_meta(d / "kernel.json")

    def opt(key: str) -> Path | None:
        return d / meta[key] if meta.get(key) else None

    return Kernel(ref=ref, bzimage=d / "bzImage", vmlinux=opt("vmlinux"), symbols=opt("symbols"),
                  config=opt("config"), package=meta.get("package"), version=meta.get("version"),
                  release=meta.get("release", ""), sha256=meta.get("sha256", ""),
                  symbol_source=meta.get("symbol_source", "none"))


def cached_kernels() -> list[Path]:
    """Prepared kernel entries in the cache."""
    root = cache_dir() / "kernels"
    return sorted(p for p in root.glob("*") if (p / "kernel.json").exists()) if root.is_dir() else []
