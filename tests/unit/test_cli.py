"""Bad input at the command line: one line naming the problem and the fix, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, patchscope, result_json, write_config


def _one_line_error(res_stderr: str) -> str:
    lines = [ln for ln in res_stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res_stderr
    assert "Traceback" not in res_stderr
    assert lines[0].startswith("patchscope: error: ")
    return lines[0]


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("name: broken\nexpect:\n  outcome: boots\n   console: [\n")
    res = patchscope("run", str(cfg))
    assert res.returncode == 2
    line = _one_line_error(res.stderr)
    assert f"{cfg}:" in line


def test_unknown_key_is_rejected_before_anything_boots(tmp_path: Path) -> None:
    good = write_config(tmp_path, "good", "expect: {outcome: boots}\n")
    bad = write_config(tmp_path, "bad", "expect:\n  outcom: boots\n")
    res = patchscope("run", str(good), str(bad), "--artifacts", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "outcom" in _one_line_error(res.stderr) and f"{bad}:4" in res.stderr  # name, mode, expect, outcom
    assert not (tmp_path / "out").exists()   # nothing booted, not even the good one


def test_missing_config_file(tmp_path: Path) -> None:
    res = patchscope("run", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "nope.yaml" in _one_line_error(res.stderr)


@pytest.mark.parametrize("kernel, fragment", [
    ("debain-6.1", "kernel: unknown kernel reference 'debain-6.1'"),
    ("path:/nonexistent/bzImage", "kernel: /nonexistent/bzImage: no such kernel image"),
])
def test_a_bad_kernel_is_refused_at_its_line_before_anything_runs(tmp_path: Path, kernel: str, fragment: str) -> None:
    cfg = write_config(tmp_path, "badkernel", f"kernel: {kernel!r}\n")
    out = tmp_path / "out"
    res = patchscope("run", str(cfg), "--artifacts", str(out), "-q")
    assert res.returncode == 2
    assert _one_line_error(res.stderr).startswith(f"patchscope: error: {cfg}:3: {fragment}")
    assert not out.exists()


def test_a_corrupt_kernel_image_is_refused_at_its_line(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"\x7fELF this is not a bzImage" * 100)
    cfg = write_config(tmp_path, "corrupt", f"kernel: 'path:{image}'\n")
    res = patchscope("run", str(cfg), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2
    line = _one_line_error(res.stderr)
    assert line.startswith(f"patchscope: error: {cfg}:3: kernel: ") and "not an x86 bzImage" in line


@pytest.mark.parametrize("image, fragment", [
    (b"\x1f\x8b\x08\x00broken gzip", "does not decompress"),
    (b"\x7fELF\x02\x01\x01" + b"\0" * 100, "a 64-bit ELF"),
    (b"MZ not xen at all", "not a Xen image"),
])
def test_a_bad_hypervisor_image_is_refused_at_its_line(tmp_path: Path, image: bytes, fragment: str) -> None:
    xen = tmp_path / "xen.gz"
    xen.write_bytes(image)
    cfg = write_config(tmp_path, "badxen", f"mode: xen-pv\nhypervisor: 'path:{xen}'\n")
    res = patchscope("run", str(cfg), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2, res.stdout + res.stderr
    line = _one_line_error(res.stderr)
    assert line.startswith(f"patchscope: error: {cfg}:3: hypervisor: ") and fragment in line


def test_unknown_hypervisor_recipe(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "noxen", "mode: xen-pv\nhypervisor: xen-9.99\n")
    res = patchscope("run", str(cfg), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2
    line = _one_line_error(res.stderr)
    assert line == (f"patchscope: error: {cfg}:3: hypervisor: unknown hypervisor reference 'xen-9.99': use a recipe "
                    "name (xen-4.17), debian:xen-hypervisor-<version>-amd64[=<version>] or path:<xen.gz>")


@pytest.mark.parametrize("body, line, fragment", [
    ("kernel: banana\n", 3, "kernel: unknown kernel reference 'banana'"),
    ("kernel: xen-4.17\n", 3, "kernel: 'xen-4.17' is a Xen hypervisor, not a kernel"),
    ("mode: xen-pv\nhypervisor: debian-6.1\n", 3, "hypervisor: 'debian-6.1' is a Linux kernel, not a Xen hypervisor"),
])
def test_references_are_resolved_before_anything_boots(tmp_path: Path, body: str, line: int, fragment: str) -> None:
    """Issue 15: a bad reference in the second config failed after the first one had booted, without a line."""
    good = write_config(tmp_path, "first", "kernel: 'path:/nonexistent/but-never-reached'\n")
    good.write_text("name: first\nmode: native\n")
    bad = write_config(tmp_path, "second", body)
    res = patchscope("run", str(good), str(bad), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2
    assert _one_line_error(res.stderr).startswith(f"patchscope: error: {bad}:{line}: {fragment}")
    assert not (tmp_path / "out").exists(), "something ran before the references were checked"


def test_check_of_a_missing_path(tmp_path: Path) -> None:
    res = patchscope("check", str(tmp_path / "missing.log"))
    assert res.returncode == 2
    _one_line_error(res.stderr)


def test_check_reads_a_hostile_log_without_crashing(tmp_path: Path) -> None:
    log = tmp_path / "hostile.log"
    log.write_bytes(b"\x00\xff\xfe junk\n" + b"A" * 200_000 + b"\n\x1b[2J[    1.0] Kernel panic - not syncing: x\n")
    res = patchscope("check", str(log), "--json")
    assert res.returncode == 0, res.stderr
    assert '"outcome": "panics"' in res.stdout


def test_check_a_saved_xen_console_log() -> None:
    log = REPO / "tests/data/runs/xen-pv-smap-tcg-xen-pv/console.log"
    res = patchscope("check", str(log), "--mode", "xen-pv", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["mode"] == "xen-pv" and out["outcome"] == "panics"
    assert out["title"] == "xen: d0 unhandled page fault"
    assert [s["name"] for s in out["stages"]][:3] == ["xen", "xen-dom0-build", "xen-dom0-start"]


def test_unwritable_artifacts_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = write_config(tmp_path, "w", "expect: {outcome: boots}\n")
    res = patchscope("run", str(cfg), "--artifacts", str(blocker / "out"))
    assert res.returncode == 2
    assert "Not a directory" in _one_line_error(res.stderr)


@pytest.mark.boot   # needs the real kernel's symbol table (fetched on first use); boots nothing
def test_capture_at_an_unknown_symbol_is_refused_before_booting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "nosym", "inspect: {capture: alternative_instruction}\n")
    res = patchscope("run", str(cfg), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2
    error = result_json(tmp_path / "out", "nosym")["error"]
    assert error.startswith(f"{cfg}:3: inspect.capture:")
    assert "did you mean 'alternative_instructions'?" in error
    assert not (tmp_path / "out" / "nosym" / "native" / "qemu.cmdline").exists()   # nothing booted


@pytest.mark.boot   # needs the real kernel's symbol table (fetched on first use); boots nothing
def test_a_scenario_at_an_unknown_symbol_is_refused_before_booting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "nosym-rule", """
scenario:
  rules:
    - on: apply_paravirt
      do: [record]
    - on: {at: text_poke_erly, hit: 2}
      do: [inject-nmi]
""")
    res = patchscope("run", str(cfg), "--artifacts", str(tmp_path / "out"), "-q")
    assert res.returncode == 2, res.stdout + res.stderr
    error = result_json(tmp_path / "out", "nosym-rule")["error"]
    assert error.startswith(f"{cfg}:8:"), error            # the line of the misspelt location
    assert "text_poke_erly" in error and "did you mean 'text_poke_early'?" in error
    assert not (tmp_path / "out" / "nosym-rule" / "native" / "qemu.cmdline").exists()   # nothing booted


@pytest.mark.parametrize("args, message", [
    (("sites", "--module", "kvm"), "sites --module needs --live"),
    (("trace", "--modules-only"), "trace --modules-only needs the modules to load: --module NAME"),
])
def test_module_options_that_cannot_work_are_refused_in_one_line(args: tuple[str, ...], message: str) -> None:
    res = patchscope(*args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_second_run_into_the_same_artefacts_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: two runs given one --artifacts both said PASS and mixed their files in one directory."""
    from framework.errors import InputError
    from framework.pipeline import owning
    monkeypatch.setenv("PATCHSCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "boot" / "native"
    with owning(out):
        # another process: the lock is per open file, so a second open in this process stands in for it
        with pytest.raises(InputError, match=rf"{out}: another patchscope run \(pid \d+\) is writing its artefacts"), \
                owning(out):
            pass
        assert not out.exists()
    with owning(out):           # released: the next run may
        pass
