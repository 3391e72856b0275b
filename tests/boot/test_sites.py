"""Patch-site inspection on the real Debian 6.1 kernel, through the CLI.

configs/pv-sites-native.yaml and pv-sites-xen-pv.yaml run as shipped
configs; these tests check what they cannot: a wrong assertion fails and
names the sites, the sites command (static and live), and boot --gdb.
"""

from __future__ import annotations

import json
from pathlib import Path

import pexpect
import pytest

from tests.conftest import patchscope, result_json, running, spawn_patchscope, write_config

pytestmark = pytest.mark.boot


def test_a_wrong_instruction_assertion_fails_and_names_the_sites(tmp_path: Path, artifacts: Path) -> None:
    cfg = write_config(tmp_path, "wrong-save-fl", """
inspect: {capture: after-patching, tables: [paravirt]}
expect:
  outcome: boots
  sites:
    - {op: irq.save_fl, insns: "call xen_save_fl_direct"}   # that is Xen PV; natively it is pushf; pop %rax
""")
    res = patchscope("run", str(cfg), "--artifacts", str(artifacts), "-q")
    assert res.returncode == 1, res.stdout + res.stderr
    reasons = result_json(artifacts, "wrong-save-fl")["reasons"]
    assert len(reasons) == 1
    reason = reasons[0]
    assert "op=irq.save_fl" in reason and "(line 8)" in reason   # name, mode, blank, inspect, expect, outcome, sites
    assert "458 of 458 sites not 'call xen_save_fl_direct'" in reason
    assert "irq.save_fl at " in reason and "(0xffffffff8" in reason and ": 'pushf; pop %rax'" in reason
    assert reason.endswith("… 438 more")   # 20 named, the rest counted
    # The per-site report is in the artefacts.
    assert (artifacts / "wrong-save-fl" / "native" / "sites-after-patching.jsonl.gz").exists()


def test_static_sites_of_every_table() -> None:
    res = patchscope("sites", "--kernel", "debian-6.1")
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[2:] if line.startswith("  ")
            and not line.strip().startswith("note")}
    assert rows["paravirt"] == "3848" and rows["alternatives"] == "4667"
    assert set(rows) == {"paravirt", "alternatives", "retpolines", "returns", "call_sites", "ibt_endbr_seal",
                         "smp_locks", "jump_labels", "static_calls", "ftrace", "runtime_consts"}
    assert rows["call_sites"] == rows["ibt_endbr_seal"] == rows["runtime_consts"] == "0"   # none of them in 6.1
    js = patchscope("sites", "--kernel", "debian-6.1", "--table", "paravirt", "--json")
    sites = [json.loads(line) for line in js.stdout.splitlines()]
    assert len(sites) == 3848
    assert {s["op"] for s in sites} >= {"irq.save_fl", "irq.irq_disable", "mmu.read_cr2"}
    assert all(s["original"].startswith("ff15") and s["length"] == 6 for s in sites)


def test_live_sites_json_before_patching(artifacts: Path) -> None:
    res = patchscope("sites", "--live", "--at", "before-patching", "--table", "paravirt", "--json",
                     "--artifacts", str(artifacts))
    assert res.returncode == 0, res.stderr
    sites = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(sites) == 3848
    assert {s["state"] for s in sites} == {"unchanged"}
    # Unpatched: the compiler's indirect call through pv_ops, named.
    save_fl = next(s for s in sites if s["op"] == "irq.save_fl")
    assert save_fl["live_insns"] == [f"call *pv_ops+{8 * save_fl['slot']:#x}(%rip)"]


def test_boot_gdb_stops_where_asked(tmp_path: Path) -> None:
    # TERM=dumb: GDB without colour codes inside the addresses we match
    child = spawn_patchscope("boot", "--gdb", "--stop-at", "alternative_instructions", "--artifacts", str(tmp_path),
                             TERM="dumb")
    try:
        child.expect(r"[Bb]reakpoint 1, 0x([0-9a-f]+) in alternative_instructions \(\)")
        address = int(child.match.group(1), 16)
        child.expect_exact("(gdb) ")
        child.sendline("info symbol $pc")
        child.expect(r"alternative_instructions in section \.init\.text")
        child.expect_exact("(gdb) ")
        child.sendline("info breakpoints")   # one-shot: gone after the hit (a kept one slows TCG)
        child.expect("No breakpoints or watchpoints.")
        child.expect_exact("(gdb) ")
        child.sendline("quit")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    assert address == 0xFFFFFFFF8308A05F
    assert "Linux version" in (tmp_path / "boot" / "native" / "console.log").read_text()
    pid = int((tmp_path / "boot" / "native" / "qemu.pid").read_text())
    assert not running(pid)
