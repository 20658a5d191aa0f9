"""The stack-effect model, one instruction form at a time (design §3).

Each case assembles a tiny function and checks the CFA rule (and saved registers)
framevet derives before chosen instructions.  The same forms are checked against
objtool's own ORC in test_objtool_parity (tests/fixtures/stack-forms).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assemble

from framevet.cfg.build import build
from framevet.decode.state import BP_INDIRECT, CFA_BASE, CFA_OFF, UNDEFINED
from framevet.load.elf import parse_elf
from framevet.stack.walker import walk

SP, BP, R10 = 4, 5, 10

CASES = {
    # name: (body, [(instruction index, cfa base, cfa offset)])
    "push-pop": ("push %rbx\n pop %rbx\n ret", [(0, SP, 8), (1, SP, 16), (2, SP, 8)]),
    "push-imm-mem": ("push $1\n push 8(%rdi)\n pop (%rdi)\n pop %rax\n ret",
                     [(1, SP, 16), (2, SP, 24), (3, SP, 16), (4, SP, 8)]),
    "pushf-popf": ("pushfq\n popfq\n ret", [(1, SP, 16), (2, SP, 8)]),
    "sub-add-imm8": ("sub $0x18,%rsp\n add $0x18,%rsp\n ret", [(1, SP, 32), (2, SP, 8)]),
    "sub-add-imm32": ("sub $0x1000,%rsp\n add $0x1000,%rsp\n ret",
                      [(1, SP, 0x1008), (2, SP, 8)]),
    "lea-rsp": ("lea -0x20(%rsp),%rsp\n lea 0x20(%rsp),%rsp\n ret", [(1, SP, 40), (2, SP, 8)]),
    "frame-leave": ("push %rbp\n mov %rsp,%rbp\n sub $16,%rsp\n leave\n ret",
                    [(1, SP, 16), (2, BP, 16), (3, BP, 16), (4, SP, 8)]),
    "frame-restore": ("push %rbp\n mov %rsp,%rbp\n push %rbx\n mov %rbp,%rsp\n pop %rbp\n ret",
                      [(3, BP, 16), (4, BP, 16), (5, SP, 8)]),
    "realign-bp": ("push %rbp\n mov %rsp,%rbp\n and $-32,%rsp\n sub $64,%rsp\n leave\n ret",
                   [(3, BP, 16), (4, BP, 16), (5, SP, 8)]),
    "drap": ("lea 0x8(%rsp),%r10\n and $-32,%rsp\n push -0x8(%r10)\n push %rbp\n"
             " mov %rsp,%rbp\n push %r10\n sub $32,%rsp\n lea -0x8(%rbp),%rsp\n pop %r10\n"
             " pop %rbp\n lea -0x8(%r10),%rsp\n ret",
             [(1, SP, 8), (2, R10, 0), (6, BP_INDIRECT, -8), (9, R10, 0), (11, SP, 8)]),
    "saved-rsp-copy": ("mov %rsp,%rax\n sub $0x40,%rsp\n mov %rax,%rsp\n ret",
                       [(2, SP, 0x48), (3, SP, 8)]),
    "unknown-rsp-write": ("mov %rdi,%rsp\n ret", [(1, UNDEFINED, 0)]),
}


def _states(tmp: Path, body: str) -> list[tuple[int, int]]:
    src = tmp / "f.S"
    src.write_text(f".text\n.globl f\n.type f,@function\nf:\n {body}\n.size f,.-f\n")
    elf = parse_elf(assemble(src).read_bytes(), "f.o")
    prog = build(elf)
    res = walk(prog)
    out = []
    for c in res.cfi:
        out.append((c[CFA_BASE], c[CFA_OFF]) if c is not None else (UNDEFINED, 0))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_form(name: str, tmp_path: Path) -> None:
    body, expect = CASES[name]
    states = _states(tmp_path, body)
    for index, base, off in expect:
        got = states[index]
        want = (base, off) if base != UNDEFINED else (UNDEFINED, 0)
        assert got == want, f"{name}: instruction {index}: {got} != {want}"


def test_callee_saved_slots_tracked(tmp_path: Path) -> None:
    src = tmp_path / "f.S"
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n push %rbp\n push %rbx\n"
                   " mov %r12,8(%rsp)\n pop %rbx\n pop %rbp\n ret\n.size f,.-f\n")
    prog = build(parse_elf(assemble(src).read_bytes(), "f.o"))
    cfi = walk(prog).cfi
    regs = 9  # index of regs[] in an interned state
    rbx, rbp = regs + 2 * 3, regs + 2 * 5
    assert (cfi[2][rbp], cfi[2][rbp + 1]) == (-2, -16)  # rbp at cfa-16
    assert (cfi[2][rbx], cfi[2][rbx + 1]) == (-2, -24)  # rbx at cfa-24
    assert cfi[5][rbx] == UNDEFINED and cfi[5][rbp] == UNDEFINED  # restored before ret
