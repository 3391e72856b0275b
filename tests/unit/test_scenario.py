"""Scenarios: the YAML language (through ``parse_config``), expressions, conditions, effects and the verdict.

Stops are faked with a :class:`StopContext` built from register values as GDB
reports them at a ``text_poke_early`` stop in Debian's 6.1 kernel during
``apply_paravirt`` (kernel text at 0xffffffff81…, init text at 0xffffffff83…,
the boot stack in init_thread_union at 0xffffffff82c0…), with guest memory
served from a dict.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from framework.config import Config, Expect, parse_config, to_yaml_dict
from framework.elf.vmlinux import Symbols
from framework.errors import ConfigError
from framework.scenario import (
    SIGNATURES,
    Action,
    Condition,
    Dump,
    InjectNmi,
    NmiRecord,
    Record,
    Rule,
    Scenario,
    SetRegister,
    StopContext,
    StopExpect,
    StopRecord,
    Trigger,
    WriteMemory,
    arguments,
    effect_json,
    effects,
    evaluate,
    function_of,
    location,
    matches,
    name_problem,
    parse_expression,
    parse_location,
    resolve,
)
from framework.verdict import effective_nmi, judge_scenario

SYMBOLS = Symbols.from_dict({
    "native_flush_tlb_local": 0xFFFFFFFF8108A2B0,
    "native_flush_tlb_global": 0xFFFFFFFF8108A340,
    "text_poke_early": 0xFFFFFFFF8106A4E0,
    "text_poke": 0xFFFFFFFF8106A860,
    "paravirt_patch": 0xFFFFFFFF8104C130,
    "int3_magic": 0xFFFFFFFF81068F60,
    "exc_nmi": 0xFFFFFFFF81E3B6C0,
    "default_idle": 0xFFFFFFFF81E3C1A0,
    "pv_ops": 0xFFFFFFFF82A1C340,
    "init_thread_union": 0xFFFFFFFF82C00000,
    "int3_selftest": 0xFFFFFFFF83075FC0,
    "apply_paravirt": 0xFFFFFFFF83076D50,
    "apply_alternatives": 0xFFFFFFFF830770A0,
}, source="test")

SITE = 0xFFFFFFFF8108A2B4            # a pv irq.save_fl site: native_flush_tlb_local+0x4
INSN_BUFF = 0xFFFFFFFF82C03D2E       # apply_paravirt's insn_buff, on the boot stack
RSP = 0xFFFFFFFF82C03D10
RETURN = 0xFFFFFFFF83076DEB          # apply_paravirt+0x9b
SAVE_FL_SLOT = 0x1E

# rip rsp rax … as GDB reported them, stopped at text_poke_early(SITE, INSN_BUFF, 6).
REGS: Mapping[str, int] = {
    "rip": 0xFFFFFFFF8106A4E0, "rsp": RSP, "rax": 0x6, "rbx": 0xFFFFFFFF82E1E8C0, "rcx": 0x6,
    "rdx": 0x6, "rsi": INSN_BUFF, "rdi": SITE, "rbp": 0xFFFFFFFF82C03D78,
    "r8": 0xFFFFFFFF82C03D2E, "r9": 0x0, "r10": 0xFFFFFFFF82A1C3B0, "r11": 0x0,
    "r12": 0xFFFFFFFF82E24F30, "r13": 0x6, "r14": 0x0, "r15": 0x0, "eflags": 0x46,
}


class Memory:
    """Guest memory from a few regions; reading anywhere else fails like GDB would."""

    def __init__(self, regions: Mapping[int, bytes]) -> None:
        self.regions = dict(regions)
        self.reads: list[tuple[int, int]] = []

    def read(self, address: int, length: int) -> bytes:
        self.reads.append((address, length))
        for start, data in self.regions.items():
            if start <= address and address + length <= start + len(data):
                return data[address - start:address - start + length]
        raise OSError(f"Cannot access memory at address {address:#x}")


def memory() -> Memory:
    return Memory({
        SITE - 4: bytes.fromhex("0f1f4000 ff150000 0000 9090cc"),     # nopl 0x0(%rax); call *pv_ops+…
        INSN_BUFF: bytes.fromhex("9c580f1f4000"),                      # pushf; pop %rax; nopl 0x0(%rax)
        RSP: RETURN.to_bytes(8, "little") + bytes(range(8, 32)),
    })


def context(regs: Mapping[str, int] = REGS, function: str | None = "text_poke_early",
            mem: Memory | None = None, caller: int | None = RETURN) -> StopContext:
    return StopContext(registers=dict(regs), read=(mem or memory()).read, symbols=SYMBOLS,
                       pv_ops={SAVE_FL_SLOT: "irq.save_fl", 0x1F: "irq.irq_disable"},
                       pv_sites={SITE: SAVE_FL_SLOT, SITE + 0x40: 0x1F}, function=function, caller=caller)


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return tmp_path / "nmi.yaml"


def rules(body: str) -> str:
    """A config whose scenario has the rules in ``body`` (already indented by 4); they start at line 3."""
    return "scenario:\n  rules:\n" + body


def one_rule(cfg: Config) -> Rule:
    assert cfg.scenario is not None and len(cfg.scenario.rules) == 1
    return cfg.scenario.rules[0]


# --------------------------------------------------------------------------- the YAML language


def test_example_from_the_brief_parses(cfg_path: Path) -> None:
    text = rules(
        "    - on: text_poke_bp_batch\n"
        "      do: [inject-nmi]\n"
        "    - on:\n"
        "        at: text_poke_early\n"
        "        hit: 200\n"
        "        when:\n"
        "          caller: \"^apply_paravirt\\\\+\"\n"
        "          addr_in: native_flush_tlb_local\n"
        "          pv_op: irq.save_fl\n"
        "          len: 6\n"
        "          regs: {rdi: 0xffffffff81000000}\n"
        "      do:\n"
        "        - skip\n"
        "        - skip: {return: 0}\n"
        "        - write: {at: \"rdi + 9\", bytes: \"02\"}\n"
        "        - write: {at: rdi, u16: 0x1f0f}\n"
        "        - set: {rdx: \"len - 1\"}\n"
        "        - dump: {at: addr, len: 16}\n"
        "        - record: [addr, len, \"rsp\"]\n"
        "        - record\n"
        "        - inject-nmi\n"
        "        - continue\n"
    ) + "expect:\n  stops:\n    - {at: text_poke_early, count: 1, caller: '^apply_paravirt'}\n  nmi: arrived\n"
    cfg = parse_config(text, cfg_path)
    assert cfg.scenario is not None
    first, second = cfg.scenario.rules
    assert first == Rule(Trigger("text_poke_bp_batch"), (Action("inject-nmi"),))
    assert (first.line, first.on.line, first.do[0].line) == (3, 3, 4)
    assert second.line == 5
    on = second.on
    assert (on.at, on.hit) == ("text_poke_early", 200)
    assert [c.kind for c in on.when] == ["caller", "addr_in", "pv_op", "len", "reg"]
    assert on.when[0].pattern is not None and on.when[0].pattern.pattern == r"^apply_paravirt\+"
    assert on.when[1].name == "native_flush_tlb_local" and on.when[2].name == "irq.save_fl"
    assert on.when[3].value == "6"
    assert (on.when[4].name, on.when[4].value) == ("rdi", "0xffffffff81000000")
    assert [c.line for c in on.when] == [9, 10, 11, 12, 13]
    assert [a.kind for a in second.do] == ["skip", "skip", "write", "write", "set", "dump", "record", "record",
                                           "inject-nmi", "continue"]
    skip, skip_ret, write, write16, set_, dump, record, record_args, _, _ = second.do
    assert skip.value is None and skip_ret.value == "0"
    assert (write.at, write.data, write.width) == ("rdi + 9", b"\x02", None)
    assert (write16.at, write16.value, write16.width) == ("rdi", "0x1f0f", 2)
    assert set_.registers == (("rdx", "len - 1"),)
    assert (dump.at, dump.length) == ("addr", 16)
    assert record.names == ("addr", "len", "rsp") and record_args.names == ()
    assert [a.line for a in second.do] == list(range(15, 25))
    assert cfg.scenario.max_stops == 1000
    assert cfg.scenario.injects_nmi()
    assert cfg.expect.stops == (StopExpect("text_poke_early", (1, 1), re.compile("^apply_paravirt")),)
    assert cfg.expect.stops[0].line == 27
    assert cfg.expect.nmi == "arrived"
    assert cfg.lines["scenario.rules[1].do[3].write.at"] == 18
    assert cfg.lines["scenario.rules[1].on.when.regs.rdi"] == 13


def test_forms_that_mean_the_same(cfg_path: Path) -> None:
    short = parse_config(rules("    - on: int3_magic\n      do: record\n"), cfg_path)
    long = parse_config(rules("    - on: {at: int3_magic, when: {}}\n      do: [{record: }]\n"), cfg_path)
    assert short.scenario == long.scenario
    assert one_rule(short).do == (Action("record"),)
    # conditions come out in one order whatever the file's
    a = parse_config(rules("    - on: {at: text_poke_early, when: {len: 6, caller: x}}\n      do: [record]\n"))
    b = parse_config(rules("    - on: {at: text_poke_early, when: {caller: x, len: 0x6}}\n      do: [record]\n"))
    assert a.scenario == b.scenario


@pytest.mark.parametrize("at, symbol, value", [
    ("text_poke_early", "text_poke_early", 0),
    ("text_poke_early+0x10", "text_poke_early", 0x10),
    ("text_poke_early + 16", "text_poke_early", 16),
    ("__x64_sys_sync", "__x64_sys_sync", 0),
    ("foo.cold+0x3", "foo.cold", 3),
    ("0xffffffff81000000", None, 0xFFFFFFFF81000000),
])
def test_locations(at: str, symbol: str | None, value: int) -> None:
    assert parse_location(at) == (symbol, value)


def test_function_of_only_at_an_entry() -> None:
    assert function_of(Trigger("text_poke_early")) == "text_poke_early"
    assert function_of(Trigger("int3_selftest")) == "int3_selftest"      # an entry, without known arguments
    assert function_of(Trigger("text_poke_early+0x10")) is None
    assert function_of(Trigger("0xffffffff8106a4e0")) is None


def test_yaml_integer_location_is_taken_as_written(cfg_path: Path) -> None:
    cfg = parse_config(rules("    - on: 0xffffffff8106a4e0\n      do: [inject-nmi]\n"), cfg_path)
    assert one_rule(cfg).on.at == "0xffffffff8106a4e0"


def test_constants_are_spelled_one_way(cfg_path: Path) -> None:
    cfg = parse_config(rules("    - on: text_poke_early\n      do:\n"
                             "        - set: {rax: 017, rbx: 1_000, rcx: '0x10', rdx: -1, rsi: '2 * (3 + 4)',"
                             " rdi: 0xffffffff81000000}\n"), cfg_path)
    assert one_rule(cfg).do[0].registers == (("rax", "15"), ("rbx", "1000"), ("rcx", "16"), ("rdx", "-1"),
                                             ("rsi", "14"), ("rdi", "0xffffffff81000000"))


@pytest.mark.parametrize("value, data", [
    ("'02'", b"\x02"), ("90", b"\x90"), ("'0f 1f 44 00 00'", bytes.fromhex("0f1f440000")),
    ("0f1f4400", bytes.fromhex("0f1f4400")), ("'CC cc'", b"\xcc\xcc"),
])
def test_write_bytes_forms(cfg_path: Path, value: str, data: bytes) -> None:
    cfg = parse_config(rules(f"    - on: text_poke_early\n      do: [{{write: {{at: rdi, bytes: {value}}}}}]\n"),
                       cfg_path)
    assert one_rule(cfg).do[0].data == data


# (rules body, line the error must name, fragment)
ERRORS = [
    # structure
    ("    - on: int3_magic\n", 3, "scenario.rules[0].do: nothing to do: add record or continue"),
    ("    - on: int3_magic\n      do: []\n", 4, "nothing to do: add record or continue"),
    ("    - on: int3_magic\n      do:\n", 3, "nothing to do: add record or continue"),
    ("    - do: [record]\n", 3, "scenario.rules[0] needs on: (where to stop)"),
    ("    - int3_magic\n", 3, "scenario.rules[0] must be a mapping such as"),
    ("    - on: int3_magic\n      do: [record]\n      what: 1\n", 5,
     "unknown key 'what' in scenario.rules[0] (valid keys: on, do)"),
    ("    - on: int3_magic\n      doo: [record]\n", 4, "unknown key 'doo' in scenario.rules[0] (did you mean 'do'?)"),
    ("    - on: int3_magic\n      when: {len: 1}\n      do: [record]\n", 4,
     "unknown key 'when' in scenario.rules[0] (it belongs under on"),
    ("    - on: int3_magic\n      skip:\n", 4, "(it is an action: put it in the rule's do"),
    ("    - on: int3_magic\n      caller: x\n", 4, "(it is a condition: put it under on.when)"),
    ("    - on: {at: int3_magic, caller: x}\n      do: [record]\n", 3,
     "unknown key 'caller' in scenario.rules[0].on (it is a condition: put it under when)"),
    ("    - on: {at: int3_magic, wen: {}}\n      do: [record]\n", 3, "(did you mean 'when'?)"),
    ("    - on: {at: text_poke_early, when: {lenght: 6}}\n      do: [record]\n", 3,
     "unknown key 'lenght' in scenario.rules[0].on.when (did you mean 'len'?)"),
    ("    - on: {at: text_poke_early, when: {hit: 6}}\n      do: [record]\n", 3,
     "(it belongs under on, next to when)"),
    ("    - on: {hit: 2}\n      do: [record]\n", 3, "scenario.rules[0].on needs at: (where to stop)"),
    ("    - on: [int3_magic]\n      do: [record]\n", 3, "scenario.rules[0].on must be a location"),
    ("    - on:\n      do: [record]\n", 3, "scenario.rules[0].on must be a location"),
    ("    - on: int3 magic\n      do: [record]\n", 3, "'int3 magic' is not a location"),
    ("    - on: text_poke_early-4\n      do: [record]\n", 3, "is not a location"),
    ("    - on: 0x1ffffffffffffffff\n      do: [record]\n", 3, "is not a location"),
    ("    - on: {at: int3_magic, hit: 0}\n      do: [record]\n", 3,
     "scenario.rules[0].on.hit must be a whole number >= 1, not '0'"),
    ("    - on:\n        at: int3_magic\n        hit: -2\n      do: [record]\n", 5, "hit must be a whole number >= 1"),
    ("    - on: int3_magic\n      do: [record]\n    - on: int3_magic\n      do: [jump]\n", 6,
     "scenario.rules[1].do[0]: unknown action 'jump' (one of skip, write, set, dump, record, inject-nmi, continue)"),
    ("    - on: int3_magic\n      do: [inject_nmi]\n", 4, "(did you mean 'inject-nmi'?)"),
    ("    - on: int3_magic\n      do: [{skip: , record: }]\n", 4,
     "must be one action, such as skip or write"),
    ("    - on: int3_magic\n      do: [continue, record]\n", 4,
     "do[1]: continue ends the rule's actions; move it last"),
    ("    - on: int3_magic\n      do: [{inject-nmi: 2}]\n", 4, "inject-nmi takes no options"),
    ("    - on: int3_magic\n      do: [[record]]\n", 4, "must be an action"),
    # skip
    ("    - on: text_poke_early+0x10\n      do: [skip]\n", 4,
     "skip returns from a function at its entry, and 'text_poke_early+0x10' is not a function's entry"),
    ("    - on: 0xffffffff8106a4e0\n      do: [skip]\n", 4, "is not a function's entry"),
    ("    - on: text_poke_early\n      do: [{skip: {retrun: 0}}]\n", 4,
     "unknown key 'retrun' in scenario.rules[0].do[0].skip (did you mean 'return'?)"),
    ("    - on: text_poke_early\n      do: [{skip: 0}]\n", 4, "do[0].skip must be a mapping such as {return: 0}"),
    ("    - on: text_poke_early\n      do:\n        - skip: {return: nope!}\n", 5,
     "do[0].skip.return: cannot read '!' at column 5 of 'nope!'"),
    # write
    ("    - on: text_poke_early\n      do: [{write: {at: rdi}}]\n", 4,
     "do[0].write needs exactly one of bytes, u8, u16, u32, u64"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, bytes: '90', u8: 1}}]\n", 4, "(it has bytes, u8)"),
    ("    - on: text_poke_early\n      do: [{write: {bytes: '90'}}]\n", 4, "do[0].write needs at:"),
    ("    - on: text_poke_early\n      do:\n        - write:\n            at: rdi\n            bytes: 9\n", 7,
     "do[0].write.bytes must be hex byte pairs such as '0f 1f 44 00 00' or '0f1f440000', not '9'"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, bytes: 'zz'}}]\n", 4, "must be hex byte pairs"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, bytes: '0f 1 f'}}]\n", 4, "must be hex byte pairs"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, bytes: ''}}]\n", 4, "must be hex byte pairs"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, bytes: '" + "90" * 4097 + "'}}]\n", 4,
     "4097 bytes; at most 4096"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, u8: 256}}]\n", 4, "do[0].write.u8: 256 does not fit in 8 bits"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, u16: '0x100 * 0x100'}}]\n", 4, "does not fit in 16 bits"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, u64: 0x1ffffffffffffffff}}]\n", 4,
     "does not fit in 64 bits"),
    ("    - on: text_poke_early\n      do: [{write: {at: rdi, u24: 1}}]\n", 4, "unknown key 'u24'"),
    ("    - on: text_poke_early\n      do: [write]\n", 4, "do[0] must be a mapping such as {at: 'rdi + 9'"),
    # set
    ("    - on: text_poke_early\n      do: [set]\n", 4, "do[0] needs registers and values"),
    ("    - on: text_poke_early\n      do: [{set: {edx: 1}}]\n", 4,
     "'edx' is not a register (one of rax, rbx"),
    ("    - on: text_poke_early\n      do: [{set: {edx: 1}}]\n", 4, "expressions read whole registers: use rdx"),
    ("    - on: text_poke_early\n      do: [{set: {rdz: 1}}]\n", 4, "(did you mean 'rdx'?)"),
    ("    - on: text_poke_early\n      do: [{set: {rdx: 1, rdx: 2}}]\n", 4, "duplicate key 'scenario.rules[0].do[0].set.rdx'"),
    ("    - on: text_poke_early\n      do: [{set: {}}]\n", 4, "must be a mapping of registers to values"),
    ("    - on: text_poke_early\n      do: [{set: [rdx]}]\n", 4, "must be a mapping of registers to values"),
    ("    - on: text_poke_early\n      do: [{set: {rdx: yes}}]\n", 4, "do[0].set.rdx must be an expression"),
    ("    - on: text_poke_early\n      do: [{set: {rdx: 1.5}}]\n", 4, "must be an expression such as"),
    # dump
    ("    - on: text_poke_early\n      do: [{dump: {at: addr}}]\n", 4, "do[0].dump needs len: (e.g. {at: addr, len: 16})"),
    ("    - on: text_poke_early\n      do: [{dump: {at: addr, len: 0}}]\n", 4,
     "do[0].dump.len must be a number of bytes from 1 to 1048576 (1 MiB), not '0'"),
    ("    - on: text_poke_early\n      do: [{dump: {at: addr, len: 1048577}}]\n", 4, "from 1 to 1048576"),
    ("    - on: text_poke_early\n      do: [{dump: {at: addr, len: len}}]\n", 4, "not 'len'"),
    ("    - on: text_poke_early\n      do: [{dump: {len: 4}}]\n", 4, "needs at:"),
    # record
    ("    - on: text_poke_early+0x10\n      do: [record]\n", 4,
     "record without a list records the function's arguments, but 'text_poke_early+0x10' is not a function's entry"),
    ("    - on: int3_selftest\n      do: [record]\n", 4, "patchscope knows no arguments of int3_selftest"),
    ("    - on: text_poke_early\n      do: [{record: [addr, addr]}]\n", 4, "record[1]: 'addr' is listed twice"),
    ("    - on: text_poke_early\n      do: [{record: {addr: 1}}]\n", 4, "must be a list of expressions"),
    # expressions
    ("    - on: text_poke_early\n      do: [{record: ['rdi +']}]\n", 4, "'rdi +' ends too early: expected a number"),
    ("    - on: text_poke_early\n      do: [{record: ['(rdi']}]\n", 4, "expected ')'"),
    ("    - on: text_poke_early\n      do: [{record: ['rdi rsi']}]\n", 4,
     "expected an operator (+ - *) at column 5 of 'rdi rsi', found 'rsi'"),
    ("    - on: text_poke_early\n      do: [{record: ['rdi / 2']}]\n", 4, "cannot read '/ 2' at column 5"),
    ("    - on: text_poke_early\n      do: [{record: ['10abc']}]\n", 4, "cannot read '10abc'"),
    ("    - on: text_poke_early\n      do: [{record: ['" + "(" * 40 + "1" + ")" * 40 + "']}]\n", 4,
     "nested too deeply"),
    ("    - on: text_poke_early\n      do: [{record: ['" + "1+" * 200 + "1']}]\n", 4, "the limit is 256"),
    ("    - on: text_poke_early\n      do: [{record: ['']}]\n", 4, "is empty"),
    ("    - on: text_poke_early\n      do: [{record: [eax]}]\n", 4,
     "'eax' is part of a register; expressions read whole registers: use rax"),
    ("    - on: text_poke_early\n      do: [{record: [RDI]}]\n", 4, "registers are written in lower case: rdi"),
    ("    - on: text_poke_early\n      do: [{record: [start]}]\n", 4,
     "text_poke_early has no argument 'start' (its arguments: addr, opcode, len)"),
    ("    - on: text_poke_early+0x10\n      do: [{record: ['addr + 1']}]\n", 4,
     "'addr' is an argument name, and arguments exist only at a function's entry"),
    ("    - on: int3_selftest\n      do: [{record: [len]}]\n", 4, "patchscope knows no arguments of int3_selftest"),
    # conditions
    ("    - on: {at: text_poke_early+0x10, when: {len: 6}}\n      do: [record: [rdx]]\n", 3,
     ("on.when.len needs the function's 'len' argument, and arguments exist only at a function's entry; "
      "'text_poke_early+0x10' is not one (on: text_poke_early)")),
    ("    - on: {at: apply_paravirt, when: {len: 6}}\n      do: [record]\n", 3,
     "needs the function's 'len' argument, and apply_paravirt has none (functions with one: "),
    ("    - on: {at: int3_magic, when: {addr_in: native_flush_tlb_local}}\n      do: [record]\n", 3,
     "on.when.addr_in needs the function's 'addr' argument, and int3_magic has none"),
    ("    - on: {at: arch_jump_label_transform, when: {pv_op: irq.save_fl}}\n      do: [record]\n", 3,
     "needs the function's 'addr' argument, and arch_jump_label_transform has none"),
    ("    - on: {at: text_poke_early, when: {pv_op: save_fl}}\n      do: [record]\n", 3,
     "on.when.pv_op must be a pv_ops member such as 'irq.save_fl', not 'save_fl'"),
    ("    - on: {at: text_poke_early, when: {addr_in: 'a b'}}\n      do: [record]\n", 3,
     "on.when.addr_in must be a kernel symbol"),
    ("    - on: {at: text_poke_early, when: {caller: '(x'}}\n      do: [record]\n", 3,
     "on.when.caller: bad regex '(x'"),
    ("    - on: {at: text_poke_early, when: {caller: ''}}\n      do: [record]\n", 3, "the regex is empty"),
    ("    - on: {at: text_poke_early, when: {regs: {rdq: 1}}}\n      do: [record]\n", 3, "'rdq' is not a register"),
    ("    - on: {at: text_poke_early, when: {regs: {}}}\n      do: [record]\n", 3,
     "on.when.regs must be a mapping of registers to values"),
    ("    - on: {at: text_poke_early, when: {len: 'len +'}}\n      do: [record]\n", 3, "ends too early"),
    ("    - on: {at: text_poke_early, when: [len]}\n      do: [record]\n", 3,
     "scenario.rules[0].on.when must be a mapping of keys, not a list"),
]


@pytest.mark.parametrize("body, line, fragment", ERRORS, ids=[f"{i}-{e[2][:40]}" for i, e in enumerate(ERRORS)])
def test_rule_errors_name_file_line_and_fix(cfg_path: Path, body: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(rules(body), cfg_path)
    message = str(info.value)
    assert info.value.path == cfg_path and info.value.line == line, message
    assert message.startswith(f"{cfg_path}:{line}: "), message
    assert fragment in message, message
    assert "\n" not in message


SECTION_ERRORS = [
    ("scenario:\n  max_stops: 10\n", 1, "scenario needs rules:"),
    ("scenario:\n  rules: []\n", 2, "scenario.rules must be a list of rules"),
    ("scenario:\n  rules: {on: x}\n", 2, "scenario.rules must be a list of rules"),
    ("scenario: [a]\n", 1, "scenario must be a mapping of keys"),
    ("scenario:\n  max_stop: 10\n", 2, "unknown key 'max_stop' in scenario (did you mean 'max_stops'?)"),
    ("rules: []\n", 1, "did you mean 'scenario.rules'? it belongs under scenario"),
    ("stops: []\n", 1, "did you mean 'expect.stops'? it belongs under expect"),
    ("scenario:\n  max_stops: 0\n  rules: [{on: x, do: [record]}]\n", 2,
     "scenario.max_stops must be a whole number from 1 to 1000000, not '0'"),
    ("scenario:\n  max_stops: 1000001\n", 2, "from 1 to 1000000"),
    ("scenario:\n  max_stops: lots\n", 2, "not 'lots'"),
    # expect.stops and expect.nmi
    ("expect:\n  stops: [{at: int3_magic, count: 1}]\n", 2,
     "expect.stops needs a scenario: section whose rules stop there"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n    - at: int3_magc\n", 6,
     "expect.stops[0].at: no scenario rule stops at 'int3_magc' (did you mean 'int3_magic'?)"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n    - at: int3_magic+0\n", 6,
     "write a rule's on: exactly as it is written (int3_magic)"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n    - count: 1\n", 6,
     "expect.stops[0] needs at:"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n    - {at: int3_magic, count: -1}\n",
     6, "expect.stops[0].count must be a number of stops or [min, max] with min <= max, not '-1'"),
    (("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n"
     "    - {at: int3_magic, count: [3, 1]}\n"), 6, "count must be a number of stops or [min, max]"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops:\n    - {at: int3_magic, calls: x}\n",
     6, "unknown key 'calls' in expect.stops[0] (did you mean 'caller'?)"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops: {at: int3_magic}\n", 5,
     "expect.stops must be a list such as [{at: int3_magic, count: 1}]"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  stops: [{at: int3_magic, caller: '['}]\n",
     5, "expect.stops[0].caller: bad regex '['"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [record]}\nexpect:\n  nmi: delivered\n", 5,
     "expect.nmi needs a scenario rule that injects an NMI (do: [inject-nmi]); add one or remove expect.nmi"),
    ("expect:\n  nmi: lost\n", 2, "expect.nmi needs a scenario rule that injects an NMI"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [inject-nmi]}\nexpect:\n  nmi: delivred\n", 5,
     "expect.nmi must be one of delivered, ignored, early, arrived, lost, not 'delivred' (did you mean 'delivered'?)"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [inject-nmi]}\nexpect:\n  nmi: []\n", 5,
     "expect.nmi must list at least one of delivered, ignored, early, arrived, lost (one per injected NMI)"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [inject-nmi]}\nexpect:\n  nmi:\n    - delivered\n    - lots\n",
     7, "expect.nmi[1] must be one of delivered"),
    ("scenario:\n  rules:\n    - {on: int3_magic, do: [inject-nmi]}\nexpect:\n  nmi: {a: 1}\n", 5,
     "expect.nmi must be one of delivered"),
]


@pytest.mark.parametrize("text, line, fragment", SECTION_ERRORS,
                         ids=[f"{i}-{e[2][:40]}" for i, e in enumerate(SECTION_ERRORS)])
def test_section_errors_name_file_line_and_fix(cfg_path: Path, text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, cfg_path)
    message = str(info.value)
    assert info.value.line == line, message
    assert message.startswith(f"{cfg_path}:{line}: "), message
    assert fragment in message, message


def test_stop_expectations(cfg_path: Path) -> None:
    cfg = parse_config("scenario:\n  max_stops: 50\n  rules:\n    - {on: int3_magic, do: [record]}\n"
                       "expect:\n  stops:\n    - at: int3_magic\n    - {at: int3_magic, count: [0, 2]}\n", cfg_path)
    assert cfg.scenario is not None and cfg.scenario.max_stops == 50
    assert not cfg.scenario.injects_nmi()
    assert [s.count for s in cfg.expect.stops] == [(1, 1_000_000), (0, 2)]   # default: at least once
    assert cfg.expect.nmi is None


def test_a_scenario_key_without_rules_is_refused_and_no_key_means_none(cfg_path: Path) -> None:
    # the docs: a scenario without rules is refused; "scenario: {}" ran as if absent (issue 15)
    for text in ("scenario:\n", "scenario: {}\n", "scenario: {max_stops: 5}\n"):
        with pytest.raises(ConfigError, match=r"nmi\.yaml:1: scenario needs rules:"):
            parse_config(text, cfg_path)
    assert parse_config("{}", cfg_path).scenario is None


# --------------------------------------------------------------------------- round trip


ROUND_TRIP = rules(
    "    - on: text_poke_bp_batch\n"
    "      do: [inject-nmi]\n"
    "    - on: {at: text_poke_early, hit: 200, when: {caller: '^apply_paravirt', addr_in: native_flush_tlb_local,"
    " pv_op: irq.save_fl, len: 6, regs: {rdi: 0xffffffff8108a2b4, rsi: 'opcode'}}}\n"
    "      do:\n"
    "        - skip: {return: 'len - 1'}\n"
    "        - write: {at: 'rdi + 9', bytes: '0f 1f 00'}\n"
    "        - write: {at: 0xffffffff8108a2b4, u32: 0xcccccccc}\n"
    "        - set: {rdx: 5, rax: 'native_flush_tlb_local + 0x10'}\n"
    "        - dump: {at: addr, len: 16}\n"
    "        - record: [addr, 0x10, -1]\n"
    "        - record\n"
    "        - continue\n"
    "    - on: paravirt_patch\n"
    "      do: [skip]\n"
) + ("  max_stops: 20\nexpect:\n  stops:\n    - {at: text_poke_early, count: [0, 1], caller: '^apply_'}\n"
     "    - {at: paravirt_patch}\n  nmi: lost\n")


def test_round_trip_of_a_config_with_a_scenario(cfg_path: Path) -> None:
    cfg = parse_config(ROUND_TRIP, cfg_path)
    data = to_yaml_dict(cfg)
    json.dumps(data)
    assert data["scenario"] == {"max_stops": 20, "rules": [
        {"on": "text_poke_bp_batch", "do": ["inject-nmi"]},
        {"on": {"at": "text_poke_early", "hit": 200,
                "when": {"caller": "^apply_paravirt", "addr_in": "native_flush_tlb_local", "pv_op": "irq.save_fl",
                         "len": 6, "regs": {"rdi": "0xffffffff8108a2b4", "rsi": "opcode"}}},
         "do": [{"skip": {"return": "len - 1"}},
                {"write": {"at": "rdi + 9", "bytes": "0f 1f 00"}},
                {"write": {"at": "0xffffffff8108a2b4", "u32": "0xcccccccc"}},
                {"set": {"rdx": 5, "rax": "native_flush_tlb_local + 0x10"}},
                {"dump": {"at": "addr", "len": 16}},
                {"record": ["addr", 16, -1]},
                "record", "continue"]},
        {"on": "paravirt_patch", "do": ["skip"]}]}
    expect = data["expect"]
    assert isinstance(expect, dict)
    assert expect["stops"] == [{"at": "text_poke_early", "count": [0, 1], "caller": "^apply_"},
                               {"at": "paravirt_patch", "count": [1, 1_000_000]}]
    assert expect["nmi"] == "lost"
    again = parse_config(yaml.safe_dump(data), cfg_path)
    assert again == cfg
    assert hash(again) == hash(cfg)
    assert to_yaml_dict(again) == data


def test_round_trip_through_default_config(cfg_path: Path) -> None:
    from framework.config import default_config
    cfg = parse_config(ROUND_TRIP, cfg_path)
    data = to_yaml_dict(cfg)
    assert default_config(cfg.name, **{k: v for k, v in data.items() if k != "name"}) \
        == dataclasses.replace(cfg, path=None)
    # dataclasses are accepted too, and checked like YAML
    assert default_config(cfg.name, scenario=cfg.scenario, expect=cfg.expect).scenario == cfg.scenario
    with pytest.raises(ConfigError, match="skip returns from a function at its entry"):
        default_config("x", scenario=Scenario((Rule(Trigger("int3_magic+0x4"), (Action("skip"),)),)))


def test_configs_without_scenario_keep_their_yaml(cfg_path: Path) -> None:
    data = to_yaml_dict(parse_config("{}", cfg_path))
    assert "scenario" not in data
    expect = data["expect"]
    assert isinstance(expect, dict) and "stops" not in expect and "nmi" not in expect


# --------------------------------------------------------------------------- expressions


@pytest.mark.parametrize("text, value", [
    ("6", 6), ("0x10", 16), ("0X1f", 31), ("rdi", SITE), ("rdi + 9", SITE + 9), ("len - 1", 5),
    ("len*2+1", 13), ("(len + 1) * 2", 14), ("2 * 3 + 4", 10), ("2 + 3 * 4", 14), ("10 - 3 - 2", 5),
    ("-1", (1 << 64) - 1), ("0 - len", (1 << 64) - 6), ("--5", 5), ("+5", 5), ("-(2 - 3)", 1),
    ("addr", SITE), ("opcode", INSN_BUFF), ("rsp + 8", RSP + 8), ("eflags", 0x46),
    ("native_flush_tlb_local", 0xFFFFFFFF8108A2B0), ("addr - native_flush_tlb_local", 4),
    ("pv_ops + 8 * 0x1e", 0xFFFFFFFF82A1C340 + 8 * 0x1E),
    ("0xffffffffffffffff + len", 5), ("0x8000000000000000 * len", 0),
])
def test_evaluate(text: str, value: int) -> None:
    assert evaluate(text, context()) == value


def test_registers_win_over_arguments_and_symbols() -> None:
    regs = {**REGS, "rdx": 0xFFFFFFFF00000006}
    ctx = context(regs, function="paravirt_patch")   # len is an unsigned int in rcx there
    assert evaluate("rcx", ctx) == 6 and evaluate("len", ctx) == 6
    assert evaluate("type", dataclasses.replace(ctx, registers={**regs, "rdi": 0xFFFF88800003A1E})) == 0x1E


def test_evaluate_unknown_symbol_is_a_config_error_with_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"no kernel symbol 'native_flush_tlb_locl' \(did you mean "
                                          r"'native_flush_tlb_local'\?\)"):
        evaluate("native_flush_tlb_locl + 1", context())


def test_parse_expression() -> None:
    e = parse_expression(" (rdi + 9) * len ")
    assert e.names == frozenset({"rdi", "len"}) and e.literal is None
    assert parse_expression("2 * (3 + 4)").literal == 14
    assert parse_expression("-0x10").literal == -16
    assert parse_expression("foo.cold + 0x3").names == frozenset({"foo.cold"})
    for bad in ("", "  ", "1 +", "()", "(1", "1)", "a b", "1 2", "$x", "1 / 2", "0x", "1e3", "rdi[1]", "*1",
                "0x1" + "0" * 17, "(" * 33 + "1" + ")" * 33, "x" * 257):
        with pytest.raises(ValueError):
            parse_expression(bad)


def test_name_problem() -> None:
    assert name_problem("rdi", None) is None
    assert name_problem("len", "text_poke_early") is None
    assert name_problem("some_symbol", "text_poke_early") is None
    assert name_problem("len", "apply_paravirt") is not None
    assert "use rdi" in (name_problem("dil", "paravirt_patch") or "")
    assert "use eflags" in (name_problem("rflags", None) or "")


# --------------------------------------------------------------------------- stopping


def test_location_resolves_symbols_offsets_and_addresses() -> None:
    assert location(Trigger("text_poke_early"), SYMBOLS, None) == 0xFFFFFFFF8106A4E0
    assert location(Trigger("text_poke_early+0x10"), SYMBOLS, None) == 0xFFFFFFFF8106A4F0
    assert location(Trigger("0xffffffff81000000"), SYMBOLS, None) == 0xFFFFFFFF81000000


def test_location_unknown_symbol_names_the_rule_line_with_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        location(Trigger("text_poke_erly", line=7), SYMBOLS, tmp_path / "a.yaml")
    assert str(info.value) == (f"{tmp_path / 'a.yaml'}:7: scenario: on text_poke_erly: the kernel has no symbol "
                               "'text_poke_erly' (did you mean 'text_poke_early'?)")


def test_resolve_checks_every_symbol_before_boot(cfg_path: Path) -> None:
    cfg = parse_config(rules("    - on: text_poke_early\n      do: [{record: ['native_flush_tlb_local + len']}]\n"
                             "    - on: {at: text_poke+4, when: {regs: {rdi: int3_magic}}}\n      do: [inject-nmi]\n"),
                       cfg_path)
    assert cfg.scenario is not None
    assert resolve(cfg.scenario, SYMBOLS, cfg_path) == (0xFFFFFFFF8106A4E0, 0xFFFFFFFF8106A864)
    bad = parse_config(rules("    - on: text_poke_early\n      do:\n        - set: {rax: 'native_flush_tlb_locale'}\n"),
                       cfg_path)
    assert bad.scenario is not None
    with pytest.raises(ConfigError) as info:
        resolve(bad.scenario, SYMBOLS, cfg_path)
    assert info.value.line == 5
    assert "set: the kernel has no symbol 'native_flush_tlb_locale' (did you mean 'native_flush_tlb_local'?)" \
        in str(info.value)
    addr_in = parse_config(rules("    - on: {at: text_poke_early, when: {addr_in: native_flush_tlb}}\n"
                                 "      do: [record]\n"), cfg_path)
    assert addr_in.scenario is not None
    with pytest.raises(ConfigError, match=r":3: scenario: on text_poke_early, addr_in: the kernel has no symbol "
                                          r"'native_flush_tlb' \(did you mean"):
        resolve(addr_in.scenario, SYMBOLS, cfg_path)
    pv = parse_config(rules("    - on: {at: text_poke_early, when: {pv_op: irq.save_flags}}\n"
                            "      do: [record]\n"), cfg_path)
    assert pv.scenario is not None
    resolve(pv.scenario, SYMBOLS, cfg_path)                       # pv op names unknown: not checked
    with pytest.raises(ConfigError, match=r"no pv op 'irq.save_flags' \(did you mean 'irq.save_fl'\?\)"):
        resolve(pv.scenario, SYMBOLS, cfg_path, {SAVE_FL_SLOT: "irq.save_fl"})


def test_arguments_follow_the_sysv_registers_and_c_types() -> None:
    assert arguments("text_poke_early", REGS) == {"addr": SITE, "opcode": INSN_BUFF, "len": 6}
    assert arguments("paravirt_patch", {**REGS, "rdi": 0xFFFF88800003A1E, "rcx": 0xFFFFFFFF00000006}) == \
        {"type": 0x1E, "buf": INSN_BUFF, "addr": 6, "len": 6}
    assert arguments("arch_static_call_transform", {**REGS, "rcx": 0x101}) == \
        {"site": SITE, "tramp": INSN_BUFF, "func": 6, "tail": 1}
    assert set(arguments("perf_event_text_poke", REGS)) == {"addr", "old", "old_len", "new", "new_len"}
    assert arguments("int3_selftest", REGS) == {} and arguments(None, REGS) == {}
    assert SIGNATURES["text_poke_bp_batch"] == ("tp", "nr")


def cond(text: str) -> Trigger:
    """The trigger of a one-rule config whose on is ``text``."""
    return one_rule(parse_config(rules(f"    - on: {text}\n      do: [inject-nmi]\n"))).on


@pytest.mark.parametrize("on, expected", [
    ("{at: text_poke_early, when: {caller: '^apply_paravirt\\+'}}", True),
    ("{at: text_poke_early, when: {caller: '^apply_paravirt\\+0x9b$'}}", True),
    ("{at: text_poke_early, when: {caller: '^apply_alternatives'}}", False),
    ("{at: text_poke_early, when: {addr_in: native_flush_tlb_local}}", True),
    ("{at: text_poke_early, when: {addr_in: native_flush_tlb_global}}", False),
    ("{at: text_poke_early, when: {pv_op: irq.save_fl}}", True),
    ("{at: text_poke_early, when: {pv_op: irq.irq_disable}}", False),
    ("{at: text_poke_early, when: {len: 6}}", True),
    ("{at: text_poke_early, when: {len: 'rcx'}}", True),
    ("{at: text_poke_early, when: {len: 5}}", False),
    ("{at: text_poke_early, when: {regs: {rdi: 0xffffffff8108a2b4}}}", True),
    ("{at: text_poke_early, when: {regs: {rdi: 'native_flush_tlb_local + 4', rdx: len}}}", True),
    ("{at: text_poke_early, when: {regs: {rdi: 'native_flush_tlb_local + 4', rdx: 7}}}", False),
    ("{at: text_poke_early, when: {regs: {eflags: 0x46}}}", True),
    (("{at: text_poke_early, when: {caller: apply_paravirt, addr_in: native_flush_tlb_local, pv_op: irq.save_fl,"
     " len: 6, regs: {rsi: opcode}}}"), True),
    ("{at: text_poke_early, when: {caller: apply_paravirt, len: 7}}", False),
    ("text_poke_early", True),
])
def test_conditions_at_a_text_poke_early_stop(on: str, expected: bool) -> None:
    trigger = cond(on)
    assert matches(trigger, context(function=function_of(trigger))) is expected


def test_caller_condition_without_a_caller_does_not_match() -> None:
    assert not matches(cond("{at: text_poke_early, when: {caller: '.'}}"), context(caller=None))
    unknown = context(caller=0xFFFFFFFF81000100)     # outside every symbol: formatted as hex
    assert matches(cond("{at: text_poke_early, when: {caller: '^0xffffffff81000100$'}}"), unknown)


def test_addr_in_outside_every_symbol_does_not_match() -> None:
    ctx = context({**REGS, "rdi": 0x1000})
    assert not matches(cond("{at: text_poke_early, when: {addr_in: native_flush_tlb_local}}"), ctx)
    assert not matches(cond("{at: text_poke_early, when: {pv_op: irq.save_fl}}"), ctx)   # not a pv site


def test_pv_op_at_paravirt_patch_uses_type() -> None:
    trigger = cond("{at: paravirt_patch, when: {pv_op: irq.save_fl}}")
    # paravirt_patch(u8 type, void *insn_buff, unsigned long addr, unsigned int len): dil, rsi, rdx, ecx
    regs = {**REGS, "rdi": 0xFFFF88800003A1E, "rsi": INSN_BUFF, "rdx": SITE + 0x40, "rcx": 0xFFFFFFFF00000006}
    assert matches(trigger, context(regs, function="paravirt_patch"))
    assert not matches(trigger, context({**regs, "rdi": 0x1F}, function="paravirt_patch"))
    assert matches(cond("{at: paravirt_patch, when: {len: 6, addr_in: native_flush_tlb_local}}"),
                   context(regs, function="paravirt_patch"))


def test_condition_with_unknown_symbol_names_its_line(cfg_path: Path) -> None:
    cfg = parse_config(rules("    - on:\n        at: text_poke_early\n        when:\n"
                             "          regs: {rdi: native_flush}\n      do: [record]\n"), cfg_path)
    trigger = one_rule(cfg).on
    with pytest.raises(ConfigError) as info:
        matches(trigger, dataclasses.replace(context(), path=cfg_path))
    assert info.value.line == 6 and info.value.path == cfg_path
    assert "scenario: on text_poke_early, rdi == native_flush: no kernel symbol 'native_flush'" in str(info.value)


# --------------------------------------------------------------------------- effects


def actions(text: str, on: str = "text_poke_early") -> tuple[Action, ...]:
    return one_rule(parse_config(rules(f"    - on: {on}\n      do: {text}\n"))).do


def test_skip_returns_to_the_address_on_the_stack() -> None:
    mem = memory()
    (skip,) = actions("[skip]")
    assert effects(skip, context(mem=mem)) == [SetRegister("rip", REGS["rip"], RETURN),
                                               SetRegister("rsp", RSP, RSP + 8)]
    assert (RSP, 8) in mem.reads
    (skip_ret,) = actions("[{skip: {return: 'len - 6'}}]")
    assert effects(skip_ret, context())[2:] == [SetRegister("rax", 6, 0)]
    (minus,) = actions("[{skip: {return: -1}}]")
    assert effects(minus, context())[2] == SetRegister("rax", 6, (1 << 64) - 1)


def test_write_reads_the_old_bytes_first() -> None:
    mem = memory()
    (nop, word, quad) = actions("[{write: {at: 'addr - 4', bytes: '66 90'}}, {write: {at: rdi, u16: 0xfeeb}},"
                                " {write: {at: opcode, u64: '0 - len'}}]")
    assert effects(nop, context(mem=mem)) == [WriteMemory(SITE - 4, b"\x0f\x1f", b"\x66\x90")]
    assert (SITE - 4, 2) in mem.reads
    assert effects(word, context()) == [WriteMemory(SITE, b"\xff\x15", b"\xeb\xfe")]
    [effect] = effects(quad, context(mem=Memory({INSN_BUFF: bytes(8)})))
    assert effect == WriteMemory(INSN_BUFF, bytes(8), ((1 << 64) - 6).to_bytes(8, "little"))


def test_write_of_a_value_wider_than_its_field_keeps_the_low_bytes() -> None:
    (write,) = actions("[{write: {at: rdi, u8: 'rdi'}}]")
    assert effects(write, context()) == [WriteMemory(SITE, b"\xff", bytes([SITE & 0xFF]))]


def test_set_registers() -> None:
    (set_,) = actions("[{set: {rdx: 'len - 1', rip: 'rip + 5'}}]")
    assert effects(set_, context()) == [SetRegister("rdx", 6, 5), SetRegister("rip", REGS["rip"], REGS["rip"] + 5)]


def test_dump_reads_memory() -> None:
    (dump,) = actions("[{dump: {at: opcode, len: 6}}]")
    assert effects(dump, context()) == [Dump(INSN_BUFF, bytes.fromhex("9c580f1f4000"))]


def test_record_named_values_or_the_arguments() -> None:
    named, default = actions("[{record: [addr, len, rsp, 'addr - native_flush_tlb_local']}, record]")
    assert effects(named, context()) == [Record({"addr": SITE, "len": 6, "rsp": RSP,
                                                 "addr - native_flush_tlb_local": 4})]
    assert effects(default, context()) == [Record({"addr": SITE, "opcode": INSN_BUFF, "len": 6})]


def test_inject_nmi_and_continue() -> None:
    nmi, cont = actions("[inject-nmi, continue]")
    assert effects(nmi, context()) == [InjectNmi()]
    assert effects(cont, context()) == []


def test_effects_with_unknown_symbol_name_the_action_line(cfg_path: Path) -> None:
    cfg = parse_config(rules("    - on: text_poke_early\n      do:\n        - record\n"
                             "        - set: {rax: nope_symbol}\n"), cfg_path)
    action = one_rule(cfg).do[1]
    with pytest.raises(ConfigError) as info:
        effects(action, dataclasses.replace(context(), path=cfg_path))
    assert str(info.value) == f"{cfg_path}:6: scenario: set: no kernel symbol 'nope_symbol'"


def test_effects_are_computed_not_applied() -> None:
    mem = memory()
    before = dict(mem.regions)
    for action in actions("[skip, {write: {at: rdi, bytes: 'cc'}}, {set: {rax: 1}}, record]"):
        effects(action, context(mem=mem))
    assert mem.regions == before


# --------------------------------------------------------------------------- the log


def test_effect_json() -> None:
    assert effect_json(SetRegister("rip", 0xFFFFFFFF8106A4E0, RETURN)) == \
        {"effect": "set", "register": "rip", "old": "0xffffffff8106a4e0", "new": "0xffffffff83076deb"}
    assert effect_json(SetRegister("rip", 0xFFFFFFFF8106A4E0, RETURN), SYMBOLS) == \
        {"effect": "set", "register": "rip", "old": "0xffffffff8106a4e0", "new": "0xffffffff83076deb",
         "old_symbol": "text_poke_early", "new_symbol": "apply_paravirt+0x9b"}
    assert effect_json(SetRegister("rdx", 6, 5), SYMBOLS) == \
        {"effect": "set", "register": "rdx", "old": "0x6", "new": "0x5"}
    assert effect_json(WriteMemory(SITE, b"\xff\x15", b"\x66\x90"), SYMBOLS) == \
        {"effect": "write", "address": "0xffffffff8108a2b4", "symbol": "native_flush_tlb_local+0x4",
         "old": "ff15", "new": "6690"}
    assert effect_json(WriteMemory(0x1000, b"\x00", b"\x01"), SYMBOLS) == \
        {"effect": "write", "address": "0x1000", "old": "00", "new": "01"}
    assert effect_json(InjectNmi()) == {"effect": "inject-nmi"}
    assert effect_json(Dump(INSN_BUFF, b"\x9c\x58")) == \
        {"effect": "dump", "address": "0xffffffff82c03d2e", "length": 2, "data": "9c58"}
    assert effect_json(Dump(INSN_BUFF, bytes(4096))) == \
        {"effect": "dump", "address": "0xffffffff82c03d2e", "length": 4096}
    assert effect_json(Record({"addr": SITE, "len": 6})) == \
        {"effect": "record", "values": {"addr": "0xffffffff8108a2b4", "len": "0x6"}}


def stop(n: int, rule: int = 0, at: str = "text_poke_early", caller: int | None = RETURN,
         hit: int | None = None, effects: tuple[SetRegister | WriteMemory | InjectNmi | Dump | Record, ...] = ()
         ) -> StopRecord:
    return StopRecord(n=n, rule=rule, at=at, address=SYMBOLS.address(at.split("+")[0]) or 0, caller=caller,
                      caller_symbol=SYMBOLS.format(caller) if caller is not None else None, hit=hit or n,
                      effects=effects, t=3.25 + n)


def test_records_to_json() -> None:
    record = stop(3, effects=(InjectNmi(), SetRegister("rdx", 6, 5)))
    data = record.to_json()
    json.dumps(data)
    assert data == {"stop": 3, "rule": 0, "at": "text_poke_early", "address": "0xffffffff8106a4e0",
                    "caller": "0xffffffff83076deb", "caller_symbol": "apply_paravirt+0x9b", "hit": 3,
                    "effects": [{"effect": "inject-nmi"}, {"effect": "set", "register": "rdx", "old": "0x6",
                                                           "new": "0x5"}], "t": 6.25}
    assert stop(1, caller=None).to_json()["caller"] is None
    assert NmiRecord(stop=3, state="delivered", where="default_idle+0x1f").to_json() == \
        {"nmi": "delivered", "stop": 3, "where": "default_idle+0x1f"}


# --------------------------------------------------------------------------- the verdict


JUDGED = rules(
    "    - on: text_poke_bp_batch\n"       # line 3
    "      do: [inject-nmi]\n"
    "    - on: {at: text_poke_early, hit: 200}\n"   # line 5
    "      do: [record]\n"
    "    - on: int3_magic\n"                # line 7
    "      do: [record]\n"
) + "  max_stops: 10\nexpect:\n  stops:\n    - {at: int3_magic, count: 1, caller: '^int3_selftest'}\n"


def judged(extra: str = "") -> tuple[Expect, Scenario]:
    cfg = parse_config(JUDGED + extra)
    assert cfg.scenario is not None
    return cfg.expect, cfg.scenario


INT3_CALLER = 0xFFFFFFFF8307601D     # int3_selftest+0x5d


def test_judge_passes() -> None:
    expect, scenario = judged()
    stops = [stop(1, 0, "text_poke_bp_batch", effects=(InjectNmi(),)), stop(2, 1, hit=200),
             stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    nmis = [NmiRecord(1, "delivered", "text_poke_bp_batch+0x4")]
    assert judge_scenario(expect, scenario, stops, nmis, False) == []


def test_judge_stop_count_and_caller() -> None:
    expect, scenario = judged()
    hit = stop(2, 1, hit=200)
    twice = [hit, stop(3, 2, "int3_magic", caller=INT3_CALLER), stop(4, 2, "int3_magic", caller=RETURN)]
    assert judge_scenario(expect, scenario, twice, [], False) == [
        ("expect.stops (line 12) at int3_magic: 2 stops, expected 1: stop 3 from int3_selftest+0x5d; "
         "stop 4 from apply_paravirt+0x9b"),
        ("expect.stops (line 12) at int3_magic: 1 of 2 stops from a caller not matching /^int3_selftest/: "
         "stop 4 from apply_paravirt+0x9b"),
    ]
    assert judge_scenario(expect, scenario, [hit], [], False) == \
        ["expect.stops (line 12) at int3_magic: 0 stops, expected 1"]
    unknown = [hit, stop(3, 2, "int3_magic", caller=None)]
    assert judge_scenario(expect, scenario, unknown, [], False) == [
        ("expect.stops (line 12) at int3_magic: 1 of 1 stop from a caller not matching /^int3_selftest/: "
         "stop 3 from an unknown caller")]


def test_judge_counts_a_stop_once_when_two_rules_fire_there() -> None:
    cfg = parse_config(rules("    - {on: int3_magic, do: [record]}\n    - {on: int3_magic, do: [continue]}\n")
                       + "expect:\n  stops: [{at: int3_magic, count: [1, 1]}]\n")
    assert cfg.scenario is not None
    both = [stop(1, 0, "int3_magic"), stop(1, 1, "int3_magic")]
    assert judge_scenario(cfg.expect, cfg.scenario, both, [], False) == []


def test_judge_count_ranges() -> None:
    cfg = parse_config(rules("    - {on: int3_magic, do: [record]}\n")
                       + "expect:\n  stops: [{at: int3_magic, count: [2, 3]}, {at: int3_magic}]\n")
    assert cfg.scenario is not None
    assert judge_scenario(cfg.expect, cfg.scenario, [stop(1, at="int3_magic")], [], False) == \
        ["expect.stops (line 5) at int3_magic: 1 stop, expected 2..3: stop 1 from apply_paravirt+0x9b"]
    assert judge_scenario(cfg.expect, cfg.scenario, [], [], False) == [
        "expect.stops (line 5) at int3_magic: 0 stops, expected 2..3",
        "expect.stops (line 5) at int3_magic: 0 stops, expected at least 1"]


def test_judge_lost_nmi_fails_by_default() -> None:
    expect, scenario = judged()
    assert expect.nmi is None and effective_nmi(expect, scenario) == "delivered"
    stops = [stop(1, 0, "text_poke_bp_batch"), stop(2, 1, hit=200), stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    assert judge_scenario(expect, scenario, stops, [NmiRecord(1, "lost", None)], False) == [
        ("NMI injected at stop 1 was lost: nothing reached exc_nmi; expected delivered "
         "(the default when a scenario injects one; set expect.nmi)")]
    assert judge_scenario(expect, scenario, stops, [NmiRecord(1, "ignored", "text_poke_bp_batch+0x4")], False) == [
        ("NMI injected at stop 1 was ignored: it reached exc_nmi in text_poke_bp_batch+0x4 while NMIs were ignored; "
         "expected delivered (the default when a scenario injects one; set expect.nmi)")]


@pytest.mark.parametrize("wanted, state, ok", [
    ("delivered", "delivered", True), ("delivered", "ignored", False), ("delivered", "lost", False),
    ("ignored", "ignored", True), ("ignored", "delivered", False),
    ("arrived", "delivered", True), ("arrived", "ignored", True), ("arrived", "early", True),
    ("arrived", "lost", False), ("lost", "lost", True), ("lost", "delivered", False), ("lost", "ignored", False),
    ("early", "early", True), ("early", "delivered", False), ("delivered", "early", False),
])
def test_judge_nmi_expectations(wanted: str, state: str, ok: bool) -> None:
    expect, scenario = judged(f"  nmi: {wanted}\n")
    stops = [stop(1, 0, "text_poke_bp_batch"), stop(2, 1, hit=200), stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    reasons = judge_scenario(expect, scenario, stops, [NmiRecord(1, state, "default_idle+0x1f")], False)
    assert (reasons == []) is ok, reasons
    if not ok:
        assert reasons[0].startswith(f"NMI injected at stop 1 was {state}") and reasons[0].endswith(
            f"expected {wanted}")
    if state == "delivered" and not ok:
        assert "was delivered: it interrupted default_idle+0x1f" in reasons[0]


def test_nmi_list_parses_and_round_trips(cfg_path: Path) -> None:
    cfg = parse_config(JUDGED + "  nmi: [delivered, early]\n", cfg_path)
    assert cfg.expect.nmi == ("delivered", "early")
    data = to_yaml_dict(cfg)
    assert isinstance(data["expect"], dict) and data["expect"]["nmi"] == ["delivered", "early"]
    assert parse_config(yaml.safe_dump(data), cfg_path) == cfg
    assert parse_config(JUDGED + "  nmi: [lost]\n", cfg_path).expect.nmi == ("lost",)


def test_judge_nmi_list_one_per_nmi_in_injection_order() -> None:
    expect, scenario = judged("  nmi: [early, ignored, delivered]\n")
    stops = [stop(2, 1, hit=200), stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    # records come in the order the session settled them: a lost one last
    nmis = [NmiRecord(1, "early", "start_kernel+0x2a"), NmiRecord(9, "delivered", "default_idle+0x1f"),
            NmiRecord(4, "ignored", "apply_paravirt+0x9b")]
    assert judge_scenario(expect, scenario, stops, nmis, False) == []
    swapped = [NmiRecord(1, "early", "start_kernel+0x2a"), NmiRecord(4, "delivered", "default_idle+0x1f"),
               NmiRecord(9, "lost", None)]
    assert judge_scenario(expect, scenario, stops, swapped, False) == [
        "NMI 2 (injected at stop 4) was delivered: it interrupted default_idle+0x1f; expected ignored",
        "NMI 3 (injected at stop 9) was lost: nothing reached exc_nmi; expected delivered"]
    assert judge_scenario(expect, scenario, stops, nmis[:2], False) == [
        "expect.nmi lists 3 NMIs (early, ignored, delivered), but 2 were injected (at stops 1, 9)",
        "NMI 2 (injected at stop 9) was delivered: it interrupted default_idle+0x1f; expected ignored"]
    assert judge_scenario(expect, scenario, stops, [], False) == [
        ("expect.nmi lists 3 NMIs (early, ignored, delivered), but 0 were injected: "
         "rule at line 3 (on text_poke_bp_batch) never fired")]


def test_judge_early_nmi() -> None:
    expect, scenario = judged()
    stops = [stop(2, 1, hit=200), stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    assert judge_scenario(expect, scenario, stops, [NmiRecord(1, "early", "start_kernel+0x2a")], False) == [
        ("NMI injected at stop 1 was early: it arrived in start_kernel+0x2a before trap_init(), and the early "
         "exception handler dropped it; expected delivered (the default when a scenario injects one; set expect.nmi)")]
    arrived, _ = judged("  nmi: arrived\n")
    assert judge_scenario(arrived, scenario, stops, [NmiRecord(1, "early", "start_kernel+0x2a")], False) == []


def test_judge_explicit_nmi_expectation_without_an_injection() -> None:
    expect, scenario = judged("  nmi: delivered\n")
    stops = [stop(2, 1, hit=200), stop(3, 2, "int3_magic", caller=INT3_CALLER)]
    assert judge_scenario(expect, scenario, stops, [], False) == [
        "expect.nmi is delivered, but no NMI was injected: rule at line 3 (on text_poke_bp_batch) never fired"]
    default, _ = judged()
    assert judge_scenario(default, scenario, stops, [], False) == []


def test_judge_bound_reached_and_unfired_hit() -> None:
    expect, scenario = judged()
    stops = [stop(n, 2, "int3_magic", caller=INT3_CALLER) for n in range(1, 2)]
    assert judge_scenario(expect, scenario, stops, [], True) == [
        "the scenario stopped after max_stops=10 stops; raise scenario.max_stops",
        "rule at line 5 (on text_poke_early, hit 200) never fired"]


def test_judge_without_lines() -> None:
    scenario = Scenario((Rule(Trigger("text_poke_early", hit=3), (Action("record"),)),))
    expect = Expect(stops=(StopExpect("text_poke_early", (2, 2)),))
    assert judge_scenario(expect, scenario, [], [], False) == [
        "expect.stops at text_poke_early: 0 stops, expected 2",
        "rule 1 (on text_poke_early, hit 3) never fired"]


def test_condition_and_rule_describe() -> None:
    assert Condition("len", value="6").describe() == "len == 6"
    assert Condition("reg", name="rdi", value="0x1").describe() == "rdi == 0x1"
    assert Condition("caller", pattern=re.compile("^a")).describe() == "caller ~ /^a/"
    assert Condition("pv_op", name="irq.save_fl").describe() == "pv_op irq.save_fl"
