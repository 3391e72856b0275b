"""framework.analysis.sites: objdump-style disassembly, byte diffs, captures, and the site/text comparison.

Everything here is pure: byte strings written out by hand (with the encoding
spelled in a comment), ``Site`` objects built directly, and a fake 256-byte
text region. Expected values are computed by hand or by a naive loop, never by
the code under test.
"""

from __future__ import annotations

import random

import pytest

from framework.analysis.sites import (
    STATES,
    Capture,
    Comparison,
    Insn,
    Oversize,
    SiteState,
    TextChange,
    changed_ranges,
    compare,
    disassemble,
    insns_text,
    normalize_insns,
)
from framework.elf.vmlinux import Site, Symbols

BASE = 0xFFFFFFFF81000000
MASK = (1 << 64) - 1
PV_OPS = BASE + 0x10000


def rel32(value: int) -> bytes:
    return value.to_bytes(4, "little", signed=True)


def texts(code: bytes, address: int = BASE, symbols: Symbols | None = None) -> list[str]:
    return [i.text for i in disassemble(code, address, symbols)]


# --------------------------------------------------------------------------- disassemble


@pytest.mark.parametrize(("code", "expected"), [
    (b"\x9c\x58", ["pushf", "pop %rax"]),                 # pushfq; popq %rax
    (b"\xfa", ["cli"]),
    (b"\xfb", ["sti"]),
    (b"\x0f\x20\xd0", ["mov %cr2,%rax"]),                 # movq %cr2, %rax
    (b"\x0f\x22\xd8", ["mov %rax,%cr3"]),
    (b"\x48\x89\xc7", ["mov %rax,%rdi"]),                 # movq %rax, %rdi
    (b"\x9d", ["popf"]),
    (b"\xc3\xcc", ["ret", "int3"]),                       # retq
    (b"\x0f\x0b", ["ud2"]),
    (b"\x0f\x01\xcb", ["stac"]),
])
def test_disassemble_spells_like_objdump(code: bytes, expected: list[str]) -> None:
    assert texts(code) == expected


def test_disassemble_addresses_and_lengths() -> None:
    insns = disassemble(b"\x9c\x58\x0f\x20\xd0", BASE)
    assert [(i.address, i.length, i.target) for i in insns] == [(BASE, 1, None), (BASE + 1, 1, None),
                                                                (BASE + 2, 3, None)]


def test_call_names_its_target_with_symbols() -> None:
    target = BASE + 0x2000
    symbols = Symbols.from_dict({"xen_save_fl_direct": target, "other": BASE + 0x3000})
    code = b"\xe8" + rel32(target - (BASE + 5))
    insns = disassemble(code, BASE, symbols)
    assert [i.text for i in insns] == ["call xen_save_fl_direct"]
    assert insns[0].target == target
    # Into the middle of a symbol: name+offset.
    code = b"\xe8" + rel32(target + 0x14 - (BASE + 5))
    assert texts(code, BASE, symbols) == ["call xen_save_fl_direct+0x14"]


def test_call_without_symbols_gives_the_address() -> None:
    target = BASE + 0x1234
    insns = disassemble(b"\xe8" + rel32(target - (BASE + 5)), BASE)
    assert [i.text for i in insns] == [f"call {target:#x}"]
    assert insns[0].target == target


def test_jmp_targets() -> None:
    symbols = Symbols.from_dict({"dest": BASE + 0x100})
    # e9 rel32 (5-byte fast path) and eb rel8 (general path)
    assert texts(b"\xe9" + rel32(0x100 - 5), BASE, symbols) == ["jmp dest"]
    assert texts(b"\xeb\x05", BASE) == [f"jmp {BASE + 7:#x}"]
    assert texts(b"\xeb\x05", BASE + 0x10) == [f"jmp {BASE + 0x17:#x}"]
    insns = disassemble(b"\xeb\xfe", BASE + 0x40)          # jmp . (to itself)
    assert insns[0].target == BASE + 0x40


def test_rip_relative_operand_names_the_absolute_address() -> None:
    symbols = Symbols.from_dict({"pv_ops": PV_OPS})
    code = b"\xff\x15" + rel32(PV_OPS + 0x18 - (BASE + 6))      # call *disp32(%rip)
    insns = disassemble(code, BASE, symbols)
    assert [i.text for i in insns] == ["call *pv_ops+0x18(%rip)"]
    assert insns[0].target == PV_OPS + 0x18
    assert texts(code, BASE) == [f"call *{PV_OPS + 0x18:#x}(%rip)"]
    # The same bytes one page further on reach one page further on (decoding is memoised).
    assert texts(code, BASE + 0x1000) == [f"call *{PV_OPS + 0x1018:#x}(%rip)"]
    # After another instruction, and with a negative displacement.
    code = b"\x9c\xff\x15" + rel32(-0x20)
    assert texts(code, BASE + 0x100) == ["pushf", f"call *{BASE + 0x100 + 7 - 0x20:#x}(%rip)"]


def test_six_byte_call_then_nop() -> None:
    symbols = Symbols.from_dict({"native_load_tr_desc": BASE + 0x500})
    code = b"\xe8" + rel32(0x500 - 5) + b"\x90"
    insns = disassemble(code, BASE, symbols)
    assert [(i.address, i.length, i.text) for i in insns] == [
        (BASE, 5, "call native_load_tr_desc"), (BASE + 5, 1, "nop")]
    assert insns_text(insns) == "call native_load_tr_desc"


@pytest.mark.parametrize("address", [BASE, BASE + 0x123457, 0x10, 0x7FFF0000, MASK - 0x20])
@pytest.mark.parametrize("disp", [0, 5, -5, -0x40, 0x7FFFFFFF, -0x80000000, 0x1234])
@pytest.mark.parametrize("opcode", [0xE8, 0xE9])
def test_rel32_fast_path_matches_general_path(opcode: int, disp: int, address: int) -> None:
    fast = disassemble(bytes([opcode]) + rel32(disp), address)
    # With a trailing NOP the same instruction goes through capstone.
    general = disassemble(bytes([opcode]) + rel32(disp) + b"\x90", address)
    assert len(fast) == 1 and len(general) == 2
    assert (fast[0].text, fast[0].target, fast[0].length) == (general[0].text, general[0].target, general[0].length)
    assert fast[0].target == (address + 5 + disp) & MASK
    assert fast[0].text == ("call " if opcode == 0xE8 else "jmp ") + hex((address + 5 + disp) & MASK)


def test_rel32_target_below_the_site_named() -> None:
    symbols = Symbols.from_dict({"low": BASE, "site_fn": BASE + 0x800})
    fast = disassemble(b"\xe8" + rel32(-0x805), BASE + 0x800, symbols)
    general = disassemble(b"\xe8" + rel32(-0x805) + b"\x90", BASE + 0x800, symbols)
    assert fast[0].text == general[0].text == "call low"


def test_undecodable_bytes_are_bad_one_byte_each() -> None:
    # 0x06 (push %es) does not exist in 64-bit mode.
    insns = disassemble(b"\x9c\x06\x06\x58", BASE)
    assert [(i.address, i.length, i.text) for i in insns] == [
        (BASE, 1, "pushf"), (BASE + 1, 1, "(bad)"), (BASE + 2, 1, "(bad)"), (BASE + 3, 1, "pop %rax")]
    assert texts(b"\x06") == ["(bad)"]
    assert texts(b"") == []


def test_truncated_instruction_is_bad_then_resynchronises() -> None:
    # e8 with two displacement bytes: the e8 is (bad), decoding goes on at the next byte.
    insns = disassemble(b"\xe8\x01\x02", BASE)
    assert (insns[0].address, insns[0].length, insns[0].text) == (BASE, 1, "(bad)")
    assert sum(i.length for i in insns) == 3


def test_disassembly_covers_every_byte_exactly_once() -> None:
    rng = random.Random(7)
    for _ in range(40):
        code = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 24)))
        insns = disassemble(code, BASE)
        assert [i.address for i in insns] == [BASE + sum(j.length for j in insns[:k]) for k in range(len(insns))]
        assert sum(i.length for i in insns) == len(code), code.hex()


@pytest.mark.parametrize("code", [
    b"\xe8" + rel32(0x100),                  # fast path
    b"\xe8" + rel32(0x100) + b"\x90",        # general path
    b"\xeb\x10",                             # short jmp
])
def test_memoised_decoding_does_not_leak_targets(code: bytes) -> None:
    first = disassemble(code, BASE)
    second = disassemble(code, BASE + 0x1000)
    again = disassemble(code, BASE)
    assert first[0].target is not None
    assert second[0].target == first[0].target + 0x1000
    assert second[0].address == BASE + 0x1000
    assert first[0].text != second[0].text
    assert [(i.text, i.target, i.address) for i in again] == [(i.text, i.target, i.address) for i in first]


def test_memoised_decoding_does_not_leak_symbols() -> None:
    code = b"\xe8" + rel32(0x100 - 5)
    named = disassemble(code, BASE, Symbols.from_dict({"f": BASE + 0x100}))
    plain = disassemble(code, BASE)
    assert named[0].text == "call f"
    assert plain[0].text == f"call {BASE + 0x100:#x}"


def test_conditional_jump_target_is_the_real_address() -> None:
    assert texts(b"\x75\x05", BASE) == [f"jne {BASE + 7:#x}"]
    assert texts(b"\x75\x05", BASE + 0x100) == [f"jne {BASE + 0x107:#x}"]


def test_memory_and_register_operand_has_no_suffix() -> None:
    assert texts(b"\x48\x8b\x50\x08")[0].split(" ")[0] == "mov"           # mov 0x8(%rax),%rdx
    assert texts(b"\x48\x8d\x05\x10\x00\x00\x00")[0].split(" ")[0] == "lea"   # lea 0x10(%rip),%rax


def test_small_numbers_in_hex_like_objdump() -> None:
    assert texts(b"\x48\xc7\xc0\x01\x00\x00\x00") == ["mov $0x1,%rax"]
    assert texts(b"\x48\x83\xc0\x08") == ["add $0x8,%rax"]


# --------------------------------------------------------------------------- insns_text / normalize_insns


@pytest.mark.parametrize("nop", [
    b"\x90",                                        # nop
    b"\x66\x90",                                    # xchg %ax,%ax (objdump) / nop
    b"\x0f\x1f\x00",                                # nopl (%rax)
    b"\x0f\x1f\x44\x00\x00",                        # nopl 0x0(%rax,%rax,1)
    b"\x66\x0f\x1f\x44\x00\x00",                    # nopw 0x0(%rax,%rax,1)
    b"\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00",    # cs nopw 0x0(%rax,%rax,1)
])
def test_insns_text_drops_nops(nop: bytes) -> None:
    insns = disassemble(b"\x9c" + nop + b"\x58", BASE)
    assert len(insns) == 3 and insns[1].is_nop
    assert insns_text(insns) == "pushf; pop %rax"
    assert insns_text(disassemble(nop, BASE)) == ""
    kept = insns_text(insns, drop_nops=False)
    assert kept.startswith("pushf; ") and kept.endswith("; pop %rax") and kept.count(";") == 2


def test_is_nop_only_for_nops() -> None:
    assert not Insn(0, 1, "pushf", None).is_nop
    assert not Insn(0, 3, "mov %cr2,%rax", None).is_nop
    assert not Insn(0, 5, "call nop_func", None).is_nop
    assert not Insn(0, 2, "xchg %ax,%bx", None).is_nop
    assert Insn(0, 2, "xchg %ax,%ax", None).is_nop
    assert Insn(0, 5, "nopl 0x0(%rax,%rax,1)", None).is_nop


@pytest.mark.parametrize("written", [
    "pushf; pop %rax",
    "pushf ;pop %rax",
    "pushf;pop %rax",
    "  pushf  ;  pop   %rax  ",
    "pushf\npop %rax",
    "pushf\npop %rax\n",
    "pushf;\n pop %rax;",
])
def test_normalize_insns_same_spelling(written: str) -> None:
    assert normalize_insns(written) == "pushf; pop %rax"
    assert normalize_insns(written) == insns_text(disassemble(b"\x9c\x58", BASE))


def test_normalize_insns_operand_commas() -> None:
    live = insns_text(disassemble(b"\x0f\x20\xd0", BASE))
    assert live == "mov %cr2,%rax"
    assert normalize_insns("mov %cr2, %rax") == live
    assert normalize_insns("mov   %cr2 ,  %rax") == live
    assert normalize_insns("mov\t%cr2,%rax") == live
    assert normalize_insns("") == ""
    assert normalize_insns(" ; \n ") == ""


# --------------------------------------------------------------------------- changed_ranges


def naive_ranges(before: bytes, after: bytes, base: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    n = min(len(before), len(after))
    for i in range(n + 1):
        differs = i < n and before[i] != after[i]
        if differs and start is None:
            start = i
        elif not differs and start is not None:
            out.append((base + start, base + i))
            start = None
    return out


def test_changed_ranges_cases() -> None:
    data = bytes(range(64))

    def flip(*offsets: int) -> bytes:
        b = bytearray(data)
        for o in offsets:
            b[o] ^= 0xFF
        return bytes(b)

    assert changed_ranges(b"", b"", 0x1000) == []
    assert changed_ranges(data, data, 0x1000) == []
    assert changed_ranges(data, flip(10), 0x1000) == [(0x100A, 0x100B)]
    assert changed_ranges(data, flip(10, 11, 12), 0x1000) == [(0x100A, 0x100D)]
    assert changed_ranges(data, flip(10, 12), 0x1000) == [(0x100A, 0x100B), (0x100C, 0x100D)]
    assert changed_ranges(data, flip(0, 63), 0x1000) == [(0x1000, 0x1001), (0x103F, 0x1040)]
    assert changed_ranges(data, flip(*range(64)), 0) == [(0, 64)]
    # Over the common length only.
    assert changed_ranges(data, flip(5)[:6], 0) == [(5, 6)]
    assert changed_ranges(data + b"\x01\x02", data, 0) == []


def test_changed_ranges_random_against_naive() -> None:
    rng = random.Random(20240601)
    for trial in range(60):
        n = rng.choice([0, 1, 7, 33, 64, 65, 500, 4096])
        before = bytes(rng.getrandbits(8) for _ in range(n))
        after = bytearray(before)
        for _ in range(rng.randrange(0, 12)):
            if n:
                lo = rng.randrange(n)
                for i in range(lo, min(n, lo + rng.randrange(1, 6))):
                    after[i] = (after[i] + rng.randrange(1, 256)) % 256
        base = rng.choice([0, BASE, 0x1000])
        assert changed_ranges(before, bytes(after), base) == naive_ranges(before, bytes(after), base), trial


def test_changed_ranges_across_the_64k_chunk_boundary() -> None:
    n = (1 << 16) + 300
    before = bytes(n)
    after = bytearray(before)
    for i in (0, 1000, (1 << 16) - 2, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, n - 1):
        after[i] = 1
    got = changed_ranges(before, bytes(after), BASE)
    assert got == naive_ranges(before, bytes(after), BASE)
    assert (BASE + (1 << 16) - 2, BASE + (1 << 16) + 2) in got


# --------------------------------------------------------------------------- Capture


def test_capture_read() -> None:
    cap = Capture("booted", {0x1000: bytes(range(16)), 0x2000: b"\xaa" * 8})
    assert cap.read(0x1000, 4) == bytes([0, 1, 2, 3])
    assert cap.read(0x100C, 4) == bytes([12, 13, 14, 15])    # ends exactly at the region's end
    assert cap.read(0x2002, 3) == b"\xaa" * 3
    assert cap.read(0x100E, 4) is None                       # runs past the region
    assert cap.read(0x0FFE, 4) is None                       # starts before it
    assert cap.read(0x1010, 1) is None                       # just past the end
    assert cap.read(0x1800, 1) is None                       # between regions
    assert cap.read(0x100E, 0x1000) is None                  # from one region across the gap into the next


def test_capture_is_freed() -> None:
    cap = Capture("booted", {}, freed=((0x100, 0x200), (0x400, 0x401)))
    assert cap.is_freed(0x100) and cap.is_freed(0x1FF) and cap.is_freed(0x400)
    assert not cap.is_freed(0xFF) and not cap.is_freed(0x200) and not cap.is_freed(0x401)
    assert not Capture("x", {}).is_freed(0x100)


# --------------------------------------------------------------------------- compare

ELF = bytes((i * 37 + 11) % 256 for i in range(256))


def site(table: str, offset: int, length: int, index: int = 0, op: str | None = None, slot: int | None = None,
         original: bytes | None = None, section: str = ".text") -> Site:
    return Site(table=table, index=index, address=BASE + offset, length=length,
                original=ELF[offset:offset + length] if original is None else original,
                section=section, op=op, slot=slot)


def live_with(changes: dict[int, bytes], elf: bytes = ELF) -> bytes:
    live = bytearray(elf)
    for offset, data in changes.items():
        live[offset:offset + len(data)] = data
    return bytes(live)


def run(tables: dict[str, list[Site]], live: bytes, elf: bytes = ELF, *, symbols: Symbols | None = None,
        freed: tuple[tuple[int, int], ...] = (), pv_targets: dict[int, int] | None = None,
        extra_known: list[tuple[int, int]] | None = None, gap: int = 8) -> Comparison:
    cap = Capture("after-patching", {BASE: live}, freed=freed)
    return compare(tables, cap, {BASE: elf}, symbols, pv_targets, extra_known=extra_known or [], gap=gap)


def by_address(comp: Comparison) -> dict[int, SiteState]:
    return {st.site.address: st for states in comp.sites.values() for st in states}


def test_compare_states() -> None:
    patched = site("paravirt", 0x10, 6, index=0, op="irq.save_fl")
    same = site("paravirt", 0x20, 6, index=1, op="irq.irq_disable")
    init = site("alternatives", 0x88, 5, section=".init.text")
    unread = site("alternatives", 0x200, 5, index=1, original=b"\x90" * 5)
    live = live_with({0x10: b"\x9c\x58\x0f\x1f\x40\x00"})          # pushf; pop %rax; nopl 0x0(%rax)
    comp = run({"paravirt": [patched, same], "alternatives": [init, unread]}, live,
               freed=((BASE + 0x80, BASE + 0xA0),))
    states = by_address(comp)
    assert comp.capture == "after-patching"
    assert states[patched.address].state == "patched"
    assert states[patched.address].live == b"\x9c\x58\x0f\x1f\x40\x00"
    assert insns_text(states[patched.address].insns) == "pushf; pop %rax"
    assert states[same.address].state == "unchanged"
    assert states[same.address].live == ELF[0x20:0x26]
    assert states[init.address].state == "freed" and states[init.address].live is None
    assert states[init.address].insns == ()
    assert states[unread.address].state == "unread" and states[unread.address].live is None
    assert list(comp.sites) == ["paravirt", "alternatives"]
    assert [st.site for st in comp.sites["paravirt"]] == [patched, same]


def test_compare_names_sites_with_symbols() -> None:
    symbols = Symbols.from_dict({"func_a": BASE, "func_b": BASE + 0x80})
    s = site("paravirt", 0x90, 6, op="irq.save_fl")
    comp = run({"paravirt": [s]}, ELF, symbols=symbols)
    assert comp.sites["paravirt"][0].symbol == "func_b+0x10"
    assert run({"paravirt": [s]}, ELF).sites["paravirt"][0].symbol == hex(BASE + 0x90)


def test_unknown_change_outside_every_site() -> None:
    s = site("paravirt", 0x10, 6)
    live = live_with({0x10: b"\x9c\x58\x90\x90\x90\x90", 0x60: b"\x00\x00"})
    comp = run({"paravirt": [s]}, live, symbols=Symbols.from_dict({"f": BASE + 0x40}))
    assert comp.unknown_changes == (TextChange(BASE + 0x60, BASE + 0x62, "f+0x20", ELF[0x60:0x62], b"\x00\x00"),)
    assert comp.unknown_changes[0].to_json() == {
        "address": hex(BASE + 0x60), "length": 2, "symbol": "f+0x20",
        "before": ELF[0x60:0x62].hex(), "after": "0000"}


def test_changes_inside_sites_are_not_unknown() -> None:
    sites = [site("paravirt", 0x10, 6), site("alternatives", 0x16, 5)]
    live = live_with({0x10: b"\x90" * 11})
    comp = run({"paravirt": sites[:1], "alternatives": sites[1:]}, live)
    assert comp.unknown_changes == ()
    assert comp.oversized == ()
    assert all(st.state == "patched" for st in by_address(comp).values())


def test_unknown_changes_far_apart_stay_separate() -> None:
    live = live_with({0x40: b"\x00", 0x80: b"\x00"})
    comp = run({}, live)
    assert [(c.start - BASE, c.end - BASE) for c in comp.unknown_changes] == [(0x40, 0x41), (0x80, 0x81)]


def test_a_known_site_splits_unknown_changes_on_either_side() -> None:
    s = site("paravirt", 0x42, 2)
    live = live_with({0x40: b"\x00" * 6})       # 0x40-0x41 and 0x44-0x45 outside the site
    for gap in (1, 8):
        comp = run({"paravirt": [s]}, live, gap=gap)
        assert [(c.start - BASE, c.end - BASE) for c in comp.unknown_changes] == [(0x40, 0x42), (0x44, 0x46)]


def test_unknown_changes_merge_across_a_few_unchanged_bytes() -> None:
    live = live_with({0x60: b"\x00", 0x63: b"\x00"})       # 0x61-0x62 keep the ELF's bytes
    assert ELF[0x60] != 0 and ELF[0x63] != 0
    comp = run({}, live)
    assert [(c.start - BASE, c.end - BASE) for c in comp.unknown_changes] == [(0x60, 0x64)]


def test_unknown_changes_not_in_freed_or_extra_known_ranges() -> None:
    live = live_with({0x80: b"\xcc" * 16, 0xC0: b"\x00" * 8, 0xF0: b"\x00"})
    comp = run({}, live, freed=((BASE + 0x80, BASE + 0x90),), extra_known=[(BASE + 0xC0, BASE + 0xC8)])
    assert [(c.start - BASE, c.end - BASE) for c in comp.unknown_changes] == [(0xF0, 0xF1)]
    # Without them, both are reported.
    comp = run({}, live)
    assert [(c.start - BASE, c.end - BASE) for c in comp.unknown_changes] == [(0x80, 0x90), (0xC0, 0xC8),
                                                                               (0xF0, 0xF1)]


def test_compare_skips_regions_without_matching_elf_bytes() -> None:
    live = live_with({0x60: b"\x00"})
    cap = Capture("booted", {BASE: live})
    assert compare({}, cap, {}, None).unknown_changes == ()
    assert compare({}, cap, {BASE: ELF[:128]}, None).unknown_changes == ()


def test_oversized_patch() -> None:
    s = site("paravirt", 0xB0, 5, op="irq.save_fl")
    live = live_with({0xB0: b"\x00" * 7})            # two bytes past the site's end
    comp = run({"paravirt": [s]}, live)
    assert comp.oversized == (Oversize(comp.sites["paravirt"][0], 2),)
    assert comp.oversized[0].to_json()["extra_bytes"] == 2
    assert comp.oversized[0].to_json()["address"] == hex(BASE + 0xB0)


def test_not_oversized_when_the_next_bytes_are_another_site() -> None:
    first, second = site("paravirt", 0xC0, 5, index=0), site("paravirt", 0xC5, 5, index=1)
    live = live_with({0xC0: b"\x00" * 10})
    comp = run({"paravirt": [first, second]}, live)
    assert comp.oversized == ()
    assert comp.unknown_changes == ()
    # extra_known ranges count as another site too.
    comp = run({"paravirt": [first]}, live_with({0xC0: b"\x00" * 8}), extra_known=[(BASE + 0xC5, BASE + 0xD0)])
    assert comp.oversized == ()


def test_not_oversized_when_the_bytes_past_the_end_are_unchanged() -> None:
    s = site("paravirt", 0xB0, 5)
    comp = run({"paravirt": [s]}, live_with({0xB0: b"\x00" * 5}))
    assert comp.oversized == ()
    comp = run({"paravirt": [s]}, live_with({0xB0: b"\x00" * 5, 0xB6: b"\x00"}))   # a gap of one byte
    assert comp.oversized == ()


def pv_site(offset: int, slot: int, index: int = 0, points_to: int | None = None) -> tuple[Site, bytes]:
    """A paravirt site holding ``call *disp32(%rip)`` through ``pv_ops[slot]`` (or ``points_to``)."""
    address = BASE + offset
    target = PV_OPS + 8 * slot if points_to is None else points_to
    code = b"\xff\x15" + rel32(target - (address + 6))
    return site("paravirt", offset, 6, index=index, op=f"op.n{slot}", slot=slot, original=code), code


def test_pv_indirect() -> None:
    still, code_a = pv_site(0x10, 3, index=0)
    patched, code_b = pv_site(0x20, 4, index=1)
    elsewhere, code_c = pv_site(0x30, 5, index=2, points_to=PV_OPS + 8 * 9)
    elf = live_with({0x10: code_a, 0x20: code_b, 0x30: code_c})
    live = live_with({0x20: b"\xfa\x0f\x1f\x40\x00\x90"}, elf)
    targets = {still.address: PV_OPS + 8 * 3, patched.address: PV_OPS + 8 * 4, elsewhere.address: PV_OPS + 8 * 5}
    comp = run({"paravirt": [still, patched, elsewhere]}, live, elf, pv_targets=targets)
    assert [st.site for st in comp.pv_indirect] == [still]
    assert texts(code_a, still.address) == [f"call *{PV_OPS + 24:#x}(%rip)"]
    # Without pv_targets nothing can be judged.
    assert run({"paravirt": [still]}, live, elf).pv_indirect == ()
    # Only the paravirt table is checked.
    assert run({"alternatives": [still]}, live, elf, pv_targets=targets).pv_indirect == ()


def test_pv_indirect_when_a_patch_writes_the_same_indirect_call() -> None:
    """A site whose live bytes differ from the ELF but still call through its pv_ops slot is reported."""
    s, code = pv_site(0x50, 2)
    elf = live_with({0x50: b"\x90" * 6})
    s = Site(**{**s.__dict__, "original": b"\x90" * 6})
    comp = run({"paravirt": [s]}, live_with({0x50: code}, elf), elf, pv_targets={s.address: PV_OPS + 16})
    assert comp.sites["paravirt"][0].state == "patched"
    assert [st.site for st in comp.pv_indirect] == [s]


# --------------------------------------------------------------------------- Comparison shapes


def test_counts_and_to_json() -> None:
    a = site("paravirt", 0x10, 6, index=0, op="irq.save_fl")
    b = site("paravirt", 0x20, 6, index=1, op="irq.irq_enable")
    c = site("alternatives", 0x88, 5, section=".init.text")
    d = site("ftrace", 0x200, 5, original=b"\x0f\x1f\x44\x00\x00")
    live = live_with({0x10: b"\x9c\x58\x90\x90\x90\x90", 0x60: b"\x00"})
    comp = run({"paravirt": [a, b], "alternatives": [c], "ftrace": [d]}, live, freed=((BASE + 0x80, BASE + 0x90),))
    assert comp.counts() == {
        "paravirt": {"sites": 2, "unchanged": 1, "patched": 1, "freed": 0, "unread": 0},
        "alternatives": {"sites": 1, "unchanged": 0, "patched": 0, "freed": 1, "unread": 0},
        "ftrace": {"sites": 1, "unchanged": 0, "patched": 0, "freed": 0, "unread": 1},
    }
    assert set(comp.counts()["paravirt"]) == {"sites", *STATES}
    data = comp.to_json()
    assert set(data) == {"capture", "counts", "notes", "unknown_changes", "oversized", "pv_indirect", "sites"}
    assert data["capture"] == "after-patching" and data["notes"] == []
    assert data["counts"] == comp.counts()
    assert data["unknown_changes"] == [comp.unknown_changes[0].to_json()]
    assert data["oversized"] == [] and data["pv_indirect"] == []
    sites = data["sites"]
    assert isinstance(sites, list) and len(sites) == 4
    first = sites[0]
    assert first["address"] == hex(BASE + 0x10) and first["op"] == "irq.save_fl" and first["table"] == "paravirt"
    assert first["state"] == "patched" and first["symbol"] == hex(BASE + 0x10)
    assert first["live"] == "9c5890909090"
    assert first["live_insns"] == ["pushf", "pop %rax", "nop", "nop", "nop", "nop"]
    assert first["original"] == ELF[0x10:0x16].hex()
    freed = sites[2]
    assert freed["state"] == "freed" and "live" not in freed and "live_insns" not in freed
    assert "sites" not in comp.to_json(with_sites=False)
    assert Comparison("x", {}, (), (), ()).counts() == {}
