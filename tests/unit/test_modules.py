"""Kernel modules in the generated initramfs: .modinfo, the load order, the config key, /init, stages, the verdict.

The real modules under tests/data/modules come from Debian's packages:
test_static_key_base.ko and test_static_keys.ko of linux-image-6.1.0-56-amd64
6.1.192-2, and test_static_keys.ko.xz of linux-image-6.12.117+deb12-amd64 (as
test_static_keys-6.12.ko.xz). The two *.console.log files are recorded native boots of
6.1.0-56-amd64 under TCG: loaded-6.1 (modules: [test_static_keys]) and insmod-fails-6.1
(6.12's test_static_keys.ko.xz given by path, refused: "invalid module format").
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from framework import pipeline
from framework.analysis.console_log import Ending, read_console_file
from framework.analysis.observation import observe
from framework.analysis.stages import find_stages, last_stage, match_stage
from framework.bisect.signature import facet
from framework.config import Config, ModuleSpec, default_config, parse_config, to_yaml_dict
from framework.elf.modinfo import ModuleError, ModuleInfo, info_of, load_order, modinfo, soft_pre, with_softdeps
from framework.errors import ConfigError, ImageError
from framework.guest import initramfs
from framework.kernel import modules as kmodules
from framework.kernel.image import Kernel
from framework.kernel.modules import ModuleFile, read_ko, resolve_modules
from framework.verdict import judge, module_loads

DATA = Path(__file__).resolve().parents[1] / "data" / "modules"
BASE_KO = DATA / "test_static_key_base.ko"
KEYS_KO = DATA / "test_static_keys.ko"
KEYS_612_XZ = DATA / "test_static_keys-6.12.ko.xz"
VERMAGIC_61 = "6.1.0-56-amd64 SMP preempt mod_unload modversions "


def ko(entries: list[str]) -> bytes:
    """A minimal x86-64 ELF relocatable: a null section, .modinfo holding ``entries``, .shstrtab."""
    modinfo_data = b"".join(e.encode() + b"\0" for e in entries)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_at = 64
    shstr_at = body_at + len(modinfo_data)
    shoff = (shstr_at + len(shstrtab) + 7) & ~7
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 1, 62, 1, 0, 0, shoff, 0,
                       64, 0, 0, 64, 3, 2)
    shdrs = (b"\0" * 64
             + struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, body_at, len(modinfo_data), 0, 0, 8, 0)
             + struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_at, len(shstrtab), 0, 0, 1, 0))
    out = ehdr + modinfo_data + shstrtab
    return out + b"\0" * (shoff - len(out)) + shdrs


def fake_ko(name: str, depends: str = "", vermagic: str = VERMAGIC_61) -> bytes:
    return ko(["license=GPL", f"depends={depends}", f"name={name}", f"vermagic={vermagic}"])


# --------------------------------------------------------------------------- .modinfo


def test_modinfo_of_real_debian_modules() -> None:
    keys = modinfo(KEYS_KO.read_bytes(), KEYS_KO.name)
    assert keys["name"] == ["test_static_keys"] and keys["depends"] == ["test_static_key_base"]
    assert keys["vermagic"] == [VERMAGIC_61] and keys["license"] == ["GPL"]
    base = info_of(BASE_KO.read_bytes(), "base.ko", "fallback")
    assert base == ModuleInfo("test_static_key_base", "base.ko", (), VERMAGIC_61)
    new = info_of(read_ko(KEYS_612_XZ.read_bytes(), KEYS_612_XZ.name), "x", "x")
    assert new.name == "test_static_keys" and new.depends == ("test_static_key_base",)
    assert new.vermagic is not None and new.vermagic.startswith("6.12.117+deb12-amd64 ")


def test_modinfo_keeps_repeated_keys_and_maps_dashes() -> None:
    data = ko(["alias=a", "alias=b", "depends=kvm,irq-bypass", "name=kvm_intel", "", "junk-without-equals"])
    assert modinfo(data, "k.ko")["alias"] == ["a", "b"]
    info = info_of(data, "k.ko", "ignored")
    assert info.name == "kvm_intel" and info.depends == ("kvm", "irq_bypass")
    # No name= (kernels before 4.x): the file's name.
    assert info_of(ko(["license=GPL"]), "kvm-amd.ko", "kvm_amd").name == "kvm_amd"
    # No .modinfo at all: nothing, not an error.
    assert modinfo(ko(["name=x"]).replace(b".modinfo", b".modinfX"), "x.ko") == {}


@pytest.mark.parametrize(("mangle", "fragment"), [
    (lambda d: b"MZ" + d[2:], "not an ELF file"),
    (lambda d: d[:4] + b"\x01" + d[5:], "not a 64-bit little-endian ELF"),
    (lambda d: d[:16] + struct.pack("<H", 2) + d[18:], "not a relocatable"),
    (lambda d: d[:18] + struct.pack("<H", 3) + d[20:], "not x86-64"),
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:20], "not an ELF file"),
])
def test_modinfo_errors_are_one_line_naming_the_file(mangle: Callable[[bytes], bytes], fragment: str) -> None:
    with pytest.raises(ImageError) as err:
        modinfo(mangle(KEYS_KO.read_bytes()), "lib/test_static_keys.ko")
    assert fragment in str(err.value) and str(err.value).startswith("lib/test_static_keys.ko: ")
    assert "\n" not in str(err.value)


def test_read_ko_decompresses_by_suffix() -> None:
    plain = BASE_KO.read_bytes()
    assert read_ko(plain, "a.ko") is plain
    assert read_ko(lzma.compress(plain), "a.ko.xz") == plain
    assert read_ko(gzip.compress(plain), "a.ko.gz") == plain
    with pytest.raises(ImageError, match="does not decompress"):
        read_ko(b"garbage", "a.ko.xz")


# --------------------------------------------------------------------------- load order


def index(**deps: str) -> dict[str, ModuleInfo]:
    return {name: ModuleInfo(name, f"{name}.ko", tuple(d for d in dep.split(",") if d))
            for name, dep in deps.items()}


def test_load_order_puts_dependencies_first_each_once_in_the_users_order() -> None:
    idx = index(kvm="irqbypass", irqbypass="", kvm_intel="kvm", kvm_amd="kvm,ccp", ccp="", other="")
    assert load_order(idx, ["kvm_intel"]) == ["irqbypass", "kvm", "kvm_intel"]
    assert load_order(idx, ["other", "kvm-amd", "kvm_intel"]) == ["other", "irqbypass", "kvm", "ccp", "kvm_amd",
                                                                   "kvm_intel"]
    # A module named again after it came in as a dependency is not loaded twice.
    assert load_order(idx, ["kvm_intel", "kvm", "irqbypass"]) == ["irqbypass", "kvm", "kvm_intel"]


def test_load_order_diamond() -> None:
    idx = index(top="left,right", left="bottom", right="bottom", bottom="")
    assert load_order(idx, ["top"]) == ["bottom", "left", "right", "top"]


def test_load_order_errors_name_the_wanted_module() -> None:
    idx = index(kvm_intel="kvm", kvm="", loop_a="loop_b", loop_b="loop_c", loop_c="loop_a", needs="missing")
    with pytest.raises(ModuleError) as err:
        load_order(idx, ["kvm", "kvm_intle"], holder="pkg 1")
    assert err.value.wanted == "kvm_intle"
    assert str(err.value) == "no module 'kvm_intle' in pkg 1 (did you mean 'kvm_intel'?)"
    with pytest.raises(ModuleError, match=r"cycle \(loop_a -> loop_b -> loop_c -> loop_a\)") as err:
        load_order(idx, ["loop_a"])
    assert err.value.wanted == "loop_a"
    with pytest.raises(ModuleError, match="module 'needs' depends on 'missing', which is not there"):
        load_order(idx, ["needs"])


# --------------------------------------------------------------------------- the config key


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    (tmp_path / "mods").mkdir()
    shutil.copy(KEYS_KO, tmp_path / "mods" / "test_static_keys.ko")
    shutil.copy(BASE_KO, tmp_path / "mods" / "test-static-key-base.ko")
    (tmp_path / "src").mkdir()
    return tmp_path / "c.yaml"


def test_modules_key_reads_names_paths_and_expectations(cfg_path: Path) -> None:
    c = parse_config("name: m\nmodules:\n  - kvm-intel\n  - mods/test_static_keys.ko\n"
                     "  - {module: kvm_amd, load: fails}\n  - {module: ./mods/test-static-key-base.ko, load: ok}\n",
                     cfg_path)
    assert [(m.name, m.kind, m.path, m.load, m.line) for m in c.modules] == [
        ("kvm_intel", "package", None, "ok", 3),
        ("test_static_keys", "file", cfg_path.parent / "mods" / "test_static_keys.ko", "ok", 4),
        ("kvm_amd", "package", None, "fails", 5),
        ("test_static_key_base", "file", cfg_path.parent / "mods" / "test-static-key-base.ko", "ok", 6)]
    assert c.module_load("kvm_amd") == "fails" and c.module_load("kvm") == "ok"
    assert parse_config("modules:\n", cfg_path).modules == ()
    # Round trip, and a config without a file.
    assert parse_config(yaml.safe_dump(to_yaml_dict(c)), cfg_path) == c
    assert default_config("m", modules=["kvm"]).modules == (ModuleSpec("kvm"),)


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("modules: [kvm, kvm]\n", 1, "modules[1]: module 'kvm' is listed twice (first as modules[0], line 1)"),
    ("modules:\n  - kvm_intel\n  - kvm-intel\n", 3, "modules[1]: module 'kvm_intel' is listed twice"),
    ("modules:\n  - kvm\n  - {modul: kvm_amd}\n", 3, "unknown key 'modul' in modules[1] (did you mean 'module'?)"),
    ("modules:\n  - {load: fails}\n", 2, "modules[0] needs module:"),
    ("modules:\n  - {module: kvm, load: maybe}\n", 2, "modules[0].load must be one of ok, fails, not 'maybe'"),
    ("modules:\n  - kvm\n  - kvm.intel\n", 3, "modules[1]: 'kvm.intel' is neither a module name"),
    ("modules:\n  - mods/nope.ko\n", 2, "mods/nope.ko not found"),
    ("modules:\n  - ./src\n", 2, "is a directory; name the module to build from it and load, as in {module: "),
    ("modules:\n  - {module: x, build: nowhere}\n", 2, "modules[0].build: "),
    ("modules:\n  - {module: x, build: .}\n", 2, "has no Kbuild or Makefile"),
    ("modules:\n  - {module: x.ko, build: src}\n", 2, "with build:, module names the module to load"),
    ("expect:\n  relocation_overlaps: [psm.lp]\n", 2, "'psm.lp' is not a module name"),
    ("inspect:\n  trace: sometimes\n", 2, "must be true (every text write of the boot), false, or modules"),
    ("modules:\n  - c.yaml/x.ko\n", 2, "not found"),
    ("modules:\n  - [kvm]\n", 2, "modules[0] must be a module name, a .ko path or a mapping"),
    ("modules: {kvm: x}\n", 1, "modules must be a list"),
    ("modules:\n  - " + "k" * 56 + "\n", 2, "longer than the kernel's 55 characters"),
    ("initramfs: none\nexpect: {outcome: hangs}\nmodules: [kvm]\n", 3, "initramfs is 'none'"),
    ("initramfs: mods/test_static_keys.ko\nmodules: [kvm]\n", 2, "initramfs is your own file"),
])
def test_modules_key_errors_name_the_line(cfg_path: Path, text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, cfg_path)
    assert err.value.line == line and fragment in str(err.value), str(err.value)
    assert str(err.value).startswith(f"{cfg_path}:{line}: ") and "\n" not in str(err.value)


def test_a_file_not_named_like_a_module_is_refused(cfg_path: Path) -> None:
    shutil.copy(BASE_KO, cfg_path.parent / "mods" / "bad.name.ko")
    with pytest.raises(ConfigError, match="a module file is named after its module"):
        parse_config("modules: [mods/bad.name.ko]\n", cfg_path)


# --------------------------------------------------------------------------- /init and the cpio


def test_init_loads_modules_after_userspace_before_the_commands() -> None:
    lines = initramfs.init_script(["cat /proc/modules"], modules=["test_static_key_base", "kvm"]).splitlines()
    user = lines.index("echo 'patchscope: userspace'")
    first = lines.index("echo 'patchscope: module 1: test_static_key_base'")
    second = lines.index("echo 'patchscope: module 2: kvm'")
    run = lines.index("echo 'patchscope: run 1: cat /proc/modules'")
    assert user < first < second < run
    assert lines[first + 1] == "if out=$(insmod /lib/modules/test_static_key_base.ko 2>&1); then"
    assert lines[first + 2] == "  echo 'patchscope: module 1 loaded: test_static_key_base'"
    assert "patchscope: module" not in initramfs.init_script(["true"])
    with pytest.raises(ValueError):
        initramfs.module_lines(["x'; reboot -f; '"])


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="no host busybox")
def test_module_lines_under_busybox_sh_report_each_result_on_one_line(tmp_path: Path) -> None:
    stub = """insmod() {
  case "$1" in *good*) return 0;; *silent*) return 3;; esac
  echo "insmod: can't insert '$1': Unknown symbol in module" >&2
  echo 'second * line' >&2
  return 1
}"""
    script = tmp_path / "init"
    script.write_text(stub + "\n" + "\n".join(initramfs.module_lines(["good", "bad", "silent"])) + "\n")
    out = subprocess.run(["/bin/busybox", "sh", str(script)], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.splitlines()
    assert out == [
        "patchscope: module 1: good",
        "patchscope: module 1 loaded: good",
        "patchscope: module 2: bad",
        ("patchscope: module 2 failed: bad: insmod: can't insert '/lib/modules/bad.ko': Unknown symbol in module "
         "second * line"),
        "patchscope: module 3: silent",
        "patchscope: module 3 failed: silent: insmod exited with status 3",
    ]
    loads = module_loads(out)
    assert [(m.n, m.name, m.result) for m in loads.values()] == [(1, "good", "loaded"), (2, "bad", "failed"),
                                                                (3, "silent", "failed")]
    assert loads["bad"].message.endswith("Unknown symbol in module second * line")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_cpio_holds_the_modules_and_stays_deterministic(tmp_path: Path) -> None:
    mods = [initramfs.Module("test_static_key_base", BASE_KO.read_bytes()),
            initramfs.Module("test_static_keys", KEYS_KO.read_bytes())]
    archive = initramfs.build(b"\x7fELF-busybox", ["cat /proc/modules"], modules=mods)
    assert archive == initramfs.build(b"\x7fELF-busybox", ["cat /proc/modules"], modules=mods)
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "lib/modules/test_static_keys.ko").read_bytes() == KEYS_KO.read_bytes()
    assert (tmp_path / "lib/modules/test_static_key_base.ko").read_bytes() == BASE_KO.read_bytes()
    init = (tmp_path / "init").read_text()
    assert init.index("module 1: test_static_key_base") < init.index("module 2: test_static_keys")
    # Without modules the archive is what it always was: no lib/.
    assert b"lib/modules" not in initramfs.build(b"\x7fELF-busybox")
    with pytest.raises(ValueError, match="twice"):
        initramfs.build(b"", modules=mods + mods[:1])


# --------------------------------------------------------------------------- stages and the verdict

BOOT_HEAD = ["[    0.000000] Linux version 6.1.0-56-amd64", "Run /init as init process", "patchscope: userspace"]
BOOT_TAIL = ["patchscope: init done", "reboot: Power down"]
FAILED = ("patchscope: module 2 failed: kvm: insmod: can't insert '/lib/modules/kvm.ko': "
          "Unknown symbol in module ")


def run(lines: list[str], reason: str = "exit") -> tuple[list[tuple[float, str]], Ending]:
    return [(float(i), text) for i, text in enumerate(lines)], Ending(reason, float(len(lines)), 0)


def test_module_markers_are_stages_in_load_order() -> None:
    lines, _ = run(BOOT_HEAD + ["patchscope: module 1: irqbypass", "patchscope: module 1 loaded: irqbypass",
                                "patchscope: module 2: kvm", "[    3.1] kvm: some message", FAILED])
    stages = find_stages(lines)
    assert [s.name for s in stages][-4:] == ["module-1", "module-1-loaded", "module-2", "module-2-failed"]
    assert [s.label for s in stages][-4:] == ["loading module irqbypass", "module irqbypass loaded",
                                              "loading module kvm", "module kvm failed to load"]
    assert last_stage(stages) == "module kvm failed to load"
    assert last_stage(stages[:-1]) == "loading module kvm"
    assert last_stage(list(reversed(stages))) == "module kvm failed to load"
    assert last_stage(find_stages(lines + [(9.0, "patchscope: init done")])) == "init done"
    row = match_stage("patchscope: module 12 loaded: kvm_intel")
    assert row is not None and (row.name, row.label) == ("module-12-loaded", "module kvm_intel loaded")


def config(text: str = "modules: [irqbypass, kvm]\n") -> Config:
    return parse_config(text)


def test_a_module_that_fails_to_load_fails_the_run_naming_it_and_insmods_message() -> None:
    lines, ending = run(BOOT_HEAD + ["patchscope: module 1: irqbypass", "patchscope: module 1 loaded: irqbypass",
                                     "patchscope: module 2: kvm", FAILED] + BOOT_TAIL)
    obs = observe(lines, ending)
    verdict = judge(config(), obs)
    reason = "module kvm failed to load: insmod: can't insert '/lib/modules/kvm.ko': Unknown symbol in module"
    assert verdict.verdict == "fail" and verdict.reasons == (reason,)
    assert facet(reason) == ("module: kvm failed to load: insmod: can't insert '/lib/modules/kvm.ko': "
                             "Unknown symbol in module")
    # Expected to fail: it passes; a dependency (not named) that fails is a failure just the same.
    assert judge(config("modules: [{module: kvm, load: fails}]\n"), obs).verdict == "pass"
    assert judge(config("modules: [other]\n"), obs).reasons[0] == reason


def test_a_module_marked_fails_that_loads_fails_the_run() -> None:
    lines, ending = run(BOOT_HEAD + ["patchscope: module 1: kvm", "patchscope: module 1 loaded: kvm"] + BOOT_TAIL)
    verdict = judge(config("modules: [{module: kvm, load: fails}]\n"), observe(lines, ending))
    assert verdict.reasons == ("module kvm loaded, but the config expects insmod to refuse it (load: fails)",)
    assert facet(verdict.reasons[0]) == "module: kvm loaded (expected to fail)"
    assert judge(config("modules: [kvm]\n"), observe(lines, ending)).verdict == "pass"


def test_a_module_never_tried_is_a_reason_only_when_nothing_else_explains_it() -> None:
    # /init finished without trying it (a run made with another config).
    lines, ending = run(BOOT_HEAD + BOOT_TAIL)
    assert judge(config("modules: [kvm]\n"), observe(lines, ending)).reasons == (
        "module kvm was never loaded: /init finished without trying it (was the run made with this config?)",)
    # The boot panicked before /init: the outcome is the reason, not the module.
    died = ["[    0.000000] Linux version 6.1.0-56-amd64", "Kernel panic - not syncing: VFS: Unable to mount root fs",
            "---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---"]
    lines, ending = run(died)
    verdict = judge(config("modules: [kvm]\n"), observe(lines, ending))
    assert verdict.verdict == "fail" and not any("module" in r for r in verdict.reasons)
    # ... and when that panic was expected, the module that never loaded is the reason.
    verdict = judge(config("modules: [kvm]\nexpect: {outcome: panics}\n"), observe(lines, ending))
    assert verdict.reasons == ("module kvm was never loaded: the boot ended after 'Linux version' first",)
    assert facet(verdict.reasons[0]) == "module: kvm never loaded"
    # A panic inside insmod that the config expects explains the modules after it.
    lines, ending = run(BOOT_HEAD + ["patchscope: module 1: buggy"] + died[1:])
    assert judge(config("modules: [buggy, later]\nexpect: {outcome: panics}\n"),
                 observe(lines, ending)).verdict == "pass"


# --------------------------------------------------------------------------- resolving a config's modules


def kernel_at(tmp_path: Path, package: str | None = None, version: str | None = None,
              release: str = "6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP") -> Kernel:
    entry = tmp_path / "cache" / "kernels" / "k"
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "bzImage").write_bytes(b"")
    ref = f"debian:{package}={version}" if package else "path:bzImage"
    return Kernel(ref, entry / "bzImage", None, None, None, package, version, release, "", "none")


def test_files_given_by_path_need_no_package(tmp_path: Path, cfg_path: Path) -> None:
    kernel = kernel_at(tmp_path)
    c = parse_config("modules:\n  - mods/test_static_keys.ko\n  - mods/test-static-key-base.ko\n", cfg_path)
    got = resolve_modules(c, kernel)
    assert [(m.name, m.path, m.dependency) for m in got] == [
        ("test_static_key_base", cfg_path.parent / "mods" / "test-static-key-base.ko", False),
        ("test_static_keys", cfg_path.parent / "mods" / "test_static_keys.ko", False)]
    # Its dependency is in no file and the kernel has no package: said at the line, with what to do.
    c = parse_config("name: x\nmodules: [mods/test_static_keys.ko]\n", cfg_path)
    with pytest.raises(ConfigError) as err:
        resolve_modules(c, kernel)
    assert str(err.value).startswith(f"{cfg_path}:2: modules[0]: mods/test_static_keys.ko depends on "
                                     "test_static_key_base, but kernel path:bzImage is not a Debian kernel package")
    c = parse_config("name: x\nmodules:\n  - kvm\n", cfg_path)
    with pytest.raises(ConfigError, match=r":3: modules\[0\]: 'kvm' names a module of the kernel's package, "
                                          "but .*give the path of each .ko file instead"):
        resolve_modules(c, kernel)


def test_a_compressed_file_for_another_kernel_is_decompressed_with_a_note(tmp_path: Path, cfg_path: Path) -> None:
    shutil.copy(KEYS_612_XZ, cfg_path.parent / "mods" / "test_static_keys.ko.xz")
    c = parse_config("modules:\n  - mods/test-static-key-base.ko\n"
                     "  - {module: mods/test_static_keys.ko.xz, load: fails}\n", cfg_path)
    notes: list[str] = []
    got = resolve_modules(c, kernel_at(tmp_path), notes.append)
    assert [(m.name, m.load) for m in got] == [("test_static_key_base", "ok"), ("test_static_keys", "fails")]
    assert got[1].path.read_bytes() == lzma.decompress(KEYS_612_XZ.read_bytes())
    assert notes == [("modules: mods/test_static_keys.ko.xz was built for 6.12.117+deb12-amd64 (vermagic), "
                      "the kernel is 6.1.0-56-amd64: insmod will likely refuse it")]


PACKAGE, VERSION = "linux-image-9.9.0-1-amd64", "9.9.1-1"
ABI = "lib/modules/9.9.0-1-amd64"


def fake_deb(cache: Path) -> Path:
    files = {
        f"{ABI}/kernel/lib/test_static_key_base.ko": BASE_KO.read_bytes(),
        f"{ABI}/kernel/lib/test_static_keys.ko.xz": lzma.compress(KEYS_KO.read_bytes()),
        f"{ABI}/kernel/arch/x86/kvm/kvm.ko": fake_ko("kvm", "irqbypass"),
        f"{ABI}/kernel/virt/lib/irqbypass.ko": fake_ko("irqbypass"),
        f"{ABI}/kernel/arch/x86/kvm/kvm-intel.ko": fake_ko("kvm_intel", "kvm"),
        f"{ABI}/modules.builtin": b"kernel/fs/ext4/ext4.ko\nkernel/lib/crc16.ko\n",
        "boot/vmlinuz-9.9.0-1-amd64": b"kernel",
    }
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out = bytearray(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data.getvalue())):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    path = cache / "debs" / f"{PACKAGE}_{VERSION}_amd64.deb"
    path.write_bytes(bytes(out))
    return path


def test_package_modules_are_indexed_once_and_extracted_in_load_order(
        tmp_path: Path, cfg_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    fake_deb(tmp_path / "cache")
    kernel = kernel_at(tmp_path, PACKAGE, VERSION)
    notes: list[str] = []
    c = parse_config("modules:\n  - test_static_keys\n  - kvm-intel\n  - mods/test-static-key-base.ko\n", cfg_path)
    got = resolve_modules(c, kernel, notes.append)
    assert [(m.name, m.dependency) for m in got] == [
        ("test_static_key_base", False), ("test_static_keys", False), ("irqbypass", True), ("kvm", True),
        ("kvm_intel", False)]
    # The file the config gives is the one loaded, not the package's module of that name.
    assert got[0].path == cfg_path.parent / "mods" / "test-static-key-base.ko"
    entry = kernel.bzimage.parent / "modules"
    assert got[1].path == entry / "files" / "test_static_keys.ko"
    assert got[1].path.read_bytes() == KEYS_KO.read_bytes()       # decompressed
    assert got[1].origin == f"{PACKAGE} {VERSION}: {ABI}/kernel/lib/test_static_keys.ko.xz"
    assert (entry / "index.json").exists() and not (entry / "files" / "test_static_key_base.ko").exists()
    assert notes[0] == f"indexing the modules of {PACKAGE} {VERSION} (once per kernel)"
    assert notes[1].startswith(f"indexed 5 modules of {PACKAGE}")
    index = kmodules.package_modules(kernel)
    assert index.abi == "9.9.0-1-amd64" and index.builtin == {"ext4", "crc16"}

    # Once indexed and extracted, the package is not read again.
    monkeypatch.setattr(kmodules, "_data_tar", lambda deb: pytest.fail("read the package again"))
    assert resolve_modules(c, kernel) == got
    assert [m.name for m in kmodules.module_files(kernel, ["kvm_intel"])] == ["irqbypass", "kvm", "kvm_intel"]

    bad = parse_config("name: b\nmodules:\n  - kvm\n  - kvm_intle\n", cfg_path)
    with pytest.raises(ConfigError) as err:
        resolve_modules(bad, kernel)
    assert str(err.value) == (f"{cfg_path}:4: modules[1]: no module 'kvm_intle' in {PACKAGE} {VERSION} "
                              "(did you mean 'kvm_intel'?)")
    with pytest.raises(ConfigError, match=r":3: modules\[0\]: module 'ext4' is built into"):
        resolve_modules(parse_config("name: b\nmodules:\n  - ext4\n", cfg_path), kernel)


def test_a_missing_module_fails_before_anything_boots(tmp_path: Path, cfg_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    fake_deb(tmp_path / "cache")
    kernel = kernel_at(tmp_path, PACKAGE, VERSION)
    monkeypatch.setattr(pipeline, "prepare", lambda cfg, note: kernel)
    monkeypatch.setattr(pipeline, "_boot", lambda *a, **k: pytest.fail("booted"))
    c = parse_config("name: b\nmodules: [kvm_intle]\n", cfg_path)
    with pytest.raises(ConfigError, match="no module 'kvm_intle'"):
        pipeline.applicability(c, lambda _m: None)
    result = pipeline.execute(pipeline.RunRequest(c, "native", tmp_path / "out"), lambda _m: None)
    assert result.verdict == "error" and result.reasons[0].startswith(f"{cfg_path}:2: modules[0]: no module")


def test_the_run_puts_the_resolved_modules_in_its_initramfs_and_lists_them(
        tmp_path: Path, cfg_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(initramfs, "find_busybox", lambda note=None: BASE_KO)
    files = (ModuleFile("test_static_key_base", BASE_KO, "pkg: base", dependency=True),
             ModuleFile("test_static_keys", KEYS_KO, "pkg: keys", load="fails"))
    c = parse_config("modules: [{module: test_static_keys, load: fails}]\n", cfg_path)
    out = tmp_path / "out"
    out.mkdir()
    path = pipeline._initramfs(c, out, False, lambda _m: None, files)
    assert path is not None
    archive = path.read_bytes()
    assert KEYS_KO.read_bytes() in archive and b"lib/modules/test_static_key_base.ko\0" in archive
    pipeline.write_modules(out, files)
    listed = json.loads((out / "modules.json").read_text())
    assert [(m["n"], m["name"], m["path"], m["load"], m["dependency"]) for m in listed] == [
        (1, "test_static_key_base", str(BASE_KO), "ok", True), (2, "test_static_keys", str(KEYS_KO), "fails", False)]


# --------------------------------------------------------------------------- recorded boots (6.1.0-56-amd64, native, TCG)
#
# loaded-6.1: modules: [test_static_keys] and init_commands: ['cat /proc/modules'];
# insmod-fails-6.1: the same with 6.12's test_static_keys.ko.xz given by path (vermagic 6.12.117+deb12-amd64).


def test_recorded_boot_that_loads_its_modules_passes() -> None:
    obs = observe(read_console_file(DATA / "loaded-6.1.console.log"), Ending("exit", 7.0, 0))
    assert [s.label for s in obs.stages if s.name.startswith("module-")] == [
        "loading module test_static_key_base", "module test_static_key_base loaded",
        "loading module test_static_keys", "module test_static_keys loaded"]
    c = parse_config("modules: [test_static_keys]\ninit_commands: ['cat /proc/modules']\n"
                     "expect: {console: {contains: ['^test_static_keys \\d+ 0 - Live']}}\n")
    assert judge(c, obs).verdict == "pass"
    assert judge(parse_config("modules: [{module: test_static_keys, load: fails}]\n"), obs).reasons == (
        "module test_static_keys loaded, but the config expects insmod to refuse it (load: fails)",)


def test_recorded_boot_where_insmod_refuses_a_module_for_another_kernel() -> None:
    obs = observe(read_console_file(DATA / "insmod-fails-6.1.console.log"), Ending("exit", 7.0, 0))
    assert obs.outcome == "boots"
    assert [s.label for s in obs.stages if s.name.startswith("module-")][-1] == "module test_static_keys failed to load"
    verdict = judge(parse_config("modules: [test_static_keys]\n"), obs)
    assert verdict.reasons == (("module test_static_keys failed to load: insmod: can't insert "
                                "'/lib/modules/test_static_keys.ko': invalid module format"),)
    assert judge(parse_config("modules: [{module: test_static_keys, load: fails}]\n"), obs).verdict == "pass"


def test_soft_pre_dependencies_load_first_by_name_or_alias() -> None:
    assert soft_pre(["pre: crc32c post: foo", "pre: a b"]) == ("crc32c", "a", "b")
    index = {
        "libcrc32c": ModuleInfo("libcrc32c", "lib/libcrc32c.ko", softdeps=("crc32c",)),
        "crc32c_intel": ModuleInfo("crc32c_intel", "c/crc32c-intel.ko", aliases=("crc32c", "crypto-crc32c")),
        "crc32c_generic": ModuleInfo("crc32c_generic", "c/crc32c_generic.ko", aliases=("crc32c",)),
        "xfs": ModuleInfo("xfs", "fs/xfs.ko", depends=("libcrc32c",), softdeps=("crc32c", "nowhere")),
    }
    soft = with_softdeps(index)
    # the alias' first provider in name order, as modprobe would take one; an unknown softdep is left out
    assert soft["libcrc32c"].depends == ("crc32c_generic",)
    assert soft["xfs"].depends == ("crc32c_generic", "libcrc32c")
    assert load_order(soft, ["xfs"]) == ["crc32c_generic", "libcrc32c", "xfs"]
    assert index["libcrc32c"].depends == ()     # the index itself is not changed
