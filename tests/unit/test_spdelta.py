"""The stack-pointer simulator on hand-assembled streams, the seed's case first."""

from __future__ import annotations

import pytest

from framework.analysis.spdelta import boundaries, sp_effect


def deltas(hex_code: str) -> list[tuple[int, int | None, str]]:
    return [(b.offset, b.delta, b.after) for b in boundaries(bytes.fromhex(hex_code))]


def test_the_seed_pushf_pop_rax_moves_rsp_between_its_two_instructions() -> None:
    # 9c pushf; 58 pop %rax; 0f 1f 40 00 nopl 0x0(%rax): the natively patched save_fl site (6.1: 7 bytes)
    assert deltas("9c580f1f4000" + "90") == [(1, 8, "pushf"), (2, 0, "pop %rax"),
                                              (6, 0, "nopl (%rax)"), (7, 0, "nop")]


def test_the_pv_call_it_replaces_moves_nothing_at_its_boundary() -> None:
    # ff 14 25 <abs32>: call *pv_ops+0x…; a call returns with %rsp as before
    assert deltas("ff142500000000") == [(7, 0, "call *0")]
    assert deltas("e800000000" + "6690") == [(5, 0, "call 0x5"), (7, 0, "nop")]


@pytest.mark.parametrize("code, pushed", [
    ("50", 8), ("4150", 8), ("6a00", 8), ("9c", 8), ("58", -8), ("415f", -8), ("9d", -8),
    ("4883ec08", 8), ("4883c410", -16), ("4881ec00010000", 256), ("488d642408", -8), ("488d6424f8", 8),
    ("fa", 0), ("fb", 0), ("0f20d0", 0), ("0faee8", 0), ("0f1f440000", 0), ("4889e5", 0),
])
def test_each_instruction_moves_rsp_by_what_it_pushes(code: str, pushed: int) -> None:
    [b] = boundaries(bytes.fromhex(code))
    assert b.delta == pushed and b.offset == len(code) // 2


@pytest.mark.parametrize("code", ["c9", "5c", "4883e4f0", "4889ec", "c8080000"])
def test_writes_to_rsp_it_cannot_follow_make_the_rest_unknown(code: str) -> None:
    # leave; pop %rsp; and $-16,%rsp; mov %rbp,%rsp; enter: the boundary is counted, its sp unknown, nothing after
    got = boundaries(bytes.fromhex(code + "9c"))
    assert [b.delta for b in got] == [None]


@pytest.mark.parametrize("code", ["c3", "c3cc", "e900000000", "ffe0", "0f0b", "cc", "48cf"])
def test_control_that_does_not_fall_through_ends_the_stream(code: str) -> None:
    # ret; ret; int3; jmp rel32; jmp *%rax; ud2; int3; iretq: no boundary after it is reachable from the start
    assert boundaries(bytes.fromhex(code + "9c58")) == ()


def test_a_conditional_jump_falls_through() -> None:
    assert deltas("7400" + "50") == [(2, 0, "je 0x2"), (3, 8, "push %rax")]


def test_writes_to_rbp_are_flagged_from_there_on() -> None:
    got = boundaries(bytes.fromhex("55" "4889e5" "5d" "90"))   # push %rbp; mov %rsp,%rbp; pop %rbp; nop
    assert [(b.delta, b.bp_changed) for b in got] == [(8, False), (8, True), (0, True), (0, True)]


def test_undecodable_bytes_end_the_stream() -> None:
    assert deltas("9c" + "06") == [(1, 8, "pushf")]     # 06 (push %es) is invalid in 64-bit mode


def test_sp_effect_spells() -> None:
    assert sp_effect("pushf") == (8, True, False)
    assert sp_effect("pop %rbp") == (-8, True, True)
    assert sp_effect("ret") == (0, False, False)
    assert sp_effect("sub $0x28,%rsp") == (0x28, True, False)
