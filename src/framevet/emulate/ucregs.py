"""Fast register access to unicorn: the 16 GPRs, rip and rflags in DWARF order."""

from __future__ import annotations

import ctypes

from unicorn import Uc
from unicorn import x86_const as X

#: unicorn ids of the DWARF-ordered GPRs, then rip and rflags
UC_REGS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX, X.UC_X86_REG_RBX,
           X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP,
           X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
           X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
           X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS]
XMM = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]


class RegFile:
    """Reads the 16 GPRs, rip and rflags (DWARF order) in one ``uc_reg_read_batch`` call."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        n = len(UC_REGS)
        self.n = n
        self.fast = None
        try:
            from unicorn.unicorn_py3.unicorn import uclib  # internal: 15x faster than the API

            self.ids = (ctypes.c_int32 * n)(*UC_REGS)
            self.vals = (ctypes.c_uint64 * n)()
            base = ctypes.addressof(self.vals)
            self.ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
            self.fast = uclib.uc_reg_read_batch
            self.handle = uc._uch
            self.read()
        except Exception:  # noqa: BLE001 - any binding change: use the public API
            self.fast = None

    def read(self) -> list[int]:
        if self.fast is not None:
            if self.fast(self.handle, self.ids, self.ptrs, self.n) == 0:
                return self.vals[:]
        return list(self.uc.reg_read_batch(UC_REGS))  # type: ignore[attr-defined]
