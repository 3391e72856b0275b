"""Loaded modules on the real Debian 6.1 kernel: their sites, their loading in the trace, and refused loads.

configs/module-sites.yaml and configs/livepatch-order.yaml run as shipped
configs (both modes); these tests check what a config cannot say: that a
module's pv sites hold exactly the instructions vmlinux's sites of the same
op hold, that ``sites --live --module`` tags every module site, that a
module's own static keys flipping is traced as live patching of its text,
and that a module the kernel refuses fails the run with insmod's message.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO, patchscope, result_json, write_config

pytestmark = pytest.mark.boot


def pv_instructions(rows: list[dict[str, object]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """op -> the live instructions of its patched pv sites, for vmlinux and for kvm."""
    vmlinux: dict[str, set[str]] = defaultdict(set)
    kvm: dict[str, set[str]] = defaultdict(set)
    for site in rows:
        if site["table"] != "paravirt" or site["state"] != "patched":
            continue
        text = "; ".join(str(i) for i in site["live_insns"] if not str(i).startswith("nop"))  # type: ignore[attr-defined]
        if site.get("module") is None:
            vmlinux[str(site["op"])].add(text)
        elif site["module"] == "kvm":
            kvm[str(site["op"])].add(text)
    return vmlinux, kvm


@pytest.mark.parametrize("mode", ["native", "xen-pv"])
def test_kvm_pv_sites_hold_what_vmlinux_sites_of_the_same_op_hold(mode: str, artifacts: Path) -> None:
    res = patchscope("sites", "--live", "--mode", mode, "--module", "kvm", "--module", "test_static_keys",
                     "--table", "paravirt", "--table", "jump_labels", "--json", "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    vmlinux, kvm = pv_instructions(rows)
    assert len(kvm) >= 10, kvm                      # cpuid, msr, irq, mmu ops: 15 in 6.1.0-56's kvm.ko
    for op, texts in kvm.items():
        assert texts <= vmlinux[op], f"{op}: kvm {texts}, vmlinux {vmlinux[op]}"
    wanted = "pushf; pop %rax" if mode == "native" else "call xen_save_fl_direct"
    assert kvm["irq.save_fl"] == {wanted}
    # every module site is tagged with its module; vmlinux's sites carry no module key
    keys = [r for r in rows if r.get("module") == "test_static_keys"]
    assert 10 <= len(keys) and all(r["table"] == "jump_labels" and r["state"] in ("patched", "unchanged")
                                   for r in keys)
    assert {r.get("module") for r in rows} == {None, "kvm", "test_static_keys"}
    loaded = json.loads((artifacts / "sites" / mode / "modules" / "loaded.json").read_text())
    assert [m["module"] for m in loaded] == ["irqbypass", "kvm", "test_static_key_base", "test_static_keys"]
    assert all(m["loaded"] and not m["unresolved"] for m in loaded)    # every symbol resolved: the link is exact


def test_module_loading_is_traced_relocations_then_patching_then_its_keys(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "trace-modules", """
modules: [test_static_keys]
inspect: {capture: booted, tables: [jump_labels, returns], trace: modules}
expect:
  outcome: boots
  relocation_overlaps: []
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    run = artifacts / "trace-modules" / "native"
    with gzip.open(run / "trace.jsonl.gz", "rt") as fh:
        events = [json.loads(line) for line in fh]
    mine = [e for e in events if e.get("module") == "test_static_keys"]
    kinds = [e["source"] for e in mine]
    # the loader's relocations, then module_finalize() patching the module's return sites
    first_finalize = kinds.index("module_finalize")
    assert kinds[0] == "apply_relocate_add" and 0 < first_finalize
    assert any(e["stage"] == "returns" and e["source"] == "text_poke_early" for e in mine[first_finalize:])
    # its init flips static keys: live patching (text_poke_bp) of its own text, named by its own symbols
    flips = [e for e in mine if e["source"] == "__text_poke"]
    assert flips and all(e["symbol"] and not e["symbol"].startswith("0x") for e in flips)
    summary = json.loads((run / "trace.json").read_text())
    assert summary["relocations"] and summary["overlaps"] == []
    assert result_json(artifacts, "trace-modules")["verdict"] == "pass"


def test_a_module_the_kernel_refuses_fails_the_run_with_insmods_message(tmp_path: Path, artifacts: Path) -> None:
    # test_static_keys of Debian's 6.12, loaded into 6.1: "disagrees about version of symbol module_layout"
    wrong = tmp_path / "test_static_keys.ko.xz"
    wrong.write_bytes((REPO / "tests" / "data" / "modules" / "test_static_keys-6.12.ko.xz").read_bytes())
    cfg = write_config(tmp_path, "wrong-kernel-module", f"""
modules: [{wrong}]
expect: {{outcome: boots}}
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 1, res.stdout + res.stderr
    reasons = result_json(artifacts, "wrong-kernel-module")["reasons"]
    assert reasons == [("module test_static_keys failed to load: insmod: can't insert "
                        "'/lib/modules/test_static_keys.ko': invalid module format")], reasons
