"""pytest plugin: every YAML config under a ``configs/`` directory is a test item, one per mode.

    pytest configs/                        run every shipped config
    pytest configs/ --junitxml=out.xml     the same, as JUnit
    pytest configs/ -m "not boot"          collect, validate, boot nothing

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

from .config import Config, load_config, with_overrides
from .domain import ACCELS, MODES
from .errors import ConfigError, PatchscopeError
from .pipeline import RunRequest, artifacts_dir, check_mode, execute
from .report.result import RunResult
from .report.text import reason_lines


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("patchscope")
    group.addoption("--patchscope-artifacts", default="patchscope-out/pytest", metavar="DIR",
                    help="where config runs keep their artefacts (default: %(default)s)")
    group.addoption("--patchscope-accel", default="tcg", choices=ACCELS)
    group.addoption("--patchscope-mode", action="append", choices=MODES,
                    help="run configs in this mode instead of their own (repeatable)")


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
        modes = self.config.getoption("--patchscope-mode")
        if modes:
            cfg = with_overrides(cfg, modes=tuple(modes))
        for mode in cfg.modes:
            item = ConfigItem.from_parent(self, name=f"{cfg.name}[{mode}]", cfg=cfg, mode=mode)
            item.add_marker(pytest.mark.boot)
            yield item


class VerdictFailure(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__(result.verdict)
        self.result = result


class ConfigItem(pytest.Item):
    def __init__(self, *, cfg: Config, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.mode = mode

    def runtest(self) -> None:
        try:
            mode = check_mode(self.mode)
        except PatchscopeError as err:
            pytest.skip(str(err))
        root = Path(self.config.getoption("--patchscope-artifacts"))
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
        return self.path, 0, f"{self.cfg.name} [{self.mode}]"
