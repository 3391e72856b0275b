"""framework.debugger.mi without GDB: the MI parser, the one dispatch point, and the process layer
against tiny fake GDBs, one of which replays real sessions recorded in tests/data/gdb/.

The recordings are transcripts written by real sessions (tests/boot/test_gdb.py; rerun
it with PATCHSCOPE_UPDATE_GDB_RECORDINGS=1 to rewrite them) next to the facts those
sessions observed (<name>.json). In them, as in every real session, a breakpoint's
``*stopped`` arrives a millisecond after the ``^running`` of its continue: in the
same read, before the next command is sent.
"""

from __future__ import annotations

import json
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.debugger import mi as gdbmod
from framework.debugger.contract import Breakpoint, DebuggerDied, DebuggerError, DebuggerTimeout, Stop
from framework.debugger.mi import (
    Gdb,
    Inbox,
    Record,
    breakpoint_from_mi,
    error_message,
    mi_quote,
    parse_int,
    parse_memory,
    parse_record,
    parse_register_names,
    parse_registers,
    replay,
    stop_from_record,
    transcript_received,
)
from framework.errors import InfrastructureError, ToolMissingError
from tests.boot.test_gdb import scenario_disconnect, scenario_stops
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "gdb"
RECORDINGS = sorted(p.stem for p in DATA.glob("*.transcript"))


def received(name: str) -> list[str]:
    return transcript_received((DATA / f"{name}.transcript").read_text().splitlines())


def exchanges(name: str) -> list[tuple[str | None, list[str]]]:
    """(line sent, lines GDB printed until the next send): what one pygdbmi write() could return."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in (DATA / f"{name}.transcript").read_text().splitlines():
        fields = line.lstrip().split(" ", 2)
        text = fields[2] if len(fields) == 3 else ""
        if fields[1:2] == ["->"]:
            out.append((text, []))
        elif fields[1:2] == ["<-"]:
            out[-1][1].append(text)
    return out


# --- parsing --------------------------------------------------------------------------------------

def test_records_of_every_kind() -> None:
    r = parse_record('12^done,register-values=[{number="16",value="0xff"}]')
    assert (r.kind, r.cls, r.token) == ("result", "done", 12)
    assert r.results == {"register-values": [{"number": "16", "value": "0xff"}]}
    r = parse_record('*stopped,reason="breakpoint-hit",bkptno="1",frame={addr="0x10",func="f",args=[]}')
    assert (r.kind, r.cls, r.token) == ("exec", "stopped", None)
    assert parse_record('*running,thread-id="all"').kind == "exec"
    assert parse_record('=breakpoint-modified,bkpt={number="1"}').kind == "notify"
    assert parse_record('~"Breakpoint 1, f ()\\n"').kind == "console"
    assert parse_record('~"a \\"b\\"\\n"').text == 'a "b"\n'
    assert parse_record('&"warning: x\\n"').kind == "log"
    assert parse_record('@"target says"').kind == "target"
    assert parse_record("(gdb) ").kind == "prompt"
    assert parse_record("+download,{section=\".text\"}").kind == "status"
    r = parse_record("Some stderr text from gdb")
    assert (r.kind, r.text) == ("output", "Some stderr text from gdb")
    assert parse_record("3^error,msg=\"x\"\r\n").line == '3^error,msg="x"'


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_recorded_line_is_understood(name: str) -> None:
    lines = received(name)
    assert lines
    assert [line for line in lines if parse_record(line).kind == "output"] == []


def test_parse_int() -> None:
    assert parse_int("0x1f") == 31
    assert parse_int("31") == 31
    assert parse_int("-0x10") == -16
    assert parse_int("0xffffffff81000000 <startup_64>") == 0xFFFFFFFF81000000
    with pytest.raises(ValueError):
        parse_int("<optimized out>")
    with pytest.raises(ValueError):
        parse_int("")


def test_stops() -> None:
    hit = stop_from_record(parse_record(
        '*stopped,reason="breakpoint-hit",disp="keep",bkptno="2",frame={addr="0xffffffff8103be50",'
        'func="text_poke_early",args=[],arch="i386:x86-64"},thread-id="1",stopped-threads="all"'))
    assert hit == Stop("breakpoint-hit", 0xFFFFFFFF8103BE50, "text_poke_early", 2, None, {})
    assert hit.raw["bkptno"] == "2" and "breakpoint 2" in hit.describe()
    sig = stop_from_record(parse_record(
        '*stopped,reason="signal-received",signal-name="SIGINT",signal-meaning="Interrupt",'
        'frame={addr="0xffffffff81e01d30",func="__x86_return_thunk",args=[]}'))
    assert (sig.reason, sig.signal, sig.breakpoint) == ("signal-received", "SIGINT", None)
    first = stop_from_record(parse_record('*stopped,frame={addr="0x000000000000fff0",func="??",args=[]}'))
    assert (first.reason, first.address, first.function) == ("unknown", 0xFFF0, None)
    ended = stop_from_record(parse_record('*stopped,reason="exited-normally"'))
    assert (ended.reason, ended.address) == ("exited-normally", None)
    with pytest.raises(ValueError):
        stop_from_record(parse_record("*running,thread-id=\"all\""))
    hash(hit)       # raw is left out of eq and hash


def test_breakpoints() -> None:
    bp = breakpoint_from_mi(parse_record(
        '9^done,bkpt={number="1",type="hw breakpoint",disp="keep",enabled="y",addr="0xffffffff8103be50",'
        'at="<text_poke_early>",thread-groups=["i1"],times="0",original-location="text_poke_early"}'
    ).results["bkpt"])  # type: ignore[arg-type]
    assert bp == Breakpoint(1, 0xFFFFFFFF8103BE50, "text_poke_early", True, False)
    temp = breakpoint_from_mi({"number": "4", "type": "breakpoint", "disp": "del", "addr": "<MULTIPLE>"}, "*0x10")
    assert temp == Breakpoint(4, None, "*0x10", False, True)
    with pytest.raises(ValueError):
        breakpoint_from_mi({"type": "breakpoint"})


def test_registers_memory_and_errors() -> None:
    names = parse_register_names(parse_record('1^done,register-names=["rax","rbx","","rip"]').results)
    assert names == {"rax": 0, "rbx": 1, "rip": 3}
    values = parse_registers(parse_record(
        '2^done,register-values=[{number="3",value="0xffffffff8103be50"},{number="0",value="0x5"},'
        '{number="9",value="0x1"}]').results, {3: "rip", 0: "rax"})
    assert values == {"rip": 0xFFFFFFFF8103BE50, "rax": 5}
    assert parse_memory(parse_record(
        '3^done,memory=[{begin="0x10",offset="0x0",end="0x14",contents="0102"},'
        '{begin="0x12",offset="0x0",end="0x14",contents="0304"}]').results) == b"\x01\x02\x03\x04"
    err = parse_record('4^error,msg="Cannot access memory at address 0x0"')
    assert error_message(err) == "Cannot access memory at address 0x0"
    assert mi_quote('dump "a"\\b\n') == '"dump \\"a\\"\\\\b\\n"'


def test_errors_are_one_line_and_in_the_tree() -> None:
    err = DebuggerError("detach", "-target-detach", "Cannot execute this command while the target is running.\n"
                        "Use the \"interrupt\" command to stop the target\nand then try again.")
    assert isinstance(err, InfrastructureError)
    assert str(err) == ('gdb: detach: -target-detach: Cannot execute this command while the target is running. '
                        'Use the "interrupt" command to stop the target and then try again.')
    timeout = DebuggerTimeout("wait for a stop", "*stopped record", 5.0)
    assert isinstance(timeout, DebuggerError)
    assert str(timeout) == "gdb: wait for a stop: no *stopped record within 5 s"


# --- the one dispatch point, on recorded sessions ------------------------------------------------

def test_a_stop_arrives_with_the_running_of_its_continue() -> None:
    """The case that lost stops: one read holds ^running and the *stopped that follows it."""
    together = [(sent, lines) for sent, lines in exchanges("stops")
                if sent and "-exec-continue" in sent and any(line.startswith("*stopped") for line in lines)]
    assert len(together) >= 3
    inbox = Inbox()
    for sent, lines in together:
        assert sent is not None
        token = int(sent.split("-", 1)[0])
        replay(lines, inbox)
        result = inbox.take_result(token)
        assert result is not None and result.cls == "running"
        stop = inbox.take_stop()          # still there after the command took its result
        assert stop is not None and stop.reason == "breakpoint-hit" and not inbox.running
    assert inbox.take_stop() is None


@pytest.mark.parametrize("name", RECORDINGS)
def test_replayed_sessions_keep_every_result_and_stop_in_order(name: str) -> None:
    lines = received(name)
    inbox = replay(lines)
    tokens = [int(line.split("^", 1)[0]) for line in lines if line[:1].isdigit() and "^" in line]
    assert [inbox.take_result(t) is not None for t in tokens] == [True] * len(tokens)
    expected = [stop_from_record(parse_record(line)) for line in lines if line.startswith("*stopped")]
    taken = []
    while (stop := inbox.take_stop()) is not None:
        taken.append(stop)
    assert taken == expected and inbox.stopped_count == len(expected)
    assert any(r.cls == "breakpoint-modified" for r in inbox.events) == (name == "stops")


def test_a_target_that_vanishes_without_a_stop_is_disconnected() -> None:
    gone = replay(received("disconnect-disconnected"))
    assert gone.target_exited and gone.disconnect is not None
    stop = gone.take_disconnect()
    assert stop is not None and stop.reason == "disconnected" and not gone.running
    assert gone.take_disconnect() is None
    said = replay(received("disconnect-exited-normally"))      # QEMU said goodbye: GDB's own stop
    assert said.disconnect is None
    stops = [said.take_stop(), said.take_stop(), said.take_stop()]
    assert [s.reason if s else None for s in stops] == ["unknown", "exited-normally", None]   # connect, exit


def test_stream_output_belongs_to_the_command_since_mark() -> None:
    inbox = Inbox()
    replay(['~"old\\n"'], inbox)
    inbox.mark()
    replay(['~"symbol + 4 in section .text\\n"', '&"a warning\\n"', "7^done"], inbox)
    assert inbox.text() == "symbol + 4 in section .text\n"
    assert inbox.text(("log",)) == "a warning\n"


def test_transcript_received_keeps_empty_and_spaced_lines() -> None:
    lines = ["     0.001 -- spawn gdb", "     0.002 -> 1-gdb-set a b", "     0.003 <- 1^done",
             "    12.500 <- ", "    12.501 <- ~\"a  b\""]
    assert transcript_received(lines) == ["1^done", "", '~"a  b"']


# --- the process layer, against fake GDBs ---------------------------------------------------------

FAKE_GDB = r'''
import os, re, signal, sys

mode = os.environ.get("FAKE_GDB_MODE", "replay")
if os.environ.get("FAKE_GDB_STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def out(lines):
    sys.stdout.write("".join(line + "\n" for line in lines))   # a whole exchange in one write
    sys.stdout.flush()


groups = [[None, []]]
if mode == "replay":
    for raw in open(os.environ["FAKE_GDB_TRANSCRIPT"], encoding="utf-8"):
        fields = raw.rstrip("\n").lstrip().split(" ", 2)
        text = fields[2] if len(fields) == 3 else ""
        if fields[1:2] == ["->"]:
            groups.append([text, []])
        elif fields[1:2] == ["<-"]:
            groups[-1][1].append(text)
    out(groups.pop(0)[1])
for line in sys.stdin:
    token, name = re.match(r"(\d*)(\S*)", line).groups()
    if mode == "mute":
        continue
    if mode == "die":
        sys.exit(3)
    if not groups:
        out([f'{token}^error,msg="replay: nothing recorded for {name}"'])
        continue
    recorded, lines = groups.pop(0)
    rtoken, rname = re.match(r"(\d*)(\S*)", recorded).groups()
    if rname != name:
        out([f'{token}^error,msg="replay: expected {rname}, got {name}"'])
        continue
    out([token + l[len(rtoken):] if rtoken and l.startswith(rtoken + "^") else l for l in lines])
    if name == "-gdb-exit":
        sys.exit(0)
'''


@pytest.fixture
def fake_gdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    path = tmp_path / "fake-gdb"
    path.write_text(f"#!{sys.executable}\n{FAKE_GDB}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(gdbmod, "EXIT_GRACE", 0.3)
    monkeypatch.setattr(gdbmod, "TERM_GRACE", 0.3)
    yield str(path)


@pytest.fixture
def gdbstub(tmp_path: Path) -> Iterator[Path]:
    """A unix socket file where the recorded QEMU's was (the fake GDB never opens it)."""
    path = tmp_path / "gdb.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        yield path


def gone(pid: int | None) -> bool:
    return pid is not None and not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("name", ["stops", "disconnect-disconnected", "disconnect-exited-normally"])
def test_recorded_scenarios_replay_to_the_same_facts(name: str, fake_gdb: str, gdbstub: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GDB_TRANSCRIPT", str(DATA / f"{name}.transcript"))
    scenario = scenario_stops if name == "stops" else scenario_disconnect
    transcript = tmp_path / "replay.transcript"
    # The fake GDB answers -file-exec-and-symbols from the recording: any existing file will do.
    with Gdb(gdbstub, transcript, DATA / f"{name}.json", gdb=fake_gdb, timeout=5) as gdb:
        pid = gdb.pid
        facts = scenario(gdb)
    assert json.loads(json.dumps(facts)) == json.loads((DATA / f"{name}.json").read_text())
    assert gone(pid)
    # The replay's own transcript has what the fake printed, line for line.
    assert transcript_received(transcript.read_text().splitlines()) == received(name)


def test_a_mute_gdb_times_out_and_is_killed(fake_gdb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GDB_MODE", "mute")
    monkeypatch.setenv("FAKE_GDB_STUBBORN", "1")        # ignores SIGTERM too: only SIGKILL ends it
    gdb = Gdb(tmp_path / "gdb.sock", tmp_path / "t", gdb=fake_gdb, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DebuggerTimeout) as err:
        gdb.start()
    assert str(err.value) == "gdb: start: -gdb-set mi-async on: no result within 0.3 s"
    assert time.monotonic() - start < 3 and gdb.pid is None
    log = (tmp_path / "t").read_text()
    assert "-> 1-gdb-set mi-async on" in log and "outlived SIGTERM" in log and "status -9" in log


def test_a_gdb_that_dies_is_an_error_not_a_hang(fake_gdb: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GDB_MODE", "die")
    with pytest.raises(DebuggerDied, match=r"gdb: start: -gdb-set mi-async on: gdb \(pid \d+\) exited \(status 3\) "
                                      r"while waiting for result"):
        Gdb(tmp_path / "gdb.sock", tmp_path / "t", gdb=fake_gdb).start()


def test_replay_refuses_a_different_command(fake_gdb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GDB_TRANSCRIPT", str(DATA / "stops.transcript"))
    with Gdb(tmp_path / "gdb.sock", tmp_path / "t", gdb=fake_gdb) as gdb, \
            pytest.raises(DebuggerError, match="replay: expected -file-exec-and-symbols, got -break-insert"):
        gdb.break_at(0xFFFFFFFF8103BE50)


def test_missing_gdb_and_bad_sockets(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match="apt-get install gdb"):
        Gdb(tmp_path / "gdb.sock", tmp_path / "t", gdb=str(tmp_path / "no-gdb")).start()
    # Checked before GDB is asked: no process needed.
    with pytest.raises(DebuggerError, match="':' or white space"):
        Gdb(tmp_path / "a:b.sock", tmp_path / "t", timeout=0.1).connect()
    regular = tmp_path / "file.sock"
    regular.write_text("")
    with pytest.raises(DebuggerError, match="not a unix socket"):
        Gdb(regular, tmp_path / "t", timeout=0.1).connect()
    with pytest.raises(DebuggerError, match="QEMU exited before GDB could connect"):
        Gdb(tmp_path / "never.sock", tmp_path / "t", timeout=5, alive=lambda: False).connect()


def test_record_is_frozen() -> None:
    record = parse_record("1^done")
    assert isinstance(record, Record)
    with pytest.raises(AttributeError):
        record.kind = "x"  # type: ignore[misc]
