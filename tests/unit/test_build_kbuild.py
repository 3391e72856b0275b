"""The build's edge against a fake toolchain: tree identities, the configure check, caching, failures.

``make``, ``gcc`` and friends are small scripts on PATH here; the real toolchain
and a real kernel tree are exercised in tests/boot/test_build.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from framework.build import kbuild
from framework.build.recipe import DebianSource, from_arguments
from framework.build.tree import LocalTree, kconfig_symbols, prepare_tree, resolve_version
from framework.errors import BuildError, FetchError, KernelRefError
from tests.conftest import git

# A stand-in for kbuild: "make -C SRC O=OUT [-jN] [VAR=value…] TARGET…".
FAKE_MAKE = r'''#!PYTHON
import os, sys
args = sys.argv[1:]
src = args[args.index("-C") + 1]
out = next(a[2:] for a in args if a.startswith("O="))
targets = [a for a in args if "=" not in a and not a.startswith("-") and a != src]
dot = os.path.join(out, ".config")
with open(os.path.join(out, "make.calls"), "a") as fh:
    fh.write(" ".join(targets) + "\n")
if targets == ["tinyconfig"]:
    open(dot, "w").write("CONFIG_64BIT=y\n# CONFIG_SMP is not set\n")
elif targets == ["olddefconfig"]:
    # Kconfig's part: an option whose dependency is missing is dropped, and so is one no Kconfig defines
    lines = [l for l in open(dot).read().splitlines() if l.split("=")[0] in ("CONFIG_64BIT", "CONFIG_SMP")
             or l.startswith("# ")]
    open(dot, "w").write("\n".join(lines) + "\n")
else:
    print("  CC      init/main.o")
    broken = os.path.join(src, "init", "broken.c")
    if os.path.exists(broken):
        print("init/broken.c: In function 'f':", flush=True)
        print("init/broken.c:3:9: error: expected expression before ';' token", flush=True)
        print("make[3]: *** [scripts/Makefile.build:250: init/broken.o] Error 1", flush=True)
        sys.exit(2)
    os.makedirs(os.path.join(out, "arch/x86/boot"), exist_ok=True)
    open(os.path.join(out, "arch/x86/boot/bzImage"), "wb").write(b"bz" + open(dot, "rb").read())
    open(os.path.join(out, "vmlinux"), "wb").write(b"\x7fELF")
    print("  LD      vmlinux")
'''


@pytest.fixture
def toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE.replace("PYTHON", sys.executable))
    for tool, text in (("gcc", "echo 'gcc (Fake) 12.2.0'"), ("flex", ":"), ("bison", ":"), ("bc", ":")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{text}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CCACHE_DISABLE", "1")
    return bin_dir


def kernel_tree(path: Path) -> Path:
    (path / "arch" / "x86").mkdir(parents=True)
    (path / "init").mkdir()
    (path / "Makefile").write_text("# not really\n")
    (path / "arch" / "x86" / "Kconfig").write_text("config 64BIT\n\tbool\nmenuconfig SMP\n\tbool\n")
    (path / "Kconfig").write_text("config NEEDS_MISSING\n\tdepends on MISSING\n")
    (path / "init" / "main.c").write_text("int main_c;\n")
    return path


def test_a_git_tree_is_its_commit_plus_a_hash_of_what_is_not_committed(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    (tree / ".gitignore").write_text("*.o\n")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "one")
    head = git(tree, "rev-parse", "HEAD")
    assert prepare_tree(LocalTree(tree)).identity == f"git:{head}"
    (tree / "init" / "ignored.o").write_text("built\n")
    assert prepare_tree(LocalTree(tree)).identity == f"git:{head}", "an ignored file is not part of the tree"
    (tree / "init" / "main.c").write_text("int main_c = 1;\n")
    dirty = prepare_tree(LocalTree(tree)).identity
    assert dirty.startswith(f"git:{head}+dirty-")
    (tree / "init" / "main.c").write_text("int main_c = 2;\n")
    assert prepare_tree(LocalTree(tree)).identity not in (dirty, f"git:{head}")
    (tree / "init" / "main.c").write_text("int main_c;\n")
    (tree / "init" / "new.c").write_text("int new_c;\n")
    assert prepare_tree(LocalTree(tree)).identity.startswith(f"git:{head}+dirty-"), "untracked files count"


def test_a_plain_directory_is_identified_by_its_files(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    first = prepare_tree(LocalTree(tree)).identity
    assert first.startswith("dir:") and prepare_tree(LocalTree(tree)).identity == first
    (tree / "init" / "main.c").write_text("int main_c = 12345;\n")
    assert prepare_tree(LocalTree(tree)).identity != first


def test_trees_that_cannot_be_built_out_of_tree_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelRefError, match="no such kernel source directory"):
        prepare_tree(LocalTree(tmp_path / "nope"))
    (tmp_path / "notlinux").mkdir()
    with pytest.raises(KernelRefError, match="not a Linux source tree"):
        prepare_tree(LocalTree(tmp_path / "notlinux"))
    tree = kernel_tree(tmp_path / "linux")
    (tree / ".config").write_text("CONFIG_64BIT=y\n")
    with pytest.raises(KernelRefError, match="run 'make mrproper' in it"):
        prepare_tree(LocalTree(tree))


def test_kconfig_symbols_are_read_from_every_kconfig_file(tmp_path: Path) -> None:
    assert kconfig_symbols(kernel_tree(tmp_path / "linux")) == {"64BIT", "SMP", "NEEDS_MISSING"}


def test_a_build_is_cached_by_request_and_by_final_config(toolchain: Path, tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    frag = tmp_path / "smp.config"
    frag.write_text("CONFIG_SMP=y\n")
    recipe = from_arguments(str(tree), "tinyconfig", [str(frag)], tmp_path)
    notes: list[str] = []
    first = kbuild.build(recipe, notes.append)
    assert not first.cached and first.steps == 2
    assert (first.entry / "config").read_text() == "CONFIG_64BIT=y\nCONFIG_SMP=y\n"
    assert (first.entry / "bzImage").read_bytes().startswith(b"bz")
    assert "  CC      init/main.o" in (first.entry / "build.log").read_text()
    assert any(n.startswith("building bzImage vmlinux with make -j") for n in notes)
    work = next((tmp_path / "cache" / "builds" / "work").iterdir())
    calls = (work / "make.calls").read_text()
    again = kbuild.build(recipe, notes.append)
    assert again.cached and again.key == first.key
    assert (work / "make.calls").read_text() == calls, "a remembered request neither configures nor builds"
    # the same final .config reached another way: configured, but not built again
    same = tmp_path / "same.config"
    same.write_text("# the same, written differently\nCONFIG_SMP=y\n")
    other = kbuild.build(from_arguments(str(tree), "tinyconfig", [str(same)], tmp_path))
    assert other.cached and other.key == first.key
    assert (work / "make.calls").read_text() == calls + "tinyconfig\nolddefconfig\n"


def test_an_option_kconfig_drops_is_an_error_at_the_fragment_line(toolchain: Path, tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_SMP=y\nCONFIG_NEEDS_MISSING=y\nCONFIG_NOT_IN_THIS_TREE=y\n")
    with pytest.raises(BuildError) as err:
        kbuild.build(from_arguments(str(tree), "tinyconfig", [str(frag)], tmp_path))
    assert str(err.value).startswith(f"{frag}:2: CONFIG_NEEDS_MISSING=y did not survive olddefconfig")
    assert err.value.log is not None and err.value.log.parent.name == "failed"
    assert str(err.value).endswith(f"(1 more in {err.value.log})")
    assert "CONFIG_NOT_IN_THIS_TREE=y: this tree has no option NOT_IN_THIS_TREE" in err.value.log.read_text()


def test_a_failed_build_names_the_compiler_error_and_keeps_the_log(toolchain: Path, tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    (tree / "init" / "broken.c").write_text("int f(void)\n{\n\treturn ;;\n}\n")
    with pytest.raises(BuildError) as err:
        kbuild.build(from_arguments(str(tree), "tinyconfig", [], tmp_path))
    message = str(err.value)
    assert message.startswith("the kernel build failed: init/broken.c:3:9: error: expected expression before ';' "
                              "token; the whole log is ")
    assert err.value.log is not None and err.value.log.parent.name == "failed"
    assert "make[3]: *** [scripts/Makefile.build:250: init/broken.o] Error 1" in err.value.log.read_text()
    assert not list((tmp_path / "cache" / "kernels").glob("build-*")), "a failed build leaves no cache entry"


def test_a_debian_source_without_a_version_is_the_apt_sources_candidate(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    policy = ("linux-source-6.12:\n  Installed: (none)\n  Candidate: 6.12.117-1~deb12u1\n  Version table:\n"
              "     6.12.117-1~deb12u1 500\n")
    (bin_dir / "apt-cache").write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'policy linux-source-6.12' ] && printf '{policy}'\n")
    (bin_dir / "apt-cache").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    notes: list[str] = []
    assert resolve_version(DebianSource("6.12", None), notes.append) == "6.12.117-1~deb12u1"
    assert notes == ["debian-source:6.12 is linux-source-6.12=6.12.117-1~deb12u1"]
    assert resolve_version(DebianSource("6.1", "6.1.192-2")) == "6.1.192-2"
    with pytest.raises(FetchError, match="the apt sources carry no linux-source-9.9"):
        resolve_version(DebianSource("9.9", None))


def test_patchscopes_own_trees_build_in_a_subdirectory_and_a_users_tree_never(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    own = tmp_path / "cache" / "sources" / "linux-source-6.1_6.1.192-2"
    clone = tmp_path / "cache" / "bisect" / "clones" / "0123456789ab"
    user = tmp_path / "src" / "linux"
    for tree in (own, clone, user):
        tree.mkdir(parents=True)
    assert kbuild.work_dir(own, "s") == own / ".patchscope-build"
    assert kbuild.work_dir(clone, "s") == clone / ".patchscope-build"
    assert kbuild.work_dir(user, "s") == tmp_path / "cache" / "builds" / "work" / "s"
