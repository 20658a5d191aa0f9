"""Plain words for where a run went wrong: unmapped addresses, misaligned operands."""

from __future__ import annotations

from framevet.emulate import insn as I
from framevet.emulate.image import PAGE
from framevet.emulate.spec import ARG_REGS, CALLER_AREA, REG_NAMES, STACK_TOP, Budget, InitialState


def unmapped_place(addr: int, stack_lo: int, budget: Budget, state: InitialState) -> str:
    """An address outside mapped memory, by what it is near (stack guard, a buffer's end,
    NULL, an argument register holding a random value)."""
    if stack_lo - 64 * PAGE <= addr < stack_lo:
        return (f"0x{addr:x}, {stack_lo - addr} bytes below the "
                f"{budget.stack >> 10} KiB stack (stack overflow into the guard)")
    if STACK_TOP <= addr < STACK_TOP + PAGE:
        return f"0x{addr:x}, beyond the {CALLER_AREA} bytes of caller frame mapped"
    for b in state.buffers:
        end = b.addr + b.size
        if end <= addr < b.map_start + b.map_size + PAGE:
            past = "just" if addr == end else f"{addr - end} bytes"
            return (f"0x{addr:x}, {past} past the end of argument "
                    f"{b.arg + 1}'s {b.size}-byte buffer")
        if b.map_start - PAGE <= addr < b.addr:
            return (f"0x{addr:x}, {b.addr - addr} bytes before argument {b.arg + 1}'s "
                    f"buffer")
    if addr < 0x10000:
        return f"0x{addr:x} (near-NULL pointer)"
    given = {b.arg for b in state.buffers}
    for i, r in enumerate(ARG_REGS):
        v = state.regs[r]
        if i not in given and abs(addr - v) < 0x10000:
            return (f"unmapped address 0x{addr:x} = {REG_NAMES[r]}{addr - v:+#x}, and "
                    f"{REG_NAMES[r]} held a random value: if argument {i + 1} is a pointer, "
                    f"say so with --args (ptr:N)")
    return f"unmapped address 0x{addr:x}"


def alignment_message(ins: I.Insn, ea: int, regs: list[int], backend: str) -> str:
    """#GP of a legacy SSE instruction whose m128 operand is not 16-byte aligned."""
    hint = ""
    if ins.ins.memory_base in (I.Register.RSP, I.Register.RBP):
        hint = (f" (rsp % 16 = {regs[7] % 16} here, although it was called with an "
                f"aligned stack: the frame it set up breaks 16-byte alignment)")
    note = "; unicorn would not fault, the CPU does" if backend == "unicorn" else ""
    return (f"raises #GP: '{ins.text}' needs a 16-byte aligned operand, and 0x{ea:x} "
            f"is not{hint}{note}")
