"""Code that only the dynamic loader runs, at load and unload time, and that the
toolchain builds without CFI: the C runtime's ``_init``/``_fini`` (``.init`` and
``.fini``, from crti.o/crtn.o) and what ``.init_array``/``.fini_array`` enter in
crtbegin.o (``frame_dummy``, ``__do_global_dtors_aux``) with the helpers they call
(``register_tm_clones``, ``deregister_tm_clones``).  Every GCC-linked image has them;
no exception or unwinder passes through them, and GCC ships them so by design.

They are told by structure, not by name: functions that the image's own loader
tables enter (:func:`framevet.load.entries.entry_points`, the ELF entry point
excepted: ``_start`` has CFI) and that no FDE covers, plus the functions without an
FDE that those call or jump to."""

from __future__ import annotations

from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.load.entries import entry_points


def loader_run_functions(prog: Program, has_fde: set[int]) -> set[int]:
    """Indices of the functions only the loader runs that have no FDE (``has_fde``:
    functions some FDE covers at least in part)."""
    elf = prog.elf
    if elf.relocatable:
        return set()
    work: list[int] = []
    for addr in entry_points(elf):
        if addr == elf.entry:
            continue
        for sec in elf.sections:
            if sec.executable and sec.addr <= addr < sec.addr + sec.size:
                g = prog.gid(sec.index, addr - sec.addr)
                if g >= 0 and prog.func[g] >= 0:
                    work.append(prog.func[g])
                break
    out: set[int] = set()
    while work:
        fi = work.pop()
        if fi in out or fi in has_fde:
            continue
        out.add(fi)
        for g in prog.func_insns(fi):
            if prog.kind[g] not in (d.CALL, d.JUMP_COND, d.JUMP_UNCOND):
                continue
            dest = prog.jump_dest[g]
            cd = prog.call_dest[g]
            if cd is not None and cd.defined:
                dest = prog.gid(cd.shndx, cd.offset)
            if dest >= 0 and prog.func[dest] >= 0 and prog.func[dest] != fi:
                work.append(prog.func[dest])
    return out
