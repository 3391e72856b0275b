"""Seed 004 on the real Debian kernels: the static ORC check over every stream of every site (6.1, 6.12), and a
disagreement patched in on purpose through a scenario, caught by the live check and by the unwind from inside
the site. (Both modes of the live check and of the unwind run as configs/orc-*.yaml.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.elf.vmlinux import Symbols
from framework.kernel.image import prepare_kernel
from framework.kernel.refs import parse_ref
from tests.conftest import patchscope, result_json, write_config

pytestmark = pytest.mark.boot

# Known in Debian 6.1: FILL_RETURN_BUFFER's RSB-stuffing loop, where the ORC entries inside the site describe the
# other replacement of its ALTERNATIVE_2 (configs/orc-patched-sites.yaml says why).
KNOWN = ("__switch_to_asm+", "entry_ibpb+")


def test_the_static_check_covers_every_table_and_finds_only_the_known_disagreements() -> None:
    res = patchscope("orc", "--kernel", "debian-6.1", "--json")
    report = json.loads(res.stdout)
    total = report["total"]
    assert total["boundaries"] > 80_000 and total["agree"] > 80_000, total
    tables = {key.split(" ")[0] for key, row in report["rows"].items() if row["boundaries"]}
    assert {"paravirt", "alternatives", "retpolines", "jump_labels", "static_calls", "ftrace"} <= tables
    # the seed's op: every boundary of the pv call and of its direct call agrees
    save_fl = report["rows"]["paravirt irq.save_fl"]
    assert save_fl["boundaries"] > 100 and save_fl["disagree"] == 0
    found = report["disagreements"]
    assert found and all(d["symbol"].startswith(KNOWN) for d in found), found
    assert res.returncode == 1      # disagreements found: the command says so in its exit code


def test_the_static_check_of_6_12_reads_its_tables_and_agrees_everywhere() -> None:
    res = patchscope("orc", "--kernel", "debian-6.12", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    total = report["total"]
    # 6.12: pv calls are alternatives, call-depth sites and runtime constants are tables of their own
    assert total["boundaries"] > 300_000 and total["disagree"] == 0 and report["disagreements"] == []
    assert report["rows"]["paravirt irq.save_fl"]["agree"] > 100
    assert report["rows"]["call_sites"]["unreachable"] > 1000      # calls to __stack_chk_fail, panic, …


def test_a_pushf_patched_in_without_an_orc_entry_is_caught_live_and_by_the_unwind(
        tmp_path: Path, artifacts: Path) -> None:
    """The seed's bug on purpose: apply_alternatives() is made to patch _raw_spin_lock_irqsave's save_fl site with
    "pushf; pushf; pop %rax; pop %rax" instead of "pushf; pop %rax" (at its entry, a scenario writes the four
    bytes into the unused tail of boot_command_line and points the site's alt_instr at them): the same %rax, the
    stack balanced, 8 bytes more pushed at +2 and +3 than the ORC entries there say. The live check names both
    boundaries; the unwind stopped at +2 lands 16 bytes off the frame the function's entry recorded."""
    kernel = prepare_kernel(parse_ref("debian-6.1"), lambda _: None)
    names = Symbols.from_elf(Path(kernel.symbols or kernel.vmlinux))
    listed = patchscope("sites", "--kernel", "debian-6.1", "--json", "--table", "paravirt", "--table", "alternatives")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    site = next(r for r in rows if r["table"] == "paravirt" and r["op"] == "irq.save_fl" and r["length"] == 6
                and names.format(int(r["address"], 16)).startswith("_raw_spin_lock_irqsave+"))
    [alt] = [r for r in rows if r["table"] == "alternatives" and r["address"] == site["address"]
             and r["replacement"] == "9c58"]
    entry = f"__alt_instructions + {12 * alt['index']:#x}"      # 6.1's struct alt_instr: 12 bytes
    config = write_config(tmp_path, "orc-injected", f"""kernel: debian-6.1
inspect:
  capture: [after-patching]
  orc: true
  unwind: {{op: irq.save_fl, symbol: '^_raw_spin_lock_irqsave\\+', sites: 1}}
scenario:
  rules:
    - on: {{at: apply_alternatives, hit: 1}}     # vmlinux's; the vDSO images' come next
      do:
        - write: {{at: "boot_command_line + 2040", bytes: "9c9c5858"}}
        # repl_offset (s32 at +4): relative to itself; replacementlen (u8 at +11)
        - write: {{at: "{entry} + 4", u32: "boot_command_line + 2040 - ({entry} + 4)"}}
        - write: {{at: "{entry} + 11", u8: "4"}}
expect:
  orc_known: ['^__switch_to_asm\\+']
  stops:
    - {{at: apply_alternatives, count: 1}}
""")
    res = patchscope("run", str(config), "--artifacts", str(artifacts), timeout=900)
    assert res.returncode == 1, res.stdout + res.stderr
    result = result_json(artifacts, "orc-injected")
    assert result["outcome"] == "boots"
    address = int(site["address"], 16)
    [orc_reason] = [r for r in result["reasons"] if r.startswith("ORC at after-patching")]
    assert f"paravirt#{site['index']} irq.save_fl live at _raw_spin_lock_irqsave+" in orc_reason
    orc = json.loads((artifacts / "orc-injected" / "native" / "orc.json").read_text())
    injected = [d for d in orc[0]["disagreements"] if d["site"] == site["address"]]
    assert [(int(d["address"], 16) - address, d["after"]) for d in injected] == [(2, "pushf"), (3, "pop %rax")]
    [unwind_reason] = [r for r in result["reasons"] if r.startswith("unwind:")]
    assert len(result["reasons"]) == 2, result["reasons"]
    assert "_raw_spin_lock_irqsave+" in unwind_reason and "CFA off by" in unwind_reason
    stops = json.loads((artifacts / "orc-injected" / "native" / "unwind.json").read_text())
    by_offset = {int(s["rip"], 16) - address: s for s in stops if s["agrees"] is not None}
    assert by_offset[0]["agrees"] and by_offset[1]["agrees"] and by_offset[4]["agrees"]
    assert not by_offset[2]["agrees"] and "CFA off by -16" in by_offset[2]["detail"]
    assert not by_offset[3]["agrees"] and "CFA off by -8" in by_offset[3]["detail"]
    # patchscope check judges the saved orc.json and unwind.json as the live run did
    again = patchscope("check", str(artifacts / "orc-injected" / "native"), "--expect", str(config))
    assert again.returncode == 1 and orc_reason in again.stdout and unwind_reason in again.stdout, again.stdout


def test_a_loaded_modules_sites_are_checked_against_its_own_orc_table(tmp_path: Path, artifacts: Path) -> None:
    config = write_config(tmp_path, "orc-modules", """kernel: debian-6.1
modules: [kvm]
inspect:
  capture: [booted]
  orc: true
expect:
  orc_known: ['^__switch_to_asm\\+']
""")
    res = patchscope("run", str(config), "--artifacts", str(artifacts), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    [report] = json.loads((artifacts / "orc-modules" / "native" / "orc.json").read_text())
    rows = {key: row for key, row in report["rows"].items() if key.startswith("kvm:")}
    # kvm.ko's natively patched save_fl sites ("pushf; pop %rax") agree with kvm's own .orc_unwind, linked
    # where it was loaded: with vmlinux's table (or an unrelocated one) the boundary after pushf could not agree
    save_fl = rows["kvm:paravirt irq.save_fl"]
    assert save_fl["boundaries"] >= 3 * save_fl["sites"] > 0 and save_fl["agree"] == save_fl["boundaries"]
    assert sum(row["boundaries"] for row in rows.values()) > 1000
    assert not [d for d in report["disagreements"] if d.get("module")]
