"""What a byte stream does to the stack pointer, at each of its instruction boundaries. Pure.

Seed 004: a pv call ``call *pv_ops.save_fl`` patched to ``pushf; pop %rax``
moves the stack pointer between the two instructions, where the call never
did; an interrupt there unwinds with whatever ORC entry is in force. To check
ORC against a stream that patching can put at a site, the stream is decoded
and its effect on ``%rsp`` followed from the site's start, one instruction at
a time:

- ``push``/``pushf`` +8 (``pushw`` +2), ``pop``/``popf`` -8;
- ``sub $N,%rsp`` +N, ``add $N,%rsp`` -N, ``lea N(%rsp),%rsp`` -N;
- ``call`` 0 (the callee returns to the next boundary with %rsp as before),
  except a call into the stream itself (the RSB-stuffing loop of
  ``FILL_RETURN_BUFFER``: ``call 1f; int3; 1: …``), which pushes 8 and goes on
  at its target; the bytes it skips are not reached;
- ``ret``, ``jmp``, ``ud2``, ``int3``, ``iret``, ``sysret``: control does not
  fall through; no later boundary of the stream is reachable from its start;
- ``leave``, ``enter``, ``pop %rsp``, ``and $-16,%rsp`` or any other write to
  ``%rsp``: the change is not known here (``delta`` None from there on);
- anything else (NOPs, ``cli``, ``mov %cr2,%rax``, ``lfence``): 0.

Writes to ``%rbp`` (``pop %rbp``, ``leave``, ``mov …,%rbp``) are flagged: an
ORC entry's bp rule may then change legitimately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sites import decode

# Control does not fall through to the next instruction.
_ENDS = re.compile(r"^(ret[qlw]?|lret[qlw]?|jmp[qlw]?|ljmp[qlw]?|ud2|ud1[qlw]?|ud0|int3|iret[qlw]?|sysret[ql]?|"
                   r"sysexit[ql]?|hlt)\b")
_IMM = re.compile(r"^\$(-?0x[0-9a-f]+|-?\d+)$")
_LEA_SP = re.compile(r"^(-?0x[0-9a-f]+|-?\d+)?\(%rsp\)$")
_SP = ("%rsp", "%esp", "%sp", "%spl")
_BP = ("%rbp", "%ebp", "%bp", "%bpl")


@dataclass(frozen=True)
class Boundary:
    """An instruction boundary of a stream, reached by falling through from its start."""

    offset: int           # bytes from the stream's start
    delta: int | None     # bytes pushed since the start (positive: %rsp is lower); None: not known here
    after: str            # the instruction just executed, objdump's spelling
    bp_changed: bool      # some instruction since the start wrote %rbp
    call: int | None = None   # after a direct call that returns here: its target, relative to the stream's start


def _operands(text: str) -> tuple[str, list[str]]:
    mnemonic, _, rest = text.partition(" ")
    out, depth, cur = [], 0, ""
    for ch in rest:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return mnemonic, out


def _imm(operand: str) -> int | None:
    m = _IMM.match(operand)
    return int(m.group(1), 0) if m else None


def sp_effect(text: str) -> tuple[int | None, bool, bool]:
    """(bytes pushed or None when not known, control falls through, %rbp written) for one instruction."""
    if text == "(bad)":
        return None, False, False
    mnemonic, ops = _operands(text)
    dest = ops[-1] if ops else ""
    bp = (dest in _BP and not mnemonic.startswith("push")) or mnemonic in ("leave", "leaveq", "enter", "enterq")
    if _ENDS.match(mnemonic):
        return 0, False, bp
    if mnemonic in ("push", "pushq", "pushf", "pushfq"):
        return 8, True, bp
    if mnemonic in ("pushw", "pushfw"):
        return 2, True, bp
    if mnemonic in ("pop", "popq", "popf", "popfq"):
        return (None if dest in _SP else -8), True, bp
    if mnemonic in ("popw", "popfw"):
        return -2, True, bp
    if dest in _SP:
        src = ops[0] if len(ops) == 2 else ""
        if mnemonic in ("sub", "subq") and _imm(src) is not None:
            return _imm(src), True, bp
        if mnemonic in ("add", "addq") and _imm(src) is not None:
            return -(_imm(src) or 0), True, bp
        if mnemonic in ("lea", "leaq"):
            m = _LEA_SP.match(src)
            if m is not None:
                return -(int(m.group(1), 0) if m.group(1) else 0), True, bp
        return None, True, bp
    if mnemonic in ("leave", "leaveq", "enter", "enterq"):
        return None, True, bp
    return 0, True, bp


_cache: dict[bytes, tuple[Boundary, ...]] = {}


def boundaries(code: bytes) -> tuple[Boundary, ...]:
    """Every instruction boundary after the start of ``code`` that falling through reaches, the end included.

    Decoded once per distinct byte string: a kernel's sites repeat a few hundred streams a hundred thousand
    times."""
    cached = _cache.get(code)
    if cached is not None:
        return cached
    out: list[Boundary] = []
    delta: int | None = 0
    bp_changed = False
    resume = 0          # the next offset reached: past a call into the stream, its target
    insns = decode(code)
    starts = {offset for offset, _, _, _ in insns} | {len(code)}     # the instruction boundaries of this decoding
    for offset, size, template, relative in insns:
        if offset < resume:
            continue        # skipped by a call into the stream (an int3 that is never executed)
        text = template if relative is None else template.format(hex(relative))
        pushed, falls, bp = sp_effect(text)
        called = relative if text.startswith("call ") and relative is not None else None
        if called is not None and offset + size < called <= len(code):
            pushed, resume, called = 8, called, None     # an intra-stream call: a push, and on at its target
        delta = None if delta is None or pushed is None else delta + pushed
        bp_changed = bp_changed or bp
        if not falls:
            break
        end = max(offset + size, resume)
        if end not in starts:
            break           # the target is not an instruction boundary of this decoding: not followed
        out.append(Boundary(end, delta, text, bp_changed, called))
        if delta is None:
            break          # nothing later can be compared
    result = tuple(out)
    if len(_cache) < 100_000:
        _cache[code] = result
    return result
