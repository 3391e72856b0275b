"""Real kernel builds: the shipped tiny recipe from Debian's 6.1 source, booted both ways, and a git tree.

The first test builds kernels/tiny-6.1.yaml (about 4 minutes on 2 cores with an
empty cache; nothing on the second request). The git tests take that source tree as
a git checkout (tests/boot/conftest.py: hard links, the cached tree is never written) and build a
bare tinyconfig from it at two commits (the second relinks, ccache and make
reuse the rest), then with a broken file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from framework.build.kconfig import parse
from tests.conftest import REPO, CliResult, git, patchscope

pytestmark = pytest.mark.boot

FRAGMENT = REPO / "kernels" / "fragments" / "patchscope.config"
BUILD_TIMEOUT = 1800


def built_entry(res: CliResult) -> Path:
    m = re.search(r"^  bzImage  (\S+)$", res.stdout, re.MULTILINE)
    assert m is not None, res.stdout + res.stderr
    path = Path(m.group(1))
    return (path if path.is_absolute() else REPO / path).parent


@pytest.fixture(scope="module")
def tiny() -> Path:
    res = patchscope("build", "kernels/tiny-6.1.yaml", timeout=BUILD_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    return built_entry(res)


def test_the_tiny_recipe_is_built_with_every_fragment_option_then_served_from_the_cache(tiny: Path) -> None:
    info = json.loads((tiny / "build.json").read_text())
    assert info["identity"] == "linux-source-6.1=6.1.192-2" and info["recipe"] == "tiny-6.1"
    final = {s.name: s.value for s in parse((tiny / "config").read_text(), "config", strict=False)}
    for want in parse(FRAGMENT.read_text(), str(FRAGMENT)):
        assert final.get(want.name) == want.value, want.render()
    with open(tiny / "vmlinux", "rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        assert symtab is not None and symtab.num_symbols() > 10_000
        assert elf.get_section_by_name(".parainstructions") is not None
    assert json.loads((tiny / "kernel.json").read_text())["symbol_source"] == "vmlinux symtab"
    again = patchscope("build", "kernels/tiny-6.1.yaml")
    assert again.returncode == 0, again.stderr
    assert built_entry(again) == tiny
    assert "configuring" not in again.stderr and "building" not in again.stderr, again.stderr
    listed = patchscope("kernels", "list")
    assert re.search(rf"^  {tiny.name} .*built from linux-source-6.1=6.1.192-2 \(tiny-6.1\)$", listed.stdout, re.MULTILINE), (
        listed.stdout)


@pytest.mark.parametrize("config", ["boot-native", "boot-xen-pv"])
def test_the_tiny_kernel_boots_with_the_shipped_boot_configs(tiny: Path, config: str, artifacts: Path) -> None:
    res = patchscope("run", f"configs/{config}.yaml", "--kernel", "tiny-6.1", "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"PASS  {config} ["), res.stdout


@pytest.mark.parametrize("mode", ["native", "xen-pv"])
def test_sites_live_on_the_tiny_kernel_explains_every_change(tiny: Path, mode: str, artifacts: Path) -> None:
    res = patchscope("sites", "--live", "--mode", mode, "--kernel", "build:kernels/tiny-6.1.yaml",
                     "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "text changes outside every known site: 0" in res.stdout, res.stdout
    rows = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in
            re.finditer(r"^  (\w+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+$", res.stdout, re.MULTILINE)}
    for table in ("paravirt", "alternatives", "returns", "static_calls", "ftrace"):
        sites, patched = rows[table]
        assert sites > 0 and patched > 0, (table, res.stdout)


def test_a_fragment_option_that_cannot_survive_olddefconfig_is_refused_at_its_line(tiny: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "btf.config"
    fragment.write_text("# BTF without DWARF cannot be\nCONFIG_PRINTK=y\nCONFIG_DEBUG_INFO_BTF=y\n")
    res = patchscope("build", "--tree", "debian-source:6.1=6.1.192-2", "--config", "tinyconfig",
                     "--fragment", str(fragment), timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("patchscope: error:")]
    expected = (f"patchscope: error: {fragment}:3: CONFIG_DEBUG_INFO_BTF=y did not survive olddefconfig: the final "
                ".config has CONFIG_DEBUG_INFO_BTF absent (its dependencies are not met); add what it depends on to "
                "the fragment, or drop the line")
    assert error == [expected], res.stderr


def replace(path: Path, text: str) -> None:
    """Write a new file in place of a hard link, so the cached source it shares an inode with stays as it was."""
    path.unlink()
    path.write_text(text)


@pytest.fixture(scope="module")
def git_tree(tiny: Path, linux_git: Path) -> Path:
    """Debian's source as a git checkout (tests/boot/conftest.py), shared with the bisect tests."""
    return linux_git


def test_a_git_tree_at_two_commits_gives_two_cache_entries(git_tree: Path, tmp_path: Path) -> None:
    args = ("build", "--tree", str(git_tree), "--config", "tinyconfig")     # bare tinyconfig: the quickest build
    first = patchscope(*args, timeout=BUILD_TIMEOUT)
    assert first.returncode == 0, first.stdout + first.stderr
    head1 = git(git_tree, "rev-parse", "HEAD").strip()
    assert f"  tree     git:{head1}\n" in first.stdout
    version = git_tree / "init" / "version.c"
    replace(version, version.read_text() + "\n/* patchscope: a second commit */\n")
    git(git_tree, "commit", "-q", "-am", "second")
    head2 = git(git_tree, "rev-parse", "HEAD").strip()
    second = patchscope(*args, timeout=BUILD_TIMEOUT)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"  tree     git:{head2}\n" in second.stdout
    assert built_entry(first) != built_entry(second)
    assert (built_entry(first) / "kernel.json").exists() and (built_entry(second) / "kernel.json").exists()
    assert git(git_tree, "status", "--porcelain") == "", "the build wrote into the tree"


def test_a_broken_source_file_fails_with_the_compilers_error_and_keeps_the_log(git_tree: Path) -> None:
    calibrate = git_tree / "init" / "calibrate.c"
    original = calibrate.read_text()
    replace(calibrate, original.replace("unsigned long lpj_fine;", "unsigned long lpj_fine = ;", 1))
    try:
        res = patchscope("build", "--tree", str(git_tree), "--config", "tinyconfig", timeout=BUILD_TIMEOUT)
    finally:
        replace(calibrate, original)
    assert res.returncode == 2, res.stdout + res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("patchscope: error:")]
    assert len(error) == 1, res.stderr
    m = re.fullmatch(rf"patchscope: error: the kernel build failed: ({re.escape(str(calibrate))}:\d+:\d+: error: .*); "
                     r"the whole log is (\S+)", error[0])
    assert m is not None, error[0]
    log = Path(m.group(2))
    assert log.is_file() and m.group(1).split(": error: ")[1] in log.read_text()
