"""One run's result: a typed, versioned record that every reader uses (CLI, JUnit, pytest, check).

``result.json`` in a run's artefacts directory is ``RunResult.to_json()``,
with ``"schema": SCHEMA``. ``load_result(dir)`` reads it back together with
the console text and the analysis files (``artefacts.py``), so
``load_result(d) == result`` after ``write_result(d, result)``. Files written
before the schema was numbered (format 1, patchscope 0.1.0) load too; a newer
format is refused with a one-line "re-run" error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.console_log import read_console_file, texts
from ..analysis.findings import Analysis
from ..analysis.observation import Observation
from ..domain import MODES, Mode, VerdictName
from ..errors import ArtefactError
from .artefacts import load_analysis, read_json_object, write_analysis

RESULT = "result.json"
SCHEMA = 2
SUPPORTED_SCHEMAS = (1, 2)
_VERDICTS: tuple[VerdictName, ...] = ("pass", "fail", "error")
# Keys of result.json that the observation and the analysis own.
_OBSERVATION_KEYS = ("outcome", "summary", "title", "last_stage", "crashes", "stages", "ending")


@dataclass(frozen=True)
class QemuRun:
    argv: tuple[str, ...]
    pid: int | None = None
    exitcode: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"argv": list(self.argv), "pid": self.pid, "exitcode": self.exitcode}


@dataclass(frozen=True)
class RunResult:
    """Everything a run decided and where it came from."""

    name: str
    mode: Mode
    verdict: VerdictName
    reasons: tuple[str, ...]
    artifacts: str
    started: str                              # ISO 8601, UTC, seconds
    duration_s: float
    patchscope: str                           # the version that ran it
    config: str | None = None                 # the config file, when there was one
    expect: Mapping[str, object] | None = None   # the expectation as YAML values
    error: str | None = None                  # why the verdict is "error"
    launch_output: tuple[str, ...] = ()       # QEMU's last lines when it failed to start
    kernel: Mapping[str, object] | None = None       # the kernel's identity (ref, package, version, files)
    symbol_source: str | None = None
    hypervisor: Mapping[str, object] | None = None   # xen-pv: Xen's identity and banner
    accel: tuple[str, str] | None = None      # (used, why)
    qemu: QemuRun | None = None
    observation: Observation | None = None    # None when the run ended before the guest ran
    analysis: Analysis | None = None          # None without a debugger
    # A forked run (fork:): its snapshot and its points (sweep.json's content); one point's: the snapshot it
    # started from, the run that took it, its number and values.
    fork: Mapping[str, object] | None = None
    schema: int = field(default=SCHEMA, compare=False)

    @property
    def summary(self) -> str:
        if self.observation is not None:
            return self.observation.summary
        if self.fork is not None and self.error is None:
            points = self.fork.get("points")
            done = points if isinstance(points, list) else []
            passed = sum(1 for p in done if isinstance(p, dict) and p.get("verdict") == "pass")
            snapshot = self.fork.get("snapshot")
            at = snapshot.get("at") if isinstance(snapshot, dict) else None
            return str(self.fork.get("failure") or
                       f"{passed} of {self.fork.get('total')} points passed, forked from one snapshot at {at}")
        return self.error or ""

    @property
    def outcome(self) -> str | None:
        return self.observation.outcome if self.observation is not None else None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "schema": SCHEMA, "patchscope": self.patchscope, "name": self.name, "mode": self.mode,
            "config": self.config, "artifacts": self.artifacts, "started": self.started,
            "verdict": self.verdict, "reasons": list(self.reasons), "expect": self.expect,
            "duration_s": self.duration_s,
        }
        if self.error is not None:
            data["error"] = self.error
        if self.launch_output:
            data["launch_output"] = list(self.launch_output)
        if self.kernel is not None:
            data["kernel"] = dict(self.kernel)
            data["symbol_source"] = self.symbol_source
        if self.hypervisor is not None:
            data["hypervisor"] = dict(self.hypervisor)
        if self.accel is not None:
            data["accel"] = {"used": self.accel[0], "why": self.accel[1]}
        if self.qemu is not None:
            data["qemu"] = self.qemu.to_json()
        if self.observation is not None:
            data.update(self.observation.to_json())
        if self.analysis is not None:
            data["sites"] = self.analysis.summary_json()
        if self.fork is not None:
            data["fork"] = dict(self.fork)
        return data

    @staticmethod
    def from_json(data: Mapping[str, object], lines: Sequence[str] = (),
                  analysis: Analysis | None = None) -> RunResult:
        """A result from result.json's values, the console text and the loaded analysis."""
        mode, verdict = str(data["mode"]), str(data["verdict"])
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if verdict not in _VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        accel, qemu = data.get("accel"), data.get("qemu")
        reasons, launch = data.get("reasons"), data.get("launch_output")
        return RunResult(
            name=str(data["name"]), mode=mode, verdict=verdict,
            reasons=tuple(str(r) for r in reasons) if isinstance(reasons, list) else (),
            artifacts=str(data.get("artifacts") or ""), started=str(data.get("started") or ""),
            duration_s=float(str(data.get("duration_s") or 0.0)), patchscope=str(data.get("patchscope") or ""),
            config=_opt(data.get("config")), expect=_mapping(data.get("expect")), error=_opt(data.get("error")),
            launch_output=tuple(str(x) for x in launch) if isinstance(launch, list) else (),
            kernel=_mapping(data.get("kernel")), symbol_source=_opt(data.get("symbol_source")),
            hypervisor=_mapping(data.get("hypervisor")),
            accel=(str(accel.get("used")), str(accel.get("why"))) if isinstance(accel, dict) else None,
            qemu=QemuRun(tuple(str(a) for a in qemu.get("argv") or []), _int(qemu.get("pid")),
                         _int(qemu.get("exitcode"))) if isinstance(qemu, dict) else None,
            observation=Observation.from_json(data, lines) if data.get("outcome") is not None else None,
            analysis=analysis, fork=_mapping(data.get("fork")), schema=int(str(data.get("schema") or 1)))


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _mapping(value: object) -> Mapping[str, object] | None:
    return value if isinstance(value, dict) else None


def write_result(directory: Path, result: RunResult) -> None:
    """result.json, atomically; the analysis files first, so a result.json never names missing ones."""
    if result.analysis is not None:
        write_analysis(directory, result.analysis)
    write_json(directory / RESULT, result.to_json())


def write_json(path: Path, data: Mapping[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_result_json(directory: Path) -> Mapping[str, object] | None:
    """result.json's values, checked for a format this version reads; None when there is none."""
    path = directory / RESULT
    if not path.exists():
        return None
    data = read_json_object(path)
    schema = data.get("schema", 1)
    if schema not in SUPPORTED_SCHEMAS:
        raise ArtefactError(f"{path}: result.json format {schema} is not supported by this patchscope "
                         f"(it reads formats {', '.join(map(str, SUPPORTED_SCHEMAS))}); re-run the config "
                         "with this version, or check it with the version that wrote it")
    return data


def load_result(directory: Path) -> RunResult | None:
    """The run in an artefacts directory: result.json, the console text, the analysis; None without result.json."""
    data = read_result_json(directory)
    if data is None:
        return None
    log = directory / "console.log"
    lines = texts(read_console_file(log)) if log.exists() else []
    try:
        return RunResult.from_json(data, lines, load_analysis(directory))
    except (KeyError, ValueError, TypeError) as err:
        raise ArtefactError(f"{directory / RESULT}: cannot be read ({type(err).__name__}: {err}); "
                         "re-run the config") from None
