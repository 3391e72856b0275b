"""vmlinux patch-site tables: on small ELFs assembled in the test, and on the Debian 6.1 kernel when cached.

The test ELF (``KERNEL_ASM``) has one or more sites of every table, with
sections named and placed like a vmlinux (``tests/unit/elfasm.py``). Expected
values come from the assembler's own symbols for each labelled site, never from
the code under test.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from framework.elf import cpufeatures
from framework.elf.vmlinux import (
    LAYOUTS,
    TABLES,
    Section,
    Site,
    Symbols,
    Vmlinux,
    _site,
    branch_length,
    branch_target,
    kernel_version,
    layout_for,
)
from framework.errors import ImageError, UnsupportedError
from tests.unit.elfasm import OWN_STATIC_CALL_SECTION_LDS, build_elf, incbin, sample_pv_btf

DEBIAN = Path("/root/.cache/patchscope/kernels/linux-image-6.1.0-56-amd64_6.1.192-2_amd64")

XENPV = 8 * 32 + 16        # X86_FEATURE_XENPV in 6.1
ALWAYS = 3 * 32 + 21       # X86_FEATURE_ALWAYS
UNNAMED = 8 * 32 + 31      # a hole in word 8
SPECTRE_V2 = 22 * 32 + 16  # X86_BUG(16) with NCAPINTS = 22

KERNEL_ASM = f"""
  .section .rodata,"a"
  .asciz "Linux version 6.1.0-test-amd64 (tester@example.org) #1 SMP PREEMPT_DYNAMIC"

  .data
  .balign 64
  .globl pv_ops
pv_ops: .fill 16, 8, 0
  .balign 16
  .globl key_a, key_b, __SCK__foo
key_a: .quad 1, 0
key_b: .quad 0, 0
__SCK__foo: .quad 0, 0

  .text
  .globl func_a
  .type func_a, @function
func_a:
  call __fentry__
pv1: call *pv_ops+16(%rip)
pv2: call *pv_ops+24(%rip)
alt1: call *pv_ops+32(%rip)
alt1_end:
rp1: call __x86_indirect_thunk_r11
rp2: jmp __x86_indirect_thunk_rax
rp3: .byte 0x2e
  call __x86_indirect_thunk_r11
rp4: jne __x86_indirect_thunk_rax
lk1: lock incl (%rdi)
jl1: .byte 0x66, 0x90
jl1_yes: nop
jl2: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00
jl2_yes: nop
jl3: jmp jl_target
sc1: call __SCT__foo
sc2: jmp __SCT__foo
alt2: .byte 0x90, 0x90, 0x90
alt3: .byte 0x90, 0x90
alt4: .byte 0x90
ret1: jmp __x86_return_thunk
odd: nop
  .size func_a, .-func_a

  .section .text.thunks,"ax"
  .globl __x86_indirect_thunk_rax, __x86_indirect_thunk_r11, __x86_return_thunk, __fentry__, __SCT__foo
  .type __x86_indirect_thunk_rax, @function
__x86_indirect_thunk_rax: jmp *%rax
  .type __x86_indirect_thunk_r11, @function
__x86_indirect_thunk_r11: jmp *%r11
  .type __x86_return_thunk, @function
  .size __x86_return_thunk, 2
__x86_return_thunk: ret
  int3
__fentry__: ret
__SCT__foo: ret
jl_target: ret

  .section .init.text,"ax"
  .globl init_fn
  .type init_fn, @function
init_fn:
  call __fentry__
pv3: call *pv_ops+56(%rip)
pv4: jmp *pv_ops+112(%rip)
ret2: jmp __x86_return_thunk
lk2: lock decl (%rsi)
  ret

  .section .parainstructions,"a"
  .balign 8
  .quad pv1
  .byte 2, 6
  .short 0
  .long 0
  .quad pv2
  .byte 3, 6
  .short 0
  .long 0
  .quad alt1
  .byte 4, 6
  .short 0
  .long 0
  .quad pv3
  .byte 7, 6
  .short 0
  .long 0
  .quad pv4
  .byte 14, 6
  .short 0
  .long 0

  .section .altinstructions,"a"
  .long alt1 - .
  .long rep1 - .
  .word {XENPV | 0x8000}
  .byte alt1_end - alt1
  .byte rep1_end - rep1
  .long alt2 - .
  .long rep2 - .
  .word {ALWAYS}
  .byte 3
  .byte rep2_end - rep2
  .long alt3 - .
  .long rep3 - .
  .word {UNNAMED}
  .byte 2
  .byte 0
  .long alt4 - .
  .long rep4 - .
  .word {SPECTRE_V2}
  .byte 1
  .byte 1

  .section .altinstr_replacement,"ax"
rep1: sti
rep1_end:
rep2: mfence
rep2_end:
rep3:
rep4: int3

  .section .retpoline_sites,"a"
  .long rp1 - .
  .long rp2 - .
  .long rp3 - .
  .long rp4 - .

  .section .return_sites,"a"
  .long ret1 - .
  .long ret2 - .
  .long odd - .

  .section .smp_locks,"a"
  .long lk1 - .
  .long lk2 - .

  .section __jump_table,"aw"
  .balign 8
  .long jl1 - .
  .long jl1_yes - .
  .quad key_a + 2 - .
  .long jl2 - .
  .long jl2_yes - .
  .quad key_a + 1 - .
  .long jl3 - .
  .long jl_target - .
  .quad key_b + 3 - .

  .section .static_call_sites,"a"
  .long sc1 - .
  .long __SCK__foo - .
  .long sc2 - .
  .long __SCK__foo + 1 - .

  .section __mcount_loc,"a"
  .quad func_a
  .quad 0
  .quad init_fn
"""


def kernel_asm() -> str:
    blob, _ = sample_pv_btf()
    return KERNEL_ASM + '  .section .BTF,"a"\n' + incbin(blob)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_elf(tmp_path_factory.mktemp("vmlinux"), kernel_asm())


@pytest.fixture(scope="module")
def sym(elf: Path) -> dict[str, int]:
    """Label -> address, from the assembler's symbol table (independent of the tables under test)."""
    syms = Symbols.from_elf(elf)
    names = ["pv_ops", "key_a", "key_b", "__SCK__foo", "func_a", "init_fn", "jl_target", "__fentry__",
             "__x86_indirect_thunk_rax", "__x86_indirect_thunk_r11", "__x86_return_thunk", "__SCT__foo",
             "_stext", "_sinittext"]
    names += [f"pv{i}" for i in range(1, 5)] + [f"alt{i}" for i in range(1, 5)] + [f"rep{i}" for i in range(1, 5)]
    names += [f"rp{i}" for i in range(1, 5)] + ["ret1", "ret2", "odd", "lk1", "lk2", "jl1", "jl2", "jl3",
                                                 "jl1_yes", "jl2_yes", "sc1", "sc2"]
    out = {}
    for n in names:
        addr = syms.address(n)
        assert addr is not None, n
        out[n] = addr
    return out


@pytest.fixture
def vm(elf: Path) -> Vmlinux:
    return Vmlinux(elf)


def raw(elf: Path, vm: Vmlinux, address: int, length: int) -> bytes:
    """Bytes at a VA straight from the file, via the section header (not via Vmlinux.read)."""
    for s in vm.sections.values():
        if s.alloc and not s.nobits and s.address <= address < s.end:
            with elf.open("rb") as f:
                f.seek(s.offset + address - s.address)
                return f.read(length)
    raise AssertionError(hex(address))


# ---- the test ELF, field by field


def test_sections_release_and_layout(vm: Vmlinux, sym: dict[str, int]) -> None:
    assert vm.release == "6.1.0-test-amd64" and vm.version == (6, 1) and vm.layout.name == "5.13-6.2"
    text = vm.sections[".text"]
    assert isinstance(text, Section) and text.address == 0xFFFFFFFF81000000 == sym["_stext"]
    assert text.executable and text.alloc and not text.nobits
    assert vm.sections[".init.text"].address == sym["_sinittext"] == 0xFFFFFFFF83000000
    assert vm.section_at(sym["pv3"]) == vm.sections[".init.text"]
    assert vm.section_at(0x10) is None
    assert {s.name for s in vm.text_sections()} >= {".text", ".init.text", ".altinstr_replacement"}
    assert vm.read(sym["pv1"], 2) == b"\xff\x15"
    with pytest.raises(ImageError, match="not inside one section"):
        vm.read(vm.sections[".text"].end - 2, 4)
    with pytest.raises(ImageError, match="not inside one section"):
        vm.read(0x1234, 1)


def test_paravirt_sites(elf: Path, vm: Vmlinux, sym: dict[str, int]) -> None:
    sites = vm.sites("paravirt")
    assert [s.address for s in sites] == [sym["pv1"], sym["pv2"], sym["alt1"], sym["pv3"], sym["pv4"]]
    assert [s.slot for s in sites] == [2, 3, 4, 7, 14]
    assert [s.op for s in sites] == ["irq.save_fl", "irq.irq_disable", "irq.irq_enable", "mmu.read_cr2", None]
    assert [s.section for s in sites] == [".text"] * 3 + [".init.text"] * 2
    assert [s.index for s in sites] == list(range(5))
    for s in sites:
        assert s.table == "paravirt" and s.length == 6
        assert s.original == raw(elf, vm, s.address, 6)
        assert Vmlinux.pv_call_target(s) == sym["pv_ops"] + 8 * (s.slot or 0)
    assert sites[0].original[:2] == b"\xff\x15" and sites[4].original[:2] == b"\xff\x25"
    assert vm.pv_ops_address() == sym["pv_ops"]
    assert vm.pv_mismatches() == []
    assert any("slots [14]" in n for n in vm.notes)


def test_alternatives_sites(elf: Path, vm: Vmlinux, sym: dict[str, int]) -> None:
    sites = vm.sites("alternatives")
    assert [s.address for s in sites] == [sym[f"alt{i}"] for i in range(1, 5)]
    assert [s.feature for s in sites] == ["!X86_FEATURE_XENPV", "X86_FEATURE_ALWAYS", "X86_FEATURE_(8*32+31)",
                                          "X86_BUG_SPECTRE_V2"]
    assert [s.flags for s in sites] == [XENPV | 0x8000, ALWAYS, UNNAMED, SPECTRE_V2]
    assert [s.length for s in sites] == [6, 3, 2, 1]
    assert [s.replacement for s in sites] == [b"\xfb", b"\x0f\xae\xf0", b"", b"\xcc"]
    assert [s.replacement_address for s in sites] == [sym[f"rep{i}"] for i in range(1, 5)]
    assert [s.section for s in sites] == [".text"] * 4
    for s in sites:
        assert s.original == raw(elf, vm, s.address, s.length)
    assert sites[0].original == vm.sites("paravirt")[2].original      # the same call *pv_ops+32


def test_retpoline_and_return_sites(vm: Vmlinux, sym: dict[str, int]) -> None:
    rp = vm.sites("retpolines")
    assert [s.address for s in rp] == [sym[f"rp{i}"] for i in range(1, 5)]
    assert [s.length for s in rp] == [5, 5, 6, 6]
    assert [s.original[0] for s in rp] == [0xE8, 0xE9, 0x2E, 0x0F]
    assert [s.target for s in rp] == [sym["__x86_indirect_thunk_r11"], sym["__x86_indirect_thunk_rax"],
                                      sym["__x86_indirect_thunk_r11"], sym["__x86_indirect_thunk_rax"]]
    ret = vm.sites("returns")
    assert [s.address for s in ret] == [sym["ret1"], sym["ret2"], sym["odd"]]
    assert [s.length for s in ret] == [5, 5, 0]
    assert [s.section for s in ret] == [".text", ".init.text", ".text"]
    assert ret[0].target == ret[1].target == sym["__x86_return_thunk"] and ret[2].target is None
    assert ret[2].original == b""
    assert any("returns: 1 sites are not a direct" in n for n in vm.notes)


def test_smp_locks_drop_page_padding(vm: Vmlinux, sym: dict[str, int]) -> None:
    assert vm.sections[".smp_locks"].size == 0x1000       # 2 entries, padded to a page like the kernel's
    sites = vm.sites("smp_locks")
    assert [(s.address, s.length, s.original, s.section) for s in sites] == [
        (sym["lk1"], 1, b"\xf0", ".text"), (sym["lk2"], 1, b"\xf0", ".init.text")]
    assert any("1022 zero entries" in n for n in vm.notes)


def test_jump_labels(vm: Vmlinux, sym: dict[str, int]) -> None:
    sites = vm.sites("jump_labels")
    assert [s.address for s in sites] == [sym["jl1"], sym["jl2"], sym["jl3"]]
    assert [s.length for s in sites] == [2, 5, 5]
    assert [s.original for s in sites][:2] == [b"\x66\x90", b"\x0f\x1f\x44\x00\x00"]
    assert sites[2].original[0] == 0xE9
    assert [s.target for s in sites] == [sym["jl1_yes"], sym["jl2_yes"], sym["jl_target"]]
    assert [s.key for s in sites] == [sym["key_a"], sym["key_a"], sym["key_b"]]
    assert [s.flags for s in sites] == [2, 1, 3]


def test_static_calls_inside_rodata(vm: Vmlinux, sym: dict[str, int]) -> None:
    assert ".static_call_sites" not in vm.sections
    sites = vm.sites("static_calls")
    assert [(s.address, s.length, s.target, s.key, s.flags) for s in sites] == [
        (sym["sc1"], 5, sym["__SCK__foo"], sym["__SCK__foo"], 0), (sym["sc2"], 5, sym["__SCK__foo"],
                                                                    sym["__SCK__foo"], 1)]
    assert [s.original[0] for s in sites] == [0xE8, 0xE9]


def test_static_calls_in_a_section_of_their_own(tmp_path: Path, sym: dict[str, int]) -> None:
    elf = build_elf(tmp_path, kernel_asm(), script=OWN_STATIC_CALL_SECTION_LDS)
    with Vmlinux(elf) as vm:
        assert vm.sections[".static_call_sites"].size == 16
        sites = vm.sites("static_calls")
        assert [s.flags for s in sites] == [0, 1] and sites[0].original[0] == 0xE8


def test_ftrace_skips_zero_entries(vm: Vmlinux, sym: dict[str, int]) -> None:
    sites = vm.sites("ftrace")
    assert [(s.index, s.address, s.length, s.section) for s in sites] == [
        (0, sym["func_a"], 5, ".text"), (2, sym["init_fn"], 5, ".init.text")]
    assert all(s.original[0] == 0xE8 for s in sites)
    assert any("ftrace: 1 zero entries" in n for n in vm.notes)


def test_all_sites_and_json(vm: Vmlinux) -> None:
    got = vm.all_sites()
    assert list(got) == list(TABLES)
    assert {t: len(v) for t, v in got.items()} == {"paravirt": 5, "alternatives": 4, "retpolines": 4, "returns": 3,
                                                   "smp_locks": 2, "jump_labels": 3, "static_calls": 2, "ftrace": 2,
                                                   "call_sites": 0, "ibt_endbr_seal": 0, "runtime_consts": 0}
    alt = got["alternatives"][0].to_json()
    assert alt["address"] == f"{got['alternatives'][0].address:#x}" and alt["replacement"] == "fb"
    assert alt["feature"] == "!X86_FEATURE_XENPV" and alt["flags"] == XENPV | 0x8000
    assert json.loads(json.dumps(alt)) == alt
    pv = got["paravirt"][0].to_json()
    assert pv["original"] == got["paravirt"][0].original.hex() and pv["op"] == "irq.save_fl" and pv["slot"] == 2
    assert set(pv) == {f.name for f in fields(Site)} - {"module"}     # "module": only for a module's sites


def test_without_symbols_the_symbol_bounded_tables_are_skipped(tmp_path: Path, sym: dict[str, int]) -> None:
    elf = build_elf(tmp_path, kernel_asm(), strip_symbols=True)
    with Vmlinux(elf) as vm:
        assert len(vm.symbols) == 0
        got = vm.all_sites()
        assert set(got) == {"paravirt", "alternatives", "retpolines", "returns", "smp_locks", "call_sites",
                            "ibt_endbr_seal", "runtime_consts"}
        for table, first in (("jump_labels", "__start___jump_table"), ("static_calls", "__start_static_call_sites"),
                             ("ftrace", "__start_mcount_loc")):
            assert f"{table}: no symbols for {first}; table skipped" in " ".join(vm.notes)
            with pytest.raises(ImageError, match="no symbols"):
                vm.sites(table)
        # pv_ops is recovered from the sites themselves: every one is call *pv_ops+8*type(%rip)
        assert vm.pv_ops_address() == sym["pv_ops"]
        assert any("inferred from 5 of 5" in n for n in vm.notes)


def test_given_symbols_and_release_win(elf: Path, tmp_path: Path, sym: dict[str, int]) -> None:
    stripped = build_elf(tmp_path, kernel_asm(), strip_symbols=True)
    with Vmlinux(stripped, symbols=Symbols.from_elf(elf), release="6.1.0-9-amd64") as vm:
        assert vm.release == "6.1.0-9-amd64"
        assert [s.address for s in vm.sites("jump_labels")] == [sym["jl1"], sym["jl2"], sym["jl3"]]


def test_sites_are_cached_and_site_fast_path_equals_the_constructor(vm: Vmlinux) -> None:
    assert vm.sites("paravirt") is vm.sites("paravirt")
    for s in vm.all_sites()["alternatives"] + vm.sites("jump_labels"):
        assert Site(**{f.name: getattr(s, f.name) for f in fields(Site)}) == s
    plain = _site(table="smp_locks", index=0, address=1, length=1, original=b"\xf0", section=".text")
    assert plain == Site("smp_locks", 0, 1, 1, b"\xf0", ".text") and plain.op is None and plain.key is None


# ---- errors: a layout that does not fit is an error, not a guess


BAD_ASM = """
  .text
_start: nop
  nop
  .section .altinstructions,"a"
  .long _start - .
  .long _start - .
  .word 1
  .byte 1
  .byte 1
  .byte 0
"""


def test_table_size_not_a_multiple_of_the_entry(tmp_path: Path) -> None:
    with Vmlinux(build_elf(tmp_path, BAD_ASM), release="6.1.0") as vm, pytest.raises(ImageError) as err:
        vm.sites("alternatives")
    msg = str(err.value)
    assert "section .altinstructions is 13 bytes" in msg and "12-byte entry" in msg and "\n" not in msg


def test_the_release_picks_the_layout(tmp_path: Path) -> None:
    elf = build_elf(tmp_path, BAD_ASM)
    with Vmlinux(elf, release="5.10.0-30-amd64") as vm:      # 13-byte alt_instr with padlen: fits
        assert vm.layout.alt_entry == 13
        (site,) = vm.sites("alternatives")
        assert site.length == 1 and site.feature == "X86_FEATURE_(0*32+1)"   # no 6.1 names for a 5.10 kernel
    with Vmlinux(elf, release="6.5.0") as vm, pytest.raises(ImageError, match="14-byte entry of the 6.3-6.7 layout"):
        vm.sites("alternatives")
    with Vmlinux(elf) as vm:      # no banner, no release: says it assumes 6.1
        assert vm.version == (6, 1) and any("assuming 6.1" in n for n in vm.notes)


def test_entries_pointing_outside_the_image(tmp_path: Path) -> None:
    asm = "  .text\n_start: ret\n  .section .parainstructions,\"a\"\n  .quad 0x1000\n  .byte 1, 6\n  .fill 6, 1, 0\n"
    vm = Vmlinux(build_elf(tmp_path, asm), release="6.1.0")
    with pytest.raises(ImageError, match="paravirt entry 0 points at 0x1000"):
        vm.sites("paravirt")


def test_missing_tables_are_empty_with_a_note(tmp_path: Path) -> None:
    with Vmlinux(build_elf(tmp_path, "  .text\n_start: ret\n  .globl __start_mcount_loc\n"), release="6.1.0") as vm:
        assert vm.sites("retpolines") == [] and vm.sites("paravirt") == []
        assert "retpolines: no .retpoline_sites in this kernel; table empty" in vm.notes
    with Vmlinux(build_elf(tmp_path, "  .text\n_start: ret\n"), release="6.9.0") as vm:
        assert vm.layout.pv_entry is None and vm.sites("paravirt") == []
        assert any("no .parainstructions" in n for n in vm.notes)


def test_not_an_elf(tmp_path: Path) -> None:
    bad = tmp_path / "bzImage"
    bad.write_bytes(b"MZ" + b"\0" * 100)
    with pytest.raises(ImageError, match="not an ELF file"):
        Vmlinux(bad)
    with pytest.raises(ImageError, match="cannot open"):
        Vmlinux(tmp_path / "missing")
    with pytest.raises(ImageError, match="unknown patch table"):
        Vmlinux(build_elf(tmp_path, "  .text\n_start: ret\n"), release="6.1").sites("kprobes")


def test_layouts_by_release() -> None:
    assert kernel_version("6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP") == (6, 1)
    assert kernel_version("Linux version 5.10.0-30-amd64") == (5, 10)
    assert layout_for("6.1.0-56-amd64").alt_entry == 12 and layout_for("6.1.0-56-amd64").pv_entry == 16
    assert layout_for("5.2.0").alt_entry == 13 and layout_for("5.12.19").alt_entry == 13
    assert layout_for("5.13.0").alt_entry == 12 and layout_for("6.2.16").alt_entry == 12
    assert layout_for("6.3.0").alt_entry == 14 and layout_for("6.7.12").pv_entry == 16
    assert layout_for("6.8.0").pv_entry is None and layout_for("6.12.9-amd64").alt_not == 1 << 16
    for lay in LAYOUTS:
        assert struct.calcsize(lay.alt_format) == lay.alt_entry
        assert lay.pv_entry is None or struct.calcsize(lay.pv_format) == lay.pv_entry
    with pytest.raises(UnsupportedError, match="from 5.2 on"):
        layout_for("4.19.0-20-amd64")
    with pytest.raises(ImageError, match="cannot tell the kernel version"):
        layout_for("vmlinuz")


def test_branch_decoding() -> None:
    assert branch_length(b"\xe8\0\0\0\0") == 5 and branch_length(b"\x2e\xe8\0\0\0\0") == 6
    assert branch_length(b"\x0f\x85\0\0\0\0") == 6 and branch_length(b"\xeb\x05") == 2
    assert branch_length(b"\xc3") == 1 and branch_length(b"\x90") is None and branch_length(b"\xe8\0") is None
    assert branch_target(0x1000, b"\xe9\xfb\xff\xff\xff") == 0x1000
    assert branch_target(0x1000, b"\x2e\xe8\x10\0\0\0") == 0x1016
    assert branch_target(0x1000, b"\x74\xfe") == 0x1000 and branch_target(0x1000, b"\xc3") is None


# ---- symbols


def test_symbols_resolve_and_format(elf: Path, sym: dict[str, int]) -> None:
    syms = Symbols.from_elf(elf)
    assert len(syms) > 30 and syms.address("nope") is None
    assert syms.format(sym["func_a"]) == "func_a"
    assert syms.resolve(sym["pv1"]) == ("pv1", 0)
    assert syms.format(sym["pv1"] + 2) == "pv1+0x2"
    # a sized symbol covers its size only; an unsized one up to the next symbol
    assert syms.format(sym["__x86_return_thunk"] + 1) == "__x86_return_thunk+0x1"
    assert syms.resolve(0x10) is None and syms.format(0x10) == "0x10"
    assert syms.format(0xFFFFFFFF81000000) == "func_a"            # _stext, func_a: the function wins
    empty = Symbols.from_elf(build_elf(elf.parent, "  .text\n_start: ret\n", name="stripped", strip_symbols=True))
    assert len(empty) == 0 and not empty and empty.resolve(0xFFFFFFFF81000000) is None


def test_symbols_from_dict_and_sized_cover() -> None:
    syms = Symbols.from_dict({"a": 0x1000, "b": 0x1010, "__stop_x": 0x1010})
    assert syms.format(0x100F) == "a+0xf" and syms.format(0x1010) == "b" and syms.format(0xFFF) == "0xfff"
    assert syms.address("__stop_x") == 0x1010


def test_cpufeature_names() -> None:
    assert cpufeatures.format_feature(XENPV) == "X86_FEATURE_XENPV"
    assert cpufeatures.format_feature(XENPV, inverted=True) == "!X86_FEATURE_XENPV"
    assert cpufeatures.format_feature(UNNAMED) == "X86_FEATURE_(8*32+31)"
    assert cpufeatures.format_feature(SPECTRE_V2) == "X86_BUG_SPECTRE_V2"
    assert cpufeatures.format_feature(22 * 32 + 32 + 5) == "X86_BUG_ITS"           # X86_BUG(1*32 + 5)
    assert cpufeatures.format_feature(22 * 32 + 40) == "X86_BUG_(1*32+8)"
    assert cpufeatures.format_feature(XENPV, table=None) == "X86_FEATURE_(8*32+16)"
    assert cpufeatures.feature_number("XENPV") == XENPV == cpufeatures.feature_number("X86_FEATURE_XENPV")
    assert cpufeatures.feature_number("X86_BUG_SPECTRE_V2") == SPECTRE_V2
    assert cpufeatures.NCAPINTS_6_1 == 22 and cpufeatures.NBUGINTS_6_1 == 2
    assert cpufeatures.format_feature(9 * 32 + 0) == "X86_FEATURE_FSGSBASE"
    assert cpufeatures.format_feature(18 * 32 + 26) == "X86_FEATURE_SPEC_CTRL"
    assert cpufeatures.feature_name(3 * 32 + 5) is None                              # K7: commented out in 6.1


# ---- the Debian 6.1.0-56 kernel


@pytest.fixture(scope="module")
def debian() -> tuple[Vmlinux, Symbols]:
    if not (DEBIAN / "vmlinux").is_file() or not (DEBIAN / "vmlinux.syms").is_file():
        pytest.skip(f"the Debian 6.1.0-56 kernel is not cached at {DEBIAN} (patchscope fetches it on first boot)")
    syms = Symbols.from_elf(DEBIAN / "vmlinux.syms")
    return Vmlinux(DEBIAN / "vmlinux", symbols=syms), syms


def test_debian_counts_match_section_sizes(debian: tuple[Vmlinux, Symbols]) -> None:
    vm, syms = debian
    assert vm.release.startswith("6.1.0-") and vm.layout.name == "5.13-6.2"
    got = vm.all_sites()
    assert set(got) == set(TABLES) and vm.notes == [
        ("layouts: from BTF: struct alt_instr 12 B, struct paravirt_patch_site 16 B, struct jump_entry 16 B, "
         "struct static_call_site 8 B"),
        "features: names from the kernel's x86_cap_flags, synthetic ones from the 6.1 table (NCAPINTS 22)",
        "call_sites: no .call_sites in this kernel; table empty",
        "ibt_endbr_seal: no .ibt_endbr_seal in this kernel; table empty",
        "smp_locks: 578 zero entries of page padding at the end of section .smp_locks dropped",
        "runtime_consts: no runtime_ptr_*/runtime_shift_* sections in this kernel; table empty"]
    assert vm.layout.source == "from BTF"
    size = {name: vm.sections[name].size for name in (".parainstructions", ".altinstructions", ".retpoline_sites",
                                                      ".return_sites", ".smp_locks")}
    assert len(got["paravirt"]) == size[".parainstructions"] // 16 == 3848
    assert len(got["alternatives"]) == size[".altinstructions"] // 12 == 4667
    assert len(got["retpolines"]) == size[".retpoline_sites"] // 4
    assert len(got["returns"]) == size[".return_sites"] // 4
    assert len(got["smp_locks"]) == size[".smp_locks"] // 4 - 578
    for table, (lo, hi), entry in (("jump_labels", ("__start___jump_table", "__stop___jump_table"), 16),
                                   ("static_calls", ("__start_static_call_sites", "__stop_static_call_sites"), 8),
                                   ("ftrace", ("__start_mcount_loc", "__stop_mcount_loc"), 8)):
        start, stop = syms.address(lo), syms.address(hi)
        assert start is not None and stop is not None
        assert len(got[table]) == (stop - start) // entry > 1000, table
    texts = {s.name for s in vm.text_sections()}
    for table, sites in got.items():
        assert all(s.section in texts for s in sites), table
        assert [s.index for s in sites][:3] == ([0, 1, 2] if sites else []), table
    assert {s.section for s in got["alternatives"]} == {".text", ".init.text"}


def test_debian_pv_sites(debian: tuple[Vmlinux, Symbols]) -> None:
    vm, syms = debian
    sites = vm.sites("paravirt")
    assert all(s.length == 6 for s in sites)
    names = {s.op for s in sites}
    assert {"irq.save_fl", "irq.irq_disable", "irq.irq_enable", "mmu.read_cr2"} <= names
    assert None not in names                                  # BTF names every slot used
    pv_ops = syms.address("pv_ops")
    assert pv_ops is not None and vm.pv_ops_address() == pv_ops
    wrong = [s for s in sites if Vmlinux.pv_call_target(s) != pv_ops + 8 * (s.slot or 0)]
    assert wrong == []                                        # every one is ff 15 -> pv_ops + 8*type
    assert Counter(s.original[:2] for s in sites) == {b"\xff\x15": 3848}
    assert vm.pv_mismatches() == []


def test_debian_alternatives_and_others(debian: tuple[Vmlinux, Symbols]) -> None:
    vm, syms = debian
    alts = vm.sites("alternatives")
    feats = Counter(s.feature for s in alts)
    assert feats["!X86_FEATURE_XENPV"] > 1000 and feats["X86_FEATURE_ALWAYS"] > 100
    assert not any(f.startswith(("X86_FEATURE_(", "X86_BUG_(")) for f in feats if f), feats
    assert all(s.replacement is not None and s.replacement_address is not None
               and vm.section_at(s.replacement_address) == vm.sections[".altinstr_replacement"] for s in alts)
    assert {s.length for s in vm.sites("retpolines")} == {5, 6}
    thunks = {syms.format(s.target) for s in vm.sites("retpolines") if s.target is not None}
    assert "__x86_indirect_thunk_r11" in thunks
    assert all(s.length == 5 and s.original[0] == 0xE9 for s in vm.sites("returns"))
    assert {syms.format(s.target) for s in vm.sites("returns") if s.target is not None} == {"__x86_return_thunk"}
    assert {s.original for s in vm.sites("smp_locks")} == {b"\xf0"}
    assert {s.length for s in vm.sites("jump_labels")} == {2, 5}
    assert all(syms.format(s.key or 0).startswith("__SCK__") for s in vm.sites("static_calls"))
    assert all(s.original[0] == 0xE8 for s in vm.sites("ftrace"))


def test_debian_symbols(debian: tuple[Vmlinux, Symbols]) -> None:
    _, syms = debian
    assert len(syms) > 80_000
    assert syms.address("text_poke_early") == 0xFFFFFFFF8103BE50
    assert syms.format(0xFFFFFFFF8103BE50) == "text_poke_early"
    assert syms.format(0xFFFFFFFF8103BE50 + 0x1D) == "text_poke_early+0x1d"
    assert syms.format(0xFFFFFFFF81000000) == "startup_64"


def test_debian_load_time(debian: tuple[Vmlinux, Symbols]) -> None:
    """Cold parse of every table and of the symbol table: generous bounds, a regression guard (typ. 0.5 s, 0.2 s)."""
    t0 = time.perf_counter()
    syms = Symbols.from_elf(DEBIAN / "vmlinux.syms")
    syms.resolve(0)
    t1 = time.perf_counter()
    with Vmlinux(DEBIAN / "vmlinux", symbols=syms) as vm:
        vm.all_sites()
    t2 = time.perf_counter()
    assert t1 - t0 < 2.0 and t2 - t1 < 5.0, (t1 - t0, t2 - t1)


ORC_ASM = """
  .section .rodata
  .ascii "Linux version 6.1.0-56-amd64 (t@t) #1 SMP\\0"
  .text
  .globl orc_fn
orc_fn:
  pushf
orc_mid:
  pop %rax
orc_end:
  ret
  .section .orc_unwind_ip,"a"
  .long orc_fn - .
  .long orc_mid - .
  .long orc_end - .
  .section .orc_unwind,"a"
  .short 8, 0, 0x5      # sp:sp+8 type:call (6.1: sp_reg 5 in bits 0-3, bp_reg 0, type 0)
  .short 16, 0, 0x5     # after pushf
  .short 8, 0, 0x5
"""


def test_the_orc_table_of_a_linked_vmlinux_is_read_at_its_addresses(tmp_path: Path) -> None:
    path = build_elf(tmp_path, ORC_ASM)
    vm = Vmlinux(path)
    table = vm.orc
    fn = vm.symbols.address("orc_fn")
    assert fn is not None and len(table) == 3
    got = table.lookup(fn + 1)
    assert got is not None and got[0] == fn + 1 and (got[1].sp_offset, got[1].sp_reg, got[1].type) == (16, 5, "call")
    assert table.lookup(fn + 5)[1].sp_offset == 8      # type: ignore[index]  (ret, and beyond: the last entry)
    assert any("orc: no BTF struct orc_entry" in n for n in vm.notes)


def test_a_kernel_without_orc_data_is_refused_in_one_line(vm: Vmlinux) -> None:
    with pytest.raises(ImageError, match=r"no \.orc_unwind_ip/\.orc_unwind sections: .*CONFIG_UNWINDER_ORC=y"):
        _ = vm.orc
