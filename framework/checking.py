"""``patchscope check``: a saved run or any console log observed again and, with a config, judged again.

Kept apart from the pipeline, and importing what judging and saved runs need only
when they are needed, so that checking a thousand saved logs does not pay for the
debugger, the ELF readers and the disassembler once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .analysis.console_log import Ending, read_console_file
from .analysis.observation import Observation, observe
from .domain import MODES, Mode
from .errors import UnsupportedError

if TYPE_CHECKING:
    from .analysis.findings import Analysis
    from .config import Config
    from .report.result import RunResult
    from .verdict import Verdict


def check_mode(mode: str) -> Mode:
    """``mode`` as a Mode, or an error naming the ones there are."""
    for known in MODES:
        if mode == known:
            return known
    raise UnsupportedError(f"mode {mode!r} is not supported yet; supported: {', '.join(MODES)}")


@dataclass(frozen=True)
class Checked:
    """A saved run (or any console log) re-judged: the same stages as a live run after the boot."""

    path: Path
    observation: Observation
    saved: RunResult | None            # the run's own result, when ``path`` is an artefacts directory
    verdict: Verdict | None            # against the given config, when there is one


def check(path: Path, config: Config | None, mode: Mode | None = None) -> Checked:
    """Observe a saved console log again and, with a config, judge it with the run's saved analysis.

    ``mode`` picks the config's ``expect.<mode>`` section; by default the saved run's mode.
    """
    saved: RunResult | None = None
    analysis: Analysis | None = None
    if path.is_dir():
        from .report.artefacts import load_analysis
        from .report.result import load_result

        log = path / "console.log"
        if not log.exists():
            raise UnsupportedError(f"{path}: no console.log here; give a run's artefacts directory "
                                   "(e.g. patchscope-out/<name>/<mode>) or a console log file")
        saved = load_result(path)
        if saved is not None and saved.fork is not None and "points" in saved.fork:
            raise UnsupportedError(f"{path}: a forked run, whose console holds every point's boot; its points are "
                                   f"judged one by one: check {path / 'points'}")
        analysis = saved.analysis if saved is not None else load_analysis(path)
    else:
        log = path
    lines = read_console_file(log)
    if saved is not None and saved.observation is not None:
        ending = saved.observation.ending
    else:
        ending = Ending("log-end", next((t for t, _ in reversed(lines) if t is not None), 0.0))
    observation = observe(lines, ending)
    mode = mode or (saved.mode if saved is not None else None)
    verdict = None
    point = saved.fork.get("point") if saved is not None and saved.fork is not None else None
    if config is not None and config.sweep is not None and isinstance(point, int) \
            and 1 <= point <= len(config.sweep.points):
        from .config import sweep_point  # a forked run's point: judged with its own values written in
        config = sweep_point(config, point - 1)
    if config is not None:
        from .verdict import judge
        verdict = judge(config, observation, analysis, mode)
    return Checked(path, observation, saved, verdict)
