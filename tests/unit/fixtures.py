"""Console log fixtures: a raw console log under a few syzkaller-style header lines.

Format of ``tests/data/console/*.log``::

    TITLE: kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)
    FATAL: Y
    CRASHES: 1
    SOURCE: recorded 6.1.0-56-amd64 native, QEMU TCG

    [    0.000000] Linux version 6.1.0-56-amd64 ...
    ...

Header lines are ``KEY: value`` up to the first empty line; everything after it is
the log, byte for byte as the console printed it. A recorded log keeps its
``\\r\\n`` line ends (so its lines end in ``\\r``), its control characters and any
bytes that are not UTF-8: they are read with ``surrogateescape`` and written back
unchanged, so ``write_fixture(f.path, f.headers, f.lines, final_newline=f.final_newline)``
reproduces the file exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENCODING = "utf-8"
ERRORS = "surrogateescape"


@dataclass(frozen=True)
class Fixture:
    path: Path
    headers: dict[str, str]
    lines: list[str]
    final_newline: bool = True     # whether the log's last line ended with "\n"

    @property
    def name(self) -> str:
        return self.path.name


def parse_fixture(text: str, path: Path | str = "<fixture>") -> Fixture:
    """A fixture from its text (decoded with surrogateescape)."""
    head, sep, body = text.partition("\n\n")
    if not sep:
        raise ValueError(f"{path}: no empty line after the header")
    headers: dict[str, str] = {}
    for n, line in enumerate(head.split("\n"), 1):
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip() or not key.isupper():
            raise ValueError(f"{path}:{n}: expected 'KEY: value', got {line!r}")
        headers[key] = value.strip()
    lines = body.split("\n")
    final_newline = lines[-1] == ""
    if final_newline:
        lines.pop()
    return Fixture(Path(path), headers, lines, final_newline)


def load_fixture(path: Path | str) -> Fixture:
    return parse_fixture(Path(path).read_bytes().decode(ENCODING, ERRORS), path)


def all_fixtures(dirname: Path | str) -> list[Fixture]:
    """Every ``*.log`` fixture of a directory, sorted by name."""
    return [load_fixture(p) for p in sorted(Path(dirname).glob("*.log"))]


def format_fixture(headers: Mapping[str, str], lines: Sequence[str], *, final_newline: bool = True) -> str:
    head = "".join(f"{key}: {value}\n" for key, value in headers.items())
    body = "\n".join(lines) + ("\n" if final_newline and lines else "")
    return head + "\n" + body


def write_fixture(path: Path | str, headers: Mapping[str, str], lines: Sequence[str], *,
                  final_newline: bool = True) -> None:
    Path(path).write_bytes(format_fixture(headers, lines, final_newline=final_newline).encode(ENCODING, ERRORS))
