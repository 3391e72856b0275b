"""A git tree made from Debian's linux-source-6.1 with a series of commits on top, one of which brings a real
patching regression and one an unrelated breakage: what the bisect's boot tests and bench/bisecting.py bisect.

    c1  README: a note                                    (harmless)
    c2  x86/alternative: a comment above apply_paravirt() (harmless, rebuilds alternative.o)
    c3  init: panic before starting init                  (an unrelated breakage: "kernel panic: …")
    c4  Revert c3                                         (fixed again)
    c5  x86/alternative: apply_paravirt() skips its last site   <- the regression (pv_indirect 1)
    c6  README: another note                              (harmless; the bad end)

The tree's files are hard links into the unpacked source; every change replaces a file (unlink, write),
so the source in the cache is never written through them (git's checkout replaces files the same way).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path


def git(tree: Path, *args: str) -> str:
    """git in ``tree`` with a fixed identity; its output, stripped."""
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.unlink()
    path.write_text(text.replace(old, new))


def append(path: Path, line: str) -> None:
    text = path.read_text()
    path.unlink()
    path.write_text(text + line + "\n")


def make_tree(source: Path, tree: Path) -> str:
    """Debian's unpacked source at ``source`` as a git checkout at ``tree`` with one commit; its sha."""
    subprocess.run(["cp", "-al", str(source), str(tree)], check=True)
    subprocess.run(["rm", "-rf", str(tree / ".patchscope-build")], check=True)   # the source's own build
    ignore = tree / ".gitignore"     # Debian's source package ignores everything at the top ("/*"); a checkout not
    edit(ignore, ignore.read_text()[ignore.read_text().index("# Debian packaging"):], "")
    git(tree, "init", "-q", "-b", "main")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "linux-source-6.1 6.1.192-2")
    return git(tree, "rev-parse", "HEAD")


def add_series(tree: Path) -> dict[str, str]:
    """The six commits on top of ``tree``'s HEAD: {"tree": path, "base": the HEAD before, "c1": sha, …}."""
    shas = {"tree": str(tree), "base": git(tree, "rev-parse", "HEAD")}
    alternative, main = tree / "arch" / "x86" / "kernel" / "alternative.c", tree / "init" / "main.c"
    steps: list[tuple[str, str | None, Callable[[], None] | None]] = [
        ("c1", "README: a note", lambda: append(tree / "README", "A note.")),
        ("c2", "x86/alternative: say what apply_paravirt() does",
         lambda: edit(alternative, "void __init_or_module apply_paravirt(",
                      "/* Patch every paravirt site in place. */\nvoid __init_or_module apply_paravirt(")),
        ("c3", "init: panic before starting init",
         lambda: edit(main, "\tif (ramdisk_execute_command) {",
                      '\tpanic("patchscope bisect test: an unrelated breakage");\n\tif (ramdisk_execute_command) {')),
        ("c4", None, None),                                    # git revert of c3
        ("c5", "x86/alternative: apply_paravirt() stops one site early",
         lambda: edit(alternative, "\tfor (p = start; p < end; p++) {\n\t\tunsigned int used;",
                      "\tfor (p = start; p < end - 1; p++) {\n\t\tunsigned int used;")),
        ("c6", "README: another note", lambda: append(tree / "README", "Another note.")),
    ]
    for name, subject, change in steps:
        if change is None:
            git(tree, "revert", "--no-edit", "HEAD")
        else:
            change()
            git(tree, "commit", "-q", "-am", subject or name)
        shas[name] = git(tree, "rev-parse", "HEAD")
    return shas


def make_series(source: Path, tree: Path) -> dict[str, str]:
    """A new tree at ``tree`` from ``source``, with the series on top."""
    make_tree(source, tree)
    return add_series(tree)
