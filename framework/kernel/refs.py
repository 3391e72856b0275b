"""Kernel references: what a user names, parsed into what to fetch or open.

A reference is one of

- a recipe name from ``kernels/`` (``debian-6.1``): a YAML file that pins a
  Debian package and version;
- ``debian:<package>[=<version>]``: any kernel package the host's apt sources carry;
- ``path:<bzImage>[,vmlinux=<file>]``: a kernel you built yourself.

Parsing is pure apart from reading recipe files; nothing is fetched here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError, KernelRefError

# Debian package names (policy 5.6.1) and versions (5.6.12), loosely.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+~:-]+$")


@dataclass(frozen=True)
class DebianRef:
    """A Debian binary package holding a kernel (or a hypervisor)."""

    package: str
    version: str | None
    text: str


@dataclass(frozen=True)
class PathRef:
    """A kernel image on disk, with an optional vmlinux that has symbols."""

    bzimage: Path
    vmlinux: Path | None
    text: str


KernelRef = DebianRef | PathRef


def recipes_dir() -> Path:
    """The kernels/ directory: $PATCHSCOPE_KERNELS, else the one beside the package."""
    env = os.environ.get("PATCHSCOPE_KERNELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "kernels"


def list_recipes(directory: Path | None = None) -> dict[str, Path]:
    """Recipe name -> file, for every ``kernels/*.yaml``."""
    directory = directory or recipes_dir()
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def parse_ref(text: str, directory: Path | None = None, base: Path | None = None) -> KernelRef:
    """Parse a kernel reference.

    ``base`` is the directory relative ``path:`` references resolve against
    (the config file's directory); the current directory when None.
    """
    text = text.strip()
    if text.startswith("debian:"):
        return _parse_debian(text[len("debian:"):], text)
    if text.startswith("path:"):
        return _parse_path(text[len("path:"):], text, base)
    recipes = list_recipes(directory)
    if text in recipes:
        return load_recipe(recipes[text])
    known = ", ".join(sorted(recipes)) or "none found"
    raise KernelRefError(
        f"unknown kernel reference {text!r}: use a recipe name ({known}), "
        "debian:<package>[=<version>] or path:<bzImage>[,vmlinux=<file>]")


def _parse_debian(spec: str, text: str) -> DebianRef:
    package, _, version = spec.partition("=")
    if not _PACKAGE_RE.match(package):
        raise KernelRefError(f"{text!r}: {package!r} is not a Debian package name "
                             "(example: debian:linux-image-6.1.0-56-amd64=6.1.192-2)")
    if version and not _VERSION_RE.match(version):
        raise KernelRefError(f"{text!r}: {version!r} is not a Debian version")
    return DebianRef(package=package, version=version or None, text=text)


def _parse_path(spec: str, text: str, base: Path | None) -> PathRef:
    parts = spec.split(",")
    if not parts[0]:
        raise KernelRefError(f"{text!r}: give the image, as path:<bzImage>[,vmlinux=<file>]")
    vmlinux: Path | None = None
    for extra in parts[1:]:
        key, eq, value = extra.partition("=")
        if key != "vmlinux" or not eq or not value:
            raise KernelRefError(f"{text!r}: unknown option {extra!r}; the only option is vmlinux=<file>")
        vmlinux = _resolve(value, base)
    return PathRef(bzimage=_resolve(parts[0], base), vmlinux=vmlinux, text=text)


def _resolve(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return path


_RECIPE_KEYS = {"description", "kind", "package", "version"}


def load_recipe(path: Path) -> DebianRef:
    """Read a ``kernels/<name>.yaml`` recipe (kind: debian)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(path, None, f"cannot read recipe: {err}".splitlines()[0]) from err
    if not isinstance(data, dict):
        raise ConfigError(path, 1, "a recipe is a mapping with kind, package and version")
    unknown = set(data) - _RECIPE_KEYS
    if unknown:
        raise ConfigError(path, None, f"unknown recipe keys: {', '.join(sorted(map(str, unknown)))}")
    if data.get("kind") != "debian":
        raise ConfigError(path, None, f"recipe kind {data.get('kind')!r} is not supported; use kind: debian")
    package, version = data.get("package"), data.get("version")
    if not isinstance(package, str) or not isinstance(version, str):
        raise ConfigError(path, None, "a debian recipe needs package: and version: as strings")
    ref = _parse_debian(f"{package}={version}", f"debian:{package}={version}")
    return DebianRef(package=ref.package, version=ref.version, text=path.stem)
