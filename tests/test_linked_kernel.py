"""Linked kernels and hypervisors (Xen's xen-syms, Linux's vmlinux): the stack model's
stack switches and the declarations, on small fixtures in tests/fixtures/linked/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import FIXTURES, assemble, fv

LINKED = FIXTURES / "linked"


def _fixture(name: str) -> tuple[str, str]:
    return str(LINKED / f"{name}.S"), str(LINKED / f"{name}.toml")


def _link(name: str, tmp: Path, *flags: str) -> str:
    """The fixture assembled and linked by ld into an executable without relocations,
    as a hypervisor or kernel image is."""
    out = tmp / name
    ld = shutil.which("ld") or "ld"
    subprocess.run([ld, *flags, "-o", str(out), str(assemble(LINKED / f"{name}.S"))],
                   check=True)
    return str(out)


def _orc(src: str, *args: str) -> dict[str, str]:
    out = fv("orc", "--dump", src, *args)
    assert out.returncode == 0, out.stderr
    rows = (line.split(": ", 1) for line in out.stdout.splitlines())
    return {where: " ".join(what.split()) for where, what in rows}


def test_a_stale_copy_of_rsp_does_not_restore_the_cfa() -> None:
    # reset_and_jump: `or`/`sub` rewrite rax before `mov %rax,%rsp`: a new stack
    src, toml = _fixture("stack-switch")
    orc = _orc(src, "--hints", toml)
    assert orc[".text+13"] == "sp:(und) bp:(und) type:call end:1"
    # rsb_stuff: rax is only read across the call, so the frame comes back
    assert orc[".text+2a"] == "sp:sp+16 bp:(und) type:call end:0"
    out = fv("check", "--profile", "kernel", src, "--hints", toml)
    assert out.returncode == 0, out.stdout


def test_a_new_stack_does_not_mismatch_the_code_it_joins(tmp_path: Path) -> None:
    # the path after the switch runs into code also reached with the real frame
    src = tmp_path / "join.S"
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n push %rbx\n test %edi,%edi\n"
                   " je 2f\n mov %rsp,%rax\n or $0x7fff,%rax\n mov %rax,%rsp\n"
                   " call helper\n2: call helper\n pop %rbx\n ret\n.size f,.-f\n")
    out = fv("check", "--profile", "kernel", str(src))
    assert "stack-state-mismatch" not in out.stdout, out.stdout
    orc = _orc(str(src))
    assert orc[".text+1"] == "sp:sp+16 bp:(und) type:call end:0"


def test_sidecar_intra_function_call_answers_the_finding() -> None:
    src, toml = _fixture("intra-sidecar")
    bare = fv("check", "--profile", "kernel", src)
    assert "[unannotated-intra-function-call]" in bare.stdout
    declared = fv("check", "--profile", "kernel", src, "--hints", toml)
    assert declared.returncode == 0, declared.stdout
    orc = _orc(src, "--hints", toml)
    assert orc[".text+6"] == "sp:sp+16 bp:(und) type:call end:0"


def test_noreturn_paths_owe_the_caller_no_register() -> None:
    src, toml = _fixture("noreturn-tail")
    bare = fv("check", "--profile", "kernel", src)
    # to_die's tail call goes to a function that never returns: no finding there
    assert "to_die" not in bare.stdout
    assert "give_up+0x7: tail call with callee-saved rbx" in bare.stdout
    declared = fv("check", "--profile", "kernel", src, "--hints", toml)
    assert declared.returncode == 0, declared.stdout


def test_linked_jumps_to_a_return_thunk_are_returns(tmp_path: Path) -> None:
    # sched_slave: its first tail call goes to a noreturn function, its returns are
    # jumps to the thunk; without relocations only the thunk's shape tells
    image = _link("return-thunk", tmp_path)
    out = fv("check", "--profile", "kernel", image)
    assert out.returncode == 0, out.stdout


def test_kernel_jump_over_a_lock_prefix() -> None:
    out = fv("check", "--profile", "kernel", str(LINKED / "jump-over-lock.S"))
    assert out.returncode == 0, out.stdout
    orc = _orc(str(LINKED / "jump-over-lock.S"))
    assert orc[".text+7"] == "sp:(und) bp:(und) type:call end:0"


def test_orc_read_of_a_linked_image(tmp_path: Path) -> None:
    # framevet writes ORC into an object, ld links it: the linked table is read by
    # address, as the unwinder reads it, and gives back the same entries
    obj = assemble(LINKED / "return-thunk.S")
    with_orc = tmp_path / "with-orc.o"
    assert fv("orc", str(obj), "-o", str(with_orc)).returncode == 0
    image = tmp_path / "image"
    subprocess.run([shutil.which("ld") or "ld", "-o", str(image), str(with_orc)], check=True)
    read = fv("orc", "--read", str(image))
    assert read.returncode == 0, read.stderr
    assert read.stdout == fv("orc", "--dump", str(obj)).stdout


def test_foreign_code_and_data_are_left_out(tmp_path: Path) -> None:
    # 32-bit boot code does not decode as x86-64: its stretch is left out, with a note,
    # and the STT_OBJECT GDT is data; the 64-bit function is walked as usual
    image = _link("foreign-code", tmp_path)
    out = fv("check", "--profile", "kernel", "--stats", image)
    assert out.returncode == 0, out.stdout
    assert "boot32: 11 bytes left out" in out.stdout and "[code-left-out]" in out.stdout
    assert "undecodable-instruction" not in out.stdout
    assert "3 instructions walked (100.00 % of the code)" in out.stderr
    assert "27 bytes treated as data or left out" in out.stderr
    dump = fv("orc", "--dump", image)
    assert dump.returncode == 0 and "[code-left-out]" in dump.stderr
    assert _orc(image)[".text+1c"] == "sp:sp+16 bp:(und) type:call end:0"


def test_assembly_entry_labels_are_walked(tmp_path: Path) -> None:
    # page_fault_entry is reached by no call: it is walked from a new stack's state
    image = _link("entry-label", tmp_path)
    out = fv("check", "--profile", "kernel", "--stats", image)
    assert out.returncode == 0, out.stdout
    assert "18 instructions walked" in out.stderr  # (the ud2 after fatal_trap: not)
    assert _orc(image)[".text+1"] == "sp:(und) bp:(und) type:call end:1"


def test_declarations_by_label_address_and_non_standard(tmp_path: Path) -> None:
    src, toml = _fixture("declarations")
    bare = fv("check", "--profile", "kernel", src)
    assert "[sibling-call-modified-frame]" in bare.stdout      # the longjmp
    assert "[unreachable-instruction]" in bare.stdout           # the label, never entered
    declared = fv("check", "--profile", "kernel", src, "--hints", toml)
    assert declared.returncode == 0, declared.stdout
    assert _orc(src, "--hints", toml)[".text+7"] == "sp:sp+8 bp:(und) type:regs (partial) end:0"
    by_address = tmp_path / "address.toml"
    by_address.write_text('[longjmp_like]\nnon_standard = true\n\n["0x7"]\nentry = "iret"\n'
                          "extra_words = 1\n")
    assert fv("check", "--profile", "kernel", src, "--hints", str(by_address)).returncode == 0


def test_a_retpoline_thunk_is_no_finding(tmp_path: Path) -> None:
    image = _link("retpoline", tmp_path)
    out = fv("check", "--profile", "kernel", image)
    assert out.returncode == 0, out.stdout
