"""``patchscope build``: build a kernel from a recipe, or from --tree/--config/--fragment. An edge."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import KernelRefError
from ..kernel.fetch import note_stderr
from ..kernel.image import prepare_kernel
from ..kernel.refs import BuildRef, list_recipes, load_recipe
from .kbuild import build_info
from .recipe import (
    Recipe,
    from_arguments,
    load_build_recipe,
    parse_config,
    parse_tree,
    read_fragment,
    resolve,
    shown,
)

DEFAULT_CONFIG = "tinyconfig"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="build a kernel from a source tree (cached), for --kernel build:<recipe>",
                       description="Build bzImage and vmlinux out of tree, with ccache, and cache them by (tree, "
                                   "final .config, compiler). Give a recipe (kernels/tiny-6.1.yaml or its name), "
                                   "or --tree and --config; options given with a recipe replace its keys.")
    p.add_argument("recipe", nargs="?", help="a build recipe file or its name in kernels/")
    p.add_argument("--tree", help="debian-source:<line>[=<version>] or a kernel source directory (a git checkout "
                                  "is built at HEAD plus its uncommitted changes)")
    p.add_argument("--config", help="the base config: tinyconfig (default), defconfig, any *config make target, "
                                    "debian:<kernel package>, or a .config file")
    p.add_argument("--fragment", action="append", default=[], metavar="FILE",
                   help="a config fragment laid over the base (repeatable, in order)")


def named_recipe(text: str, option: str) -> Recipe:
    """A build recipe given as a file or as its name in kernels/; errors start with ``option``."""
    path = Path(text)
    if path.is_file():
        return load_build_recipe(path)
    recipes = list_recipes()
    if text not in recipes:
        raise KernelRefError(f"{option} {text!r} is neither a recipe file nor a recipe name in kernels/ "
                             f"({', '.join(sorted(recipes)) or 'none'})")
    ref = load_recipe(recipes[text])
    if not isinstance(ref, BuildRef):
        raise KernelRefError(f"{option} {text!r} is a Debian kernel, not a build recipe (kind: build)")
    return ref.recipe


def recipe_of(args: argparse.Namespace) -> Recipe:
    base = Path.cwd()
    if args.recipe is None:
        if args.tree is None:
            raise KernelRefError("build: give a recipe (e.g. kernels/tiny-6.1.yaml) or --tree "
                                 "(debian-source:6.1, or a kernel source directory)")
        return from_arguments(args.tree, args.config or DEFAULT_CONFIG, args.fragment, base)
    recipe = named_recipe(args.recipe, "build:")
    return Recipe(parse_tree(args.tree, base) if args.tree else recipe.tree,
                  parse_config(args.config, base) if args.config else recipe.config,
                  tuple(read_fragment(resolve(f, base)) for f in args.fragment) if args.fragment else recipe.fragments,
                  name=recipe.name if not (args.tree or args.config or args.fragment) else None,
                  source=recipe.source)


def cmd_build(args: argparse.Namespace) -> int:
    recipe = recipe_of(args)
    text = f"build:{recipe.source}" if recipe.source is not None and recipe.name else "build"
    kernel = prepare_kernel(BuildRef(recipe, text), note_stderr)
    entry = kernel.bzimage.parent
    info = build_info(entry) or {}
    print(f"kernel build-{info.get('key', '?')}: {kernel.release}")
    for label, path in (("bzImage", kernel.bzimage), ("vmlinux", kernel.vmlinux), ("config", kernel.config),
                        ("log", entry / "build.log")):
        if path is not None:
            print(f"  {label:<8} {shown(path)}")
    print(f"  symbols  {kernel.symbol_source}")
    print(f"  tree     {info.get('identity', '?')}")
    if recipe.source is not None and recipe.name:
        print(f"  use it:  --kernel build:{shown(recipe.source)}")
    else:
        print(f"  use it:  --kernel path:{shown(kernel.bzimage)},vmlinux={shown(kernel.vmlinux or kernel.bzimage)}")
    return 0
