"""The boot tests' shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bisect_series import make_tree
from tests.conftest import patchscope

BUILD_TIMEOUT = 3600


def cache() -> Path:
    return Path(os.environ.get("PATCHSCOPE_CACHE", Path.home() / ".cache" / "patchscope"))


@pytest.fixture(scope="session")
def linux_git(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's 6.1.192-2 source as a git checkout with one commit (hard links into the cache, never written
    through), after building kernels/tiny-6.1.yaml from it: shared by the build and the bisect tests, which add
    their own commits."""
    res = patchscope("build", "kernels/tiny-6.1.yaml", timeout=BUILD_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    source = cache() / "sources" / "linux-source-6.1_6.1.192-2"
    assert (source / "Makefile").exists(), source
    tree = tmp_path_factory.mktemp("git") / "linux"
    make_tree(source, tree)
    return tree
