"""The .BTF reader: on blobs built in the test, and on the Debian 6.1 kernel when it is cached."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.elf import btf
from framework.elf.btf import Btf, pv_op_names
from framework.elf.vmlinux import Vmlinux
from framework.errors import ImageError
from tests.unit.elfasm import BtfWriter, build_elf, incbin, sample_pv_btf

DEBIAN = Path("/root/.cache/patchscope/kernels/linux-image-6.1.0-56-amd64_6.1.192-2_amd64")


def test_types_strings_and_members() -> None:
    b = BtfWriter()
    long_ = b.int_("long", 8)
    arr = b.array(long_, long_, 3)
    td = b.typedef("mylong", b.const(b.volatile(long_)))
    st = b.struct("s", 40, [("x", long_, 0), ("xs", arr, 64), ("t", td, 256)])
    bits = b.struct("bits", 4, [("lo", long_, 0), ("hi", long_, 3)], bitfields={"lo": 3, "hi": 29})
    r = Btf(b.blob())
    assert len(r) == 7
    assert r.name(st) == "s" and r.kind(st) == btf.KIND_STRUCT and r.vlen(st) == 3 and r.size(st) == 40
    assert r.name(0) == "void" and r.kind(0) == 0
    assert [(m.name, m.type_id, m.bit_offset) for m in r.members(st)] == [("x", long_, 0), ("xs", arr, 64),
                                                                         ("t", td, 256)]
    assert r.resolve(td) == long_ and r.size(td) == 8
    assert r.size(arr) == 24 and r.array_len(arr) == 3 and r.ref(arr) == long_
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in r.members(bits)] == [("lo", 0, 3), ("hi", 3, 29)]
    assert r.find("s", btf.KIND_STRUCT) == st and r.find("s", btf.KIND_UNION) is None
    assert r.find("nothing", btf.KIND_STRUCT) is None
    with pytest.raises(ImageError, match="not a struct"):
        r.members(long_)


def test_pv_op_names_from_a_6_1_shaped_template() -> None:
    blob, names = sample_pv_btf()
    assert pv_op_names(Btf(blob)) == names


def test_pv_op_names_empty_without_the_template() -> None:
    b = BtfWriter()
    b.int_("long", 8)
    assert pv_op_names(Btf(b.blob())) == {}


def test_a_wrong_record_size_would_shift_every_later_type() -> None:
    # An ENUM64 record that claims 3 values but carries 2: the index must notice it ran off the end.
    b = BtfWriter()
    b.add(b.ENUM64, "e", 3, 8, struct.pack("<III", b.s("A"), 0, 0) * 2)
    with pytest.raises(ImageError, match="runs past the type section"):
        Btf(b.blob())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:10], "too short"),
    (lambda d: b"\xeb\x9f" + d[2:], "magic"),
    (lambda d: d[:2] + b"\x02" + d[3:], "version 2"),
    (lambda d: d[:-3], "truncated"),
])
def test_bad_blobs_say_what_is_wrong(mutate: Callable[[bytes], bytes], message: str) -> None:
    blob, _ = sample_pv_btf()
    with pytest.raises(ImageError, match=message) as err:
        Btf(mutate(blob))
    assert "\n" not in str(err.value)


def test_unknown_kind_is_an_error() -> None:
    b = BtfWriter()
    b.add(25, "future")
    with pytest.raises(ImageError, match="unknown BTF kind 25"):
        Btf(b.blob())


def test_btf_section_of_an_elf_names_pv_slots(tmp_path: Path) -> None:
    blob, names = sample_pv_btf()
    asm = ('  .section .rodata,"a"\n  .asciz "Linux version 6.1.0-test (t@e) #1"\n'
           '  .section .BTF,"a"\n' + incbin(blob) + "  .text\n_start: ret\n")
    with Vmlinux(build_elf(tmp_path, asm)) as vm:
        assert vm.btf is not None and len(vm.btf) == len(Btf(blob))
        assert vm.pv_op_names() == names


def test_no_btf_section(tmp_path: Path) -> None:
    with Vmlinux(build_elf(tmp_path, "  .text\n_start: ret\n"), release="6.1.0") as vm:
        assert vm.btf is None and vm.pv_op_names() == {}
        assert any("no .BTF" in n for n in vm.notes)


@pytest.fixture(scope="module")
def debian() -> Vmlinux:
    if not (DEBIAN / "vmlinux").is_file():
        pytest.skip(f"the Debian 6.1.0-56 kernel is not cached at {DEBIAN} (patchscope fetches it on first boot)")
    return Vmlinux(DEBIAN / "vmlinux")


def test_debian_btf_names_every_pv_slot(debian: Vmlinux) -> None:
    assert debian.btf is not None and len(debian.btf) > 50_000
    names = debian.pv_op_names()
    for op in ("irq.save_fl", "irq.irq_disable", "irq.irq_enable", "mmu.read_cr2", "mmu.write_cr3",
               "cpu.cpuid", "lock.queued_spin_unlock", "mmu.lazy_mode.enter"):
        assert op in names.values(), op
    # 84 slots of 8 bytes, numbered without holes, none named twice
    assert sorted(names) == list(range(84))
    assert len(set(names.values())) == 84
    by_name = {v: k for k, v in names.items()}
    # offsetof(struct paravirt_patch_template, irq.save_fl) / 8: the irq group follows the 30 cpu ops in 6.1
    assert by_name["irq.save_fl"] == 30 and by_name["mmu.read_cr2"] == 42
    template = debian.btf.find("paravirt_patch_template", btf.KIND_STRUCT)
    assert template is not None and debian.btf.size(template) == 84 * 8
    assert [m.name for m in debian.btf.members(template)] == ["cpu", "irq", "mmu", "lock"]
