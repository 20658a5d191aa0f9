"""One instruction's effect on a write-order :class:`~framevet.stack.writeflow.Flow`.

Moves, address arithmetic (``lea``, ``add``/``sub``, aligning ``and``), spills
and reloads, the bit operations that build a guard value (``or``, ``and``,
``bts``/``btr``, ``add $1``, byte extracts), SSE copies and ``rep movs``/``stos``
are modelled; anything else makes what it writes unknown.  The flags remember
the last ``test``/``and``/``bt``/``cmp $0`` so branches on ``when`` can be decided.
"""

from __future__ import annotations

import iced_x86
from iced_x86 import Mnemonic as M
from iced_x86 import OpAccess, OpKind

from framevet.cfg.protocols import MASK64, Expr
from framevet.stack.writeflow import (
    RSP,
    Cond,
    Flow,
    Masked,
    Part,
    Stepper,
    Store,
    Value,
    _gpr,
    _xmm,
    as_bits,
    known,
    operand_size,
)

_INFO = iced_x86.InstructionInfoFactory()
_WRITES = (OpAccess.WRITE, OpAccess.READ_WRITE, OpAccess.COND_WRITE, OpAccess.READ_COND_WRITE)
_XMM_LOADS = (M.MOVDQU, M.MOVDQA, M.MOVUPS, M.MOVAPS, M.MOVUPD, M.MOVAPD, M.LDDQU)
#: the low 47 bits: an ``and`` that keeps them keeps a pointer (speculation clamps)
_CLAMP = (1 << 47) - 1
_STRING = {M.MOVSB: 1, M.MOVSW: 2, M.MOVSD: 4, M.MOVSQ: 8,
           M.STOSB: 1, M.STOSW: 2, M.STOSD: 4, M.STOSQ: 8}


def _add(v: Value, w: Value, size: int, sign: int = 1) -> Value:
    if isinstance(v, Expr) and isinstance(w, Expr):
        if w.is_const:
            k = w.const if sign > 0 else -w.const
            r = v.plus(k)
            return r if size == 8 or not r.is_const else \
                Expr((), r.const & ((1 << 8 * size) - 1))
        if sign > 0 and size == 8:
            return v.add(w)
        if v.atoms == w.atoms:
            return Expr((), (v.const - w.const) & MASK64)
        return None
    (vm, vv), (wm, wv) = known(v, size), known(w, size)
    # the low bits are exact as far as both operands are known from bit 0 up
    t = 0
    while t < 8 * size and (vm >> t) & 1 and (wm >> t) & 1:
        t += 1
    if not t:
        return None
    low = (1 << t) - 1
    return as_bits(low, (vv + sign * wv) & low, size)


def _logic(mn: int, v: Value, w: Value, size: int) -> Value:
    (vm, vv), (wm, wv) = known(v, size), known(w, size)
    if mn == M.OR:
        ones = (vm & vv) | (wm & wv)
        zeros = (vm & ~vv) & (wm & ~wv)
        return as_bits(ones | zeros, ones, size)
    if mn == M.AND:
        if isinstance(w, Expr) and not w.is_const and size == 8:
            v, w = w, v
            (vm, vv), (wm, wv) = (wm, wv), (vm, vv)
        if isinstance(v, Expr) and not v.is_const and size == 8:
            if isinstance(w, Expr) and w.is_const and \
                    (-w.const) & MASK64 in (1, 2, 4, 8, 16, 32, 64):
                return Expr(v.atoms, v.const & w.const)  # aligning a pointer
            if wm & wv & _CLAMP == _CLAMP:
                return v       # clamping an address below the canonical hole keeps it
        zeros = (vm & ~vv) | (wm & ~wv)
        ones = (vm & vv) & (wm & wv)
        return as_bits(ones | zeros, ones, size)
    both = vm & wm                                       # xor
    return as_bits(both, (vv ^ wv) & both, size)


class InsnStepper(Stepper):
    def step(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        """Apply ``ins`` (not a call or a branch); return its stores."""
        mn = ins.mnemonic
        if mn in _STRING and ins.op_count == 2 and ins.op0_kind in (
                OpKind.MEMORY_ESRDI, OpKind.MEMORY_ESEDI):
            return self._string(f, ins, _STRING[mn])
        handler = _HANDLERS.get(mn)
        if handler is not None:
            out = handler(self, f, ins)
            if out is not None:
                return out
        return self._generic(f, ins)

    # -- the modelled instructions ----------------------------------------------
    def _mov(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        if ins.op_kind(0) == OpKind.REGISTER and _xmm(ins.op_register(0)) is not None:
            return None
        if ins.op_kind(1) == OpKind.REGISTER and _xmm(ins.op_register(1)) is not None:
            return None
        size = operand_size(ins)
        v = self.get(f, ins, 1, size)
        if size == 4 and ins.op_kind(0) == ins.op_kind(1) == OpKind.REGISTER:
            src = _gpr(ins.op_register(1))
            full = f.regs[src[0]] if src is not None else None
            if isinstance(full, Expr) and len(full.atoms) == 1 and not full.const \
                    and full.atoms[0].kind == "reg":
                v = full      # an unsigned int argument, zero-extended: still "rdx"
        st = self.put(f, ins, 0, v, size)
        return [st] if st else []

    def _movzx(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        if ins.op_kind(1) == OpKind.MEMORY:
            ssize = max(1, iced_x86.MemorySizeInfo(ins.memory_size).size)
        else:
            ssize = iced_x86.RegisterInfo(ins.op_register(1)).size
        v = self.get(f, ins, 1, ssize)
        if not isinstance(v, Part):
            m, val = known(v, ssize)
            hi = 0 if ins.mnemonic != M.MOVZX else MASK64 & ~((1 << 8 * ssize) - 1)
            v = as_bits(m | hi, val)
        self.put(f, ins, 0, v, operand_size(ins))
        return []

    def _lea(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        a = self.address(f, ins)
        if iced_x86.RegisterInfo(ins.op_register(0)).size != 8 and a is not None:
            a = Expr((), a.const & 0xFFFF_FFFF) if a.is_const else None
        g = _gpr(ins.op_register(0))
        if g is not None:
            f.regs[g[0]] = a
        return []

    def _arith(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        mn = ins.mnemonic
        size = operand_size(ins)
        v: Value
        w: Value
        if mn in (M.INC, M.DEC):
            v, w = self.get(f, ins, 0, size), Expr((), 1)
        else:
            if ins.op_kind(0) == OpKind.REGISTER and _gpr(ins.op_register(0)) is None:
                return None
            v, w = self.get(f, ins, 0, size), self.get(f, ins, 1, size)
        if mn in (M.XOR, M.SUB) and ins.op_count == 2 and ins.op_kind(0) == ins.op_kind(1) \
                == OpKind.REGISTER and ins.op_register(0) == ins.op_register(1):
            r: Value = Expr()
        elif mn in (M.ADD, M.INC):
            r = _add(v, w, size)
        elif mn in (M.SUB, M.DEC):
            r = _add(v, w, size, -1)
        else:
            r = _logic(mn, v, w, size)
        cond = Cond(self._tested(f, ins, size), known(w, size)[1]) if mn == M.AND and \
            isinstance(w, Expr) and w.is_const else Cond(r, (1 << 8 * size) - 1)
        if mn == M.AND and isinstance(v, Part) and isinstance(w, Expr) and w.is_const:
            r = Masked(v, w.const & ((1 << 8 * size) - 1))
        st = self.put(f, ins, 0, r, size)
        f.cond = cond
        return [st] if st else []

    def _bit(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        size = operand_size(ins)
        n = self.get(f, ins, 1, 1)
        v = self.get(f, ins, 0, size)
        if not isinstance(n, Expr) or not n.is_const:
            return None
        bit = n.const % (8 * size)
        f.cond = Cond(v, 1 << bit, carry=True)
        if ins.mnemonic == M.BT:
            return []
        m, val = known(v, size)
        if ins.mnemonic == M.BTS:
            r = as_bits(m | 1 << bit, val | 1 << bit, size)
        elif ins.mnemonic == M.BTR:
            r = as_bits(m | 1 << bit, val & ~(1 << bit), size)
        else:
            r = as_bits(m, val ^ (1 << bit), size)
        st = self.put(f, ins, 0, r, size)
        f.cond = Cond(v, 1 << bit, carry=True)
        return [st] if st else []

    def _tested(self, f: Flow, ins: iced_x86.Instruction, size: int) -> Value:
        """Operand 0 as a test sees it: a sub-register of an entry value is tested as the
        whole value (the mask fits in the part tested), so ``when = "rdx & 1"`` matches
        ``test $1,%dl``."""
        if ins.op_kind(0) == OpKind.REGISTER:
            g = _gpr(ins.op_register(0))
            full = f.regs[g[0]] if g is not None else None
            if isinstance(full, Expr) and not full.is_const and not (
                    len(full.atoms) == 1 and full.atoms[0].kind == "load"):
                return full
        return self.get(f, ins, 0, size)

    def _test(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        size = operand_size(ins)
        v, w = self._tested(f, ins, size), self.get(f, ins, 1, size)
        mask = (1 << 8 * size) - 1
        if ins.mnemonic == M.CMP:
            f.cond = Cond(v, mask) if isinstance(w, Expr) and w.is_const and not w.const \
                else None
        elif isinstance(w, Expr) and w.is_const:
            f.cond = Cond(v, w.const & mask)
        elif ins.op_kind(0) == ins.op_kind(1) == OpKind.REGISTER and \
                ins.op_register(0) == ins.op_register(1):
            f.cond = Cond(v.value, v.mask) if isinstance(v, Masked) else Cond(v, mask)
        else:
            f.cond = None
        return []

    def _shift(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        size = operand_size(ins)
        n = self.get(f, ins, 1, 1) if ins.op_count > 1 else Expr((), 1)
        if not isinstance(n, Expr) or not n.is_const or ins.op_kind(0) != OpKind.REGISTER:
            return None
        k = n.const & 63
        m, val = known(self.get(f, ins, 0, size), size)
        full = (1 << 8 * size) - 1
        if ins.mnemonic == M.SHL:
            r = as_bits(((m << k) | ((1 << k) - 1)) & full, (val << k) & full, size)
        elif ins.mnemonic == M.SHR:
            r = as_bits((m >> k) | (full & ~(full >> k)), val >> k, size)
        else:
            r = as_bits(m >> k if not (m >> (8 * size - 1)) & 1 else
                        (m >> k) | (full & ~(full >> k)), val >> k, size)
        self.put(f, ins, 0, r, size)
        f.cond = None
        return []

    def _rotate_carry(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        """``rcr $1``/``rcl $1``: a known value with the carry shifted in unknown."""
        size = operand_size(ins)
        n = self.get(f, ins, 1, 1) if ins.op_count > 1 else Expr((), 1)
        if not isinstance(n, Expr) or n.const != 1 or ins.op_kind(0) != OpKind.REGISTER:
            return None
        m, val = known(self.get(f, ins, 0, size), size)
        top = 8 * size - 1
        if ins.mnemonic == M.RCR:
            r = as_bits(m >> 1, val >> 1, size)
        else:
            r = as_bits((m << 1) & ((1 << top + 1) - 1), (val << 1) & ((1 << top + 1) - 1),
                        size)
        self.put(f, ins, 0, r, size)
        f.cond = None
        return []

    def _push(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        v = self.get(f, ins, 0, 8)
        rsp = f.regs[RSP]
        nrsp = rsp.plus(-8) if isinstance(rsp, Expr) else None
        f.regs[RSP] = nrsp
        f.write(nrsp, 8, (v,))
        return [Store(nrsp, 8, v, (v,))]

    def _pop(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        rsp = f.regs[RSP]
        v = f.read(rsp, 8) if isinstance(rsp, Expr) else None
        f.regs[RSP] = rsp.plus(8) if isinstance(rsp, Expr) else None
        self.put(f, ins, 0, v, 8)
        return []

    def _leave(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        rbp = f.regs[5]
        f.regs[5] = f.read(rbp, 8) if isinstance(rbp, Expr) else None
        f.regs[RSP] = rbp.plus(8) if isinstance(rbp, Expr) else None
        return []

    def _xchg(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        size = operand_size(ins)
        if ins.op_kind(0) == OpKind.MEMORY or ins.op_kind(1) == OpKind.MEMORY:
            mem = 0 if ins.op_kind(0) == OpKind.MEMORY else 1
            v, old = self.get(f, ins, 1 - mem, size), self.get(f, ins, mem, size)
            st = self.put(f, ins, mem, v, size)
            self.put(f, ins, 1 - mem, old, size)
            return [st] if st else []
        a, b = self.get(f, ins, 0, size), self.get(f, ins, 1, size)
        self.put(f, ins, 0, b, size)
        self.put(f, ins, 1, a, size)
        return []

    def _sse(self, f: Flow, ins: iced_x86.Instruction) -> list[Store] | None:
        mn = ins.mnemonic
        k0 = ins.op_kind(0)
        x0 = _xmm(ins.op_register(0)) if k0 == OpKind.REGISTER else None
        k1 = ins.op_kind(1)
        x1 = _xmm(ins.op_register(1)) if k1 == OpKind.REGISTER else None
        if mn in (M.MOVQ, M.MOVD) and x0 is None and k0 == OpKind.REGISTER:
            lo = (f.xmm[x1] or (None, None))[0] if x1 is not None else None
            self.put(f, ins, 0, lo if mn == M.MOVQ else as_bits(*known(lo, 4), 4), 8)
            return []
        if x0 is not None:
            if mn in _XMM_LOADS and k1 == OpKind.MEMORY:
                src = self.address(f, ins)
                f.xmm[x0] = (f.read(src, 8), f.read(src.plus(8), 8)) if src is not None \
                    else None
            elif mn in _XMM_LOADS + (M.MOVQ,) and x1 is not None:
                f.xmm[x0] = f.xmm[x1] if mn != M.MOVQ else \
                    ((f.xmm[x1] or (None, None))[0], Expr())
            elif mn in (M.MOVQ, M.MOVD):
                size = 8 if mn == M.MOVQ else 4
                f.xmm[x0] = (self.get(f, ins, 1, size), Expr())
            elif mn in (M.MOVHPS, M.MOVLPS, M.MOVHPD, M.MOVLPD) and k1 == OpKind.MEMORY:
                src = self.address(f, ins)
                cur = f.xmm[x0] or (None, None)
                half = f.read(src, 8) if src is not None else None
                f.xmm[x0] = (cur[0], half) if mn in (M.MOVHPS, M.MOVHPD) else (half, cur[1])
            elif mn == M.PUNPCKLQDQ and x1 is not None:
                low, high = f.xmm[x0] or (None, None), f.xmm[x1] or (None, None)
                f.xmm[x0] = (low[0], high[0])
            elif mn in (M.PXOR, M.XORPS) and x1 == x0:
                f.xmm[x0] = (Expr(), Expr())
            else:
                f.xmm[x0] = None
            return []
        if k0 == OpKind.MEMORY and x1 is not None:
            dst = self.address(f, ins)
            pair = f.xmm[x1] or (None, None)
            if mn in (M.MOVHPS, M.MOVHPD):
                pair = (pair[1], None)
            size = max(1, iced_x86.MemorySizeInfo(ins.memory_size).size)
            qw = pair[: (size + 7) // 8] if size >= 8 else \
                (as_bits(*known(pair[0], size), size),)
            f.write(dst, size, qw)
            return [Store(dst, size, qw[0] if size <= 8 else None, qw)]
        return None

    def _string(self, f: Flow, ins: iced_x86.Instruction, elem: int) -> list[Store]:
        rdi, rsi, rcx = f.regs[7], f.regs[6], f.regs[1]
        rep = ins.has_rep_prefix or ins.has_repe_prefix
        count: int | None = 1
        if rep:
            count = rcx.const & 0xFFFF_FFFF_FFFF if isinstance(rcx, Expr) and rcx.is_const \
                else None
        dst = rdi if isinstance(rdi, Expr) else None
        n = count * elem if count is not None else None
        if ins.mnemonic in (M.MOVSB, M.MOVSW, M.MOVSD, M.MOVSQ):
            src = rsi if isinstance(rsi, Expr) else None
            qw = tuple(f.read(src.plus(i), min(8, n - i)) for i in range(0, n, 8)) \
                if src is not None and n is not None and n <= 4096 else ()
            st = Store(dst, n, qw[0] if qw and n is not None and n <= 8 else None, qw, src,
                       "rep movs" if rep else "movs")
            f.regs[6] = rsi.plus(n) if isinstance(rsi, Expr) and n is not None else None
        else:
            m, val = known(f.regs[0], elem)
            rpt = val
            for _ in range(8 // elem - 1):
                rpt = rpt << 8 * elem | val
            q = as_bits(MASK64 if m == (1 << 8 * elem) - 1 else 0, rpt)
            qw = tuple(q for _ in range(0, n, 8)) if n is not None and n <= 4096 else ()
            st = Store(dst, n, q if n is not None and n <= 8 else None, qw, None,
                       "rep stos" if rep else "stos")
        f.write(dst, n, qw)
        f.regs[7] = dst.plus(n) if dst is not None and n is not None else None
        if rep:
            f.regs[1] = Expr()
        return [st]

    def _generic(self, f: Flow, ins: iced_x86.Instruction) -> list[Store]:
        out: list[Store] = []
        info = _INFO.info(ins)
        for mem in info.used_memory():
            if mem.access in _WRITES:
                a = self.address(f, ins) if ins.op_count and any(
                    ins.op_kind(i) == OpKind.MEMORY for i in range(ins.op_count)) else None
                size = max(1, iced_x86.MemorySizeInfo(mem.memory_size).size)
                f.write(a, size, ())
                out.append(Store(a, size))
        for ur in info.used_registers():
            if ur.access in _WRITES:
                g = _gpr(ur.register)
                if g is not None:
                    f.regs[g[0]] = None
                x = _xmm(iced_x86.RegisterInfo(ur.register).base + (
                    iced_x86.RegisterInfo(ur.register).number))
                if x is not None and x < 16:
                    f.xmm[x] = None
        if ins.rflags_modified:
            f.cond = None
        return out


_HANDLERS = {
    M.MOV: InsnStepper._mov, M.MOVZX: InsnStepper._movzx, M.MOVSX: InsnStepper._movzx,
    M.MOVSXD: InsnStepper._movzx, M.LEA: InsnStepper._lea,
    M.ADD: InsnStepper._arith, M.SUB: InsnStepper._arith, M.OR: InsnStepper._arith,
    M.AND: InsnStepper._arith, M.XOR: InsnStepper._arith, M.INC: InsnStepper._arith,
    M.DEC: InsnStepper._arith,
    M.BT: InsnStepper._bit, M.BTS: InsnStepper._bit, M.BTR: InsnStepper._bit,
    M.BTC: InsnStepper._bit, M.TEST: InsnStepper._test, M.CMP: InsnStepper._test,
    M.SHL: InsnStepper._shift, M.SHR: InsnStepper._shift, M.SAR: InsnStepper._shift,
    M.RCR: InsnStepper._rotate_carry, M.RCL: InsnStepper._rotate_carry,
    M.PUSH: InsnStepper._push, M.POP: InsnStepper._pop, M.LEAVE: InsnStepper._leave,
    M.XCHG: InsnStepper._xchg,
    **{m: InsnStepper._sse for m in _XMM_LOADS + (M.MOVQ, M.MOVD, M.PUNPCKLQDQ, M.PXOR,
                                                  M.XORPS, M.MOVHPS, M.MOVLPS,
                                                  M.MOVHPD, M.MOVLPD)},
}
