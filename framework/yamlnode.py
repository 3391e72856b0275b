"""YAML read as a node tree against a schema, so every error names its file and line.

The generic engine under test configs (:mod:`framework.config`) and scenario rules
(:mod:`framework.scenario.parse`); it knows nothing of either. A :class:`Section` maps
known keys to parsers (or nested sections); a parser turns the node under its key into
a value or raises :class:`~framework.errors.ConfigError` at that node's line. Another
YAML file is read the same way::

    from framework import yamlnode as yn

    RECIPE = yn.Section({"name": yn.text("a name such as 'debian-6.1'", pattern=r"[a-z0-9.-]+"),
                         "timeout": yn.seconds,
                         "build": yn.Section({"targets": yn.words("a list of targets", split=True)})})

    ctx = yn.Ctx(path, path.parent, RECIPE)
    root = yn.parse_yaml(ctx, yn.read_text(path, 64 * 1024), kind="recipe", limit=64 * 1024)
    values = yn.read_section(ctx, root, RECIPE)   # {"name": ..., "build": {"targets": (...)}}; ctx.lines: key -> line
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar, cast

import yaml

from .errors import ConfigError

__all__ = [
    "TAG_BOOL",
    "TAG_FLOAT",
    "TAG_INT",
    "TAG_MAP",
    "TAG_NULL",
    "TAG_SEQ",
    "TAG_STR",
    "TAG_TIMESTAMP",
    "Ctx",
    "Parser",
    "Section",
    "choice",
    "compile_regex",
    "count",
    "describe",
    "flag",
    "get",
    "int_value",
    "is_list",
    "is_mapping",
    "is_null",
    "items",
    "keep",
    "line_of",
    "mappings",
    "mib",
    "names",
    "node_at",
    "number",
    "optional_regex",
    "parse_yaml",
    "quote",
    "read_section",
    "read_text",
    "regex",
    "regexes",
    "scalar_text",
    "seconds",
    "suggest",
    "text",
    "whole",
    "words",
]

_TAG = "tag:yaml.org,2002:"
TAG_NULL, TAG_BOOL, TAG_INT, TAG_FLOAT, TAG_STR = (_TAG + t for t in ("null", "bool", "int", "float", "str"))
TAG_MAP, TAG_SEQ, _TAG_MERGE, TAG_TIMESTAMP = (_TAG + t for t in ("map", "seq", "merge", "timestamp"))
# Scalars whose text may be used as a string value ("kernel: 6.10" is the text "6.10").
_TEXT_TAGS = frozenset({TAG_STR, TAG_INT, TAG_FLOAT, TAG_BOOL, TAG_TIMESTAMP})
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


# --------------------------------------------------------------------------- nodes


def line_of(node: yaml.Node) -> int | None:
    """The node's 1-based line, or None for a node that was not read from text."""
    mark = node.start_mark
    return mark.line + 1 if mark is not None else None


def quote(text: str) -> str:
    """A user's text for a one-line message: quoted, escaped, not too long."""
    if len(text) > 60:
        return repr(text[:57]) + "..."
    return repr(text)


def describe(node: yaml.Node) -> str:
    """What a node is, for "must be X, not …" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping" if node.tag == TAG_MAP else f"a mapping tagged {quote(node.tag)}"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.tag == TAG_SEQ else f"a list tagged {quote(node.tag)}"
    if node.tag == TAG_NULL:
        return "empty" if node.value == "" else "null"
    return quote(str(node.value))


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == TAG_NULL


def is_mapping(node: yaml.Node) -> bool:
    """A plain (untagged) mapping."""
    return isinstance(node, yaml.MappingNode) and node.tag == TAG_MAP


def is_list(node: yaml.Node) -> bool:
    """A plain (untagged) list."""
    return isinstance(node, yaml.SequenceNode) and node.tag == TAG_SEQ


def int_value(node: yaml.ScalarNode) -> int:
    """The integer of an int-tagged scalar (0x hex, 0o octal, underscores …); ValueError if it has none."""
    return int(_CONSTRUCTOR.construct_yaml_int(node))


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Ctx:
    """Where values come from: error source, base directory, the document's schema and the lines seen.

    ``schema`` is the whole document's, so that an unknown key can be pointed to the
    section it belongs in; ``lines`` maps each dotted key read ("expect.outcome",
    "cmdline[2]") to its line.
    """

    def __init__(self, source: Path | str | None, base_dir: Path, schema: Section | None = None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.schema = schema
        self.lines: dict[str, int] = {}

    def fail(self, where: yaml.Node | int | None, reason: str) -> ConfigError:
        """The error to raise: at the node's line (or the given line), on one line."""
        line = line_of(where) if isinstance(where, yaml.Node) else where
        return ConfigError(self.source, line, " ".join(reason.splitlines()))

    def note(self, key: str, node: yaml.Node) -> None:
        line = line_of(node)
        if line is not None:
            self.lines[key] = line


# --------------------------------------------------------------------------- value parsers
#
# A parser turns the node under one key into a Python value or raises ConfigError
# at that node's line. ``key`` is the dotted name used in messages.

Parser = Callable[[Ctx, yaml.Node, str], object]


def scalar_text(ctx: Ctx, node: yaml.Node, key: str, what: str) -> str:
    """The text of a non-null scalar, whatever YAML type it resolved to."""
    if isinstance(node, yaml.ScalarNode) and node.tag not in _TEXT_TAGS and node.tag != TAG_NULL:
        raise ctx.fail(node, f"{key}: unsupported YAML tag {quote(node.tag)}")
    if not isinstance(node, yaml.ScalarNode) or node.tag == TAG_NULL:
        raise ctx.fail(node, f"{key} must be {what}, not {describe(node)}")
    value = str(node.value)
    if "\0" in value:
        raise ctx.fail(node, f"{key} contains a NUL character")
    return value


def text(what: str, *, pattern: str | None = None, optional: bool = False) -> Parser:
    """One line of text, non-empty, matching ``pattern`` if given."""
    def parse(ctx: Ctx, node: yaml.Node, key: str) -> str | None:
        if optional and is_null(node):
            return None
        value = scalar_text(ctx, node, key, what)
        if "\n" in value or "\r" in value:
            raise ctx.fail(node, f"{key} must be a single line, not {quote(value)}")
        if value == "" or (pattern is not None and re.fullmatch(pattern, value) is None):
            raise ctx.fail(node, f"{key} must be {what}, not {quote(value)}")
        return value
    return parse


def choice(options: Sequence[str]) -> Parser:
    """One of ``options``, with a did-you-mean."""
    def parse(ctx: Ctx, node: yaml.Node, key: str) -> str:
        what = "one of " + ", ".join(options)
        value = scalar_text(ctx, node, key, what)
        if value not in options:
            raise ctx.fail(node, f"{key} must be {what}, not {quote(value)}"
                                 + suggest(value, options))
        return value
    return parse


def number(node: yaml.Node) -> float | None:
    """A finite number from an int or float scalar (or plain text like 1e3), else None."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        if node.tag == TAG_INT:
            value = float(_CONSTRUCTOR.construct_yaml_int(node))
        elif node.tag == TAG_FLOAT:
            value = float(_CONSTRUCTOR.construct_yaml_float(node))
        elif node.tag == TAG_STR and node.style is None:
            value = float(str(node.value).replace("_", ""))
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def seconds(ctx: Ctx, node: yaml.Node, key: str) -> float:
    """A positive number of seconds, fractional allowed."""
    value = number(node)
    if value is None or value <= 0:
        raise ctx.fail(node, f"{key} must be a positive number of seconds, not {describe(node)}")
    return value


def whole(node: yaml.Node) -> int | None:
    """A whole number from an int scalar or plain digits, else None."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        if node.tag == TAG_INT:
            return int_value(node)
        if node.tag == TAG_STR and node.style is None and re.fullmatch(r"[0-9]+", str(node.value)):
            return int(str(node.value))
    except ValueError:
        pass
    return None


def flag(ctx: Ctx, node: yaml.Node, key: str) -> bool:
    """true or false."""
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_BOOL:
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))
    raise ctx.fail(node, f"{key} must be true or false, not {describe(node)}")


def count(ctx: Ctx, node: yaml.Node, key: str) -> int:
    """A whole number >= 1."""
    value = whole(node)
    if value is None or value < 1:
        raise ctx.fail(node, f"{key} must be a whole number >= 1, not {describe(node)}")
    return value


_MIB_RE = re.compile(r"\s*([0-9]+)\s*(?:([MG])(?:i?B)?)?\s*", re.IGNORECASE)


def mib(*, optional: bool = False) -> Parser:
    """A size in MiB: 512, "512M" or "1G"."""
    def parse(ctx: Ctx, node: yaml.Node, key: str) -> int | None:
        if optional and is_null(node):
            return None
        value = whole(node)
        if value is None and isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR:
            match = _MIB_RE.fullmatch(str(node.value))
            if match is not None and len(match.group(1)) < 12:
                scale = 1024 if (match.group(2) or "M").upper() == "G" else 1
                value = int(match.group(1)) * scale
        if value is None or value < 1:
            raise ctx.fail(node, f"{key} must be a positive size in MiB like 512, '512M' or '1G', "
                                 f"not {describe(node)}")
        return value
    return parse


def items(ctx: Ctx, node: yaml.Node, key: str, what: str,
          split: bool) -> list[tuple[str, yaml.Node, str]]:
    """(key of item, node, text) for a list of strings; a single string when ``split``."""
    if is_null(node):
        return []
    if isinstance(node, yaml.ScalarNode) and split:
        value = scalar_text(ctx, node, key, what)
        return [(key, node, word) for word in value.split()]
    if not is_list(node):
        raise ctx.fail(node, f"{key} must be {what}, not {describe(node)}")
    out = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        value = scalar_text(ctx, item, item_key, "a string")
        if value == "":
            raise ctx.fail(item, f"{item_key} is empty")
        out.append((item_key, item, value))
    return out


def words(what: str, *, split: bool, check: Callable[[Ctx, yaml.Node, str, str], None] | None
          = None) -> Parser:
    """A list of strings (one string split on whitespace when ``split``), each passed to ``check``."""
    def parse(ctx: Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
        found = items(ctx, node, key, what, split)
        if check is not None:
            for item_key, item, value in found:
                check(ctx, item, item_key, value)
        return tuple(value for _, _, value in found)
    return parse


def names(what: str, check: Callable[[str], str | None]) -> Parser:
    """A name or a list of names, without repeats; ``check`` returns a reason to refuse one."""
    def parse(ctx: Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
        out: list[str] = []
        for item_key, item, value in items(ctx, node, key, what, split=True):
            reason = check(value)
            if reason is not None:
                raise ctx.fail(item, f"{item_key}: {reason}")
            if value in out:
                raise ctx.fail(item, f"{item_key}: {quote(value)} is listed twice")
            out.append(value)
        if not out:
            raise ctx.fail(node, f"{key} must be {what}, not {describe(node)}")
        return tuple(out)
    return parse


def compile_regex(ctx: Ctx, node: yaml.Node, key: str, pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled; an empty one is refused (it would match anything)."""
    if pattern == "":
        raise ctx.fail(node, f"{key}: the regex is empty, so it matches anything; "
                             "write '.*' if that is what you mean")
    try:
        with warnings.catch_warnings():  # FutureWarnings about set syntax are not errors here
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(pattern)
    except re.error as err:
        raise ctx.fail(node, f"{key}: bad regex {quote(pattern)}: {err}") from None
    except (RecursionError, OverflowError, ValueError) as err:  # absurdly nested or large
        raise ctx.fail(node, f"{key}: bad regex {quote(pattern)}: {type(err).__name__}") from None


def regexes(ctx: Ctx, node: yaml.Node, key: str) -> tuple[re.Pattern[str], ...]:
    """A list of regexes, or a single one."""
    if isinstance(node, yaml.ScalarNode) and not is_null(node):
        return (compile_regex(ctx, node, key, scalar_text(ctx, node, key, "a regex")),)
    found = items(ctx, node, key, "a list of regexes", split=False)
    return tuple(compile_regex(ctx, item, item_key, value) for item_key, item, value in found)


def regex(ctx: Ctx, node: yaml.Node, key: str) -> re.Pattern[str]:
    return compile_regex(ctx, node, key, scalar_text(ctx, node, key, "a regex"))


def optional_regex(ctx: Ctx, node: yaml.Node, key: str) -> re.Pattern[str] | None:
    """A regex, or None when empty."""
    if is_null(node):
        return None
    return compile_regex(ctx, node, key, scalar_text(ctx, node, key, "a regex"))


def keep(ctx: Ctx, node: yaml.Node, key: str) -> yaml.Node:
    """The node itself, for values whose checks depend on other keys (see :func:`node_at`)."""
    return node


def node_at(values: Mapping[str, object], key: str) -> yaml.Node | None:
    """The node a :func:`keep` key holds in ``read_section``'s values, or None when absent."""
    return cast(yaml.Node | None, values.get(key))


T = TypeVar("T")


def get(values: Mapping[str, object], key: str, default: T) -> T:
    """``values[key]`` as the type of ``default``, or ``default`` when the key is absent."""
    return cast(T, values.get(key, default))


def mappings(ctx: Ctx, node: yaml.Node, key: str, listing: str, example: str) -> Iterator[tuple[str, yaml.Node]]:
    """``(key[i], item)`` of a list of mappings; the errors name the list or the item."""
    if not is_list(node):
        raise ctx.fail(node, f"{key} must be a list {listing}, not {describe(node)}")
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        if not is_mapping(item):
            raise ctx.fail(item, f"{item_key} must be a mapping such as {example}, not {describe(item)}")
        yield item_key, item


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Section:
    """A mapping with known keys; each value is a parser or a nested section."""

    keys: Mapping[str, Parser | Section]

    @cached_property
    def dotted_keys(self) -> tuple[str, ...]:
        """Every key of this section and the sections nested in it, dotted ("qemu.memory")."""
        out: list[str] = []
        for key, rule in self.keys.items():
            out.append(key)
            if isinstance(rule, Section):
                out.extend(f"{key}.{inner}" for inner in rule.dotted_keys)
        return tuple(out)


def _unknown_key(key: str, section: Section, prefix: str, hints: Mapping[str, str] | None,
                 everywhere: Sequence[str]) -> str:
    where = f" in {prefix[:-1]}" if prefix else ""
    message = f"unknown key {quote(key)}{where}"
    if hints is not None and key in hints:
        return f"{message} ({hints[key]})"
    elsewhere = [path for path in everywhere if path.rsplit(".", 1)[-1] == key]
    if elsewhere:
        parent = elsewhere[0].rsplit(".", 1)[0] if "." in elsewhere[0] else "the top level"
        return f"{message} (did you mean {elsewhere[0]!r}? it belongs under {parent})"
    close = difflib.get_close_matches(key, list(section.keys), n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    return f"{message} (valid keys: {', '.join(section.keys)})"


def read_section(ctx: Ctx, node: yaml.Node, section: Section, prefix: str = "",
                 hints: Mapping[str, str] | None = None) -> dict[str, object]:
    """Parse a mapping node against a section; returns {key: value} for the keys present.

    ``prefix`` is the dotted path of the section with a trailing dot ("" at the top);
    ``hints`` says where keys that are not in the section belong instead. An empty
    node is an empty mapping. Nested sections give nested dicts.
    """
    if is_null(node):
        return {}
    if not is_mapping(node):
        where = prefix[:-1] if prefix else "the document"
        raise ctx.fail(node, f"{where} must be a mapping of keys, not {describe(node)}")
    everywhere = ctx.schema.dotted_keys if ctx.schema is not None else ()
    values: dict[str, object] = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _TAG_MERGE:
            raise ctx.fail(key_node, "YAML merge keys (<<) are not supported; write the keys out")
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == TAG_NULL:
            raise ctx.fail(key_node, f"keys must be plain names, not {describe(key_node)}")
        key = str(key_node.value)
        dotted = prefix + key
        if key in values:
            first = ctx.lines.get(dotted)
            again = f" (first at line {first})" if first is not None else ""
            raise ctx.fail(key_node, f"duplicate key {quote(dotted)}{again}")
        rule = section.keys.get(key)
        if rule is None:
            raise ctx.fail(key_node, _unknown_key(key, section, prefix, hints, everywhere))
        ctx.note(dotted, key_node)
        if isinstance(rule, Section):
            values[key] = read_section(ctx, value_node, rule, dotted + ".")
        else:
            values[key] = rule(ctx, value_node, dotted)
    return values


# --------------------------------------------------------------------------- text to nodes


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in ("a", "e", "i", "o", "u") else "a ") + noun


def _yaml_error(ctx: Ctx, source: str, err: yaml.YAMLError) -> ConfigError:
    if isinstance(err, yaml.reader.ReaderError):
        line = source.count("\n", 0, err.position) + 1
        column = err.position - source.rfind("\n", 0, err.position)
        return ctx.fail(line, f"not valid YAML: character U+{err.character:04X} is not allowed "
                              f"(line {line}, column {column})")
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        reason = f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
        if err.context:
            cmark = err.context_mark
            where = f" (line {cmark.line + 1}, column {cmark.column + 1})" if cmark else ""
            reason = f"{err.context}{where}: {reason}"
        if "'\\t'" in str(err.problem):
            reason += "; indent with spaces, not tabs"
        return ctx.fail(mark.line + 1, f"not valid YAML: {reason}")
    return ctx.fail(1, f"not valid YAML: {' '.join(str(err).split())}")


def parse_yaml(ctx: Ctx, source: str, *, kind: str, limit: int, if_empty: str = "") -> yaml.Node:
    """The root node of YAML text (``yaml.compose``: nodes keep their lines); errors name ``ctx.source``.

    ``kind`` names the document in messages ("config"); text longer than ``limit``
    characters (a multiple of 1 KiB) is refused; ``if_empty`` is the fix shown for an empty document.
    """
    if len(source) > limit:
        raise ctx.fail(None, f"{kind} is {len(source)} characters long; the limit is "
                             f"{limit // 1024} KiB (is this the right file?)")
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(ctx, source, err) from None
    except RecursionError:
        raise ctx.fail(1, f"not valid YAML for {_a(kind)}: nested too deeply") from None
    if root is None or is_null(root):
        what = "empty" if root is None else f"only {quote(str(root.value) or '---')}, a YAML null"
        raise ctx.fail(1, f"{kind} is {what}" + (f"; {if_empty}" if if_empty else ""))
    _refuse_lone_surrogates(ctx, root, kind)
    return root


def _refuse_lone_surrogates(ctx: Ctx, root: yaml.Node, kind: str) -> None:
    """YAML's "\\ud800" escapes make str values no encoder takes (QEMU's argv, the console, a file): the first one
    is refused at its line, before anything uses it."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:     # aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            bad = next((ch for ch in str(node.value) if "\ud800" <= ch <= "\udfff"), None)
            if bad is not None:
                raise ctx.fail(node, f"{kind} holds a lone surrogate \\u{ord(bad):04x} in "
                                     f"{quote(str(node.value).encode('utf-8', 'backslashreplace').decode())}: "
                                     "an escape of half a character, which no program can be given; write the "
                                     "character itself (or its \\U0001xxxx escape)")
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += list(node.value)


def read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped), at most ``limit`` bytes (a multiple of 1 KiB)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise ConfigError(path, None, f"cannot read: {err.strerror or err}") from None
    if len(data) > limit:
        raise ConfigError(path, None, f"cannot read: the file is larger than the "
                                      f"{limit // 1024} KiB limit (is this the right file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ConfigError(path, line, f"not UTF-8 text: byte 0x{data[err.start]:02x} "
                                      f"(line {line}, column {column})") from None
