"""A small reader for the kernel's ``.BTF`` section: enough to name ``pv_ops`` slots.

Format (``include/uapi/linux/btf.h``, ``Documentation/bpf/btf.rst``), all
little-endian on x86::

    struct btf_header { u16 magic = 0xeB9F; u8 version = 1; u8 flags;
                        u32 hdr_len; u32 type_off; u32 type_len; u32 str_off; u32 str_len; }

The type and string sections start ``hdr_len`` bytes into the section, at
``type_off`` and ``str_off``. Strings are NUL-terminated; a ``name_off`` is an
offset into the string section. Types are numbered from 1 in the order they
appear (0 is ``void``); each is a 12-byte ``struct btf_type``::

    u32 name_off; u32 info;          /* vlen: bits 0-15, kind: bits 24-28, kind_flag: bit 31 */
    u32 size_or_type;                /* size for INT/ENUM/STRUCT/UNION/DATASEC/FLOAT, else a type id */

followed by kind-specific data: INT, VAR and DECL_TAG one u32; ARRAY a 12-byte
``btf_array``; STRUCT/UNION ``vlen`` 12-byte ``btf_member {name_off, type,
offset}`` (with kind_flag set, ``offset`` = bitfield_size << 24 | bit_offset);
ENUM and FUNC_PROTO ``vlen`` 8-byte records; DATASEC and ENUM64 ``vlen``
12-byte records; PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT and
TYPE_TAG nothing. Reading means one pass over the type headers to find where
each type starts; kernel BTF holds ~100k types (the Debian 6.1 vmlinux: 4.3 MB).

``pv_ops`` slots: ``struct paravirt_patch_template`` (6.1:
``arch/x86/include/asm/paravirt_types.h``) groups the ops in member structs
(``cpu``, ``irq``, ``mmu``, ``lock``), whose members are function pointers or
one-pointer structs (``struct paravirt_callee_save { void *func; }``), and
sometimes nested groups (``mmu.lazy_mode.enter``). A ``.parainstructions``
entry's ``type`` is ``offsetof(struct paravirt_patch_template, op) / 8``, so
walking the members down to pointer-sized leaves names every slot:
slot = bit_offset / 64 -> ``"irq.save_fl"``. Names come from BTF, none is
hard-coded here.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError

MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO = 8, 9, 10, 11, 12, 13
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 16, 17, 18, 19

KIND_NAMES = ("UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST",
              "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64")

# Words (u32) after the 3-word header: a fixed part, and a part per vlen item.
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
_SIZED = frozenset({KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_DATASEC, KIND_FLOAT, KIND_ENUM64})

PV_TEMPLATE = "paravirt_patch_template"


@dataclass(frozen=True)
class Member:
    """One member of a BTF struct or union."""

    name: str            # "" for an anonymous member
    type_id: int
    bit_offset: int      # from the start of the enclosing struct
    bitfield_size: int   # 0 unless a bitfield


class Btf:
    """The types and strings of one ``.BTF`` blob (not split BTF)."""

    def __init__(self, data: bytes, where: str = ".BTF") -> None:
        self.where = where
        if len(data) < 24:
            raise ImageError(f"{where}: {len(data)} bytes is too short for a BTF header; is it a .BTF section?")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise ImageError(f"{where}: BTF magic is {magic:#06x}, expected {MAGIC:#06x} "
                             "(only little-endian BTF is read); is it a .BTF section?")
        if version != 1 or hdr_len < 24:
            raise ImageError(f"{where}: BTF version {version}, header {hdr_len} bytes: not a format this reader "
                             "knows (version 1, header >= 24 bytes)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data) or type_len % 4:
            raise ImageError(f"{where}: BTF header says types {t0}+{type_len}, strings {s0}+{str_len}, "
                             f"but the section has {len(data)} bytes; the file is truncated or not BTF")
        self._strings = bytes(data[s0:s0 + str_len])
        self._words = array("I")
        self._words.frombytes(bytes(data[t0:t0 + type_len]))
        if sys.byteorder != "little":
            self._words.byteswap()
        self._starts = self._index(self._words)

    @staticmethod
    def from_file(path: Path) -> Btf:
        """A raw BTF blob, e.g. ``/sys/kernel/btf/vmlinux``."""
        try:
            return Btf(path.read_bytes(), str(path))
        except OSError as err:
            raise ImageError(f"{path}: cannot read BTF: {err.strerror}") from err

    def _index(self, words: array[int]) -> array[int]:
        """Word index of each type's header; starts[0] is a placeholder for void."""
        starts = array("I", [0])
        append = starts.append
        fixed, per = _FIXED_WORDS, _VLEN_WORDS
        n = len(words)
        i = 0
        while i < n:
            append(i)
            if i + 3 > n:
                break
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind == 0 or kind >= len(fixed):
                raise ImageError(f"{self.where}: type {len(starts) - 1} has unknown BTF kind {kind}; "
                                 "the blob is corrupt or newer than this reader")
            i += 3 + fixed[kind] + per[kind] * (info & 0xFFFF)
        if i != n:
            raise ImageError(f"{self.where}: the last BTF type runs past the type section; the blob is corrupt")
        return starts

    def __len__(self) -> int:
        """Number of types, void not counted."""
        return len(self._starts) - 1

    def string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end if end >= 0 else None].decode("utf-8", "replace")

    def _head(self, type_id: int) -> tuple[int, int, int]:
        if not 0 < type_id < len(self._starts):
            raise ImageError(f"{self.where}: type id {type_id} out of range 1..{len(self)}")
        i = self._starts[type_id]
        w = self._words
        return i, w[i + 1], w[i + 2]

    def kind(self, type_id: int) -> int:
        return 0 if type_id == 0 else (self._head(type_id)[1] >> 24) & 0x1F

    def name(self, type_id: int) -> str:
        if type_id == 0:
            return "void"
        return self.string(self._words[self._head(type_id)[0]])

    def vlen(self, type_id: int) -> int:
        return self._head(type_id)[1] & 0xFFFF

    def ref(self, type_id: int) -> int:
        """The referred type of a PTR, TYPEDEF, modifier, FUNC or VAR; the element type of an ARRAY."""
        i, info, size_or_type = self._head(type_id)
        if (info >> 24) & 0x1F == KIND_ARRAY:
            return self._words[i + 3]
        return size_or_type

    def array_len(self, type_id: int) -> int:
        i, info, _ = self._head(type_id)
        if (info >> 24) & 0x1F != KIND_ARRAY:
            raise ImageError(f"{self.where}: type {type_id} is not an array")
        return self._words[i + 5]

    def resolve(self, type_id: int) -> int:
        """Skip typedef, const, volatile, restrict and type_tag."""
        for _ in range(64):
            if type_id == 0 or self.kind(type_id) not in _MODIFIERS:
                return type_id
            type_id = self.ref(type_id)
        raise ImageError(f"{self.where}: a typedef/modifier chain at type {type_id} does not end; the blob is corrupt")

    def size(self, type_id: int) -> int:
        """Size in bytes (pointers are 8: x86-64)."""
        type_id = self.resolve(type_id)
        if type_id == 0:
            return 0
        kind = self.kind(type_id)
        if kind in _SIZED:
            return self._head(type_id)[2]
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            return self.array_len(type_id) * self.size(self.ref(type_id))
        return 0

    def members(self, type_id: int) -> list[Member]:
        i, info, _ = self._head(type_id)
        kind = (info >> 24) & 0x1F
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise ImageError(f"{self.where}: type {type_id} is a {KIND_NAMES[kind]}, not a struct or union")
        kflag = info >> 31
        w = self._words
        out = []
        for j in range(i + 3, i + 3 + 3 * (info & 0xFFFF), 3):
            offset = w[j + 2]
            if kflag:
                out.append(Member(self.string(w[j]), w[j + 1], offset & 0xFFFFFF, offset >> 24))
            else:
                out.append(Member(self.string(w[j]), w[j + 1], offset, 0))
        return out

    def find(self, name: str, kind: int) -> int | None:
        """The first type of this kind and name (a STRUCT with members wins over an empty one)."""
        offsets = self._string_offsets(name)
        if not offsets:
            return None
        w = self._words
        found: int | None = None
        for type_id in range(1, len(self._starts)):
            i = self._starts[type_id]
            if w[i] in offsets and (w[i + 1] >> 24) & 0x1F == kind:
                if w[i + 1] & 0xFFFF or kind not in (KIND_STRUCT, KIND_UNION):
                    return type_id
                found = found or type_id
        return found

    def _string_offsets(self, name: str) -> set[int]:
        raw = name.encode()
        out = set()
        if self._strings.startswith(raw + b"\0"):
            out.add(0)
        needle = b"\0" + raw + b"\0"
        pos = self._strings.find(needle)
        while pos >= 0:
            out.add(pos + 1)
            pos = self._strings.find(needle, pos + 1)
        return out


def pv_op_names(btf: Btf) -> dict[int, str]:
    """pv_ops slot -> ``"group.member"`` from ``struct paravirt_patch_template``; {} when BTF lacks it."""
    top = btf.find(PV_TEMPLATE, KIND_STRUCT)
    if top is None:
        return {}
    names: dict[int, str] = {}
    _walk(btf, top, 0, "", names, 0)
    return names


def _walk(btf: Btf, struct_id: int, base_bits: int, prefix: str, out: dict[int, str], depth: int) -> None:
    if depth > 16:
        raise ImageError(f"{btf.where}: struct {PV_TEMPLATE} nests deeper than 16 levels; the BTF is corrupt")
    for m in btf.members(struct_id):
        bits = base_bits + m.bit_offset
        type_id = btf.resolve(m.type_id)
        if not m.name and btf.kind(type_id) in (KIND_STRUCT, KIND_UNION):
            _walk(btf, type_id, bits, prefix, out, depth + 1)     # anonymous: its members belong to this level
        else:
            _leaf(btf, type_id, bits, prefix + m.name, out, depth)


def _leaf(btf: Btf, type_id: int, bits: int, name: str, out: dict[int, str], depth: int) -> None:
    kind = btf.kind(type_id)
    if kind == KIND_PTR or (kind in (KIND_STRUCT, KIND_UNION) and btf.size(type_id) == 8):
        # A function pointer, or a one-pointer wrapper such as struct paravirt_callee_save.
        if bits % 64 == 0:
            out.setdefault(bits // 64, name)
    elif kind in (KIND_STRUCT, KIND_UNION):
        _walk(btf, type_id, bits, name + ".", out, depth + 1)
    elif kind == KIND_ARRAY:
        elem = btf.resolve(btf.ref(type_id))
        step = btf.size(elem) * 8
        for k in range(btf.array_len(type_id)):
            _leaf(btf, elem, bits + k * step, f"{name}[{k}]", out, depth + 1)


@dataclass(frozen=True)
class Field:
    """One member of a struct as laid out in memory: byte offset and size (bitfields: the bits in ``bits``)."""

    name: str
    offset: int          # bytes from the start of the struct (a bitfield: of the unit holding its first bit)
    size: int            # bytes; a bitfield: 0
    bits: tuple[int, int] | None = None    # a bitfield: (bit offset in the struct, width)


@dataclass(frozen=True)
class StructLayout:
    """A struct's size and its members, anonymous unions and structs flattened into their parent."""

    name: str
    size: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def struct_layout(btf: Btf, name: str) -> StructLayout | None:
    """``struct name`` from BTF (sizes and byte offsets of its members); None when BTF has no such struct.

    Members of anonymous unions and structs are listed as the parent's, as C
    lets code name them (``alt_instr.ft_flags`` and ``alt_instr.cpuid`` in 6.3+).
    """
    type_id = btf.find(name, KIND_STRUCT)
    if type_id is None or not btf.vlen(type_id):
        return None
    out: list[Field] = []
    _flatten(btf, type_id, 0, out, 0)
    return StructLayout(name, btf.size(type_id), tuple(out))


def _flatten(btf: Btf, struct_id: int, base_bits: int, out: list[Field], depth: int) -> None:
    if depth > 8:
        raise ImageError(f"{btf.where}: struct {btf.name(struct_id)} nests anonymous members deeper than 8 levels")
    for m in btf.members(struct_id):
        bits = base_bits + m.bit_offset
        type_id = btf.resolve(m.type_id)
        if not m.name and btf.kind(type_id) in (KIND_STRUCT, KIND_UNION):
            _flatten(btf, type_id, bits, out, depth + 1)
        elif m.bitfield_size:
            out.append(Field(m.name, bits // 8, 0, (bits, m.bitfield_size)))
        else:
            out.append(Field(m.name, bits // 8, btf.size(type_id)))
