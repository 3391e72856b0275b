"""The ORC unwinder replay and its check against entry-breakpoint truth, on hand-built tables and stacks.

Memory is a dict address -> u64 (``mem.get`` is ``read_u64``: a missing word is
unreadable). Each expected value is worked out by hand from the kernel's rules
(arch/x86/kernel/unwind_orc.c, 6.1 and 6.12) in the comment next to it.
"""

from __future__ import annotations

import pytest

from framework.analysis.unwind import (
    IRET_FRAME_OFFSET,
    PT_REGS,
    EntryRecord,
    Frame,
    UnwindCheck,
    check_stop,
    prune,
    truth_for,
    unwind,
)
from framework.elf.orc import (
    REG_BP,
    REG_BP_INDIRECT,
    REG_DI,
    REG_PREV_SP,
    REG_R10,
    REG_SP,
    REG_SP_INDIRECT,
    REG_UNDEFINED,
    OrcEntry,
    OrcTable,
)

TEXT = 0xFFFFFFFF81000000
FOO = TEXT + 0x1000            # the function stopped in
CALLER = TEXT + 0x2000         # foo's caller
GRAND = TEXT + 0x3000          # the caller's caller
STACK = 0xFFFFC90000014000     # page-aligned, somewhere in a task stack
R = STACK + 0xF00              # rsp at foo's entry: [R] is the return address into CALLER
RET = CALLER + 0x25            # return address into the caller (after its call at +0x20)
FLAGS = 0x246                  # what pushf leaves on the stack


def entry(sp_reg: int = REG_SP, sp_offset: int = 8, bp_reg: int = REG_UNDEFINED, bp_offset: int = 0,
          type: str = "call", flag: bool = False, *, old: bool = False) -> OrcEntry:
    """An ORC entry; ``old``: the 4.14-6.2 format (flag is ``end``), else 6.4+ (flag is ``signal``)."""
    if old:
        return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, type, flag, end=flag, flag_name="end")
    return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, type, flag)


def table(*pairs: tuple[int, OrcEntry]) -> OrcTable:
    return OrcTable([ip for ip, _ in pairs], [e for _, e in pairs])


def regs(rip: int, rsp: int, rbp: int = 0xDEAD0000, **more: int) -> dict[str, int]:
    return {"rip": rip, "rsp": rsp, "rbp": rbp, **more}


# foo: 0x1000 entry (sp+8) ... 0x1010 pushf; 0x1011 pop %rax; 0x1012 ...
SEED_ENTRIES = ((FOO, entry(REG_SP, 8)), (FOO + 0x11, entry(REG_SP, 16)), (FOO + 0x12, entry(REG_SP, 8)),
                (CALLER, entry(REG_SP, 8)), (CALLER + 0x40, entry(REG_UNDEFINED, 0, type="end_of_stack")))


def unreadable(address: int) -> int | None:
    return None


def seed_memory() -> dict[int, int]:
    return {R: RET, R - 8: FLAGS}


# --- the seed ----------------------------------------------------------------------------------------------


def test_the_seed_with_an_entry_at_the_boundary_agrees_with_the_entry_breakpoint() -> None:
    mem = seed_memory()
    record = EntryRecord("foo", R, RET)
    # stopped after pushf: rsp = R-8; ORC at 0x1011 says sp:sp+16 -> CFA = R-8+16 = R+8, ret = [R+8-8] = [R]
    got = check_stop(table(*SEED_ENTRIES), "paravirt#12 irq.save_fl foo+0x10 (+1)", "foo",
                     regs(FOO + 0x11, R - 8), [record], mem.get)
    assert (got.expected_cfa, got.expected_return) == (R + 8, RET)
    assert (got.found_cfa, got.found_return) == (R + 8, RET)
    assert got.agrees is True
    assert got.rip == FOO + 0x11 and got.site == "paravirt#12 irq.save_fl foo+0x10 (+1)"
    assert got.frames[1] == Frame(RET, R + 8, 0xDEAD0000, FOO + 0x11, "sp:sp+16 bp:(und) type:call")
    assert got.detail == (f"ORC sp:sp+16 bp:(und) type:call gives CFA {R + 8:#x} ret {RET:#x}; "
                          f"the entry at foo recorded rsp {R:#x} ret {RET:#x}")


def test_the_seed_without_an_entry_at_the_boundary_is_off_by_the_pushed_flags() -> None:
    mem = seed_memory()
    entries = [p for p in SEED_ENTRIES if p[0] != FOO + 0x11]
    # in force at 0x1011: 0x1000's sp:sp+8 -> CFA = R-8+8 = R, "ret" = [R-8] = the pushed flags
    got = check_stop(table(*entries), "seed", "foo", regs(FOO + 0x11, R - 8), [EntryRecord("foo", R, RET)], mem.get)
    assert (got.found_cfa, got.found_return) == (R, FLAGS)
    assert (got.expected_cfa, got.expected_return) == (R + 8, RET)
    assert got.agrees is False
    assert got.frames[1].entry_ip == FOO
    assert f"CFA {R:#x} ret {FLAGS:#x}" in got.detail
    assert f"recorded rsp {R:#x} ret {RET:#x}" in got.detail
    assert got.detail.endswith("CFA off by -8")


def test_the_right_cfa_with_the_wrong_return_address_disagrees() -> None:
    # an entry that wrongly says regs: pt_regs "at" rsp whose sp slot happens to hold R+8 but whose ip slot does not
    p = R - 0x100
    mem = {**seed_memory(), **{p + off: 0 for off in range(0, 168, 8)}, p + 128: CALLER + 0x99, p + 152: R + 8}
    t = table((FOO, entry(REG_SP, 8)), (FOO + 0x11, entry(REG_SP, 0, type="regs", flag=True)))
    got = check_stop(t, "s", "foo", regs(FOO + 0x11, p), [EntryRecord("foo", R, RET)], mem.get)
    assert (got.found_cfa, got.found_return) == (R + 8, CALLER + 0x99)
    assert got.agrees is False and "CFA off" not in got.detail


def test_frame_0_looks_up_rip_itself_not_rip_minus_1() -> None:
    # frame 0 is unwound from full registers (a signal frame): at 0x1011 the entry at 0x1011 is used, although
    # 0x1010 (rip-1) is under 0x1000's sp:sp+8
    got = unwind(table(*SEED_ENTRIES), regs(FOO + 0x11, R - 8), seed_memory().get, max_frames=2)
    assert got.frames[1].entry_ip == FOO + 0x11 and got.frames[1].sp == R + 8


def test_a_return_address_is_looked_up_at_the_call_before_it() -> None:
    # The caller's call to foo ends at RET = CALLER+0x25 where a new entry starts (say, the call was to a noreturn
    # function and the caller's epilogue follows). The unwinder must use the entry in force at RET-1: sp:sp+32.
    t = table((FOO, entry(REG_SP, 8)), (CALLER, entry(REG_SP, 32)), (RET, entry(REG_SP, 8)),
              (GRAND, entry(REG_UNDEFINED, 0, type="end_of_stack")))
    mem = {R: RET, R + 32: GRAND + 5}   # frame 1: sp = R+8; frame 2: sp = R+8+32, ip = [R+40-8] = [R+32]
    got = unwind(t, regs(FOO + 4, R), mem.get, max_frames=8)
    assert [(f.ip, f.sp, f.entry_ip) for f in got.frames] == [
        (FOO + 4, R, None), (RET, R + 8, FOO), (GRAND + 5, R + 40, CALLER)]
    assert got.stopped == "end of stack"


# --- sp and bp rules -------------------------------------------------------------------------------------


def test_a_bp_based_frame_takes_cfa_from_rbp_and_rbp_from_the_frame() -> None:
    # push %rbp; mov %rsp,%rbp; ...: ORC sp:bp+16 bp:prev_sp-16. rbp = B: [B] = caller's rbp, [B+8] = ret
    b = R - 0x40
    t = table((FOO, entry(REG_BP, 16, REG_PREV_SP, -16)))
    mem = {b: 0xCAFE0000, b + 8: RET}
    got = unwind(t, regs(FOO + 8, R - 0x60, b), mem.get, max_frames=2)
    assert got.frames[1] == Frame(RET, b + 16, 0xCAFE0000, FOO, "sp:bp+16 bp:prev_sp-16 type:call")


def test_bp_reg_bp_loads_the_saved_rbp_from_rbp_plus_offset() -> None:
    # bp:bp-8: state->bp = *(rbp - 8), a load (not rbp - 8)
    b = R - 0x20
    t = table((FOO, entry(REG_SP, 8, REG_BP, -8)))
    mem = {R: RET, b - 8: 0xBEEF0000}
    got = unwind(t, regs(FOO + 1, R, b), mem.get, max_frames=2)
    assert got.frames[1].bp == 0xBEEF0000


def test_bp_undefined_leaves_rbp_as_it_was() -> None:
    got = unwind(table(*SEED_ENTRIES), regs(FOO + 0x11, R - 8, 0x1234), seed_memory().get, max_frames=2)
    assert got.frames[1].bp == 0x1234


def test_sp_indirect_adds_the_offset_after_the_load() -> None:
    # (sp)+8 (call_on_stack's switch to the irq stack): CFA = *rsp + 8, not *(rsp + 8)
    irq_sp = 0xFFFFC90000003F00
    saved = R                         # the task stack's sp, saved at the irq stack's top
    t = table((FOO, entry(REG_SP_INDIRECT, 8)))
    mem = {irq_sp: saved, irq_sp + 8: 0x5555, saved: RET}
    got = unwind(t, regs(FOO + 3, irq_sp), mem.get, max_frames=2)
    assert (got.frames[1].sp, got.frames[1].ip) == (saved + 8, RET)
    assert got.frames[1].how == "sp:(sp)+8 bp:(und) type:call"


def test_bp_indirect_loads_from_rbp_plus_offset() -> None:
    # (bp-8) (DRAP): CFA = *(rbp - 8)
    b = R - 0x30
    t = table((FOO, entry(REG_BP_INDIRECT, -8)))
    mem = {b - 8: R + 8, R: RET}
    got = unwind(t, regs(FOO + 3, R - 0x50, b), mem.get, max_frames=2)
    assert (got.frames[1].sp, got.frames[1].ip) == (R + 8, RET)


def test_a_register_base_is_the_registers_value_when_it_is_given() -> None:
    # sp:di+8 (entry code): sp = rdi, the offset unused; known for frame 0 only if GDB gave rdi
    t = table((FOO, entry(REG_DI, 8)))
    mem = {R: RET}
    got = unwind(t, regs(FOO, R - 0x100, rdi=R + 8), mem.get, max_frames=2)
    assert (got.frames[1].sp, got.frames[1].ip) == (R + 8, RET)
    missing = unwind(t, regs(FOO, R - 0x100), mem.get, max_frames=2)
    assert len(missing.frames) == 1 and missing.stopped == f"missing RDI value at {FOO:#x}"


# --- regs and regs_partial ---------------------------------------------------------------------------------


P = R - 0x200          # a struct pt_regs on the stack
Q = R + 0x80           # the interrupted sp it holds
INTERRUPTED = CALLER + 0x30


def pt_regs(at: int, **values: int) -> dict[int, int]:
    """A struct pt_regs at ``at``: every slot 0 but those given."""
    return {at + offset: values.get(name, 0) for name, offset in PT_REGS.items()}


def test_a_regs_frame_reads_ip_sp_and_bp_from_the_pt_regs_at_sp() -> None:
    t = table((FOO, entry(REG_SP, 0, type="regs", flag=True)), (CALLER, entry(REG_SP, 8)))
    mem = pt_regs(P, ip=INTERRUPTED, sp=Q, bp=0xB0B0, cs=0x10)
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=2)
    assert got.frames[1] == Frame(INTERRUPTED, Q, 0xB0B0, FOO, "sp:sp+0 bp:(und) type:regs signal:1")


@pytest.mark.parametrize("signal, expected_sp", [(True, Q + 16), (False, Q + 8)])
def test_after_a_regs_frame_the_signal_bit_decides_ip_or_ip_minus_1(signal: bool, expected_sp: int) -> None:
    # 6.3+: state->signal = orc->signal. The interrupted ip INTERRUPTED starts an entry sp:sp+16; ip-1 is under
    # sp:sp+8. signal:1 looks up INTERRUPTED itself, signal:0 (#BP's iret hint) INTERRUPTED-1.
    t = table((FOO, entry(REG_SP, 0, type="regs", flag=signal)), (CALLER, entry(REG_SP, 8)),
              (INTERRUPTED, entry(REG_SP, 16)))
    mem = {**pt_regs(P, ip=INTERRUPTED, sp=Q, cs=0x10), Q + 8: GRAND, Q: GRAND}
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=3)
    assert got.frames[2].sp == expected_sp


def test_before_6_3_every_regs_frame_is_a_signal_frame() -> None:
    # 4.14-6.2 format: no signal bit (the flag is `end`); a regs entry makes the next lookup exact
    t = table((FOO, entry(REG_SP, 0, type="regs", old=True)), (CALLER, entry(REG_SP, 8, old=True)),
              (INTERRUPTED, entry(REG_SP, 16, old=True)))
    mem = {**pt_regs(P, ip=INTERRUPTED, sp=Q, cs=0x10), Q + 8: GRAND}
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=3)
    assert got.frames[2].sp == Q + 16 and got.frames[2].entry_ip == INTERRUPTED


def test_a_register_base_after_a_regs_frame_comes_from_its_pt_regs() -> None:
    t = table((FOO, entry(REG_SP, 0, type="regs", flag=True)), (CALLER, entry(REG_R10, 0)))
    mem = {**pt_regs(P, ip=INTERRUPTED, sp=Q, cs=0x10, r10=Q + 0x48), Q + 0x40: RET}
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=3)
    assert (got.frames[2].sp, got.frames[2].ip) == (Q + 0x48, RET)


def test_a_register_base_after_a_call_frame_is_not_known() -> None:
    t = table(*SEED_ENTRIES[:3], (CALLER, entry(REG_R10, 0)))
    got = unwind(t, regs(FOO + 0x11, R - 8, r10=R + 8), seed_memory().get, max_frames=3)
    assert len(got.frames) == 2 and got.stopped == f"missing R10 value at {RET:#x}"


def test_a_regs_partial_frame_reads_the_iret_frame_at_sp() -> None:
    # iret frame at I: ip at I, cs at I+8, flags at I+16, sp at I+24 (pt_regs at I - offsetof(ip))
    i = P + IRET_FRAME_OFFSET
    t = table((FOO, entry(REG_SP, 0, type="regs_partial", flag=True)), (CALLER, entry(REG_SP, 8)))
    mem = {i: INTERRUPTED, i + 8: 0x10, i + 16: FLAGS, i + 24: Q}
    got = unwind(t, regs(FOO + 1, i, 0x7777), mem.get, max_frames=2)
    # bp undefined: a partial frame has no bp of its own; the full registers before it (frame 0's) give rbp
    assert got.frames[1] == Frame(INTERRUPTED, Q, 0x7777, FOO, "sp:sp+0 bp:(und) type:regs_partial signal:1")


def test_a_regs_partial_frame_after_full_regs_keeps_them_for_register_bases() -> None:
    # frame 0 -> regs (pt_regs at P) -> regs_partial (iret frame at I2) -> an r10-based entry: get_reg falls
    # back to state->prev_regs, the full pt_regs at P
    i2 = Q
    t = table((FOO, entry(REG_SP, 0, type="regs", flag=True)),
              (CALLER, entry(REG_SP, 0, type="regs_partial", flag=True)), (GRAND, entry(REG_R10, 0)))
    mem = {**pt_regs(P, ip=CALLER + 1, sp=i2, cs=0x10, r10=Q + 0x60), i2: GRAND + 1, i2 + 8: 0x10,
           i2 + 24: Q + 0x40, Q + 0x58: RET}
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=4)
    assert [(f.ip, f.sp) for f in got.frames[1:]] == [(CALLER + 1, i2), (GRAND + 1, Q + 0x40), (RET, Q + 0x60)]


def test_pt_regs_from_user_mode_end_the_stack() -> None:
    t = table((FOO, entry(REG_SP, 0, type="regs", flag=True)))
    mem = pt_regs(P, ip=0x401000, sp=0x7FFC0000, cs=0x33)
    got = unwind(t, regs(FOO + 2, P), mem.get, max_frames=4)
    assert len(got.frames) == 2 and got.stopped == "end of stack: user mode at 0x401000"


# --- where it stops ----------------------------------------------------------------------------------------


def test_no_entry_below_the_first_one() -> None:
    got = unwind(table(*SEED_ENTRIES), regs(TEXT, R), unreadable)
    assert got.frames == (Frame(TEXT, R, 0xDEAD0000, None, "registers"),)
    assert got.stopped == f"no ORC entry at {TEXT:#x}"


@pytest.mark.parametrize("orc, stopped", [
    (entry(REG_UNDEFINED, 0, type="undefined"), f"undefined ORC entry at {FOO:#x}"),
    (entry(REG_UNDEFINED, 0, type="end_of_stack"), "end of stack"),
    (entry(REG_UNDEFINED, 0, old=True), f"undefined ORC entry at {FOO:#x}"),     # 6.1: weak terminator, an error
    (entry(REG_UNDEFINED, 0, flag=True, old=True), "end of stack"),              # 6.1: sp_reg undefined, end:1
])
def test_undefined_entries_and_the_end_of_the_stack(orc: OrcEntry, stopped: str) -> None:
    got = unwind(table((FOO, orc)), regs(FOO + 4, R), {R: RET}.get)
    assert len(got.frames) == 1 and got.stopped == stopped


def test_an_unreadable_return_address_stops_the_unwind() -> None:
    got = unwind(table(*SEED_ENTRIES), regs(FOO + 0x11, R - 8), unreadable)
    assert len(got.frames) == 1 and got.stopped == f"cannot read {R:#x}"


def test_an_unreadable_indirect_base_stops_the_unwind() -> None:
    got = unwind(table((FOO, entry(REG_SP_INDIRECT, 8))), regs(FOO, R), unreadable)
    assert got.stopped == f"cannot read {R:#x}"


def test_several_frames_up_to_the_end_of_the_stack_or_max_frames() -> None:
    t = table(*SEED_ENTRIES[:3], (CALLER, entry(REG_SP, 24)), (GRAND, entry(REG_SP, 8)),
              (GRAND + 0x80, entry(REG_UNDEFINED, 0, type="end_of_stack")))
    # foo at 0x1011 (rsp R-8): CFA R+8, ret RET; caller: sp:sp+24 -> R+32, ret [R+24] = GRAND+0x85;
    # grand at GRAND+0x85 (looked up at +0x84): GRAND+0x80 is the end
    mem = {**seed_memory(), R + 24: GRAND + 0x85}
    got = unwind(t, regs(FOO + 0x11, R - 8), mem.get, max_frames=10)
    assert [(f.ip, f.sp) for f in got.frames] == [(FOO + 0x11, R - 8), (RET, R + 8), (GRAND + 0x85, R + 32)]
    assert got.stopped == "end of stack"
    short = unwind(t, regs(FOO + 0x11, R - 8), mem.get, max_frames=2)
    assert len(short.frames) == 2 and short.stopped == "max frames"


def test_a_return_address_outside_kernel_text_stops_after_its_frame() -> None:
    entries = [p for p in SEED_ENTRIES if p[0] != FOO + 0x11]
    got = unwind(table(*entries), regs(FOO + 0x11, R - 8), seed_memory().get, max_frames=4,
                 is_text=lambda ip: ip >= TEXT)
    assert [f.ip for f in got.frames] == [FOO + 0x11, FLAGS]
    assert got.stopped == f"ip {FLAGS:#x} is not kernel text"


def test_a_frame_below_the_current_sp_is_the_wrong_direction() -> None:
    # sp:bp+16 with rbp far below rsp: the caller's sp would be under this frame's
    t = table((FOO, entry(REG_BP, 16, REG_PREV_SP, -16)))
    b = R - 0x100
    got = unwind(t, regs(FOO + 4, R, b), {b: 0, b + 8: RET}.get)
    assert len(got.frames) == 1 and got.stopped == f"stack going in the wrong direction at {FOO + 4:#x}"


def test_check_stop_without_a_caller_frame_disagrees_and_says_why() -> None:
    hole = entry(REG_UNDEFINED, 0, type="undefined")
    entries = [(ip, e) for ip, e in SEED_ENTRIES if ip != FOO + 0x11] + [(FOO + 0x11, hole)]
    got = check_stop(table(*entries), "s", "foo", regs(FOO + 0x11, R - 8), [EntryRecord("foo", R, RET)],
                     seed_memory().get)
    assert got.agrees is False and got.found_cfa is None and got.found_return is None
    assert got.expected_cfa == R + 8 and len(got.frames) == 1
    assert got.detail == (f"ORC gives no caller (undefined ORC entry at {FOO + 0x11:#x}); "
                          f"the entry at foo recorded rsp {R:#x} ret {RET:#x}")


def test_check_stop_without_truth_has_nothing_to_compare() -> None:
    got = check_stop(table(*SEED_ENTRIES), "s", "foo", regs(FOO + 0x11, R - 8), [EntryRecord("bar", R, RET)],
                     seed_memory().get)
    assert got.agrees is None and got.expected_cfa is None and got.expected_return is None
    assert got.found_cfa == R + 8
    assert got.detail.endswith("no live entry of foo was recorded")


# --- the truth ---------------------------------------------------------------------------------------------


def test_truth_is_the_innermost_live_call_of_the_function() -> None:
    # recursion: foo entered at R (outer) and at R-0x100 (inner, live); a foo that returned at R-0x80 had its
    # slot overwritten; one below the stop's rsp (R-0x180) is dead; bar's record at R-0x110 is another function
    outer, inner = EntryRecord("foo", R, RET), EntryRecord("foo", R - 0x100, FOO + 0x50)
    returned, below = EntryRecord("foo", R - 0x80, RET), EntryRecord("foo", R - 0x180, RET)
    other = EntryRecord("bar", R - 0x110, RET)
    mem = {R: RET, R - 0x100: FOO + 0x50, R - 0x80: 0x1234, R - 0x180: RET, R - 0x110: RET}
    records = [outer, returned, below, inner, other]
    assert truth_for(records, "foo", R - 0x108, mem.get) is inner
    mem[R - 0x100] = 0      # the inner call's slot overwritten: the outer one is the innermost live call
    assert truth_for(records, "foo", R - 0x108, mem.get) is outer
    assert truth_for(records, "foo", R + 8, mem.get) is None
    assert truth_for(records, "baz", R - 0x108, mem.get) is None


def test_truth_at_the_entry_rsp_itself_counts() -> None:
    record = EntryRecord("foo", R, RET)
    assert truth_for([record], "foo", R, {R: RET}.get) is record
    assert truth_for([record], "foo", R, unreadable) is None      # unreadable slot: not known to be live


def test_prune_drops_records_below_the_stop_in_its_page_and_older_ones_at_a_reused_slot() -> None:
    page = R - R % 4096
    below_same_page = EntryRecord("a", page + 0x10, RET)
    below_other_page = EntryRecord("b", page - 0x10, RET)     # may be another stack's live call: kept
    above = EntryRecord("c", R + 0x40, RET)
    old_at_r, new_at_r = EntryRecord("d", R, RET), EntryRecord("e", R, RET + 1)
    records = [below_same_page, old_at_r, below_other_page, above, new_at_r]
    prune(records, page + 0x100)
    assert records == [below_other_page, above, new_at_r]


def test_prune_keeps_at_most_64_records_of_a_function_dropping_the_oldest() -> None:
    foos = [EntryRecord("foo", R + 8 * i, RET) for i in range(70)]
    bar = EntryRecord("bar", R - 8, RET)
    records = [*foos[:3], bar, *foos[3:]]
    prune(records, 0)
    assert records == [bar, *foos[6:]]


# --- artefacts ---------------------------------------------------------------------------------------------


def test_an_unwind_check_survives_json() -> None:
    got = check_stop(table(*SEED_ENTRIES), "s", "foo", regs(FOO + 0x11, R - 8), [EntryRecord("foo", R, RET)],
                     seed_memory().get)
    back = UnwindCheck.from_json(got.to_json())
    assert back == got and back.frames[0].entry_ip is None
    none = check_stop(table(*SEED_ENTRIES), "s", "foo", regs(FOO + 0x11, R - 8), [], seed_memory().get)
    assert UnwindCheck.from_json(none.to_json()) == none
