"""The package's shape, checked: pure layers never reach the edges, and only the judge makes a verdict.

Data flows one way: config -> kernel/guest -> vm -> observe/debugger ->
analysis (on elf) -> verdict -> report -> pipeline -> cli. The pure layers are
tested on recorded data; they must not import (even indirectly) anything that
starts a process, opens a socket or fetches a package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "framework"
PURE = ("framework.domain", "framework.errors", "framework.yamlnode", "framework.config", "framework.scenario",
        "framework.elf", "framework.analysis", "framework.verdict", "framework.report", "framework.guest.markers",
        "framework.matrix.spec", "framework.matrix.plan", "framework.matrix.results", "framework.matrix.junit",
        "framework.matrix.html", "framework.build.kconfig", "framework.build.recipe", "framework.build.buildlog",
        "framework.debversion", "framework.bisect.signature", "framework.bisect.steps", "framework.bisect.search",
        "framework.bisect.debian", "framework.bisect.driver", "framework.bisect.record", "framework.bisect.html")
EDGES = ("framework.vm", "framework.debugger", "framework.observe", "framework.kernel", "framework.guest.initramfs",
         "framework.pipeline", "framework.checking", "framework.cli", "framework.pytest_plugin", "framework.matrix.runner",
         "framework.matrix.commands", "framework.build.tree", "framework.build.kbuild", "framework.build.commands",
         "framework.build.kmod",
         "framework.bisect.gittree", "framework.bisect.runner", "framework.bisect.commands", "framework.validation")
PROCESS_LIBRARIES = ("subprocess", "socket", "threading", "pexpect", "pygdbmi")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports at import time or in a function (TYPE_CHECKING blocks left out)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            for alias in node.names:        # "from . import crashes" imports a module
                if f"{target}.{alias.name}" in MODULES:
                    yield f"{target}.{alias.name}"


def closure(name: str) -> dict[str, str]:
    """Every module reachable from ``name``, each with the module that first imported it."""
    seen: dict[str, str] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        for target in imports(current):
            owner = next((m for m in (target, target.rsplit(".", 1)[0]) if m in MODULES), None)
            for found in {target, owner} - {None}:
                assert found is not None
                if found not in seen and found != name:
                    seen[found] = current
                    if found in MODULES:
                        todo.append(found)
    return seen


def within(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


PURE_MODULES = sorted(m for m in MODULES if within(m, PURE))


def test_the_layers_cover_the_package() -> None:
    unplaced = [m for m in MODULES if m != "framework" and not within(m, PURE + EDGES)
                and not (MODULES[m].name == "__init__.py" and not list(imports(m)))]
    assert unplaced == [], "place each new module in PURE or EDGES"
    assert len(PURE_MODULES) > 20


@pytest.mark.parametrize("name", PURE_MODULES)
def test_a_pure_module_never_reaches_an_edge(name: str) -> None:
    reached = closure(name)
    bad = {m: via for m, via in reached.items()
           if within(m, EDGES) or m.split(".")[0] in PROCESS_LIBRARIES}
    assert bad == {}, f"{name} reaches edges (module: imported by): {bad}"


def test_the_check_finds_a_forbidden_import(tmp_path: Path) -> None:
    # The walker itself: the pipeline does reach the VM and the debugger.
    reached = closure("framework.pipeline")
    assert "framework.vm.qemu" in reached and "subprocess" in reached


VERDICT_WORDS = {"pass", "fail", "error"}


def verdict_makers(path: Path) -> Iterator[str]:
    """Places that build a Verdict or write a verdict word into a result by hand."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "Verdict":
                yield f"{path.name}:{node.lineno}: Verdict(...)"
            for kw in node.keywords:
                if kw.arg == "verdict" and isinstance(kw.value, ast.Constant) and kw.value.value in VERDICT_WORDS:
                    yield f"{path.name}:{node.lineno}: verdict={kw.value.value!r}"
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (isinstance(key, ast.Constant) and key.value == "verdict" and isinstance(value, ast.Constant)
                        and value.value in VERDICT_WORDS):
                    yield f"{path.name}:{node.lineno}: {{'verdict': {value.value!r}}}"
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                and isinstance(node.slice, ast.Constant) and node.slice.value == "verdict"):
            yield f"{path.name}:{node.lineno}: [...]['verdict'] = ..."


def test_only_the_judge_makes_a_verdict() -> None:
    found = [hit for name, path in MODULES.items() if name != "framework.verdict" for hit in verdict_makers(path)]
    assert found == []
    # The finder does find them where they are.
    assert any("Verdict(...)" in hit for hit in verdict_makers(MODULES["framework.verdict"]))
