"""The matrix's page (framework/matrix/html.py) on synthetic results built from recorded real runs.

The page is parsed back (tests/browser.py's small DOM) and read as a user's
browser would: which cells, which classes, which links, what text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from framework.domain import Mode
from framework.matrix import html as page
from framework.matrix.plan import Cell
from framework.matrix.results import (
    Attempt,
    CellResult,
    CellState,
    KernelInfo,
    MatrixResults,
    diff,
    marks,
    merge,
)
from framework.report.result import RunResult
from tests.browser import Node, parse
from tests.conftest import REPO

RUNS = REPO / "tests" / "data" / "runs"
K1, K2 = "debian-6.1", "debian-newest"
VFS = "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
SYSRQ = "kernel panic: sysrq triggered crash"
HOSTILE = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "'><marquee>x</marquee>&amp;"]


def recorded(run: str, **changes: Any) -> RunResult:
    """A recorded real run's result, with some of its result.json values changed."""
    data = json.loads((RUNS / run / "result.json").read_text())
    data.update(changes)
    return RunResult.from_json(data)


def failed(run: str, reason: str = "expected outcome boots, observed panics") -> RunResult:
    return recorded(run, verdict="fail", reasons=[reason])


def cell(config: str, kernel: str, mode: Mode, state: CellState, run: RunResult | None = None, *,
         verdicts: Sequence[str] | None = None, reason: str = "", seconds: float = 6.5) -> CellResult:
    c = Cell(config, kernel, mode)
    verdicts = verdicts if verdicts is not None else ([] if run is None else [run.verdict])
    attempts = tuple(Attempt(v, seconds, c.where if i == len(verdicts) - 1 else f"{c.where}/attempt-{i + 1}",
                             run.summary if run is not None else "")
                     for i, v in enumerate(verdicts))
    return CellResult(c, state, reason, attempts, run)


def matrix(cells: Sequence[CellResult], all_cells: Sequence[str] | None = None, **kw: Any) -> MatrixResults:
    ids = tuple(all_cells) if all_cells is not None else tuple(c.cell.id for c in cells)
    kw.setdefault("kernels", (KernelInfo(K1, "debian:linux-image-6.1.0-56-amd64=6.1.192-2",
                                         "linux-image-6.1.0-56-amd64", "6.1.192-2", "6.1.0-56-amd64"),
                              KernelInfo(K2, "debian-newest:linux-image-amd64", "linux-image-6.12.74+deb13-amd64",
                                         "6.12.74-1", "6.12.74+deb13-amd64")))
    kw.setdefault("meta", {"patchscope": "0.1.0", "host": "ci-runner-7", "qemu": "QEMU emulator version 7.2.15",
                           "xen": "4.17.5", "started": "2025-11-29T02:00:00Z", "duration_s": 754.2, "jobs": 4,
                           "interrupted": False})
    return MatrixResults("nightly", "matrix/nightly.yaml", "0123456789abcdef", ids, tuple(cells), **kw)


def nightly() -> MatrixResults:
    """Two kernels x two modes of five configs: every state, one excluded cell, one missing pair."""
    return matrix([
        cell("boot-native", K1, "native", "pass", recorded("boot-native-native")),
        cell("boot-native", K1, "xen-pv", "not-applicable", reason="the config runs in native only (its mode: key)"),
        cell("boot-native", K2, "native", "pass", recorded("boot-native-native")),
        cell("boot-native", K2, "xen-pv", "not-applicable", reason="the config runs in native only (its mode: key)"),
        cell("panic", K1, "native", "fail", failed("panic-no-initramfs-native")),
        cell("panic", K1, "xen-pv", "fail", failed("panic-no-initramfs-xen-pv")),
        cell("panic", K2, "native", "fail", failed("panic-no-initramfs-native")),
        cell("panic", K2, "xen-pv", "pass", recorded("panic-no-initramfs-xen-pv")),
        cell("sysrq", K1, "native", "flaky", recorded("sysrq-native"), verdicts=["fail", "fail", "pass"]),
        cell("sysrq", K1, "xen-pv", "fail", failed("sysrq-xen-pv", "outcome panics, expected boots")),
        cell("sysrq", K2, "native", "error", recorded("boot-native-native", verdict="error", error="QEMU died",
                                                      reasons=["QEMU exited 1 before the kernel ran"], outcome=None)),
        cell("sleeper", K1, "native", "pass", recorded("sleeper-native")),
        cell("sleeper", K2, "native", "not-run", reason="the run was interrupted"),
    ])


def grid(results: MatrixResults, mark: dict[str, str] | None = None) -> Node:
    return parse(page.render(results, mark))


def cells_of(root: Node) -> dict[str, Node]:
    return {td.attrs["data-cell"]: td for td in root.find_all("td", class_="cell")}


def test_every_cell_of_the_matrix_is_one_grid_cell_in_its_order() -> None:
    results = nightly()
    root = grid(results)
    tds = root.find_all("td", class_="cell")
    assert len(tds) == len(results.all_cells) == 13
    assert [td.attrs["data-cell"] for td in tds] == list(results.all_cells)
    # rows are configs, columns (kernel, mode) pairs; a pair a config lacks is an empty, uncounted cell
    rows = root.find("table", class_="grid").find("tbody").find_all("tr")
    assert [r.find("th").text for r in rows] == ["boot-native", "panic", "sysrq", "sleeper"]
    assert [len(r.find_all("td")) for r in rows] == [4, 4, 4, 4]
    assert len(rows[2].find_all("td", class_="absent")) == 1 and len(rows[3].find_all("td", class_="absent")) == 2
    modes = [th.text for th in root.find_all("th", class_="mode")]
    assert modes == ["native", "xen-pv", "native", "xen-pv"]
    kernels = root.find_all("th", class_="kernel")
    assert [(k.text, k.attrs["colspan"]) for k in kernels] == [
        (K1 + "linux-image-6.1.0-56-amd64=6.1.192-2", "2"), (K2 + "linux-image-6.12.74+deb13-amd64=6.12.74-1", "2")]


def test_states_become_classes_and_the_cell_says_what_happened() -> None:
    results = nightly()
    tds = cells_of(grid(results))
    for c in results.cells:
        td = tds[c.cell.id]
        assert td.classes == {"cell", f"state-{c.state}"}
        assert td.attrs["data-state"] == c.state
        assert td.attrs["id"] == "cell-" + page.slug(c.cell.id)
    fail = tds["panic[debian-6.1-native]"]
    assert fail.find(class_="verdict").text == "FAIL"
    assert fail.find(class_="outcome").text == "panicked"
    assert fail.find(class_="title").text == VFS and "crash" in fail.find(class_="title").classes
    assert fail.find(class_="duration").text == "6.5 s"
    assert not fail.find_all(class_="attempts")
    boot = tds["boot-native[debian-6.1-native]"]
    assert boot.find(class_="outcome").text == "booted"
    assert boot.find(class_="title").text.startswith("booted to 'reboot: Power down'")
    assert tds["sleeper[debian-6.1-native]"].find(class_="outcome").text == "hung"
    flaky = tds["sysrq[debian-6.1-native]"]
    assert flaky.find(class_="attempts").text == "3 attempts"
    assert flaky.find(class_="duration").text == "19.5 s"
    na = tds["boot-native[debian-6.1-xen-pv]"]
    assert na.find(class_="reason").text == "the config runs in native only (its mode: key)"
    assert not na.find_all("a")
    assert tds["sleeper[debian-newest-native]"].find(class_="reason").text == "the run was interrupted"
    assert tds["sysrq[debian-newest-native]"].find(class_="title").text == "QEMU died"


def test_a_long_summary_is_shortened_and_kept_whole_in_its_tooltip() -> None:
    run = recorded("boot-native-native")
    long = "booted to 'reboot: Power down' " + "x" * 300
    results = matrix([cell("boot-native", K1, "native", "pass", run)])
    results = matrix([CellResult(results.cells[0].cell, "pass", "",
                                 (Attempt("pass", 3, results.cells[0].cell.where, long),), run)])
    title = grid(results).find(class_="title")
    assert len(title.text) <= page.SUMMARY_MAX and title.text.endswith("…")
    assert title.attrs["title"] == long


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_console_text_is_shown_as_text_never_as_markup(hostile: str) -> None:
    data = json.loads((RUNS / "panic-no-initramfs-native" / "result.json").read_text())
    data["crashes"][0]["title"] = hostile
    run = RunResult.from_json(dict(data, verdict="fail", reasons=[f"crash {hostile} was not expected"],
                                   summary=f"panicked: {hostile}"))
    assert run.observation is not None and run.observation.title == hostile
    results = matrix([cell("panic", hostile, "native", "fail", run)], meta={"host": hostile, "qemu": hostile})
    text = page.render(results)
    root = parse(text)
    assert not root.find_all("script") and not root.find_all("img") and not root.find_all("marquee")
    assert not [n for n in root.iter() if any(k.startswith("on") for k in n.attrs)]
    assert hostile not in text
    td = root.find("td", class_="cell")
    assert td.find(class_="title").text == hostile
    assert td.attrs["data-cell"] == f"panic[{hostile}-native]"
    assert root.find("div", class_="reasons").find("li").text == f"crash {hostile} was not expected"
    assert root.find("dd", class_="meta-host").text == hostile
    assert root.find("li", class_="group").find(class_="group-title").text == hostile


def test_control_characters_of_a_console_do_not_reach_the_page() -> None:
    run = recorded("panic-no-initramfs-native", verdict="fail", reasons=["bell\x07 nul\x00 esc\x1b[31m"])
    text = page.render(matrix([cell("panic", K1, "native", "fail", run)]))
    assert not any(ch in text for ch in "\x00\x07\x1b")
    assert "bell\ufffd nul\ufffd esc\ufffd[31m" in text


def test_links_are_relative_and_point_into_the_cells_artefacts() -> None:
    results = nightly()
    root = grid(results)
    tds = cells_of(root)
    for c in results.cells:
        links = {a.attrs["class"]: a.attrs["href"] for a in tds[c.cell.id].find_all("a")}
        if c.artifacts is None:
            assert "console" not in links
            continue
        assert c.artifacts == c.cell.where
        assert links["console"] == f"{c.cell.where}/console.log"
        assert links["result"] == f"{c.cell.where}/result.json"
        assert ("reasons-link" in links) == (c.state in ("fail", "error", "flaky"))
    hrefs = [a.attrs["href"] for a in root.find_all("a")]
    assert hrefs and all(not h.startswith("/") and ":" not in h for h in hrefs)
    ids = [n.attrs["id"] for n in root.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids))
    anchors = {h[1:] for h in hrefs if h.startswith("#")}
    assert anchors and anchors <= set(ids)          # every anchor names an element of the page
    # nothing is fetched: no scripts, stylesheets, images or frames, and a policy that forbids them
    assert not [n for n in root.iter() if n.tag in ("script", "link", "img", "iframe", "object") or "src" in n.attrs]
    csp = root.find("meta", http_equiv="Content-Security-Policy").attrs["content"]
    assert "default-src 'none'" in csp and "script" not in csp


def test_an_artefacts_path_is_percent_encoded_and_stays_relative() -> None:
    c = Cell("odd", "path:/srv/k #1", "native")
    run = recorded("boot-native-native")
    odd = CellResult(c, "pass", "", (Attempt("pass", 1, "/" + c.where.replace("path_", "path:?#"), ""),), run)
    href = grid(matrix([odd])).find("a", class_="console").attrs["href"]
    assert href == "cells/path%3A%3F%23_srv_k__1/odd/native/console.log"


def test_failures_are_grouped_by_crash_title_largest_group_first() -> None:
    root = grid(nightly())
    groups = root.find("section", id="failures").find_all("li", class_="group")
    got = [(g.find(class_="group-title").text, [a.text for a in g.find_all("a")]) for g in groups]
    assert got == [
        (VFS, ["panic[debian-6.1-native]", "panic[debian-6.1-xen-pv]", "panic[debian-newest-native]"]),
        (SYSRQ, ["sysrq[debian-6.1-native]", "sysrq[debian-6.1-xen-pv]"]),   # the flaky one and a failure
        ("QEMU died", ["sysrq[debian-newest-native]"]),                       # no crash: the summary
    ]
    links = {a.attrs["href"] for g in groups for a in g.find_all("a")}
    assert "#cell-panic_debian-6.1-xen-pv" in links


def test_a_later_larger_group_comes_before_an_earlier_smaller_one() -> None:
    cells = [cell("a-sysrq", K1, "native", "fail", failed("sysrq-native")),
             cell("b-oversized", K1, "native", "fail", failed("oversized-pv-patch-native")),
             cell("c-panic", K1, "native", "fail", failed("panic-no-initramfs-native")),
             cell("d-panic", K1, "native", "error", failed("panic-no-initramfs-native")),
             cell("e-oversized", K1, "native", "flaky", recorded("oversized-pv-patch-native"),
                  verdicts=["fail", "pass"]),
             cell("f-panic", K1, "native", "fail", failed("panic-no-initramfs-native")),
             cell("g-boot", K1, "native", "pass", recorded("boot-native-native"))]
    groups = grid(matrix(cells)).find("section", id="failures").find_all("li", class_="group")
    assert [(g.attrs["data-size"], g.find(class_="group-title").text) for g in groups] == [
        ("3", VFS), ("2", "kernel BUG in apply_paravirt"), ("1", SYSRQ)]


def test_reasons_of_each_troubled_cell_under_its_own_id() -> None:
    results = nightly()
    root = grid(results)
    section = root.find("section", id="reasons")
    blocks = section.find_all("div", class_="reasons")
    troubled = [c.cell.id for c in results.cells if c.state in ("fail", "error", "flaky")]
    assert [b.attrs["data-cell"] for b in blocks] == troubled
    assert [b.attrs["id"] for b in blocks] == ["reasons-" + page.slug(cid) for cid in troubled]
    vfs = section.find(id="reasons-panic_debian-6.1-native")
    assert [li.text for li in vfs.find("ul").find_all("li")] == ["expected outcome boots, observed panics"]
    assert vfs.find(class_="summary").text == f"panicked after 'Freeing SMP alternatives': {VFS}"
    flaky = section.find(id="reasons-sysrq_debian-6.1-native")
    attempts = flaky.find("ol", class_="attempts").find_all("li")
    assert [a.attrs["data-verdict"] for a in attempts] == ["fail", "fail", "pass"]
    assert attempts[0].find("a").attrs["href"] == "cells/debian-6.1/sysrq/native/attempt-1/console.log"
    error = section.find(id="reasons-sysrq_debian-newest-native")
    assert [li.text for li in error.find("ul").find_all("li")] == ["QEMU exited 1 before the kernel ran", "QEMU died"]
    grid_link = cells_of(root)["panic[debian-6.1-native]"].find("a", class_="reasons-link")
    assert grid_link.attrs["href"] == "#reasons-panic_debian-6.1-native"


def test_the_header_names_the_matrix_its_versions_kernels_and_counts() -> None:
    root = grid(nightly())
    header = root.find("header")
    assert header.find(class_="matrix-name").text == "nightly"
    meta = {dd.attrs["class"]: dd.text for dd in header.find_all("dd")}
    assert meta["meta-patchscope"] == "0.1.0" and meta["meta-host"] == "ci-runner-7"
    assert meta["meta-qemu"] == "QEMU emulator version 7.2.15" and meta["meta-xen"] == "4.17.5"
    assert meta["meta-started"] == "2025-11-29T02:00:00Z" and meta["meta-duration_s"] == "12 min 34 s"
    assert [td.text for td in header.find("table", class_="kernels").find_all("td", class_="package")] == [
        "linux-image-6.1.0-56-amd64=6.1.192-2", "linux-image-6.12.74+deb13-amd64=6.12.74-1"]
    counts = {s.attrs["data-state"]: s.find("b").text for s in header.find_all("span", class_="count")}
    assert counts == {"pass": "4", "fail": "4", "error": "1", "flaky": "1", "not-applicable": "2", "not-run": "1"}
    assert not header.find_all(class_="banner")


def test_absent_meta_keys_are_left_out() -> None:
    root = grid(matrix(nightly().cells, meta={}, kernels=()))
    assert [dt.text for dt in root.find("header").find_all("dt")] == ["file"]
    assert not root.find_all("table", class_="kernels")


def test_an_interrupted_run_says_so_and_its_missing_cells_are_not_run() -> None:
    full = nightly()
    kept = [c for c in full.cells if c.cell.config != "sleeper"]
    results = matrix(kept, full.all_cells, meta={"interrupted": True})
    root = grid(results)
    banner = root.find(class_="banner")
    assert "interrupted" in banner.classes and banner.text.startswith("interrupted")
    tds = cells_of(root)
    assert len(tds) == len(full.all_cells)
    missing = tds["sleeper[debian-6.1-native]"]
    assert missing.attrs["data-state"] == "not-run" and "state-not-run" in missing.classes
    assert "interrupted" in missing.find(class_="reason").text


def test_cells_of_missing_shards_are_not_run_under_a_partial_banner() -> None:
    full = nightly()
    ids = full.all_cells
    shard1 = matrix([c for c in full.cells if ids.index(c.cell.id) % 4 == 0], ids, shards=(1,), shard_count=4)
    shard3 = matrix([c for c in full.cells if ids.index(c.cell.id) % 4 == 2], ids, shards=(3,), shard_count=4)
    merged = merge([("shard1", shard1), ("shard3", shard3)])
    assert merged.shards == (1, 3) and merged.shard_count == 4
    for results, held, why, shards in (
            (merged, [*shard1.cells, *shard3.cells], "its shard was not merged", "1,3"),
            (shard1, shard1.cells, "they hold shards 1 of 4 only", "1")):
        root = grid(results)
        banner = root.find(class_="banner")
        assert "partial" in banner.classes and banner.text.startswith(f"partial: shards {shards} of 4")
        tds = cells_of(root)
        assert list(tds) == list(ids)
        states = {c.cell.id: c.state for c in held}
        for cid, td in tds.items():
            if cid in states:
                assert td.attrs["data-state"] == states[cid]
            else:
                assert td.attrs["data-state"] == "not-run" and "state-not-run" in td.classes
                assert why in td.find(class_="reason").text
        assert 0 < len(states) < len(ids)
        counts = {s.attrs["data-state"]: int(s.find("b").text) for s in root.find_all("span", class_="count")}
        assert sum(counts.values()) == len(ids)
        assert counts["not-run"] == len(ids) - len(states) + list(states.values()).count("not-run")


def test_marks_badge_the_cells_and_new_failures_come_first() -> None:
    new = nightly()
    # last night: panic passed everywhere, sysrq xen-pv already failed, sleeper native failed, and a cell now gone
    base_cells = []
    for c in new.cells:
        if c.cell.config == "panic":
            base_cells.append(cell(c.cell.config, c.cell.kernel, c.cell.mode, "pass",
                                   recorded("panic-no-initramfs-native")))
        elif c.cell.id == "sleeper[debian-6.1-native]":
            base_cells.append(cell("sleeper", K1, "native", "fail", failed("sleeper-native")))
        else:
            base_cells.append(c)
    old = cell("rebooter", K1, "native", "pass", recorded("rebooter-native"))
    base = matrix([*base_cells, old])
    mark = marks(diff(base, new))
    assert mark["panic[debian-6.1-native]"] == "new failure" and mark["sleeper[debian-6.1-native]"] == "fixed"
    assert mark["rebooter[debian-6.1-native]"] == "gone"
    root = grid(new, mark)
    tds = cells_of(root)
    for cid, m in mark.items():
        if cid in tds:
            assert tds[cid].attrs["data-mark"] == m
            assert tds[cid].find("span", class_="badge").text == m
    assert not [td for cid, td in tds.items() if cid not in mark and "data-mark" in td.attrs]
    changes = root.find("section", id="changes")
    kinds = [h.attrs["data-mark"] for h in changes.find_all("h3")]
    assert kinds[0] == "new failure"
    assert kinds == ["new failure", "still failing", "flaky", "fixed", "gone"]
    first = changes.find("ul").find_all("a")
    assert [a.text for a in first] == ["panic[debian-6.1-native]", "panic[debian-6.1-xen-pv]",
                                       "panic[debian-newest-native]"]
    assert "rebooter[debian-6.1-native]" in changes.text
    # without marks there is no summary of changes and no badge
    plain = grid(new)
    assert not plain.find_all("section", id="changes") and not plain.find_all(class_="badge")


def test_a_matrix_that_all_passed_has_no_failures_and_no_reasons() -> None:
    root = grid(matrix([cell("boot-native", K1, "native", "pass", recorded("boot-native-native"))]))
    assert root.find("section", id="failures").find(class_="none")
    assert not root.find_all("section", id="reasons")


def test_slugs_are_ids_and_stay_unique_on_a_page() -> None:
    assert page.slug("boot-native[debian-6.1-xen-pv]") == "boot-native_debian-6.1-xen-pv"
    run = recorded("boot-native-native")
    twins = [cell("a", "b c", "native", "fail", run), cell("a", "b_c", "native", "fail", run)]
    root = grid(matrix(twins))
    assert [td.attrs["id"] for td in root.find_all("td", class_="cell")] == ["cell-a_b_c-native", "cell-a_b_c-native-2"]
    assert [d.attrs["id"] for d in root.find_all("div", class_="reasons")] == [
        "reasons-a_b_c-native", "reasons-a_b_c-native-2"]


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (59.94, "59.9 s"), (125, "2 min 05 s"),
                                               (3725, "1 h 02 min")])
def test_durations(seconds: float, text: str) -> None:
    assert page.duration(seconds) == text


def test_write_page_replaces_index_html_atomically(tmp_path: Path) -> None:
    results = nightly()
    out = page.write_page(tmp_path / "results", results)
    assert out == tmp_path / "results" / "index.html"
    assert out.read_text(encoding="utf-8") == page.render(results)
    out2 = page.write_page(tmp_path / "results", matrix(results.cells[:1]))
    assert out2 == out and len(cells_of(parse(out.read_text(encoding="utf-8")))) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.html"]


def test_the_page_module_stays_pure() -> None:
    source = (REPO / "framework" / "matrix" / "html.py").read_text()
    for forbidden in ("subprocess", "socket", "threading", "urllib.request", "http.client"):
        assert f"import {forbidden}" not in source and f"from {forbidden}" not in source
