"""Hostile and malformed input, fuzzed at the front door (issue 15): configs through `patchscope run`, kernel
references, matrix files, and console streams. Each case ends in exit 2 with one line naming the file (and the
line where the input has one), no traceback, and nothing started: no QEMU, no artefacts directory.

1,000 examples each by default (PATCHSCOPE_FUZZ_EXAMPLES sets another count). Run in-process: a boot would
be a test failure (QEMU's launch is replaced by one that fails the test)."""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from framework import cli
from framework.analysis import crashes
from framework.analysis.console_log import Ending
from framework.analysis.observation import observe
from framework.errors import KernelRefError
from framework.kernel.refs import parse_ref
from framework.vm import qemu

EXAMPLES = int(os.environ.get("PATCHSCOPE_FUZZ_EXAMPLES", "1000"))
# derandomize: CI sees the examples a developer's run saw (PATCHSCOPE_FUZZ_SEED=random for a new hunt)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("PATCHSCOPE_FUZZ_SEED") != "random",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

BASE = """\
name: fuzz
mode: [native, xen-pv]
kernel: 'path:{image}'
cmdline: [nokaslr, debug]
qemu:
  memory: 512M
  extra: [-device, isa-debug-exit]
init_commands: [cat /proc/interrupts]
inspect:
  capture: [after-patching, booted]
  orc: true
scenario:
  rules:
    - on: apply_paravirt
      do: [skip]
timeout: 90
expect:
  outcome: boots
  console:
    contains: ['Linux version']
"""
# what a mutation inserts: YAML punctuation, escapes of half a character, listeners, references, numbers
INSERTS = st.sampled_from([":", "-", "[", "]", "{", "}", "'", '"', "#", "|", ">", "&a", "*a", "!!str", "\n", "  ",
                           "\\ud800", '"\\udc00"', "~", "null", "---", "-vnc :1", "hostfwd=tcp::1-:2", "xen-9.99",
                           "banana", "path:", "debian:", "1e999", "-1", "0x", "\t", "\x00", "é", "<<: *a"])


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def no_boot() -> object:
    def launch(self: qemu.Qemu) -> None:
        raise AssertionError(f"QEMU was started for fuzzed input: {self.argv}")
    saved = qemu.Qemu.launch
    qemu.Qemu.launch = launch  # type: ignore[method-assign]
    yield None
    qemu.Qemu.launch = saved  # type: ignore[method-assign]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), INSERTS), min_size=1, max_size=4), st.booleans())
def test_mutated_configs_are_refused_in_one_line_and_start_nothing(tmp_path_factory: pytest.TempPathFactory,
                                                                   no_boot: object,
                                                                   edits: list[tuple[int, str]], cut: bool) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    image = tmp / "bzImage"
    image.write_bytes(b"not a kernel" * 64)      # whatever the schema accepts, the kernel line refuses
    text = BASE.format(image=image)
    for at, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at:] if not cut else text[:at] + insert + text[at + len(insert):]
    # a mutant whose kernel line is gone may be a good config on the default kernel, which would boot: bad input
    # is what is fuzzed here
    assume(f"\nkernel: 'path:{image}'\n" in text)
    config = tmp / "fuzz.yaml"
    config.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = tmp / "out"
    code, err = _run_cli(["run", str(config), "--artifacts", str(out), "-q"])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (text, err)
    assert len(lines) == 1 and lines[0].startswith(f"patchscope: error: {config}"), (text, err)
    assert "Traceback" not in err and not out.exists()


@FUZZ
@given(st.one_of(st.text(max_size=60),
                 st.tuples(st.sampled_from(["debian:", "path:", "build:", "debian-newest:", "debian-", "xen-",
                                            "tiny-", ""]), st.text(max_size=40)).map("".join)))
def test_kernel_references_parse_or_are_refused_in_one_line(text: str) -> None:
    try:
        parse_ref(text)
    except KernelRefError as err:
        assert "\n" not in str(err) and str(err)


MATRIX = """\
name: nightly
kernels: [debian-6.1]
modes: [native]
configs: ["{config}"]
retries: 1
timeout: 600
exclude:
  - {{config: one, mode: native}}
"""


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), INSERTS), min_size=1, max_size=4))
def test_mutated_matrix_files_are_refused_in_one_line(tmp_path_factory: pytest.TempPathFactory, no_boot: object,
                                                      edits: list[tuple[int, str]]) -> None:
    tmp = tmp_path_factory.mktemp("matrix")
    (tmp / "one.yaml").write_text("name: one\nkernel: 'path:/nonexistent/bzImage'\n")
    text = MATRIX.format(config=tmp / "one.yaml")
    for at, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at:]
    matrix = tmp / "matrix.yaml"
    matrix.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = tmp / "out"
    code, err = _run_cli(["matrix", str(matrix), "--artifacts", str(out), "--list"])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code == 0:       # a mutation the matrix takes (a comment, a space): --list ran nothing
        assert not out.exists()
        return
    assert code == 2, (text, err)
    assert len(lines) == 1 and lines[0].startswith("patchscope: error: "), (text, err)
    assert "Traceback" not in err


CONSOLE = st.lists(st.one_of(
    st.text(max_size=80),
    st.sampled_from(["[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
                     "[    1.000000] Oops: 0000 [#1] PREEMPT SMP NOPTI", "[    1.000000] RIP: 0010:f+0x1/0x2",
                     "[    1.000000] Kernel panic - not syncing: Attempted to kill init!", "(XEN) Panic on CPU 0:",
                     "[    1.000000] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x1/0x2", "---[ end trace 0 ]---",
                     "\x1b[2J", "\x00\x01\x02", "\ud800", "[ 1.0] Call Trace:", "reboot: Power down",
                     "patchscope: init done"])), max_size=40)


@FUZZ
@given(CONSOLE, st.sampled_from(["exit", "timeout", "silence", "log-end"]))
def test_hostile_console_streams_are_observed_without_errors(lines: list[str], reason: str) -> None:
    ending = Ending(reason, float(len(lines)), 0, 60.0 if reason == "silence" else None)  # type: ignore[arg-type]
    obs = observe([(float(i), ln) for i, ln in enumerate(lines)], ending)
    assert obs.outcome in ("boots", "panics", "hangs", "unknown")
    for crash in obs.crashes:
        assert "\n" not in crash.title and crash.title.strip() == crash.title and crash.title
    assert len(obs.crashes) <= crashes.MAX_DISTINCT + 1
    yaml.safe_dump(obs.to_json())      # serialisable, surrogates and all, as result.json is
