"""Debian's 6.12 kernel (kernels/debian-6.12.yaml), booted natively and as Xen PV dom0.

Every table its vmlinux carries is compared live, and nothing may change
outside them; the pv ops are named although 6.12 has no .parainstructions;
the shipped pv-sites configs pass on it; configs that need apply_paravirt()
say "not applicable". One boot at a time.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from framework.analysis.sites import insns_text
from framework.domain import TABLES
from tests.conftest import patchscope, result_json

pytestmark = pytest.mark.boot

KERNEL = "debian-6.12"
MODES = ("native", "xen-pv")


def _counts(stdout: str) -> dict[str, list[int]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in TABLES:
            rows[parts[0]] = [int(p) for p in parts[1:]]
    return rows


@pytest.mark.parametrize("mode", MODES)
def test_live_sites_leave_no_change_unexplained(mode: str, artifacts: Path) -> None:
    res = patchscope("sites", "--live", "--kernel", KERNEL, "--mode", mode, "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "text changes outside every known site: 0" in res.stdout, res.stdout
    assert "pv sites still 'call *pv_ops': 0" in res.stdout and "over-sized patches: 0" in res.stdout
    rows = _counts(res.stdout)
    assert set(rows) == set(TABLES), res.stdout
    # sites, patched, unchanged, freed
    assert rows["paravirt"] == [4319, 4319, 0, 0]
    assert rows["ibt_endbr_seal"] == [12281, 12281, 0, 0]          # apply_seal_endbr(): every endbr64 poisoned
    assert rows["runtime_consts"][:2] == [136, 10]                 # dentry_hashtable, d_hash_shift; not yet USER_PTR_MAX
    assert rows["call_sites"][0] == 237717
    with gzip.open(artifacts / "sites" / mode / "sites-after-patching.jsonl.gz", "rt") as fh:
        sites = [json.loads(line) for line in fh]
    calls = [s for s in sites if s["table"] == "call_sites" and s["state"] == "patched"]
    others = {a for s in sites if s["table"] in ("ftrace", "alternatives")
              for a in range(int(s["address"], 16), int(s["address"], 16) + s["length"])}
    # No call depth tracking under TCG: a call site only changes where ftrace or an alternative rewrote it.
    assert calls and all(int(s["address"], 16) in others for s in calls)
    pv = [s for s in sites if s["table"] == "paravirt"]
    ops = Counter(s["op"] for s in pv)
    assert None not in ops and ops["irq.save_fl"] == 509 and ops["mmu.read_cr2"] == 7
    save_fl = {insns_text(s["live_insns"]) for s in pv if s["op"] == "irq.save_fl"}
    assert save_fl == ({"pushf; pop %rax"} if mode == "native" else {"call xen_save_fl_direct"}), save_fl


@pytest.mark.parametrize("mode", MODES)
def test_the_pv_sites_config_passes_on_612(mode: str, artifacts: Path) -> None:
    res = patchscope("run", f"configs/pv-sites-{mode}.yaml", "--kernel", KERNEL, "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    data = result_json(artifacts, f"pv-sites-{mode}", mode)
    assert data["verdict"] == "pass", data


@pytest.mark.parametrize("config", ["skip-pv-patching", "oversized-pv-patch", "nmi-during-patching"])
def test_configs_needing_apply_paravirt_are_not_applicable(config: str, artifacts: Path) -> None:
    res = patchscope("run", f"configs/{config}.yaml", "--kernel", KERNEL, "--artifacts", str(artifacts), "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"not applicable to {KERNEL}: requires.symbols: the kernel has no apply_paravirt" in res.stdout


def test_runtime_consts_are_all_filled_by_kernel_init(artifacts: Path) -> None:
    # USER_PTR_MAX is filled in right after alternative_instructions(): by kernel_init all 136 are.
    res = patchscope("sites", "--live", "--at", "kernel_init", "--kernel", KERNEL, "--table", "runtime_consts",
                     "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _counts(res.stdout)["runtime_consts"] == [136, 136, 0, 0]
    assert "text changes outside every known site: 0" in res.stdout, res.stdout
