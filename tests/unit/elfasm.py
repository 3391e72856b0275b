"""Small real ELF files for the tests, built from assembly with binutils (``as``, ``ld``).

``build_elf(tmp_path, asm)`` assembles ``asm`` with ``as --64`` and links it
with ``ld`` and a linker script that lays sections out like a vmlinux
(``arch/x86/kernel/vmlinux.lds.S``): ``.text`` at 0xffffffff81000000,
``.rodata`` at 0xffffffff82000000 holding ``__jump_table`` between
``__start___jump_table``/``__stop___jump_table``, ``.data``, then the init
part with ``.init.text``, ``.init.data`` (``__mcount_loc`` between
``__start_mcount_loc``/``__stop_mcount_loc``), ``.parainstructions``,
``.retpoline_sites``, ``.return_sites``, ``.altinstructions``,
``.altinstr_replacement`` and a page-aligned and page-padded ``.smp_locks``;
``.static_call_sites`` is inside ``.rodata`` between ``__start_static_call_sites``
and ``__stop_static_call_sites`` (``OWN_STATIC_CALL_SECTION_LDS``: a section
of its own). The tests skip, with the reason, when binutils
is not installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

KERNEL_LDS = """\
OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(_stext)
SECTIONS
{
  . = 0xffffffff81000000;
  .text : { _stext = .; *(.text) *(.noinstr.text) *(.text.*) _etext = .; }
  . = 0xffffffff82000000;
  .rodata : {
    *(.rodata) *(.rodata.*)
    . = ALIGN(8);
    __start___jump_table = .; KEEP(*(__jump_table)) __stop___jump_table = .;
    . = ALIGN(8);
    __start_static_call_sites = .; KEEP(*(.static_call_sites)) __stop_static_call_sites = .;
  }
  . = ALIGN(0x1000);
  .BTF : { KEEP(*(.BTF)) }
  . = 0xffffffff82a00000;
  .data : { *(.data) }
  . = 0xffffffff83000000;
  .init.text : { _sinittext = .; *(.init.text) _einittext = .; }
  . = ALIGN(0x1000);
  .init.data : { *(.init.data) . = ALIGN(8); __start_mcount_loc = .; KEEP(*(__mcount_loc)) __stop_mcount_loc = .; }
  . = ALIGN(8);
  .parainstructions : { __parainstructions = .; KEEP(*(.parainstructions)) __parainstructions_end = .; }
  .retpoline_sites : { KEEP(*(.retpoline_sites)) }
  . = ALIGN(8);
  .return_sites : { KEEP(*(.return_sites)) }
  .altinstructions : { KEEP(*(.altinstructions)) }
  .altinstr_replacement : { KEEP(*(.altinstr_replacement)) }
  /* STATIC_CALL_SECTION */
  . = ALIGN(0x1000);
  .smp_locks : { __smp_locks = .; KEEP(*(.smp_locks)) . = ALIGN(0x1000); __smp_locks_end = .; }
  .bss : { *(.bss) }
  /DISCARD/ : { *(.note.gnu.property) *(.comment) }
}
"""


# The same layout with .static_call_sites as a section of its own instead of inside .rodata.
OWN_STATIC_CALL_SECTION_LDS = KERNEL_LDS.replace(
    "__start_static_call_sites = .; KEEP(*(.static_call_sites)) __stop_static_call_sites = .;", "").replace(
    "/* STATIC_CALL_SECTION */", ". = ALIGN(8);\n  .static_call_sites : { KEEP(*(.static_call_sites)) }")


def binutils_missing() -> str | None:
    """Why ELF files cannot be built here, or None when they can."""
    missing = [tool for tool in ("as", "ld") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install binutils)"
    return None


def require_binutils() -> None:
    reason = binutils_missing()
    if reason:
        pytest.skip(reason)


def build_elf(tmp_path: Path, asm: str, name: str = "vmlinux", script: str = KERNEL_LDS,
              strip_symbols: bool = False) -> Path:
    """Assemble and link ``asm``; the path of the linked ELF (``strip_symbols``: no .symtab, like Debian's)."""
    require_binutils()
    src, obj, lds, out = (tmp_path / f"{name}{ext}" for ext in (".s", ".o", ".lds", ""))
    src.write_text(asm)
    lds.write_text(script)
    _run(["as", "--64", "-o", str(obj), str(src)])
    cmd = ["ld", "-m", "elf_x86_64", "-static", "-nostdlib", "--no-warn-rwx-segments", "-T", str(lds),
           "-o", str(out), str(obj)]
    if strip_symbols:
        cmd.insert(1, "--strip-all")
    _run(cmd)
    return out


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")


def incbin(data: bytes) -> str:
    """Assembly ``.byte`` lines holding ``data``."""
    lines = []
    for i in range(0, len(data), 16):
        lines.append("  .byte " + ", ".join(str(b) for b in data[i:i + 16]))
    return "\n".join(lines) + "\n"


class BtfWriter:
    """Builds a little-endian ``.BTF`` blob (``include/uapi/linux/btf.h``) type by type; ids start at 1."""

    INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 11, 12, 13, 14, 15, 16, 17, 18, 19

    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def s(self, name: str) -> int:
        if name not in self._offsets:
            self._offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._offsets[name]

    def add(self, kind: int, name: str = "", vlen: int = 0, size_or_type: int = 0, extra: bytes = b"",
            kflag: bool = False) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return len(self.types)

    def int_(self, name: str, size: int) -> int:
        return self.add(self.INT, name, 0, size, struct.pack("<I", size * 8))

    def ptr(self, to: int) -> int:
        return self.add(self.PTR, "", 0, to)

    def typedef(self, name: str, to: int) -> int:
        return self.add(self.TYPEDEF, name, 0, to)

    def const(self, to: int) -> int:
        return self.add(self.CONST, "", 0, to)

    def volatile(self, to: int) -> int:
        return self.add(self.VOLATILE, "", 0, to)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.add(self.ARRAY, "", 0, 0, struct.pack("<III", elem, index, n))

    def func_proto(self, ret: int, params: list[int]) -> int:
        extra = b"".join(struct.pack("<II", 0, p) for p in params)
        return self.add(self.FUNC_PROTO, "", len(params), ret, extra)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False,
               bitfields: dict[str, int] | None = None) -> int:
        """members: (name, type id, bit offset); bitfields: member name -> bit size (sets kind_flag)."""
        bitfields = bitfields or {}
        extra = b"".join(struct.pack("<III", self.s(n), t, (bitfields.get(n, 0) << 24 | off) if bitfields else off)
                         for n, t, off in members)
        return self.add(self.UNION if union else self.STRUCT, name, len(members), size, extra, bool(bitfields))

    def enum(self, name: str, values: dict[str, int]) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(n), v) for n, v in values.items())
        return self.add(self.ENUM, name, len(values), 4, extra)

    def blob(self, magic: int = 0xEB9F) -> bytes:
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)


def sample_pv_btf() -> tuple[bytes, dict[int, str]]:
    """A BTF blob with a ``struct paravirt_patch_template`` shaped like 6.1's, and the slot names it gives.

    It holds every kind the reader has to step over (so a wrong record size shows
    up as wrong names), typedef/const/volatile chains, one-pointer wrapper structs,
    a nested group, an anonymous union, a bitfield struct and an empty forward
    declaration of the template before the real one.
    """
    b = BtfWriter()
    long_ = b.int_("long", 8)
    b.add(b.FLOAT, "double", 0, 8)
    b.enum("e", {"A": 0, "B": 1, "C": 2})
    b.add(b.ENUM64, "e64", 2, 8, struct.pack("<III", b.s("X"), 0, 0) + struct.pack("<III", b.s("Y"), 1, 0))
    b.array(long_, long_, 4)
    b.add(b.FWD, "paravirt_patch_template", 0, 0)          # declared before it is defined
    b.struct("paravirt_patch_template", 0, [])             # an empty duplicate the reader must not pick
    b.struct("bits", 8, [("a", long_, 0), ("b", long_, 3)], bitfields={"a": 3, "b": 5})
    proto = b.func_proto(0, [long_, long_])
    fn = b.ptr(proto)
    b.add(b.FUNC, "some_func", 0, proto)
    b.add(b.VAR, "some_var", 0, long_, struct.pack("<I", 1))
    b.add(b.DATASEC, ".data", 1, 8, struct.pack("<III", len(b.types), 0, 8))
    b.add(b.DECL_TAG, "tag", 0, fn, struct.pack("<I", 0xFFFFFFFF))
    fn_t = b.typedef("pv_fn_t", fn)
    const_fn = b.const(b.typedef("pv_fn2_t", b.add(b.TYPE_TAG, "user", 0, fn)))
    callee = b.struct("paravirt_callee_save", 8, [("func", b.ptr(0), 0)])
    cs = b.const(b.volatile(b.typedef("callee_t", callee)))
    cpu = b.struct("pv_cpu_ops", 16, [("io_delay", fn, 0), ("wbinvd", const_fn, 64)])
    irq = b.struct("pv_irq_ops", 32, [("save_fl", callee, 0), ("irq_disable", cs, 64), ("irq_enable", callee, 128),
                                       ("safe_halt", fn_t, 192)])
    lazy = b.struct("pv_lazy_ops", 24, [("enter", fn, 0), ("leave", fn, 64), ("flush", fn, 128)])
    mmu = b.struct("pv_mmu_ops", 48, [("flush_tlb_user", fn, 0), ("read_cr2", callee, 64),
                                       ("lazy_mode", b.typedef("lazy_t", lazy), 128), ("set_fixmap", fn, 320)])
    anon = b.struct("", 8, [("kick", fn, 0), ("kick_alias", fn, 0)], union=True)
    lock = b.struct("pv_lock_ops", 16, [("wait", fn, 0), ("", anon, 64)])
    b.struct("paravirt_patch_template", 112,
             [("cpu", cpu, 0), ("irq", irq, 128), ("mmu", b.typedef("mmu_t", mmu), 384), ("lock", lock, 768)])
    names = {0: "cpu.io_delay", 1: "cpu.wbinvd", 2: "irq.save_fl", 3: "irq.irq_disable", 4: "irq.irq_enable",
             5: "irq.safe_halt", 6: "mmu.flush_tlb_user", 7: "mmu.read_cr2", 8: "mmu.lazy_mode.enter",
             9: "mmu.lazy_mode.leave", 10: "mmu.lazy_mode.flush", 11: "mmu.set_fixmap", 12: "lock.wait",
             13: "lock.kick"}
    return b.blob(), names
