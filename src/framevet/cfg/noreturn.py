"""Which calls do not return and which jumps are tail calls (objtool's
dead_end_function() and is_sibling_call()), over a built :class:`cfg.Program`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.load.elf import STB_GLOBAL, STB_WEAK, STT_FUNC, STT_NOTYPE, Symbol

if TYPE_CHECKING:
    from framevet.cfg.program import Program

GLOBAL_NORETURNS = frozenset({
    "__invalid_creds", "__module_put_and_kthread_exit", "__reiserfs_panic",
    "__stack_chk_fail", "__ubsan_handle_builtin_unreachable", "cpu_bringup_and_idle",
    "cpu_startup_entry", "do_exit", "do_group_exit", "do_task_dead", "ex_handler_msr_mce",
    "fortify_panic", "kthread_complete_and_exit", "kthread_exit", "kunit_try_catch_throw",
    "lbug_with_loc", "machine_real_restart", "make_task_dead", "panic",
    "rewind_stack_and_make_dead", "sev_es_terminate", "snp_abort", "stop_this_cpu",
    "usercopy_abort", "xen_start_kernel",
})
#: user-space functions that never return (profile user)
USER_NORETURNS = frozenset({
    "abort", "exit", "_exit", "_Exit", "__assert_fail", "__assert_perror_fail",
    "__stack_chk_fail", "__chk_fail", "__fortify_fail", "__libc_fatal",
    "longjmp", "_longjmp", "siglongjmp", "__longjmp_chk", "pthread_exit", "__pthread_exit",
    "quick_exit", "err", "errx", "verr", "verrx", "__cxa_throw", "__cxa_rethrow",
    "_Unwind_Resume", "__libc_start_main", "__do_global_dtors_aux_noreturn",
    "__libc_longjmp", "__sigjmp_save_noreturn", "_dl_signal_error", "_dl_fatal_printf",
    "__pthread_unwind", "__pthread_unwind_next",
    "__malloc_assert", "malloc_printerr", "__libc_dynarray_at_failure",
    "__fortify_fail_abort", "_dl_start_final_noreturn", "__run_exit_handlers",
    "__libc_pthread_init_noreturn", "_dl_reloc_bad_type", "__GI_abort", "__GI_exit",
    "__GI___assert_fail", "__GI___chk_fail", "__GI___fortify_fail", "__GI___libc_fatal",
})

def is_noreturn(prog: Program, sym: Symbol | None, depth: int = 0) -> bool:
    """objtool's dead_end_function(): a known noreturn global, or a local function
    that has no return and no sibling call to a function that returns."""
    if sym is None or sym.bind == STB_WEAK:
        return False
    if depth == 0:
        cached = prog.noreturn_cache.get(sym.index)
        if cached is None:
            cached = prog.noreturn_cache[sym.index] = is_noreturn(prog, sym, -1)
        return cached
    depth = max(depth, 0)
    names = GLOBAL_NORETURNS if prog.profile == "kernel" else GLOBAL_NORETURNS | USER_NORETURNS
    if (sym.bind == STB_GLOBAL or prog.profile != "kernel") and sym.name in names:
        return True
    if sym.name in prog.declared_noreturn:
        return True
    if not sym.size or sym.type not in (STT_FUNC, STT_NOTYPE) or not sym.defined:
        return False
    g = prog.gid(sym.shndx, sym.offset)
    if g < 0 or prog.func[g] < 0:
        return False
    insns = prog.func_insns(prog.func[g])
    if not insns:
        return False
    for i in insns:
        if prog.kind[i] == d.RETURN:
            return False
    for i in insns:
        if is_sibling_call(prog, i):
            jd = prog.jump_dest[i]
            cd = prog.call_dest[i]
            if cd is not None and cd.defined and jd < 0:
                jd = prog.gid(cd.shndx, cd.offset)
            if jd < 0:
                return False
            if depth == 5:
                return False
            fd = prog.func[jd]
            return is_noreturn(prog, prog.functions[fd].sym if fd >= 0 else None, depth + 1)
    return True


def is_sibling_call(prog: Program, g: int) -> bool:
    k = prog.kind[g]
    if prog.func[g] >= 0 and k == d.JUMP_DYNAMIC:
        return g not in prog.jump_table_insn and not _group_has_table(prog, g)
    return (k == d.JUMP_COND or k == d.JUMP_UNCOND) and prog.call_dest[g] is not None


def _group_has_table(prog: Program, g: int) -> bool:
    grp = prog.alt_group.get(g)
    if grp is None:
        return False
    o = prog.groups[grp]
    if o.orig >= 0:
        o = prog.groups[o.orig]
    return o.first in prog.jump_table_insn
