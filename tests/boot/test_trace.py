"""The patch-event trace on the real Debian 6.1 kernel, natively and as Xen PV dom0, by both tracers.

Per mode, one boot traced by breakpoints (~118k text writes, a few minutes
under TCG) and one by the TCG plugin (about twice a plain boot), shared by the
tests of the mode: each self-check must pass (breakpoints: every call's old
bytes held by the replay model, every other change a known bypass write;
plugin: the replayed writes give the live text at the marker, with nothing
explained away), the stages must have the counts the vmlinux's own tables
predict, the breakpoint trace's boot-time writes must be the ones recorded in
tests/trace_digest.py (the same kernel makes the same writes run after run;
their order may vary, see there), and the two tracers must agree on every
byte the kernel's writes changed.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from framework.analysis.textwrites import agreement
from framework.analysis.trace import Event
from framework.kernel.image import prepare_kernel
from framework.kernel.refs import parse_ref
from framework.observe.capture import text_regions
from framework.observe.inspection import load_tables
from tests.conftest import patchscope, result_json
from tests.trace_digest import DIGESTS, digest

pytestmark = pytest.mark.boot


Traced = tuple[dict[str, Any], list[Event], str]
SCHEDSTATS = ("--init-command", "echo 1 > /proc/sys/kernel/sched_schedstats")


def traced(artifacts: Path, mode: str, *extra: str) -> Traced:
    res = patchscope("trace", "--mode", mode, "--artifacts", str(artifacts), *extra, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = result_json(artifacts, "trace", mode)
    with gzip.open(artifacts / "trace" / mode / "trace.jsonl.gz", "rt") as fh:
        events = [Event.from_json(json.loads(line)) for line in fh]
    return result, events, res.stdout


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Traced]:
    return {tracer: traced(tmp_path_factory.mktemp(f"native-{tracer}"), "native", "--tracer", tracer, *SCHEDSTATS)
            for tracer in ("breakpoints", "plugin")}


@pytest.fixture(scope="module")
def xen_pv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Traced]:
    return {tracer: traced(tmp_path_factory.mktemp(f"xen-{tracer}"), "xen-pv", "--tracer", tracer, "--summary")
            for tracer in ("breakpoints", "plugin")}


def check_trace(result: dict[str, Any], events: list[Event], mode: str, tracer: str = "breakpoints") -> None:
    summary = result["sites"]["trace"]
    check = summary["self_check"]
    assert check["passed"], check["summary"]
    if tracer == "plugin":
        assert check["snapshots"] == ["booted"] and check["calls"] == len(events)
        assert not check["bypass"] and check["unexplained_count"] == 0
    else:
        assert check["snapshots"] == ["start_kernel", "alternative_instructions", "after-patching"]
    assert summary["events"] == len(events) > 100_000
    assert [e.seq for e in events] == list(range(1, len(events) + 1))          # in order, none missing
    assert all(a.t <= b.t for a, b in itertools.pairwise(events))
    stages: dict[str, int] = {}
    for e in events:
        if e.window in ("setup", "patching"):
            stages[e.stage] = stages.get(e.stage, 0) + 1
    # One event per entry of the tables the kernel walks (counts from `patchscope sites`).
    assert stages["paravirt"] == 3848
    assert stages["ftrace"] == 40521
    assert stages["smp_locks"] > 8000                 # lock -> ds on one CPU (8638 entries, padding aside)
    assert stages["returns"] > 50000
    # Natively the ALT_NOT(X86_FEATURE_XENPV) alternatives are applied too; under Xen PV far fewer.
    assert stages["alternatives"] > (4000 if mode == "native" else 1000)
    assert stages.get("unexplained", 0) == 0
    pv = [e for e in events if e.stage == "paravirt"]
    assert all(e.old[:2] == b"\xff\x15" and len(e.new) == 6 for e in pv)      # call *pv_ops -> direct call / NOPs
    assert all(e.caller_symbol and e.caller_symbol.startswith("apply_paravirt") for e in pv)
    want = DIGESTS.get((result["kernel"]["package"], result["kernel"]["version"], mode))
    if want is not None and tracer == "breakpoints":
        assert digest(events) == want, "the boot-time writes differ from those recorded in tests/trace_digest.py"


@functools.cache
def text_ranges() -> list[tuple[int, int]]:
    """The kernel text regions a trace replays (those holding patch sites), as the run reads them."""
    vmlinux, _, sites = load_tables(prepare_kernel(parse_ref("debian-6.1")), lambda _: None)
    return [(s.address, s.address + s.size)
            for s in text_regions(vmlinux, [site.address for table in sites.values() for site in table])]


def check_agreement(traces: dict[str, Traced]) -> None:
    """In the kernel's text the plugin saw every byte change the breakpoint tracer saw (calls and bypass
    writes), and no other."""
    got = agreement(traces["plugin"][1], traces["breakpoints"][1], text_ranges())
    assert got.agrees, got.summary("plugin", "breakpoint")
    assert got.both > 500_000


def test_trace_native_self_check_and_live_patching(native: dict[str, Traced]) -> None:
    result, events, out = native["breakpoints"]
    check_trace(result, events, "native")
    assert "self-check passed" in out
    # /init's flip is int3-protected live patching: int3, tail, first byte per site, in that order.
    live = [e for e in events if e.window == "live" and e.stage == "text_poke_bp"]
    assert live, "no live patching was traced"
    first = live[0]
    assert first.new == b"\xcc" and first.source == "__text_poke"
    finals = [e for e in live if e.address == first.address]
    assert [len(e.new) for e in finals][:1] == [1] and finals[-1].new[:1] != b"\xcc"
    # … and some of it came from /init's command, after the console showed it running.
    console = (Path(result["artifacts"]) / "console.log").read_text()
    ran = next(float(line.split("|")[0]) for line in console.splitlines() if "patchscope: run 1:" in line)
    assert any(e.t > ran for e in live)


def test_trace_xen_pv_self_check(xen_pv: dict[str, Traced]) -> None:
    result, events, _ = xen_pv["breakpoints"]
    check_trace(result, events, "xen-pv")
    # Xen PV: the pv sites become direct calls to Xen's ops, and xen_start_kernel writes before start_kernel.
    save_fl = [e for e in events if e.stage == "paravirt" and e.new[:1] == b"\xe8"]
    assert len(save_fl) > 1000
    assert any(e.window == "early" for e in events)


def test_plugin_trace_native_self_check_and_agreement(native: dict[str, Traced]) -> None:
    result, events, out = native["plugin"]
    check_trace(result, events, "native", "plugin")
    assert "self-check passed" in out
    assert result["sites"]["trace"]["stops"] == 1          # the guest stopped once: at its marker
    check_agreement(native)


def test_plugin_trace_xen_pv_self_check_and_agreement(xen_pv: dict[str, Traced]) -> None:
    result, events, _ = xen_pv["plugin"]
    check_trace(result, events, "xen-pv", "plugin")
    check_agreement(xen_pv)
