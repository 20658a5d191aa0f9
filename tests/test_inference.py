"""What framevet infers where a linked object has lost objtool's annotations."""

from __future__ import annotations

from pathlib import Path

from conftest import assemble

from framevet.load import LoadedObject
from framevet.load.elf import parse_elf
from framevet.pipeline import Options, analyse
from framevet.unwind.orc import dump_text, generate


def _ctx(tmp: Path, body: str, **opts: object):  # type: ignore[no-untyped-def]
    src = tmp / "x.S"
    src.write_text(body)
    obj = LoadedObject(parse_elf(assemble(src).read_bytes(), "x.o"), "x.o")
    return analyse(obj, Options(**opts))  # type: ignore[arg-type]


def _orc(ctx) -> str:  # type: ignore[no-untyped-def]
    return dump_text(ctx.prog, generate(ctx.prog, ctx.result))


WARN_BODY = """
    .text
    .globl f
    .type f,@function
f:
    push %rbx
    test %rdi,%rdi
    jne 2f
1:  pop %rbx
    ret
2:  call __warn_printk
3:  ud2
    jmp 1b
    .size f,.-f
    .section __bug_table,"aw"
    .long 3b - .
    .long 0
    .short 42
    .short {flags}
"""


def test_warn_ud2_is_reachable_through_bug_table(tmp_path: Path) -> None:
    warn = _ctx(tmp_path, WARN_BODY.format(flags=1))  # BUGFLAG_WARNING: WARN() continues
    assert [f.rule for f in warn.findings] == []
    bug = _ctx(tmp_path, WARN_BODY.format(flags=0))    # BUG(): a dead end
    assert [f.rule for f in bug.findings] == ["unreachable-instruction"]


def test_call_to_local_label_is_an_intra_function_call(tmp_path: Path) -> None:
    # RSB stuffing: call 1f; int3; 1: add $8,%rsp -- in a linked module, which has lost
    # .discard.intra_function_calls, framevet follows it as a jump that pushes
    ctx = _ctx(tmp_path, ".text\n.globl f\n.type f,@function\nf:\n call 1f\n int3\n"
               "1: add $8,%rsp\n ret\n.size f,.-f\n"
               ".section .gnu.linkonce.this_module,\"aw\"\n.quad 0\n")
    orc = _orc(ctx)
    assert ".text+6: sp:sp+16" in orc  # after the call, the pushed word is on the stack
    assert ".text+a: sp:sp+8" in orc
    # an unlinked object must carry the annotation, as objtool requires
    plain = _ctx(tmp_path, ".text\n.globl f\n.type f,@function\nf:\n call 1f\n int3\n"
                 "1: add $8,%rsp\n ret\n.size f,.-f\n")
    assert "unannotated-intra-function-call" in [f.rule for f in plain.findings]


def test_unnamed_fentry_code_is_a_function(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, ".text\n.globl f\n.type f,@function\nf:\n ret\n.size f,.-f\n"
               ".p2align 4\n call __fentry__\n push %rbx\n pop %rbx\n ret\n")
    orc = _orc(ctx)
    assert ".text+16: sp:sp+16" in orc  # the unnamed function's push is described
    assert not [f for f in ctx.findings if f.rule == "unreachable-instruction"]


def test_user_jump_over_lock_prefix(tmp_path: Path) -> None:
    # glibc's single-thread fast path: je over the lock prefix, into the cmpxchg
    ctx = _ctx(tmp_path, ".text\n.globl f\n.type f,@function\nf:\n cmpl $0,%fs:0x18\n"
               " je 1f+1\n1: lock cmpxchg %rcx,(%rdi)\n ret\n.size f,.-f\n",
               profile="user")
    assert [f.rule for f in ctx.findings] == []
