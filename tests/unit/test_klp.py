"""The klp converter (framework/elf/klp.py) and seed 002's recorded boots.

Fixtures (tests/data/klp/, re-recorded by tests/data/klp/record.py): the
livepatch modules of configs/modules/livepatch-order as kbuild built them
against Debian's 6.1.0-56 headers (debug info stripped, not yet converted),
one per case a..e, and the console logs of a native and a Xen PV boot that
loaded every pair in both orders. A few tests assemble their own small
objects with ``as`` (skipped, with the reason, without binutils).
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from framework.elf import klp
from framework.errors import ImageError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "klp"
CASES = "abcde"


def fixture(case: str) -> bytes:
    return (DATA / f"psm_lp_{case}1.ko").read_bytes()


def elf(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def relocations(e: ELFFile, name: str) -> list[tuple[int, str, int]]:
    """(offset, symbol name, addend) of a relocation section, through pyelftools."""
    sec = e.get_section_by_name(name)
    assert isinstance(sec, RelocationSection), name
    symtab = e.get_section(sec["sh_link"])
    return [(r["r_offset"], symtab.get_symbol(r["r_info_sym"]).name, r["r_addend"]) for r in sec.iter_relocations()]


def text_bytes(e: ELFFile, offset: int, size: int) -> bytes:
    data: bytes = e.get_section_by_name(".text").data()
    return data[offset:offset + size]


# --- the rules ---

def test_the_rules_are_read_from_the_modules_notes() -> None:
    spec = klp.spec_of(fixture("b"))
    assert spec is not None
    rules = klp.parse_rules(spec)
    assert [r.text() for r in rules] == [
        "section=.text symbol=pv_ops object=psm_target_b1 symobject=vmlinux function=psm_lp_read",
        "section=.text symbol=psm_value object=psm_target_b1 function=psm_lp_read",
    ]
    assert rules[0].klp_section == ".klp.rela.psm_target_b1..text"
    assert rules[0].klp_symbol == ".klp.sym.vmlinux.pv_ops,0"


@pytest.mark.parametrize(("text", "message"), [
    ("section=.text symbol=x", "missing object"),
    ("section=.text symbol=x object=m colour=red", "unknown key 'colour'"),
    ("section=.text symbol=x object=m object=n", "object given twice"),
    ("section=.text symbol=x object=m sympos=first", "sympos=first is not a number"),
    ("section=.text symbol=x object=my.mod", "no dots"),
    ("section=.text symbol=a,b object=m", "no commas"),
    ("section=.text symbol", "is not key=value"),
])
def test_a_bad_rule_names_its_line(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=re.escape(message)) as err:
        klp.parse_rules(f"# comment\n\n{text}\n", "psm.ko")
    assert "psm.ko line 3" in str(err.value)


def test_a_module_without_rules_is_refused_unless_rules_are_given() -> None:
    src = "section=.text symbol=psm_value object=psm_target_d1 function=psm_lp_read"
    stripped = _without_notes(fixture("d"))
    assert klp.spec_of(stripped) is None
    with pytest.raises(ImageError, match="no .note.klp_convert section and no rules"):
        klp.convert(stripped)
    assert klp.convert(stripped, klp.parse_rules(src)).moved == {".klp.rela.psm_target_d1..text": 1}


def _without_notes(data: bytes) -> bytes:
    """The module with its .note.klp_convert section renamed (same length), so that it carries no rules."""
    out = bytearray(data)
    at = out.find(b".note.klp_convert\0")
    out[at:at + len(".note.klp_convert")] = b".note.klp_xxxxxxx"
    return bytes(out)


# --- converting the recorded modules ---

EXPECTED = {
    # case: {livepatch section: [(offset in .text, klp symbol, addend)]}
    "a": {".klp.rela.vmlinux..text": [(0x7, ".klp.sym.vmlinux.pv_ops,0", 0xEC)],
          ".klp.rela.psm_target_a1..text": [(0xE, ".klp.sym.psm_target_a1.psm_value,0", -4)]},
    "b": {".klp.rela.psm_target_b1..text": [(0x7, ".klp.sym.vmlinux.pv_ops,0", 0xEC),
                                            (0xE, ".klp.sym.psm_target_b1.psm_value,0", -4)]},
    "c": {".klp.rela.psm_target_c1..text": [(0x11, ".klp.sym.psm_target_c1.psm_ops,0", -4)]},
    "d": {".klp.rela.psm_target_d1..text": [(0x11, ".klp.sym.psm_target_d1.psm_value,0", -4)]},
    "e": {".klp.rela.psm_target_e1..text": [(0x11, ".klp.sym.psm_target_e1.psm_value,0", -4)]},
}


@pytest.mark.parametrize("case", CASES)
def test_conversion_moves_the_relocations_into_livepatch_sections(case: str) -> None:
    original = fixture(case)
    converted = klp.convert(original, name=f"psm_lp_{case}1.ko")
    before, after = elf(original), elf(converted.data)
    symtab_index = after.get_section_index(".symtab")
    text_index = after.get_section_index(".text")
    moved = 0
    for name, want in EXPECTED[case].items():
        sec = after.get_section_by_name(name)
        assert sec is not None, name
        assert sec["sh_type"] == "SHT_RELA"
        assert sec["sh_flags"] == klp.SHF_ALLOC | klp.SHF_INFO_LINK | klp.SHF_RELA_LIVEPATCH == 0x100042
        assert (sec["sh_link"], sec["sh_info"], sec["sh_entsize"]) == (symtab_index, text_index, 24)
        assert relocations(after, name) == want
        for offset, symbol, _ in want:
            assert text_bytes(after, offset, 4) == bytes(4)      # what the nonzero check needs
            sym = after.get_section_by_name(".symtab").get_symbol_by_name(symbol)
            assert sym is not None and len(sym) == 1
            assert sym[0]["st_shndx"] == klp.SHN_LIVEPATCH == 0xFF20
            assert sym[0]["st_value"] == 0
        moved += len(want)
        assert converted.moved[name] == len(want)
    assert len(relocations(after, ".rela.text")) == len(relocations(before, ".rela.text")) - moved
    # What the module referenced by name is now a livepatch symbol: nothing is left for simplify_symbols.
    undefined = {s.name for s in after.get_section_by_name(".symtab").iter_symbols()
                 if s["st_shndx"] == "SHN_UNDEF" and s.name}
    assert not undefined & {"psm_value", "psm_ops"}
    # Everything else is as it was.
    assert before.num_sections() + len(EXPECTED[case]) == after.num_sections()
    for sec in before.iter_sections():
        if sec.name in (".rela.text", ".symtab", ".strtab", ".shstrtab", ".text"):
            continue
        assert after.get_section_by_name(sec.name).data() == sec.data(), sec.name


@pytest.mark.parametrize("case", CASES)
def test_converting_twice_changes_nothing(case: str) -> None:
    once = klp.convert(fixture(case))
    twice = klp.convert(once.data)
    assert not twice.changed and twice.data == once.data
    assert len(twice.already) == len(once.rules)


def test_a_symbol_still_referenced_elsewhere_keeps_its_name_and_a_klp_symbol_is_added(tmp_path: Path) -> None:
    data = _assemble(tmp_path, """
        .text
        .globl f
        .type f, @function
    f:  call *ext+8(%rip)
        ret
        .size f, .-f
    g:  call *ext+16(%rip)
        ret
    """)
    rules = klp.parse_rules("section=.text symbol=ext object=mod function=f")
    converted = klp.convert(data, rules)
    after = elf(converted.data)
    assert relocations(after, ".klp.rela.mod..text") == [(2, ".klp.sym.mod.ext,0", 4)]
    assert relocations(after, ".rela.text") == [(9, "ext", 12)]
    symtab = after.get_section_by_name(".symtab")
    assert symtab.get_symbol_by_name("ext")[0]["st_shndx"] == "SHN_UNDEF"
    assert symtab.get_symbol_by_name(".klp.sym.mod.ext,0")[0]["st_shndx"] == 0xFF20
    assert converted.symbols == (".klp.sym.mod.ext,0",)


def test_a_symbol_whose_references_all_move_is_renamed_in_place(tmp_path: Path) -> None:
    data = _assemble(tmp_path, """
        .text
    f:  call *ext(%rip)
        call *ext(%rip)
    """)
    rules = (klp.Rule(".text", "ext", "vmlinux", "vmlinux", function=None),)
    converted = klp.convert(data, rules)
    assert converted.moved == {".klp.rela.vmlinux..text": 2}
    # The first and only klp name takes the old symbol's place: no undefined "ext" is left.
    names = [s.name for s in elf(converted.data).get_section_by_name(".symtab").iter_symbols()]
    assert "ext" not in names and names.count(".klp.sym.vmlinux.ext,0") == 1


def test_nonzero_bytes_are_zeroed_and_reported(tmp_path: Path) -> None:
    data = _assemble(tmp_path, """
        .text
    f:  .byte 0xe8
        .long ext - . + 0x1234
    """)
    # `as` resolves nothing for an undefined symbol; plant a nonzero value to see it cleared.
    out = bytearray(data)
    e = elf(data)
    text = e.get_section_by_name(".text")
    out[text["sh_offset"] + 1:text["sh_offset"] + 5] = b"\x11\x22\x33\x44"
    converted = klp.convert(bytes(out), klp.parse_rules("section=.text symbol=ext object=vmlinux"))
    assert converted.nonzero == ((".text", 1, b"\x11\x22\x33\x44"),)
    assert text_bytes(elf(converted.data), 1, 4) == bytes(4)


@pytest.mark.parametrize(("rule", "message"), [
    ("section=.nope symbol=ext object=m", "no section .nope"),
    ("section=.text symbol=nothere object=m", "selects no relocation: nothing in .text references nothere"),
    ("section=.text symbol=ext object=m function=nope", "0 functions named nope"),
])
def test_a_rule_that_selects_nothing_is_an_error(tmp_path: Path, rule: str, message: str) -> None:
    data = _assemble(tmp_path, ".text\nf: call *ext(%rip)\n")
    with pytest.raises(ImageError, match=re.escape(message)):
        klp.convert(data, klp.parse_rules(rule))


def test_two_rules_for_one_relocation_are_an_error(tmp_path: Path) -> None:
    data = _assemble(tmp_path, ".text\nf: call *ext(%rip)\n")
    rules = klp.parse_rules("section=.text symbol=ext object=m\nsection=.text symbol=ext object=vmlinux")
    with pytest.raises(ImageError, match="already selected by an earlier rule"):
        klp.convert(data, rules)


def test_not_a_module() -> None:
    with pytest.raises(ImageError, match="not an ELF file"):
        klp.convert(b"hello")
    vmlinux_like = bytearray(fixture("a"))
    struct.pack_into("<H", vmlinux_like, 16, 2)         # e_type ET_EXEC
    with pytest.raises(ImageError, match="not an x86-64 relocatable object"):
        klp.convert(bytes(vmlinux_like))


def _assemble(tmp_path: Path, source: str) -> bytes:
    if shutil.which("as") is None:
        pytest.skip("binutils (as) is not installed")
    (tmp_path / "t.s").write_text(source + "\n")
    subprocess.run(["as", "--64", "-o", str(tmp_path / "t.o"), str(tmp_path / "t.s")], check=True)
    return (tmp_path / "t.o").read_bytes()


# --- sites and hazards ---

def test_the_sites_of_a_module() -> None:
    sites = klp.module_sites(fixture("d"))
    assert [s.describe() for s in sites] == [
        "alternative (not feature 8*32+16) .text+0x5..+0xb",      # ALT_NOT(X86_FEATURE_XENPV): pushf; pop %rax
        "pv site (type 30) .text+0x5..+0xb",                      # irq.save_fl
        "alternative (feature 3*32+21) .text+0xe..+0x15",         # X86_FEATURE_ALWAYS: mov $0,%rax
    ]
    assert sites[2].replacement == (".altinstr_replacement", 2, 7)


@pytest.mark.parametrize(("case", "expected"), [
    ("a", [(False, "alternative", ".klp.rela.vmlinux..text"), (False, "paravirt", ".klp.rela.vmlinux..text")]),
    ("b", [(True, "alternative", ".klp.rela.psm_target_b1..text"), (True, "paravirt", ".klp.rela.psm_target_b1..text")]),
    ("c", [(True, "paravirt", ".klp.rela.psm_target_c1..text")]),
    ("d", [(True, "alternative", ".klp.rela.psm_target_d1..text")]),
    ("e", [(True, "alternative", ".klp.rela.psm_target_e1..text")]),
])
def test_hazards_name_each_livepatch_relocation_inside_a_site(case: str, expected: list[tuple[bool, str, str]]) -> None:
    assert klp.hazards(fixture(case)) == ()                  # before conversion: no livepatch relocations
    found = klp.hazards(klp.convert(fixture(case)).data)
    assert [(h.pending, h.site.kind, h.relocation.klp_section) for h in found] == expected
    # a's and b's relocation for psm_value (at +0xe) lies outside every site.
    assert all(h.relocation.offset != 0xE for h in found)


def test_a_hazard_describes_itself() -> None:
    (hazard,) = klp.hazards(klp.convert(fixture("d")).data)
    assert hazard.describe() == (
        "R_X86_64_PC32 .klp.sym.psm_target_d1.psm_value,0-0x4 at .text+0x11 (.klp.rela.psm_target_d1..text) writes "
        "into the alternative (feature 3*32+21) .text+0xe..+0x15: applied after the site was patched "
        "(module-specific: at the later of the two loads)")


# --- the recorded boots ---

DUMP = re.compile(r"(psm_lp_\w+): \+([0-9a-f]{2}): ((?:[0-9a-f]{2} ?)+)$")


def console(mode: str) -> list[str]:
    return [line.split(" | ", 1)[-1] for line in (DATA / f"console-{mode}.log").read_text().splitlines()]


def dumps(lines: list[str], module: str) -> list[bytes]:
    """Each dump of psm_lp_read() that ``module`` printed, in order, as bytes."""
    out: list[bytes] = []
    current = bytearray()
    for line in lines:
        m = DUMP.search(line)
        if m is None or m.group(1) != module:
            continue
        if m.group(2) == "00" and current:
            out.append(bytes(current))
            current = bytearray()
        current += bytes.fromhex(m.group(3))
    if current:
        out.append(bytes(current))
    return out


def after_command(lines: list[str], command: str, *, containing: bool = False, last: bool = False) -> list[str]:
    """The console lines between ``patchscope: run N: <command>`` (or a command containing it) and its exit
    line: of the first such command, or of the last."""
    runs = [i for i, line in enumerate(lines) if line.startswith("patchscope: run ")
            and (command in line if containing else line.endswith(f": {command}"))]
    if not runs:
        raise AssertionError(f"no run of {command!r}")
    i = runs[-1] if last else runs[0]
    end = next(j for j in range(i, len(lines)) if lines[j].startswith("patchscope: exit "))
    return lines[i + 1:end]


MODES = ("native", "xen-pv")


@pytest.mark.parametrize("mode", MODES)
def test_a_is_allowed_in_both_orders(mode: str) -> None:
    lines = console(mode)
    for pair in ("a1", "a2"):
        assert after_command(lines, f"cat /sys/module/psm_target_{pair}/parameters/value") == ["5eed0003"]
        assert after_command(lines, f"/sys/kernel/livepatch/psm_lp_{pair}/transition", containing=True)[-1:] == [
            "enabled=1 transition=0"]
    assert any("livepatch: applying patch 'psm_lp_a2' to loading module 'psm_target_a2'" in ln for ln in lines)


@pytest.mark.parametrize("mode", MODES)
def test_b_is_refused_by_the_vmlinux_symbol_check_at_the_later_load(mode: str) -> None:
    lines = console(mode)
    refusal = "livepatch: invalid access to vmlinux symbol 'pv_ops' from module-specific livepatch relocation section"
    first = after_command(lines, "insmod /lib/modules/psm_lp_b1.ko")
    assert any(refusal in ln for ln in first)
    assert "insmod: can't insert '/lib/modules/psm_lp_b1.ko': Invalid argument" in first
    second = after_command(lines, "insmod /lib/modules/psm_target_b2.ko")
    assert any(refusal in ln for ln in second)
    assert any("livepatch: patch 'psm_lp_b2' failed for module 'psm_target_b2', refusing to load module "
               "'psm_target_b2'" in ln for ln in second)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["c", "e"])
def test_c_and_e_are_refused_by_the_nonzero_check_at_the_later_load(mode: str, case: str) -> None:
    lines = console(mode)
    nonzero = "module: x86/modules: Skipping invalid relocation target, existing value is nonzero for type 2"
    first = after_command(lines, f"insmod /lib/modules/psm_lp_{case}1.ko")
    assert any(nonzero in ln for ln in first)
    assert f"insmod: can't insert '/lib/modules/psm_lp_{case}1.ko': invalid module format" in first
    second = after_command(lines, f"insmod /lib/modules/psm_target_{case}2.ko")
    assert any(nonzero in ln for ln in second)
    assert any(f"livepatch: failed to initialize patch 'psm_lp_{case}2' for module 'psm_target_{case}2' (-8)" in ln
               for ln in second)
    # The bytes the relocation met were patched and nonzero; they stayed as they were.
    (hazard,) = klp.hazards(klp.convert(fixture(case)).data)
    seen = dumps(lines, f"psm_lp_{case}2")
    place = slice(hazard.relocation.offset, hazard.relocation.end)
    assert seen[0][place] != bytes(4) and all(d[place] == seen[0][place] for d in seen)


@pytest.mark.parametrize("mode", MODES)
def test_d_the_relocation_lands_in_a_patched_instruction_and_nothing_refuses_it(mode: str) -> None:
    lines = console(mode)
    (hazard,) = klp.hazards(klp.convert(fixture("d")).data)
    site = hazard.site
    assert (site.kind, site.offset, site.length) == ("alternative", 0xE, 7) and hazard.pending
    original = text_bytes(elf(fixture("d")), site.offset, site.length)
    assert original == bytes.fromhex("488b0500000000")                 # mov 0x0(%rip),%rax: the module file
    for pair, value in (("d1", "ffffffffffffcff3"), ("d2", "6ff3")):
        before, *later = dumps(lines, f"psm_lp_{pair}")
        # apply_alternatives wrote the replacement at the livepatch's load: mov $0x0,%rax, zeros where the
        # relocation goes ...
        assert before[site.offset:site.end] == bytes.fromhex("48c7c000000000")
        # ... and the module-specific relocation, applied later, wrote its displacement into the immediate.
        final = later[-1]
        assert final[site.offset:site.offset + 3] == bytes.fromhex("48c7c0")
        immediate = struct.unpack_from("<i", final, hazard.relocation.offset)[0]
        assert f"{immediate & (2**64 - 1):x}" == value
        assert after_command(lines, f"cat /sys/module/psm_target_{pair}/parameters/value") == [value]
    # The kernel said nothing about it.
    d_lines = after_command(lines, "insmod /lib/modules/psm_lp_d1.ko")
    assert not any("x86/modules" in ln or "failed" in ln for ln in d_lines)


@pytest.mark.parametrize("mode", MODES)
def test_the_pv_site_holds_the_modes_instruction(mode: str) -> None:
    lines = console(mode)
    (final,) = dumps(after_command(lines, "cat /sys/module/psm_lp_a1/parameters/text"), "psm_lp_a1")
    symbols = {ln.split()[2]: int(ln.split()[0], 16) for ln in after_command(
        lines, "grep -w -e xen_save_fl_direct -e native_save_fl -e pv_ops /proc/kallsyms")}
    address = int(next(re.search(r"psm_lp_read at ([0-9a-f]+)", ln).group(1)  # type: ignore[union-attr]
                       for ln in lines if "psm_lp_a1: psm_lp_read at" in ln), 16)
    site = final[5:11]
    if mode == "native":
        assert site == bytes.fromhex("9c580f1f4000")                  # pushf; pop %rax; nopl 0x0(%rax)
    else:
        assert site[0] == 0xE8 and site[5] == 0x90                    # call rel32; nop
        target = (address + 5 + 5 + struct.unpack_from("<i", site, 1)[0]) & (2**64 - 1)
        assert target == symbols["xen_save_fl_direct"]


@pytest.mark.parametrize("mode", MODES)
def test_reloading_the_target_under_the_livepatch_is_refused(mode: str) -> None:
    lines = console(mode)
    assert any("livepatch: reverting patch 'psm_lp_a2' on unloading module 'psm_target_a2'" in ln
               for ln in after_command(lines, "rmmod psm_target_a2"))
    again = after_command(lines, "insmod /lib/modules/psm_target_a2.ko", last=True)
    assert any("existing value is nonzero for type 2" in ln for ln in again)
    assert "insmod: can't insert '/lib/modules/psm_target_a2.ko': invalid module format" in again
