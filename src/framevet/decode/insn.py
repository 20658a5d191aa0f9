"""Decode executable sections once into compact per-instruction records.

Each section becomes a :class:`DecodedSection`: parallel lists indexed by
instruction number (offset, length, kind, stack operations, direct branch
target).  Classification follows objtool 6.1's x86 decoder exactly
(``arch/x86/decode.c``), including its blind spots, because ORC parity depends
on them: only REX.W forms of mov/add/sub/and/lea touch the stack state,
``mov %rsp,%rbp`` in its ``48 8b ec`` encoding is not a frame setup, VEX/EVEX
instructions never touch it, ``enter`` is not modelled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import iced_x86
from iced_x86 import Code, OpKind, Register

# Instruction kinds (objtool's INSN_*).
OTHER, JUMP_COND, JUMP_UNCOND, JUMP_DYNAMIC, JUMP_DYNAMIC_COND = 0, 1, 2, 3, 4
CALL, CALL_DYNAMIC, RETURN, CONTEXT_SWITCH, BUG, NOP, TRAP = 5, 6, 7, 8, 9, 10, 11
STAC, CLAC, STD, CLD, ENDBR = 12, 13, 14, 15, 16

KIND_NAMES = {
    OTHER: "other", JUMP_COND: "jcc", JUMP_UNCOND: "jmp", JUMP_DYNAMIC: "jmp*",
    JUMP_DYNAMIC_COND: "jcc*", CALL: "call", CALL_DYNAMIC: "call*", RETURN: "ret",
    CONTEXT_SWITCH: "context-switch", BUG: "ud2", NOP: "nop", TRAP: "int3", STAC: "stac",
    CLAC: "clac", STD: "std", CLD: "cld", ENDBR: "endbr",
}

# Stack operation operand types (objtool's OP_DEST_* / OP_SRC_*).
D_REG, D_REG_INDIRECT, D_MEM, D_PUSH, D_PUSHF = 0, 1, 2, 3, 4
S_REG, S_REG_INDIRECT, S_CONST, S_POP, S_POPF, S_ADD, S_AND = 0, 1, 2, 3, 4, 5, 6

# Hardware register numbers (objtool's CFI_* for x86).
AX, CX, DX, BX, SP, BP, SI, DI = 0, 1, 2, 3, 4, 5, 6, 7
R8, R9, R10, R11, R12, R13, R14, R15 = 8, 9, 10, 11, 12, 13, 14, 15
REG_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "ra"]

#: A stack operation: (dest type, dest reg, dest offset, src type, src reg, src offset).
StackOp = tuple[int, int, int, int, int, int]

_HW: dict[int, int] = {}
for _i, _names in enumerate(zip(
        ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [f"R{n}" for n in range(8, 16)],
        ["EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"] + [f"R{n}D" for n in range(8, 16)],
        ["AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI"] + [f"R{n}W" for n in range(8, 16)],
        ["AL", "CL", "DL", "BL", "SPL", "BPL", "SIL", "DIL"] + [f"R{n}L" for n in range(8, 16)],
        strict=True)):
    for _n in _names:
        _HW[getattr(Register, _n)] = _i
for _n, _i in (("AH", 4), ("CH", 5), ("DH", 6), ("BH", 7)):
    _HW[getattr(Register, _n)] = _i

# Classification categories by iced Code; resolved per instruction below.
(C_ADDSUB_REG, C_PUSH_REG, C_POP_REG, C_PUSH_CONST, C_JCC, C_ARITH_IMM, C_MOV_STORE,
 C_MOV_LOAD, C_LEA, C_POP_MEM, C_NOP, C_PUSHF, C_POPF, C_CLAC, C_STAC, C_CTX, C_BUG,
 C_ENDBR, C_LEAVE, C_TRAP, C_JMP, C_RET, C_IRET, C_CALL, C_CLD, C_STD, C_CALL_DYN,
 C_JMP_DYN, C_ENQCMD) = range(1, 30)


_CODE_NAMES = [n for n in dir(Code) if not n.startswith("_")]


def _codes(*names: str) -> list[int]:
    return [getattr(Code, n) for n in names if hasattr(Code, n)]


def _build_table() -> dict[int, int]:
    t: dict[int, int] = {}

    def put(cat: int, codes: list[int]) -> None:
        for c in codes:
            t[c] = cat

    put(C_ADDSUB_REG, _codes("ADD_RM64_R64", "SUB_RM64_R64"))
    put(C_PUSH_REG, _codes("PUSH_R64", "PUSH_R16"))
    put(C_POP_REG, _codes("POP_R64", "POP_R16"))
    put(C_PUSH_CONST, _codes("PUSHQ_IMM32", "PUSHQ_IMM8", "PUSH_IMM16", "PUSHW_IMM8",
                             "PUSHQ_FS", "PUSHQ_GS", "PUSHW_FS", "PUSHW_GS",
                             "PUSH_RM64", "PUSH_RM16"))
    put(C_POP_MEM, _codes("POPQ_FS", "POPQ_GS", "POPW_FS", "POPW_GS", "POP_RM64", "POP_RM16"))
    jcc = [c for n in _CODE_NAMES if n[0] == "J" and re.fullmatch(r"J(?!MP)[A-Z]+_REL(8|32)_64", n)
           for c in _codes(n)]
    loops = r"(LOOP[A-Z]*_REL8_64_[A-Z]+|J[RE]?CXZ_REL8_64)"
    jcc += [c for n in _CODE_NAMES if n[0] in "JL" and re.fullmatch(loops, n)
            for c in _codes(n)]
    put(C_JCC, jcc)
    put(C_ARITH_IMM, _codes("ADD_RM64_IMM8", "ADD_RM64_IMM32", "SUB_RM64_IMM8", "SUB_RM64_IMM32",
                            "AND_RM64_IMM8", "AND_RM64_IMM32"))
    put(C_MOV_STORE, _codes("MOV_RM64_R64"))
    put(C_MOV_LOAD, _codes("MOV_R64_RM64"))
    put(C_LEA, _codes("LEA_R64_M"))
    nops = _codes("NOPD", "NOPW", "NOPQ", "PAUSE", "NOP_RM16", "NOP_RM32", "NOP_RM64",
                  "PREFETCH_M8", "PREFETCHW_M8", "PREFETCHWT1_M8")
    nops += [c for n in _CODE_NAMES if n.startswith("RESERVEDNOP_") and "0F0D" in n
             for c in _codes(n)]
    put(C_NOP, nops)
    put(C_PUSHF, _codes("PUSHFQ", "PUSHFW"))
    put(C_POPF, _codes("POPFQ", "POPFW"))
    put(C_CLAC, _codes("CLAC"))
    put(C_STAC, _codes("STAC"))
    put(C_CTX, _codes("SYSCALL", "SYSRETD", "SYSRETQ", "SYSENTER", "SYSEXITD", "SYSEXITQ",
                      "RETFD", "RETFD_IMM16", "RETFQ", "RETFQ_IMM16", "RETFW", "RETFW_IMM16",
                      "JMP_M1616", "JMP_M1632", "JMP_M1664"))
    put(C_BUG, _codes("UD2", "UD1_R16_RM16", "UD1_R32_RM32", "UD1_R64_RM64"))
    put(C_ENDBR, _codes("ENDBR64", "ENDBR32"))
    put(C_LEAVE, _codes("LEAVEQ", "LEAVEW"))
    put(C_TRAP, _codes("INT3"))
    put(C_JMP, _codes("JMP_REL32_64", "JMP_REL8_64"))
    put(C_RET, _codes("RETNQ", "RETNQ_IMM16", "RETNW", "RETNW_IMM16"))
    put(C_IRET, _codes("IRETQ", "IRETD", "IRETW"))
    put(C_CALL, _codes("CALL_REL32_64"))
    put(C_CLD, _codes("CLD"))
    put(C_STD, _codes("STD"))
    put(C_CALL_DYN, _codes("CALL_RM64", "CALL_M1616", "CALL_M1632", "CALL_M1664"))
    put(C_JMP_DYN, _codes("JMP_RM64"))
    put(C_ENQCMD, _codes("ENQCMD_R64_M512"))
    return t


_TABLE = _build_table()
_SIMPLE_KIND = {
    C_JCC: JUMP_COND, C_NOP: NOP, C_CLAC: CLAC, C_STAC: STAC, C_CTX: CONTEXT_SWITCH,
    C_BUG: BUG, C_ENDBR: ENDBR, C_TRAP: TRAP, C_JMP: JUMP_UNCOND, C_RET: RETURN,
    C_CLD: CLD, C_STD: STD, C_CALL_DYN: CALL_DYNAMIC, C_JMP_DYN: JUMP_DYNAMIC,
}
_PUSH_CONST: tuple[StackOp, ...] = ((D_PUSH, 0, 0, S_CONST, 0, 0),)
_PUSHF: tuple[StackOp, ...] = ((D_PUSHF, 0, 0, S_CONST, 0, 0),)
_POP_MEM: tuple[StackOp, ...] = ((D_MEM, 0, 0, S_POP, 0, 0),)
_POPF: tuple[StackOp, ...] = ((D_MEM, 0, 0, S_POPF, 0, 0),)
_LEAVE: tuple[StackOp, ...] = ((D_REG, SP, 0, S_REG, BP, 0), (D_REG, BP, 0, S_POP, 0, 0))
_IRET_IN_FUNC: tuple[StackOp, ...] = ((D_REG, SP, 0, S_ADD, SP, 40),)
_PUSH_REG = tuple(((D_PUSH, 0, 0, S_REG, r, 0),) for r in range(16))
_POP_REG = tuple(((D_REG, r, 0, S_POP, 0, 0),) for r in range(16))

_CS_HW = (BX, BP, R12, R13, R14, R15)
_CS_REG = {reg: 1 << hw for reg, hw in _HW.items() if hw in _CS_HW}
_ALL_CS = sum(1 << r for r in _CS_HW)
#: instructions that write callee-saved registers other than through operand 0
_IMPLICIT_CS = {c: 0 for c in _codes(
    "XCHG_RM64_R64", "XCHG_RM32_R32", "XCHG_RM16_R16", "XCHG_RM8_R8", "XCHG_R64_RAX",
    "XCHG_R32_EAX", "XADD_RM64_R64", "XADD_RM32_R32")}
_IMPLICIT_CS.update({c: 1 << BX for c in _codes("CPUID", "CMPXCHG16B_M128", "CMPXCHG8B_M64")})
_IMPLICIT_CS.update({c: 1 << BP for c in _codes("LEAVEQ", "LEAVEW", "ENTERQ_IMM16_IMM8")})
_IMPLICIT_CS.update({c: _ALL_CS for c in _codes("XRSTOR_MEM", "XRSTOR64_MEM", "POPAD",
                                                 "SYSCALL", "VMCALL", "VMMCALL", "VMLAUNCH",
                                                 "VMRESUME", "VMRUN")})

#: instructions whose register operand 0 is only read
_READS_OP0 = frozenset(getattr(Code, n) for n in _CODE_NAMES
                       if n.startswith(("PUSH_", "CMP_", "TEST_", "BT_", "CALL_", "JMP_",
                                        "UD0_", "UD1_")))

SP_MARK = -1
_OP0_INFO: dict[int, int] = dict(_CS_REG)
_OP0_INFO.update({r: SP_MARK for r in (Register.RSP, Register.ESP, Register.SP, Register.SPL)})

#: operand accesses that may change the operand
WRITE_ACCESS = frozenset({iced_x86.OpAccess.WRITE, iced_x86.OpAccess.READ_WRITE,
                          iced_x86.OpAccess.COND_WRITE, iced_x86.OpAccess.READ_COND_WRITE})
#: iced's operand-access analysis, for the few instructions decoded again in full
INFO = iced_x86.InstructionInfoFactory()
#: any general-purpose register (every width, ah..bh included) -> its hardware number
_FULL_HW = {r: _HW[iced_x86.RegisterExt.full_register(r)] for r in _HW}  # type: ignore[arg-type]


def hw_register(reg: int) -> int:
    """Hardware number of the general-purpose register ``reg`` belongs to, else -1."""
    return _FULL_HW.get(reg, -1)


def gprs_written(info: iced_x86.InstructionInfo) -> int:
    """Bit mask (hardware numbers) of the general-purpose registers an instruction may
    write, from its :data:`INFO` analysis: implicit writes included (cpuid, xchg...)."""
    mask = 0
    for u in info.used_registers():
        if u.access in WRITE_ACCESS:
            hw = _FULL_HW.get(u.register)
            if hw is not None:
                mask |= 1 << hw
    return mask


_MEM = OpKind.MEMORY
_REGK = OpKind.REGISTER
_RIP = Register.RIP
_NONE = Register.NONE


def _signed64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _mem_base(ins: iced_x86.Instruction) -> int:
    """objtool's view of a memory operand's base when it has no index, else -1.

    Absolute [disp32] is encoded through a SIB byte whose base field is rbp;
    objtool reads that field as rbp, so we do too.  RIP-relative: -2.
    """
    base = ins.memory_base
    if base == _RIP:
        return -2
    if ins.memory_index != _NONE:
        return -1
    if base == _NONE:
        return BP
    return _HW.get(base, -1)


@dataclass
class DecodedSection:
    """All instructions of one executable section, as parallel lists."""

    index: int
    name: str
    size: int
    off: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    ops: list[tuple[StackOp, ...] | None] = field(default_factory=list)
    #: direct branch/call target as a section offset (before relocation), else -1
    target: list[int] = field(default_factory=list)
    #: offsets iced could not decode (objtool: "can't decode instruction")
    invalid: list[int] = field(default_factory=list)
    #: what objtool's decoder prints, in offset order: (offset, rule id, message, fatal)
    problems: list[tuple[int, str, str, bool]] = field(default_factory=list)
    #: instruction numbers of VMLAUNCH/VMRESUME: execution resumes at the VMCS host RIP
    vm_entries: list[int] = field(default_factory=list)
    #: instruction number -> bit mask of callee-saved registers it may write (an
    #: over-approximation: it only selects functions for the exact register dataflow)
    cs_writes: dict[int, int] = field(default_factory=dict)
    #: instruction numbers that may store through an rsp/rbp-based memory operand
    stack_stores: list[int] = field(default_factory=list)
    #: instruction numbers whose first operand is rsp/esp/sp (profile user: writes to
    #: rsp that objtool's model leaves out make the CFA unknown)
    sp_writes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.off)


def decode_section(index: int, name: str, data: bytes, iret_is_func: object = None,
                   skip: list[tuple[int, int]] | None = None) -> DecodedSection:
    """Decode ``data`` (a whole section).  ``iret_is_func(off)`` says whether an
    ``iret`` at ``off`` is inside an STT_FUNC symbol (sync_core's IRET-to-self).
    The sorted, disjoint ``[start, end)`` ranges of ``skip`` are not code."""
    ds = DecodedSection(index, name, len(data))
    off_l, len_l, kind_l, ops_l, tgt_l = ds.off, ds.length, ds.kind, ds.ops, ds.target
    table = _TABLE
    invalid_code = Code.INVALID
    vm_launch, vm_resume = Code.VMLAUNCH, Code.VMRESUME
    decoder: Iterable[iced_x86.Instruction] = (
        _outside(data, skip) if skip else iced_x86.Decoder(64, data, ip=0))
    cs_writes = ds.cs_writes
    cs_reg = _CS_REG
    reads_op0 = _READS_OP0
    stack_stores = ds.stack_stores
    mem_kind = _MEM
    frame_bases = (Register.RSP, Register.RBP)
    implicit = _IMPLICIT_CS
    sp_writes = ds.sp_writes
    # operand-0 register -> callee-saved bit, or SP_MARK for rsp and its parts
    op0_info = _OP0_INFO
    i = -1
    for ins in decoder:
        i += 1
        ip = ins.ip
        n = ins.len
        code = ins.code
        k0 = ins.op0_kind
        if k0 == _REGK:
            r0 = ins.op0_register
            info = op0_info.get(r0)
            if info == SP_MARK:
                if code not in reads_op0:
                    sp_writes.append(i)
                if code in implicit:
                    cs_writes[i] = implicit[code] | cs_reg.get(ins.op1_register, 0)
            elif info is not None and code not in reads_op0:
                cs_writes[i] = info
            elif code in implicit:
                cs_writes[i] = implicit[code] | cs_reg.get(ins.op1_register, 0)
        elif k0 == mem_kind:
            if ins.memory_base in frame_bases and code not in reads_op0:
                stack_stores.append(i)
        elif code in implicit:
            cs_writes[i] = implicit[code]
        off_l.append(ip)
        len_l.append(n)
        cat = table.get(code)
        if cat is None:
            if code == invalid_code:
                ds.invalid.append(ip)
                ds.problems.append(_invalid(name, data, ip))
            elif code == vm_launch or code == vm_resume:
                ds.vm_entries.append(len(kind_l))
            kind_l.append(OTHER)
            ops_l.append(None)
            tgt_l.append(-1)
            continue
        kind, ops, tgt = _classify(ds, ins, cat, data, iret_is_func)
        kind_l.append(kind)
        ops_l.append(ops)
        tgt_l.append(tgt)
    return ds


def _classify(ds: DecodedSection, ins: iced_x86.Instruction, cat: int, data: bytes,
              iret_is_func: object) -> tuple[int, tuple[StackOp, ...] | None, int]:
    """(kind, stack operations, direct target) of an instruction of category ``cat``;
    decode problems objtool reports are added to ``ds``."""
    ip = ins.ip
    kind = _SIMPLE_KIND.get(cat, OTHER)
    ops: tuple[StackOp, ...] | None = None
    tgt = -1
    if cat == C_JCC or cat == C_JMP:
        tgt = _signed64(ins.near_branch_target)
    elif cat == C_CALL:
        kind = CALL
        ops = _PUSH_CONST
        tgt = _signed64(ins.near_branch_target)
    elif cat == C_PUSH_REG:
        ops = _PUSH_REG[_HW[ins.op0_register]]
    elif cat == C_POP_REG:
        ops = _POP_REG[_HW[ins.op0_register]]
    elif cat == C_PUSH_CONST:
        ops = _PUSH_CONST
    elif cat == C_POP_MEM:
        ops = _POP_MEM
    elif cat == C_PUSHF:
        ops = _PUSHF
    elif cat == C_POPF:
        ops = _POPF
    elif cat == C_LEAVE:
        ops = _LEAVE
    elif cat == C_IRET:
        if iret_is_func is not None and iret_is_func(ip):  # type: ignore[operator]
            ops = _IRET_IN_FUNC
        else:
            kind = CONTEXT_SWITCH
    elif cat == C_ARITH_IMM:
        ops = _arith_imm(ins)
    elif cat == C_ADDSUB_REG:
        if ins.op0_kind == _REGK and ins.op0_register == Register.RSP:
            ops = ((D_REG, SP, 0, S_ADD, _HW[ins.op1_register], 0),)
    elif cat == C_MOV_STORE:
        ops = _mov_store(ins)
    elif cat == C_MOV_LOAD:
        ops = _mov_load(ins)
    elif cat == C_LEA:
        ops = _lea(ins)
    elif cat == C_CALL_DYN or cat == C_JMP_DYN:
        if 0x3E in _prefixes(data, ip):
            ds.problems.append((ip, "notrack-prefix",
                                f"notrack prefix found at {ds.name}:0x{ip:x}", False))
    elif cat == C_ENQCMD:
        if _prefixes(data, ip) == b"\xf2":
            ds.problems.append((ip, "enqcmd-instruction",
                                f"ENQCMD instruction at {ds.name}:{ip:x}", False))
    return kind, ops, tgt


def _outside(data: bytes, skip: list[tuple[int, int]]) -> Iterator[iced_x86.Instruction]:
    """The instructions of ``data`` outside the ``skip`` ranges."""
    pos = 0
    for start, end in [*skip, (len(data), len(data))]:
        if start > pos:
            yield from iced_x86.Decoder(64, data[pos:start], ip=pos)
        pos = max(pos, end)


_LEGACY_PREFIXES = frozenset(b"\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65\x66\x67")


def _prefixes(data: bytes, ip: int) -> bytes:
    """The legacy prefix bytes of the instruction at ``ip`` (objtool's insn.prefixes)."""
    end = ip
    while end < len(data) and data[end] in _LEGACY_PREFIXES:
        end += 1
    return data[ip:end]


def _invalid(name: str, data: bytes, ip: int) -> tuple[int, str, str, bool]:
    """What objtool makes of bytes iced rejects.  Its decoder accepts ``lea`` with a
    register operand (ModRM.mod = 3, #UD on real hardware) and only warns; anything
    else is "can't decode instruction", which aborts the file."""
    i = ip + len(_prefixes(data, ip))
    if i < len(data) and 0x40 <= data[i] <= 0x4F:
        i += 1
    if i + 1 < len(data) and data[i] == 0x8D and data[i + 1] >> 6 == 3:
        return (ip, "invalid-lea-encoding", f"invalid LEA encoding at {name}:0x{ip:x}", False)
    return (ip, "undecodable-instruction", f"can't decode instruction at {name}:0x{ip:x}", True)


def _arith_imm(ins: iced_x86.Instruction) -> tuple[StackOp, ...] | None:
    if ins.op0_kind != _REGK or ins.op0_register != Register.RSP:
        return None
    imm = _signed64(ins.immediate(1))
    mn = ins.mnemonic
    if mn == iced_x86.Mnemonic.SUB:
        return ((D_REG, SP, 0, S_ADD, SP, -imm),)
    if mn == iced_x86.Mnemonic.ADD:
        return ((D_REG, SP, 0, S_ADD, SP, imm),)
    return ((D_REG, SP, 0, S_AND, SP, imm),)


def _mov_store(ins: iced_x86.Instruction) -> tuple[StackOp, ...] | None:
    """0x89 with REX.W: ``mov %reg, r/m64``."""
    src = _HW[ins.op1_register]
    if ins.op0_kind == _REGK:
        dst = _HW[ins.op0_register]
        if src == SP:
            return ((D_REG, dst, 0, S_REG, SP, 0),)          # mov %rsp, %reg
        if dst == SP:
            return ((D_REG, SP, 0, S_REG, src, 0),)          # mov %reg, %rsp
        return None
    base = _mem_base(ins)
    if base < 0:
        return None
    disp = _signed64(ins.memory_displacement)
    if src == SP:
        return ((D_REG_INDIRECT, base, disp, S_REG, SP, 0),)  # mov %rsp, disp(%reg)
    if base == BP or base == SP:
        return ((D_REG_INDIRECT, base, disp, S_REG, src, 0),)  # save to stack/frame slot
    return None


def _mov_load(ins: iced_x86.Instruction) -> tuple[StackOp, ...] | None:
    """0x8b with REX.W: ``mov r/m64, %reg`` (memory forms only, as objtool)."""
    if ins.op1_kind != _MEM:
        return None
    base = _mem_base(ins)
    if base != BP and base != SP:
        return None
    disp = _signed64(ins.memory_displacement)
    return ((D_REG, _HW[ins.op0_register], 0, S_REG_INDIRECT, base, disp),)


def _lea(ins: iced_x86.Instruction) -> tuple[StackOp, ...] | None:
    base = _mem_base(ins)
    if base < 0:
        return None
    disp = _signed64(ins.memory_displacement)
    dst = _HW[ins.op0_register]
    if disp == 0:
        return ((D_REG, dst, 0, S_REG, base, 0),)
    return ((D_REG, dst, 0, S_ADD, base, disp),)
