"""The nightly matrix, without booting: the matrix file, its cells and shards, results, merge, diff, JUnit.

Matrix files here name the repository's real configs (configs/*.yaml) and real
kernel references (checked by the runner's own ``check_kernel``: recipes from
kernels/); runs come from tests/data/runs (recorded real runs).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from junitparser import Error, Failure, JUnitXml, Skipped

from framework.config import Config
from framework.domain import MODES
from framework.errors import ConfigError, PatchscopeError
from framework.matrix.junit import CONSOLE_TAIL, write_junit
from framework.matrix.plan import (
    ESTIMATE_S,
    Cell,
    Plan,
    ShardSpec,
    estimate,
    expand,
    parse_shard,
    run_order,
    shard_cells,
)
from framework.matrix.results import (
    KIND,
    Attempt,
    CellResult,
    KernelInfo,
    MatrixResults,
    ResultsError,
    cell_state,
    diff,
    marks,
    merge,
)
from framework.matrix.runner import check_kernel
from framework.matrix.spec import MatrixSpec, load_matrix
from framework.report.result import RunResult

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RUNS = REPO / "tests" / "data" / "runs"
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+")


def write_matrix(directory: Path, text: str, name: str = "nightly.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def configs_glob(matrix_dir: Path) -> str:
    """The real configs, as a glob relative to ``matrix_dir`` (as a matrix file in ci/ writes it)."""
    return os.path.relpath(CONFIGS, matrix_dir) + "/*.yaml"


def declared_modes() -> dict[str, tuple[str, ...]]:
    """Each real config's modes, read straight from its YAML (an oracle independent of the config loader)."""
    out: dict[str, tuple[str, ...]] = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        mode = data.get("mode", list(MODES))
        out[data.get("name", path.stem)] = (mode,) if isinstance(mode, str) else tuple(mode)
    return out


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write_matrix(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_matrix(path, check_kernel)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}:{info.value.line}: ")
    assert "\n" not in str(info.value)
    return info.value


def recorded(name: str) -> RunResult:
    """A recorded real run, with the kernel identity every real run records beside its symbol source."""
    data = json.loads((RUNS / name / "result.json").read_text())
    data.setdefault("kernel", {"ref": "debian-6.1", "package": "linux-image-6.1.0-56-amd64", "version": "6.1.192-2"})
    return RunResult.from_json(data)


# --------------------------------------------------------------------------- 1. the matrix file

BOOT = f"['{CONFIGS}/boot-*.yaml']"


def test_a_valid_matrix_file_is_read_with_globs_relative_to_its_own_directory(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ci = tmp_path / "ci"
    path = write_matrix(ci, f"""\
name: nightly-x86
kernels:
  - debian-6.1
  - debian-newest:6.1
modes: [xen-pv, native]
configs: ["{configs_glob(ci)}"]
exclude:
  - {{config: xen-pv-smap-tcg, mode: native}}
retries: 2
timeout: 600
""")
    monkeypatch.chdir(tmp_path)          # the glob is relative to ci/, not to the current directory
    spec = load_matrix(path, check_kernel)
    assert spec.name == "nightly-x86"
    assert spec.path == path
    assert spec.kernels == ("debian-6.1", "debian-newest:6.1")
    assert spec.modes == ("xen-pv", "native")
    assert spec.retries == 2
    assert spec.timeout == 600.0
    names = [c.name for c in spec.configs]
    assert names == sorted(declared_modes())
    assert names == sorted(names) and len(names) == 15
    assert {c.path.resolve() for c in spec.configs if c.path} == set(CONFIGS.glob("*.yaml"))
    assert [(e.config, e.kernel, e.mode) for e in spec.exclude] == [("xen-pv-smap-tcg", None, "native")]


def test_defaults_name_from_the_file_both_modes_no_retries(tmp_path: Path) -> None:
    spec = load_matrix(write_matrix(tmp_path, f"kernels: [debian-6.1]\nconfigs: {BOOT}\n", "weekly.yaml"),
                       check_kernel)
    assert spec.name == "weekly"
    assert spec.modes == MODES
    assert spec.retries == 0
    assert spec.timeout == 900.0
    assert [c.name for c in spec.configs] == ["boot-native", "boot-xen-pv"]


def test_unknown_kernel_reference_is_reported_at_its_list_item(tmp_path: Path) -> None:
    err = load_error(tmp_path, f"configs: {BOOT}\nkernels:\n  - debian-6.1\n  - debain-6.1\n")
    assert err.line == 4
    assert "kernels[1]" in err.reason and "'debain-6.1'" in err.reason
    assert "debian-6.1" in err.reason and "debian-newest:<line>" in err.reason     # what to write instead


def test_a_bad_floating_reference_is_reported_at_its_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, f"configs: {BOOT}\nkernels: [debian-6.1,\n  debian-newest:6]\n")
    assert err.line == 3
    assert "major.minor" in err.reason


@pytest.mark.parametrize("text, line, fragments", [
    ("name: x\nconfigs: {boot}\n", 1, ("kernels is missing", "e.g. [debian-6.1]")),
    ("configs: {boot}\nkernels: []\n", 2, ("kernels is empty", "at least one")),
    ("configs: {boot}\nkernels:\n", 2, ("kernels",)),
    ("configs: {boot}\nkernels:\n  - debian-6.1\n  - debian-newest:6.1\n  - debian-6.1\n", 5,
     ("kernels[2]", "'debian-6.1' is listed twice")),
    ("kernels: [debian-6.1]\n", 1, ("configs is missing", "../configs/*.yaml")),
    ("kernels: [debian-6.1]\nconfigs:\n  - {boot_one}\n  - nowhere/*.yaml\n", 4,
     ("configs[1]", "'nowhere/*.yaml' matches no .yaml file", "fix the glob")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nretries: 6\n", 3, ("retries", "0 to 5", "'6'")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nretries: -1\n", 3, ("retries", "0 to 5")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nretries: 1.5\n", 3, ("retries", "whole number")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nexclude:\n  - {{config: boot-native, mode: native}}\n"
     + "  - {{config: boot-natvie}}\n", 5, ("matches no cell", "fix its globs or remove it")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nexclude:\n  - {{kernel: debian-newest:*}}\n", 4, ("matches no cell",)),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nexclude:\n  - {{}}\n", 4, ("at least one of config, kernel, mode",)),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nretry: 1\n", 3, ("unknown key 'retry'", "did you mean 'retries'")),
    ("kernels: [debian-6.1]\nconfigs: {boot}\nmodes: [native, xen]\n", 3, ("unknown mode 'xen'", "xen-pv")),
    ("kernels: [debian-6.1\nconfigs: {boot}\n", 2, ("not valid YAML",)),
    ("kernels: [debian-6.1]\n\tconfigs: {boot}\n", 2, ("not valid YAML", "tabs")),
    ("", 1, ("matrix file is empty", "kernels and configs")),
])
def test_bad_matrix_files_name_file_line_and_fix(tmp_path: Path, text: str, line: int,
                                                 fragments: Sequence[str]) -> None:
    err = load_error(tmp_path, text.format(boot=BOOT, boot_one=f"{CONFIGS}/boot-native.yaml"))
    assert err.line == line, str(err)
    for fragment in fragments:
        assert fragment in err.reason, str(err)


def test_two_configs_with_one_name_are_refused_at_the_glob_that_found_the_second(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "boot.yaml").write_text("name: same-name\n")
    err = load_error(tmp_path, "kernels: [debian-6.1]\nconfigs:\n  - a/*.yaml\n  - b/*.yaml\n")
    assert err.line == 4
    assert "same-name" in err.reason and "distinct name" in err.reason
    assert str(tmp_path / "a" / "boot.yaml") in err.reason and str(tmp_path / "b" / "boot.yaml") in err.reason


def test_configs_are_ordered_by_name_not_by_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    for stem, name in (("a", "zeta"), ("b", "alpha"), ("c", "mid")):
        (tmp_path / "configs" / f"{stem}.yaml").write_text(f"name: {name}\n")
    spec = load_matrix(write_matrix(tmp_path, "kernels: [debian-6.1]\nconfigs: [configs/c.yaml, configs/*.yaml]\n"),
                       check_kernel)
    assert [c.name for c in spec.configs] == ["alpha", "mid", "zeta"]
    assert [c.config for c in expand(spec).cells[::2]] == ["alpha", "mid", "zeta"]


def test_one_config_matched_by_two_globs_is_one_config(tmp_path: Path) -> None:
    spec = load_matrix(write_matrix(tmp_path, f"kernels: [debian-6.1]\nconfigs:\n  - {CONFIGS}/boot-*.yaml\n"
                                              f"  - {CONFIGS}/boot-native.yaml\n"), check_kernel)
    assert [c.name for c in spec.configs] == ["boot-native", "boot-xen-pv"]


def test_a_broken_config_is_reported_in_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    bad = tmp_path / "configs" / "bad.yaml"
    bad.write_text("name: bad\nexpect:\n  outcom: boots\n")
    path = write_matrix(tmp_path, "kernels: [debian-6.1]\nconfigs: [configs/*.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_matrix(path, check_kernel)
    assert info.value.path == bad and info.value.line == 3


def test_check_kernel_is_asked_about_each_reference_relative_to_the_matrix_directory(tmp_path: Path) -> None:
    asked: list[tuple[str, Path]] = []

    def fake(ref: str, base: Path) -> str | None:
        asked.append((ref, base))
        return "no such build" if ref == "path:missing/bzImage" else None

    path = write_matrix(tmp_path / "ci", f"kernels:\n  - path:good/bzImage\n  - path:missing/bzImage\n"
                                         f"configs: {BOOT}\n")
    with pytest.raises(ConfigError) as info:
        load_matrix(path, fake)
    assert (info.value.line, info.value.reason) == (3, "kernels[1]: no such build")
    assert asked == [("path:good/bzImage", tmp_path / "ci"), ("path:missing/bzImage", tmp_path / "ci")]


def test_globs_work_in_a_directory_whose_name_has_glob_characters(tmp_path: Path) -> None:
    ci = tmp_path / "ci [old]"
    (ci / "configs").mkdir(parents=True)
    (ci / "configs" / "boot.yaml").write_text("name: boot\n")
    spec = load_matrix(write_matrix(ci, "kernels: [debian-6.1]\nconfigs: ['configs/*.yaml']\n"), check_kernel)
    assert [c.name for c in spec.configs] == ["boot"]


# --------------------------------------------------------------------------- 2. expand

def real_matrix(tmp_path: Path, extra: str = "", kernels: str = "[debian-6.1, debian-newest:6.1]") -> MatrixSpec:
    ci = tmp_path / "ci"
    return load_matrix(write_matrix(ci, f"kernels: {kernels}\nconfigs: ['{configs_glob(ci)}']\n{extra}"),
                       check_kernel)


def test_every_config_on_every_kernel_in_every_mode(tmp_path: Path) -> None:
    spec = real_matrix(tmp_path)
    plan = expand(spec)
    modes = declared_modes()
    assert len(plan.cells) == len(modes) * 2 * 2 == 60
    assert len(set(plan.cells)) == len(plan.cells)
    assert {(c.config, c.kernel, c.mode) for c in plan.cells} == {
        (cfg, k, m) for cfg in modes for k in ("debian-6.1", "debian-newest:6.1") for m in MODES}
    # configs by name, then kernels as written, then modes as written
    assert [c.config for c in plan.cells] == sorted(c.config for c in plan.cells)
    assert plan.cells[:4] == (Cell("boot-native", "debian-6.1", "native"), Cell("boot-native", "debian-6.1", "xen-pv"),
                              Cell("boot-native", "debian-newest:6.1", "native"),
                              Cell("boot-native", "debian-newest:6.1", "xen-pv"))


def test_not_in_modes_is_exactly_the_configs_that_pin_the_other_mode(tmp_path: Path) -> None:
    plan = expand(real_matrix(tmp_path))
    modes = declared_modes()
    pinned = {name: m for name, m in modes.items() if len(m) == 1}
    assert len(pinned) == 5
    assert set(plan.not_in_modes) == {c for c in plan.cells if c.mode not in modes[c.config]}
    assert len(plan.not_in_modes) == 5 * 2
    for cell, why in plan.not_in_modes.items():
        assert cell.config in pinned
        assert pinned[cell.config][0] in why and cell.mode not in why
        assert "mode:" in why
    # the cells stay in the plan (shown as not applicable), they are not dropped
    assert set(plan.not_in_modes) <= set(plan.cells)


def test_excludes_leave_their_cells_out(tmp_path: Path) -> None:
    plan = expand(real_matrix(tmp_path, "exclude:\n  - {config: xen-pv-smap-tcg, mode: native}\n"
                                        "  - {kernel: 'debian-newest:*', config: 'pv-sites-*'}\n"))
    assert len(plan.cells) == 60 - 2 - 4
    assert not any(c.config == "xen-pv-smap-tcg" and c.mode == "native" for c in plan.cells)
    assert not any(c.kernel == "debian-newest:6.1" and c.config.startswith("pv-sites-") for c in plan.cells)
    assert Cell("pv-sites-native", "debian-6.1", "native") in plan.cells
    assert set(plan.not_in_modes) <= set(plan.cells)


def test_cell_ids_are_pytest_style_and_where_is_a_safe_path() -> None:
    assert Cell("boot-native", "debian-6.1", "xen-pv").id == "boot-native[debian-6.1-xen-pv]"
    assert Cell("boot-native", "debian-6.1", "xen-pv").where == "cells/debian-6.1/boot-native/xen-pv"
    for kernel in ("debian-newest:6.1", "path:/x/bzImage", "path:../b z/bzImage,vmlinux=../b z/vmlinux",
                   "debian:linux-image-6.1.0-57-amd64=6.1.192-3", "debian-newest:6.1/cloud-amd64"):
        cell = Cell("boot-native", kernel, "native")
        assert cell.id == f"boot-native[{kernel}-native]"
        parts = cell.where.split("/")
        assert len(parts) == 4 and parts[0] == "cells" and parts[2:] == ["boot-native", "native"], cell.where
        assert SAFE_COMPONENT.fullmatch(parts[1]) and parts[1] not in (".", ".."), cell.where
    assert Cell("c", "debian-newest:6.1", "native").where == "cells/debian-newest_6.1/c/native"
    assert Cell("c", "path:/x/bzImage", "native").where == "cells/path__x_bzImage/c/native"


def test_two_kernels_never_share_an_artefact_directory(tmp_path: Path) -> None:
    path = write_matrix(tmp_path, f"kernels: ['path:/b/v1/bzImage', 'path:/b/v1_bzImage']\nconfigs: {BOOT}\n")
    try:
        plan = expand(load_matrix(path, check_kernel))
    except ConfigError as err:          # refusing the matrix is a fix too
        assert err.line == 1
        return
    wheres = [c.where for c in plan.cells]
    assert len(set(wheres)) == len(wheres), wheres


def test_digest_names_the_cells_not_the_file(tmp_path: Path) -> None:
    one = expand(real_matrix(tmp_path / "one"))
    again = expand(real_matrix(tmp_path / "one"))
    elsewhere = expand(real_matrix(tmp_path / "two"))
    assert re.fullmatch(r"[0-9a-f]{16}", one.digest)
    assert one.digest == again.digest == elsewhere.digest
    more = expand(real_matrix(tmp_path / "three", kernels="[debian-6.1, debian-newest:6.1, debian-newest:6.12]"))
    fewer = expand(real_matrix(tmp_path / "four", "exclude:\n  - {config: boot-native, mode: native}\n"))
    assert len({one.digest, more.digest, fewer.digest}) == 3
    # one cell added to a plan changes it
    added = Plan(one.spec, (*one.cells, Cell("zz", "debian-6.1", "native")), one.not_in_modes)
    assert added.digest != one.digest


# --------------------------------------------------------------------------- 3. shards

def synthetic_cells(n: int) -> list[Cell]:
    kernels = ("debian-6.1", "debian-newest:6.1", "path:/k/bzImage")
    return [Cell(f"cfg-{i // 6:02d}", kernels[(i // 2) % 3], MODES[i % 2]) for i in range(n)]


@pytest.mark.parametrize("text, index, count", [("2/4", 2, 4), ("1/1", 1, 1), (" 3 / 3 ", 3, 3), ("10/12", 10, 12)])
def test_parse_shard(text: str, index: int, count: int) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count) == (index, count)
    assert str(shard) == f"{index}/{count}"


@pytest.mark.parametrize("text, fragment", [
    ("5/4", "K must be from 1 to N"),
    ("0/2", "K must be from 1 to N"),
    ("1/0", "K must be from 1 to N"),
    ("a/b", "give K/N"),
    ("2", "give K/N"),
    ("-1/2", "give K/N"),
    ("", "give K/N"),
])
def test_bad_shards_say_what_to_write(text: str, fragment: str) -> None:
    with pytest.raises(PatchscopeError) as info:
        parse_shard(text)
    message = str(info.value)
    assert message.startswith("--shard ") and fragment in message and "\n" not in message
    assert "--shard 1/" in message or "--shard 2/4" in message       # an example that works


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(0, 60), count=st.integers(1, 9))
def test_shards_partition_the_cells_deterministically_and_balanced(data: st.DataObject, n: int, count: int) -> None:
    cells = synthetic_cells(n)
    times = data.draw(st.lists(st.floats(0, 3600, allow_nan=False), min_size=n, max_size=n))
    durations = {c.id: t for c, t in zip(cells, times, strict=True)}
    shards = [shard_cells(cells, ShardSpec(k, count), durations) for k in range(1, count + 1)]
    flat = [c for s in shards for c in s]
    assert len(flat) == len(set(flat)) == n                    # disjoint, nothing lost
    assert set(flat) == set(cells)
    shuffled = data.draw(st.permutations(cells))
    for k, shard in enumerate(shards, 1):
        assert shard_cells(cells, ShardSpec(k, count), durations) == shard
        assert shard_cells(shuffled, ShardSpec(k, count), dict(reversed(durations.items()))) == shard
        assert [durations[c.id] for c in shard] == sorted((durations[c.id] for c in shard), reverse=True)
    loads = [sum(durations[c.id] for c in s) for s in shards]
    if n:
        assert max(loads) <= sum(times) / count + max(times) + 1e-6
    # longest first, each onto a shard with the least work so far
    home = {c: k for k, s in enumerate(shards) for c in s}
    so_far = [0.0] * count
    for cell in sorted(cells, key=lambda c: (-durations[c.id], c.id)):
        assert so_far[home[cell]] == min(so_far)
        so_far[home[cell]] += durations[cell.id]


def test_lpt_balances_an_uneven_set() -> None:
    cells = synthetic_cells(8)
    durations = {c.id: d for c, d in zip(cells, (100, 100, 100, 100, 1, 1, 1, 1), strict=True)}
    loads = [sum(durations[c.id] for c in shard_cells(cells, ShardSpec(k, 2), durations)) for k in (1, 2)]
    assert loads == [202, 202]
    # onto the least loaded shard, not round the shards: 10 | 6+5 | then 1 onto the 10
    durations = {c.id: d for c, d in zip(cells[:4], (10, 6, 5, 1), strict=True)}
    shards = [shard_cells(cells[:4], ShardSpec(k, 2), durations) for k in (1, 2)]
    assert [[durations[c.id] for c in s] for s in shards] == [[10, 1], [6, 5]]
    durations = {c.id: d for c, d in zip(cells[:4], (10, 1, 1, 1), strict=True)}      # by work, not by count
    assert [len(shard_cells(cells[:4], ShardSpec(k, 2), durations)) for k in (1, 2)] == [1, 3]


@settings(max_examples=120, deadline=None)
@given(times=st.lists(st.integers(1, 100), min_size=1, max_size=7), count=st.integers(2, 3))
def test_shards_are_within_the_lpt_bound_of_the_best_split(times: list[int], count: int) -> None:
    """Graham's bound for longest-processing-time-first: at most (4/3 - 1/3N) times the optimum (brute-forced)."""
    cells = synthetic_cells(len(times))
    durations = {c.id: float(t) for c, t in zip(cells, times, strict=True)}
    worst = max(sum(durations[c.id] for c in shard_cells(cells, ShardSpec(k, count), durations))
                for k in range(1, count + 1))
    best = min(max(sum(t for t, s in zip(times, split, strict=True) if s == k) for k in range(count))
               for split in itertools.product(range(count), repeat=len(times)))
    assert worst <= (4 / 3 - 1 / (3 * count)) * best + 1e-9


def test_without_durations_the_mode_estimate_weighs_xen_more() -> None:
    native, xen = Cell("a", "debian-6.1", "native"), Cell("a", "debian-6.1", "xen-pv")
    assert estimate(native, None) == ESTIMATE_S["native"]
    assert estimate(xen, None) == ESTIMATE_S["xen-pv"] > ESTIMATE_S["native"]
    assert estimate(xen, {native.id: 1.0}) == ESTIMATE_S["xen-pv"]          # not in the baseline: the estimate
    assert estimate(xen, {xen.id: 7.5}) == 7.5
    assert estimate(xen, {xen.id: 7.5}, free={xen}) == 0.0
    assert run_order([native, xen]) == [xen, native]


def test_free_cells_weigh_nothing_and_leave_the_rest_as_without_them() -> None:
    cells = synthetic_cells(40)
    rng = random.Random(7)
    durations = {c.id: rng.uniform(5, 200) for c in cells}
    free = set(cells[::5])
    rest = [c for c in cells if c not in free]
    for count in (1, 2, 3, 4, 7):
        with_free = [shard_cells(cells, ShardSpec(k, count), durations, free) for k in range(1, count + 1)]
        without = [shard_cells(rest, ShardSpec(k, count), durations) for k in range(1, count + 1)]
        assert [[c for c in s if c not in free] for s in with_free] == without
        assert sorted(c for s in with_free for c in s) == sorted(cells)
        for s in with_free:                       # the free ones run (are reported) after the real ones
            kinds = [c in free for c in s]
            assert kinds == sorted(kinds)


def test_run_order_is_longest_first_ties_by_id() -> None:
    c0, c1, c2, c3, c4 = synthetic_cells(5)
    durations = {c0.id: 5.0, c1.id: 50.0, c2.id: 20.0, c3.id: 20.0}       # c4 (native): the estimate, 20
    assert estimate(c4, durations) == 20.0
    assert run_order([c4, c3, c2, c1, c0], durations) == [c1, c2, c3, c4, c0]
    assert run_order([c4, c3, c2, c1, c0], durations, free={c1}) == [c2, c3, c4, c0, c1]   # free: 0 s, last


# --------------------------------------------------------------------------- 4. results

def plan_of(tmp_path: Path, extra: str = "") -> Plan:
    return expand(real_matrix(tmp_path, extra))


KERNELS = (KernelInfo("debian-6.1", "debian:linux-image-6.1.0-56-amd64=6.1.192-2", "linux-image-6.1.0-56-amd64",
                      "6.1.192-2", "6.1.0-56-amd64", "ab" * 32),
           KernelInfo("debian-newest:6.1", "debian:linux-image-6.1.0-57-amd64=6.1.192-3",
                      "linux-image-6.1.0-57-amd64", "6.1.192-3", "6.1.0-57-amd64", "cd" * 32))


def passed(cell: Cell, seconds: float = 10.0) -> CellResult:
    return CellResult(cell, "pass", attempts=(Attempt("pass", seconds, cell.where, "booted"),))


def shard_part(plan: Plan, k: int, n: int, durations: dict[str, float] | None = None) -> MatrixResults:
    """What ``patchscope matrix --shard k/n`` writes when every cell passes."""
    mine = shard_cells(plan.cells, ShardSpec(k, n), durations, plan.not_in_modes.keys())
    order = {c: i for i, c in enumerate(plan.cells)}
    cells = tuple(CellResult(c, "not-applicable", plan.not_in_modes[c]) if c in plan.not_in_modes else passed(c)
                  for c in sorted(mine, key=order.__getitem__))
    used = {c.kernel for c in mine}
    return MatrixResults(plan.spec.name, str(plan.spec.path), plan.digest, tuple(c.id for c in plan.cells), cells,
                         tuple(k_ for k_ in KERNELS if k_.name in used), (k,), n,
                         {"duration_s": 100.0 * k, "interrupted": False, "started": "2026-11-22T01:00:00+00:00"})


def test_results_round_trip_through_json_with_recorded_runs(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    by_id = {c.id: c for c in plan.cells}
    panicked = recorded("sysrq-native")
    failing = dataclasses.replace(panicked, verdict="fail", reasons=("expect.outcome: boots, but it panicked",))
    cells = (
        CellResult(by_id["boot-native[debian-6.1-native]"], "pass",
                   attempts=(Attempt("pass", 7.64, "cells/debian-6.1/boot-native/native", "booted"),),
                   result=recorded("boot-native-native")),
        CellResult(by_id["nmi-during-patching[debian-6.1-xen-pv]"], "flaky",
                   attempts=(Attempt("fail", 150.0, "cells/debian-6.1/nmi-during-patching/xen-pv.attempt-1", "x"),
                             Attempt("pass", 149.5, "cells/debian-6.1/nmi-during-patching/xen-pv", "ok")),
                   result=recorded("nmi-during-patching-xen-pv")),
        CellResult(by_id["int3-selftest[debian-newest:6.1-native]"], "fail",
                   attempts=(Attempt("fail", 3.0, "cells/debian-newest_6.1/int3-selftest/native", "panicked"),),
                   result=failing),
        CellResult(by_id["boot-native[debian-6.1-xen-pv]"], "not-applicable", plan.not_in_modes[
            by_id["boot-native[debian-6.1-xen-pv]"]]),
        CellResult(by_id["skip-pv-patching[debian-6.1-native]"], "error", "the kernel could not be prepared: x"),
        CellResult(by_id["panic-no-initramfs[debian-6.1-native]"], "not-run", "the matrix was stopped (SIGINT)"),
    )
    results = MatrixResults(plan.spec.name, str(plan.spec.path), plan.digest, tuple(by_id), cells, KERNELS,
                            (2,), 4, {"patchscope": "0.1", "duration_s": 321.5, "interrupted": True,
                                      "host": {"name": "ci-7", "cpus": 8}, "xen": ["Xen 4.17.5"]})
    data = json.loads(json.dumps(results.to_json()))
    assert data["kind"] == KIND and data["schema"] == 1
    assert data["matrix"]["digest"] == plan.digest and len(data["matrix"]["cells"]) == 60
    assert data["counts"] == {"pass": 1, "fail": 1, "error": 1, "flaky": 1, "not-applicable": 1, "not-run": 1}
    back = MatrixResults.from_json(data)
    assert back == results
    assert back.cells[2].result == failing and back.cells[2].title == failing.observation.title  # type: ignore[union-attr]
    assert back.cells[1].duration_s == pytest.approx(299.5)
    assert back.durations() == {c.cell.id: c.duration_s for c in cells[:3]}
    assert back.failed


def test_a_whole_matrix_round_trips_with_no_shards(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    results = MatrixResults("n", "f.yaml", plan.digest, tuple(c.id for c in plan.cells),
                            tuple(passed(c) for c in plan.cells))
    assert MatrixResults.from_json(json.loads(json.dumps(results.to_json()))) == results
    assert not results.failed


@pytest.mark.parametrize("data, fragment", [
    ({"schema": 1, "kind": "patchscope-run"}, "not a matrix's results.json"),
    ({}, "not a matrix's results.json"),
    ({"schema": 2, "kind": KIND}, "results format 2 is not supported"),
    ({"schema": 1, "kind": KIND, "cells": []}, "cannot be read"),
    ({"schema": 1, "kind": KIND, "matrix": {"name": "n", "file": "f", "digest": "d", "cells": []},
      "cells": [{"id": "a[k-native]", "config": "a", "kernel": "k", "mode": "nativ", "state": "pass"}]},
     "cannot be read"),
])
def test_from_json_refuses_what_is_not_a_matrix_in_one_line(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ResultsError) as info:
        MatrixResults.from_json(data, source="night/results.json")
    message = str(info.value)
    assert message.startswith("night/results.json: ") and fragment in message and "\n" not in message


def test_a_single_runs_result_json_is_not_a_matrix() -> None:
    data = json.loads((RUNS / "boot-native-native" / "result.json").read_text())
    with pytest.raises(ResultsError, match=r"^x/result\.json: not a matrix's results\.json"):
        MatrixResults.from_json(data, source="x/result.json")


@pytest.mark.parametrize("verdicts, state", [
    (["pass"], "pass"),
    (["fail", "pass"], "flaky"),
    (["error", "fail", "pass"], "flaky"),
    (["fail", "fail"], "fail"),
    (["fail"], "fail"),
    (["error"], "error"),
    (["fail", "error"], "error"),
    (["error", "fail"], "fail"),
    ([], "not-run"),
])
def test_cell_state(verdicts: list[str], state: str) -> None:
    assert cell_state(verdicts) == state


# --------------------------------------------------------------------------- 5. merge

def test_complementary_shards_merge_into_the_whole_matrix(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    parts = [(f"shard-{k}", shard_part(plan, k, 3)) for k in (2, 3, 1)]
    merged = merge(parts)
    assert merged.shards is None and merged.shard_count is None
    assert [c.cell for c in merged.cells] == list(plan.cells)         # every cell once, in the plan's order
    assert merged.counts()["not-run"] == 0
    assert merged.counts()["not-applicable"] == len(plan.not_in_modes)
    assert merged.digest == plan.digest and merged.all_cells == tuple(c.id for c in plan.cells)
    assert {k.name for k in merged.kernels} == {"debian-6.1", "debian-newest:6.1"}
    assert merged.meta["merged_from"] == ["shard-2", "shard-3", "shard-1"]
    assert merged.meta["duration_s"] == 300.0
    # and it survives its own JSON
    assert MatrixResults.from_json(json.loads(json.dumps(merged.to_json()))) == merged


def test_a_shard_alone_shows_the_other_shards_cells_as_not_run(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    part = shard_part(plan, 1, 4)
    merged = merge([("s1", part)])
    assert merged.shards == (1,) and merged.shard_count == 4
    assert [c.cell for c in merged.cells] == list(plan.cells)        # cells rebuilt from their ids, kernel ':' too
    ran = {c.cell for c in part.cells}
    for c in merged.cells:
        if c.cell in ran:
            assert c.state in ("pass", "not-applicable")
        else:
            assert c.state == "not-run" and "shard" in c.reason and not c.attempts
    assert merged.counts()["not-run"] == len(plan.cells) - len(part.cells) > 0


def test_two_of_three_shards_stay_a_partial_merge(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    merged = merge([("a", shard_part(plan, 3, 3)), ("b", shard_part(plan, 1, 3))])
    assert merged.shards == (1, 3) and merged.shard_count == 3
    assert merged.counts()["not-run"] == len(shard_part(plan, 2, 3).cells)


def test_a_partial_merge_takes_the_missing_shard_in_either_order(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    partial = merge([("a", shard_part(plan, 1, 3)), ("b", shard_part(plan, 2, 3))])
    last = shard_part(plan, 3, 3)
    late_first = merge([("c", last), ("ab", partial)])
    assert late_first.shards is None and late_first.counts()["not-run"] == 0
    partial_first = merge([("ab", partial), ("c", last)])
    assert partial_first.shards is None and partial_first.counts()["not-run"] == 0


def test_merge_refuses_parts_that_do_not_fit(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    one, two = shard_part(plan, 1, 2), shard_part(plan, 2, 2)

    def refused(*parts: tuple[str, MatrixResults]) -> str:
        with pytest.raises(ResultsError) as info:
            merge(list(parts))
        assert "\n" not in str(info.value)
        return str(info.value)

    other = expand(real_matrix(tmp_path / "other", "exclude:\n  - {config: boot-native, mode: native}\n"))
    message = refused(("one", one), ("other", shard_part(other, 2, 2)))
    assert "different matrices" in message and plan.digest in message and other.digest in message

    message = refused(("one", one), ("renamed", dataclasses.replace(two, name="weekly")))
    assert "different matrices" in message and "'weekly'" in message

    message = refused(("one", one), ("of3", shard_part(plan, 2, 3)))
    assert "shard of 3" in message and "same --shard K/N" in message

    message = refused(("one", one), ("again", one))
    assert "shard 1/2 is given twice (again)" in message

    # shards planned from different baselines overlap although their numbers differ
    durations = {c.id: float(i) for i, c in enumerate(plan.cells)}
    overlapping = shard_part(plan, 2, 2, durations)
    assert {c.cell for c in overlapping.cells} & {c.cell for c in one.cells}
    message = refused(("one", one), ("two", overlapping))
    assert "overlap" in message and "one" in message and "two" in message

    # each part records the kernels it prepared; the floating one moved on between the two
    renewed = dataclasses.replace(two, kernels=(KERNELS[0], dataclasses.replace(
        KERNELS[1], package="linux-image-6.1.0-58-amd64", version="6.1.193-1")))
    message = refused(("one", dataclasses.replace(one, kernels=KERNELS)), ("two", renewed))
    assert "debian-newest:6.1" in message and "6.1.192-3" in message and "6.1.193-1" in message
    assert "resolved it differently" in message
    rebuilt = dataclasses.replace(two, kernels=(dataclasses.replace(KERNELS[1], version="6.1.192-3+b1"),))
    message = refused(("one", dataclasses.replace(one, kernels=KERNELS)), ("two", rebuilt))
    assert "6.1.192-3+b1" in message and "resolved it differently" in message

    assert "at least one" in refused()


# --------------------------------------------------------------------------- 6. diff and marks

def night(states: dict[str, str], all_cells: Sequence[str]) -> MatrixResults:
    cells = []
    for cid, state in states.items():
        config, rest = cid.split("[")
        cell = Cell(config, rest.removesuffix("-native]"), "native")
        verdicts = {"pass": ["pass"], "fail": ["fail"], "error": ["error"], "flaky": ["fail", "pass"],
                    "not-run": [], "not-applicable": []}[state]
        cells.append(CellResult(cell, state, "r" if not verdicts else "",  # type: ignore[arg-type]
                                tuple(Attempt(v, 1.0, cell.where) for v in verdicts)))
    return MatrixResults("n", "f", "d", tuple(all_cells), tuple(cells))


def test_diff_classifies_every_kind_of_move_and_marks_the_ones_that_matter() -> None:
    ids = {name: f"{name}[k-native]" for name in (
        "broke", "fixed", "still", "worse", "wobbly", "gone", "stopped", "fresh", "same", "never", "na")}
    base = night({ids["broke"]: "pass", ids["fixed"]: "fail", ids["still"]: "fail", ids["worse"]: "error",
                  ids["wobbly"]: "pass", ids["gone"]: "pass", ids["stopped"]: "fail", ids["same"]: "pass",
                  ids["never"]: "not-run", ids["na"]: "not-applicable"},
                 [v for k, v in ids.items() if k != "fresh"])
    new = night({ids["broke"]: "fail", ids["fixed"]: "pass", ids["still"]: "error", ids["worse"]: "fail",
                 ids["wobbly"]: "flaky", ids["stopped"]: "not-run", ids["fresh"]: "fail", ids["same"]: "pass",
                 ids["never"]: "not-run", ids["na"]: "not-applicable"},
                [v for k, v in ids.items() if k != "gone"])
    changes = {c.id: c for c in diff(base, new)}
    got = {name: changes[cid].change for name, cid in ids.items() if cid in changes}
    assert got == {"broke": "new failure", "fixed": "fixed", "still": "still failing", "worse": "still failing",
                   "wobbly": "flaky", "gone": "gone", "stopped": "gone", "fresh": "new cell", "same": "unchanged",
                   "na": "unchanged"}
    assert ids["never"] not in changes                               # ran in neither night
    assert (changes[ids["broke"]].before, changes[ids["broke"]].after) == ("pass", "fail")
    assert (changes[ids["gone"]].before, changes[ids["gone"]].after) == ("pass", None)
    assert marks(changes.values()) == {ids["broke"]: "new failure", ids["fixed"]: "fixed",
                                       ids["still"]: "still failing", ids["worse"]: "still failing",
                                       ids["wobbly"]: "flaky", ids["gone"]: "gone", ids["stopped"]: "gone"}


def test_a_night_against_itself_marks_only_what_keeps_failing() -> None:
    ids = [f"c{i}[k-native]" for i in range(4)]
    same = night(dict(zip(ids, ("pass", "fail", "flaky", "error"), strict=True)), ids)
    assert marks(diff(same, same)) == {ids[1]: "still failing", ids[2]: "flaky", ids[3]: "still failing"}


def test_diff_carries_the_crash_title_of_the_new_run(tmp_path: Path) -> None:
    cell = Cell("sysrq", "debian-6.1", "native")
    run = dataclasses.replace(recorded("sysrq-native"), verdict="fail")
    base = MatrixResults("n", "f", "d", (cell.id,), (passed(cell),))
    new = MatrixResults("n", "f", "d", (cell.id,), (CellResult(cell, "fail", attempts=(Attempt("fail", 1, "x"),),
                                                               result=run),))
    [change] = diff(base, new)
    assert change.change == "new failure" and change.title == "kernel panic: sysrq triggered crash"


# --------------------------------------------------------------------------- 7. junit

def junit_fixture(tmp_path: Path, console: bytes | None = None) -> tuple[MatrixResults, Path, list[str]]:
    """Three configs on two kernels in two modes, with a failing cell whose console is a real one."""
    kernels, configs = ("debian-6.1", "debian-newest:6.1"), ("boot-native", "int3-selftest", "sysrq")
    cells = [Cell(cfg, k, m) for cfg in configs for k in kernels for m in MODES]
    failing = Cell("sysrq", "debian-newest:6.1", "native")
    run = dataclasses.replace(recorded("sysrq-native"), verdict="fail", reasons=(
        "expect.outcome: boots, but the kernel panicked: kernel panic: sysrq triggered crash",
        "expect.console.contains 'patchscope: exit 2: 0' matched no line"))
    root = tmp_path / "out"
    (root / failing.where).mkdir(parents=True)
    text = console if console is not None else (RUNS / "sysrq-native" / "console.log").read_bytes()
    (root / failing.where / "console.log").write_bytes(text)
    results = []
    for c in cells:
        if c == failing:
            results.append(CellResult(c, "fail", attempts=(Attempt("fail", 4.5, c.where, run.summary),), result=run))
        elif c == Cell("boot-native", "debian-6.1", "xen-pv"):
            results.append(CellResult(c, "not-applicable", "the config runs in native only (its mode: key)"))
        elif c == Cell("boot-native", "debian-newest:6.1", "xen-pv"):
            results.append(CellResult(c, "not-run", "its shard was not merged"))
        elif c == Cell("int3-selftest", "debian-6.1", "xen-pv"):
            results.append(CellResult(c, "error", "the kernel could not be prepared: apt-get download failed"))
        elif c == Cell("int3-selftest", "debian-6.1", "native"):
            results.append(CellResult(c, "flaky", attempts=(Attempt("fail", 3.0, c.where + ".attempt-1"),
                                                            Attempt("pass", 2.0, c.where))))
        else:
            results.append(passed(c, 2.0))
    lines = text.decode(errors="replace").splitlines()
    return MatrixResults("nightly", "ci/nightly.yaml", "d", tuple(c.id for c in cells), tuple(results)), root, lines


def test_junit_has_a_suite_per_kernel_and_mode_and_the_failure_with_its_console(tmp_path: Path) -> None:
    results, root, lines = junit_fixture(tmp_path)
    path = root / "junit.xml"
    write_junit(results, root, path)
    xml = JUnitXml.fromfile(str(path))
    suites = {s.name: s for s in xml}
    assert list(suites) == ["debian-6.1 native", "debian-6.1 xen-pv", "debian-newest:6.1 native",
                            "debian-newest:6.1 xen-pv"]
    for suite in suites.values():
        assert suite.tests == 3 and len(list(suite)) == 3
        assert [case.name for case in suite] == ["boot-native", "int3-selftest", "sysrq"]
    assert [(s.failures, s.errors, s.skipped) for s in suites.values()] == [(0, 0, 0), (0, 1, 1), (1, 0, 0),
                                                                          (0, 0, 1)]
    cases = {(s.name, c.name): c for s in suites.values() for c in s}

    failing = cases[("debian-newest:6.1 native", "sysrq")]
    [failure] = failing.result
    assert isinstance(failure, Failure)
    assert failure.message == "kernel panic: sysrq triggered crash"
    assert "- expect.outcome: boots, but the kernel panicked" in failure.text
    assert "- expect.console.contains 'patchscope: exit 2: 0' matched no line" in failure.text
    tail = failure.text.split("last console lines:\n", 1)[1].splitlines()
    assert tail == lines[-CONSOLE_TAIL:] and len(lines) > CONSOLE_TAIL
    assert tail[-1].endswith("Kernel Offset: disabled")
    assert lines[-CONSOLE_TAIL - 1] not in failure.text
    assert failing.classname == "patchscope.debian-newest:6.1.native"

    [error] = cases[("debian-6.1 xen-pv", "int3-selftest")].result
    assert isinstance(error, Error) and "apt-get download failed" in error.message
    for key, state in ((("debian-6.1 xen-pv", "boot-native"), "not-applicable"),
                       (("debian-newest:6.1 xen-pv", "boot-native"), "not-run")):
        [skipped] = cases[key].result
        assert isinstance(skipped, Skipped) and skipped.message.startswith(f"{state}: ")
    assert "its mode: key" in cases[("debian-6.1 xen-pv", "boot-native")].result[0].message
    flaky = cases[("debian-6.1 native", "int3-selftest")]
    assert flaky.is_passed and "attempt 1: fail, attempt 2: pass" in flaky.system_out
    assert cases[("debian-6.1 native", "boot-native")].is_passed
    assert float(failing.time) == pytest.approx(4.5)


def test_junit_strips_control_characters_of_a_console(tmp_path: Path) -> None:
    noisy = b"".join(f"[  {i}.000] line {i}\n".encode() for i in range(10))
    noisy += b"\x1b[31mred\x1b[0m and a \x00 nul, a \x07 bell, a \x08 backspace\ttab\n\x1b]0;title\x07last line\n"
    results, root, _ = junit_fixture(tmp_path, console=noisy)
    path = root / "junit.xml"
    write_junit(results, root, path)
    raw = path.read_text()
    assert not any(ord(ch) < 0x20 and ch not in "\t\n\r" for ch in raw)
    failing = next(c for s in JUnitXml.fromfile(str(path)) for c in s if c.result and isinstance(c.result[0], Failure))
    text = failing.result[0].text
    assert "[31mred[0m and a  nul, a  bell, a  backspace\ttab" in text        # the tab is kept
    assert text.endswith("]0;titlelast line")


def test_junit_stays_parseable_with_noncharacters_in_a_console(tmp_path: Path) -> None:
    results, root, _ = junit_fixture(tmp_path, console=b"boot\n\xef\xbf\xbe\xef\xbf\xbf garbage\nend\n")
    write_junit(results, root, root / "junit.xml")
    JUnitXml.fromfile(str(root / "junit.xml"))


def test_junit_without_a_console_still_lists_the_reasons(tmp_path: Path) -> None:
    results, root, _ = junit_fixture(tmp_path)
    for log in root.rglob("console.log"):
        log.unlink()
    write_junit(results, root, root / "sub" / "junit.xml")
    failing = next(c for s in JUnitXml.fromfile(str(root / "sub" / "junit.xml")) for c in s
                   if c.result and isinstance(c.result[0], Failure))
    assert failing.result[0].text.rstrip().endswith("last console lines:")
    assert "matched no line" in failing.result[0].text


def test_config_dataclass_is_what_expand_reads() -> None:
    """A spec built by hand (no files) expands the same way: modes come from Config.modes."""
    spec = MatrixSpec("m", Path("/nowhere/m.yaml"), ("k1", "k2"), MODES,
                      (Config("a"), Config("b", modes=("xen-pv",))))
    plan = expand(spec)
    assert len(plan.cells) == 8
    assert set(plan.not_in_modes) == {Cell("b", "k1", "native"), Cell("b", "k2", "native")}
    assert all("xen-pv" in why for why in plan.not_in_modes.values())


def test_memory_decides_how_many_guests_start() -> None:
    from framework.config import default_config
    from framework.matrix.plan import fits
    from framework.matrix.runner import OVERHEAD_MIB, RESERVE_MIB, need_mib

    native, xen = need_mib(default_config(), "native"), need_mib(default_config(), "xen-pv")
    assert (native, xen) == (512 + OVERHEAD_MIB, 1024 + OVERHEAD_MIB)
    # 3 GiB available: two native guests fit, a Xen guest beside them does not.
    assert fits([native], native, 3072, RESERVE_MIB)
    assert not fits([native, native], xen, 3072, RESERVE_MIB)
    # One cell always starts, even where it alone is over the budget: the run says so itself.
    assert fits([], xen, 512, RESERVE_MIB)
