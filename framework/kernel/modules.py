"""Kernel modules for the generated initramfs: a kernel package's modules indexed once, the ones a config loads.

A config's ``modules:`` names modules of the kernel's Debian package, or gives
``.ko`` files. Debian's packages carry ``lib/modules/<abi>/kernel/**.ko`` (6.12's
as ``.ko.xz``) but no ``modules.dep`` (``depmod`` runs at install), so what a
module needs loaded first comes from its ``.modinfo`` (``depends=``,
:mod:`framework.elf.modinfo`). Busybox's insmod neither resolves dependencies nor
(reliably) decompresses, so the order is made here and the files are
decompressed on the host. In the prepared kernel's cache entry::

    kernels/<key>/modules/index.json       every module of the package: name -> its path in the package,
                                           depends, vermagic; and the modules built in (modules.builtin).
                                           One streaming pass over the package, once per kernel
    kernels/<key>/modules/files/NAME.ko    the modules extracted so far, decompressed

Both are written atomically under the cache lock ``modules-<key>``.

:func:`resolve_modules` is what a run calls, once the kernel is prepared and
before anything boots: a config's modules with their dependencies, in load
order, as :class:`ModuleFile` (the host ``.ko`` each one is, and what the config
expects of insmod). A name the package does not hold is a
:class:`~framework.errors.ConfigError` at its line.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import io
import json
import lzma
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..build.kmod import build_module_dir
from ..config.model import Config, ModuleLoad, ModuleSpec
from ..domain import Note
from ..elf.modinfo import (
    ModuleError,
    ModuleInfo,
    info_of,
    load_order,
    module_name,
    strip_ko_suffix,
    with_softdeps,
)
from ..errors import ConfigError, ImageError, UnsupportedError
from .fetch import apt_download, deb_members, locked, safe_key
from .image import Kernel
from .refs import DebianRef

__all__ = ["INDEX_FORMAT", "ModuleFile", "PackageModules", "build_module_sources", "module_files",
           "package_modules", "read_ko", "resolve_modules"]

INDEX_FORMAT = 2      # 2: softdeps and aliases
# Where a package keeps its modules: lib/modules/<abi>/… (usr/lib/… in merged-/usr packages).
_MODULES_PATH = re.compile(r"(?:usr/)?lib/modules/([^/]+)/(.+)")


@dataclass(frozen=True)
class ModuleFile:
    """One module /init loads: the uncompressed ``.ko`` on the host, and what the config expects of insmod."""

    name: str              # the module's name, as /init and the kernel call it: "kvm_intel"
    path: Path             # the uncompressed .ko on the host (in the kernel's cache entry, or the file given)
    origin: str            # where it comes from: "linux-image-6.1.0-56-amd64 6.1.192-2: lib/modules/…/kvm-intel.ko"
    load: ModuleLoad = "ok"     # "fails": the config expects insmod to refuse it
    dependency: bool = False    # loaded because another module depends on it, not named by the config


@dataclass(frozen=True)
class PackageModules:
    """The modules a kernel package holds (index.json)."""

    package: str
    version: str
    abi: str                                # "6.1.0-56-amd64": the directory under lib/modules
    modules: dict[str, ModuleInfo]          # name -> its path in the package, depends, vermagic
    builtin: frozenset[str]                 # modules built into the kernel (modules.builtin)

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}"


def _entry(kernel: Kernel) -> Path:
    return kernel.bzimage.parent


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_ko(data: bytes, name: str) -> bytes:
    """A module file's bytes, decompressed by its suffix (``.ko.xz``, ``.ko.gz``, ``.ko.zst``; ``.ko`` as is)."""
    try:
        if name.endswith(".xz"):
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if name.endswith(".gz"):
            return gzip.decompress(data)
        if name.endswith(".zst"):
            try:
                zstandard = importlib.import_module("zstandard")
            except ImportError as err:
                raise ImageError(f"{name}: zstd-compressed; install the 'zstandard' Python package "
                                 "(pip install zstandard) or give the module uncompressed") from err
            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    except (lzma.LZMAError, OSError, EOFError, ValueError) as err:
        raise ImageError(f"{name}: does not decompress ({err}); the file is corrupt") from err
    return data


# --------------------------------------------------------------------------- the package's index


def _package_ref(kernel: Kernel) -> DebianRef:
    if kernel.package is None or kernel.version is None:
        raise UnsupportedError(f"kernel {kernel.ref} is not a Debian kernel package: modules by name come from "
                               "Debian kernel packages for now; give the path of each .ko file instead "
                               "(modules: [path/to/NAME.ko])")
    return DebianRef(kernel.package, kernel.version, f"debian:{kernel.package}={kernel.version}")


def _data_tar(deb: Path) -> tarfile.TarFile:
    """The package's data.tar, opened for one streaming pass."""
    members = deb_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ImageError(f"{deb}: no data.tar member; delete it and fetch again")
    try:
        return tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r|*")
    except tarfile.TarError as err:
        raise ImageError(f"{deb}: corrupt package data ({err}); delete it and fetch again") from err


def _scan(deb: Path, package: str, version: str) -> PackageModules:
    """Every module in the package: one streaming pass over its data.tar, each .ko's .modinfo read."""
    modules: dict[str, ModuleInfo] = {}
    builtin: set[str] = set()
    abis: list[str] = []
    try:
        with _data_tar(deb) as tar:
            for info in tar:
                m = _MODULES_PATH.fullmatch(info.name.removeprefix("./"))
                if m is None or not info.isfile():
                    continue
                abi, rest = m.groups()
                fh = tar.extractfile(info)
                if fh is None:
                    continue
                if rest == "modules.builtin":
                    for line in fh.read().decode("utf-8", "replace").splitlines():
                        stem = strip_ko_suffix(line.strip().rsplit("/", 1)[-1])
                        if stem:
                            builtin.add(module_name(stem))
                    continue
                stem = strip_ko_suffix(rest.rsplit("/", 1)[-1])
                if stem is None:
                    continue
                where = m.group(0)
                try:
                    found = info_of(read_ko(fh.read(), where), where, module_name(stem))
                except ImageError as err:
                    raise ImageError(f"{deb.name}: {err}") from err
                modules.setdefault(found.name, found)
                if abi not in abis:
                    abis.append(abi)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImageError(f"{deb}: corrupt package data ({err}); delete it and fetch again") from err
    if not modules:
        raise ImageError(f"{deb.name}: holds no kernel modules (no lib/modules/<abi>/**.ko)")
    return PackageModules(package, version, abis[0], modules, frozenset(builtin))


def _index_json(index: PackageModules) -> bytes:
    data = {"format": INDEX_FORMAT, "package": index.package, "version": index.version, "abi": index.abi,
            "modules": {name: {"path": mi.path, "depends": list(mi.depends), "vermagic": mi.vermagic,
                               "softdeps": list(mi.softdeps), "aliases": list(mi.aliases)}
                        for name, mi in sorted(index.modules.items())},
            "builtin": sorted(index.builtin)}
    return (json.dumps(data, indent=1) + "\n").encode()


def _load_index(path: Path) -> PackageModules | None:
    """The index at ``path``; None when missing or of another format (it is then built again)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != INDEX_FORMAT:
            return None
        modules = {name: ModuleInfo(name, str(mi["path"]), tuple(mi["depends"]), mi.get("vermagic"),
                                    tuple(mi.get("softdeps", ())), tuple(mi.get("aliases", ())))
                   for name, mi in data["modules"].items()}
        return PackageModules(str(data["package"]), str(data["version"]), str(data["abi"]), modules,
                              frozenset(data.get("builtin", ())))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ImageError(f"{path}: unreadable module index ({err}); delete it and retry") from err


def package_modules(kernel: Kernel, note: Note | None = None) -> PackageModules:
    """The index of the modules in ``kernel``'s package, built on first use (one pass over the .deb) and cached."""
    ref = _package_ref(kernel)
    path = _entry(kernel) / "modules" / "index.json"
    index = _load_index(path)
    if index is not None:
        return index
    deb = apt_download(ref, note)
    with locked(f"modules-{safe_key(_entry(kernel).name)}", note):
        index = _load_index(path)
        if index is None:
            if note:
                note(f"indexing the modules of {ref.package} {ref.version} (once per kernel)")
            started = time.monotonic()
            assert ref.version is not None
            index = _scan(deb, ref.package, ref.version)
            _write_atomic(path, _index_json(index))
            if note:
                note(f"indexed {len(index.modules)} modules of {ref.package} in {time.monotonic() - started:.0f} s")
    return index


# --------------------------------------------------------------------------- extracting


def _extract(kernel: Kernel, index: PackageModules, names: Sequence[str], note: Note | None) -> dict[str, Path]:
    """The uncompressed .ko of each of ``names`` (package modules), extracted once into modules/files/."""
    files = _entry(kernel) / "modules" / "files"
    out = {name: files / f"{name}.ko" for name in names}
    if all(p.exists() for p in out.values()):
        return out
    with locked(f"modules-{safe_key(_entry(kernel).name)}", note):
        missing = {index.modules[name].path: name for name, p in out.items() if not p.exists()}
        if not missing:
            return out
        if note:
            note(f"extracting {len(missing)} module{'s' if len(missing) != 1 else ''} from {index.package}: "
                 + ", ".join(sorted(missing.values())))
        deb = apt_download(_package_ref(kernel), note)
        try:
            with _data_tar(deb) as tar:
                for info in tar:
                    name = missing.pop(info.name.removeprefix("./"), None)
                    if name is None:
                        continue
                    fh = tar.extractfile(info)
                    if fh is None:
                        raise ImageError(f"{deb.name}: {info.name} is not a regular file")
                    _write_atomic(out[name], read_ko(fh.read(), info.name))
                    if not missing:
                        break
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ImageError(f"{deb}: corrupt package data ({err}); delete it and fetch again") from err
        if missing:
            raise ImageError(f"{deb.name}: holds no {', '.join(sorted(missing))}; its module index "
                             f"({files.parent / 'index.json'}) is stale: delete it and retry")
    return out


def module_files(kernel: Kernel, names: Sequence[str], note: Note | None = None) -> list[ModuleFile]:
    """Modules of ``kernel``'s package and what they depend on, in load order, extracted (decompressed).

    ``names`` may use ``-`` or ``_``; an unknown one is a :class:`~framework.elf.modinfo.ModuleError`
    with a close match.
    """
    index = package_modules(kernel, note)
    wanted = [module_name(n) for n in names]
    for name in wanted:
        if name in index.builtin and name not in index.modules:
            raise ModuleError(name, f"module {name!r} is built into {index.label}; there is nothing to load")
    order = load_order(index.modules, wanted, holder=index.label)
    paths = _extract(kernel, index, order, note)
    return [ModuleFile(name, paths[name], f"{index.label}: {index.modules[name].path}",
                       dependency=name not in wanted) for name in order]


# --------------------------------------------------------------------------- a config's modules


def build_module_sources(kernel: Kernel, spec: ModuleSpec, note: Note | None = None) -> ModuleFile:
    """``{module: NAME, build: DIR}``: DIR built against ``kernel``'s Debian headers (``framework.build.kmod``,
    cached by sources and headers), and its NAME.ko."""
    assert spec.path is not None
    built = {strip_ko_suffix(p.name): p for p in build_module_dir(kernel, spec.path, note)}
    found = built.get(spec.name) or next((p for n, p in built.items() if n and module_name(n) == spec.name), None)
    if found is None:
        names = ", ".join(sorted(n for n in built if n)) or "none"
        raise UnsupportedError(f"modules: {spec.shown()}: building {spec.path} made no {spec.name}.ko "
                               f"(it made: {names})")
    return ModuleFile(spec.name, found, f"built from {spec.path}")


def resolve_modules(config: Config, kernel: Kernel, note: Note | None = None) -> tuple[ModuleFile, ...]:
    """The modules /init loads for ``config`` on ``kernel``, dependencies first, each once, in load order.

    Package modules come from the kernel's Debian package, with what they depend
    on. A ``.ko`` file given by path is loaded as it is, after what its own
    ``depends=`` names (another file of the config, else the package's module). A
    name that cannot be resolved is a ConfigError at its line in the config.
    """
    if not config.modules:
        return ()
    source = config.path if config.path is not None else "<command line>"   # default_config's source

    def fail(spec: ModuleSpec | None, reason: str) -> ConfigError:
        if spec is None:
            return ConfigError(source, config.lines.get("modules"), f"modules: {reason}")
        return ConfigError(source, spec.line, f"modules[{config.modules.index(spec)}]: {reason}")

    given: dict[str, ModuleInfo] = {}          # modules the config gives as files (or builds): name -> info
    files: dict[str, ModuleFile] = {}
    for spec in config.modules:
        if spec.kind == "source":
            files[spec.name] = build_module_sources(kernel, spec, note)
            built = files[spec.name].path
            given[spec.name] = info_of(built.read_bytes(), str(built), spec.name)
        elif spec.kind == "file":
            given[spec.name], files[spec.name] = _given_file(kernel, spec, fail, note)
    packaged = [spec for spec in config.modules if spec.kind == "package"]
    unmet = [spec for spec in config.modules if spec.name in given
             and any(dep not in given for dep in given[spec.name].depends)]
    index: PackageModules | None = None
    if packaged or unmet:
        if kernel.package is None or kernel.version is None:
            spec = (packaged or unmet)[0]
            what = (f"{spec.shown()!r} names a module of the kernel's package" if spec.kind == "package"
                    else f"{spec.shown()} depends on {', '.join(given[spec.name].depends)}")
            raise fail(spec, f"{what}, but kernel {kernel.ref} is not a Debian kernel package: modules by name "
                             "come from Debian kernel packages for now; give the path of each .ko file instead")
        index = package_modules(kernel, note)
        for spec in packaged:
            if spec.name in index.builtin and spec.name not in index.modules:
                raise fail(spec, f"module {spec.name!r} is built into {index.label} (modules.builtin); "
                                 "there is nothing to load: remove it")
    combined: dict[str, ModuleInfo] = dict(index.modules) if index is not None else {}
    combined.update(given)
    combined = with_softdeps(combined)
    try:
        order = load_order(combined, [spec.name for spec in config.modules],
                           holder=index.label if index is not None else "the config's module files")
    except ModuleError as err:
        raise fail(next((s for s in config.modules if s.name == err.wanted), None), err.reason) from err
    from_package = [name for name in order if name not in given]
    if from_package:
        assert index is not None
        paths = _extract(kernel, index, from_package, note)
        for name in from_package:
            files[name] = ModuleFile(name, paths[name], f"{index.label}: {index.modules[name].path}")
    named = {spec.name: spec for spec in config.modules}
    return tuple(dataclasses.replace(files[name], load=named[name].load if name in named else "ok",
                                     dependency=name not in named)
                 for name in order)


_WARNED: set[tuple[Path, str]] = set()       # (file, kernel release) whose vermagic mismatch was noted


def _given_file(kernel: Kernel, spec: ModuleSpec, fail: Callable[[ModuleSpec, str], ConfigError],
                note: Note | None) -> tuple[ModuleInfo, ModuleFile]:
    """A ``.ko`` the config gives: its .modinfo, and the file to put in the initramfs (a compressed one
    decompressed into the kernel's cache entry, named by its content)."""
    assert spec.path is not None
    try:
        raw = spec.path.read_bytes()
    except OSError as err:
        raise fail(spec, f"cannot read {spec.path}: {err.strerror or err}") from err
    try:
        data = read_ko(raw, spec.path.name)
        info = info_of(data, str(spec.path), spec.name)
    except ImageError as err:
        raise fail(spec, str(err)) from err
    built_for = (info.vermagic or "").split(" ", 1)[0]
    release = kernel.release.split(" ", 1)[0]
    if built_for and release and built_for != release and note and (spec.path, release) not in _WARNED:
        _WARNED.add((spec.path, release))
        note(f"modules: {spec.shown()} was built for {built_for} (vermagic), the kernel is {release}: "
             "insmod will likely refuse it")
    path = spec.path
    if data is not raw:
        path = _entry(kernel) / "modules" / "given" / f"{spec.name}-{hashlib.sha256(data).hexdigest()[:16]}.ko"
        if not path.exists():
            _write_atomic(path, data)
    return (ModuleInfo(spec.name, str(spec.path), info.depends, info.vermagic),
            ModuleFile(spec.name, path, str(spec.path)))
