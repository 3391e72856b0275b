"""A real headless browser for the tests: Debian's chromium renders a page, gives back its DOM and a screenshot.

    require_chromium()                       # fails (or skips, with PATCHSCOPE_NO_BROWSER=1) without chromium
    dom = render_page(page, screenshot)      # the DOM after loading file://page; screenshot is a PNG
    root = parse(dom)                        # a small tree: root.find_all("td", class_="cell"), node.text

Chromium runs with a new empty profile, no sandbox (tests run as root in CI),
no GPU, and none of its background fetches: the machine has no network, and the
page must not need any.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 60.0
WINDOW = (1400, 1000)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
NO_BROWSER_ENV = "PATCHSCOPE_NO_BROWSER"


class BrowserError(RuntimeError):
    """Chromium did not render the page; the message says how it failed and what it printed."""


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """Fail when chromium is missing (the test run needs it), or skip when PATCHSCOPE_NO_BROWSER=1 says so."""
    if chromium_available():
        return
    if os.environ.get(NO_BROWSER_ENV) == "1":
        pytest.skip(f"{CHROMIUM} is not installed and {NO_BROWSER_ENV}=1")
    pytest.fail(f"{CHROMIUM} is not installed: run ./bootstrap setup (it installs Debian's chromium), "
                f"or set {NO_BROWSER_ENV}=1 to skip the browser tests", pytrace=False)


def _noise(line: str) -> bool:
    """Lines chromium prints on any machine without a desktop session: not why it failed."""
    return "dbus" in line or "Fontconfig" in line or line.startswith("/usr/bin/chromium: ")


def render_page(page: Path, screenshot: Path, *, timeout: float = TIMEOUT_S) -> str:
    """The DOM chromium builds from ``page`` (``--dump-dom``), and a ``--window-size`` screenshot at ``screenshot``."""
    page = page.resolve()
    if not page.is_file():
        raise BrowserError(f"render_page: {page} does not exist")
    if not chromium_available():
        raise BrowserError(f"render_page: {CHROMIUM} is not installed: run ./bootstrap setup")
    screenshot = screenshot.resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="patchscope-chromium-") as profile:
        argv = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", page.as_uri()]
        # Its own session, so a timeout ends the browser's whole process tree, not only the launcher script.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise BrowserError(f"chromium did not render {page} within {timeout:.0f} s; it printed:\n"
                               + _tail(err)) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode} rendering {page}:\n  {' '.join(argv)}\n"
                           + _tail(err))
    if "<html" not in out.lower():
        raise BrowserError(f"chromium gave no DOM for {page} (exit 0); it printed:\n" + _tail(err))
    if not screenshot.is_file() or screenshot.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot at {screenshot}; it printed:\n" + _tail(err))
    return out


def _tail(err: str, lines: int = 20) -> str:
    useful = [line for line in err.splitlines() if line.strip() and not _noise(line)]
    return "\n".join(f"  {line}" for line in useful[-lines:]) or "  (nothing but desktop-session noise)"


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def png_colours(path: Path) -> set[tuple[int, int, int]]:
    """Every RGB colour of a screenshot (8-bit RGB or RGBA, not interlaced, as chromium writes them)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat = 8, bytearray()
    width = height = bpp = 0
    while pos < len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
            depth, ctype, interlace = body[8], body[9], body[12]
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError(f"{path}: PNG of depth {depth}, colour type {ctype}, interlace {interlace}: "
                                 "only 8-bit RGB(A), not interlaced, is read here")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind_, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind_ == 1:
            for x in range(bpp, stride):
                row[x] = (row[x] + row[x - bpp]) & 255
        elif kind_ == 2:
            row = bytearray((a + b) & 255 for a, b in zip(row, prev))
        elif kind_ == 3:
            for x in range(stride):
                row[x] = (row[x] + ((row[x - bpp] if x >= bpp else 0) + prev[x]) // 2) & 255
        elif kind_ == 4:
            for x in range(stride):
                a, b, c = (row[x - bpp] if x >= bpp else 0), prev[x], (prev[x - bpp] if x >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(zip(row[0::bpp], row[1::bpp], row[2::bpp]))
        prev = row
    return colours


# --------------------------------------------------------------------------- a small DOM, from the dumped HTML

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                  "wbr"})


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)
    parent: Node | None = field(default=None, repr=False)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        """This node and every element under it, in document order."""
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> list[Node]:
        """Elements under (and including) this one with the tag, the class and the attributes.

        ``data_cell="x"`` asks for ``data-cell="x"``; the value ``"*"`` only asks for the attribute.
        """
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.iter()
                if (tag is None or n.tag == tag) and (class_ is None or class_ in n.classes)
                and all(k in n.attrs and (v == "*" or n.attrs[k] == v) for k, v in want.items())]

    def find(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, class_=class_, **attrs)
        if not found:
            raise LookupError(f"no <{tag or '*'}> with class {class_!r} and {attrs} under <{self.tag}>")
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document")
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(markup: str) -> Node:
    """A tree of the HTML (as chromium serialises a DOM, or as the page is written)."""
    builder = _Builder()
    builder.feed(markup)
    builder.close()
    return builder.root
