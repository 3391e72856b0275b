"""The matrix file: which kernels, modes and configs a nightly runs, read with file:line errors.

    name: nightly                      # [A-Za-z0-9._-]+; default: the file's stem
    kernels:                           # kernel references, each a column of the page
      - debian-6.1                     #   a recipe from kernels/ (pinned)
      - debian-newest:6.1              #   floating: the newest 6.1 ABI in the apt sources, on each run
    modes: [native, xen-pv]            # default: both
    configs: ["../configs/*.yaml"]     # globs, relative to this file; each must match a config
    exclude:                           # cells left out: every key given must match (globs)
      - {config: xen-pv-smap-tcg, mode: native}
    retries: 1                         # a failing cell runs again up to this many times (0..5); default 0
    timeout: 900                       # seconds one attempt of a cell may take, all in; default 900

Kernel references are checked by the caller's ``check_kernel`` (the kernel
package is an edge; this module stays pure), so an unknown one is reported at
its line, before anything boots.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from .. import yamlnode as yn
from ..config import Config, load_config
from ..config.schema import parse_modes
from ..domain import MODES, Mode

MAX_MATRIX_BYTES = 64 * 1024
MAX_RETRIES = 5
DEFAULT_CELL_TIMEOUT = 900.0


def safe(text: str) -> str:
    """A kernel reference as a directory name."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


@dataclass(frozen=True)
class Exclude:
    config: str | None = None     # globs on the config's name, the kernel's name as written, the mode
    kernel: str | None = None
    mode: str | None = None
    line: int | None = None

    def matches(self, config: str, kernel: str, mode: str) -> bool:
        return all(pattern is None or fnmatch.fnmatchcase(value, pattern)
                   for pattern, value in ((self.config, config), (self.kernel, kernel), (self.mode, mode)))


@dataclass(frozen=True)
class MatrixSpec:
    name: str
    path: Path
    kernels: tuple[str, ...]
    modes: tuple[Mode, ...]
    configs: tuple[Config, ...]          # every config the globs matched, by name
    exclude: tuple[Exclude, ...] = ()
    retries: int = 0
    timeout: float = DEFAULT_CELL_TIMEOUT


def _retries(ctx: yn.Ctx, node: yaml.Node, key: str) -> int:
    value = yn.whole(node)
    if value is None or not 0 <= value <= MAX_RETRIES:
        raise ctx.fail(node, f"{key} must be a whole number from 0 to {MAX_RETRIES}, not {yn.describe(node)}")
    return value


def _exclude(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[Exclude, ...]:
    if yn.is_null(node):
        return ()
    out = []
    for item_key, item in yn.mappings(ctx, node, key, "of cells to leave out, e.g. [{config: boot-*, mode: native}]",
                                      "{config: boot-native, kernel: debian-6.1, mode: xen-pv}"):
        values = yn.read_section(ctx, item, _EXCLUDE, item_key + ".")
        if not values:
            raise ctx.fail(item, f"{item_key} needs at least one of config, kernel, mode")
        out.append(Exclude(config=cast(str | None, values.get("config")), kernel=cast(str | None, values.get("kernel")),
                           mode=cast(str | None, values.get("mode")), line=yn.line_of(item)))
    return tuple(out)


_EXCLUDE = yn.Section({key: yn.text(f"a glob on the cell's {key}") for key in ("config", "kernel", "mode")})

SCHEMA = yn.Section({
    "name": yn.text("a name of letters, digits, '.', '_' and '-'", pattern=r"[A-Za-z0-9._-]{1,100}"),
    "kernels": yn.keep,
    "modes": parse_modes,
    "configs": yn.keep,
    "exclude": _exclude,
    "retries": _retries,
    "timeout": yn.seconds,
})


def load_matrix(path: Path, check_kernel: Callable[[str, Path], str | None]) -> MatrixSpec:
    """Read and check a matrix file; ``check_kernel(ref, base_dir)`` returns why a reference is no good."""
    path = Path(path)
    ctx = yn.Ctx(path, path.parent, SCHEMA)
    root = yn.parse_yaml(ctx, yn.read_text(path, MAX_MATRIX_BYTES), kind="matrix file", limit=MAX_MATRIX_BYTES,
                         if_empty="list its kernels and configs (see ci/nightly.yaml)")
    values = yn.read_section(ctx, root, SCHEMA)
    kernels = _kernels(ctx, yn.node_at(values, "kernels"), root, check_kernel)
    configs = _configs(ctx, yn.node_at(values, "configs"), root)
    modes = cast(tuple[Mode, ...], values.get("modes", MODES))
    spec = MatrixSpec(name=yn.get(values, "name", path.stem), path=path, kernels=kernels, modes=modes,
                      configs=configs, exclude=yn.get(values, "exclude", cast(tuple[Exclude, ...], ())),
                      retries=yn.get(values, "retries", 0), timeout=float(yn.get(values, "timeout", DEFAULT_CELL_TIMEOUT)))
    for ex in spec.exclude:
        if not any(ex.matches(c.name, k, m) for c in spec.configs for k in spec.kernels for m in spec.modes):
            raise ctx.fail(ex.line, "this exclude matches no cell of the matrix; fix its globs or remove it")
    return spec


def _kernels(ctx: yn.Ctx, node: yaml.Node | None, root: yaml.Node,
             check_kernel: Callable[[str, Path], str | None]) -> tuple[str, ...]:
    if node is None:
        raise ctx.fail(root, "kernels is missing: list the kernel references to run, e.g. [debian-6.1]")
    found = yn.items(ctx, node, "kernels", "a list of kernel references, e.g. [debian-6.1, debian-newest:6.1]",
                     split=False)
    if not found:
        raise ctx.fail(node, "kernels is empty: list at least one kernel reference")
    out: list[str] = []
    for item_key, item, ref in found:
        if ref in out:
            raise ctx.fail(item, f"{item_key}: {yn.quote(ref)} is listed twice")
        clash = next((other for other in out if safe(other) == safe(ref)), None)
        if clash is not None:
            raise ctx.fail(item, f"{item_key}: {yn.quote(ref)} and {yn.quote(clash)} would share the artefacts "
                                 f"directory cells/{safe(ref)}; name one of them differently")
        why = check_kernel(ref, ctx.base_dir)
        if why is not None:
            raise ctx.fail(item, f"{item_key}: {why}")
        out.append(ref)
    return tuple(out)


def _configs(ctx: yn.Ctx, node: yaml.Node | None, root: yaml.Node) -> tuple[Config, ...]:
    if node is None:
        raise ctx.fail(root, "configs is missing: give globs of config files, e.g. ['../configs/*.yaml']")
    found = yn.items(ctx, node, "configs", "a list of globs of config files", split=False)
    if not found:
        raise ctx.fail(node, "configs is empty: give at least one glob of config files")
    by_name: dict[str, Config] = {}
    for item_key, item, pattern in found:
        # the directory is a path, not a pattern: "ci [old]/" must not be read as a character class
        full = pattern if Path(pattern).is_absolute() else str(Path(glob.escape(str(ctx.base_dir))) / pattern)
        paths = sorted(Path(p) for p in glob.glob(full) if re.search(r"\.ya?ml$", p))
        if not paths:
            raise ctx.fail(item, f"{item_key}: {yn.quote(pattern)} matches no .yaml file (relative to "
                                 f"{ctx.base_dir}); fix the glob")
        for p in paths:
            cfg = load_config(p)                       # its own errors name its own file and line
            other = by_name.get(cfg.name)
            if other is not None and other.path != cfg.path:
                raise ctx.fail(item, f"{item_key}: {p} and {other.path} are both named {cfg.name!r}; "
                                     "a cell is named by its config, so give each a distinct name:")
            by_name[cfg.name] = cfg
    return tuple(by_name[n] for n in sorted(by_name))

