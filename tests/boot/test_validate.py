"""patchscope validate and run --dry-run on the real kernel: every shipped config checked against the kernel's
own tables without a boot, and the mistakes only the kernel can show (a symbol, a pv op, a module) refused at
their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, patchscope, write_config

pytestmark = pytest.mark.boot


def test_every_shipped_config_validates_without_booting() -> None:
    configs = sorted((REPO / "configs").glob("*.yaml"))
    res = patchscope("validate", *map(str, configs), timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(configs) and all(ln.startswith(("OK    ", "N/A   ")) for ln in lines), lines
    assert any("against its tables: " in ln and "scenario rules" in ln for ln in lines)


@pytest.mark.parametrize("body, line, fragment", [
    ("scenario:\n  rules:\n    - on: apply_paravirtt\n      do: [skip]\n", 6, "the kernel has no symbol 'apply_paravirtt' (did you mean 'apply_paravirt'?)"),
    ("inspect:\n  capture: [free_initmemm]\n", 5, "has no symbol 'free_initmemm' (did you mean 'free_initmem'?)"),
    ("modules: [no_such_module_here]\n", 4, "modules[0]: no module 'no_such_module_here' in linux-image-6.1.0-"),
    ("inspect:\n  unwind: {op: irq.no_such_op}\n", None, "has no paravirt site of irq.no_such_op"),
])
def test_what_only_the_kernel_can_tell_is_refused_at_its_line(tmp_path: Path, body: str, line: int | None,
                                                               fragment: str) -> None:
    config = write_config(tmp_path, "wrong", "kernel: debian-6.1\n" + body)
    res = patchscope("validate", str(config))
    assert res.returncode == 2, res.stdout + res.stderr
    [out] = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert out.startswith(f"ERROR {config}" + (f":{line}:" if line else "")) and fragment in out, out
    assert "Traceback" not in res.stderr


def test_run_dry_run_boots_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = patchscope("run", str(REPO / "configs" / "nmi-during-patching.yaml"), "--dry-run", "--artifacts", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK    nmi-during-patching [native, xen-pv]") and not out.exists()
