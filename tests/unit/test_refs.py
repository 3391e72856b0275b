from __future__ import annotations

from pathlib import Path

import pytest

from framework.errors import ConfigError, KernelRefError
from framework.kernel.refs import DebianRef, PathRef, list_recipes, load_recipe, parse_ref

REPO_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def test_default_recipe_pins_the_default_kernel() -> None:
    ref = parse_ref("debian-6.1", REPO_KERNELS)
    assert ref == DebianRef("linux-image-6.1.0-56-amd64", "6.1.192-2", "debian-6.1")


def test_debian_refs() -> None:
    assert parse_ref("debian:linux-image-6.1.0-47-amd64=6.1.170-3") == \
        DebianRef("linux-image-6.1.0-47-amd64", "6.1.170-3", "debian:linux-image-6.1.0-47-amd64=6.1.170-3")
    assert parse_ref("debian:linux-image-amd64").version is None


@pytest.mark.parametrize("text, fragment", [
    ("debian:Linux_Image", "not a Debian package name"),
    ("debian:linux-image-amd64=6.1 2", "not a Debian version"),
    ("path:", "give the image"),
    ("path:bz,symbols=x", "unknown option"),
    ("debain-6.1", "unknown kernel reference 'debain-6.1'"),
])
def test_bad_refs_say_what_to_write(text: str, fragment: str) -> None:
    with pytest.raises(KernelRefError, match=fragment):
        parse_ref(text, REPO_KERNELS)


def test_path_refs_resolve_against_base(tmp_path: Path) -> None:
    ref = parse_ref("path:build/bzImage,vmlinux=build/vmlinux", base=tmp_path)
    assert ref == PathRef(tmp_path / "build/bzImage", tmp_path / "build/vmlinux",
                          "path:build/bzImage,vmlinux=build/vmlinux")


def test_recipes_listed_and_bad_recipes_rejected(tmp_path: Path) -> None:
    assert "debian-6.1" in list_recipes(REPO_KERNELS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: debian\npackage: linux-image-x\nversion: 1\nmirror: http://example\n")
    with pytest.raises(ConfigError, match="unknown recipe keys: mirror"):
        load_recipe(bad)
    bad.write_text("kind: source\n")
    with pytest.raises(ConfigError, match="kind 'source' is not supported; use kind: debian or kind: build"):
        load_recipe(bad)
    bad.write_text("kind: build\n")     # a build recipe is read by framework.build.recipe, with lines
    with pytest.raises(ConfigError, match=r"bad.yaml:1: a build recipe needs tree:"):
        load_recipe(bad)


def test_a_reference_that_is_not_one_printable_line_is_refused_in_one() -> None:
    """Found by tests/unit/test_fuzz_inputs.py: 'build:\\n0' gave a two-line error."""
    for text in ("build:\n0", "debian-6.1\x00", "path:/a\tb"):
        with pytest.raises(KernelRefError, match="a kernel reference is one line of printable text") as info:
            parse_ref(text)
        assert "\n" not in str(info.value)
