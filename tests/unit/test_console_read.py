"""A console log read a chunk at a time gives exactly the lines of the whole text (issue 15: check of a 200 MB
log held the text and its lines at once, 4x the file)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from framework.analysis.console_log import parse_log, read_console_file, texts

# every line break str.splitlines knows, halves of "\r\n", a timed console.log line, and plain text
PIECES = st.sampled_from(["a", "é", " ", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85",
                          "\u2028", "\u2029", "   1.250 | [    0.000000] Linux version 6.1", "\x00", "\ufffd"])


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=120).map("".join), st.sampled_from([1, 2, 3, 5, 64, 1 << 20]))
def test_chunked_reading_splits_as_splitlines(text: str, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.log"
        path.write_text(text, encoding="utf-8", newline="")
        log, lines = read_console_file(path, chunk), parse_log(text)
        assert log == lines
        # read by index, from the end, and as a text view: the same lines
        assert [log[i] for i in range(len(log))] == lines and [log[-i] for i in range(1, len(log) + 1)] == lines[::-1]
        assert list(texts(log)) == [t for _, t in lines] and list(texts(log)[:3]) == [t for _, t in lines[:3]]


def test_undecodable_bytes_are_replaced_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"ok\n\xff\xfe bad\r\nend")
    assert read_console_file(path, 2) == [(None, "ok"), (None, "\ufffd\ufffd bad"), (None, "end")]
