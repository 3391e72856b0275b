"""pytest plugin: every YAML config under a ``configs/`` directory is a test item, one per kernel and mode.

    pytest configs/                        run every shipped config, on its kernel, in its modes
    pytest configs/ --junitxml=out.xml     the same, as JUnit
    pytest configs/ -m "not boot"          collect, validate, boot nothing
    pytest configs/ --kernel debian-6.1 --kernel debian:linux-image-6.1.0-50-amd64 --mode native -n 2
                                           every config on both kernels, natively, two at a time (pytest-xdist)

Items are named ``<config>[<mode>]``, or ``<config>[<kernel>-<mode>]`` with
``--kernel``; each keeps its artefacts in its own directory
(``--patchscope-artifacts``, then ``<kernel>/`` with ``--kernel``, then
``<config>/<mode>``), and the kernel cache is locked, so items run in parallel.

A config that fails validation is a collection error with its file:line
message. A failed verdict shows its reasons and the console's last lines.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from .checking import check_mode
from .config import Config, load_config, with_overrides
from .domain import ACCELS, MODES
from .errors import ConfigError, KernelRefError, PatchscopeError
from .kernel.fetch import safe_key
from .kernel.refs import parse_ref
from .pipeline import RunRequest, applicability, artifacts_dir, execute
from .report.result import RunResult
from .report.text import reason_lines


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("patchscope")
    group.addoption("--patchscope-artifacts", default="patchscope-out/pytest", metavar="DIR",
                    help="where config runs keep their artefacts (default: %(default)s)")
    group.addoption("--patchscope-accel", default="tcg", choices=ACCELS)
    group.addoption("--mode", "--patchscope-mode", dest="patchscope_mode", action="append", choices=MODES,
                    help="run configs in this mode instead of their own (repeatable)")
    group.addoption("--kernel", "--patchscope-kernel", dest="patchscope_kernel", action="append",
                    metavar="REF", help="run configs on this kernel instead of their own (repeatable: "
                                        "each config runs on each kernel)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boot: boots a real kernel in QEMU")
    # SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so every QEMU is torn down.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and file_path.parent.name == "configs":
        return ConfigFile.from_parent(parent, path=file_path)
    return None


class ConfigFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            cfg = load_config(self.path)
        except ConfigError as err:
            raise self.CollectError(str(err)) from None
        modes = self.config.getoption("patchscope_mode")
        kernels: list[str] | None = self.config.getoption("patchscope_kernel")
        try:
            if modes:
                cfg = with_overrides(cfg, modes=tuple(dict.fromkeys(modes)))
            variants = [(None, cfg)] if not kernels else [
                (kernel, with_overrides(cfg, kernel=kernel)) for kernel in dict.fromkeys(kernels)]
        except ConfigError as err:
            raise self.CollectError(str(err)) from None
        for ref in kernels or ():
            try:
                parse_ref(ref, base=self.path.parent)     # a reference that names nothing fails here
            except KernelRefError as err:
                raise self.CollectError(f"--kernel: {err}") from None
        for kernel, variant in variants:
            for mode in variant.modes:
                name = f"{cfg.name}[{mode}]" if kernel is None else f"{cfg.name}[{kernel}-{mode}]"
                item = ConfigItem.from_parent(self, name=name, cfg=variant, mode=mode, kernel=kernel)
                item.add_marker(pytest.mark.boot)
                yield item


class VerdictFailure(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__(result.verdict)
        self.result = result


class ConfigItem(pytest.Item):
    def __init__(self, *, cfg: Config, mode: str, kernel: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.mode = mode
        self.kernel = kernel      # the --kernel this item runs on; None: the config's own

    def runtest(self) -> None:
        try:
            mode = check_mode(self.mode)
        except PatchscopeError as err:
            pytest.skip(str(err))
        try:
            why = applicability(self.cfg, lambda _msg: None)
        except PatchscopeError:
            why = None              # the run reports a kernel that cannot be prepared, with its artefacts
        if why is not None:
            pytest.skip(f"not applicable to {self.cfg.kernel}: {why}")
        root = Path(self.config.getoption("--patchscope-artifacts"))
        if self.kernel is not None:
            root = root / safe_key(self.kernel)
        req = RunRequest(self.cfg, mode, artifacts_dir(root, self.cfg.name, self.mode),
                         accel=self.config.getoption("--patchscope-accel"))
        result = execute(req, lambda _msg: None)
        self.user_properties.append(("artifacts", str(req.outdir)))
        if result.verdict != "pass":
            raise VerdictFailure(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, VerdictFailure):
            result = excinfo.value.result
            lines = [f"{result.verdict.upper()}: {result.summary}", *reason_lines(result, "  - ")]
            console = Path(result.artifacts) / "console.log"
            if console.exists():
                tail = console.read_text(errors="replace").splitlines()[-15:]
                lines += ["", f"last console lines ({console}):"] + [f"  {ln}" for ln in tail]
            return "\n".join(lines)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        where = self.mode if self.kernel is None else f"{self.kernel} {self.mode}"
        return self.path, 0, f"{self.cfg.name} [{where}]"
