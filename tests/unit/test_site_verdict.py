"""Site assertions: ``inspect:`` and ``expect.sites`` in configs, and how the verdict judges them.

Configs go through ``parse_config`` as a user's file would; comparisons are
built by hand from ``Site``/``SiteState`` objects whose live bytes are
disassembled for real, so a reason names what a user would see.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from framework.analysis.console_log import Ending
from framework.analysis.findings import Analysis
from framework.analysis.observation import Observation, observe
from framework.analysis.sites import Comparison, Oversize, SiteState, State, TextChange, disassemble
from framework.config import Config, Expect, Inspect, SiteAssertion, parse_config, to_yaml_dict
from framework.domain import CAPTURE_POINTS, TABLES
from framework.elf.vmlinux import Site, Symbols
from framework.errors import ConfigError
from framework.verdict import MAX_SITES_NAMED, judge, judge_sites

REPO = Path(__file__).resolve().parents[2]
BASE = 0xFFFFFFFF81000000
SYMBOLS = Symbols.from_dict({"func_a": BASE, "func_b": BASE + 0x1000, "xen_save_fl_direct": BASE + 0x8000,
                             "xen_irq_disable_direct": BASE + 0x8100, "pv_ops": BASE + 0x10000})
PV_CALL = b"\xff\x15\x00\x00\x00\x00"     # the ELF's bytes at every test site: call *disp32(%rip)
PUSHF_POP = b"\x9c\x58\x0f\x1f\x40\x00"   # pushf; pop %rax; nopl 0x0(%rax)
CLI = b"\xfa\x0f\x1f\x44\x00\x00"         # cli; nopw 0x0(%rax,%rax,1)
NOPS = b"\x66\x0f\x1f\x44\x00\x00"        # nopw 0x0(%rax,%rax,1)


def call_to(target: int, address: int) -> bytes:
    """call rel32; nop — six bytes at ``address``."""
    return b"\xe8" + (target - (address + 5)).to_bytes(4, "little", signed=True) + b"\x90"


def sst(offset: int, live: bytes | None, *, op: str | None = "irq.save_fl", table: str = "paravirt",
        feature: str | None = None, index: int = 0, state: State | None = None) -> SiteState:
    """A SiteState at BASE+offset; ``live`` None with ``state`` freed/unread."""
    address = BASE + offset
    site = Site(table=table, index=index, address=address, length=len(PV_CALL), original=PV_CALL,
                section=".text", op=op if table == "paravirt" else None, feature=feature)
    symbol = SYMBOLS.format(address)
    if live is None:
        assert state in ("freed", "unread")
        return SiteState(site, state, None, (), symbol)
    kind: State = "unchanged" if live == PV_CALL else "patched"
    return SiteState(site, kind, live, tuple(disassemble(live, address, SYMBOLS)), symbol)


def comparison(capture: str, *states: SiteState, unknown: tuple[TextChange, ...] = (),
               oversized: tuple[Oversize, ...] = (), pv: tuple[SiteState, ...] = ()) -> Comparison:
    tables: dict[str, list[SiteState]] = {}
    for st in states:
        tables.setdefault(st.site.table, []).append(st)
    return Comparison(capture, {t: tuple(v) for t, v in tables.items()}, unknown, oversized, pv)


HEAD = "name: t\ninspect:\n  capture: [before-patching, after-patching]\nexpect:\n"   # expect: is line 4


def expect_of(body: str) -> Expect:
    """An Expect from lines under ``expect:`` (the first of them is line 5)."""
    return parse_config(HEAD + body).expect


def sites_expect(*assertions: str) -> Expect:
    """One flow-style assertion per line; assertion i is on line 6 + i."""
    return expect_of("  sites:\n" + "".join(f"    - {a}\n" for a in assertions))


# --------------------------------------------------------------------------- config: good


@pytest.mark.parametrize("name", ["pv-sites-native", "pv-sites-xen-pv"])
def test_real_configs_parse(name: str) -> None:
    path = REPO / "configs" / f"{name}.yaml"
    text = path.read_text()
    config = parse_config(text, path)
    assert config.inspect == Inspect(captures=("before-patching", "after-patching"),
                                     tables=("paravirt", "alternatives"))
    sites = config.expect.sites
    assert sites[0] == SiteAssertion(table="paravirt", state=("unchanged",), at="before-patching")
    assert sites[1] == SiteAssertion(table="paravirt", count=(3848, 4319))     # 6.1.0-56 and 6.12.117
    assert sites[2] == SiteAssertion(table="paravirt", state=("patched",))
    by_op = {a.op: a.insns for a in sites if a.op}
    assert set(by_op) == {"irq.save_fl", "irq.irq_disable", "irq.irq_enable", "mmu.read_cr2",
                          "mmu.lazy_mode.leave", "cpu.load_tr_desc"}
    if name == "pv-sites-native":
        assert by_op["irq.save_fl"] == "pushf; pop %rax"
        assert by_op["mmu.lazy_mode.leave"] == ""          # insns: [] — only NOPs
    else:
        assert by_op["irq.save_fl"] == "call xen_save_fl_direct"
        assert by_op["cpu.load_tr_desc"] == ""
    # Xen PV's write at early_xen_iret_patch is a known one (observe/inspection.py KNOWN_WRITES).
    assert config.expect.unknown_changes == 0
    assert (config.expect.oversized, config.expect.pv_indirect) == (0, 0)
    # Each assertion remembers its line.
    lines = text.splitlines()
    for a in sites:
        assert a.line is not None and lines[a.line - 1].lstrip().startswith("- {")


def test_site_assertion_fields() -> None:
    expect = sites_expect(
        "{table: alternatives, feature: '!X86_FEATURE_XENPV', symbol: '^func_', insns_regex: '^call '}",
        "{op: irq.save_fl, insns: [pushf, 'pop %rax']}",
        "{op: irq.save_fl, at: before-patching, state: [unchanged, patched]}",
        "{table: paravirt, count: [1, 5]}",
        "{count: 0}",
    )
    first, second, third, fourth, fifth = expect.sites
    assert first.table == "alternatives" and first.feature == "!X86_FEATURE_XENPV"
    assert first.symbol is not None and first.symbol.pattern == "^func_"
    assert first.insns_regex is not None and first.insns_regex.pattern == "^call "
    assert (first.insns, first.state, first.count, first.at) == (None, None, None, None)
    assert first.describe() == "table=alternatives feature=!X86_FEATURE_XENPV symbol=^func_"
    assert second.insns == "pushf; pop %rax" and second.op == "irq.save_fl"
    assert third.state == ("unchanged", "patched") and third.at == "before-patching"
    assert fourth.count == (1, 5)
    assert fifth.count == (0, 0) and fifth.describe() == "all sites"
    assert [a.line for a in expect.sites] == [6, 7, 8, 9, 10]


def test_inspect_section_forms() -> None:
    assert parse_config("inspect:\n").inspect == Inspect()
    assert Inspect().captures == ("after-patching",) and Inspect().tables == TABLES
    config = parse_config("inspect:\n  capture: booted\n  tables: paravirt\n")
    assert config.inspect == Inspect(captures=("booted",), tables=("paravirt",))
    config = parse_config("inspect: {capture: [start_kernel, after-patching], tables: [paravirt, ftrace]}\n")
    assert config.inspect == Inspect(captures=("start_kernel", "after-patching"), tables=("paravirt", "ftrace"))
    assert parse_config("{}").inspect is None
    assert set(CAPTURE_POINTS) == {"before-patching", "after-patching", "booted"}


def test_whole_text_limits_parse() -> None:
    expect = expect_of("  oversized: 0\n  pv_indirect: 2\n  unknown_changes: 1\n")
    assert (expect.oversized, expect.pv_indirect, expect.unknown_changes) == (0, 2, 1)
    assert expect_of("  outcome: boots\n").oversized is None


def test_round_trip_through_to_yaml_dict() -> None:
    text = HEAD + ("  sites:\n    - {table: paravirt, state: [patched, freed], at: before-patching}\n"
                   "    - {op: irq.save_fl, insns: 'pushf; pop %rax'}\n"
                   "    - {feature: '!X86_FEATURE_XENPV', symbol: '^func', insns_regex: '^call '}\n"
                   "    - {table: paravirt, count: [1, 5]}\n"
                   "  oversized: 0\n  unknown_changes: 1\n")
    config = parse_config(text)
    data = to_yaml_dict(config)
    assert data["inspect"] == {"capture": ["before-patching", "after-patching"], "tables": list(TABLES)}
    assert parse_config(yaml.safe_dump(data)) == config
    assert "inspect" not in to_yaml_dict(parse_config("{}"))


@pytest.mark.parametrize("name", ["pv-sites-native", "pv-sites-xen-pv"])
def test_real_configs_round_trip_through_to_yaml_dict(name: str) -> None:
    path = REPO / "configs" / f"{name}.yaml"
    config = parse_config(path.read_text(), path)
    assert parse_config(yaml.safe_dump(to_yaml_dict(config)), path) == config


# --------------------------------------------------------------------------- config: errors

INSPECT = "inspect:\n  capture: [after-patching]\n"
SITE_ERRORS = [
    # (text, line, fragment)
    ("expect:\n  sites:\n    - {table: paravirt, state: patched}\n", 2,
     "expect.sites needs an inspect: section saying what to capture"),
    ("expect:\n  outcome: boots\n  oversized: 0\n", 3, "expect.oversized needs an inspect: section"),
    ("expect:\n  unknown_changes: 0\n", 2, "expect.unknown_changes needs an inspect: section"),
    ("expect:\n  pv_indirect: 0\n", 2, "expect.pv_indirect needs an inspect: section"),
    (INSPECT + "expect:\n  sites:\n    - {table: paravirtt, state: patched}\n", 5,
     "expect.sites[0].table must be one of paravirt, alternatives"),
    (INSPECT + "expect:\n  sites:\n    - {table: paravirtt, state: patched}\n", 5, "(did you mean 'paravirt'?)"),
    ("inspect:\n  tables:\n    - paravirt\n    - jump_label\n", 4,
     "inspect.tables[1]: 'jump_label' is not a patch-site table (one of paravirt"),
    ("inspect:\n  tables:\n    - paravirt\n    - jump_label\n", 4, "(did you mean 'jump_labels'?)"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, state: pached}\n", 5,
     "'pached' is not a site state (one of unchanged, patched, freed, unread) (did you mean 'patched'?)"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, state: [patched, frede]}\n", 5,
     "(did you mean 'freed'?)"),
    (INSPECT + "expect:\n  sites:\n    - op: irq.save_fl\n      state: patched\n      at: before-patching\n", 7,
     "expect.sites[0].at: 'before-patching' is not captured; inspect.capture has after-patching"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, state: patched}\n    - {op: irq.save_fl, insns: cli,"
     " state: patched}\n", 6,
     "expect.sites[1] needs exactly one of insns, insns_regex, state, count (it has insns, state)"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl}\n", 5,
     "expect.sites[0] needs exactly one of insns, insns_regex, state, count"),
    (INSPECT + "expect:\n  sites:\n    - {table: paravirt, count: [5, 2]}\n", 5,
     "expect.sites[0].count must be a number of sites or [min, max] with min <= max"),
    (INSPECT + "expect:\n  sites:\n    - {table: paravirt, count: [1, 2, 3]}\n", 5, "[min, max]"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, insns: ''}\n", 5,
     "expect.sites[0].insns: write [] for a site that holds only NOPs"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, insns: '  '}\n", 5, "write []"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, insns_regex: ''}\n", 5, "the regex is empty"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, insns_regex: '('}\n", 5, "bad regex"),
    ("inspect:\n  capture:\n    - before-patching\n    - after-patchng\n", 4,
     "inspect.capture[1]: 'after-patchng' is not a capture point: use before-patching, after-patching, booted"),
    ("inspect:\n  capture: [0xffffffff81000000]\n", 2, "is not a capture point"),
    ("inspect:\n  capture: []\n", 2, "inspect.capture must be a capture point or a list of them"),
    ("inspect:\n  tables:\n    - paravirt\n    - alternatives\n    - paravirt\n", 5,
     "inspect.tables[2]: 'paravirt' is listed twice"),
    ("inspect:\n  capture: [booted, booted]\n", 2, "'booted' is listed twice"),
    ("inspect:\n  tables: [paravirt]\nexpect:\n  sites:\n    - table: ftrace\n      count: 3\n", 5,
     "expect.sites[0].table: 'ftrace' is not in inspect.tables"),
    (INSPECT + "expect:\n  sites: {op: irq.save_fl, state: patched}\n", 4,
     "expect.sites must be a list of site assertions"),
    (INSPECT + "expect:\n  sites:\n    - patched\n", 5, "expect.sites[0] must be a mapping"),
    (INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, stat: patched}\n", 5, "unknown key 'stat'"),
    (INSPECT + "expect:\n  sites:\n    - {op: IRQ, state: patched}\n", 5, "a pv_ops member such as 'irq.save_fl'"),
    (INSPECT + "expect:\n  sites:\n    - {feature: XENPV, state: patched}\n", 5, "a CPU feature"),
    (INSPECT + "expect:\n  oversized: many\n", 4, "expect.oversized must be a whole number >= 0"),
    ("inspect:\n  captures: booted\n", 2, "unknown key 'captures' in inspect (did you mean 'capture'?)"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), SITE_ERRORS,
                         ids=[f"{i}-{e[2][:40]}" for i, e in enumerate(SITE_ERRORS)])
def test_site_config_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "sites.yaml"
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    message = str(info.value)
    assert info.value.line == line, message
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message, message
    assert "\n" not in message


def test_empty_insns_regex_is_not_a_check(tmp_path: Path) -> None:
    text = INSPECT + "expect:\n  sites:\n    - {op: irq.save_fl, insns_regex: }\n"
    with pytest.raises(ConfigError, match=r":5: .*insns_regex"):
        parse_config(text, tmp_path / "sites.yaml")


@pytest.mark.parametrize("count", ["-2", "[-3, 1]"])
def test_negative_count_is_an_error(tmp_path: Path, count: str) -> None:
    text = INSPECT + f"expect:\n  sites:\n    - {{table: paravirt, count: {count}}}\n"
    with pytest.raises(ConfigError, match=r":5: expect\.sites\[0\]\.count"):
        parse_config(text, tmp_path / "sites.yaml")


@pytest.mark.parametrize("key", ["oversized", "pv_indirect", "unknown_changes"])
def test_negative_limit_is_an_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf":4: expect\.{key} must be a whole number >= 0"):
        parse_config(INSPECT + f"expect:\n  {key}: -1\n", tmp_path / "sites.yaml")


# --------------------------------------------------------------------------- judge_sites: insns


def test_insns_match() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, PUSHF_POP), sst(0x20, PUSHF_POP, index=1))}
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'pushf; pop %rax'}")) == []
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'pushf ;pop %rax'}")) == []
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, insns: [pushf, 'pop %rax']}")) == []


def test_insns_mismatch_names_the_site() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, PUSHF_POP), sst(0x1020, CLI, index=1),
                                          sst(0x30, PUSHF_POP, index=2))}
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'pushf; pop %rax'}"))
    assert reasons == [
        ("expect.sites (line 6) op=irq.save_fl at after-patching: 1 of 3 sites not 'pushf; pop %rax': "
         f"irq.save_fl at func_b+0x20 ({BASE + 0x1020:#x}): 'cli'")]


def test_insns_mismatch_named_sites_are_capped() -> None:
    total = MAX_SITES_NAMED + 5
    states = [sst(0x10 * i, CLI, index=i) for i in range(total)]
    reasons = judge_sites({"after-patching": comparison("after-patching", *states)},
                          sites_expect("{op: irq.save_fl, insns: 'pushf; pop %rax'}"))
    assert len(reasons) == 1
    assert f"{total} of {total} sites not 'pushf; pop %rax'" in reasons[0]
    assert reasons[0].count(": 'cli'") == MAX_SITES_NAMED
    assert reasons[0].endswith("; … 5 more")
    assert f"({BASE + 0x10 * (MAX_SITES_NAMED - 1):#x})" in reasons[0]
    assert f"({BASE + 0x10 * MAX_SITES_NAMED:#x})" not in reasons[0]


def test_insns_mismatch_with_a_call_target_named() -> None:
    live = call_to(BASE + 0x8100, BASE + 0x10)
    comps = {"after-patching": comparison("after-patching", sst(0x10, live))}
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'call xen_irq_disable_direct'}")) == []
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'call xen_save_fl_direct'}"))
    assert len(reasons) == 1
    assert "not 'call xen_save_fl_direct': irq.save_fl at func_a+0x10" in reasons[0]
    assert reasons[0].endswith(": 'call xen_irq_disable_direct'")


def test_insns_empty_means_only_nops() -> None:
    nops = {"after-patching": comparison("after-patching", sst(0x10, NOPS, op="mmu.lazy_mode.leave"))}
    assert judge_sites(nops, sites_expect("{op: mmu.lazy_mode.leave, insns: []}")) == []
    reasons = judge_sites(nops, sites_expect("{op: mmu.lazy_mode.leave, insns: cli}"))
    assert len(reasons) == 1 and reasons[0].endswith(": 'only NOPs'") and "not 'cli'" in reasons[0]
    live = call_to(BASE + 0x8000, BASE + 0x10)
    called = {"after-patching": comparison("after-patching", sst(0x10, live, op="mmu.lazy_mode.leave"))}
    reasons = judge_sites(called, sites_expect("{op: mmu.lazy_mode.leave, insns: []}"))
    assert len(reasons) == 1
    assert "not 'only NOPs'" in reasons[0] and reasons[0].endswith(": 'call xen_save_fl_direct'")


def test_insns_regex() -> None:
    live = call_to(BASE + 0x8000, BASE + 0x10)
    comps = {"after-patching": comparison("after-patching", sst(0x10, live), sst(0x20, CLI, index=1))}
    assert judge_sites(comps, sites_expect(r"{symbol: '\+0x10$', insns_regex: '^call xen_'}")) == []
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns_regex: '^call xen_'}"))
    assert len(reasons) == 1
    assert "1 of 2 sites not matching /^call xen_/" in reasons[0]
    assert reasons[0].endswith(f"irq.save_fl at func_a+0x20 ({BASE + 0x20:#x}): 'cli'")


def test_insns_on_sites_that_cannot_be_read() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, None, state="freed"),
                                          sst(0x20, None, state="freed", index=1))}
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns: cli}"))
    assert len(reasons) == 1
    assert "all 2 selected sites are freed; nothing to disassemble" in reasons[0]
    # Readable sites are still checked when some are freed.
    comps = {"after-patching": comparison("after-patching", sst(0x10, None, state="freed"), sst(0x20, CLI, index=1))}
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, insns: cli}")) == []
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns: sti}"))
    assert len(reasons) == 1 and "1 of 2 sites not 'sti'" in reasons[0]


# --------------------------------------------------------------------------- judge_sites: state, count, selectors


def test_state() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, PUSHF_POP), sst(0x20, PV_CALL, index=1),
                                          sst(0x30, None, state="freed", index=2))}
    reasons = judge_sites(comps, sites_expect("{table: paravirt, state: patched}"))
    assert len(reasons) == 1
    assert reasons[0].startswith("expect.sites (line 6) table=paravirt at after-patching: 2 of 3 sites not patched: ")
    assert f"irq.save_fl at func_a+0x20 ({BASE + 0x20:#x}): unchanged" in reasons[0]
    assert f"irq.save_fl at func_a+0x30 ({BASE + 0x30:#x}): freed" in reasons[0]
    reasons = judge_sites(comps, sites_expect("{table: paravirt, state: [patched, freed]}"))
    assert len(reasons) == 1 and "1 of 3 sites not patched or freed" in reasons[0]
    assert judge_sites(comps, sites_expect("{table: paravirt, state: [patched, freed, unchanged]}")) == []


def test_state_names_alternatives_by_feature() -> None:
    alt = sst(0x40, PV_CALL, table="alternatives", feature="X86_FEATURE_XENPV")
    comps = {"after-patching": comparison("after-patching", alt)}
    reasons = judge_sites(comps, sites_expect("{table: alternatives, state: patched}"))
    assert reasons and f"X86_FEATURE_XENPV at func_a+0x40 ({BASE + 0x40:#x}): unchanged" in reasons[0]


def test_count() -> None:
    states = [sst(0x10 * i, CLI, index=i) for i in range(3)] + [sst(0x100, CLI, op="irq.irq_disable", index=3)]
    comps = {"after-patching": comparison("after-patching", *states)}
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, count: 3}")) == []
    assert judge_sites(comps, sites_expect("{table: paravirt, count: 4}")) == []
    assert judge_sites(comps, sites_expect("{count: [1, 5]}")) == []
    assert judge_sites(comps, sites_expect("{op: irq.irq_enable, count: 0}")) == []
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, count: 2}")) == [
        "expect.sites (line 6) op=irq.save_fl: 3 sites, expected 2"]
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, count: [4, 9]}")) == [
        "expect.sites (line 6) op=irq.save_fl: 3 sites, expected 4..9"]


def test_selectors() -> None:
    states = [sst(0x10, CLI), sst(0x1010, PUSHF_POP, index=1),
              sst(0x20, PV_CALL, table="alternatives", feature="!X86_FEATURE_XENPV"),
              sst(0x30, PUSHF_POP, table="alternatives", feature="X86_FEATURE_XENPV", index=1)]
    comps = {"after-patching": comparison("after-patching", *states)}
    assert judge_sites(comps, sites_expect("{symbol: '^func_b', insns: 'pushf; pop %rax'}")) == []
    assert judge_sites(comps, sites_expect("{symbol: '^func_a\\+0x10$', insns: cli}")) == []
    assert judge_sites(comps, sites_expect("{feature: '!X86_FEATURE_XENPV', state: unchanged}")) == []
    assert judge_sites(comps, sites_expect("{feature: X86_FEATURE_XENPV, count: 1}")) == []
    assert judge_sites(comps, sites_expect("{table: alternatives, count: 2}")) == []
    assert judge_sites(comps, sites_expect("{table: paravirt, symbol: func_b, count: 1}")) == []


def test_selector_that_selects_nothing() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, CLI))}
    for assertion, described in [("{op: irq.irq_enable, insns: sti}", "op=irq.irq_enable"),
                                 ("{table: ftrace, state: patched}", "table=ftrace"),
                                 ("{symbol: nowhere, insns_regex: x}", "symbol=nowhere")]:
        assert judge_sites(comps, sites_expect(assertion)) == [
            f"expect.sites (line 6) {described}: selects no site at after-patching"]


# --------------------------------------------------------------------------- judge_sites: captures


def two_captures() -> dict[str, Comparison]:
    return {"before-patching": comparison("before-patching", sst(0x10, PV_CALL)),
            "after-patching": comparison("after-patching", sst(0x10, PUSHF_POP))}


def test_at_chooses_the_capture() -> None:
    comps = two_captures()
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, state: unchanged, at: before-patching}")) == []
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, state: patched}")) == []   # the last capture
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, state: unchanged}"))
    assert len(reasons) == 1 and " at after-patching: 1 of 1 sites not unchanged" in reasons[0]
    reasons = judge_sites(comps, sites_expect("{op: irq.save_fl, insns: 'pushf; pop %rax', at: before-patching}"))
    assert len(reasons) == 1 and " at before-patching: " in reasons[0]
    assert reasons[0].endswith(f"({BASE + 0x10:#x}): 'call *func_a+0x16(%rip)'")


def test_missing_capture() -> None:
    comps = {"after-patching": two_captures()["after-patching"]}
    assert judge_sites(comps, sites_expect("{op: irq.save_fl, state: unchanged, at: before-patching}")) == [
        "expect.sites (line 6) op=irq.save_fl: no capture 'before-patching' was taken"]
    assert judge_sites({}, sites_expect("{op: irq.save_fl, state: patched}")) == [
        "no text was captured, so no site assertion could be checked"]
    assert judge_sites({}, expect_of("  oversized: 0\n")) == [
        "no text was captured, so no site assertion could be checked"]
    assert judge_sites({}, expect_of("  outcome: boots\n")) == []


def test_reason_without_a_line() -> None:
    comps = {"after-patching": comparison("after-patching", sst(0x10, CLI))}
    expect = Expect(sites=(SiteAssertion(op="irq.save_fl", insns="sti"),))
    reasons = judge_sites(comps, expect)
    assert len(reasons) == 1 and reasons[0].startswith("expect.sites op=irq.save_fl at after-patching: ")


# --------------------------------------------------------------------------- judge_sites: whole-text limits


def with_limits(before: Comparison, after: Comparison) -> dict[str, Comparison]:
    return {"before-patching": before, "after-patching": after}


def test_oversized_limit() -> None:
    st = sst(0x1010, PUSHF_POP)
    after = comparison("after-patching", st, oversized=(Oversize(st, 2),))
    comps = with_limits(comparison("before-patching"), after)
    assert judge_sites(comps, expect_of("  oversized: 1\n")) == []
    assert judge_sites(comps, expect_of("  outcome: boots\n")) == []
    assert judge_sites(comps, expect_of("  oversized: 0\n")) == [
        ("1 over-sized patches at after-patching (at most 0 allowed): "
         f"irq.save_fl at func_b+0x10 ({BASE + 0x1010:#x}): 2 bytes past the end changed")]


def test_pv_indirect_limit() -> None:
    states = [sst(0x10 * i, PV_CALL, index=i) for i in range(MAX_SITES_NAMED + 3)]
    comps = {"after-patching": comparison("after-patching", *states, pv=tuple(states))}
    reasons = judge_sites(comps, expect_of("  pv_indirect: 0\n"))
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{len(states)} pv sites not patched at after-patching (at most 0 allowed): "
                                 f"irq.save_fl at func_a ({BASE:#x}): still call *pv_ops")
    assert reasons[0].count("still call *pv_ops") == MAX_SITES_NAMED
    assert reasons[0].endswith("; … 3 more")
    assert judge_sites(comps, expect_of(f"  pv_indirect: {len(states)}\n")) == []


def test_unknown_changes_limit_applies_to_the_last_capture() -> None:
    changes = (TextChange(BASE + 0x1020, BASE + 0x1024, "func_b+0x20", b"\x00" * 4, b"\x01" * 4),
               TextChange(BASE + 0x40, BASE + 0x41, "func_a+0x40", b"\x00", b"\x01"))
    after = comparison("after-patching", unknown=changes)
    expect = expect_of("  unknown_changes: 1\n")
    assert judge_sites(with_limits(after, comparison("after-patching")), expect) == []
    assert judge_sites(with_limits(comparison("before-patching"), after), expect) == [
        ("2 text changes outside every known site at after-patching (at most 1 allowed): "
         f"func_b+0x20 ({BASE + 0x1020:#x}, 4 bytes); func_a+0x40 ({BASE + 0x40:#x}, 1 bytes)")]
    assert judge_sites(with_limits(comparison("before-patching"), after), expect_of("  unknown_changes: 2\n")) == []


def test_unknown_changes_named_are_capped() -> None:
    changes = tuple(TextChange(BASE + i, BASE + i + 1, f"func_a+{i:#x}", b"\x00", b"\x01") for i in range(1, 26))
    comps = {"after-patching": comparison("after-patching", unknown=changes)}
    reasons = judge_sites(comps, expect_of("  unknown_changes: 0\n"))
    assert len(reasons) == 1 and reasons[0].count(" bytes)") == MAX_SITES_NAMED
    assert reasons[0].endswith("; … 5 more")


# --------------------------------------------------------------------------- judge()


def booted() -> Observation:
    obs = observe([(1.0, "[    0.0] Linux version 6.1"), (2.0, "patchscope: init done")], Ending("exit", 3.0, 0))
    assert obs.outcome == "boots"
    return obs


def test_judge_folds_site_reasons_into_the_verdict() -> None:
    expect = expect_of("  sites:\n    - {op: irq.save_fl, insns: sti}\n  oversized: 0\n")
    st = sst(0x10, CLI)
    comps = {"after-patching": comparison("after-patching", st, oversized=(Oversize(st, 1),))}
    verdict = judge(Config("c", expect=expect), booted(), Analysis(comps))
    assert verdict.verdict == "fail" and not verdict.passed
    assert len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("expect.sites (line 6) op=irq.save_fl at after-patching: 1 of 1 sites")
    assert verdict.reasons[1].startswith("1 over-sized patches at after-patching")
    # Without an analysis (no debugger looked) they cannot hold: a run without captures never passes them.
    assert judge(Config("c", expect=expect), booted()).reasons == (
        "no text was captured, so no site assertion could be checked",)
    # And with comparisons that satisfy them, the run passes.
    good = {"after-patching": comparison("after-patching", sst(0x10, b"\xfb\x0f\x1f\x44\x00\x00"))}
    assert judge(Config("c", expect=expect), booted(), Analysis(good)).passed


def test_judge_with_no_capture_fails() -> None:
    expect = expect_of("  sites:\n    - {op: irq.save_fl, state: patched}\n")
    verdict = judge(Config("c", expect=expect), booted(), Analysis({}))
    assert verdict.verdict == "fail"
    assert verdict.reasons == ("no text was captured, so no site assertion could be checked",)


def test_judge_caps_many_site_reasons() -> None:
    assertions = [f"{{op: irq.op{i}, state: patched}}" for i in range(40)]
    comps = {"after-patching": comparison("after-patching", sst(0x10, CLI))}
    verdict = judge(Config("c", expect=sites_expect(*assertions)), booted(), Analysis(comps))
    assert verdict.verdict == "fail"
    assert len(verdict.reasons) == 31 and verdict.reasons[-1] == "… and 10 more"
    assert all(re.search(r"selects no site at after-patching$", r) for r in verdict.reasons[:30])
