"""Instruction facts the machine needs at each step, decoded once per address (iced-x86)."""

from __future__ import annotations

from dataclasses import dataclass

from iced_x86 import (
    Decoder,
    EncodingKind,
    FlowControl,
    Formatter,
    FormatterSyntax,
    Instruction,
    InstructionInfoFactory,
    MemorySizeExt,
    Mnemonic,
    OpAccess,
    OpKind,
    Register,
    RegisterExt,
)

# step kinds
OTHER, CALL, CALL_IND, JMP_IND, RET, SYSCALL = 0, 1, 2, 3, 4, 5

_FULL_TO_DWARF = {
    Register.RAX: 0, Register.RDX: 1, Register.RCX: 2, Register.RBX: 3, Register.RSI: 4,
    Register.RDI: 5, Register.RBP: 6, Register.RSP: 7, Register.R8: 8, Register.R9: 9,
    Register.R10: 10, Register.R11: 11, Register.R12: 12, Register.R13: 13, Register.R14: 14,
    Register.R15: 15, Register.RIP: 16,
}
_READS = (OpAccess.READ, OpAccess.COND_READ, OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE)
_WRITES = (OpAccess.WRITE, OpAccess.READ_WRITE)
#: ymm0-15 and zmm0-15: the registers whose upper bits make the AVX upper state dirty
#: (the EVEX string functions use ymm16-31 precisely because those do not)
_UPPER_STATE = frozenset([*range(Register.YMM0, Register.YMM15 + 1),
                          *range(Register.ZMM0, Register.ZMM15 + 1)])
_EMMS = (Mnemonic.EMMS, Mnemonic.FEMMS)
_SIMD_STATE = (Mnemonic.FXRSTOR, Mnemonic.FXRSTOR64, Mnemonic.XRSTOR, Mnemonic.XRSTOR64,
               Mnemonic.FNINIT, Mnemonic.FINIT)

#: instructions that load MXCSR or the x87 control word (callee-saved control bits)
_CONTROL = (Mnemonic.LDMXCSR, Mnemonic.VLDMXCSR, Mnemonic.FLDCW, Mnemonic.FLDENV,
            Mnemonic.FRSTOR, Mnemonic.FXRSTOR, Mnemonic.FXRSTOR64, Mnemonic.XRSTOR,
            Mnemonic.XRSTOR64, Mnemonic.FNINIT, Mnemonic.FINIT)

#: legacy SSE instructions whose m128 operand may be unaligned
_UNALIGNED_OK = (Mnemonic.MOVUPS, Mnemonic.MOVUPD, Mnemonic.MOVDQU, Mnemonic.LDDQU,
                 Mnemonic.PCMPESTRI, Mnemonic.PCMPESTRI64, Mnemonic.PCMPESTRM,
                 Mnemonic.PCMPISTRI, Mnemonic.PCMPISTRM, Mnemonic.MASKMOVDQU)

_formatter = Formatter(FormatterSyntax.GAS)
_formatter.uppercase_hex = False
_formatter.branch_leading_zeros = False
_info = InstructionInfoFactory()


def dwarf_reg(reg: int) -> int:
    """DWARF number of the 64-bit register holding ``reg`` (-1 if not a GPR)."""
    return _FULL_TO_DWARF.get(RegisterExt.full_register(reg), -1)  # type: ignore[arg-type]


@dataclass(slots=True)
class Insn:
    addr: int
    length: int
    text: str
    kind: int
    target: int                  # direct call/jmp target
    ret_pop: int                 # ret imm16
    reads64: tuple[int, ...]     # DWARF regs read at full 64-bit width
    writes32: tuple[int, ...]    # DWARF regs written at 32 or 64 bits (upper half defined)
    mmx: bool                    # touches MMX/x87 register state
    emms: bool                   # empties it (emms, femms, fninit, fxrstor...)
    valid: bool
    vex: bool                    # VEX/EVEX encoded (AVX): unicorn 2.1 cannot run most
    rep: bool                    # rep/repe/repne prefix: one hook call per iteration
    ctl: bool                    # may load MXCSR or the x87 control word
    align16: bool                # legacy SSE m128 (or fxsave m512) operand: #GP if misaligned
    ins: Instruction
    upper: int = 0               # +1 writes a ymm/zmm register, -1 vzeroupper/vzeroall
    port: int = 0                # 1 in, 2 out (register forms: the machine supplies values)
    mem_size: int = 0            # bytes of the memory operand

    def mem_addr(self, regs: list[int]) -> int:
        """Effective address of the memory operand (segment bases are 0)."""
        ins = self.ins
        if ins.is_ip_rel_memory_operand:
            return int(ins.ip_rel_memory_address)
        addr = ins.memory_displacement
        if ins.memory_base != Register.NONE:
            b = dwarf_reg(ins.memory_base)
            addr += regs[b] if 0 <= b < 16 else 0
        if ins.memory_index != Register.NONE:
            x = dwarf_reg(ins.memory_index)
            addr += (regs[x] if 0 <= x < 16 else 0) * ins.memory_index_scale
        return int(addr) & (1 << 64) - 1

    def operand_target(self, regs: list[int], read64: object) -> int | None:
        """Target of an indirect call/jmp given register values; ``read64(addr)`` reads memory."""
        ins = self.ins
        if ins.op0_kind == OpKind.REGISTER:
            r = dwarf_reg(ins.op0_register)
            return regs[r] if 0 <= r < 16 else None
        if ins.op0_kind != OpKind.MEMORY:
            return None
        value = read64(self.mem_addr(regs))  # type: ignore[operator]
        return value if isinstance(value, int) else None


def decode(code: bytes, addr: int) -> Insn:
    """Decode the instruction at the start of ``code`` (which is mapped at ``addr``)."""
    dec = Decoder(64, code, ip=addr)
    ins = dec.decode()
    valid = not ins.is_invalid
    text = _formatter.format(ins) if valid else f"(bad) {code[:1].hex()}"
    fc = ins.flow_control
    kind = OTHER
    target = 0
    if ins.mnemonic in (Mnemonic.SYSCALL, Mnemonic.SYSENTER):   # iced: flow control CALL
        kind = SYSCALL
    elif fc == FlowControl.CALL:
        kind, target = CALL, ins.near_branch_target
    elif fc == FlowControl.INDIRECT_CALL:
        kind = CALL_IND
    elif fc == FlowControl.INDIRECT_BRANCH:
        kind = JMP_IND
    elif fc == FlowControl.RETURN and ins.mnemonic == Mnemonic.RET:
        kind = RET
    reads: set[int] = set()
    writes: set[int] = set()
    mmx = False
    if valid:
        for u in _info.info(ins).used_registers():
            reg = u.register
            if RegisterExt.is_mm(reg) or RegisterExt.is_st(reg):
                mmx = True
                continue
            r = dwarf_reg(reg)
            if r < 0:
                continue
            size = RegisterExt.size(reg)
            if u.access in _READS and size == 8:
                reads.add(r)
            if u.access in _WRITES and size >= 4:
                writes.add(r)
    mn = ins.mnemonic
    emms = mn in _EMMS or mn in _SIMD_STATE
    if not mmx and valid and _formatter.format_mnemonic(ins).startswith("f"):
        mmx = True   # x87 instructions without explicit ST operands (fld1, fstp mem...)
    vex = valid and _is_vex(code)
    ret_pop = ins.immediate16 if kind == RET and ins.op_count == 1 else 0
    upper = 0
    if valid and mn in (Mnemonic.VZEROUPPER, Mnemonic.VZEROALL):
        upper = -1
    elif vex and ins.op_count and ins.op0_kind == OpKind.REGISTER \
            and ins.op0_register in _UPPER_STATE:
        upper = 1          # a 256/512-bit destination (iced lists every VEX write as zmm)
    port = {Mnemonic.IN: 1, Mnemonic.OUT: 2}.get(mn, 0) if valid else 0
    has_mem = valid and any(ins.op_kind(i) == OpKind.MEMORY for i in range(ins.op_count))
    mem_size = MemorySizeExt.size(ins.memory_size) if has_mem else 0
    return Insn(addr, ins.len if valid else 1, text, kind, target, ret_pop,
                tuple(sorted(reads)), tuple(sorted(writes)), mmx and not emms, emms,
                valid, vex, valid and (ins.has_rep_prefix or ins.has_repe_prefix
                                       or ins.has_repne_prefix), mn in _CONTROL,
                valid and _needs_align16(ins), ins, upper, port, mem_size)


def _needs_align16(ins: Instruction) -> bool:
    if ins.encoding != EncodingKind.LEGACY or ins.mnemonic in _UNALIGNED_OK:
        return False
    if not any(ins.op_kind(i) == OpKind.MEMORY for i in range(ins.op_count)):
        return False
    size = MemorySizeExt.size(ins.memory_size)
    if size == 512:
        return ins.mnemonic in (Mnemonic.FXSAVE, Mnemonic.FXSAVE64, Mnemonic.FXRSTOR,
                                Mnemonic.FXRSTOR64)
    return size == 16 and ins.mnemonic not in (Mnemonic.CMPXCHG16B,)


def _is_vex(code: bytes) -> bool:
    i = 0
    while i < len(code) and code[i] in (0x66, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65,
                                         0x67, 0xF0):
        i += 1
    return i < len(code) and code[i] in (0xC4, 0xC5, 0x62)


def port_size(insn: Insn) -> int:
    """Bytes an ``in``/``out`` moves (al/ax/eax)."""
    ins = insn.ins
    reg = ins.op0_register if insn.port == 1 else ins.op1_register
    return max(1, RegisterExt.size(reg))
