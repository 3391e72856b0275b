"""Forked runs without QEMU: fork: and sweep: in configs, the points, the sweep's verdict, the console's segments."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from framework.analysis.console_log import Ending
from framework.checking import check
from framework.config import load_config, parse_config, sweep_point, with_overrides
from framework.errors import ConfigError, UnsupportedError
from framework.observe.console import ConsoleThread
from framework.observe.fork import point_dir_name
from framework.report.result import RunResult, load_result, write_result
from framework.verdict import Verdict, judge, judge_sweep

SWEEP = """\
name: sweep
fork: {at: alternative_instructions}
sweep:
  hit: 1..41 step 20
  op: [irq.save_fl, cpu.io_delay]
scenario:
  rules:
    - on:
        at: text_poke_early
        hit: ${hit}
        when: {pv_op: '${op}'}
      do: [inject-nmi]
expect:
  nmi: [ignored]
  console:
    contains: ['hit ${hit}']
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(text, Path("/cfg/sweep.yaml"))
    return err.value


def test_points_are_every_combination_first_parameter_slowest() -> None:
    cfg = parse_config(SWEEP)
    assert cfg.fork is not None and cfg.fork.at == "alternative_instructions" and cfg.fork.hit == 1
    assert cfg.sweep is not None and cfg.sweep.names == ("hit", "op")
    assert cfg.sweep.points == ((1, "irq.save_fl"), (1, "cpu.io_delay"), (21, "irq.save_fl"),
                                (21, "cpu.io_delay"), (41, "irq.save_fl"), (41, "cpu.io_delay"))
    # The config itself is the first point's.
    assert cfg.scenario is not None and cfg.scenario.rules[0].on.hit == 1


def test_a_point_has_its_values_in_scenario_and_expect() -> None:
    cfg = parse_config(SWEEP)
    point = sweep_point(cfg, 3)
    assert point.sweep is None and point.fork == cfg.fork
    assert point.scenario is not None and point.scenario.rules[0].on.hit == 21
    assert point.scenario.rules[0].on.when[0].name == "cpu.io_delay"
    assert [p.pattern for p in point.expect.console.contains] == ["hit 21"]
    assert point.expect.nmi == ("ignored",)


def test_a_point_keeps_command_line_overrides() -> None:
    cfg = with_overrides(parse_config(SWEEP), timeout=33, modes="native", extra_cmdline="quiet")
    point = sweep_point(cfg, 5)
    assert (point.timeout, point.modes, point.cmdline) == (33.0, ("native",), ("quiet",))
    assert point.scenario is not None and point.scenario.rules[0].on.hit == 41


@pytest.mark.parametrize("values, count", [("[3, 1, 2]", 3), ("'5..5'", 1), ("'1..100 step 10'", 10),
                                            ("[7, 9]", 2)])
def test_value_forms(values: str, count: int) -> None:
    text = SWEEP.replace("hit: 1..41 step 20", f"hit: {values}").replace("  op: [irq.save_fl, cpu.io_delay]\n", "")
    text = text.replace("when: {pv_op: '${op}'}", "when: {caller: '${hit}'}")
    cfg = parse_config(text)
    assert cfg.sweep is not None and len(cfg.sweep.points) == count


@pytest.mark.parametrize("change, line, words", [
    (("${hit}\n", "${hits}\n"), 10, "sweep has no parameter 'hits' (did you mean 'hit'?)"),
    (("name: sweep", "name: sweep-${hit}"), 1, "written into scenario: and expect: only, not name:"),
    (("hit: 1..41 step 20", "hit: 41..1"), 4, "the range '41..1' is empty"),
    (("hit: 1..41 step 20", "hit: 1..5000"), 4, "more than 1000 values"),
    (("hit: 1..41 step 20", "hit: [1, 1]"), 4, "lists 1 twice"),
    (("hit: 1..41 step 20", "hit: {a: 1}"), 4, "must be a list of values"),
    (("fork: {at: alternative_instructions}\n", ""), 2, "needs fork:"),
    (("fork: {at: alternative_instructions}", "fork: {at: 'a b'}"), 2, "fork.at must be"),
    (("fork: {at: alternative_instructions}", "fork: {hit: 2}"), 2, "fork needs at:"),
    (("fork: {at: alternative_instructions}", "fork: {at: x}\ninspect: {capture: booted}"), 3,
     "inspect: is not supported in a forked run"),
    (("fork: {at: alternative_instructions}", "fork: {at: x}\nmodules: [kvm]"), 3,
     "modules: are not supported in a forked run"),
    (("        when: {pv_op: '${op}'}\n", ""), 5, "sweep.op is never used"),
])
def test_errors_name_the_line(change: tuple[str, str], line: int, words: str) -> None:
    err = _error(SWEEP.replace(*change))
    assert err.line == line, err
    assert words in err.reason, err.reason


def test_a_placeholder_without_a_sweep_says_how_to_add_one() -> None:
    err = _error("scenario:\n  rules:\n    - on: {at: f, hit: ${n}}\n      do: [record]\n")
    assert err.line == 3 and "has no sweep:" in err.reason and "sweep: {n: [1, 2, 3]}" in err.reason


def test_the_reference_example_is_a_valid_sweep() -> None:
    import textwrap

    import framework.config as config_module
    assert config_module.__doc__ is not None
    example = config_module.__doc__.split("(:mod:`framework.config.sweep`,\n:mod:`framework.observe.fork`)::\n", 1)[1]
    cfg = parse_config(textwrap.dedent(example.split("\n\n", 1)[0]))
    assert cfg.sweep is not None and len(cfg.sweep.points) == 20 and cfg.sweep.points[-1] == (1901,)
    assert sweep_point(cfg, 19).scenario is not None


def test_too_many_combinations() -> None:
    text = SWEEP.replace("hit: 1..41 step 20", "hit: 1..600")
    err = _error(text)
    assert "makes 1200 points" in err.reason and err.line == 4


def test_point_directories_sort_in_order() -> None:
    names = [point_dir_name(n, 120, f"hit={n}") for n in (1, 2, 10, 100, 120)]
    assert names == sorted(names) and names[0] == "001-hit=1"
    assert point_dir_name(3, 9, "op=a/b c") == "3-op=a_b_c"


def _done(n: int, verdict: str, *reasons: str) -> tuple[int, str, Verdict]:
    return n, f"hit={n}", Verdict(verdict, reasons)


def test_sweep_verdict() -> None:
    assert judge_sweep([_done(1, "pass"), _done(2, "pass")], 2, None) == Verdict("pass", ())
    failed = judge_sweep([_done(1, "pass"), _done(2, "fail", "NMI was lost", "x"), _done(3, "error", "gone")], 3,
                         None)
    assert failed.verdict == "fail"
    assert failed.reasons == ("point 2 (hit=2): NMI was lost (and 1 more)", "point 3 (hit=3): gone")
    short = judge_sweep([_done(1, "pass")], 3, None)
    assert short == Verdict("error", ("2 of 3 points did not run",))
    assert judge_sweep([], 3, "the guest never reached fork.at x") == Verdict(
        "fail", ("the guest never reached fork.at x",))


def test_result_keeps_the_fork_and_says_how_many_passed(tmp_path: Path) -> None:
    fork = {"snapshot": {"at": "alternative_instructions"}, "total": 2, "failure": None,
            "points": [{"n": 1, "verdict": "pass"}, {"n": 2, "verdict": "fail"}]}
    result = RunResult(name="s", mode="native", verdict="fail", reasons=("point 2",), artifacts=str(tmp_path),
                       started="", duration_s=1.0, patchscope="0", fork=fork)
    assert result.summary == "1 of 2 points passed, forked from one snapshot at alternative_instructions"
    write_result(tmp_path, result)
    loaded = load_result(tmp_path)
    assert loaded is not None and loaded.fork == fork


def test_check_judges_a_point_with_its_own_values(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    cfg = load_config(path)
    point = tmp_path / "points" / "3-hit=21"
    point.mkdir(parents=True)
    (point / "console.log").write_text("  1.000 | hit 21\n  2.000 | patchscope: init done\n")
    write_result(point, RunResult(name="sweep", mode="native", verdict="pass", reasons=(), artifacts=str(point),
                                  started="", duration_s=1.0, patchscope="0",
                                  fork={"point": 3, "values": {"hit": 21}}))
    checked = check(point, cfg)
    assert checked.verdict is not None
    # point 3 expects "hit 21", which its console has; the sweep's first point expects "hit 1", which it has not
    assert not [r for r in checked.verdict.reasons if "console line matches" in r], checked.verdict.reasons
    first = judge(cfg, checked.observation, None, "native")
    assert "no console line matches /hit 1/" in first.reasons


def test_check_sends_a_forked_run_to_its_points(tmp_path: Path) -> None:
    (tmp_path / "console.log").write_text("  1.000 | Linux version 6.1\n")
    write_result(tmp_path, RunResult(name="s", mode="native", verdict="pass", reasons=(), artifacts=str(tmp_path),
                                     started="", duration_s=1.0, patchscope="0",
                                     fork={"snapshot": {}, "total": 1, "points": []}))
    with pytest.raises(UnsupportedError, match=r"judged one by one: check .*/points"):
        check(tmp_path, None)


def _console(chunks: list[bytes]) -> tuple[ConsoleThread, threading.Event]:
    fed = threading.Event()
    queue = list(chunks)

    def read(timeout: float) -> bytes | None:
        if queue:
            return queue.pop(0)
        fed.set()
        time.sleep(min(timeout, 0.05))
        return b""

    console = ConsoleThread(read, io.StringIO(), time.monotonic(), timeout=30, silence=30, exitcode=lambda: None,
                            forked=True)
    return console, fed


def test_a_forked_console_goes_on_past_a_crash_and_the_marker_and_looks_afresh_per_segment() -> None:
    console, fed = _console([b"Kernel panic - not syncing: boom\n", b"patchscope: init done\n"])
    console.start()
    assert fed.wait(5)
    assert console.fatal.is_set() and console.marker.is_set()
    start = console.new_segment(quiet=0.05)
    assert start == 2 and not console.fatal.is_set() and not console.marker.is_set()
    time.sleep(FATAL_WAIT)
    assert not console.finished.is_set()        # neither the crash nor the marker ended it


FATAL_WAIT = 0.3


def test_a_plain_console_still_ends_at_a_crash() -> None:
    queue = [b"Kernel panic - not syncing: boom\n"]

    def read(timeout: float) -> bytes | None:
        if queue:
            return queue.pop(0)
        time.sleep(0.01)
        return b""

    console = ConsoleThread(read, io.StringIO(), time.monotonic(), timeout=30, silence=30, exitcode=lambda: None)
    console.start()
    assert console.finished.wait(15)
    lines, ending = console.result()
    assert ending.reason == "fatal" and isinstance(ending, Ending) and len(lines) == 1
