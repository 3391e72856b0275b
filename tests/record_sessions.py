"""Record real debugger sessions as fixtures: ``python -m tests.record_sessions [NAME ...]``.

Runs each named config (default: every one in ``NAMES``) through the real
pipeline (``framework.pipeline.execute``, natively) with ``framework.observe.inspection.Session``
replaced by a subclass that records, in order, every call the session makes:

* to the debugger (``Rsp``): method, arguments, and the result or the exception;
* to ``Options.inject_nmi`` (in the same sequence, as the call ``inject_nmi``);
* of the console's ``fatal`` / ``finished`` / ``marker`` events: for each, how
  many debugger calls had been made when the session first saw it set;
* to the symbol table: every name looked up and every address resolved, kept as
  the few symbols (``Symbols.from_dict``) that answer those look-ups alike, so a
  replay needs no kernel.

It writes ``tests/data/sessions/<name>-native.jsonl.gz``: a header line (the
config's text, the plan, the options, the symbols, the console events, the
session's outcome and the run's verdict), then one call a line.

Sizes are kept small:

* a ``read_memory`` result longer than ``LARGE`` bytes (the captures' text
  sections, 15 MB) is kept as its length and sha256; a replay hands back that
  many zero bytes (the session stores captured text without looking at it);
* a session with thousands of stops (nmi-during-patching: 12.4k stops, 50k
  calls, 176 KiB whole) keeps, of each run of consecutive stops that changed
  nothing (no rule matched, no hit was counted, nothing else happened there:
  the four calls cont, wait_stop, registers, read_u64), the first and the last
  ``KEEP`` and elides the rest (``--keep`` sets it; the header says how many,
  where, and the size of the whole recording). Every stop where anything
  happened is kept whole. A replay of it counts fewer stops (``stop_count`` is
  the recorded one less the elided stops), and the same of everything else.

tests/unit/test_session.py replays them through a real ``Session``. Re-run this
after a deliberate change in what the session asks the debugger.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import gzip
import hashlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import framework.observe.inspection
from framework.config import load_config
from framework.debugger.contract import Breakpoint, Debugger, DebuggerError, DebuggerTimeout, Stop
from framework.elf.vmlinux import Section, Symbols
from framework.observe.capture import Plan
from framework.observe.console import ConsoleThread
from framework.observe.session import Options, Outcome, Session
from framework.pipeline import RunRequest, execute
from framework.verdict import judge_scenario

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SESSIONS = HERE / "data" / "sessions"
NAMES = ("int3-selftest", "oversized-pv-patch", "skip-pv-patching", "nmi-during-patching")
MODE = "native"
LARGE = 4096            # read_memory results longer than this are kept as length and sha256
KEEP = 20               # uneventful stops kept at each end of a run of them
FLAGS = ("fatal", "finished", "marker")
STOP_PATTERN = ("cont", "wait_stop", "registers", "read_u64")


# --- the codec (shared with the replay) ---------------------------------------------------------

def encode(value: object) -> Any:
    """A call's argument or result as JSON: bytes, Breakpoint and Stop tagged, tuples as lists."""
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, Breakpoint):
        return {"bp": [value.number, value.address, value.location, value.hardware, value.temporary]}
    if isinstance(value, Stop):
        return {"stop": [value.reason, value.address, value.function, value.breakpoint, value.signal]}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot record a {type(value).__name__}: {value!r}")


def encode_result(value: object) -> Any:
    if isinstance(value, bytes) and len(value) > LARGE:
        return {"len": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    return encode(value)


def decode(data: Any) -> Any:
    """The inverse of ``encode``; a large read comes back as that many zero bytes."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, dict):
        if data.keys() == {"hex"}:
            return bytes.fromhex(data["hex"])
        if data.keys() == {"len", "sha256"}:
            return bytes(data["len"])
        if data.keys() == {"bp"}:
            number, address, location, hardware, temporary = data["bp"]
            return Breakpoint(number, address, location, hardware, temporary)
        if data.keys() == {"stop"}:
            reason, address, function, breakpoint, signal = data["stop"]
            return Stop(reason, address, function, breakpoint, signal, raw={})
        return {k: decode(v) for k, v in data.items()}
    return data


# Recordings made before the debugger's errors were renamed tag them with the old names.
TIMEOUT_TAGS = ("DebuggerTimeout", "GdbTimeout")
ERROR_TAGS = ("DebuggerError", "GdbError")


def encode_error(err: BaseException) -> dict[str, Any]:
    if isinstance(err, DebuggerTimeout):
        return {"type": "DebuggerTimeout", "what": err.what, "waited_for": err.waited_for, "timeout": err.timeout,
                "command": err.command}
    if isinstance(err, DebuggerError):
        return {"type": "DebuggerError", "what": err.what, "command": err.command, "message": err.message}
    return {"type": type(err).__name__, "message": str(err)}


def decode_error(data: Mapping[str, Any]) -> BaseException:
    if data["type"] in TIMEOUT_TAGS:
        return DebuggerTimeout(data["what"], data["waited_for"], data["timeout"], data["command"])
    if data["type"] in ERROR_TAGS:
        return DebuggerError(data["what"], data["command"], data["message"])
    return RuntimeError(f"recorded {data['type']}: {data['message']}")


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"captures": list(plan.captures), "hardware": plan.hardware, "timeout": plan.timeout,
            "init": list(plan.init) if plan.init is not None else None,
            "regions": [dataclasses.astuple(s) for s in plan.regions]}


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    return Plan(tuple(data["captures"]), tuple(Section(*s) for s in data["regions"]), data["hardware"],
                data["timeout"], tuple(data["init"]) if data["init"] is not None else None)


def outcome_json(out: Outcome, symbols: Any) -> dict[str, Any]:
    """What a session saw, as a replay must see it again.

    Left out: times (the host's) and the captured bytes (a replay has only their sha256, in the reads).
    """
    def stop(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = s.to_json(symbols)
        data.pop("t")
        return data
    return {
        "ended": out.ended, "error": out.error, "bound_reached": out.bound_reached, "stop_count": out.stop_count,
        "stops": [stop(s) for s in out.stops], "nmis": [n.to_json() for n in out.nmis],
        "captures": {name: {"regions": [[a, len(b)] for a, b in c.regions.items()],
                            "freed": [list(f) for f in c.freed]} for name, c in out.captures.items()},
        "dumps": [[name, address, data.hex()] for name, address, data in out.dumps],
        "events": len(out.events),
    }


def read_fixture(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        header = json.loads(fh.readline())
        calls = [json.loads(line) for line in fh]
    return header, calls


# --- recording ----------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.flags: dict[str, int] = {}
        self.addresses: dict[str, int | None] = {}
        self.resolved: dict[int, tuple[str, int] | None] = {}
        self.marks: list[tuple[int, tuple[int, ...]]] = []   # (call index of a cont, the session's state then)
        self.session: Session | None = None
        self.raised: dict[str, Any] | None = None

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if name == "cont" and self.session is not None:
            self.marks.append((len(self.calls), state(self.session)))
        entry: dict[str, Any] = {"call": name, "args": encode(args)}
        if kw:
            entry["kw"] = encode(kw)
        try:
            result = fn(*args, **kw)
        except BaseException as err:
            entry["error"] = encode_error(err)
            self.calls.append(entry)
            raise
        entry["result"] = encode_result(result)
        self.calls.append(entry)
        return result


def state(session: Session) -> tuple[int, ...]:
    """What an uneventful stop leaves unchanged."""
    out = session.out
    return (len(out.stops), sum(session.rule_hits.values()), len(session.pending_nmis), len(out.nmis),
            len(out.captures), len(out.events), len(out.dumps), len(session.points),
            sum(len(p.labels) for p in session.points.values()), int(out.bound_reached))


class RecordingDebugger:
    """Every method call goes to the real debugger and into the recording."""

    def __init__(self, dbg: Debugger, rec: Recorder) -> None:
        self._dbg = dbg
        self._rec = rec

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self._dbg, name)

        def method(*args: Any, **kw: Any) -> Any:
            return self._rec.call(name, fn, args, kw)
        return method


class _Flag:
    def __init__(self, event: Any, name: str, rec: Recorder) -> None:
        self._event, self._name, self._rec = event, name, rec

    def is_set(self) -> bool:
        value = bool(self._event.is_set())
        if value:
            self._rec.flags.setdefault(self._name, len(self._rec.calls))
        return value


class RecordingConsole:
    def __init__(self, console: ConsoleThread, rec: Recorder) -> None:
        self._console = console
        self.started = console.started
        self.fatal = _Flag(console.fatal, "fatal", rec)
        self.finished = _Flag(console.finished, "finished", rec)
        self.marker = _Flag(console.marker, "marker", rec)

    def hold(self) -> None:
        self._console.hold()

    def release(self) -> None:
        self._console.release()


class RecordingSymbols:
    def __init__(self, symbols: Symbols, rec: Recorder) -> None:
        self.real = symbols
        self._rec = rec

    def address(self, name: str) -> int | None:
        value = self.real.address(name)
        self._rec.addresses[name] = value
        return value

    def resolve(self, addr: int) -> tuple[str, int] | None:
        hit = self.real.resolve(addr)
        self._rec.resolved[addr] = hit
        return hit

    def format(self, addr: int) -> str:
        self.resolve(addr)
        return self.real.format(addr)

    def with_prefix(self, prefix: str) -> list[tuple[str, int]]:
        raise AssertionError(f"with_prefix({prefix!r}) is only for error messages; a recorded session has none")

    def __len__(self) -> int:
        return len(self.real)


RECORDERS: list[tuple[Recorder, RecordingSymbols, Options, Plan]] = []


class RecordingSession(Session):
    def __init__(self, dbg: Debugger, console: ConsoleThread, symbols: Symbols, plan: Plan,
                 options: Options, note: Callable[[str], None]) -> None:
        rec = self.recorder = Recorder()
        syms = RecordingSymbols(symbols, rec)
        real_nmi = options.inject_nmi

        def inject_nmi() -> None:
            assert real_nmi is not None
            rec.call("inject_nmi", real_nmi, (), {})

        options = dataclasses.replace(options, inject_nmi=inject_nmi if real_nmi is not None else None)
        RECORDERS.append((rec, syms, options, plan))
        super().__init__(RecordingDebugger(dbg, rec), RecordingConsole(console, rec),  # type: ignore[arg-type]
                         syms, plan, options, note)  # type: ignore[arg-type]
        rec.session = self

    def run(self) -> Outcome:
        rec = self.recorder
        try:
            return super().run()
        except BaseException as err:
            rec.raised = encode_error(err)
            raise


def symbol_table(symbols: Symbols, rec: Recorder) -> dict[str, int]:
    """The symbols a replay needs: every name found, every place resolved, and the symbol after each place."""
    table = {name: value for name, value in rec.addresses.items() if value is not None}
    addrs, _, names = symbols._index          # the real table's order, to bound each place
    for addr, hit in rec.resolved.items():
        if hit is None:
            continue
        name, off = hit
        table.setdefault(name, addr - off)
        i = bisect.bisect_right(addrs, addr)
        if i < len(addrs):
            table.setdefault(names[i], addrs[i])
    replay = Symbols.from_dict(table)
    wrong = [f"{name}: {value} != {replay.address(name)}" for name, value in rec.addresses.items()
             if replay.address(name) != value]
    wrong += [f"{addr:#x}: {hit} != {replay.resolve(addr)}" for addr, hit in rec.resolved.items()
              if replay.resolve(addr) != hit]
    if wrong:
        raise SystemExit("the recorded symbols do not answer as the kernel's did: " + "; ".join(wrong[:10]))
    return dict(sorted(table.items(), key=lambda kv: kv[1]))


def elide(rec: Recorder, keep: int) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, Any] | None]:
    """The calls without the uneventful stops of each run of them but its first and last ``keep``; flags re-counted."""
    calls = rec.calls
    if rec.session is None or rec.session.out.bound_reached:
        return calls, dict(rec.flags), None
    ends = [start for start, _ in rec.marks[1:]] + [len(calls)]
    afters = [after for _, after in rec.marks[1:]] + [state(rec.session)]
    runs: list[list[tuple[int, int]]] = []   # runs of consecutive uneventful stops: (start, end) of each
    last = -2
    for k, ((start, before), end, after) in enumerate(zip(rec.marks, ends, afters, strict=True)):
        segment = calls[start:end]
        if (tuple(c["call"] for c in segment) == STOP_PATTERN and before == after
                and all("error" not in c for c in segment)
                and decode(segment[1]["result"]).reason == "breakpoint-hit"
                and not any(start < n <= end for n in rec.flags.values())):
            if k != last + 1:
                runs.append([])
            runs[-1].append((start, end))
            last = k
    dropped = [segment for run in runs for segment in run[keep:len(run) - keep]]
    if not dropped:
        return calls, dict(rec.flags), None
    kept = [True] * len(calls)
    where: Counter[str] = Counter()
    for start, end in dropped:
        kept[start:end] = [False] * (end - start)
        where[hex(decode(calls[start + 1]["result"]).address)] += 1
    removed_before = [0]
    for keeping in kept:
        removed_before.append(removed_before[-1] + (not keeping))
    flags = {name: n - removed_before[n] for name, n in rec.flags.items()}
    info = {"stops": len(dropped), "calls": removed_before[-1], "keep": keep,
            "quiet_runs": [len(run) for run in runs], "by_address": dict(sorted(where.items()))}
    return [c for c, keeping in zip(calls, kept, strict=True) if keeping], flags, info


def record(name: str, keep: int = KEEP) -> Path:
    config_path = REPO / "configs" / f"{name}.yaml"
    cfg = load_config(config_path)
    RECORDERS.clear()
    original = framework.observe.inspection.Session  # type: ignore[attr-defined]
    framework.observe.inspection.Session = RecordingSession  # type: ignore[attr-defined]
    try:
        with tempfile.TemporaryDirectory(prefix="patchscope-record-") as tmp:
            result = execute(RunRequest(cfg, MODE, Path(tmp) / name / MODE),
                             lambda text: print(f"  {text}", file=sys.stderr))
    finally:
        framework.observe.inspection.Session = original  # type: ignore[attr-defined]
    if len(RECORDERS) != 1:
        raise SystemExit(f"{name}: expected one session, got {len(RECORDERS)}: {result.data.get('reasons')}")
    rec, syms, options, plan = RECORDERS[0]
    assert rec.session is not None and cfg.scenario is not None
    if options.trace:
        raise SystemExit(f"{name}: traced sessions need the vmlinux text in a replay; not recorded")
    out = rec.session.out
    outcome = outcome_json(out, syms)          # resolves the effects' addresses through the recording symbols
    calls, flags, elided = elide(rec, keep)
    if elided is not None:
        whole = b"".join((json.dumps(c, separators=(",", ":")) + "\n").encode() for c in rec.calls)
        elided["whole_kib"] = round(len(gzip.compress(whole, 9)) / 1024)
    if elided is not None:
        outcome["stop_count"] -= elided["stops"]
    uses_pv_op = any(c.kind == "pv_op" for r in cfg.scenario.rules for c in r.on.when)
    header = {
        "name": name, "mode": MODE, "config_file": str(config_path.relative_to(REPO)),
        "config": config_path.read_text(), "kernel": {k: v for k, v in (result.data.get("kernel") or {}).items()
                                                 if k in ("ref", "package", "version", "release", "sha256")},
        "plan": plan_json(plan),
        "options": {"trace": options.trace, "pv_ops": {str(k): v for k, v in options.pv_ops.items()},
                    "pv_sites": {str(k): v for k, v in options.pv_sites.items()} if uses_pv_op else {},
                    "inject_nmi": options.inject_nmi is not None},
        "symbols": symbol_table(syms.real, rec),
        "console": flags, "raised": rec.raised, "elided": elided, "recorded_calls": len(rec.calls),
        "outcome": outcome,
        "scenario_reasons": judge_scenario(cfg.expect, cfg.scenario, out.stops, out.nmis, out.bound_reached),
        "run": {k: result.data.get(k) for k in ("verdict", "reasons", "outcome", "title")},
    }
    SESSIONS.mkdir(parents=True, exist_ok=True)
    dest = SESSIONS / f"{name}-{MODE}.jsonl.gz"
    with gzip.GzipFile(dest, "wb", compresslevel=9, mtime=0) as raw:
        raw.write((json.dumps(header, separators=(",", ":")) + "\n").encode())
        for entry in calls:
            raw.write((json.dumps(entry, separators=(",", ":")) + "\n").encode())
    return dest


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=int, default=KEEP, help="uneventful stops kept at each end of a run of them")
    ap.add_argument("names", nargs="*", default=list(NAMES), help=f"configs/<name>.yaml (default: {' '.join(NAMES)})")
    args = ap.parse_args(argv)
    for name in args.names:
        dest = record(name, args.keep)
        header, calls = read_fixture(dest)
        run = header["run"]
        print(f"{dest.relative_to(REPO)}: {dest.stat().st_size / 1024:.0f} KiB, {len(calls)} calls "
              f"({header['recorded_calls']} made), {header['outcome']['stop_count']} stops; run {run['verdict']} "
              f"{run['outcome']}; elided {header['elided']}", file=sys.stderr)


if __name__ == "__main__":
    main()
