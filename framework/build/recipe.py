"""Build recipes: which tree, which base config, which fragments. Pure.

A recipe is a ``kernels/<name>.yaml`` with ``kind: build``, or the same keys given
on the command line (``patchscope build --tree … --config … --fragment …``)::

    kind: build
    description: the smallest kernel with every patching mechanism, from Debian's 6.1 source
    tree: debian-source:6.1=6.1.192-2      # or debian-source:6.1 (newest in the apt sources), or a directory
    config: tinyconfig                     # a make target (tinyconfig, defconfig, allnoconfig, …),
                                           # debian:<kernel package>[=<version>] (that kernel's config),
                                           # or a .config file
    fragments:                             # laid over the base in order, as merge_config.sh does
      - fragments/patchscope.config        # relative to the recipe's directory

Paths in a recipe are relative to the recipe's directory; on the command line, to
the current directory. Nothing here touches the tree or runs make (see kbuild.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from .. import yamlnode as yn
from ..errors import ConfigError, KernelRefError

MAX_RECIPE_BYTES = 64 * 1024
DEBIAN_SOURCE = "debian-source:"
_LINE = re.compile(r"\d+\.\d+")
_VERSION = re.compile(r"[0-9A-Za-z.+~:-]+")
_TARGET = re.compile(r"[a-z0-9_]*config")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


@dataclass(frozen=True)
class DebianSource:
    """Debian's ``linux-source-<line>`` package, at a version or the newest the apt sources carry."""

    line: str                  # "6.1", "6.12"
    version: str | None

    @property
    def package(self) -> str:
        return f"linux-source-{self.line}"

    def text(self) -> str:
        return f"{DEBIAN_SOURCE}{self.line}" + (f"={self.version}" if self.version else "")


@dataclass(frozen=True)
class LocalTree:
    """A kernel source directory on disk (a git checkout or not); built out of tree, never written."""

    path: Path

    def text(self) -> str:
        return str(self.path)


Tree = DebianSource | LocalTree


@dataclass(frozen=True)
class MakeTarget:
    """A base config that ``make`` writes: tinyconfig, defconfig, allnoconfig, …"""

    target: str

    def text(self) -> str:
        return self.target


@dataclass(frozen=True)
class PackageConfig:
    """The config of a Debian kernel package (its ``boot/config-*``)."""

    package: str
    version: str | None

    def text(self) -> str:
        return f"debian:{self.package}" + (f"={self.version}" if self.version else "")


@dataclass(frozen=True)
class ConfigFile:
    path: Path

    def text(self) -> str:
        return str(self.path)


BaseConfig = MakeTarget | PackageConfig | ConfigFile


@dataclass(frozen=True)
class Fragment:
    path: Path
    text: str                  # its content, read when the recipe is read (it is part of the build's identity)


@dataclass(frozen=True)
class Recipe:
    tree: Tree
    config: BaseConfig
    fragments: tuple[Fragment, ...] = ()
    name: str | None = None              # the recipe file's stem, when there is one
    source: Path | None = None           # the recipe file

    def describe(self) -> str:
        frags = " ".join(f"+{f.path.name}" for f in self.fragments)
        return f"{self.tree.text()} {self.config.text()}" + (f" {frags}" if frags else "")

    def request_digest(self, tree_identity: str, compiler: str) -> str:
        """What a build request is, before configuring: equal digests give equal final .configs."""
        h = hashlib.sha256()
        for part in (tree_identity, self.config.text(), compiler):
            h.update(part.encode() + b"\0")
        for fragment in self.fragments:
            h.update(fragment.text.encode() + b"\0")
        return h.hexdigest()


def build_key(tree_identity: str, final_config: str, compiler: str) -> str:
    """A build's cache key: the tree, the final .config, the compiler. Comments in .config do not count."""
    body = "\n".join(line for line in final_config.splitlines() if line and not line.startswith("# ")
                     or line.startswith("# CONFIG_"))
    h = hashlib.sha256()
    for part in (tree_identity, body, compiler):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def shown(path: Path, cwd: Path | None = None) -> str:
    """A path as a user reads it: relative to the current directory when under it, else absolute."""
    cwd = cwd or Path.cwd()
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- parsing


def parse_tree(text: str, base: Path) -> Tree:
    """``debian-source:<line>[=<version>]`` or a directory."""
    if text.startswith(DEBIAN_SOURCE):
        spec = text[len(DEBIAN_SOURCE):]
        line, eq, version = spec.partition("=")
        if _LINE.fullmatch(line) is None:
            raise KernelRefError(f"tree {text!r}: {line!r} is not a kernel line; write debian-source:6.1 "
                                 "or debian-source:6.1=6.1.192-2")
        if eq and _VERSION.fullmatch(version) is None:
            raise KernelRefError(f"tree {text!r}: {version!r} is not a Debian version")
        return DebianSource(line, version or None)
    return LocalTree(resolve(text, base))


def parse_config(text: str, base: Path) -> BaseConfig:
    """A make target, ``debian:<package>[=<version>]``, or a .config file."""
    if text.startswith("debian:"):
        package, _, version = text[len("debian:"):].partition("=")
        if _PACKAGE.fullmatch(package) is None or (version and _VERSION.fullmatch(version) is None):
            raise KernelRefError(f"config {text!r}: write debian:<kernel package>[=<version>], "
                                 "e.g. debian:linux-image-6.1.0-56-amd64")
        return PackageConfig(package, version or None)
    if _TARGET.fullmatch(text) is not None and "/" not in text:
        return MakeTarget(text)
    return ConfigFile(resolve(text, base))


def read_fragment(path: Path) -> Fragment:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KernelRefError(f"{path}: no such config fragment (the shipped ones are in kernels/fragments/)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise KernelRefError(f"{path}: cannot read this config fragment: {err}") from None
    return Fragment(path, text)


def from_arguments(tree: str, config: str, fragments: Sequence[str], base: Path) -> Recipe:
    """A recipe from command-line keys; paths relative to ``base`` (the current directory)."""
    return Recipe(parse_tree(tree, base), parse_config(config, base),
                  tuple(read_fragment(resolve(f, base)) for f in fragments))


def resolve(text: str, base: Path) -> Path:
    """A path as written (``~`` expanded), relative ones against ``base``."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _fragments(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[tuple[str, int | None], ...]:
    found = yn.items(ctx, node, key, "a list of config fragment files, e.g. [fragments/patchscope.config]",
                     split=False)
    return tuple((value, yn.line_of(item)) for _, item, value in found)


SCHEMA = yn.Section({
    "description": yn.text("one line of text"),
    "kind": yn.choice(("build",)),
    "tree": yn.text("debian-source:<line>[=<version>] or a kernel source directory"),
    "config": yn.text("tinyconfig, defconfig, debian:<kernel package> or a .config file"),
    "fragments": _fragments,
})


def load_build_recipe(path: Path) -> Recipe:
    """Read a ``kind: build`` recipe, every error at its file and line."""
    ctx = yn.Ctx(path, path.parent, SCHEMA)
    root = yn.parse_yaml(ctx, yn.read_text(path, MAX_RECIPE_BYTES), kind="recipe", limit=MAX_RECIPE_BYTES)
    values = yn.read_section(ctx, root, SCHEMA)
    for key in ("tree", "config"):
        if key not in values:
            raise ctx.fail(root, f"a build recipe needs {key}: (see kernels/tiny-6.1.yaml)")
    try:
        tree = parse_tree(str(values["tree"]), path.parent)
        config = parse_config(str(values["config"]), path.parent)
    except KernelRefError as err:
        key = "tree" if str(err).startswith("tree") else "config"
        raise ConfigError(path, ctx.lines.get(key), str(err)) from None
    fragments = []
    for text, line in cast(tuple[tuple[str, int | None], ...], values.get("fragments", ())):
        try:
            fragments.append(read_fragment(resolve(text, path.parent)))
        except KernelRefError as err:
            raise ConfigError(path, line, str(err)) from None
    return Recipe(tree, config, tuple(fragments), name=path.stem, source=path)
