"""Seed 004 on the real Debian 6.1 kernel: the static ORC check over every stream of every site, and a
disagreement written into the live text through a scenario, caught by the live check. (Both modes of the
live check and of the unwind from inside patched sites run as configs/orc-*.yaml.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import patchscope, result_json, write_config

pytestmark = pytest.mark.boot

# Known in Debian 6.1: FILL_RETURN_BUFFER's RSB-stuffing loop, where the ORC entries inside the site describe the
# other replacement of its ALTERNATIVE_2 (configs/orc-patched-sites.yaml says why).
KNOWN = ("__switch_to_asm+", "entry_ibpb+")


def test_the_static_check_covers_every_table_and_finds_only_the_known_disagreements() -> None:
    res = patchscope("orc", "--kernel", "debian-6.1", "--json")
    report = json.loads(res.stdout)
    total = report["total"]
    assert total["boundaries"] > 90_000 and total["agree"] > 90_000, total
    tables = {key.split(" ")[0] for key, row in report["rows"].items() if row["boundaries"]}
    assert {"paravirt", "alternatives", "retpolines", "jump_labels", "static_calls", "ftrace"} <= tables
    # the seed's op: every boundary of the pv call and of its direct call agrees
    save_fl = report["rows"]["paravirt irq.save_fl"]
    assert save_fl["boundaries"] > 100 and save_fl["disagree"] == 0
    found = report["disagreements"]
    assert found and all(d["symbol"].startswith(KNOWN) for d in found), found
    assert res.returncode == 1      # disagreements found: the command says so in its exit code


def test_a_pushf_written_without_an_orc_entry_is_caught_live(tmp_path: Path, artifacts: Path) -> None:
    sites = patchscope("sites", "--kernel", "debian-6.1", "--json", "--table", "paravirt")
    assert sites.returncode == 0, sites.stderr
    # a natively patched save_fl site in text that stays: 7 bytes, "pushf; pop %rax" and NOPs once patched
    site = next(s for s in map(json.loads, sites.stdout.splitlines())
                if s["op"] == "irq.save_fl" and s["section"] == ".text" and s["length"] == 7)
    # Once booted (at free_initmem, after all boot-time patching), make it "pushf; pushf; pop %rax; pop %rax;
    # nopl (%rax)": the same value in %rax, the stack balanced, and 8 more bytes pushed at +2 and +3 than any ORC
    # entry there says.
    config = write_config(tmp_path, "orc-injected", f"""kernel: debian-6.1
inspect:
  capture: [booted]
  orc: true
scenario:
  rules:
    - on: free_initmem
      do:
        - write: {{at: "{site['address']}", bytes: "9c9c58580f1f00"}}
expect:
  orc_known: ['^__switch_to_asm\\+']
  stops:
    - {{at: free_initmem, count: 1}}
""")
    res = patchscope("run", str(config), "--artifacts", str(artifacts), timeout=900)
    assert res.returncode == 1, res.stdout + res.stderr
    result = result_json(artifacts, "orc-injected")
    assert result["outcome"] == "boots"
    [reason] = [r for r in result["reasons"] if r.startswith("ORC at booted")]
    address = int(site["address"], 16)
    assert f"paravirt#{site['index']} irq.save_fl live at " in reason and f"({address + 2:#x})" in reason
    orc = json.loads((artifacts / "orc-injected" / "native" / "orc.json").read_text())
    injected = [d for d in orc[0]["disagreements"] if d["site"] == site["address"]]
    assert [(int(d["address"], 16) - address, d["after"]) for d in injected] == [(2, "pushf"), (3, "pop %rax")]
