"""The fast comparison (sites.Baseline) and the hand-made site-file lines against the plain ways.

``plain_compare`` below is the comparison as it was written first: every site read
and disassembled on its own, every changed byte of the whole text looked up in the
known ranges. The fast path must give the same ``Comparison`` (states, live bytes,
instruction texts, symbols, unknown changes, over-sized patches, pv sites left
indirect) on random texts with many sites, capture after capture through one
Baseline; and ``SiteState.json_line`` must be ``json.dumps(st.to_json())``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import framework.analysis.sites as sites_mod
from framework.analysis.findings import Analysis
from framework.analysis.sites import (
    Baseline,
    Capture,
    Comparison,
    Oversize,
    SiteState,
    TextChange,
    changed_ranges,
    compare,
    disassemble,
    site_state,
)
from framework.elf.vmlinux import Site, Symbols
from framework.observe.inspection import CompareAhead
from framework.report.artefacts import load_analysis, sites_file, write_analysis

BASE = 0xFFFFFFFF81000000
PV_OPS = BASE + 0x100000


# --------------------------------------------------------------------------- the plain comparison


def _covers(ranges: Sequence[tuple[int, int]], address: int) -> bool:
    return any(lo <= address < hi for lo, hi in ranges)


def _runs(addresses: Sequence[int], gap: int, joinable: object) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a in addresses:
        if out and a - out[-1][1] < gap and joinable(out[-1][1], a):  # type: ignore[operator]
            out[-1] = (out[-1][0], a + 1)
        else:
            out.append((a, a + 1))
    return out


def plain_compare(tables: Mapping[str, Sequence[Site]], capture: Capture, elf_read: Mapping[int, bytes],
                  symbols: Symbols | None, pv_targets: Mapping[int, int], extra_known: Sequence[tuple[int, int]],
                  gap: int = 8) -> Comparison:
    """Byte by byte: each site's state by site_state(), each changed byte of the text checked against every range."""
    states = {table: tuple(site_state(s, capture, symbols) for s in found) for table, found in tables.items()}
    known = [(s.address, s.address + s.length) for found in tables.values() for s in found] + list(extra_known)
    changes: list[TextChange] = []
    changed: set[int] = set()
    for start, live in capture.regions.items():
        elf = elf_read.get(start)
        if elf is None or len(elf) != len(live):
            continue
        unknown = []
        for i in range(len(live)):
            if elf[i] != live[i]:
                changed.add(start + i)
                if not _covers(known, start + i) and not capture.is_freed(start + i):
                    unknown.append(start + i)
        for lo, hi in _runs(unknown, gap, lambda a, b: not any(_covers(known, x) for x in range(a, b))):
            changes.append(TextChange(lo, hi, symbols.format(lo) if symbols else hex(lo),
                                      elf[lo - start:hi - start], live[lo - start:hi - start]))
    oversized = []
    for table_states in states.values():
        for st in table_states:
            end, extra = st.site.address + st.site.length, 0
            while end + extra in changed and not _covers(known, end + extra):
                extra += 1
            if extra:
                oversized.append(Oversize(st, extra))
    pv = [st for st in states.get("paravirt", ()) if st.live is not None and len(st.live) >= 6
          and st.live[:2] == b"\xff\x15"
          and st.site.address in pv_targets and (st.site.address + 6 + int.from_bytes(st.live[2:6], "little", signed=True))
          & ((1 << 64) - 1) == pv_targets[st.site.address]]
    return Comparison(capture.name, states, tuple(sorted(changes, key=lambda c: c.start)), tuple(oversized), tuple(pv))


# --------------------------------------------------------------------------- random kernels

# What patching writes into a site: NOPs, "ret; int3", pushf/pop, call/jmp rel32, a lock prefix, undecodable bytes.
PATCHES = (b"\x0f\x1f\x44\x00\x00", b"\xc3\xcc\xcc\xcc\xcc", b"\x9c\x58\x0f\x1f\x40\x00", b"\xfa\x66\x90",
           b"\x3e", b"\x90\x90", b"\xff\xff", b"\x48\x8b\x05\x10\x00\x00\x00")


def _branch(rng: random.Random) -> bytes:
    return bytes([rng.choice((0xE8, 0xE9))]) + rng.randrange(-4096, 4096).to_bytes(4, "little", signed=True)


@dataclasses.dataclass
class Kernel:
    elf: bytes
    init: bytes                                  # a second region: init text, freed in later captures
    init_base: int
    tables: dict[str, list[Site]]
    extra_known: list[tuple[int, int]]
    pv_targets: dict[int, int]
    symbols: Symbols


def random_kernel(rng: random.Random, size: int = 1 << 14, count: int = 900) -> Kernel:
    elf = bytes(rng.getrandbits(8) for _ in range(size))
    init = bytes(rng.getrandbits(8) for _ in range(1024))
    init_base = BASE + size + 0x1000
    tables: dict[str, list[Site]] = {"paravirt": [], "returns": [], "smp_locks": [], "alternatives": []}
    pv_targets: dict[int, int] = {}
    for n in range(count):
        table = rng.choice(list(tables))
        length = {"smp_locks": 1, "returns": 5, "paravirt": 6}.get(table, rng.choice((0, 2, 5, 7)))
        where = rng.random()
        if where < 0.9:
            address, original = BASE + rng.randrange(0, size - 8), None
        elif where < 0.97:
            address, original = init_base + rng.randrange(0, len(init) - 8), None
        else:
            address, original = BASE + size + rng.randrange(0, 0x800), b"\x90" * length     # never captured
        if original is None:
            base, data = (BASE, elf) if address < init_base else (init_base, init)
            original = data[address - base:address - base + length]
        slot = rng.randrange(0, 60) if table == "paravirt" else None
        site = Site(table=table, index=len(tables[table]), address=address, length=length, original=original,
                    section=".text" if address < init_base else ".init.text", op="irq.save_fl" if slot else None,
                    slot=slot)
        tables[table].append(site)
        if slot is not None:
            pv_targets[address] = PV_OPS + 8 * slot
    extra = [(BASE + o, BASE + o + 5) for o in rng.sample(range(size - 5), 20)]
    names = {f"func_{i}": BASE + i * 0x40 for i in range(size // 0x40)}
    names.update({f"init_{i}": init_base + i * 0x80 for i in range(8)})
    return Kernel(elf, init, init_base, tables, extra, pv_targets, Symbols.from_dict(names))


def patched(rng: random.Random, k: Kernel, name: str, share: float, freed: bool) -> Capture:
    """A capture: some sites rewritten (some past their end), some bytes outside every site changed."""
    text, init = bytearray(k.elf), bytearray(k.init)
    for found in k.tables.values():
        for s in found:
            if rng.random() > share or s.length == 0:
                continue
            target, base = (text, BASE) if s.address < k.init_base else (init, k.init_base)
            off = s.address - base
            if off >= len(target):
                continue
            choice = rng.random()
            if s.table == "paravirt" and choice < 0.2:        # call *pv_ops+8*slot(%rip): left indirect
                disp = k.pv_targets[s.address] - (s.address + 6)
                code = b"\xff\x15" + disp.to_bytes(4, "little", signed=True)
            elif choice < 0.5:
                code = _branch(rng)
            else:
                code = rng.choice(PATCHES)
            extra = rng.choice((0, 0, 0, 1, 3)) if choice > 0.9 else 0       # over-sized now and then
            code = (code * 2)[:s.length + extra]
            target[off:off + len(code)] = code
    for _ in range(rng.randrange(0, 12)):                                  # writes outside every site
        off = rng.randrange(0, len(text) - 4)
        for i in range(rng.randrange(1, 5)):
            text[off + i] ^= rng.randrange(1, 256)
    regions = {BASE: bytes(text), k.init_base: bytes(init)}
    return Capture(name, regions, ((k.init_base, k.init_base + len(k.init)),) if freed else ())


@pytest.mark.parametrize("seed", range(12))
def test_the_fast_comparison_is_the_plain_one(seed: int) -> None:
    rng = random.Random(seed)
    k = random_kernel(rng)
    elf = {BASE: k.elf, k.init_base: k.init}
    symbols = k.symbols if seed % 3 else None
    baseline = Baseline(k.tables, symbols, k.pv_targets, k.extra_known)
    # Three captures, as a run takes them: each a little more patched; the last with init text freed.
    for n, (share, freed) in enumerate(((0.2, False), (0.8, False), (0.8, True))):
        cap = patched(rng, k, f"capture-{n}", share, freed)
        fast = baseline.compare(cap, elf)
        plain = plain_compare(k.tables, cap, elf, symbols, k.pv_targets, k.extra_known)
        assert fast == plain
        assert fast.counts() == plain.counts()
        assert compare(k.tables, cap, elf, symbols, k.pv_targets, k.extra_known) == plain


def test_random_kernels_exercise_every_finding() -> None:
    """The random kernels above are worth comparing on: they hold every state and every whole-text finding."""
    seen: set[str] = set()
    for seed in range(12):
        rng = random.Random(seed)
        k = random_kernel(rng)
        cap = patched(rng, k, "x", 0.8, seed % 2 == 1)
        comp = compare(k.tables, cap, {BASE: k.elf, k.init_base: k.init}, k.symbols, k.pv_targets, k.extra_known)
        seen |= {st.state for states in comp.sites.values() for st in states}
        seen |= {"unknown"} if comp.unknown_changes else set()
        seen |= {"oversized"} if comp.oversized else set()
        seen |= {"pv_indirect"} if comp.pv_indirect else set()
        seen |= {"named call"} if any(i.startswith("call func_") for s in comp.sites.values() for st in s
                                     for i in st.insns) else set()
    assert seen == {"unchanged", "patched", "freed", "unread", "unknown", "oversized", "pv_indirect", "named call"}


def test_overlapping_regions_read_as_capture_read_does() -> None:
    s = Site(table="alternatives", index=0, address=BASE + 8, length=4, original=b"abcd", section=".text")
    cap = Capture("x", {BASE + 4: b"....abcd....", BASE: b"0123WXYZ89ab"})      # first region in dict order wins
    fast = compare({"alternatives": [s]}, cap, {}, None)
    assert fast.sites["alternatives"][0] == site_state(s, cap, None)
    assert fast.sites["alternatives"][0].state == "unchanged"


def test_a_site_unchanged_between_captures_is_the_same_object() -> None:
    """Baseline carries a site's state over when its bytes did not move: no second disassembly, no second line."""
    rng = random.Random(7)
    k = random_kernel(rng, count=300)
    baseline = Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)
    elf = {BASE: k.elf, k.init_base: k.init}
    first = baseline.compare(Capture("a", elf), elf)
    again = baseline.compare(Capture("b", elf), elf)
    assert first.sites == again.sites
    assert all(a is b for table in first.sites for a, b in zip(first.sites[table], again.sites[table]))
    one = next(s for s in k.tables["paravirt"] if s.address < k.init_base)
    text = bytearray(k.elf)
    text[one.address - BASE:one.address - BASE + 6] = b"\x9c\x58\x0f\x1f\x40\x00"
    moved = baseline.compare(Capture("c", {BASE: bytes(text), k.init_base: k.init}), elf)
    changed = [st for st in moved.sites["paravirt"] if st.site is one]
    assert changed[0].state == "patched" and changed[0] is not first.sites["paravirt"][one.index]


def test_fixed_instructions_are_decoded_once_and_rel32_branches_never(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = sites_mod._decode

    def counting(code: bytes) -> sites_mod._Decoded:
        calls.append(code)
        return real(code)

    monkeypatch.setattr(sites_mod, "_decode", counting)
    monkeypatch.setattr(sites_mod, "_texts", {})
    nop = b"\x0f\x1f\x44\x00\x01"            # a NOP5 with a displacement no other test uses
    text = nop * 400 + b"".join(b"\xe8" + (i * 7).to_bytes(4, "little") for i in range(400))
    found = [Site(table="ftrace", index=i, address=BASE + 5 * i, length=5, original=b"\xcc" * 5, section=".text")
             for i in range(800)]
    comp = compare({"ftrace": found}, Capture("x", {BASE: text}), {}, None)
    assert calls == [nop]
    assert [st.insns for st in comp.sites["ftrace"]] == [
        tuple(i.text for i in disassemble(text[5 * i:5 * i + 5], BASE + 5 * i)) for i in range(800)]


def test_only_text_outside_the_known_ranges_is_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's own bytes are judged by its state: the whole-text scan never looks inside a known range."""
    scanned: list[tuple[int, int]] = []

    def spy(before: bytes, after: bytes, base: int) -> list[tuple[int, int]]:
        scanned.append((base, base + len(before)))
        return changed_ranges(before, after, base)

    monkeypatch.setattr(sites_mod, "changed_ranges", spy)
    found = [Site(table="returns", index=i, address=BASE + 16 * i, length=5, original=bytes(5), section=".text")
             for i in range(64)]
    live = bytearray(1024)
    for i in range(64):
        live[16 * i:16 * i + 5] = b"\xc3\xcc\xcc\xcc\xcc"
    live[16 * 3 + 9] = 1                                        # one byte outside every site
    comp = compare({"returns": found}, Capture("x", {BASE: bytes(live)}), {BASE: bytes(1024)}, None)
    assert [(c.start, c.end) for c in comp.unknown_changes] == [(BASE + 57, BASE + 58)]
    assert scanned == [(BASE + 53, BASE + 64)]


# --------------------------------------------------------------------------- the site file's lines


def every_field_site(**values: object) -> Site:
    """A Site with every field set to something json.dumps must quote, escape or spell: a field added to Site
    and not to site_head() makes the line differ."""
    sample: dict[str, object] = {"table": "alternatives", "index": 12, "address": BASE + 0x1234, "length": 7,
                                 "original": b"\x90\x0f\x1f", "section": ".text\u00e9\"\\", "op": "mmu.\"odd\"\n",
                                 "slot": 3, "feature": "!X86_FEATURE_XENPV", "replacement": b"\xcc",
                                 "replacement_address": BASE + 0x99, "target": BASE + 0x42, "flags": 2,
                                 "key": BASE + 0x77, "module": "kvm"}
    assert set(sample) == {f.name for f in dataclasses.fields(Site)}
    sample.update(values)
    return Site(**sample)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", [
    SiteState(every_field_site(), "patched", b"\x9c\x58", ("pushf", "pop %rax"), "fn+0x4"),
    SiteState(every_field_site(module=None, op=None, slot=None, feature=None, replacement=None,
                               replacement_address=None, target=None, flags=None, key=None), "unchanged",
              b"\x90", ("nop",), "\u00fcber_func \"q\""),
    SiteState(every_field_site(), "freed", None, (), "0xffffffff81001234"),
    SiteState(every_field_site(), "unread", None, (), ""),
    SiteState(every_field_site(), "patched", b"", (), "x"),
])
def test_a_json_line_is_json_dumps_of_to_json(state: SiteState) -> None:
    assert state.json_line == json.dumps(state.to_json()) + "\n"
    assert SiteState.from_json(json.loads(state.json_line)) == state


def test_baseline_encodes_every_line_ahead_with_each_site_part_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    k = random_kernel(rng, count=400)
    baseline = Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)
    elf = {BASE: k.elf, k.init_base: k.init}
    comps = [baseline.compare(patched(rng, k, n, 0.5, n == "b"), elf) for n in ("a", "b")]
    heads: list[Site] = []
    real = sites_mod.site_head

    def counting(site: Site, symbol: str) -> str:
        heads.append(site)
        return real(site, symbol)

    monkeypatch.setattr(sites_mod, "site_head", counting)
    for comp in comps:
        baseline.encode(comp)
    every = [st for comp in comps for states in comp.sites.values() for st in states]
    assert all("json_line" in st.__dict__ for st in every)             # made ahead: writing only joins them
    assert all(st.json_line == json.dumps(st.to_json()) + "\n" for st in every)
    assert len(heads) == len({id(s) for s in heads}) == sum(len(v) for v in k.tables.values())


def test_site_files_hold_json_dumps_lines_and_load_back(tmp_path: Path) -> None:
    rng = random.Random(11)
    k = random_kernel(rng, count=500)
    baseline = Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)
    elf = {BASE: k.elf, k.init_base: k.init}
    comps = {n: baseline.compare(patched(rng, k, n, share, n == "booted"), elf)
             for n, share in (("before-patching", 0.1), ("after-patching", 0.7), ("booted", 0.7))}
    baseline.encode(comps["after-patching"])          # one encoded ahead, the others as they are written
    analysis = Analysis(comps)
    write_analysis(tmp_path, analysis)
    for name, comp in comps.items():
        with gzip.open(tmp_path / sites_file(name), "rt") as fh:
            assert fh.read() == "".join(json.dumps(st.to_json()) + "\n" for s in comp.sites.values() for st in s)
    assert load_analysis(tmp_path) == analysis


# --------------------------------------------------------------------------- comparing while the guest boots


def ahead_kernel() -> tuple[Kernel, dict[int, bytes], list[Capture]]:
    rng = random.Random(5)
    k = random_kernel(rng, count=600)
    caps = [patched(rng, k, n, share, freed) for n, share, freed in
            (("before-patching", 0.2, False), ("after-patching", 0.8, False), ("booted", 0.8, True))]
    return k, {BASE: k.elf, k.init_base: k.init}, caps


class FakeVmlinux:
    def __init__(self, elf: Mapping[int, bytes]) -> None:
        self.elf = elf
        self.notes = ["a note"]

    def read(self, start: int, size: int) -> bytes:
        return self.elf[start][:size]


def load_analysis_of(directory: Path, comparisons: dict[str, Comparison]) -> Analysis | None:
    """What load_analysis reads once write_analysis has added the index to the site files written ahead."""
    write_analysis(directory, Analysis(comparisons))
    return load_analysis(directory)


def test_compare_ahead_follows_the_captures_as_they_come(tmp_path: Path) -> None:
    k, elf, caps = ahead_kernel()
    made: list[Baseline] = []

    def make() -> Baseline:
        made.append(Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known))
        return made[-1]

    captures: dict[str, Capture] = {}
    vm = FakeVmlinux(elf)
    with CompareAhead(make, vm, tmp_path) as ahead:  # type: ignore[arg-type]
        ahead.follow(captures)
        for cap in caps[:2]:                   # the session takes two captures while the guest boots
            captures[cap.name] = cap
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while len(ahead._done) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        done = dict(ahead._done)
        captures[caps[2].name] = caps[2]        # the last at the marker, after the session's end
    assert set(done) == {"before-patching", "after-patching"}
    got = ahead.comparisons(captures)
    assert list(got) == ["before-patching", "after-patching", "booted"]
    assert len(made) == 1
    assert got["after-patching"] is done["after-patching"][1]
    for cap in caps:
        want = plain_compare(k.tables, cap, elf, k.symbols, k.pv_targets, k.extra_known)
        assert got[cap.name] == dataclasses.replace(want, notes=("a note",))
    assert all("json_line" in st.__dict__ for states in got["after-patching"].sites.values() for st in states)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(sites_file(name) for name in got)
    assert load_analysis_of(tmp_path, got) == Analysis(got)          # the files written ahead hold the comparisons


def test_compare_ahead_redoes_a_capture_taken_again_and_survives_a_failure(tmp_path: Path) -> None:
    k, elf, caps = ahead_kernel()
    vm = FakeVmlinux(elf)
    captures = {"booted": caps[1], "after-patching": caps[1]}

    def make() -> Baseline:
        return Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)

    with CompareAhead(make, vm, tmp_path) as ahead:  # type: ignore[arg-type]
        ahead.follow(captures)
        deadline = time.monotonic() + 10
        while len(ahead._done) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    replaced = {"booted": caps[2]}             # a capture object other than the one compared ahead; one dropped
    got = ahead.comparisons(replaced)["booted"]
    assert [p.name for p in tmp_path.iterdir()] == [sites_file("booted")]
    with gzip.open(tmp_path / sites_file("booted"), "rt") as fh:
        assert fh.read() == "".join(st.json_line for states in got.sites.values() for st in states)
    assert got == dataclasses.replace(plain_compare(k.tables, caps[2], elf, k.symbols, k.pv_targets,
                                                    k.extra_known), notes=("a note",))
    failures = iter([RuntimeError("once")])

    def flaky() -> Baseline:
        for err in failures:
            raise err
        return Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)

    with CompareAhead(flaky, vm) as failed:  # type: ignore[arg-type]
        failed.follow({"x": caps[0]})
        time.sleep(0.05)
    assert failed.comparisons({"x": caps[0]})["x"].sites == plain_compare(
        k.tables, caps[0], elf, k.symbols, k.pv_targets, k.extra_known).sites


def test_compare_ahead_stops_with_the_session_on_an_error() -> None:
    k, elf, _ = ahead_kernel()
    started = threading.active_count()
    ahead = CompareAhead(lambda: Baseline(k.tables, k.symbols), FakeVmlinux(elf))  # type: ignore[arg-type]
    with pytest.raises(KeyError), ahead:
        ahead.follow({})
        raise KeyError("the debugger died")
    assert ahead._thread is not None
    ahead._thread.join(5)
    assert not ahead._thread.is_alive() and threading.active_count() == started


def test_a_site_file_written_ahead_is_not_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from framework.report import artefacts
    rng = random.Random(13)
    k = random_kernel(rng, count=200)
    baseline = Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)
    elf = {BASE: k.elf, k.init_base: k.init}
    before, after = (baseline.compare(patched(rng, k, n, 0.5, False), elf) for n in ("before-patching", "after-patching"))
    artefacts.write_sites_file(tmp_path, "before-patching", before)
    artefacts.write_sites_file(tmp_path, "after-patching", before)          # not what the analysis holds there
    written: list[str] = []
    real = artefacts._write_gzip

    def counting(path: Path, data: bytes) -> None:
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(artefacts, "_write_gzip", counting)
    analysis = Analysis({"before-patching": before, "after-patching": after})
    write_analysis(tmp_path, analysis)
    assert written == ["sites-after-patching.jsonl.gz"]
    assert load_analysis(tmp_path) == analysis
    other = tmp_path / "again"
    other.mkdir()
    write_analysis(other, analysis)                                          # elsewhere: every file
    assert written[1:] == ["sites-before-patching.jsonl.gz", "sites-after-patching.jsonl.gz"]


def test_loading_reads_each_site_once_and_any_line_form(tmp_path: Path) -> None:
    rng = random.Random(17)
    k = random_kernel(rng, count=150)
    baseline = Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known)
    elf = {BASE: k.elf, k.init_base: k.init}
    comps = {n: baseline.compare(patched(rng, k, n, 0.5, False), elf) for n in ("before-patching", "after-patching")}
    odd = SiteState(every_field_site(module=None, index=9999), "patched", b"\x90", ("nop",), 'f, "state": "x"')
    after = comps["after-patching"]
    comps["after-patching"] = dataclasses.replace(
        after, sites={**after.sites, "alternatives": (*after.sites["alternatives"], odd)})
    analysis = Analysis(comps)
    write_analysis(tmp_path, analysis)
    loaded = load_analysis(tmp_path)
    assert loaded == analysis
    assert loaded is not None
    first, second = (loaded.comparisons[n].sites["paravirt"] for n in ("before-patching", "after-patching"))
    assert first and all(a.site is b.site for a, b in zip(first, second, strict=True))
    # A line as an older or other writer may have spelled it (keys in another order) reads the same.
    path = tmp_path / sites_file("before-patching")
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(dict(reversed(list(row.items())))) + "\n" for row in rows)
    assert load_analysis(tmp_path) == analysis
    with gzip.open(path, "wt") as fh:             # "state" before the site's own "table"
        fh.writelines(json.dumps({**{k: v for k, v in row.items() if k != "table"}, "table": row["table"]}) + "\n"
                      for row in rows)
    assert load_analysis(tmp_path) == analysis


def test_compare_ahead_leaves_ignored_captures_and_builds_nothing_it_does_not_need(tmp_path: Path) -> None:
    k, elf, caps = ahead_kernel()
    made: list[Baseline] = []

    def make() -> Baseline:
        made.append(Baseline(k.tables, k.symbols, k.pv_targets, k.extra_known))
        return made[-1]

    captures = {"booted": caps[2]}
    with CompareAhead(make, FakeVmlinux(elf), tmp_path) as ahead:  # type: ignore[arg-type]
        ahead.follow(captures, ignore=("booted",))         # the plugin tracer's capture, for its self-check
        time.sleep(0.3)
    assert ahead._done == {} and list(tmp_path.iterdir()) == []
    assert ahead.comparisons({}) == {} and len(made) == 1    # the one built ahead; none after
    idle = CompareAhead(make, FakeVmlinux(elf), tmp_path)  # type: ignore[arg-type]
    with idle:
        pass                                                  # nothing followed (a trace without captures)
    assert idle.comparisons({}) == {} and len(made) == 1


def test_a_decoding_holds_a_capstone_handle_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparing thread and the session may decode at once: neither uses a handle the other holds."""
    monkeypatch.setattr(sites_mod, "_handles", [])
    assert [i.mnemonic for i in sites_mod._disasm(b"\x9c\x58", 0)] == ["pushfq", "popq"]
    assert len(sites_mod._handles) == 1                       # given back, and taken again next time
    held = sites_mod._handles.pop()                          # as if another thread were decoding with it
    assert [i.mnemonic for i in sites_mod._disasm(b"\xfa", 0)] == ["cli"]
    assert len(sites_mod._handles) == 1 and sites_mod._handles[0] is not held
