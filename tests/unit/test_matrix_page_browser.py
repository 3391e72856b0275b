"""The matrix's page in a real browser: Debian's chromium, headless, loads index.html from disk.

The results are recorded real runs (tests/data/runs) laid out as a matrix run
lays them out (``cells/<kernel>/<config>/<mode>/``), so the page's links must
reach the real console.log and result.json files. Chromium is required: without
/usr/bin/chromium this fails and says to run ``./bootstrap setup``
(``PATCHSCOPE_NO_BROWSER=1`` skips it instead). The screenshot is kept in
patchscope-out/screenshots/matrix-page.png.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from urllib.parse import unquote

from framework.domain import Mode
from framework.matrix.html import write_page
from framework.matrix.plan import Cell
from framework.matrix.results import Attempt, CellResult, CellState, KernelInfo, MatrixResults
from framework.report.result import RunResult, load_result
from tests.browser import WINDOW, parse, png_colours, png_size, render_page, require_chromium
from tests.conftest import REPO

RUNS = REPO / "tests" / "data" / "runs"
SCREENSHOT = REPO / "patchscope-out" / "screenshots" / "matrix-page.png"
KERNEL = "debian-6.1"
VFS = "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
HOSTILE = '<script>document.title="owned"</script>"><img src=x onerror=alert(1)>'
# The page's colours of a passing and a failing cell (framework/matrix/html.py's CSS).
PASS_RGB, FAIL_RGB = (0xC8, 0xEE, 0xC8), (0xF5, 0xA3, 0xA3)


def laid_out(results_dir: Path, run: str, config: str, mode: Mode) -> tuple[Cell, RunResult]:
    """A recorded run copied where a matrix keeps the cell's artefacts, and its result as loaded from there."""
    cell = Cell(config, KERNEL, mode)
    where = results_dir / cell.where
    shutil.copytree(RUNS / run, where)
    result = load_result(where)
    assert result is not None
    return cell, result


def results_from_recorded_runs(results_dir: Path) -> MatrixResults:
    cells: list[CellResult] = []

    def add(run: str, config: str, mode: Mode, state: CellState, *, reasons: tuple[str, ...] = (),
            title: str | None = None, verdicts: tuple[str, ...] = ()) -> None:
        cell, result = laid_out(results_dir, run, config, mode)
        if state in ("fail", "error"):
            result = dataclasses.replace(result, verdict=state, reasons=reasons)
        if title is not None and result.observation is not None:
            crash = dataclasses.replace(result.observation.crashes[0], title=title)
            result = dataclasses.replace(result, observation=dataclasses.replace(
                result.observation, crashes=(crash, *result.observation.crashes[1:])))
        verdicts = verdicts or (result.verdict,)
        attempts = tuple(Attempt(v, 7.5, cell.where, result.summary) for v in verdicts)
        cells.append(CellResult(cell, state, "", attempts, result))

    add("boot-native-native", "boot-native", "native", "pass")
    add("boot-xen-pv-xen-pv", "boot-xen-pv", "xen-pv", "pass")
    add("panic-no-initramfs-native", "panic-no-initramfs", "native", "fail",
        reasons=("outcome: expected boots, observed panics",))
    add("panic-no-initramfs-xen-pv", "panic-no-initramfs", "xen-pv", "fail",
        reasons=("outcome: expected boots, observed panics",))
    add("sysrq-native", "sysrq", "native", "flaky", verdicts=("fail", "pass"))
    add("sleeper-native", "sleeper", "native", "pass")
    add("oversized-pv-patch-native", "oversized-pv-patch", "native", "fail", reasons=(f"crash {HOSTILE}",),
        title=HOSTILE)
    cells.append(CellResult(Cell("boot-native", KERNEL, "xen-pv"), "not-applicable",
                            "the config runs in native only (its mode: key)"))
    cells.append(CellResult(Cell("sleeper", KERNEL, "xen-pv"), "not-run", "the run was interrupted"))
    order = ["boot-native", "boot-xen-pv", "panic-no-initramfs", "sysrq", "sleeper", "oversized-pv-patch"]
    cells.sort(key=lambda c: (order.index(c.cell.config), c.cell.mode))
    return MatrixResults(
        "recorded", "matrix/recorded.yaml", "feedfacecafe0001", tuple(c.cell.id for c in cells), tuple(cells),
        kernels=(KernelInfo(KERNEL, "debian:linux-image-6.1.0-56-amd64=6.1.192-2", "linux-image-6.1.0-56-amd64",
                            "6.1.192-2", "6.1.0-56-amd64"),),
        meta={"patchscope": "0.1.0", "host": "recorder", "qemu": "7.2", "xen": "4.17", "duration_s": 91.0,
              "interrupted": True})


def test_the_page_renders_in_chromium_and_its_links_reach_the_artefacts(tmp_path: Path) -> None:
    require_chromium()
    results_dir = tmp_path / "results"
    results = results_from_recorded_runs(results_dir)
    index = write_page(results_dir, results)

    dom = render_page(index, SCREENSHOT)
    root = parse(dom)

    assert root.find("title").text == "recorded — patchscope matrix"
    tds = root.find_all("td", class_="cell")
    assert len(tds) == len(results.all_cells) == 9
    assert [td.attrs["data-cell"] for td in tds] == list(results.all_cells)
    by_id = {td.attrs["data-cell"]: td for td in tds}
    assert {td.attrs["data-state"] for td in tds} == {"pass", "fail", "flaky", "not-applicable", "not-run"}

    failing = by_id["panic-no-initramfs[debian-6.1-native]"]
    assert "state-fail" in failing.classes
    assert failing.find(class_="title").text == VFS
    assert failing.find(class_="outcome").text == "panicked"
    console = failing.find("a", class_="console").attrs["href"]
    assert console == "cells/debian-6.1/panic-no-initramfs/native/console.log"
    target = index.parent / unquote(console)
    assert target.is_file()
    assert target.read_bytes() == (RUNS / "panic-no-initramfs-native" / "console.log").read_bytes()

    # every link of the page reaches a file beside it or an element of it
    ids = {n.attrs["id"] for n in root.iter() if "id" in n.attrs}
    hrefs = [a.attrs["href"] for a in root.find_all("a")]
    assert len(hrefs) > 20
    for href in hrefs:
        if href.startswith("#"):
            assert href[1:] in ids, href
        else:
            assert (index.parent / unquote(href)).is_file(), href
    reasons = root.find(id=failing.find("a", class_="reasons-link").attrs["href"][1:])
    assert reasons.find("li").text == "outcome: expected boots, observed panics"

    # the console's hostile text is text in the browser too: no element, no handler, no script ran
    hostile = by_id["oversized-pv-patch[debian-6.1-native]"]
    assert hostile.find(class_="title").text == HOSTILE
    assert not root.find_all("script") and not root.find_all("img")
    assert not [n for n in root.iter() if any(k.startswith("on") for k in n.attrs)]
    groups = [g.find(class_="group-title").text for g in root.find_all("li", class_="group")]
    assert groups[0] == VFS and HOSTILE in groups

    assert "interrupted" in root.find(class_="banner").text

    # the screenshot: the window's size, with the colours the style gives passing and failing cells
    assert png_size(SCREENSHOT) == WINDOW
    colours = png_colours(SCREENSHOT)
    assert PASS_RGB in colours and FAIL_RGB in colours
