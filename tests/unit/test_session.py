"""The session loop (framework/observe/session.py) and the scenario core on recorded and hand-written debuggers.

Recorded: tests/data/sessions/<name>-native.jsonl.gz (made by tests/record_sessions.py
from real boots) hold every call a real Session made to the debugger, with its
answer. Each is replayed through a real Session whose debugger answers from the
recording and fails the test at the first call that differs (method, arguments,
order) or is missing: any change in what the loop asks at a stop, or in which
order, shows here. Then the outcome (stops, effects, NMIs, captures) and the
verdict reasons are checked, on the recorded config and on changed expectations.
No kernel is needed: the symbols the session looked up are in the recording.

Hand-written: a small guest (``Guest``) that runs through a list of addresses
and stops at those with a breakpoint, for the loop's rules one at a time: the
traced writer's entry skip, max_stops, ``hit: N``, a skipped writer in the
trace, NMIs that never arrive or arrive early, the console's marker and crash.
Two tests pin bugs this found and that were fixed: a writer rewriting its own entry, two rules at one stop.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from framework.analysis.trace import Explainer, Model
from framework.config import Config, parse_config
from framework.debugger.contract import Breakpoint, DebuggerError, DebuggerTimeout, Stop
from framework.elf.vmlinux import Section, Symbols
from framework.observe.capture import Plan
from framework.observe.session import NOP5, Options, Outcome, Session
from framework.scenario import (
    REGISTERS,
    Dump,
    InjectNmi,
    NmiRecord,
    Record,
    SetRegister,
    StopContext,
    WriteMemory,
    effect_json,
    effects,
    function_of,
    matches,
)
from framework.verdict import judge_scenario
from tests.record_sessions import (
    FLAGS,
    SESSIONS,
    decode,
    decode_error,
    encode,
    outcome_json,
    plan_from_json,
    read_fixture,
)

FIXTURES = {p.name.removesuffix(".jsonl.gz"): p for p in sorted(SESSIONS.glob("*.jsonl.gz"))}
RECORDED = ("int3-selftest-native", "oversized-pv-patch-native", "skip-pv-patching-native",
            "nmi-during-patching-native")


# =========================================================================== replaying a recording

def _show(call: Mapping[str, Any]) -> str:
    text = f"{call['call']}({call['args']}{', ' + str(call['kw']) if call.get('kw') else ''})"
    return text if len(text) < 300 else text[:300] + "…"


class Replay:
    """A debugger answering from a recording; any call the recording does not have next fails the test."""

    def __init__(self, calls: Sequence[Mapping[str, Any]]) -> None:
        self.calls = calls
        self.at = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kw: Any) -> Any:
            return self.answer(name, args, kw)
        return method

    def answer(self, name: str, args: tuple[Any, ...], kw: Mapping[str, Any]) -> Any:
        made = {"call": name, "args": encode(args), **({"kw": encode(dict(kw))} if kw else {})}
        assert self.at < len(self.calls), f"call {self.at}: the session made {_show(made)} after the recording ended"
        want = self.calls[self.at]
        recorded = {key: want[key] for key in ("call", "args", "kw") if key in want}
        assert made == recorded, (f"call {self.at}: the session made {_show(made)}; "
                                  f"the recorded session made {_show(recorded)}")
        self.at += 1
        if "error" in want:
            raise decode_error(want["error"])
        return decode(want["result"])


class _SetAfter:
    """A console event the recorded session first saw set after ``n`` debugger calls."""

    def __init__(self, replay: Replay, n: int | None) -> None:
        self.replay, self.n = replay, n

    def is_set(self) -> bool:
        return self.n is not None and self.replay.at >= self.n


class RecordedConsole:
    def __init__(self, replay: Replay, flags: Mapping[str, int]) -> None:
        assert set(flags) <= set(FLAGS)
        self.started = time.monotonic()
        self.fatal = _SetAfter(replay, flags.get("fatal"))
        self.finished = _SetAfter(replay, flags.get("finished"))
        self.marker = _SetAfter(replay, flags.get("marker"))

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


@functools.cache
def fixture(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if name not in FIXTURES:
        pytest.skip(f"no recording {name} in {SESSIONS}; make it with python -m tests.record_sessions")
    return read_fixture(FIXTURES[name])


@dataclass
class Replayed:
    header: dict[str, Any]
    calls: list[dict[str, Any]]
    cfg: Config
    symbols: Symbols
    out: Outcome
    dbg: Replay

    def address(self, name: str) -> int:
        address = self.symbols.address(name)
        assert address is not None, name
        return address

    def reasons(self) -> list[str]:
        assert self.cfg.scenario is not None
        return judge_scenario(self.cfg.expect, self.cfg.scenario, self.out.stops, self.out.nmis,
                              self.out.bound_reached)

    def registers_at(self, stop: int) -> dict[str, int]:
        """The registers the session read at the recorded scenario stop ``stop`` (1-based)."""
        address = int(self.header["outcome"]["stops"][stop - 1]["address"], 16)
        hits = [c["result"] for c in self.calls if c["call"] == "registers" and c["result"]["rip"] == address]
        assert len(hits) == 1, f"{len(hits)} stops at {address:#x}"
        return dict(hits[0])


def replay(name: str, tmp_path: Path, edit: Callable[[str], str] = lambda text: text) -> Replayed:
    """The recorded session ``name`` run again through a real Session (its config text passed through ``edit``)."""
    header, calls = fixture(name)
    path = tmp_path / f"{header['name']}.yaml"
    path.write_text(edit(header["config"]))
    cfg = parse_config(path.read_text(), path)
    symbols = Symbols.from_dict(header["symbols"])
    dbg = Replay(calls)
    opts = header["options"]
    assert not opts["trace"]
    options = Options(trace=False, scenario=cfg.scenario, config_path=path,
                      pv_ops={int(k): v for k, v in opts["pv_ops"].items()},
                      pv_sites={int(k): v for k, v in opts["pv_sites"].items()},
                      inject_nmi=(lambda: dbg.answer("inject_nmi", (), {})) if opts["inject_nmi"] else None)
    session = Session(dbg, RecordedConsole(dbg, header["console"]), symbols,  # type: ignore[arg-type]
                      plan_from_json(header["plan"]), options, lambda text: None)
    if header["raised"] is not None:
        with pytest.raises(DebuggerError):
            session.run()
        out = session.out
    else:
        out = session.run()
    missing = calls[dbg.at:dbg.at + 1]
    assert not missing, f"the session ended after {dbg.at} calls; the recorded one went on with {_show(missing[0])}"
    return Replayed(header, calls, cfg, symbols, out, dbg)


@pytest.mark.parametrize("name", RECORDED)
def test_a_recorded_session_is_replayed_call_for_call(name: str, tmp_path: Path) -> None:
    r = replay(name, tmp_path)
    assert outcome_json(r.out, r.symbols) == r.header["outcome"]
    assert r.header["run"]["verdict"] == "pass", r.header["run"]["reasons"]
    assert r.reasons() == r.header["scenario_reasons"] == []


def test_the_replay_fails_when_the_session_asks_something_else(tmp_path: Path) -> None:
    # The same recording, a scenario writing 03 instead of 02: the write is not the recorded one.
    with pytest.raises(AssertionError, match=r"call \d+: the session made write_memory\(.*'03'"):
        replay("oversized-pv-patch-native", tmp_path, lambda text: text.replace('bytes: "02"', 'bytes: "03"'))


def test_the_replay_fails_when_the_session_reads_more(tmp_path: Path) -> None:
    # An extra rule there: the session reads more at that stop than the recorded one did.
    def extra(text: str) -> str:
        return text.replace("  rules:\n", "  rules:\n    - on: int3_magic\n      do: [{dump: {at: rsp, len: 8}}]\n")
    with pytest.raises(AssertionError, match=r"read_memory"):
        replay("int3-selftest-native", tmp_path, extra)


# --------------------------------------------------------------------------- what each recording shows

def test_int3_selftest_stops_once_at_int3_magic_called_from_int3_selftest(tmp_path: Path) -> None:
    r = replay("int3-selftest-native", tmp_path)
    assert [(s.rule, s.at, s.hit, s.n) for s in r.out.stops] == [(0, "int3_magic", 1, 1)]
    stop = r.out.stops[0]
    assert stop.address == r.symbols.address("int3_magic")
    assert stop.caller_symbol is not None and re.match(r"^int3_selftest", stop.caller_symbol)
    regs = r.registers_at(1)
    # record: [ptr, rsp]: ptr is int3_magic's argument (rdi), rsp the register
    assert stop.effects == (Record({"ptr": regs["rdi"], "rsp": regs["rsp"]}),)
    assert r.out.nmis == [] and r.out.captures == {} and not r.out.bound_reached
    assert r.out.ended == "guest-ended"


def test_oversized_pv_patch_shrinks_the_first_parainstructions_length(tmp_path: Path) -> None:
    r = replay("oversized-pv-patch-native", tmp_path)
    (stop,) = r.out.stops
    assert stop.at == "apply_paravirt" and stop.caller_symbol == "alternative_instructions+0x27"
    start = r.registers_at(1)["rdi"]                 # apply_paravirt(start, end)
    assert r.symbols.format(start) == "__parainstructions"
    dump, write = stop.effects
    assert isinstance(dump, Dump) and dump.address == start and len(dump.data) == 16
    # struct paravirt_patch_site: u64 instr, u8 type, u8 len: a 6-byte site
    assert dump.data[9] == 6
    assert write == WriteMemory(start + 9, b"\x06", b"\x02")
    assert r.symbols.format(write.address) == "__parainstructions+0x9"
    assert r.out.dumps == [(f"dump-1-{start:x}.bin", start, dump.data)]
    assert r.header["run"]["outcome"] == "panics"
    assert r.header["run"]["title"].startswith("kernel BUG ") and r.header["run"]["title"].endswith(" in apply_paravirt")


def test_skip_pv_patching_returns_to_the_caller(tmp_path: Path) -> None:
    r = replay("skip-pv-patching-native", tmp_path)
    (stop,) = r.out.stops
    regs = r.registers_at(1)
    record, rip, rsp = stop.effects
    assert record == Record({"start": regs["rdi"], "end": regs["rsi"]})
    assert stop.caller is not None
    assert rip == SetRegister("rip", r.address("apply_paravirt"), stop.caller)
    assert rsp == SetRegister("rsp", regs["rsp"], regs["rsp"] + 8)
    assert r.symbols.format(rip.new) == "alternative_instructions+0x27"
    # the after-patching capture was still taken, at alternative_instructions' return
    assert list(r.out.captures) == ["after-patching"]
    assert [len(b) for b in r.out.captures["after-patching"].regions.values()] == \
        [s.size for s in plan_from_json(r.header["plan"]).regions]


def test_nmi_during_patching_delivered_ignored_delivered(tmp_path: Path) -> None:
    r = replay("nmi-during-patching-native", tmp_path)
    assert [(s.n, s.rule, s.at, s.hit) for s in r.out.stops] == [
        (1, 0, "text_poke_early", 1), (2, 1, "apply_paravirt", 1), (3, 2, "__text_poke", 1)]
    first, second, third = r.out.stops
    assert first.caller_symbol is not None and first.caller_symbol.startswith("ftrace_")
    assert second.caller_symbol == "alternative_instructions+0x27"
    assert third.caller_symbol is not None and third.caller_symbol.startswith("text_poke_bp_batch+")
    record, dump, nmi = third.effects
    assert isinstance(record, Record) and record.values["len"] == 4
    assert isinstance(dump, Dump) and dump.address == record.values["addr"] - 1 and dump.data[0] == 0xCC
    assert nmi == InjectNmi()
    assert [(n.stop, n.state) for n in r.out.nmis] == [(1, "delivered"), (2, "ignored"), (3, "delivered")]
    assert r.out.nmis[1].where is not None and r.out.nmis[1].where.startswith("apply_paravirt")
    assert sum(c["call"] == "inject_nmi" for c in r.calls) == 3


def recorded_stops(r: Replayed, at: str) -> list[tuple[dict[str, int], int]]:
    """(registers, caller) of every recorded stop at the symbol ``at``, in order."""
    address = r.symbols.address(at)
    return [(dict(c["result"]), r.calls[i + 1]["result"]) for i, c in enumerate(r.calls)
            if c["call"] == "registers" and c["result"]["rip"] == address and r.calls[i + 1]["call"] == "read_u64"]


def no_memory(address: int, length: int) -> bytes:
    raise AssertionError(f"a condition read {length} bytes at {address:#x}")


@pytest.mark.parametrize(("rule", "at", "held_back_by"), [
    (0, "text_poke_early", {frozenset({"caller"})}),                      # {caller: '^ftrace_'}
    # {caller: '^text_poke_bp_batch\\+', len: 4}: its int3 and first-byte writes have len 1
    (2, "__text_poke", {frozenset({"caller", "len"}), frozenset({"len"})}),
])
def test_conditions_on_the_recorded_stops(rule: int, at: str, held_back_by: set[frozenset[str]],
                                          tmp_path: Path) -> None:
    """The pure core on real stops: of the recorded stops at a rule's place, only the one it fired at matches."""
    r = replay("nmi-during-patching-native", tmp_path)
    assert r.cfg.scenario is not None
    trigger = r.cfg.scenario.rules[rule].on
    stops = recorded_stops(r, at)
    assert len(stops) > 20

    def ctx(regs: dict[str, int], caller: int) -> StopContext:
        return StopContext(registers=regs, read=no_memory, symbols=r.symbols, pv_ops={}, pv_sites={},
                           function=function_of(trigger), caller=caller)
    matched = [i for i, (regs, caller) in enumerate(stops) if matches(trigger, ctx(regs, caller))]
    fired = [s for s in r.out.stops if s.rule == rule]
    assert len(matched) == 1 == len(fired) and stops[matched[0]][1] == fired[0].caller
    # which conditions held the other stops back
    why = {frozenset(c.kind for c in trigger.when if not matches(dataclasses.replace(trigger, when=(c,)),
                                                                 ctx(regs, caller)))
           for regs, caller in stops[:matched[0]]}
    assert why == held_back_by


def test_the_effects_of_the_recorded_stops_computed_again(tmp_path: Path) -> None:
    """The pure core's effects at the recorded __text_poke stop, from its registers and recorded memory, are the ones
    the session applied."""
    r = replay("nmi-during-patching-native", tmp_path)
    assert r.cfg.scenario is not None
    rule = r.cfg.scenario.rules[2]
    fired = next(s for s in r.out.stops if s.rule == 2)
    regs = next(regs for regs, caller in recorded_stops(r, "__text_poke") if caller == fired.caller
                and regs["rcx"] == 4)
    reads = {(c["args"][0], c["args"][1]): decode(c["result"]) for c in r.calls if c["call"] == "read_memory"}
    ctx = StopContext(registers=regs, read=lambda a, n: reads[(a, n)], symbols=r.symbols, pv_ops={}, pv_sites={},
                      function=function_of(rule.on), caller=fired.caller)
    assert tuple(e for action in rule.do for e in effects(action, ctx)) == fired.effects
    assert [effect_json(e, r.symbols) for e in fired.effects] == [
        {"effect": "record", "values": {"addr": hex(regs["rsi"]), "len": "0x4"}},
        {"effect": "dump", "address": hex(regs["rsi"] - 1), "symbol": r.symbols.format(regs["rsi"] - 1), "length": 8,
         "data": fired.effects[1].data.hex()},                                            # type: ignore[union-attr]
        {"effect": "inject-nmi"}]


def test_hit_1_rules_lose_their_breakpoint_at_their_hit(tmp_path: Path) -> None:
    r = replay("nmi-during-patching-native", tmp_path)
    deleted = [decode(c["args"][0]).address for c in r.calls if c["call"] == "delete"]
    assert r.symbols.address("text_poke_early") in deleted and r.symbols.address("__text_poke") in deleted
    assert r.symbols.address("apply_paravirt") not in deleted           # no hit: kept for the whole boot


# --------------------------------------------------------------------------- changed expectations fail

CHANGED = [
    ("int3-selftest-native", "caller: '^int3_selftest'", "caller: '^apply_'",
     [(r"^expect.stops \(line 19\) at int3_magic: 1 of 1 stop from a caller not matching /\^apply_/: "
       r"stop 1 from int3_selftest")]),
    ("int3-selftest-native", "{at: int3_magic, count: 1,", "{at: int3_magic, count: 2,",
     [r"^expect.stops \(line 19\) at int3_magic: 1 stop, expected 2: stop 1 from int3_selftest"]),
    # the one stop is the rule's first hit, not its second: the rule never fires, the stop is not counted
    ("int3-selftest-native", "    - on: int3_magic\n", "    - on: {at: int3_magic, hit: 2}\n",
     [r"at int3_magic: 0 stops, expected 1$", r"^rule at line 12 \(on int3_magic, hit 2\) never fired$"]),
    ("oversized-pv-patch-native", "{at: apply_paravirt, count: 1}", "{at: apply_paravirt, count: 0}",
     [r"at apply_paravirt: 1 stop, expected 0: stop 1 from alternative_instructions\+0x27$"]),
    ("skip-pv-patching-native", "{at: apply_paravirt, count: 1}", "{at: apply_paravirt, count: [2, 3]}",
     [r"at apply_paravirt: 1 stop, expected 2..3: stop 1 from alternative_instructions\+0x27$"]),
    ("nmi-during-patching-native", "nmi: [delivered, ignored, delivered]", "nmi: [delivered, delivered, delivered]",
     [(r"^NMI 2 \(injected at stop 2\) was ignored: it reached exc_nmi in apply_paravirt\+0x5 while NMIs were "
       r"ignored; expected delivered$")]),
    ("nmi-during-patching-native", "nmi: [delivered, ignored, delivered]", "nmi: arrived", []),
    ("nmi-during-patching-native", "nmi: [delivered, ignored, delivered]", "nmi: delivered",
     [r"^NMI injected at stop 2 was ignored: .*; expected delivered$"]),
    ("nmi-during-patching-native", "nmi: [delivered, ignored, delivered]", "nmi: [delivered, ignored]",
     [r"^expect.nmi lists 2 NMIs \(delivered, ignored\), but 3 were injected \(at stops 1, 2, 3\)$"]),
    ("nmi-during-patching-native", "{at: __text_poke, count: 1}", "{at: __text_poke, count: 1, caller: '^ftrace'}",
     [r"at __text_poke: 1 of 1 stop from a caller not matching /\^ftrace/: stop 3 from text_poke_bp_batch\+0x"]),
]


@pytest.mark.parametrize(("name", "old", "new", "reasons"), CHANGED)
def test_a_changed_expectation_is_judged_on_the_recorded_session(name: str, old: str, new: str,
                                                                 reasons: list[str], tmp_path: Path) -> None:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)
    got = replay(name, tmp_path, edit).reasons()
    assert len(got) == len(reasons) and all(re.search(want, g) for want, g in zip(reasons, got)), got


# =========================================================================== a hand-written guest

BASE = 0xFFFFFFFF81000000
ADDR = {name: BASE + 0x1000 * i for i, name in enumerate((
    "start_kernel", "alternative_instructions", "text_poke_early", "__text_poke", "__fentry__", "exc_nmi",
    "early_idt_handler_common", "ftrace_init", "apply_alternatives", "caller_end"), start=1)}
ADDR["ignore_nmis"] = BASE + 0x100000
SYMBOLS = Symbols.from_dict(ADDR)
STACK = 0xFFFFC90000010000
TEXT = BASE + 0x20000                       # where the traced writes go
SRC = BASE + 0x30000


JMP = bytes.fromhex("eb0c")                  # jmp .+14


def call_to(target: int, at: int) -> bytes:
    return b"\xe8" + (target - (at + 5)).to_bytes(4, "little", signed=True)


@dataclass
class Pass:
    """The guest reaches ``address`` with these registers (rip is the address)."""

    address: int
    regs: dict[str, int] = field(default_factory=dict)
    caller: int | None = None               # *(u64 *)rsp there


RETURN = ADDR["start_kernel"] + 0x100      # where alternative_instructions returns
# alternative_instructions and its return: the trace's window becomes "live"
PATCHING = [Pass(ADDR["alternative_instructions"], caller=RETURN), Pass(RETURN)]


class Guest:
    """Runs through ``path``, stopping where a breakpoint is; then exits. Memory is a sparse byte map."""

    def __init__(self, path: Sequence[Pass], memory: Mapping[int, bytes] | None = None, *,
                 console: FakeConsole | None = None, end: str = "exited", race: Sequence[Pass] = ()) -> None:
        self.path = list(path)
        self.race = list(race)                   # stops that come in just as the guest is interrupted
        self.mem: dict[int, int] = {}
        for start, data in (memory or {}).items():
            self.write(start, data)
        self.bps: dict[int, Breakpoint] = {}
        self.regs: dict[str, int] = {}
        self.log: list[tuple[Any, ...]] = []
        self.console, self.end = console, end
        self.numbers = 0
        self.head_reads: list[int] = []          # 5-byte reads at a traced writer's entry

    def mem_at(self, address: int, length: int) -> bytes:
        return bytes(self.mem.get(address + i, 0) for i in range(length))

    def write(self, address: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[address + i] = b

    def break_at(self, location: str | int, *, hardware: bool = False, temporary: bool = False) -> Breakpoint:
        assert isinstance(location, int) and location not in self.bps
        self.numbers += 1
        self.bps[location] = Breakpoint(self.numbers, location, f"*{location:#x}", hardware, temporary)
        self.log.append(("break_at", location))
        return self.bps[location]

    def delete(self, bp: Breakpoint) -> None:
        assert bp.address is not None and self.bps.pop(bp.address) == bp
        self.log.append(("delete", bp.address))

    def cont(self) -> None:
        rip = self.regs.get("rip")
        self.log.append(("cont", rip))
        entry = ADDR["text_poke_early"]
        if rip in (entry, entry + 5):            # the writer runs: text_poke_early(addr, src, len)
            self.write(self.regs["rdi"], self.mem_at(self.regs["rsi"], self.regs["rdx"]))

    def _at(self, step: Pass) -> Stop:
        self.regs = {name: 0 for name in REGISTERS} | {"rsp": STACK} | step.regs | {"rip": step.address}
        if step.caller is not None:
            self.write(self.regs["rsp"], step.caller.to_bytes(8, "little"))
        return Stop("breakpoint-hit", step.address, None, self.bps[step.address].number, None, raw={})

    def wait_stop(self, timeout: float) -> Stop:
        while self.path:
            step = self.path.pop(0)
            if step.address in self.bps:
                return self._at(step)
        if self.end == "marker" and self.console is not None and not self.console.marker.is_set():
            self.console.marker.set()           # the guest runs on, and prints the marker
            raise DebuggerTimeout("wait for a stop", "stop reply", timeout)
        if self.end == "fatal" and self.console is not None and not self.console.fatal.is_set():
            self.console.fatal.set()
            raise DebuggerTimeout("wait for a stop", "stop reply", timeout)
        return Stop("exited", None, None, None, None, raw={})

    def interrupt(self, timeout: float | None = None) -> Stop:
        self.log.append(("interrupt",))
        if self.race and self.race[0].address in self.bps:
            return self._at(self.race.pop(0))
        self.regs = {name: 0 for name in REGISTERS} | {"rip": BASE}
        return Stop("signal-received", BASE, None, None, "SIGINT", raw={})

    def registers(self, names: Sequence[str] = REGISTERS) -> dict[str, int]:
        return {name: self.regs[name] for name in names}

    def set_register(self, name: str, value: int) -> None:
        self.regs[name] = value
        self.log.append(("set_register", name, value))

    def read_memory(self, address: int, length: int) -> bytes:
        if length == 5 and address in (ADDR["text_poke_early"], ADDR["__text_poke"]) and \
                (address, length) != (self.regs.get("rdi"), self.regs.get("rdx")):   # not a write's old bytes
            self.head_reads.append(address)
        return self.mem_at(address, length)

    def write_memory(self, address: int, data: bytes) -> None:
        self.write(address, data)
        self.log.append(("write_memory", address, data))

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read_memory(address, 8), "little")

    def resumed_at(self) -> list[int | None]:
        return [entry[1] for entry in self.log if entry[0] == "cont"]


class FakeConsole:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.fatal = threading.Event()
        self.finished = threading.Event()
        self.marker = threading.Event()

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


def run(guest: Guest, *, scenario: str | None = None, trace: bool = False, captures: tuple[str, ...] = (),
        model: Model | None = None, console: FakeConsole | None = None, inject: list[int] | None = None,
        regions: tuple[Section, ...] = (Section(".text", TEXT, 0x40, 0),)) -> tuple[Outcome, Config | None]:
    cfg = parse_config("name: t\nkernel: debian-6.1\n" + scenario) if scenario is not None else None
    injected = inject if inject is not None else []
    options = Options(trace=trace, scenario=cfg.scenario if cfg else None,
                      inject_nmi=lambda: injected.append(len(guest.log)),
                      model=model if model is not None or not trace else
                      Model({}, Explainer({}, SYMBOLS), SYMBOLS))
    plan = Plan(captures, regions, False, 60.0, None)
    console = console or guest.console or FakeConsole()
    out = Session(guest, console, SYMBOLS, plan, options, lambda text: None).run()  # type: ignore[arg-type]
    return out, cfg


def poke(address: int = TEXT, length: int = 2, caller: int = ADDR["apply_alternatives"] + 0x40) -> Pass:
    """A text_poke_early(addr, src, len) call."""
    return Pass(ADDR["text_poke_early"], {"rdi": address, "rsi": SRC, "rdx": length}, caller=caller)


# --------------------------------------------------------------------------- the traced writer's entry

@pytest.mark.parametrize(("head", "skipped"), [
    (NOP5, True),                                                           # ftrace's NOP at boot
    (call_to(ADDR["__fentry__"], ADDR["text_poke_early"]), True),          # call __fentry__
    (call_to(ADDR["ftrace_init"], ADDR["text_poke_early"]), False),        # a call, but to something else
    (bytes.fromhex("f30f1efa55"), False),                                  # endbr64; push %rbp
    (bytes.fromhex("0f1f440001"), False),                                  # a NOP5 with another displacement
])
def test_a_traced_writer_is_resumed_past_its_first_instruction_only_when_that_is_a_no_op(
        head: bytes, skipped: bool) -> None:
    entry = ADDR["text_poke_early"]
    guest = Guest([poke(), poke(TEXT + 8)], {entry: head, SRC: b"\x90\x90"})
    out, _ = run(guest, trace=True)
    resume = entry + len(NOP5) if skipped else entry
    assert guest.resumed_at() == [None, resume, resume]
    assert [e for e in guest.log if e[0] == "set_register"] == [("set_register", "rip", entry + 5)] * 2 * skipped
    assert guest.head_reads == [entry]                   # looked at once, then known
    assert [(e.address, e.old, e.new) for e in out.events] == [(TEXT, bytes(2), b"\x90\x90"),
                                                               (TEXT + 8, bytes(2), b"\x90\x90")]


def test_a_write_to_another_writers_entry_makes_the_session_look_at_it_again() -> None:
    """text_poke_early rewrites __text_poke's first instruction (its NOP5 becomes a jmp): not skipped after that."""
    tp, entry = ADDR["__text_poke"], ADDR["text_poke_early"]
    text_poke = Pass(tp, {"rsi": TEXT, "rdx": SRC, "rcx": 2}, caller=ADDR["apply_alternatives"] + 1)
    guest = Guest([*PATCHING, text_poke, poke(tp, 5), text_poke], {tp: NOP5, entry: NOP5, SRC: JMP + bytes(3)})
    run(guest, trace=True)
    assert guest.resumed_at()[-3:] == [tp + 5, entry + 5, tp]
    assert guest.head_reads == [tp, entry, tp]


def test_a_write_to_the_writers_own_entry_makes_the_session_look_at_it_again() -> None:
    entry = ADDR["text_poke_early"]
    guest = Guest([poke(), poke(entry, 5), poke()], {entry: NOP5, SRC: JMP + bytes(3)})
    run(guest, trace=True)
    assert guest.mem_at(entry, 5) == JMP + bytes(3)          # the guest did write it
    assert guest.resumed_at() == [None, entry + 5, entry + 5, entry]


# --------------------------------------------------------------------------- scenario rules in the loop

def test_max_stops_removes_the_rule_breakpoints_and_says_so() -> None:
    guest = Guest([poke(caller=ADDR["apply_alternatives"] + i) for i in range(5)])
    out, cfg = run(guest, scenario="scenario:\n  rules:\n    - on: text_poke_early\n      do: [record]\n"
                                   "  max_stops: 3\n")
    assert cfg is not None and cfg.scenario is not None
    assert [s.caller for s in out.stops] == [ADDR["apply_alternatives"] + i for i in range(3)]
    # the third stop removes the breakpoint; nothing is left to stop at, and the session is done
    assert out.bound_reached and out.stop_count == 3 and out.ended == "done"
    assert guest.log[-1] == ("delete", ADDR["text_poke_early"]) and len(guest.path) == 2
    reasons = judge_scenario(cfg.expect, cfg.scenario, out.stops, out.nmis, out.bound_reached)
    assert reasons == ["the scenario stopped after max_stops=3 stops; raise scenario.max_stops"]


def test_max_stops_counts_stops_that_do_not_match() -> None:
    guest = Guest([poke() for _ in range(5)])
    out, _ = run(guest, scenario="scenario:\n  rules:\n    - on: {at: text_poke_early, when: {caller: '^ftrace_'}}\n"
                                 "      do: [record]\n  max_stops: 2\n")
    assert out.stops == [] and out.bound_reached and out.stop_count == 2 and len(guest.path) == 3


def test_a_rule_with_hit_n_fires_only_at_its_nth_matching_stop() -> None:
    ftrace, other = ADDR["ftrace_init"] + 0x10, ADDR["apply_alternatives"] + 0x10
    callers = [other, ftrace, other, ftrace, ftrace, other, ftrace]
    guest = Guest([poke(TEXT + i, caller=c) for i, c in enumerate(callers)])
    out, cfg = run(guest, scenario="scenario:\n  rules:\n    - on: {at: text_poke_early, hit: 3, "
                                   "when: {caller: '^ftrace_'}}\n      do: [record]\n")
    (stop,) = out.stops
    assert (stop.hit, stop.caller, stop.n) == (3, ftrace, 1)
    assert stop.effects == (Record({"addr": TEXT + 4, "opcode": SRC, "len": 2}),)
    # its one hit done, the breakpoint goes: the guest's last two calls pass without a stop
    assert out.stop_count == 5 and out.ended == "done" and len(guest.path) == 2
    assert guest.log[-1] == ("delete", ADDR["text_poke_early"])
    assert cfg is not None and cfg.scenario is not None
    assert judge_scenario(cfg.expect, cfg.scenario, out.stops, out.nmis, out.bound_reached) == []


def test_a_hit_rule_sharing_its_breakpoint_with_an_every_time_rule_keeps_it() -> None:
    guest = Guest([poke(caller=ADDR["ftrace_init"] + i) for i in range(3)])
    out, _ = run(guest, scenario="scenario:\n  rules:\n    - on: {at: text_poke_early, hit: 1}\n      do: [record]\n"
                                 "    - on: text_poke_early\n      do: [continue]\n")
    assert [(s.rule, s.hit) for s in out.stops] == [(0, 1), (1, 1), (1, 2), (1, 3)]
    assert ("delete", ADDR["text_poke_early"]) not in guest.log


def test_two_rules_firing_at_one_stop_are_one_stop() -> None:
    guest = Guest([poke()])
    out, cfg = run(guest, scenario="scenario:\n  rules:\n    - on: text_poke_early\n      do: [record]\n"
                                   "    - on: text_poke_early\n      do: [continue]\n"
                                   "expect:\n  stops: [{at: text_poke_early, count: 1}]\n")
    assert [s.rule for s in out.stops] == [0, 1] and out.stop_count == 2
    assert cfg is not None and cfg.scenario is not None
    assert judge_scenario(cfg.expect, cfg.scenario, out.stops, out.nmis, out.bound_reached) == []


def test_a_skipped_writer_is_marked_in_the_trace_and_not_applied_to_the_model() -> None:
    entry = ADDR["text_poke_early"]
    model = Model({TEXT: bytes(16)}, Explainer({}, SYMBOLS), SYMBOLS)
    guest = Guest([poke(TEXT, caller=ADDR["ftrace_init"] + 1), poke(TEXT + 4, caller=ADDR["apply_alternatives"] + 1)],
                  {entry: NOP5, SRC: b"\xcc\xcc"})
    out, _ = run(guest, trace=True, model=model,
                 scenario="scenario:\n  rules:\n    - on: {at: text_poke_early, when: {caller: '^ftrace_'}}\n"
                          "      do: [skip]\n")
    assert [(e.address, e.skipped) for e in out.events] == [(TEXT, True), (TEXT + 4, False)]
    assert bytes(model.regions[TEXT][:8]) == bytes(4) + b"\xcc\xcc" + bytes(2)
    # the skip returns to the caller (rip, rsp + 8); only the unskipped call is resumed past its NOP
    assert guest.resumed_at()[1:3] == [ADDR["ftrace_init"] + 1, entry + 5]
    assert ("set_register", "rsp", STACK + 8) in guest.log


def test_write_and_set_effects_reach_the_guest_in_order() -> None:
    guest = Guest([poke(TEXT, length=2)], {TEXT: b"\x11\x22"})
    out, _ = run(guest, scenario="scenario:\n  rules:\n    - on: text_poke_early\n      do:\n"
                                 "        - write: {at: addr + 1, bytes: '33'}\n        - set: {rdx: len + 1}\n"
                                 "        - write: {at: addr, u8: rdx}\n")
    (stop,) = out.stops
    assert stop.effects == (WriteMemory(TEXT + 1, b"\x22", b"\x33"), SetRegister("rdx", 2, 3),
                            WriteMemory(TEXT, b"\x11", b"\x03"))          # rdx as set by the action before
    assert [e for e in guest.log if e[0] in ("write_memory", "set_register")] == [
        ("write_memory", TEXT + 1, b"\x33"), ("set_register", "rdx", 3), ("write_memory", TEXT, b"\x03")]


# --------------------------------------------------------------------------- NMIs

NMI_RULE = "scenario:\n  rules:\n    - on: {at: text_poke_early, hit: 1}\n      do: [inject-nmi]\n"


def test_an_nmi_that_never_arrives_is_lost_and_fails_the_default_expectation() -> None:
    injected: list[int] = []
    guest = Guest([poke()])
    out, cfg = run(guest, scenario=NMI_RULE, inject=injected)
    assert len(injected) == 1
    assert out.nmis == [NmiRecord(stop=1, state="lost", where=None)]
    assert {("break_at", ADDR["exc_nmi"]), ("break_at", ADDR["early_idt_handler_common"])} <= set(guest.log)
    assert cfg is not None and cfg.scenario is not None
    assert judge_scenario(cfg.expect, cfg.scenario, out.stops, out.nmis, out.bound_reached) == [
        ("NMI injected at stop 1 was lost: nothing reached exc_nmi; expected delivered (the default when a "
         "scenario injects one; set expect.nmi)")]


@pytest.mark.parametrize(("ignore", "state"), [(0, "delivered"), (1, "ignored")])
def test_an_nmi_arriving_at_exc_nmi(ignore: int, state: str) -> None:
    regs_at = STACK - 0x200                  # exc_nmi(struct pt_regs *regs): regs->ip at +16*8
    interrupted = ADDR["apply_alternatives"] + 0x21
    guest = Guest([poke(), Pass(ADDR["exc_nmi"], {"rdi": regs_at})],
                  {regs_at + 16 * 8: interrupted.to_bytes(8, "little"), ADDR["ignore_nmis"]: bytes([ignore, 0, 0, 0])})
    out, _ = run(guest, scenario=NMI_RULE)
    assert out.nmis == [NmiRecord(stop=1, state=state, where="apply_alternatives+0x21")]
    # both NMI breakpoints go at its arrival
    assert {("delete", ADDR["exc_nmi"]), ("delete", ADDR["early_idt_handler_common"])} <= set(guest.log)


def test_an_nmi_before_trap_init_arrives_early_and_other_vectors_do_not_count() -> None:
    early = ADDR["early_idt_handler_common"]
    interrupted = ADDR["start_kernel"] + 0x33
    stack = STACK - 0x100                    # the early handler's stack: vector, error code, rip
    guest = Guest([poke(), Pass(early, {"rsp": stack - 0x40}), Pass(early, {"rsp": stack})],
                  {stack - 0x40: (14).to_bytes(8, "little"),                  # a page fault first
                   stack: (2).to_bytes(8, "little") + bytes(8) + interrupted.to_bytes(8, "little")})
    out, _ = run(guest, scenario=NMI_RULE)
    assert out.nmis == [NmiRecord(stop=1, state="early", where="start_kernel+0x33")]


# --------------------------------------------------------------------------- the console

INIT = BASE + 0x200000


def test_the_marker_interrupts_the_guest_and_takes_the_booted_capture_without_init_text() -> None:
    console = FakeConsole()
    guest = Guest([], {TEXT: b"\x55" * 0x40}, console=console, end="marker")
    out, _ = run(guest, captures=("booted",), console=console,
                 regions=(Section(".text", TEXT, 0x40, 0), Section(".init.text", INIT, 0x10, 0x40)))
    assert out.ended == "marker" and guest.log.count(("interrupt",)) == 1
    booted = out.captures["booted"]
    assert booted.regions == {TEXT: b"\x55" * 0x40}            # init text is freed by then: not read
    assert booted.freed == ((INIT, INIT + 0x10),)
    assert out.error is None


def test_a_breakpoint_racing_the_marker_is_handled_before_the_session_ends() -> None:
    console = FakeConsole()
    guest = Guest([], console=console, end="marker", race=[poke(caller=ADDR["ftrace_init"] + 1)])
    out, _ = run(guest, scenario="scenario:\n  rules:\n    - on: text_poke_early\n      do: [record]\n",
                 console=console)
    assert [s.caller for s in out.stops] == [ADDR["ftrace_init"] + 1]
    assert out.ended == "marker" and guest.log.count(("interrupt",)) == 2 and out.stop_count == 2


def test_a_crash_ends_the_session_and_names_the_capture_not_reached() -> None:
    console = FakeConsole()
    guest = Guest([], console=console, end="fatal")
    out, _ = run(guest, captures=("after-patching",), console=console)
    assert out.ended == "crashed" and out.captures == {}
    assert out.error == "the guest did not reach after-patching: it crashed first"
