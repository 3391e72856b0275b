"""Kernel references: what a user names, parsed into what to fetch or open.

A reference is one of

- a recipe name from ``kernels/`` (``debian-6.1``): a YAML file that pins a
  Debian package and version;
- ``debian:<package>[=<version>]``: any kernel package the host's apt sources carry;
- ``path:<bzImage>[,vmlinux=<file>]``: a kernel you built yourself;
- ``build:<recipe.yaml>``, or a recipe name whose file says ``kind: build``: a kernel
  patchscope builds from a tree (``framework.build``), once, then cached;
- ``debian-newest:<line>[/<flavour>]`` (``debian-newest:6.1``): the newest kernel
  package of an upstream line that the apt sources carry, found anew on every run
  (``resolve_newest`` in ``fetch``); results record the exact package and version.

Parsing is pure apart from reading recipe files; nothing is fetched here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..build.recipe import Recipe, load_build_recipe, resolve
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


@dataclass(frozen=True)
class NewestRef:
    """A floating reference: the newest ``linux-image-<line>…-<flavour>`` package in the apt sources."""

    line: str          # "6.1", "6.12"
    flavour: str       # "amd64", "cloud-amd64"
    text: str

    def matches(self, package: str) -> bool:
        """Is ``package`` a kernel image of this line and flavour (not -dbg, -unsigned or a meta-package)?

        Debian names them ``linux-image-6.1.0-57-amd64`` (bookworm's 6.1) and
        ``linux-image-6.12.107+deb12-amd64`` (6.12).
        """
        line = re.escape(self.line)
        pattern = rf"linux-image-{line}\.\d+(?:-\d+|\+deb\d+(?:u\d+)?)-{re.escape(self.flavour)}"
        return re.fullmatch(pattern, package) is not None


@dataclass(frozen=True)
class BuildRef:
    """A kernel to build from a tree with a recipe (``framework.build.recipe``)."""

    recipe: Recipe
    text: str


KernelRef = DebianRef | PathRef | NewestRef | BuildRef


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
    bad = next((ch for ch in text if not ch.isprintable()), None)
    if bad is not None:
        raise KernelRefError(f"{text!r}: a kernel reference is one line of printable text; it holds "
                             f"{bad!r}")
    if text.startswith("debian:"):
        return _parse_debian(text[len("debian:"):], text)
    if text.startswith("path:"):
        return _parse_path(text[len("path:"):], text, base)
    if text.startswith("debian-newest:"):
        return _parse_newest(text[len("debian-newest:"):], text)
    if text.startswith("build:"):
        spec = text[len("build:"):]
        if not spec:
            raise KernelRefError(f"{text!r}: give a build recipe file, as build:kernels/tiny-6.1.yaml")
        path = _resolve(spec, base)
        if not path.is_file():
            raise KernelRefError(f"{text!r}: no such build recipe {path}")
        return BuildRef(load_build_recipe(path), text)
    recipes = list_recipes(directory)
    if text in recipes:
        return load_recipe(recipes[text])
    known = ", ".join(sorted(recipes)) or "none found"
    raise KernelRefError(
        f"unknown kernel reference {text!r}: use a recipe name ({known}), "
        "debian:<package>[=<version>], debian-newest:<line>, build:<recipe.yaml> or path:<bzImage>[,vmlinux=<file>]")


def _parse_newest(spec: str, text: str) -> NewestRef:
    line, _, flavour = spec.partition("/")
    if re.fullmatch(r"\d+\.\d+", line) is None:
        raise KernelRefError(f"{text!r}: {line!r} is not a kernel line; give major.minor, as in debian-newest:6.1")
    flavour = flavour or "amd64"
    if re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", flavour) is None:
        raise KernelRefError(f"{text!r}: {flavour!r} is not a kernel flavour such as amd64 or cloud-amd64")
    return NewestRef(line=line, flavour=flavour, text=text)


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
    return resolve(value, base or Path.cwd())


_RECIPE_KEYS = {"description", "kind", "package", "version"}


def load_recipe(path: Path) -> DebianRef | BuildRef:
    """Read a ``kernels/<name>.yaml`` recipe (kind: debian, or kind: build)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(path, None, f"cannot read recipe: {err}".splitlines()[0]) from err
    if not isinstance(data, dict):
        raise ConfigError(path, 1, "a recipe is a mapping with kind, package and version")
    if data.get("kind") == "build":
        return BuildRef(load_build_recipe(path), path.stem)
    unknown = set(data) - _RECIPE_KEYS
    if unknown:
        raise ConfigError(path, None, f"unknown recipe keys: {', '.join(sorted(map(str, unknown)))}")
    if data.get("kind") != "debian":
        raise ConfigError(path, None, f"recipe kind {data.get('kind')!r} is not supported; use kind: debian or kind: build")
    package, version = data.get("package"), data.get("version")
    if not isinstance(package, str) or not isinstance(version, str):
        raise ConfigError(path, None, "a debian recipe needs package: and version: as strings")
    ref = _parse_debian(f"{package}={version}", f"debian:{package}={version}")
    return DebianRef(package=ref.package, version=ref.version, text=path.stem)
