"""Record what the unit tests know of Debian's 6.12 kernel: ``python -m tests.record_linux612 [SITES-DIR ...]``.

Reads the cached ``debian-6.12`` vmlinux (``patchscope kernels fetch debian-6.12``
first) and writes small extracts of it to tests/data/linux-6.12/, never the
vmlinux itself:

- ``btf-structs.json``: the BTF members of ``struct alt_instr``,
  ``jump_entry``, ``static_call_site`` and ``cpuinfo_x86.x86_capability``
  (anonymous unions and structs kept nested, as BTF holds them);
- ``cap-flags.json``: the strings of ``x86_cap_flags[]`` and ``x86_bug_flags[]``
  (null for a NULL slot);
- ``pv-alternatives.json``: the ``.altinstructions`` entries of a few pv ops
  (both entries of an ``ALTERNATIVE_2``), with the bytes they point at;
- ``text-changes.json``: with the artefact directories of ``sites --live``
  runs (one per mode), a few ``ibt_endbr_seal`` and ``runtime_consts`` sites
  with their ELF and live bytes.

tests/unit/test_linux612.py builds its test ELFs and BTF from these. Re-run
this to regenerate them after a deliberate change.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

from framework.elf import btf as btf_mod
from framework.elf.vmlinux import Symbols, Vmlinux
from framework.kernel.image import prepare_kernel
from framework.kernel.refs import parse_ref

OUT = Path(__file__).resolve().parent / "data" / "linux-6.12"
PV_OPS = ("irq.save_fl", "irq.irq_disable", "mmu.read_cr2", "cpu.write_msr", "mmu.lazy_mode.leave")


def _members(b: btf_mod.Btf, type_id: int) -> list[dict[str, Any]]:
    out = []
    for m in b.members(type_id):
        t = b.resolve(m.type_id)
        row: dict[str, Any] = {"name": m.name, "bit_offset": m.bit_offset, "bitfield_size": m.bitfield_size,
                               "kind": btf_mod.KIND_NAMES[b.kind(t)], "size": b.size(t)}
        if not m.name and b.kind(t) in (btf_mod.KIND_STRUCT, btf_mod.KIND_UNION):
            row["members"] = _members(b, t)
        out.append(row)
    return out


def record(sites_dirs: list[Path]) -> None:
    kernel = prepare_kernel(parse_ref("debian-6.12"), lambda _: None)
    assert kernel.vmlinux is not None and kernel.symbols is not None
    symbols = Symbols.from_elf(kernel.symbols)
    vm = Vmlinux(kernel.vmlinux, symbols, kernel.release)
    b = vm.btf
    assert b is not None
    structs: dict[str, Any] = {}
    for name in ("alt_instr", "jump_entry", "static_call_site"):
        tid = b.find(name, btf_mod.KIND_STRUCT)
        assert tid is not None
        structs[name] = {"size": b.size(tid), "members": _members(b, tid)}
    cpu = btf_mod.struct_layout(b, "cpuinfo_x86")
    assert cpu is not None
    cap = cpu.field("x86_capability")
    assert cap is not None
    structs["cpuinfo_x86"] = {"size": cpu.size, "x86_capability": {"offset": cap.offset, "size": cap.size}}
    (OUT / "btf-structs.json").write_text(json.dumps(structs, indent=1) + "\n")

    flags = {name: [vm._c_string(p) for p in vm._pointer_array(name) or []]
             for name in ("x86_cap_flags", "x86_bug_flags")}
    (OUT / "cap-flags.json").write_text(json.dumps(flags) + "\n")

    pv_ops = symbols.address("pv_ops")
    assert pv_ops is not None
    alts = vm.sites("alternatives")
    by_address: dict[int, list[Any]] = {}
    for s in alts:
        by_address.setdefault(s.address, []).append(s)
    entries = []
    for op in PV_OPS:
        site = next(s for s in vm.sites("paravirt") if s.op == op)
        for s in by_address[site.address]:
            entries.append({"op": op, "slot": site.slot, "index": s.index, "ft_flags": s.flags,
                            "instrlen": s.length, "original": s.original.hex(),
                            "replacement": (s.replacement or b"").hex(), "feature": s.feature})
    (OUT / "pv-alternatives.json").write_text(json.dumps({"release": vm.release, "entries": entries}, indent=1)
                                              + "\n")

    changes: dict[str, Any] = {}
    for d in sites_dirs:
        mode = d.name
        rows = []
        want = {"ibt_endbr_seal": 3, "runtime_consts": 3}
        with gzip.open(d / "sites-after-patching.jsonl.gz", "rt") as fh:
            for line in fh:
                row = json.loads(line)
                t = row["table"]
                if want.get(t) and row["state"] == "patched":
                    want[t] -= 1
                    rows.append({k: row[k] for k in ("table", "address", "length", "original", "live", "symbol")})
        changes[mode] = rows
    if changes:
        (OUT / "text-changes.json").write_text(json.dumps(changes, indent=1) + "\n")


if __name__ == "__main__":
    record([Path(a) for a in sys.argv[1:]])
