"""Tests for framework.config: every error names file, line and fix; nothing else escapes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import warnings
from pathlib import Path

import pytest
import yaml

from framework.config import (
    MODES,
    Config,
    ConsoleExpect,
    Expect,
    QemuOptions,
    default_config,
    load_config,
    parse_config,
    to_yaml_dict,
    with_overrides,
)
from framework.errors import ConfigError

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the dev environment
    hypothesis = None  # type: ignore[assignment]


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    """A config path in a directory holding an initramfs file ``my.cpio``."""
    (tmp_path / "my.cpio").write_bytes(b"070701")
    (tmp_path / "adir").mkdir()
    return tmp_path / "boot.yaml"


# --------------------------------------------------------------------------- errors

# (YAML text, line the error must name, fragment the message must contain)
ERRORS = [
    # types and values
    ("timeout: soon\n", 1, "timeout must be a positive number of seconds, not 'soon'"),
    ("name: x\ntimeout: -5\n", 2, "timeout must be a positive number"),
    ("timeout: 0\n", 1, "timeout must be a positive number"),
    ("timeout: .inf\n", 1, "timeout must be a positive number"),
    ("timeout: .nan\n", 1, "timeout must be a positive number"),
    ("timeout: '30'\n", 1, "not '30'"),
    ("timeout: [1]\n", 1, "not a list"),
    ("timeout:\n", 1, "not empty"),
    ("timeout: yes\n", 1, "not 'yes'"),
    ("timeout: 1" + "0" * 5000 + "\n", 1, "timeout must be a positive number"),
    ("silence: {a: 1}\n", 1, "silence must be a positive number of seconds, not a mapping"),
    ("name: 'has space'\n", 1, "name must be 1-100 letters"),
    ("name: ..\n", 1, "not only dots"),
    ("name: " + "a" * 101 + "\n", 1, "name must be"),
    ("name:\n", 1, "name must be"),
    ("kernel: ''\n", 1, "kernel must be a kernel reference"),
    ("kernel: \"a\\nb\"\n", 1, "kernel must be a single line"),
    ("kernel: \"a\\0b\"\n", 1, "kernel contains a NUL character"),
    ("kernel: !foo bar\n", 1, "unsupported YAML tag '!foo'"),
    ("kernel: !!binary aGk=\n", 1, "unsupported YAML tag"),
    ("kernel: [a]\n", 1, "kernel must be a kernel reference such as 'debian-6.1', not a list"),
    ("dom0_memory: 0\n", 1, "dom0_memory must be a positive size in MiB"),
    ("dom0_memory: 1T\n", 1, "not '1T'"),
    ("qemu:\n  memory: 1.5G\n", 2, "qemu.memory must be a positive size in MiB"),
    ("qemu:\n  memory: lots\n", 2, "not 'lots'"),
    ("qemu:\n  smp: 0\n", 2, "qemu.smp must be a whole number >= 1, not '0'"),
    ("qemu:\n  smp: 1.5\n", 2, "qemu.smp must be a whole number"),
    ("qemu:\n  smp: 0b\n", 2, "qemu.smp must be a whole number"),
    ("qemu:\n  cpu: 'max x'\n", 2, "qemu.cpu must be a QEMU CPU model"),
    ("qemu: [cpu]\n", 1, "qemu must be a mapping of keys, not a list"),
    ("qemu: 5\n", 1, "qemu must be a mapping of keys, not '5'"),
    ("expect: yes\n", 1, "expect must be a mapping"),
    ("expect: !!set {outcome}\n", 1, "not a mapping tagged 'tag:yaml.org,2002:set'"),
    ("cmdline: !!omap [a: 1]\n", 1, "not a list tagged 'tag:yaml.org,2002:omap'"),
    ("expect:\n  outcome: boot\n", 2, "expect.outcome must be one of boots, panics, hangs, not 'boot'"),
    ("expect:\n  outcome: boot\n", 2, "did you mean 'boots'?"),
    ("expect:\n  outcome: [boots]\n", 2, "not a list"),
    ("init_commands: cat /proc/interrupts\n", 1, "init_commands must be a list of shell commands"),
    ("init_commands:\n  - ls\n  - ''\n", 3, "init_commands[1] is empty"),
    ("init_commands:\n  - [ls]\n", 2, "init_commands[0] must be a string, not a list"),
    ("cmdline: {a: 1}\n", 1, "cmdline must be a list of kernel arguments"),
    ("cmdline:\n  - debug\n  - \"a\\nb\"\n", 3, "cmdline[1]: 'a\\nb' contains a newline"),
    ("cmdline:\n  - \"a\\rb\"\n", 2, "contains a newline"),
    ("cmdline:\n  - \"a\\tb\"\n", 2, "contains control character U+0009"),
    ("xen_cmdline: [ok, \"x\\ny\"]\n", 1, "xen_cmdline[1]: 'x\\ny' contains a newline"),
    ("cmdline: [a, ~]\n", 1, "cmdline[1] must be a string, not null"),
    # modes
    ("mode: xen\n", 1, "unknown mode 'xen' (did you mean 'xen-pv'? valid modes: native, xen-pv)"),
    ("mode: [native, kvm]\n", 1, "mode[1]: unknown mode 'kvm'"),
    ("mode:\n  - native\n  - xen-pv\n  - native\n", 4, "mode[2]: mode 'native' is listed twice"),
    ("mode: []\n", 1, "mode must name at least one of native, xen-pv"),
    ("mode:\n", 1, "mode must be one of native, xen-pv"),
    # regexes
    ("expect:\n  console:\n    contains: [ok, 'foo(']\n", 3,
     "expect.console.contains[1]: bad regex 'foo(': missing ), unterminated subpattern at position 3"),
    ("expect:\n  console:\n    excludes:\n      - good\n      - '[a'\n", 5,
     "expect.console.excludes[1]: bad regex '[a'"),
    ("expect:\n  console:\n    excludes: ''\n", 3, "the regex is empty"),
    ("expect:\n  allow_crashes: ['*x']\n", 2, "expect.allow_crashes[0]: bad regex '*x': nothing to repeat"),
    ("expect:\n  outcome: panics\n  crash: '(?P<'\n", 3, "expect.crash: bad regex"),
    ("expect:\n  console:\n    contains: [{a: b}]\n", 3, "contains[0] must be a string, not a mapping"),
    # unknown keys
    ("expect:\n  outcom: boots\n", 2, "unknown key 'outcom' in expect (did you mean 'outcome'?)"),
    ("timout: 5\n", 1, "unknown key 'timout' (did you mean 'timeout'?)"),
    ("outcome: boots\n", 1, "unknown key 'outcome' (did you mean 'expect.outcome'? it belongs under expect)"),
    ("memory: 512\n", 1, "did you mean 'qemu.memory'?"),
    ("expect:\n  console:\n    contain: [x]\n", 3,
     "unknown key 'contain' in expect.console (did you mean 'contains'?)"),
    ("qemu:\n  zzz: 1\n", 2, "unknown key 'zzz' in qemu (valid keys: cpu, memory, smp, extra)"),
    ("? [a]\n: b\n", 1, "keys must be plain names, not a list"),
    ("~: 1\n", 1, "keys must be plain names"),
    ("<<: {timeout: 5}\n", 1, "merge keys (<<) are not supported"),
    # duplicates name the second occurrence
    ("timeout: 5\nname: a\ntimeout: 6\n", 3, "duplicate key 'timeout' (first at line 1)"),
    ("expect:\n  outcome: boots\n  console: {}\n  outcome: hangs\n", 4,
     "duplicate key 'expect.outcome' (first at line 2)"),
    ("qemu: {smp: 1, smp: 2}\n", 1, "duplicate key 'qemu.smp'"),
    # impossible combinations, at the offending key
    ("expect:\n  crash: VFS\n", 2, "expect.crash only applies to outcome 'panics'"),
    ("expect:\n  outcome: hangs\n  crash: VFS\n", 3, "(outcome is 'hangs')"),
    ("expect:\n  outcome: hangs\n  allow_crashes: [x]\n", 3,
     "expect.allow_crashes cannot be used with outcome 'hangs'"),
    ("expect: {outcome: panics}\ninitramfs: none\ninit_commands: [ls]\n", 3,
     "init_commands need patchscope's /init, but initramfs is 'none'"),
    ("name: a\ninitramfs: none\n", 2, "nothing prints the success marker"),
    ("timeout: 10\nsilence: 20\n", 2, "silence (20s) must not be longer than timeout (10s)"),
    ("silence: 121\n", 1, "silence (121s) must not be longer than timeout (120s)"),
    ("initramfs: missing.cpio\n", 1, "initramfs: file {dir}/missing.cpio not found"),
    ("initramfs: defualt\n", 1, "did you mean 'default'?"),
    ("initramfs: adir\n", 1, "{dir}/adir is not a regular file"),
    ("initramfs: \"" + "x" * 5000 + "\"\n", 1, "(File name too long)"),
    ("initramfs: my.cpio/x\n", 1, "initramfs: file {dir}/my.cpio/x not found"),
    ("initramfs: \"a\\0b\"\n", 1, "contains a NUL character"),
    # QEMU options patchscope controls
    ("qemu:\n  extra: [-s]\n", 2, "qemu.extra[0]: -s opens a gdbstub on TCP port 1234"),
    ("qemu:\n  extra: [-device, foo, -gdb, 'tcp::1234']\n", 2,
     "qemu.extra[2]: the gdbstub must never listen on TCP"),
    ("qemu:\n  extra: ['--gdb=tcp::1']\n", 2, "gdbstub must never listen on TCP"),
    ("qemu:\n  extra: ['-gdb tcp::1234']\n", 2, "gdbstub must never listen on TCP"),
    ("qemu:\n  extra: '-S'\n", 2, "qemu.extra: patchscope starts the guest CPUs itself"),
    ("qemu:\n  extra: [-kernel, /boot/vmlinuz]\n", 2,
     "qemu.extra[0]: patchscope sets -kernel itself; use the kernel: key"),
    ("qemu:\n  extra: [-initrd, x]\n", 2, "use the initramfs: key"),
    ("qemu:\n  extra: [-append, x]\n", 2, "use the cmdline: key"),
    ("qemu:\n  extra: [-serial, stdio]\n", 2, "remove -serial"),
    ("qemu:\n  extra: [-qmp, 'tcp:0:4444']\n", 2, "remove -qmp"),
    ("qemu:\n  extra: [-monitor, stdio]\n", 2, "remove -monitor"),
    ("qemu:\n  extra: [-chardev, 'socket,id=x']\n", 2, "remove -chardev"),
    ("qemu:\n  extra: [-m, 4G]\n", 2, "use qemu.memory"),
    # not a mapping at all / not YAML
    ("- a\n- b\n", 1, "a config must be a mapping of keys"),
    ("just a string\n", 1, "a config must be a mapping of keys (like 'timeout: 60'), not 'just a string'"),
    ("42\n", 1, "not '42'"),
    ("", 1, "config is empty"),
    ("# only a comment\n", 1, "config is empty"),
    ("name: a\nb: c: d\n", 2, "not valid YAML: mapping values are not allowed here (line 2, column 5)"),
    ("name: a\nqemu:\n\tsmp: 2\n", 3, "indent with spaces, not tabs"),
    ("name: 'unterminated\n\nkernel: x\n", 4,
     "not valid YAML: while scanning a quoted scalar (line 1, column 7): found unexpected end of stream"),
    ("cmdline: [a, b\n", 2, "not valid YAML: while parsing a flow sequence"),
    ("name: a\n---\nname: b\n", 2, "but found another document"),
    ("name: a\nkernel: \x00\n", 2, "character U+0000 is not allowed (line 2, column 9)"),
    ("name: *nope\n", 1, "found undefined alias 'nope'"),
    ("[" * 5000, 1, "nested too deeply"),
    # issue 15: nothing that runs on defaults by accident, nothing no program can be given
    ("---\n", 1, "config is only '---', a YAML null; write '{{}}' to take every default"),
    ("~\n", 1, "config is only '~', a YAML null"),
    ("null\n# nothing else\n", 1, "config is only 'null', a YAML null"),
    ('name: s\ncmdline: ["\\ud800"]\n', 2, "config holds a lone surrogate \\ud800"),
    ('init_commands: ["echo \\udc00"]\n', 1, "lone surrogate \\udc00"),
    ('qemu:\n  extra: ["-device", "\\ud83d"]\n', 2, "lone surrogate \\ud83d"),
    ('"\\ud800": 1\n', 1, "lone surrogate"),
    # no run may open a TCP listener (QEMU listened on 127.0.0.1:5907 for qemu.extra: [-vnc, ":7"])
    ('qemu:\n  extra: [-vnc, ":7"]\n', 2, "qemu.extra[0]: -vnc :7 serves VNC on TCP"),
    ("qemu:\n  extra: -device virtio-rng-pci -spice port=5930\n", 2, "qemu.extra: -spice serves on TCP"),
    ("qemu:\n  extra: [-incoming, 'tcp:0:4444']\n", 2, "-incoming tcp:0:4444 listens on the network"),
    ("qemu:\n  extra:\n    - -netdev\n    - user,id=n,hostfwd=tcp::2222-:22\n", 3,
     "qemu.extra[0]: -netdev user,id=n,hostfwd=tcp::2222-:22 forwards or listens on host ports"),
    ("qemu:\n  extra: [-parallel, 'tcp::4444,server=on']\n", 2, "-parallel tcp::4444,server=on uses the network"),
    ("qemu:\n  extra: [-debugcon, 'telnet::4444,server=on']\n", 2, "uses the network"),
    ("qemu:\n  extra: [-display, 'vnc=:1']\n", 2, "-display vnc serves VNC on TCP"),
    # seed 004: inspect.orc, inspect.unwind and their expectations
    ("inspect:\n  unwind: {table: returns}\n", 2, "inspect.unwind.table must be one of paravirt, alternatives"),
    ("inspect:\n  unwind: {table: alternatives, op: irq.save_fl}\n", 2, "inspect.unwind.op names a pv op, but the table is alternatives"),
    ("inspect:\n  unwind: {sites: 0}\n", 2, "inspect.unwind.sites must be a whole number >= 1"),
    ("inspect:\n  orc: yes please\n", 2, "inspect.orc must be true or false"),
    ("inspect:\n  reader: gdb\n", 2, "inspect.reader must be one of qmp, debugger, both, not 'gdb'"),
    ("inspect: {capture: booted}\nexpect:\n  orc_known: ['__switch_to_asm']\n", 3, "expect.orc_known needs inspect: {{orc: true}}"),
    ("inspect: {capture: booted}\nexpect:\n  unwind_disagreements: 0\n", 3, "expect.unwind_disagreements needs inspect: {{unwind:"),
    ("inspect: {orc: true}\nexpect:\n  orc_disagreements: -1\n", 3, "expect.orc_disagreements must be a whole number >= 0"),
]


@pytest.mark.parametrize("text, line, fragment", ERRORS,
                         ids=[f"{i}-{e[2][:30]}" for i, e in enumerate(ERRORS)])
def test_error_names_file_line_and_reason(cfg_path: Path, text: str, line: int,
                                          fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, cfg_path)
    err = info.value
    message = str(err)
    assert err.line == line, message
    assert err.path == cfg_path
    assert message.startswith(f"{cfg_path}:{line}: "), message
    assert fragment.format(dir=cfg_path.parent) in message
    assert "\n" not in message


def test_error_lines_count_from_one_after_blank_and_comment_lines(cfg_path: Path) -> None:
    text = "# header\n\nname: x\n\nexpect:\n  # why\n  outcome: boots\n  outcom: boots\n"
    with pytest.raises(ConfigError, match=r"boot\.yaml:8: unknown key 'outcom' in expect"):
        parse_config(text, cfg_path)


def test_error_without_path_names_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("timeout: soon\n")
    assert str(info.value).startswith("<config>:1: timeout")


def test_long_values_are_shortened_in_messages(cfg_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("timeout: " + "x" * 10000 + "\n", cfg_path)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- valid configs

FULL = """\
name: boot-both
kernel: 6.10
mode: [native, xen-pv]
cmdline: [nokaslr, "debug", 'dyndbg="file a.c +p"']
xen_cmdline: loglvl=all  guest_loglvl=all
dom0_memory: 1G
qemu:
  cpu: max
  memory: 512M
  smp: 2
  extra: ["-device", "isa-debug-exit"]
initramfs: my.cpio
init_commands:
  - cat /proc/interrupts
  - |
    echo one
    echo two
timeout: 90.5
silence: 30
expect:
  outcome: panics
  crash: "kernel panic: VFS"
  allow_crashes: ["WARNING in foo", "^BUG: .*"]
  console:
    contains: ["Linux version \\\\d", "x86/cpu"]
    excludes: Call Trace
"""


def test_full_config_field_by_field(cfg_path: Path) -> None:
    c = parse_config(FULL, cfg_path)
    assert c.name == "boot-both"
    assert c.path == cfg_path
    assert c.kernel == "6.10"  # taken as written, not the float 6.1
    assert c.modes == ("native", "xen-pv")
    assert c.cmdline == ("nokaslr", "debug", 'dyndbg="file a.c +p"')
    assert c.xen_cmdline == ("loglvl=all", "guest_loglvl=all")
    assert c.dom0_memory_mib == 1024
    assert c.qemu == QemuOptions(cpu="max", memory_mib=512, smp=2,
                                 extra=("-device", "isa-debug-exit"))
    assert c.initramfs == str(cfg_path.parent / "my.cpio")
    assert Path(c.initramfs).is_absolute()
    assert c.init_commands == ("cat /proc/interrupts", "echo one\necho two\n")
    assert c.timeout == 90.5 and isinstance(c.timeout, float)
    assert c.silence == 30.0 and isinstance(c.silence, float)
    assert c.expect.outcome == "panics"
    assert c.expect.crash is not None and c.expect.crash.pattern == "kernel panic: VFS"
    assert [p.pattern for p in c.expect.allow_crashes] == ["WARNING in foo", "^BUG: .*"]
    assert [p.pattern for p in c.expect.console.contains] == [r"Linux version \d", "x86/cpu"]
    assert c.expect.console.contains[0].search("Linux version 6.1.0")
    assert [p.pattern for p in c.expect.console.excludes] == ["Call Trace"]


def test_lines_map_dotted_keys_to_lines(cfg_path: Path) -> None:
    c = parse_config(FULL, cfg_path)
    assert c.lines["name"] == 1
    assert c.lines["qemu"] == 7
    assert c.lines["qemu.smp"] == 10
    assert c.lines["timeout"] == 18
    assert c.lines["expect.outcome"] == 21
    assert c.lines["expect.console.contains"] == 25
    assert c.lines["init_commands[1]"] == 15
    assert c.lines["mode[1]"] == 3


def test_defaults(cfg_path: Path) -> None:
    c = parse_config("{}\n", cfg_path)
    assert c == Config(name="boot", path=cfg_path)
    assert c.kernel == "debian-6.1"
    assert c.modes == ("native", "xen-pv")   # a config runs in every mode unless it pins one
    assert c.hypervisor == "xen-4.17"
    assert c.cmdline == () and c.xen_cmdline == () and c.init_commands == ()
    assert c.dom0_memory_mib == 256
    assert c.qemu == QemuOptions(cpu=None, memory_mib=None, smp=1, extra=())
    assert c.initramfs == "default"
    assert c.timeout == 120.0 and c.silence == 60.0
    assert c.expect == Expect(outcome="boots", crash=None, allow_crashes=(),
                              console=ConsoleExpect())


def test_empty_values_mean_defaults_for_lists_sections_and_optionals(cfg_path: Path) -> None:
    text = ("cmdline:\ninit_commands:\nqemu:\n  cpu:\n  memory: ~\n"
            "expect:\n  crash:\n  console:\n")
    c = parse_config(text, cfg_path)
    assert c == Config(name="boot", path=cfg_path)


@pytest.mark.parametrize("text, expected", [
    ("mode: xen-pv\n", ("xen-pv",)),
    ("mode: [xen-pv, native]\n", ("xen-pv", "native")),
    ("mode: [native]\n", ("native",)),
])
def test_mode_forms(cfg_path: Path, text: str, expected: tuple[str, ...]) -> None:
    assert parse_config(text, cfg_path).modes == expected


@pytest.mark.parametrize("value, mib", [
    ("512", 512), ("'512'", 512), ("512M", 512), ("512MiB", 512), ("512 MB", 512),
    ("1G", 1024), ("2g", 2048), ("1GiB", 1024), ("0x100", 256),
])
def test_memory_sizes(cfg_path: Path, value: str, mib: int) -> None:
    c = parse_config(f"dom0_memory: {value}\nqemu:\n  memory: {value}\n", cfg_path)
    assert c.dom0_memory_mib == mib
    assert c.qemu.memory_mib == mib


@pytest.mark.parametrize("value, seconds", [
    ("30", 30.0), ("0.5", 0.5), ("1e3", 1000.0), ("1_000", 1000.0), ("1:30", 90.0),
])
def test_timeout_numbers(cfg_path: Path, value: str, seconds: float) -> None:
    assert parse_config(f"timeout: {value}\n", cfg_path).timeout == seconds


def test_silence_defaults_to_timeout_when_timeout_is_short(cfg_path: Path) -> None:
    c = parse_config("timeout: 30\n", cfg_path)
    assert (c.timeout, c.silence) == (30.0, 30.0)
    assert parse_config("timeout: 300\n", cfg_path).silence == 60.0
    assert parse_config("timeout: 30\nsilence: 30\n", cfg_path).silence == 30.0


def test_string_forms_split_on_whitespace(cfg_path: Path) -> None:
    c = parse_config("cmdline: ' nokaslr   debug '\nqemu:\n  extra: -device foo\n", cfg_path)
    assert c.cmdline == ("nokaslr", "debug")
    assert c.qemu.extra == ("-device", "foo")
    assert parse_config("cmdline: ''\n", cfg_path).cmdline == ()


def test_single_regex_string_is_a_one_element_list(cfg_path: Path) -> None:
    c = parse_config("expect:\n  console:\n    contains: 'a+b'\n", cfg_path)
    assert [p.pattern for p in c.expect.console.contains] == ["a+b"]


def test_regex_future_warnings_do_not_escape(cfg_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under python -W error
        c = parse_config("expect:\n  console:\n    contains: ['[[a]']\n", cfg_path)
    assert c.expect.console.contains[0].search("[")


def test_qemu_extra_allows_ordinary_options(cfg_path: Path) -> None:
    text = "qemu:\n  extra: [-device, 'isa-debug-exit,iobase=0xf4', -no-reboot, -machine, q35, -smbios, 'type=1']\n"
    assert parse_config(text, cfg_path).qemu.extra[-2:] == ("-smbios", "type=1")


def test_outcome_boots_allowed_with_custom_initramfs(cfg_path: Path) -> None:
    c = parse_config(f"initramfs: {cfg_path.parent / 'my.cpio'}\ninit_commands: [ls]\n", cfg_path)
    assert c.initramfs == str(cfg_path.parent / "my.cpio")


def test_initramfs_none_with_panics_or_hangs(cfg_path: Path) -> None:
    c = parse_config("initramfs: none\nexpect: {outcome: hangs}\n", cfg_path)
    assert c.initramfs == "none" and c.expect.outcome == "hangs"


def test_initramfs_relative_to_config_dir_not_cwd(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "init.cpio").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    c = parse_config("initramfs: init.cpio\n", Path("configs/x.yaml"))
    assert c.initramfs == str(sub / "init.cpio")
    with pytest.raises(ConfigError, match="not found"):
        parse_config("initramfs: init.cpio\n", Path("x.yaml"))


def test_anchors_and_aliases_work(cfg_path: Path) -> None:
    text = "cmdline: &args [a, b]\nxen_cmdline: *args\n"
    c = parse_config(text, cfg_path)
    assert c.cmdline == c.xen_cmdline == ("a", "b")


def test_name_defaults_to_sanitised_stem(tmp_path: Path) -> None:
    assert parse_config("{}", tmp_path / "boot-native.yaml").name == "boot-native"
    assert parse_config("{}", tmp_path / "my test!.yaml").name == "my-test-"
    assert parse_config("{}", None).name == "adhoc"
    assert parse_config("name: given\n", tmp_path / "file.yaml").name == "given"


def test_config_is_frozen_and_hashable(cfg_path: Path) -> None:
    c = parse_config(FULL, cfg_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.qemu.smp = 4  # type: ignore[misc]
    assert hash(c) == hash(parse_config(FULL, cfg_path))


# --------------------------------------------------------------------------- load_config


def test_load_config_reads_file(cfg_path: Path) -> None:
    cfg_path.write_text(FULL)
    c = load_config(cfg_path)
    assert c.path == cfg_path and c.name == "boot-both"


def test_load_config_strips_bom(cfg_path: Path) -> None:
    cfg_path.write_bytes(b"\xef\xbb\xbftimeout: 5\n")
    assert load_config(cfg_path).timeout == 5.0


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.line is None
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_load_not_utf8_names_line(cfg_path: Path) -> None:
    cfg_path.write_bytes(b"name: a\nkernel: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path)
    assert info.value.line == 2
    assert "not UTF-8 text: byte 0xff (line 2, column 9)" in str(info.value)


def test_load_huge_file_is_refused_quickly(cfg_path: Path) -> None:
    cfg_path.write_bytes(b"# " + b"x" * (10 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="larger than the 256 KiB limit"):
        load_config(cfg_path)
    with pytest.raises(ConfigError, match="the limit is 256 KiB"):
        parse_config("a: " + "x" * (10 * 1024 * 1024), cfg_path)


# --------------------------------------------------------------------------- round trip


def test_round_trip_through_yaml_and_json(cfg_path: Path) -> None:
    c = parse_config(FULL, cfg_path)
    data = to_yaml_dict(c)
    json.dumps(data)  # plain data only
    assert data["expect"] == {
        "outcome": "panics", "crash": "kernel panic: VFS",
        "allow_crashes": ["WARNING in foo", "^BUG: .*"],
        "console": {"contains": [r"Linux version \d", "x86/cpu"], "excludes": ["Call Trace"]},
    }
    assert data["mode"] == ["native", "xen-pv"]
    assert data["qemu"] == {"cpu": "max", "memory": 512, "smp": 2,
                            "extra": ["-device", "isa-debug-exit"]}
    again = parse_config(yaml.safe_dump(data), cfg_path)
    assert again == c
    assert to_yaml_dict(again) == data
    assert parse_config(json.dumps(data), cfg_path) == c


@pytest.mark.parametrize("reader", ["qmp", "debugger", "both"])
def test_the_capture_reader_is_read_and_written_back(cfg_path: Path, reader: str) -> None:
    c = parse_config(f"inspect: {{capture: booted, reader: {reader}}}\n", cfg_path)
    assert c.inspect is not None and c.inspect.reader == reader
    assert parse_config(yaml.safe_dump(to_yaml_dict(c)), cfg_path) == c
    assert parse_config("inspect: {capture: booted}\n", cfg_path).inspect.reader == "qmp"   # type: ignore[union-attr]


def test_round_trip_of_defaults(cfg_path: Path) -> None:
    c = parse_config("{}", cfg_path)
    assert parse_config(yaml.safe_dump(to_yaml_dict(c)), cfg_path) == c
    d = default_config()
    assert parse_config(yaml.safe_dump(to_yaml_dict(d))) == d


def test_equality_sees_every_field(cfg_path: Path) -> None:
    c = parse_config(FULL, cfg_path)
    assert parse_config(FULL.replace("smp: 2", "smp: 3"), cfg_path) != c
    assert parse_config(FULL.replace("x86/cpu", "x86/cpus"), cfg_path) != c


# --------------------------------------------------------------------------- default_config


def test_default_config_defaults() -> None:
    c = default_config()
    assert c == Config(name="adhoc")
    assert c.path is None and dict(c.lines) == {}


def test_default_config_overrides_by_yaml_key_or_field_name(tmp_path: Path) -> None:
    c = default_config("smoke", mode=["xen-pv"], timeout=30, cmdline="debug nokaslr",
                       qemu={"memory": "1G", "smp": 2}, expect={"outcome": "hangs"})
    assert c.name == "smoke"
    assert c.modes == ("xen-pv",)
    assert (c.timeout, c.silence) == (30.0, 30.0)
    assert c.cmdline == ("debug", "nokaslr")
    assert c.qemu == QemuOptions(memory_mib=1024, smp=2)
    assert c.expect.outcome == "hangs"
    (tmp_path / "x.cpio").write_bytes(b"x")
    d = default_config(modes=("native", "xen-pv"), dom0_memory_mib=512,
                       qemu=QemuOptions(cpu="host", extra=("-no-reboot",)),
                       expect=Expect(console=ConsoleExpect(contains=(re.compile("ok"),))),
                       initramfs=tmp_path / "x.cpio")
    assert d.modes == ("native", "xen-pv") and d.dom0_memory_mib == 512
    assert d.initramfs == str(tmp_path / "x.cpio")
    assert d.qemu.cpu == "host" and d.qemu.extra == ("-no-reboot",)
    assert d.expect.console.contains[0].pattern == "ok"


@pytest.mark.parametrize("overrides, fragment", [
    ({"timeout": "soon"}, "timeout must be a positive number of seconds, not 'soon'"),
    ({"timeout": -1}, "timeout must be a positive number"),
    ({"mode": "xen"}, "unknown mode 'xen'"),
    ({"modes": ["native", "native"]}, "listed twice"),
    ({"mode": "native", "modes": "native"}, "duplicate key 'mode'"),
    ({"timout": 5}, "unknown key 'timout' (did you mean 'timeout'?)"),
    ({"qemu": {"extra": ["-s"]}}, "-s opens a gdbstub"),
    ({"expect": {"crash": "x"}}, "expect.crash only applies to outcome 'panics'"),
    ({"initramfs": "none"}, "nothing prints the success marker"),
    ({"initramfs": "/nonexistent/x.cpio"}, "file /nonexistent/x.cpio not found"),
    ({"cmdline": ["a\nb"]}, "contains a newline"),
    ({"silence": 200}, "silence (200s) must not be longer than timeout (120s)"),
    ({"timeout": object()}, "unsupported value of type object"),
])
def test_default_config_validates_overrides(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        default_config("adhoc", **overrides)
    assert str(info.value).startswith("<command line>: ")
    assert fragment in str(info.value)


def test_default_config_none_means_default() -> None:
    c = default_config("boot", kernel=None, modes=None, initramfs=None, timeout=None, qemu=None)
    assert c == Config(name="boot")


def test_default_config_bad_name() -> None:
    with pytest.raises(ConfigError, match="name must be"):
        default_config("../etc")


# --------------------------------------------------------------------------- with_overrides


def test_with_overrides(cfg_path: Path) -> None:
    c = parse_config("name: x\nkernel: a\nmode: native\ncmdline: [quiet]\ntimeout: 300\n", cfg_path)
    o = with_overrides(c, modes="xen-pv", timeout=30, extra_cmdline=("debug",), kernel="b")
    assert o.modes == ("xen-pv",)
    assert (o.timeout, o.silence) == (30.0, 30.0)
    assert o.cmdline == ("quiet", "debug")
    assert o.kernel == "b"
    assert o.name == "x" and o.path == cfg_path
    assert "timeout" not in o.lines and "mode" not in o.lines and "kernel" not in o.lines
    assert o.lines["cmdline"] == 4 and o.lines["name"] == 1
    assert c.timeout == 300.0  # the original is untouched
    assert with_overrides(c) == c


def test_with_overrides_lists_and_strings(cfg_path: Path) -> None:
    c = parse_config("{}", cfg_path)
    assert with_overrides(c, modes=["native", "xen-pv"]).modes == ("native", "xen-pv")
    assert with_overrides(c, extra_cmdline="a b").cmdline == ("a", "b")


def test_with_overrides_default_silence_follows_timeout(cfg_path: Path) -> None:
    short = with_overrides(parse_config("{}", cfg_path), timeout=10)
    assert short.silence == 10.0
    assert with_overrides(short, timeout=600).silence == 60.0
    assert with_overrides(parse_config("timeout: 20\n", cfg_path), timeout=600).silence == 60.0


def test_with_overrides_explicit_silence_must_fit(cfg_path: Path) -> None:
    c = parse_config("name: x\nsilence: 50\n", cfg_path)
    assert with_overrides(c, timeout=1000).silence == 50.0
    with pytest.raises(ConfigError) as info:
        with_overrides(c, timeout=30)
    assert info.value.line == 2 and info.value.path == cfg_path
    assert "silence (50s) must not be longer than the timeout (30s) given on the command line" \
        in str(info.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"modes": "xen"}, "unknown mode 'xen'"),
    ({"modes": []}, "mode must name at least one"),
    ({"timeout": 0}, "timeout must be a positive number"),
    ({"timeout": float("nan")}, "timeout must be a positive number"),
    ({"kernel": ""}, "kernel must be a kernel reference"),
    ({"extra_cmdline": ["a\nb"]}, "contains a newline"),
])
def test_with_overrides_validates(cfg_path: Path, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(parse_config("{}", cfg_path), **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith("<command line>: ")
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- hostile input

HOSTILE = [
    "\t", "\tname: x\n", ":", "::::", "- - - -", "{", "}", "[", "]", "&a", "*a", "!", "!!", "%",
    "%YAML 1.1\n---\n{}", "%TAG ! tag:x,2000:\n--- !foo {}\n", "---\n...\n", "? ? ?", "'", '"',
    "a: &x [*x]\n", "cmdline: &x [*x]\n", "expect: &e {console: *e}\n",
    "qemu: &q {extra: *q}\n", "\ud800", "\x85\u2028\u2029", "\ufeff{}", "a" * 200000,
    "a: b\n" * 40000, "timeout: !!float abc\n", "timeout: !!int abc\n", "smp: !!int 0x\n",
    "qemu: {smp: !!int 0b}\n", "name: !!str\n", "expect: !!set {outcome}\n", "mode: !!omap [a: 1]\n",
    "x: &a [1,2]\ny: &b [*a,*a,*a,*a]\nz: &c [*b,*b,*b,*b]\n",
    "lol: &a [x]\n" + "".join(f"l{i}: &a{i} [*a, *a, *a]\n" for i in range(5)),
    "{[" * 3000, "- " * 3000 + "x", "a:\n" + "  " * 2000 + "b",
    "expect:\n  console:\n    contains: ['" + "(" * 5000 + "']\n",
    "expect:\n  console:\n    contains: ['" + "(" * 200 + ")" * 200 + "']\n",
    "cmdline: " + "x " * 100000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_text_raises_only_config_error(cfg_path: Path, text: str) -> None:
    try:
        parse_config(text, cfg_path)
    except ConfigError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(f"{cfg_path}:")


def test_binary_garbage_files(cfg_path: Path) -> None:
    rng = random.Random(1234)
    for size in (1, 2, 7, 100, 5000):
        for _ in range(20):
            cfg_path.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
            try:
                load_config(cfg_path)
            except ConfigError as err:
                assert "\n" not in str(err)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False, 0, -1, 1, 2, 10**30, 0.5, float("inf"), float("nan")])
    if pick in (2, 3):
        return rng.choice(["native", "xen-pv", "boots", "panics", "hangs", "default", "none", "1G",
                           "512M", "-s", "-gdb", "-kernel", "(", "a+", ".*", "", "a\nb", "x\0"])
    if pick in (4, 5):
        return "".join(rng.choice("ab:-[]( \n\t\\'\"#é") for _ in range(rng.randrange(8)))
    if pick in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(SCHEMA_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


SCHEMA_KEYS = ["name", "kernel", "mode", "cmdline", "xen_cmdline", "dom0_memory", "qemu",
               "initramfs", "init_commands", "timeout", "silence", "expect", "cpu", "memory",
               "smp", "extra", "outcome", "crash", "allow_crashes", "console", "contains",
               "excludes"]


def test_random_inputs_raise_only_config_error() -> None:
    """A seeded loop that runs even where hypothesis is not installed."""
    rng = random.Random(20240601)
    alphabet = ":-[]{}!&*'\"#|>%@` \n\t\r\\abx0129.,?~<\x00\x85\ufeff\u2028é"
    path = Path("/nonexistent/fuzz.yaml")
    accepted = 0
    for i in range(3000):
        if i % 3 == 0:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        elif i % 3 == 1:
            text = FULL.replace("initramfs: my.cpio\n", "")
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(text) + 1)
                text = text[:at] + rng.choice(alphabet) * rng.randrange(3) + text[at + rng.randrange(3):]
        else:
            doc = {rng.choice(SCHEMA_KEYS): _random_value(rng) for _ in range(rng.randrange(6))}
            text = yaml.safe_dump(doc, allow_unicode=True)
        try:
            c = parse_config(text, path)
        except ConfigError as err:
            assert "\n" not in str(err)
            continue
        accepted += 1
        assert parse_config(yaml.safe_dump(to_yaml_dict(c)), path) == c
    assert accepted > 50  # the loop also exercises valid configs


if hypothesis is not None:
    from hypothesis import HealthCheck, given, settings

    # PATCHSCOPE_FUZZ_EXAMPLES=20000 for a longer hunt.
    FUZZ = settings(max_examples=int(os.environ.get("PATCHSCOPE_FUZZ_EXAMPLES", "300")),
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

    @FUZZ
    @given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
    def test_fuzz_text(text: str) -> None:
        try:
            parse_config(text, Path("/nonexistent/fuzz.yaml"))
        except ConfigError as err:
            assert "\n" not in str(err)

    @FUZZ
    @given(st.text(alphabet=":-[]{}!&*'\"#|> \n\tabx0129.,?~<", max_size=200))
    def test_fuzz_yaml_punctuation(text: str) -> None:
        try:
            parse_config(text, Path("/nonexistent/fuzz.yaml"))
        except ConfigError as err:
            assert "\n" not in str(err)

    SCALARS = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
        st.sampled_from(["native", "xen-pv", "boots", "panics", "hangs", "default", "none",
                         "1G", "512M", "-s", "-gdb", "(", "a+", ".*", "max"]),
    )
    VALUES = st.recursive(
        SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.sampled_from(SCHEMA_KEYS), inner, max_size=4)),
        max_leaves=20,
    )

    @FUZZ
    @given(st.dictionaries(st.sampled_from(SCHEMA_KEYS), VALUES, max_size=8))
    def test_fuzz_schema_shaped_documents(doc: dict[str, object]) -> None:
        text = yaml.safe_dump(doc, allow_unicode=True)
        try:
            c = parse_config(text, Path("/nonexistent/fuzz.yaml"))
        except ConfigError as err:
            assert "\n" not in str(err)
            return
        # Whatever is accepted round-trips.
        assert parse_config(yaml.safe_dump(to_yaml_dict(c)), c.path) == c
        assert set(c.modes) <= set(MODES)

    @FUZZ
    @given(st.data())
    def test_fuzz_mutated_full_config(data: st.DataObject) -> None:
        text = FULL.replace("initramfs: my.cpio\n", "")
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(text)))
            op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
            piece = data.draw(st.text(alphabet=":-[]{}'\" \n\tx#&*!", min_size=1, max_size=3))
            if op == "delete":
                text = text[:at] + text[at + len(piece):]
            elif op == "insert":
                text = text[:at] + piece + text[at:]
            else:
                text = text[:at] + piece + text[at + len(piece):]
        try:
            parse_config(text, Path("/nonexistent/fuzz.yaml"))
        except ConfigError as err:
            assert "\n" not in str(err)

    @FUZZ
    @given(st.dictionaries(st.sampled_from([k for k in SCHEMA_KEYS if k != "name"]
                                           + ["modes", "dom0_memory_mib"]), VALUES, max_size=5))
    def test_fuzz_default_config(overrides: dict[str, object]) -> None:
        try:
            default_config("fuzz", **overrides)
        except ConfigError as err:
            assert "\n" not in str(err)

    WORD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Zs", "Zl", "Zp"]),
                   min_size=1, max_size=12)
    LINE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc"]),
                   min_size=1, max_size=20).filter(lambda s: s.strip() == s and s)
    REGEX = LINE.map(re.escape)

    @st.composite
    def valid_documents(draw: st.DrawFn) -> dict[str, object]:
        """Schema-valid documents: each key present or not, every value legal."""
        outcome = draw(st.sampled_from(["boots", "panics", "hangs"]))
        timeout = draw(st.floats(min_value=0.01, max_value=1e6))
        doc: dict[str, object] = {
            "name": draw(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)),
            "kernel": draw(LINE),
            "mode": draw(st.sampled_from(["native", "xen-pv", ["xen-pv", "native"], ["native"]])),
            "cmdline": draw(st.lists(LINE.filter(lambda s: "\t" not in s), max_size=3)),
            "xen_cmdline": draw(st.lists(WORD, max_size=3)),
            "dom0_memory": draw(st.integers(1, 10**6)),
            "qemu": {"cpu": draw(st.none() | WORD), "memory": draw(st.none() | st.integers(1, 10**6)),
                     "smp": draw(st.integers(1, 256)),
                     "extra": draw(st.lists(WORD.filter(lambda s: not s.startswith("-")), max_size=3))},
            "initramfs": "default" if outcome == "boots" else draw(st.sampled_from(["default", "none"])),
            "timeout": timeout,
            "silence": draw(st.floats(min_value=0.001, max_value=1.0)) * timeout,
            "expect": {"outcome": outcome,
                       "crash": draw(st.none() | REGEX) if outcome == "panics" else None,
                       "allow_crashes": draw(st.lists(REGEX, max_size=2)) if outcome != "hangs" else [],
                       "console": {"contains": draw(st.lists(REGEX, max_size=3)),
                                   "excludes": draw(st.lists(REGEX, max_size=3))}},
        }
        if doc["initramfs"] == "default":
            doc["init_commands"] = draw(st.lists(LINE, max_size=3))
        keep = draw(st.sets(st.sampled_from(sorted(doc))))
        if "silence" in keep:  # silence fits this timeout, not necessarily the default one
            keep.add("timeout")
        if "initramfs" in keep and doc["initramfs"] == "none":  # needs its outcome
            keep.add("expect")
        return {k: v for k, v in doc.items() if k in keep}

    @FUZZ
    @given(valid_documents())
    def test_fuzz_valid_documents_parse_and_round_trip(doc: dict[str, object]) -> None:
        path = Path("/nonexistent/fuzz.yaml")
        c = parse_config(yaml.safe_dump(doc, allow_unicode=True), path)
        data = to_yaml_dict(c)
        for key, value in doc.items():
            if key in ("qemu", "expect"):
                continue
            if key == "mode" and isinstance(value, str):
                value = [value]
            assert data[key] == value, key
        if "qemu" in doc:
            assert data["qemu"] == doc["qemu"]
        if "expect" in doc:
            assert data["expect"] == doc["expect"]
        assert parse_config(yaml.safe_dump(data), path) == c
        assert default_config(c.name, **{k: v for k, v in data.items() if k != "name"}) \
            == dataclasses.replace(c, path=None)


# --------------------------------------------------------------------------- scenario (framework/scenario/)
#
# The language itself is tested in test_scenario.py; here: the config around it.


def test_docstring_schema_example_is_a_valid_config() -> None:
    """The reference in framework/config/__init__.py parses (less the crash regex, which needs outcome panics)."""
    import textwrap

    import framework.config as config_module
    assert config_module.__doc__ is not None
    schema = config_module.__doc__.split("Schema (every key is optional)::\n", 1)[1].split("\nEXPR:", 1)[0]
    text = re.sub(r"\n  crash:.*", "", textwrap.dedent(schema))
    c = parse_config(text)
    assert c.scenario is not None and [len(r.do) for r in c.scenario.rules] == [1, 8]
    assert c.expect.nmi == "delivered" and len(c.expect.stops) == 1


def test_scenario_lines_are_kept(cfg_path: Path) -> None:
    text = ("name: nmi\nscenario:\n  rules:\n    - on: text_poke_bp_batch\n      do: [inject-nmi]\n"
            "expect:\n  nmi: arrived\n")
    c = parse_config(text, cfg_path)
    assert (c.lines["scenario"], c.lines["scenario.rules[0]"], c.lines["scenario.rules[0].do[0]"],
            c.lines["expect.nmi"]) == (2, 4, 5, 7)
    assert c.scenario is not None and c.scenario.rules[0].line == 4


def test_scenario_with_overrides_is_kept(cfg_path: Path) -> None:
    c = parse_config("scenario:\n  rules: [{on: int3_magic, do: [record]}]\n", cfg_path)
    assert with_overrides(c, timeout=30, modes="native").scenario == c.scenario


SCENARIO_KEYS = ["scenario", "rules", "max_stops", "on", "do", "at", "hit", "when", "caller", "addr_in",
                 "pv_op", "len", "regs", "rdi", "rax", "skip", "write", "set", "dump", "record", "inject-nmi",
                 "continue", "return", "bytes", "u8", "u64", "expect", "stops", "count", "nmi"]
SCENARIO_WORDS = ["text_poke_early", "text_poke_early+0x10", "int3_magic", "0xffffffff81000000", "paravirt_patch",
                  "skip", "record", "inject-nmi", "continue", "write", "rdi + 9", "len - 1", "addr", "type", "eax",
                  "irq.save_fl", "^apply_", "(", "90", "0f 1f", "zz", "delivered", "lost", "1", "0", "-1", "",
                  "a\nb", "x\0"]


def _scenario_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(8 if depth < 5 else 4)
    if pick == 0:
        return rng.choice([None, True, 0, 1, 6, 200, -3, 2**70, 0.5])
    if pick in (1, 2, 3):
        return rng.choice(SCENARIO_WORDS)
    if pick in (4, 5):
        return [_scenario_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(SCENARIO_KEYS): _scenario_value(rng, depth + 1) for _ in range(rng.randrange(1, 4))}


def _rule_like(rng: random.Random) -> dict[str, object]:
    on: object = rng.choice(SCENARIO_WORDS[:5])
    if rng.random() < 0.5:
        on = {"at": on, **({"hit": rng.choice([1, 2, 0])} if rng.random() < 0.3 else {}),
              "when": {rng.choice(["caller", "addr_in", "pv_op", "len", "regs"]): _scenario_value(rng, 3)}}
    actions = [rng.choice(["skip", "record", "inject-nmi", "continue"]) if rng.random() < 0.5
               else {rng.choice(["skip", "write", "set", "dump", "record"]): _scenario_value(rng, 3)}
               for _ in range(rng.randrange(0, 4))]
    return {"on": on, "do": actions}


def test_random_scenarios_raise_only_config_error() -> None:
    rng = random.Random(20250101)
    path = Path("/nonexistent/fuzz.yaml")
    accepted = 0
    for i in range(3000):
        if i % 2:
            doc: dict[str, object] = {"scenario": {"rules": [_rule_like(rng) for _ in range(rng.randrange(1, 3))]}}
            if rng.random() < 0.3:
                doc["expect"] = {"nmi": rng.choice(["delivered", "lost", "arrived"])}
        else:
            doc = {rng.choice(["scenario", "expect"]): _scenario_value(rng)}
        try:
            c = parse_config(yaml.safe_dump(doc, allow_unicode=True), path)
        except ConfigError as err:
            assert "\n" not in str(err)
            continue
        accepted += 1
        data = to_yaml_dict(c)
        json.dumps(data)
        assert parse_config(yaml.safe_dump(data), path) == c
    assert accepted > 50   # the loop also exercises valid scenarios
