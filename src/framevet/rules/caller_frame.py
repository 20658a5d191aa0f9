"""caller-frame-write and return-address-overwrite: stores at or above the CFA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import iced_x86

from framevet.cfg.noreturn import is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import CFA_BASE, CFA_OFF, STACK
from framevet.rules.registry import Rule, register
from framevet.stack.regflow import Effect, effects, slot_of

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    """Both rules share one pass over the stores through rsp/rbp found at decode time."""
    prog, cfi = ctx.prog, ctx.result.cfi
    by_func: dict[int, list[int]] = {}
    for g in prog.stack_stores:
        fi = prog.func[g]
        if fi >= 0 and cfi[g] is not None:
            by_func.setdefault(prog.functions[fi].parent, []).append(g)
    skip = {fi for fi, f in enumerate(prog.functions)
            if (dcl := ctx.hints.functions.get(f.name)) is not None and dcl.entry != "call"}
    for fi, gids in by_func.items():
        if fi in skip:
            continue
        decl = ctx.hints.functions.get(prog.functions[fi].name)
        stack_args = decl.stack_args if decl is not None else 0
        eff = effects(prog, gids)
        first_arg_read: int | None = -1
        extent: int | None = None
        for g in gids:
            e = eff[g]
            if e.store is None:
                continue
            _, base, disp, size = e.store
            k = slot_of(cfi[g], base, disp)
            if k is None or _leaves_value(prog, g):
                continue
            if k <= -8 < k + size:
                yield ctx.finding(g, RETURN_ADDRESS.id,
                                  f"store to the return address slot (cfa{k:+d})", slot=k)
                continue
            if k < 0 or k < 8 * stack_args:
                continue
            if _feeds_tail_call(prog, g):
                continue  # outgoing stack argument of a sibling call, in our own arg area
            if extent is None:
                extent = _argument_extent(prog, cfi, fi, gids, eff)
            if k + size <= extent:
                continue  # inside the stack arguments the function reads as its own
            if first_arg_read == -1:
                first_arg_read = _first_argument_read(prog, cfi, fi)
            # a function that reads its caller's frame first takes stack arguments and may
            # write its own incoming argument area (vmread_error_trampoline's result slot)
            if first_arg_read is None or first_arg_read > g:
                src = e.store[0]
                fname = prog.functions[fi].name
                if src in (d.BX, d.BP, d.R12, d.R13, d.R14, d.R15):
                    # a register "save" that lands in the caller's frame (seed 002)
                    yield ctx.finding(g, CALLER_FRAME.id,
                                      f"save of {d.REG_NAMES[src]} into the caller's frame "
                                      f"at cfa{k:+d}", slot=k)
                else:
                    # compiled code may reuse its own stack-argument slots
                    yield ctx.finding(g, CALLER_FRAME.id,
                                      f"store to the caller's frame at cfa{k:+d}: legal only "
                                      f"if {fname} takes at least {k // 8 + 1} stack "
                                      f"argument(s)", "note", slot=k)
    for g, k in enumerate(prog.kind):
        if k == d.RETURN and prog.func[g] >= 0:
            c = cfi[g]
            if c is not None and c[CFA_BASE] == d.SP and c[CFA_OFF] > 8 and c[STACK] > 8:
                yield ctx.finding(g, RETURN_ADDRESS.id,
                                  "return to a pushed address, not to the caller "
                                  f"(cfa=rsp+{c[CFA_OFF]})", pushed=c[CFA_OFF] - 8)


_IDENTITY = {iced_x86.Mnemonic.OR: 0, iced_x86.Mnemonic.ADD: 0, iced_x86.Mnemonic.SUB: 0,
             iced_x86.Mnemonic.XOR: 0, iced_x86.Mnemonic.AND: -1}


def _leaves_value(prog: Program, g: int) -> bool:
    """``lock orq $0,(%rsp)``: GCC's full memory barrier (``__atomic_thread_fence``,
    ``__sync_synchronize``; libdbus' ``_dbus_atomic_get``) writes the word back
    unchanged, here the return address; an ``or``/``add``/``sub``/``xor`` of 0 or an
    ``and`` of -1 changes nothing."""
    ins = prog.instruction(g)
    want = _IDENTITY.get(ins.mnemonic)
    if want is None or ins.op_count != 2 or ins.op0_kind != iced_x86.OpKind.MEMORY:
        return False
    if ins.op1_kind not in (iced_x86.OpKind.IMMEDIATE8, iced_x86.OpKind.IMMEDIATE8TO16,
                            iced_x86.OpKind.IMMEDIATE8TO32, iced_x86.OpKind.IMMEDIATE8TO64,
                            iced_x86.OpKind.IMMEDIATE16, iced_x86.OpKind.IMMEDIATE32,
                            iced_x86.OpKind.IMMEDIATE32TO64):
        return False
    size = ins.memory_size
    bits = 8 * iced_x86.MemorySizeExt.size(size)
    return bool(bits) and ins.immediate(1) & ((1 << bits) - 1) == want & ((1 << bits) - 1)


def _feeds_tail_call(prog: Program, g: int, reach: int = 16) -> bool:
    """Is the store at ``g`` followed, on its straight-line path, by a sibling call?
    GCC passes a tail callee's stack arguments by rewriting the caller's own incoming
    argument slots -- only ever when it has that many stack arguments itself."""
    for _ in range(reach):
        k = prog.kind[g]
        if is_sibling_call(prog, g):
            return True
        if k in (d.CALL, d.CALL_DYNAMIC, d.RETURN, d.JUMP_DYNAMIC, d.JUMP_COND):
            return False
        if k == d.JUMP_UNCOND:
            g = prog.jump_dest[g]
            if g < 0:
                return False
            continue
        g = prog.next_same_sec(g)
        if g < 0:
            return False
    return False


def _argument_extent(prog: Program, cfi: list[tuple[int, ...] | None], fi: int,
                     stores: list[int], eff: dict[int, Effect]) -> int:
    """Profile user: how far above the CFA the function's own stack arguments reach, as
    its reads show: a read of a slot at or above the CFA that no store of the function
    covers (a struct passed by value that it modifies and passes on: lz4's
    ``movdqu 0x120(%rsp)`` ... at cfa+0..+63).  A read of a slot it stored itself
    proves nothing (a register saved into the caller's frame and restored)."""
    if prog.profile != "user":
        return 0
    written: list[tuple[int, int]] = []
    for g in stores:
        st = eff[g].store
        if st is not None and (k := slot_of(cfi[g], st[1], st[2])) is not None:
            written.append((k, k + st[3]))
    gids = [g for g in prog.func_insns(fi) if cfi[g] is not None]
    reads = effects(prog, gids)
    extent = 0
    for g in gids:
        rd = reads[g].mem_read
        k = slot_of(cfi[g], rd[0], rd[1]) if rd is not None else None
        if k is None or k < 0:
            continue
        end = k + (iced_x86.MemorySizeExt.size(prog.instruction(g).memory_size) or 8)
        if not any(a < end and k < b for a, b in written):
            extent = max(extent, end)
    return extent


def _first_argument_read(prog: Program, cfi: list[tuple[int, ...] | None],
                         fi: int) -> int | None:
    gids = [g for g in prog.func_insns(fi) if cfi[g] is not None]
    eff = effects(prog, gids)
    for g in gids:
        rd = eff[g].mem_read
        if rd is not None:
            k = slot_of(cfi[g], rd[0], rd[1])
            if k is not None and k >= 0:
                return g
    return None


CALLER_FRAME = register(Rule(
    "caller-frame-write", "store into the caller's stack frame",
    "a store at or above the CFA, i.e. into memory the caller owns (seed 002: SAVE_EXTRA_REGS "
    "writing pt_regs slots that were never allocated); objtool accepts it silently",
    "the caller's locals, spilled registers or return address get overwritten; the corruption "
    "surfaces later, in another function. Legal only for a function that takes stack arguments "
    "and writes its own incoming argument area",
    "allocate the area in your own frame first (sub $N,%rsp / ALLOC_PT_GPREGS_ON_STACK) or, "
    "for stack arguments, declare them in framevet.toml (stack_args = N)",
    severity="error", family="framevet", check=check))
RETURN_ADDRESS = register(Rule(
    "return-address-overwrite", "return address rewritten, or ret to a pushed address",
    "a store into the return-address slot (CFA-8), or a ret executed while the top of the "
    "stack is a value this function pushed: return-oriented control flow (seed 001's "
    "host_to_guest_gpr_switch)",
    "the CPU predicts returns with the return stack buffer, filled by calls; a ret to an "
    "address no call pushed always mispredicts (and with retbleed/RSB mitigations is "
    "costlier still), and unwinders/CET shadow stacks see a return to the wrong place",
    "use an ordinary call/ret pair (call the helper, then return normally) or an indirect "
    "jmp/call through a register",
    severity="error", family="framevet"))
