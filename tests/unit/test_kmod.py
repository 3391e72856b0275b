"""Out-of-tree modules against a Debian kernel's headers (framework/build/kmod.py).

The unit tests fetch nothing: they make small .deb files in the shape of
Debian's linux-headers-<abi>, linux-headers-<abi>-common and linux-kbuild-<line>
(relative symlinks between them, the absolute include in the flavour's Makefile,
the Depends that names the others), put them where apt_download would, and let a
stand-in kernel Makefile play kbuild. The last test builds the seed-002 modules
for real against Debian's 6.1.0-56 headers (marked boot: it fetches 14 MB once
and runs the real compiler).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from framework.build import kmod
from framework.elf import klp
from framework.errors import BuildError, FetchError, KernelRefError, ToolMissingError, UnsupportedError
from framework.kernel.refs import DebianRef
from tests.conftest import REPO

ABI = "6.1.0-56-amd64"
VERSION = "6.1.192-2"
KLP_DATA = REPO / "tests" / "data" / "klp"

File = bytes | tuple[str, str]          # contents, or ("link", target) / ("hardlink", target)


def deb(path: Path, control: str, files: Mapping[str, File]) -> Path:
    """A .deb (ar: debian-binary, control.tar.gz, data.tar.gz) holding ``files`` under ./"""
    def tar(members: Mapping[str, File]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            dirs: set[str] = set()
            for name in sorted(members):
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(f"./{d}")
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        t.addfile(info)
                content = members[name]
                info = tarfile.TarInfo(f"./{name}")
                if isinstance(content, tuple):
                    info.type = tarfile.SYMTYPE if content[0] == "link" else tarfile.LNKTYPE
                    info.linkname = content[1]
                    t.addfile(info)
                else:
                    info.size, info.mode = len(content), 0o755 if name.endswith(".sh") else 0o644
                    t.addfile(info, io.BytesIO(content))
        return buf.getvalue()

    out = bytearray(b"!<arch>\n")
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.gz", tar({"control": control.encode()})),
                       ("data.tar.gz", tar(files))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    path.write_bytes(bytes(out))
    return path


STAND_IN_KBUILD = """\
# A stand-in for the kernel's Makefile: "modules" does what the test's source directory asks.
modules:
\t@echo '  CC [M]  $(M)/hello.o'
\t@if [ -f $(M)/fail ]; then echo '$(M)/hello.c:3:5: error: boom'; exit 1; fi
\t@if [ -f $(M)/payload ]; then cp $(M)/payload $(M)/psm_lp_d1.ko; fi
\t@if [ -f $(M)/scripts-check ]; then test -f scripts/Makefile.build; fi
\t@echo '  LD [M]  $(M)/hello.ko'
\t@gcc -c -x c /dev/null -o $(M)/hello.ko
"""


@dataclass
class FakeArchive:
    debs: Path
    fetched: list[str]


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeArchive:
    """The three packages of 6.1.0-56-amd64 as the apt sources would give them, in an empty cache."""
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    debs = tmp_path / "debs"
    debs.mkdir()
    common = "usr/src/linux-headers-6.1.0-56-common"
    flavour = f"usr/src/linux-headers-{ABI}"
    packages = {
        (f"linux-headers-{ABI}", VERSION): deb(
            debs / "h.deb",
            f"Package: linux-headers-{ABI}\nVersion: {VERSION}\nDepends: linux-headers-6.1.0-56-common (= {VERSION}),"
            f"\n linux-kbuild-6.1 (>= {VERSION}), linux-compiler-gcc-12-x86\n",
            {f"{flavour}/Makefile": b"include /usr/src/linux-headers-6.1.0-56-common/Makefile\n",
             f"{flavour}/.config": b"CONFIG_LIVEPATCH=y\n",
             f"{flavour}/scripts": ("link", "../../lib/linux-kbuild-6.1/scripts"),
             f"lib/modules/{ABI}/build": ("link", f"/{flavour}")}),
        ("linux-headers-6.1.0-56-common", VERSION): deb(
            debs / "c.deb", f"Package: linux-headers-6.1.0-56-common\nVersion: {VERSION}\n",
            {f"{common}/Makefile": STAND_IN_KBUILD.encode(),
             f"{common}/include/linux/module.h": b"/* */\n",
             f"{common}/include/linux/same.h": ("hardlink", f"./{common}/include/linux/module.h"),
             f"{common}/scripts": ("link", "../../lib/linux-kbuild-6.1/scripts")}),
        ("linux-kbuild-6.1", "6.1.192-3"): deb(
            debs / "k.deb", "Package: linux-kbuild-6.1\nVersion: 6.1.192-3\n",
            {"usr/lib/linux-kbuild-6.1/scripts/Makefile.build": b"# kbuild\n",
             "usr/lib/linux-kbuild-6.1/scripts/mod/modpost.sh": b"#!/bin/sh\n"}),
    }
    fetched: list[str] = []

    def apt_download(ref: DebianRef, note: object = None) -> Path:
        fetched.append(f"{ref.package}={ref.version}")
        path = packages.get((ref.package, ref.version or ""))
        if path is None:
            raise FetchError(f"apt-get download {ref.package}={ref.version} failed")
        named = debs / f"{ref.package}_{ref.version}_amd64.deb"
        if not named.exists():
            named.write_bytes(path.read_bytes())
        return named

    candidates = {f"linux-headers-{ABI}": VERSION, "linux-kbuild-6.1": "6.1.192-3"}
    monkeypatch.setattr(kmod, "apt_download", apt_download)
    monkeypatch.setattr(kmod, "_candidate", lambda package: candidates[package])
    monkeypatch.setattr(kmod, "_compiler", lambda depends, build_dir: "gcc")   # the host's, whatever its version
    return FakeArchive(debs, fetched)


# --- which kernel ---

@dataclass(frozen=True)
class FakeKernel:
    release: str
    package: str | None
    version: str | None


def test_the_target_from_an_abi_a_reference_or_a_prepared_kernel() -> None:
    assert kmod.target_of(ABI) == kmod.Target(ABI, None)
    assert kmod.target_of(f"{ABI}={VERSION}") == kmod.Target(ABI, VERSION)
    assert kmod.target_of(DebianRef(f"linux-image-{ABI}", VERSION, "debian-6.1")) == kmod.Target(ABI, VERSION)
    assert kmod.target_of(DebianRef(f"linux-image-{ABI}-unsigned", None, "x")) == kmod.Target(ABI, None)
    kernel = FakeKernel(f"{ABI} (debian-kernel@lists.debian.org) #1 SMP", f"linux-image-{ABI}", VERSION)
    assert kmod.target_of(kernel) == kmod.Target(ABI, VERSION)


def test_a_kernel_not_from_a_debian_package_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="Debian kernel package's headers"):
        kmod.target_of(FakeKernel("6.1.192 #1", None, None))
    with pytest.raises(KernelRefError, match="not a kernel release"):
        kmod.target_of("linux/6.1")
    with pytest.raises(KernelRefError, match="not a Debian kernel image package"):
        kmod.target_of(DebianRef("xen-hypervisor-4.17-amd64", None, "xen"))


# --- the headers ---

def test_the_three_packages_are_unpacked_into_one_root(archive: FakeArchive) -> None:
    notes: list[str] = []
    hdrs = kmod.headers(ABI, notes.append)
    assert hdrs.version == VERSION and hdrs.abi == ABI
    assert hdrs.packages == ((f"linux-headers-{ABI}", VERSION), ("linux-headers-6.1.0-56-common", VERSION),
                             ("linux-kbuild-6.1", "6.1.192-3"))
    assert "linux-kbuild-6.1 >= 6.1.192-2 wanted: taking the candidate 6.1.192-3" in notes
    root = hdrs.root
    # The packages' relative links resolve inside the root ...
    assert (hdrs.build_dir / "scripts" / "Makefile.build").read_text() == "# kbuild\n"
    assert (hdrs.build_dir / "scripts").resolve().is_relative_to(root.resolve())
    # ... an absolute one is made relative to the root ...
    link = root / "lib" / "modules" / ABI / "build"
    assert link.is_symlink() and not str(link.readlink()).startswith("/")
    assert link.resolve() == hdrs.build_dir.resolve()
    # ... a hard link is a copy, and the flavour's Makefile includes the common one relative to itself.
    assert (root / "usr/src/linux-headers-6.1.0-56-common/include/linux/same.h").read_bytes() == b"/* */\n"
    assert (hdrs.build_dir / "Makefile").read_text() == (
        "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.1.0-56-common/Makefile\n")
    assert (root / "usr/lib/linux-kbuild-6.1/scripts/mod/modpost.sh").stat().st_mode & 0o111
    meta = json.loads((root.parent / "headers.json").read_text())
    assert meta["fixed"] == [f"usr/src/linux-headers-{ABI}/Makefile"]
    assert meta["depends"][:2] == [f"linux-headers-6.1.0-56-common = {VERSION}", f"linux-kbuild-6.1 >= {VERSION}"]


def test_the_headers_are_unpacked_once(archive: FakeArchive) -> None:
    first = kmod.headers(ABI)
    stamp = (first.root.parent / "headers.json").stat().st_mtime_ns
    archive.fetched.clear()
    again = kmod.headers(f"{ABI}={VERSION}")
    assert again == first
    assert archive.fetched == [f"linux-headers-{ABI}={VERSION}"]     # the cached .deb; no dependency fetched
    assert (first.root.parent / "headers.json").stat().st_mtime_ns == stamp


def test_a_kbuild_older_than_the_headers_need_is_refused(archive: FakeArchive, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(kmod, "_candidate", lambda package: {f"linux-headers-{ABI}": VERSION,
                                                             "linux-kbuild-6.1": "6.1.176-1"}[package])
    with pytest.raises(FetchError, match="candidate 6.1.176-1 is older than the 6.1.192-2 the headers need"):
        kmod.headers(ABI)
    assert not list((kmod.cache_dir() / "headers").glob("*/headers.json"))


def test_unpacking_never_leaves_the_root(tmp_path: Path) -> None:
    bad = deb(tmp_path / "bad.deb", "Package: bad\n", {"../escape": b"x", "usr/ok": b"y"})
    kmod._unpack(bad, tmp_path / "root")
    assert (tmp_path / "root" / "usr" / "ok").read_bytes() == b"y"
    assert not (tmp_path / "escape").exists()


# --- building ---

def source_dir(tmp_path: Path, **extra: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m := hello.o\n")
    (src / "hello.c").write_text("/* hello */\n")
    (src / "hello.o").write_bytes(b"stale object: not a source")
    (src / ".hidden").write_text("not copied")
    (src / "NOTES.md").write_text("notes are no sources")
    for name, data in extra.items():
        (src / name).write_bytes(data)
    return src


def test_a_module_directory_is_built_once_and_served_from_the_cache(archive: FakeArchive, tmp_path: Path) -> None:
    src = source_dir(tmp_path)
    notes: list[str] = []
    built = kmod.build_modules(ABI, src, notes.append)
    assert not built.cached
    assert [p.name for p in built.modules] == ["hello.ko"] and built.modules[0].exists()
    copy = built.entry / "src"
    assert sorted(p.name for p in copy.iterdir()) == ["Kbuild", "hello.c", "hello.ko"]
    log = built.log.read_text()
    assert f"$ make -C {kmod.headers(ABI).build_dir} M=" in log and "  LD [M]" in log
    meta = json.loads((built.entry / "modules.json").read_text())
    assert meta["modules"] == ["hello.ko"] and meta["abi"] == ABI and meta["klp"] == {}
    assert any(n.startswith("building the modules of") for n in notes)
    again = kmod.build_modules(ABI, src)
    assert again.cached and again.modules == built.modules
    assert kmod.build_module_dir(ABI, src) == list(built.modules)
    (src / "hello.c").write_text("/* changed */\n")
    assert kmod.build_modules(ABI, src).key != built.key


def test_a_livepatch_module_with_rules_is_converted_after_the_build(archive: FakeArchive, tmp_path: Path) -> None:
    original = (KLP_DATA / "psm_lp_d1.ko").read_bytes()
    src = source_dir(tmp_path, payload=original)
    notes: list[str] = []
    (_hello, converted) = kmod.build_module_dir(ABI, src, notes.append)
    assert converted.name == "psm_lp_d1.ko"
    assert converted.read_bytes() == klp.convert(original).data
    assert converted.with_name("psm_lp_d1.ko.unconverted").read_bytes() == original
    assert "psm_lp_d1.ko: livepatch relocations: 1 into .klp.rela.psm_target_d1..text" in notes


def test_the_build_runs_in_the_flavours_directory_with_kbuilds_scripts(archive: FakeArchive, tmp_path: Path) -> None:
    # make -C <root>/usr/src/linux-headers-<abi>: scripts/ there is the kbuild package's, through the link.
    src = source_dir(tmp_path, **{"scripts-check": b""})
    assert [p.name for p in kmod.build_module_dir(ABI, src)] == ["hello.ko"]


def test_a_failed_build_says_the_first_error_and_keeps_the_log(archive: FakeArchive, tmp_path: Path) -> None:
    src = source_dir(tmp_path, fail=b"")
    with pytest.raises(BuildError) as err:
        kmod.build_module_dir(ABI, src)
    message = str(err.value)
    assert "hello.c:3:5: error: boom" in message and f"against linux-headers-{ABI} failed" in message
    assert err.value.log is not None and err.value.log.exists() and err.value.log.parent.name == "failed"
    assert str(err.value.log) in message and "\n" not in message
    assert not list((kmod.cache_dir() / "modules").glob("src-*/modules.json"))


def test_missing_tools_and_sources(archive: FakeArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BuildError, match="no such module source directory"):
        kmod.build_module_dir(ABI, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="neither Kbuild nor Makefile"):
        kmod.build_module_dir(ABI, tmp_path / "empty")
    src = source_dir(tmp_path)
    real = kmod.shutil.which
    monkeypatch.setattr(kmod.shutil, "which", lambda tool: None if tool == "make" else real(tool))
    with pytest.raises(ToolMissingError, match="make not found; install it with: apt-get install make"):
        kmod.build_module_dir(ABI, src)


def test_the_compiler_comes_from_the_headers_depends(tmp_path: Path) -> None:
    depends = [("linux-headers-6.1.0-56-common", "=", VERSION), ("linux-compiler-gcc-12-x86", None, None)]
    assert kmod._compiler(depends, tmp_path) == "gcc-12"
    (tmp_path / ".kernelvariables").write_text("CC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) "
                                               "$(CROSS_COMPILE)gcc-12\n")
    assert kmod._compiler([], tmp_path) == "gcc-12"
    assert kmod._compiler([], tmp_path / "nothing") == "gcc"


# --- for real ---

@pytest.mark.boot
def test_the_seed_002_modules_build_against_debians_headers() -> None:
    """Fetches linux-headers-6.1.0-56-amd64, -common and linux-kbuild-6.1 once (about 14 MB), builds 20 modules."""
    modules = kmod.build_module_dir(f"{ABI}={VERSION}", REPO / "configs" / "modules" / "livepatch-order")
    names = sorted(p.name for p in modules)
    assert len(names) == 20 and "psm_lp_d1.ko" in names and "psm_target_e2.ko" in names
    for ko in modules:
        data = ko.read_bytes()
        assert b"vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions" in data
        if ko.name.startswith("psm_lp_"):
            assert klp.klp_relocations(data), ko.name
            assert ko.with_name(ko.name + ".unconverted").exists()
    lp_d1 = next(p for p in modules if p.name == "psm_lp_d1.ko")
    (hazard,) = klp.hazards(lp_d1.read_bytes())
    assert hazard.pending and hazard.site.kind == "alternative"
