"""The .ko reader and linker, the module-list walk, and module sites in a comparison, on real Debian 6.1 modules.

tests/data/modules/test_static_key{_base,s}.ko are lib/test_static_key_base.ko and
lib/test_static_keys.ko from linux-image-6.1.0-56-amd64 (6.1.192-2), as shipped.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from framework.analysis import modules as modules_mod
from framework.analysis.sites import Capture, Comparison, compare
from framework.elf import kmodlist
from framework.elf import ko as ko_mod
from framework.elf.vmlinux import Symbols, Vmlinux, branch_target
from framework.errors import ImageError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "modules"
BASE = 0xFFFFFFFFC0000000
# Made-up addresses of the vmlinux symbols the two modules import.
KERNEL = {"__x86_return_thunk": 0xFFFFFFFF82000000, "__x86_indirect_thunk_rax": 0xFFFFFFFF82000100,
          "static_key_count": 0xFFFFFFFF81100000, "static_key_enable": 0xFFFFFFFF81100100,
          "static_key_disable": 0xFFFFFFFF81100200, "__stack_chk_fail": 0xFFFFFFFF81200000}


def load(name: str) -> ko_mod.Ko:
    return ko_mod.parse((DATA / f"{name}.ko").read_bytes(), name)


def image(tmp_path: Path, name: str, linked: ko_mod.Linked) -> Vmlinux:
    path = tmp_path / f"{name}.linked.ko"
    path.write_bytes(linked.data)
    parent = Vmlinux(path, Symbols.from_dict(KERNEL), "6.1.0-56-amd64")
    return Vmlinux.module(path, name, parent, Symbols.from_elf(path).merged(Symbols.from_dict(KERNEL)))


def test_parse_reads_sections_symbols_and_relocations() -> None:
    ko = load("test_static_keys")
    text = ko.section(".text")
    assert text is not None and text.executable and text.alloc
    jt = ko.section("__jump_table")
    assert jt is not None and jt.size % 16 == 0
    relas = {rela.name: target.name for rela, target in ko.rela_sections()}
    assert relas[".rela__jump_table"] == "__jump_table"
    assert relas[".rela.return_sites"] == ".return_sites"
    undefined = {s.name for s in ko.symbols if s.shndx == ko_mod.SHN_UNDEF and s.name}
    assert {"base_true_key", "static_key_enable", "__x86_return_thunk"} <= undefined
    # jump_entry fields are all relative to themselves: code and target PC32, the key PC64
    types = {r.type for r in ko.relocations(ko.section(".rela__jump_table"))}  # type: ignore[arg-type]
    assert types == {ko_mod.R_X86_64_PC32, ko_mod.R_X86_64_PC64}


def test_linked_return_sites_jump_to_the_resolved_thunk(tmp_path: Path) -> None:
    ko = load("test_static_key_base")
    linked = ko_mod.link(ko, ko_mod.layout(ko, BASE), KERNEL.get)
    assert not linked.unresolved and linked.writes
    img = image(tmp_path, "test_static_key_base", linked)
    returns = img.sites("returns")
    assert returns, "test_static_key_base has return sites"
    for site in returns:
        assert site.module == "test_static_key_base"
        assert site.original[0] == 0xE9 and branch_target(site.address, site.original) == KERNEL["__x86_return_thunk"]
        assert BASE <= site.address < BASE + 0x10000


def test_every_applied_relocation_holds_its_value(tmp_path: Path) -> None:
    ko = load("test_static_key_base")
    placement = ko_mod.layout(ko, BASE)
    linked = ko_mod.link(ko, placement, KERNEL.get)
    out = ko_mod.parse(linked.data, "linked")
    by_address = {placement[s.name]: s for s in out.sections if s.name in placement}
    checked = 0
    for w in linked.writes:
        sec = out.section(w.section)
        assert sec is not None
        raw = out.data[sec.offset + w.address - placement[w.section]:][:w.size]
        assert len(raw) == w.size
        if w.type in (ko_mod.R_X86_64_PC32, ko_mod.R_X86_64_PLT32) and w.symbol == "__x86_return_thunk":
            rel = struct.unpack("<i", raw)[0]
            # S + A - P with A = -4 for a rel32 at the end of its instruction
            assert (w.address + rel + 4) & (2**64 - 1) == KERNEL["__x86_return_thunk"]
            checked += 1
    assert checked > 0 and by_address


def test_the_module_linked_before_resolves_the_next_ones_symbols(tmp_path: Path) -> None:
    base, keys = load("test_static_key_base"), load("test_static_keys")
    loaded = {"test_static_key_base": kmodlist.LoadedModule("test_static_key_base", 0, "live",
                                                            ko_mod.layout(base, BASE), None),
              "test_static_keys": kmodlist.LoadedModule("test_static_keys", 0, "live",
                                                        ko_mod.layout(keys, BASE + 0x100000), None)}
    linked = modules_mod.link_all([("test_static_key_base", base), ("test_static_keys", keys)], loaded, KERNEL.get)
    assert not linked["test_static_keys"].unresolved
    exported = modules_mod.exported(base, loaded["test_static_key_base"].sections, None)
    img = image(tmp_path, "test_static_keys", linked["test_static_keys"])
    keys_used = {s.key for s in img.sites("jump_labels")}
    # the static keys the test module branches on live in the base module (and in itself)
    assert exported["base_true_key"] in keys_used
    # without the base module its keys stay unresolved, and that is said, with the bytes they cover
    alone = ko_mod.link(keys, loaded["test_static_keys"].sections, KERNEL.get)
    assert "base_true_key" in alone.unresolved and alone.skipped and alone.notes


def test_weak_undefined_is_zero_and_overflow_is_an_error() -> None:
    ko = load("test_static_key_base")
    with pytest.raises(ImageError, match="overflows 32 bits"):
        # the kernel 4 GiB away from the module: a rel32 cannot reach it
        ko_mod.link(ko, ko_mod.layout(ko, 0xFFFF800000000000), KERNEL.get)
    weak = ko_mod.KoSymbol(0, "maybe", ko_mod.STB_WEAK << 4, ko_mod.SHN_UNDEF, 0, 0)
    assert ko_mod.symbol_value(ko, weak, {}, lambda _n: None, None) == 0
    strong = ko_mod.KoSymbol(0, "maybe", 1 << 4, ko_mod.SHN_UNDEF, 0, 0)
    assert ko_mod.symbol_value(ko, strong, {}, lambda _n: None, None) is None


@pytest.mark.parametrize("mangle, message", [
    (lambda d: b"MZ" + d[2:], "not an ELF file"),
    (lambda d: d[:64], "truncated or corrupt"),
    (lambda d: d[:16] + struct.pack("<H", 2) + d[18:], "not a relocatable object"),
    (lambda d: d[:len(d) // 2], "truncated"),
])
def test_bad_modules_are_one_line_errors(mangle: object, message: str) -> None:
    data = (DATA / "test_static_keys.ko").read_bytes()
    with pytest.raises(ImageError, match=message) as err:
        ko_mod.parse(mangle(data), "broken.ko")  # type: ignore[operator]
    assert "broken.ko" in str(err.value) and "\n" not in str(err.value)


LAYOUT = kmodlist.ModuleLayout(state=0, list=8, name=24, name_size=56, sect_attrs=584, percpu=608, nsections=40,
                               attrs=48, attr_size=72, attr_name=0, attr_address=64)


class Memory:
    """Guest memory as sparse writes, read like the debugger reads it."""

    def __init__(self) -> None:
        self.data: dict[int, int] = {}

    def put(self, address: int, raw: bytes) -> None:
        for i, b in enumerate(raw):
            self.data[address + i] = b

    def u64(self, address: int, value: int) -> None:
        self.put(address, struct.pack("<Q", value))

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.data.get(address + i, 0) for i in range(length))


def fake_module(mem: Memory, at: int, name: str, sections: dict[str, int], state: int = 0) -> None:
    mem.put(at + LAYOUT.state, state.to_bytes(4, "little"))
    mem.put(at + LAYOUT.name, name.encode() + b"\0")
    attrs = at + 0x10000
    mem.u64(at + LAYOUT.sect_attrs, attrs)
    mem.u64(at + LAYOUT.percpu, 0x2A000)
    mem.put(attrs + LAYOUT.nsections, len(sections).to_bytes(4, "little"))
    for i, (sec, address) in enumerate(sections.items()):
        entry = attrs + LAYOUT.attrs + i * LAYOUT.attr_size
        string = attrs + 0x8000 + 64 * i
        mem.put(string, sec.encode() + b"\0")
        mem.u64(entry + LAYOUT.attr_name, string)
        mem.u64(entry + LAYOUT.attr_address, address)


def test_walk_reads_every_module_on_the_list() -> None:
    mem, head = Memory(), 0xFFFFFFFF82450000
    a, b = 0xFFFFFFFFC1000000, 0xFFFFFFFFC2000000
    fake_module(mem, a, "kvm", {".text": 0xFFFFFFFFC0100000, ".init.text": 0xFFFFFFFFC0200000})
    fake_module(mem, b, "irqbypass", {".text": 0xFFFFFFFFC0300000}, state=1)
    mem.u64(head, a + LAYOUT.list)
    mem.u64(a + LAYOUT.list, b + LAYOUT.list)
    mem.u64(b + LAYOUT.list, head)
    got = kmodlist.walk(mem.read, head, LAYOUT)
    assert [m.name for m in got] == ["kvm", "irqbypass"]
    assert got[0].sections == {".text": 0xFFFFFFFFC0100000, ".init.text": 0xFFFFFFFFC0200000}
    assert got[1].state == "coming" and got[0].percpu == 0x2A000 and got[0].address == a


def test_walk_refuses_a_list_that_does_not_close() -> None:
    mem, head = Memory(), 0xFFFFFFFF82450000
    mem.u64(head, 0xFFFFFFFFC1000000 + LAYOUT.list)     # a module whose next pointer is 0
    with pytest.raises(ImageError, match="does not come back to its head"):
        kmodlist.walk(mem.read, head, LAYOUT)


def test_module_layout_needs_btf() -> None:
    with pytest.raises(ImageError, match="no .BTF"):
        kmodlist.module_layout(None, "vmlinux")


def test_module_sites_compare_and_merge_under_their_own_keys(tmp_path: Path) -> None:
    ko = load("test_static_key_base")
    placement = ko_mod.layout(ko, BASE)
    linked = ko_mod.link(ko, placement, KERNEL.get)
    img = image(tmp_path, "test_static_key_base", linked)
    loaded = kmodlist.LoadedModule("test_static_key_base", 0, "live", placement, None)
    regions, freed = modules_mod.text_to_read(ko, loaded)
    # its .text is empty; its code is in .text.unlikely and .exit.text, its init code freed
    assert {start for start, _ in regions} == {placement[".text.unlikely"], placement[".exit.text"]}
    assert [lo for lo, _ in freed] == [placement[".init.text"]]
    live = {start: bytearray(img.read(start, size)) for start, size in regions}
    site = img.sites("returns")[0]
    text = next(start for start in live if start <= site.address < start + len(live[start]))
    live[text][site.address - text:site.address - text + 5] = b"\xc3\xcc\xcc\xcc\xcc"    # ret; int3 x4
    capture = Capture("booted", {k: bytes(v) for k, v in live.items()}, tuple(freed))
    one = compare({"returns": img.sites("returns")}, capture, {s: img.read(s, len(d)) for s, d in capture.regions.items()},
                  img.symbols)
    assert [st.state for st in one.sites["returns"]].count("patched") == 1
    vmlinux_only = Comparison("booted", {"returns": ()}, (), (), ())
    merged = modules_mod.merge(vmlinux_only, "booted", [("test_static_key_base", one)])
    assert set(merged.sites) == {"returns", "test_static_key_base:returns"}
    patched = [st for st in merged.sites["test_static_key_base:returns"] if st.state == "patched"]
    assert patched[0].insns[0] == "ret" and patched[0].site.module == "test_static_key_base"
    assert patched[0].to_json()["module"] == "test_static_key_base"
    # a saved comparison comes back with the module's sites under the same key
    rows = [st.to_json() for states in merged.sites.values() for st in states]
    again = Comparison.from_json(merged.to_json(with_sites=False), rows)
    assert set(again.sites) >= {"test_static_key_base:returns"}
