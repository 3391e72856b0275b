"""A kernel module's ``.modinfo`` (name, depends, vermagic …) and the order to load modules in. Pure.

``modpost`` and ``MODULE_INFO()`` leave NUL-separated ``key=value`` strings in
the ``.modinfo`` section of every ``.ko`` (an ELF64 relocatable)::

    name=kvm_intel  depends=kvm  vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions
    license=GPL  alias=cpu:type:x86,ven*fam*mod*:feature:*0085*  parm=nested:bool …

:func:`modinfo` reads them with ``struct`` alone (no pyelftools: it runs over the
thousands of modules of a kernel package). Module names use ``_``; the file
``kvm-intel.ko`` holds the module ``kvm_intel`` (:func:`module_name`).

Debian's kernel packages carry no ``modules.dep`` (``depmod`` runs at install), so
the load order comes from ``depends=``: :func:`load_order` puts every module's
dependencies before it, each module once.
"""

from __future__ import annotations

import dataclasses
import difflib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ImageError, InputError

__all__ = ["KO_SUFFIXES", "ModuleError", "ModuleInfo", "info_of", "load_order", "modinfo", "module_name",
           "strip_ko_suffix"]

# A module file: plain, or compressed as kmod reads it (CONFIG_MODULE_COMPRESS_*).
KO_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_ET_REL = 1
_EM_X86_64 = 62
_SHT_NOBITS = 8
_SHN_XINDEX = 0xFFFF


class ModuleError(InputError):
    """Modules that cannot be put in a load order: an unknown name, a missing dependency, a cycle.

    ``wanted`` is the name the caller asked for that led to the error (to point at
    the config line that names it); ``reason`` the message without it.
    """

    def __init__(self, wanted: str, reason: str) -> None:
        self.wanted = wanted
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ModuleInfo:
    """One module: its name, where its file is, what it needs loaded first."""

    name: str                        # the kernel's name for it: "kvm_intel"
    path: str                        # where the file is (in the package, or on the host)
    depends: tuple[str, ...] = ()    # module names, from depends=
    vermagic: str | None = None      # "6.1.0-56-amd64 SMP preempt mod_unload modversions"
    softdeps: tuple[str, ...] = ()   # softdep=pre: … : modules (or aliases) modprobe loads first
    aliases: tuple[str, ...] = ()    # alias= without wildcards: "crc32c", "crypto-crc32c"


def strip_ko_suffix(filename: str) -> str | None:
    """``kvm-intel.ko.xz`` -> ``kvm-intel``; None when the name has none of :data:`KO_SUFFIXES`."""
    for suffix in KO_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[:-len(suffix)]
    return None


def module_name(text: str) -> str:
    """The kernel's spelling of a module name: ``-`` becomes ``_`` (kmod's ``modname_normalize``)."""
    return text.replace("-", "_")


def modinfo(data: bytes, name: str) -> dict[str, list[str]]:
    """The ``.modinfo`` entries of the ``.ko`` in ``data`` (``name`` names it in errors): key -> values in order.

    Keys that appear several times (``alias``, ``parm``) keep every value. A module
    without a ``.modinfo`` section gives ``{}``.
    """
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not an ELF file (a kernel module is an ELF64 relocatable)")
    ident = data[:16]
    if ident[4] != 2 or ident[5] != 1:
        raise ImageError(f"{name}: not a 64-bit little-endian ELF file, so not an x86-64 kernel module")
    (_, e_type, e_machine, _, _, _, e_shoff, _, _, _, _, e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(data)
    if e_type != _ET_REL:
        raise ImageError(f"{name}: ELF type {e_type}, not a relocatable (ET_REL), so not a kernel module")
    if e_machine != _EM_X86_64:
        raise ImageError(f"{name}: a module for ELF machine {e_machine}, not x86-64")
    if e_shoff == 0:
        raise ImageError(f"{name}: no section headers")
    if e_shentsize != _SHDR.size:
        raise ImageError(f"{name}: section header size {e_shentsize}, not {_SHDR.size}; the file is corrupt")

    def header(index: int) -> tuple[int, ...]:
        at = e_shoff + index * _SHDR.size
        if at + _SHDR.size > len(data):
            raise ImageError(f"{name}: section header {index} lies past the end of the "
                             f"{len(data)}-byte file; the file is truncated")
        return _SHDR.unpack_from(data, at)

    if e_shnum == 0 or e_shstrndx == _SHN_XINDEX:      # extended numbering: the real values in section 0
        first = header(0)
        e_shnum = e_shnum or first[5]
        e_shstrndx = first[6] if e_shstrndx == _SHN_XINDEX else e_shstrndx
    if e_shstrndx >= e_shnum:
        raise ImageError(f"{name}: the section name table index {e_shstrndx} is out of range ({e_shnum} sections)")

    def contents(hdr: tuple[int, ...], what: str) -> bytes:
        sh_type, offset, size = hdr[1], hdr[4], hdr[5]
        if sh_type == _SHT_NOBITS:
            return b""
        if offset + size > len(data):
            raise ImageError(f"{name}: section {what} lies past the end of the {len(data)}-byte file; "
                             "the file is truncated")
        return data[offset:offset + size]

    names = contents(header(e_shstrndx), "name table")
    for index in range(e_shnum):
        hdr = header(index)
        start = hdr[0]
        end = names.find(b"\0", start)
        if start >= len(names) or names[start:end if end >= 0 else None] != b".modinfo":
            continue
        out: dict[str, list[str]] = {}
        for entry in contents(hdr, ".modinfo").split(b"\0"):
            key, eq, value = entry.partition(b"=")
            if eq and key:
                out.setdefault(key.decode("ascii", "replace"), []).append(value.decode("utf-8", "replace"))
        return out
    return {}


def info_of(data: bytes, path: str, fallback_name: str) -> ModuleInfo:
    """A :class:`ModuleInfo` from a ``.ko``'s bytes; ``fallback_name`` when it has no ``name=`` (older kernels)."""
    entries = modinfo(data, path)
    name = next(iter(entries.get("name", [])), "") or fallback_name
    depends = tuple(module_name(d) for value in entries.get("depends", []) for d in value.split(",") if d)
    vermagic = next(iter(entries.get("vermagic", [])), None)
    return ModuleInfo(module_name(name), path, depends, vermagic, soft_pre(entries.get("softdep", [])),
                      tuple(a for a in entries.get("alias", []) if not any(c in a for c in "*?[:")))


def soft_pre(values: Sequence[str]) -> tuple[str, ...]:
    """The ``pre:`` names of ``softdep=`` values (``"pre: crc32c post: foo"`` -> ``("crc32c",)``)."""
    out: list[str] = []
    for value in values:
        part = None
        for word in value.split():
            if word.endswith(":"):
                part = word[:-1]
            elif part == "pre":
                out.append(word)
    return tuple(out)


def with_softdeps(index: Mapping[str, ModuleInfo]) -> dict[str, ModuleInfo]:
    """``index`` with each module's soft pre-dependencies added to its dependencies, as modprobe loads
    them: by module name, else by alias (the first module in name order that declares it); a softdep
    that nothing provides (built in, or absent) is left out. libcrc32c needs crc32c this way."""
    providers: dict[str, str] = {}
    for name in sorted(index):
        for alias in index[name].aliases:
            providers.setdefault(alias, name)
    out = dict(index)
    for name, info in index.items():
        extra = []
        for soft in info.softdeps:
            found = module_name(soft) if module_name(soft) in index else providers.get(soft)
            if found and found != name and found not in info.depends and found not in extra:
                extra.append(found)
        if extra:
            out[name] = dataclasses.replace(info, depends=(*extra, *info.depends))
    return out


def load_order(index: Mapping[str, ModuleInfo], wanted: Sequence[str], holder: str = "") -> list[str]:
    """The modules to load for ``wanted``, dependencies first, each once, the order of ``wanted`` kept otherwise.

    Names may use ``-`` or ``_``. An unknown name, a dependency ``index`` does not
    hold or a dependency cycle is a :class:`ModuleError` naming the wanted module
    that led to it (with a close match for an unknown name); ``holder`` says what
    ``index`` is, for those messages ("linux-image-6.1.0-56-amd64 6.1.192-2").
    """
    where = f" in {holder}" if holder else ""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, root: str, chain: list[str]) -> None:
        if name in done:
            return
        if name in chain:
            cycle = " -> ".join(chain[chain.index(name):] + [name])
            raise ModuleError(root, f"module {root!r}: its dependencies form a cycle ({cycle})")
        info = index.get(name)
        if info is None:
            if not chain:
                close = difflib.get_close_matches(name, list(index), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ModuleError(root, f"no module {name!r}{where}{hint}")
            raise ModuleError(root, f"module {chain[-1]!r} depends on {name!r}, which is not{where or ' there'}"
                                    + (f" (needed by {root!r})" if chain[-1] != root else ""))
        chain.append(name)
        for dep in info.depends:
            visit(module_name(dep), root, chain)
        chain.pop()
        done.add(name)
        order.append(name)

    for raw in wanted:
        name = module_name(raw)
        visit(name, name, [])
    return order
