"""Build recipes read with file:line errors, their keys, and the build log read for progress and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.build.buildlog import first_error, step
from framework.build.kconfig import parse
from framework.build.recipe import (
    ConfigFile,
    DebianSource,
    LocalTree,
    MakeTarget,
    PackageConfig,
    build_key,
    from_arguments,
    load_build_recipe,
    parse_config,
    parse_tree,
)
from framework.errors import ConfigError, KernelRefError
from framework.kernel.refs import BuildRef, parse_ref
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "build"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_shipped_tiny_recipe_names_debians_source_and_the_shipped_fragment() -> None:
    recipe = load_build_recipe(REPO / "kernels" / "tiny-6.1.yaml")
    assert recipe.tree == DebianSource("6.1", "6.1.192-2")
    assert recipe.config == MakeTarget("tinyconfig")
    assert [f.path for f in recipe.fragments] == [REPO / "kernels" / "fragments" / "patchscope.config"]
    assert "CONFIG_XEN_DOM0=y" in recipe.fragments[0].text
    ref = parse_ref("tiny-6.1")
    assert isinstance(ref, BuildRef) and ref.recipe.tree == recipe.tree


def test_build_refs_resolve_against_the_config_directory(tmp_path: Path) -> None:
    write(tmp_path, "f.config", "CONFIG_SMP=y\n")
    write(tmp_path, "k/r.yaml", "kind: build\ntree: ../src\nconfig: defconfig\nfragments: [../f.config]\n")
    ref = parse_ref("build:k/r.yaml", base=tmp_path)
    assert isinstance(ref, BuildRef)
    assert ref.recipe.tree == LocalTree(tmp_path / "k" / ".." / "src")
    assert ref.recipe.fragments[0].text == "CONFIG_SMP=y\n"
    with pytest.raises(KernelRefError, match="no such build recipe"):
        parse_ref("build:nope.yaml", base=tmp_path)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("kind: build\ntree: debian-source:six\nconfig: tinyconfig\n", 2, "'six' is not a kernel line"),
    ("kind: build\ntree: debian-source:6.1\n", 1, "a build recipe needs config:"),
    ("kind: build\ntree: debian-source:6.1\nconfig: tinyconfig\nfragments:\n  - a.config\n  - missing.config\n", 6,
     "missing.config: no such config fragment"),
    ("kind: build\ntree: x\nconfig: tinyconfig\nfragment: [a.config]\n", 4, "unknown key 'fragment'"),
    ("kind: build\ntree: x\nconfig: debian:Bad_Name\n", 3, "write debian:<kernel package>"),
])
def test_bad_recipes_are_refused_at_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    write(tmp_path, "a.config", "CONFIG_SMP=y\n")
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_build_recipe(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert message in str(err.value)


def test_base_configs_are_make_targets_debian_packages_or_files(tmp_path: Path) -> None:
    assert parse_config("tinyconfig", tmp_path) == MakeTarget("tinyconfig")
    assert parse_config("x86_64_defconfig", tmp_path) == MakeTarget("x86_64_defconfig")
    assert parse_config("debian:linux-image-6.1.0-56-amd64=6.1.192-2", tmp_path) == PackageConfig(
        "linux-image-6.1.0-56-amd64", "6.1.192-2")
    assert parse_config("my.config", tmp_path) == ConfigFile(tmp_path / "my.config")
    assert parse_tree("debian-source:6.12", tmp_path) == DebianSource("6.12", None)
    assert parse_tree("~/src/linux", tmp_path) == LocalTree(Path.home() / "src" / "linux")


def test_a_request_changes_with_every_input_and_a_key_ignores_config_comments(tmp_path: Path) -> None:
    frag = write(tmp_path, "a.config", "CONFIG_SMP=y\n")
    recipe = from_arguments("debian-source:6.1=6.1.192-2", "tinyconfig", [str(frag)], tmp_path)
    digest = recipe.request_digest("linux-source-6.1=6.1.192-2", "gcc 12")
    assert digest != recipe.request_digest("linux-source-6.1=6.1.192-3", "gcc 12")
    assert digest != recipe.request_digest("linux-source-6.1=6.1.192-2", "gcc 13")
    frag.write_text("CONFIG_SMP=n\n")
    other = from_arguments("debian-source:6.1=6.1.192-2", "tinyconfig", [str(frag)], tmp_path)
    assert other.request_digest("linux-source-6.1=6.1.192-2", "gcc 12") != digest
    config = "#\n# Linux/x86 6.1.192 Kernel Configuration\n#\nCONFIG_SMP=y\n# CONFIG_XEN is not set\n"
    key = build_key("git:abc", config, "gcc 12")
    assert key == build_key("git:abc", config.replace("6.1.192", "6.1.999"), "gcc 12")
    assert key != build_key("git:abc", config.replace("# CONFIG_XEN is not set", "CONFIG_XEN=y"), "gcc 12")
    assert key != build_key("git:abd", config, "gcc 12")


def test_kbuild_steps_are_read_from_makes_output() -> None:
    assert step("  CC      kernel/fork.o") is not None
    got = step("  LD      vmlinux.o")
    assert got is not None and (got.kind, got.target, got.compiles) == ("LD", "vmlinux.o", False)
    assert step("make[1]: Entering directory '/tmp/o'") is None
    assert step("init/main.c: In function 'start_kernel':") is None


def test_the_first_error_of_a_recorded_failed_build_is_the_compilers() -> None:
    # a real log: a broken init/calibrate.c in a git copy of Debian's 6.1 source (tests/boot/test_build.py)
    log = (DATA / "failed-build.log").read_text().splitlines()
    assert first_error(log) == ("../../../../../../tmp/pytest-of-root/pytest-182/git0/linux/init/calibrate.c:15:26: "
                                "error: expected expression before \u2018;\u2019 token")
    # make's own lines come after it and are not what the user needs first
    assert first_error([line for line in log if "error:" not in line]) == (
        "make[3]: *** [/tmp/pytest-of-root/pytest-182/git0/linux/scripts/Makefile.build:255: init/calibrate.o] Error 1")


def test_without_a_compiler_error_the_first_make_failure_is_shown() -> None:
    assert first_error(["  CC      a.o", "/bin/sh: 1: flex: not found"]) == "/bin/sh: 1: flex: not found"
    assert first_error(["x", "make[2]: *** [scripts/Makefile.build:250: a.o] Error 1", "make: *** Error 2"]) == (
        "make[2]: *** [scripts/Makefile.build:250: a.o] Error 1")
    assert first_error(["all good"]) is None



def test_the_debug_recipe_adds_dwarf_and_btf_to_the_tiny_one() -> None:
    tiny = load_build_recipe(REPO / "kernels" / "tiny-6.1.yaml")
    debug = load_build_recipe(REPO / "kernels" / "tiny-6.1-debug.yaml")
    assert debug.tree == tiny.tree and debug.config == tiny.config
    assert debug.fragments[0] == tiny.fragments[0]
    assert "CONFIG_DEBUG_INFO_BTF=y" in debug.fragments[1].text


def test_every_shipped_fragment_is_strict_kconfig_with_a_header() -> None:
    fragments = sorted((REPO / "kernels" / "fragments").glob("*.config"))
    assert {f.name for f in fragments} >= {"patchscope.config", "debug-info.config", "xen-dom0.config"}
    for fragment in fragments:
        text = fragment.read_text()
        assert parse(text, str(fragment)), fragment          # strict: any other line is an error
        assert text.startswith("# "), f"{fragment}: say what it is for in a comment first"
