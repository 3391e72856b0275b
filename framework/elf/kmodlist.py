"""The kernel's list of loaded modules, walked through any memory reader, with struct layouts from BTF. Pure.

``kernel/module/main.c`` keeps every module on ``static LIST_HEAD(modules)``
through ``struct module.list``. For each one this reads (6.1 and 6.12 alike;
every offset from the kernel's BTF, never assumed)::

    struct module {
        enum module_state state;        /* 0 LIVE, 1 COMING, 2 GOING, 3 UNFORMED */
        struct list_head list;
        char name[MODULE_NAME_LEN];
        ...
        struct module_sect_attrs *sect_attrs;     /* /sys/module/<name>/sections/ */
        ...
        void __percpu *percpu;
    };
    struct module_sect_attrs { struct attribute_group grp; unsigned int nsections;
                               struct module_sect_attr attrs[]; };
    struct module_sect_attr  { struct bin_attribute battr;    /* battr.attr.name: ".text" */
                               unsigned long address; };

``sect_attrs`` lists every allocated, non-empty section the loader placed
(``add_sect_attrs``), init sections included: their memory is freed once the
module's init returned, the addresses stay.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ImageError
from . import btf as btf_mod

MODULE_STATES = {0: "live", 1: "coming", 2: "going", 3: "unformed"}
MAX_MODULES = 10_000
MAX_SECTIONS = 4_096
Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class ModuleLayout:
    """Byte offsets (and sizes) of what the walk reads, from BTF."""

    state: int
    list: int
    name: int
    name_size: int
    sect_attrs: int
    percpu: int
    nsections: int
    attrs: int
    attr_size: int
    attr_name: int       # module_sect_attr.battr.attr.name
    attr_address: int


def _field(layout: btf_mod.StructLayout | None, struct_name: str, name: str, where: str) -> btf_mod.Field:
    got = layout.field(name) if layout is not None else None
    if got is None:
        raise ImageError(f"{where}: BTF has no struct {struct_name} with a member {name!r}; "
                         "loaded modules cannot be found in this kernel")
    return got


def module_layout(btf: btf_mod.Btf | None, where: str) -> ModuleLayout:
    """The offsets of :class:`ModuleLayout` from the kernel's BTF (ImageError, one line, when they are not there)."""
    if btf is None:
        raise ImageError(f"{where}: no .BTF, so struct module's layout is unknown; loaded modules cannot be read")
    module = btf_mod.struct_layout(btf, "module")
    attrs = btf_mod.struct_layout(btf, "module_sect_attrs")
    attr = btf_mod.struct_layout(btf, "module_sect_attr")
    battr = btf_mod.struct_layout(btf, "bin_attribute")
    attribute = btf_mod.struct_layout(btf, "attribute")
    name = _field(module, "module", "name", where)
    return ModuleLayout(
        state=_field(module, "module", "state", where).offset, list=_field(module, "module", "list", where).offset,
        name=name.offset, name_size=name.size, sect_attrs=_field(module, "module", "sect_attrs", where).offset,
        percpu=_field(module, "module", "percpu", where).offset,
        nsections=_field(attrs, "module_sect_attrs", "nsections", where).offset,
        attrs=_field(attrs, "module_sect_attrs", "attrs", where).offset,
        attr_size=attr.size if attr is not None else 0,
        attr_name=_field(attr, "module_sect_attr", "battr", where).offset
        + _field(battr, "bin_attribute", "attr", where).offset + _field(attribute, "attribute", "name", where).offset,
        attr_address=_field(attr, "module_sect_attr", "address", where).offset)


@dataclass(frozen=True)
class LoadedModule:
    name: str
    address: int                         # of its struct module
    state: str
    sections: dict[str, int]             # section name -> run-time address
    percpu: int | None


def _u64(read: Read, address: int) -> int:
    return int(struct.unpack("<Q", read(address, 8))[0])


def _c_string(read: Read, address: int, limit: int) -> str:
    raw = read(address, limit).split(b"\0", 1)[0]
    return raw.decode("ascii", "replace")


def walk(read: Read, head: int, layout: ModuleLayout) -> list[LoadedModule]:
    """Every module on the list at ``head`` (the ``modules`` symbol), in list order (newest first)."""
    out: list[LoadedModule] = []
    node = _u64(read, head)
    while node != head:
        if len(out) >= MAX_MODULES or not node:
            raise ImageError(f"the module list at {head:#x} does not come back to its head after {len(out)} "
                             "entries; is 'modules' the kernel's list of modules?")
        mod = node - layout.list
        name = _c_string(read, mod + layout.name, layout.name_size)
        state = int.from_bytes(read(mod + layout.state, 4), "little")
        sections: dict[str, int] = {}
        attrs = _u64(read, mod + layout.sect_attrs)
        if attrs:
            n = int.from_bytes(read(attrs + layout.nsections, 4), "little")
            if n > MAX_SECTIONS:
                raise ImageError(f"module {name}: {n} sections in sect_attrs; the layout does not fit this kernel")
            for i in range(n):
                entry = attrs + layout.attrs + i * layout.attr_size
                sec_name = _c_string(read, _u64(read, entry + layout.attr_name), 64)
                sections[sec_name] = _u64(read, entry + layout.attr_address)
        percpu = _u64(read, mod + layout.percpu) or None
        out.append(LoadedModule(name, mod, MODULE_STATES.get(state, str(state)), sections, percpu))
        node = _u64(read, node)
    return out
