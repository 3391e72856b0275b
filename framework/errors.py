"""The one exception tree of patchscope.

Library code raises these; only ``cli.py`` turns them into exit codes (all of
them are exit 2: bad input or an infrastructure failure). A test that ran and
did not meet its expectation is not an exception: it is a verdict.

::

    PatchscopeError                 every error patchscope raises on purpose
     ├── InputError                 the user's input is wrong; the message says how to fix it
     │    ├── BuildError            (build/) a kernel tree that does not configure or compile
     │    ├── ConfigError           a YAML test config: file, line, reason
     │    ├── KernelRefError        a kernel/hypervisor reference that names nothing usable
     │    ├── Stopped               (bisect/driver.py) a bisect's ends do not behave as ends
     │    ├── ImageError            a kernel image or vmlinux that cannot be read
     │    ├── ModuleError           (elf/modinfo.py) kernel modules without a load order: unknown, missing, a cycle
     │    ├── ArtefactError         (report/) a saved run that cannot be read: damaged, or a newer format
     │    └── UnsupportedError      a feature that is not implemented (yet)
     └── InfrastructureError        the machine cannot do what was asked
          ├── ToolMissingError      qemu-system-x86_64, gdb, apt-get … not installed
          ├── FetchError            apt-get download / package extraction failed
          ├── GitError              (bisect/gittree.py) git refused what a bisect needs
          ├── LaunchError           QEMU did not start, or died before the guest ran
          │    └── QMPError         (qmp.py) QMP refused a command or the connection broke
          └── DebuggerError         (debugger/contract.py) a debugger failed, was refused, or lost the target
               ├── DebuggerTimeout  a stop or an answer that did not come in time
               │    └── RspTimeout  (debugger/rsp.py) the same, from the remote-protocol client
               └── RspError         (debugger/rsp.py) a DebuggerError of the remote-protocol client ("rsp: …")

Every error renders as one line (``str(err)``); details that help (the
command, the last lines of output) are kept in attributes for reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class PatchscopeError(Exception):
    """Base of every error patchscope raises on purpose."""


class InputError(PatchscopeError):
    """The user's input is wrong."""


class ConfigError(InputError):
    """A YAML test config is invalid; names the file and line."""

    def __init__(self, path: Path | str | None, line: int | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = reason
        where = str(self.path) if self.path is not None else "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")


class KernelRefError(InputError):
    """A kernel or hypervisor reference that names nothing usable."""


class BuildError(InputError):
    """A kernel build that failed: the first error line, and where the whole log is kept."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        self.log = log
        super().__init__(message)


class ImageError(InputError):
    """A kernel image, initramfs or vmlinux that cannot be read."""


class ArtefactError(InputError):
    """A saved run's files (result.json, the analysis) that cannot be read; the message says to re-run."""


class UnsupportedError(InputError):
    """A feature that patchscope does not implement (yet)."""


class InfrastructureError(PatchscopeError):
    """The machine cannot do what was asked."""


class ToolMissingError(InfrastructureError):
    """A required host program is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} not found; install it with: apt-get install {package}")


class FetchError(InfrastructureError):
    """Downloading or unpacking a package failed."""

    def __init__(self, message: str, command: Sequence[str] = (), output: str = "") -> None:
        self.command = list(command)
        self.output = output
        super().__init__(message)


class LaunchError(InfrastructureError):
    """QEMU did not start, or exited before the guest ran."""

    def __init__(self, message: str, command: Sequence[str] = (), exitcode: int | None = None,
                 output: str = "") -> None:
        self.command = list(command)
        self.exitcode = exitcode
        self.output = output
        super().__init__(message)
