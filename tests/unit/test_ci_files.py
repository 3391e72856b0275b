"""The CI templates in ci/: valid for their CI systems, and consistent with each other and the CLI.

Nothing in CI checks these files before an adopting tree copies them, and a
mistake shows only the next night, on someone else's runner. So they are
validated here against the published schemas that check-jsonschema ships
(offline: --builtin-schema, never a URL), and checked for the things the schemas
cannot see: the shard list and every --shard K/N agree, every patchscope call
is a subcommand the templates are meant to use, both name the same matrix,
and every script is valid shell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

GITHUB = REPO / "ci" / "github-actions.yml"
GITLAB = REPO / "ci" / "gitlab-ci.yml"
SCHEMAS = {GITHUB: "vendor.github-workflows", GITLAB: "vendor.gitlab-ci"}
MATRIX_FILE = "ci/nightly.yaml"

# What the templates may run. `kernels fetch` fills the download cache in the plan job.
SUBCOMMANDS = {("matrix",), ("report", "merge"), ("report", "diff"), ("kernels", "fetch")}
# How each file names the current shard in `--shard K/N`.
SHARD_VARIABLE = {GITHUB: re.compile(r"\$\{\{\s*matrix\.shard\s*\}\}"), GITLAB: re.compile(r"\$\{?SHARD\}?")}

# A call of the CLI: `patchscope` or `<dir>/patchscope` where a command starts, then its subcommand words
# (so `echo "patchscope matrix exited"` is no call).
CALL = re.compile(r"(?:^\s*|[;&|(]\s*|\b(?:then|do|else)\s+)(?:[\w./-]*/)?patchscope"
                  r"[ \t]+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*)(?![\w./-]))?")
SHARD = re.compile(r"--shard[ \t]+\"?(.+?)/(\d+)\b")


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.fail("check-jsonschema is missing: it is in the test extras (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, check=False, timeout=60)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def scripts(path: Path) -> list[str]:
    """Every shell script in the file: GitHub steps' run, GitLab jobs' before_script/script/after_script."""
    data = load(path)
    found: list[str] = []
    if path == GITHUB:
        for job in data["jobs"].values():
            found += [step["run"] for step in job.get("steps", []) if "run" in step]
    else:
        for job in data.values():
            if isinstance(job, dict):
                for key in ("before_script", "script", "after_script"):
                    lines = job.get(key, [])
                    found += [lines] if isinstance(lines, str) else ["\n".join(lines)] if lines else []
    return found


def command_lines(path: Path) -> list[str]:
    """The scripts' lines, comments left out."""
    return [line for script in scripts(path) for line in script.splitlines() if not line.strip().startswith("#")]


def shard_lists(path: Path) -> list[list[int]]:
    data = load(path)
    if path == GITHUB:
        return [[int(s) for s in job["strategy"]["matrix"]["shard"]]
                for job in data["jobs"].values() if "shard" in job.get("strategy", {}).get("matrix", {})]
    return [[int(s) for s in entry["SHARD"]]
            for job in data.values() if isinstance(job, dict) and isinstance(job.get("parallel"), dict)
            for entry in job["parallel"]["matrix"] if "SHARD" in entry]


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_valid_for_its_ci_system(path: Path) -> None:
    proc = check_jsonschema(SCHEMAS[path], path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Each breakage is a text edit of the real file: the file must contain the text, and the
# edited copy must fail validation, naming the key that broke it.
BROKEN = [
    (GITHUB, "    runs-on: ubuntu-latest\n    container: debian:bookworm\n    timeout-minutes", "    timeout-minutes",
     "runs-on"),
    (GITHUB, "      fail-fast: false", "      fail_fast: false", "fail_fast"),
    (GITLAB, "      - .patchscope-cache/\n  script:", "      - .patchscope-cache/\n  scripts:", "scripts"),
    (GITLAB, "  artifacts:\n    when: always\n    paths:\n      - out/\n",
     "  artifacts:\n    when: allways\n    paths:\n      - out/\n", "allways"),
]


@pytest.mark.parametrize(("path", "old", "new", "named"), BROKEN,
                         ids=["github-no-runs-on", "github-misspelt-key", "gitlab-misspelt-script",
                              "gitlab-bad-enum"])
def test_a_broken_copy_fails_validation(tmp_path: Path, path: Path, old: str, new: str, named: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} no longer holds the text this test breaks: {old!r}"
    broken = tmp_path / path.name
    broken.write_text(text.replace(old, new))
    proc = check_jsonschema(SCHEMAS[path], broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert named in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_shard_lists_and_shard_arguments_agree(path: Path) -> None:
    lists = shard_lists(path)
    assert lists, f"{path.name}: no shard list"
    shards = [match.groups() for line in command_lines(path) for match in SHARD.finditer(line)]
    assert shards, f"{path.name}: no --shard K/N"
    for numbers in lists:
        assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: shards {numbers} are not 1..N"
        for current, count in shards:
            assert int(count) == len(numbers), f"{path.name}: --shard {current}/{count} with {len(numbers)} shards"
            assert SHARD_VARIABLE[path].fullmatch(current), f"{path.name}: --shard {current}/{count}"


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_patchscope_calls_are_the_nightly_subcommands(path: Path) -> None:
    calls = [tuple(word for word in match.groups() if word)
             for line in command_lines(path) for match in CALL.finditer(line)]
    for call in calls:
        assert call[:1] in SUBCOMMANDS or call[:2] in SUBCOMMANDS, f"{path.name}: patchscope {' '.join(call)}"
    used = {call[:1] if call[:1] in SUBCOMMANDS else call[:2] for call in calls}
    assert {("matrix",), ("report", "merge"), ("report", "diff")} <= used, f"{path.name} runs only {used}"


def test_both_files_run_the_same_matrix() -> None:
    named = {path.name: {line[match.end(1):].split()[0] for line in command_lines(path)
                         for match in CALL.finditer(line) if match.group(1) == "matrix"}
             for path in (GITHUB, GITLAB)}
    assert named == {GITHUB.name: {MATRIX_FILE}, GITLAB.name: {MATRIX_FILE}}


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_scripts_are_valid_shell(path: Path) -> None:
    for script in scripts(path):
        # GitHub substitutes ${{ expressions }} before the shell sees the script.
        text = re.sub(r"\$\{\{[^}]*\}\}", "X", script)
        proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{path.name}:\n{script}\n{proc.stderr}"


def test_the_shipped_nightly_is_a_valid_matrix_of_every_config_in_both_modes() -> None:
    from framework.matrix.plan import expand
    from framework.matrix.runner import check_kernel
    from framework.matrix.spec import load_matrix

    spec = load_matrix(REPO / MATRIX_FILE, check_kernel)
    shipped = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert sorted(c.path.stem for c in spec.configs if c.path is not None) == shipped
    assert set(spec.modes) == {"native", "xen-pv"}
    assert "debian-6.1" in spec.kernels and any(k.startswith("debian-newest:6.1") for k in spec.kernels)
    plan = expand(spec)
    assert len(plan.cells) == len(shipped) * len(spec.kernels) * 2
