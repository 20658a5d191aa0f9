"""Linked and stripped user-space images (profile chosen from the input): PLT stubs
named through their GOT slots, noreturn calls through them, GCC's cold parts tied to
their parents, C++ landing pads, and a C++ program built here with ``g++ -O2 -s``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import iced_x86
import pytest
from conftest import FIXTURES, assemble, fv

from framevet.decode import insn as d
from framevet.load import LoadedObject, load_path
from framevet.load.elf import parse_elf
from framevet.load.entries import entry_points
from framevet.pipeline import Options, analyse
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import check_cfi
from framevet.unwind.dwarf import read_cfi

IDIOMS = FIXTURES / "cfi-mismatch"
CXX_PROGRAM = FIXTURES.parent / "data" / "cxx-program.cc"


def link(src: Path, out: Path, *flags: str) -> LoadedObject:
    """``src`` linked into a stripped shared object, and loaded."""
    subprocess.run(["gcc", "-shared", "-nostdlib", "-s", *flags, "-o", str(out), str(src)],
                   check=True)
    (obj,) = load_path(str(out))
    assert obj.elf.section(".symtab") is None
    return obj


def clean(obj: LoadedObject) -> None:
    """Neither ``check`` (profile chosen from the file: user) nor ``cfi`` finds anything."""
    ctx = analyse(obj, Options(profile="auto"))
    assert ctx.options.profile == "user"
    assert [f.text() for f in ctx.findings] == []
    assert [f.text() for f in check_cfi(obj)] == []


@pytest.mark.parametrize("flags", [(), ("-Wl,-z,ibtplt",)], ids=["plt", "plt.sec"])
def test_plt_stubs_are_named(tmp_path: Path, flags: tuple[str, ...]) -> None:
    obj = link(IDIOMS / "ok-noreturn-plt.S", tmp_path / "nr.so", *flags)
    names = {s.name: obj.elf.sections[s.shndx].name for s in obj.elf.symbols
             if s.name.endswith("@plt")}
    stubs = ".plt.sec" if flags else ".plt"
    assert names == {"abort@plt": stubs, "exit@plt": stubs, "g@plt": stubs, "fatal@plt": stubs}


@pytest.mark.parametrize("flags", [(), ("-Wl,-z,ibtplt",)], ids=["plt", "plt.sec"])
def test_noreturn_calls_through_the_plt(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """After ``call abort@plt`` the next instruction is the jne's, with cfa=rsp+8;
    ``die`` tail-calls exit@plt, so it does not return either; nothing falls into the
    aligned label after ``call fatal@plt``."""
    obj = link(IDIOMS / "ok-noreturn-plt.S", tmp_path / "nr.so", *flags)
    clean(obj)
    prog = cfa_table(obj.elf).prog
    calls = [prog.call_dest[g].name for g in range(len(prog.kind))  # type: ignore[union-attr]
             if prog.kind[g] == d.CALL and prog.call_dest[g] is not None]
    assert "abort@plt" in calls


def test_noreturn_function_of_the_same_object_through_the_plt(tmp_path: Path) -> None:
    """``call fail@plt`` where the image defines ``fail`` itself, and every path of it
    ends in ``abort@plt``: the call does not return, so the jne's state is the only one
    at the label after it."""
    obj = link(IDIOMS / "ok-noreturn-own-plt.S", tmp_path / "own.so")
    clean(obj)


def test_switch_table_chosen_by_the_path_to_the_jump(tmp_path: Path) -> None:
    """Two tables loaded into %r8 in different blocks: the dispatch uses the one whose
    lea reaches it, not the nearest one before it; every case is reached."""
    obj = link(IDIOMS / "ok-switch-two-tables-one-register.S", tmp_path / "tt.so")
    clean(obj)


def test_switch_on_a_byte_without_range_check(tmp_path: Path) -> None:
    """``movzbl %dil`` indexes a table of 256 entries; the ``cmp $0x67; jne`` before it
    is no bound: the case at entry 200 is reached."""
    obj = link(IDIOMS / "ok-switch-byte-index.S", tmp_path / "bi.so")
    clean(obj)


def test_cold_parts_of_a_function_without_frame(tmp_path: Path) -> None:
    """Cold parts whose FDEs start with ``cfa=rsp+8``: ``je`` to a part that is only
    ``ret`` falls through too, and the switch's cases in the other part are its own."""
    obj = link(IDIOMS / "ok-cold-frameless.S", tmp_path / "cf.so")
    clean(obj)


@pytest.mark.parametrize("flags", [(), ("-no-pie",), ("-s",)], ids=["pie", "no-pie", "stripped"])
def test_c_runtime_glue_without_cfi(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """A C program built here: the C runtime's code the loader runs (``_init``,
    ``frame_dummy``, ``register_tm_clones``, ...) has no FDE by design and is not
    reported; a hand-written function without CFI is."""
    main = tmp_path / "main.c"
    main.write_text("int nocfi(int);\nint main(int argc, char **argv)\n"
                    "{\n\t(void)argv;\n\treturn nocfi(argc);\n}\n")
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(exe), str(main),
                    str(FIXTURES / "cfi-missing" / "nocfi-helper.S")], check=True)
    (obj,) = load_path(str(exe))
    got = [(f.rule, f.symbol) for f in check_cfi(obj)]
    if "-s" in flags:
        assert got == []        # stripped: nothing names nocfi, nor tells it is code
    else:
        assert got == [("cfi-missing", "nocfi")]


def test_tail_call_through_function_pointer_array(tmp_path: Path) -> None:
    """``mov (%rdx,%rax,8),%rax; jmp *%rax`` through slots that hold functions (filled
    by R_X86_64_RELATIVE): a tail call, not a switch whose table is missing."""
    obj = link(IDIOMS / "ok-function-pointer-table.S", tmp_path / "fp.so")
    clean(obj)


@pytest.mark.parametrize("source", ["ok-struct-by-value.c", "ok-fence.c"])
def test_stores_above_the_cfa_that_are_legal(tmp_path: Path, source: str) -> None:
    """C compiled here: a struct argument on the stack changed in place and passed on;
    the fence ``lock orq $0,(%rsp)`` over the return address."""
    obj_path = tmp_path / "x.o"
    subprocess.run(["gcc", "-O2", "-c", "-o", str(obj_path),
                    str(FIXTURES / "caller-frame-write" / source)], check=True)
    (obj,) = load_path(str(obj_path))
    ctx = analyse(obj, Options(profile="auto"))
    assert ctx.options.profile == "user"
    assert [f.text() for f in ctx.findings] == []


def test_cold_part_entered_by_jne(tmp_path: Path) -> None:
    """Both cold parts are walked with f's frame at the jumps (cfa=rsp+16, rbx saved),
    although neither they nor f (called through a pointer) have a name left."""
    obj = link(IDIOMS / "ok-cold-jne.S", tmp_path / "cold.so")
    clean(obj)
    table = cfa_table(obj.elf)
    prog = table.prog
    cold = [f for f in prog.functions if f.name.endswith(".cold")]
    assert len(cold) == 1
    assert prog.functions[cold[0].parent].name != cold[0].name
    entry = table.at(cold[0].sec, cold[0].start).text()
    assert entry == "cfa=rsp+16 rbx=cfa-16 ra=cfa-8"


def test_cold_part_starting_with_a_nop(tmp_path: Path) -> None:
    """The part's FDE says cfa=rsp+8 only for its leading nop: it is still a cold part,
    entered after the nop with f's frame."""
    obj = link(IDIOMS / "ok-cold-nop-start.S", tmp_path / "nop.so")
    clean(obj)
    prog = cfa_table(obj.elf).prog
    assert [f.name for f in prog.functions if f.name.endswith(".cold")]


def test_cold_part_entry_disagreeing_with_its_fde(tmp_path: Path) -> None:
    """The cold part's FDE says cfa=rsp+24 where f jumps in with cfa=rsp+16: a real
    finding, at the cold part's first instruction."""
    obj = link(IDIOMS / "cold-entry-wrong.S", tmp_path / "bad.so")
    found = check_cfi(obj)
    assert [f.rule for f in found] == ["cfi-mismatch"]
    assert "CFI says cfa=rsp+24 but the code has cfa=rsp+16" in found[0].message
    assert "reached from `jne " in found[0].message


def test_landing_pad_has_the_state_of_the_call(tmp_path: Path) -> None:
    obj = link(IDIOMS / "ok-landing-pad.S", tmp_path / "lp.so")
    clean(obj)
    (fde,) = [f for f in read_cfi(obj.elf).fdes if f.lsda is not None]
    table = cfa_table(obj.elf)
    pad = max(o for o, _ in fde.rows)          # .cfi_restore_state at the pad
    assert table.at(fde.section, pad).text() == "cfa=rsp+32 rbx=cfa-16 ra=cfa-8"


def test_call_targets_are_named_in_explanations(tmp_path: Path) -> None:
    src = tmp_path / "t.S"
    """A CFI that changes after ``call g@PLT``: the explanation names the callee as
    objdump does."""
    src = tmp_path / "t.S"
    src.write_text("\t.text\n\t.globl f\n\t.type f, @function\nf:\n\t.cfi_startproc\n"
                   "\tsub $8, %rsp\n\t.cfi_def_cfa_offset 16\n\tcall g@PLT\n"
                   "\t.cfi_def_cfa_offset 24\n\tadd $8, %rsp\n\t.cfi_def_cfa_offset 8\n"
                   "\tret\n\t.cfi_endproc\n\t.size f, .-f\n")
    obj = link(src, tmp_path / "t.so")
    (f,) = check_cfi(obj)
    assert "the CFI changes here, but `call g@plt` at f+0x4 does not change the stack" \
        in f.message, f.message


@pytest.mark.parametrize("partition", [True, False], ids=["partitioned", "not-partitioned"])
def test_cxx_program(tmp_path: Path, partition: bool) -> None:
    """A small C++ program (exceptions, destructors, an abort path), ``g++ -O2 -s``:
    no findings, the cold parts tied to their parents, and every instruction an FDE
    covers reached but the ``hlt`` after ``_start``'s call of __libc_start_main."""
    exe = tmp_path / "prog"
    flags = [] if partition else ["-fno-reorder-blocks-and-partition"]
    subprocess.run(["g++", "-O2", "-s", *flags, "-o", str(exe), str(CXX_PROGRAM)], check=True)
    (obj,) = load_path(str(exe))
    clean(obj)
    table = cfa_table(obj.elf)
    prog = table.prog
    cold = [f for f in prog.functions if f.name.endswith(".cold")]
    assert bool(cold) == partition
    assert all(prog.functions[f.parent] is not f for f in cold)
    unreached = []
    for fde in read_cfi(obj.elf).fdes:
        if fde.section not in prog.secmap or fde.section_name.startswith(".plt"):
            continue
        ds, base = prog.secmap[fde.section], prog.base[fde.section]
        for i, off in enumerate(ds.off):
            g = base + i
            if fde.start <= off < fde.end and prog.kind[g] not in (d.NOP, d.TRAP) \
                    and table.result.cfi[g] is None:
                unreached.append(prog.instruction(g).mnemonic)
    assert unreached == [iced_x86.Mnemonic.HLT]


def test_entry_points_are_functions(tmp_path: Path) -> None:
    """What the image's tables enter -- ``_start``, ``.init``, ``.fini``, the CRT's
    ``frame_dummy`` and ``__do_global_dtors_aux`` from ``.init_array``/``.fini_array``,
    which have no FDE -- is walked as functions in a stripped executable."""
    exe = tmp_path / "prog"
    subprocess.run(["g++", "-O2", "-s", "-o", str(exe), str(CXX_PROGRAM)], check=True)
    (obj,) = load_path(str(exe))
    entries = entry_points(obj.elf)
    assert len(entries) >= 5 and obj.elf.entry in entries
    ctx = analyse(obj, Options(profile="auto"))
    prog = ctx.prog
    starts = {prog.elf.sections[f.sec].addr + f.start for f in prog.functions}
    assert set(entries) <= starts
    code = [s for s in prog.elf.sections if s.executable]
    for addr in entries:
        sec = next(s for s in code if s.addr <= addr < s.addr + s.size)
        assert ctx.result.visited[prog.gid(sec.index, addr - sec.addr)]


# -- the profile -------------------------------------------------------------------

def test_profile_chosen_from_the_input(tmp_path: Path) -> None:
    user_src = tmp_path / "u.S"
    user_src.write_text("\t.text\n\t.globl f\n\t.type f, @function\nf:\n\tret\n"
                        "\t.size f, .-f\n")
    kernel_src = tmp_path / "k.S"
    kernel_src.write_text(user_src.read_text() + "\t.section __ex_table,\"a\"\n\t.long 0\n")
    for src, want in ((user_src, "user"), (kernel_src, "kernel")):
        obj = LoadedObject(parse_elf(assemble(src).read_bytes(), src.name), src.name)
        assert analyse(obj, Options(profile="auto")).options.profile == want
    so = link(IDIOMS / "ok-noreturn-plt.S", tmp_path / "nr.so")
    assert analyse(so, Options(profile="auto")).options.profile == "user"
    # --profile overrides, and the JSON says which profile was used
    misaligned = tmp_path / "m.S"
    misaligned.write_text("\t.text\n\t.globl f\n\t.type f, @function\nf:\n\tcall g\n\tret\n"
                          "\t.size f, .-f\n")
    for args, want in (((), "user"), (("--profile", "kernel"), "kernel")):
        r = fv("check", *args, "--format", "json", "--fail-on", "never", str(misaligned))
        found = json.loads(r.stdout)
        assert {f["profile"] for f in found} <= {want}
        assert bool(found) == (want == "user")     # call-misaligned-stack is profile user


def test_no_unreachable_after_a_stack_state_mismatch(tmp_path: Path) -> None:
    """objtool ends a function's walk at a mismatch; what is left unwalked is not
    unreachable (``--objtool-only`` never said so either)."""
    src = tmp_path / "mm.S"
    src.write_text("\t.text\n\t.globl f\n\t.type f, @function\nf:\n\ttest %edi, %edi\n"
                   "\tje 1f\n\tpush %rbx\n\ttest %esi, %esi\n\tje 1f\n\tmov $5, %eax\n"
                   "\tpop %rbx\n1:\n\tret\n\t.size f, .-f\n")
    r = fv("check", "--profile", "kernel", "--format", "json", "--fail-on", "never", str(src))
    rules = {f["rule"] for f in json.loads(r.stdout)}
    assert rules == {"stack-state-mismatch"}
