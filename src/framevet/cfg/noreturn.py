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
#: functions of the C and C++ runtimes' ABI that never return (profile user); in a
#: linked image they are reached through the PLT (``abort@plt``) or the GOT
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
    "__stack_chk_fail_local", "__assert", "thrd_exit", "__libc_start_call_main",
    "__cxa_bad_cast", "__cxa_bad_typeid", "__cxa_throw_bad_array_new_length",
    "__cxa_pure_virtual", "__cxa_deleted_virtual", "__cxa_call_terminate",
    "__cxa_call_unexpected", "_ZSt9terminatev", "_ZSt10unexpectedv",
})


def runtime_name(name: str) -> str:
    """The function a PLT stub or GOT slot leads to (``abort@plt`` -> ``abort``)."""
    at = name.rfind("@")
    return name[:at] if at > 0 and name[at:] in ("@plt", "@got") else name


def is_plt_stub(sym: Symbol) -> bool:
    """A linked image's PLT stub (named by :mod:`framevet.load.plt`): calling it
    leaves the object."""
    return sym.name.endswith("@plt")


def user_noreturn_name(name: str) -> bool:
    """A C or C++ runtime function that never returns: the list above, libstdc++'s
    ``std::__throw_*`` helpers (``_ZSt20__throw_length_errorPKc``), and UBSan's
    ``__ubsan_handle_*_abort`` handlers."""
    name = runtime_name(name)
    if name in USER_NORETURNS:
        return True
    if name.startswith("_ZSt") and name[4:5].isdigit():
        return name[4:].lstrip("0123456789").startswith("__throw_")
    return name.startswith("__ubsan_handle_") and name.endswith("_abort")


def is_noreturn(prog: Program, sym: Symbol | None, depth: int = 0) -> bool:
    """objtool's dead_end_function(): a known noreturn global, or a local function
    that has no return and no sibling call to a function that returns.  Profile user
    knows the C and C++ runtimes' noreturn functions by name (through the PLT and the
    GOT too), and asks that *every* sibling call lead to a noreturn function (objtool
    decides on the first one)."""
    if sym is None or sym.bind == STB_WEAK:
        return False
    if prog.profile != "kernel":
        return _user_noreturn(prog, sym, depth)
    if depth == 0:
        cached = prog.noreturn_cache.get(sym.index)
        if cached is None:
            cached = prog.noreturn_cache[sym.index] = is_noreturn(prog, sym, -1)
        return cached
    depth = max(depth, 0)
    if sym.bind == STB_GLOBAL and sym.name in GLOBAL_NORETURNS:
        return True
    if sym.name in prog.declared_noreturn:
        return True
    insns = _function_insns(prog, sym)
    if insns is None:
        return False
    for i in insns:
        if prog.kind[i] == d.RETURN:
            return False
    for i in insns:
        if is_sibling_call(prog, i):
            jd = _sibling_dest(prog, i)
            if jd < 0 or depth == 5:
                return False
            fd = prog.func[jd]
            return is_noreturn(prog, prog.functions[fd].sym if fd >= 0 else None, depth + 1)
    return True


#: how deep a chain of tail calls is followed (deeper: taken to return)
_USER_DEPTH = 64


def _user_noreturn(prog: Program, sym: Symbol, depth: int) -> bool:
    """Profile user: every answer is cached, so each function is decided once whatever
    the fan-out of its sibling calls; one met again while it is being decided (a
    cycle of tail calls) is taken to return."""
    cached = prog.noreturn_cache.get(sym.index)
    if cached is not None:
        return cached
    prog.noreturn_cache[sym.index] = False
    answer = _user_decide(prog, sym, depth)
    prog.noreturn_cache[sym.index] = answer
    return answer


def _user_decide(prog: Program, sym: Symbol, depth: int) -> bool:
    if sym.name in GLOBAL_NORETURNS or user_noreturn_name(sym.name):
        return True
    if sym.name in prog.declared_noreturn:
        return True
    if is_plt_stub(sym):
        own = _own_definition(prog, runtime_name(sym.name))
        return own is not None and _user_noreturn(prog, own, depth + 1)
    insns = _function_insns(prog, sym)
    if insns is None or depth >= _USER_DEPTH:
        return False
    if any(prog.kind[i] == d.RETURN for i in insns):
        return False
    for i in insns:
        if not is_sibling_call(prog, i):
            continue
        cd = prog.call_dest[i]
        if cd is not None and not cd.defined:
            if not user_noreturn_name(cd.name):
                return False
            continue
        jd = _sibling_dest(prog, i)
        fd = prog.func[jd] if jd >= 0 else -1
        if fd < 0 or not _user_noreturn(prog, prog.functions[fd].sym, depth + 1):
            return False
    return True


def _own_definition(prog: Program, name: str) -> Symbol | None:
    """The function ``name`` this image defines itself, when a PLT stub leads to it (a
    shared object calls its own exported functions through the PLT: systemd's
    ``log_assert_failed@plt`` in libsystemd-shared).  The stub's slot is bound to this
    definition unless another object interposes the name, which a noreturn function's
    callers cannot expect: the compiler already treated the call as final."""
    if prog.defined_functions is None:
        prog.defined_functions = {}
        for s in prog.elf.symbols:
            if s.defined and s.type == STT_FUNC and s.size and not is_plt_stub(s):
                prog.defined_functions.setdefault(s.name.split("@", 1)[0], s)
    return prog.defined_functions.get(name)


def _function_insns(prog: Program, sym: Symbol) -> list[int] | None:
    """The instructions of the function ``sym`` starts (with its cold part), or None."""
    if not sym.size or sym.type not in (STT_FUNC, STT_NOTYPE) or not sym.defined:
        return None
    g = prog.gid(sym.shndx, sym.offset)
    if g < 0 or prog.func[g] < 0:
        return None
    return prog.func_insns(prog.func[g]) or None


def _sibling_dest(prog: Program, g: int) -> int:
    """The instruction a sibling call goes to (-1: outside the object, or dynamic)."""
    jd = prog.jump_dest[g]
    cd = prog.call_dest[g]
    if cd is not None and cd.defined and jd < 0:
        jd = prog.gid(cd.shndx, cd.offset)
    return jd


def follows_noreturn_call(prog: Program, g: int) -> bool:
    """``g`` follows a call that never returns, in the same function.  A compiler
    emits code there when it does not know the callee's noreturn (framevet inferred
    it: bash's ``fatal_error``), and a ``hlt`` ends ``_start``: dead code."""
    prev = g - 1
    return (prev >= 0 and prog.sec_of[prev] == prog.sec_of[g] and prog.func[prev] == prog.func[g]
            and (bool(prog.dead_end[prev]) or (prog.kind[prev] in (d.CALL, d.CALL_DYNAMIC)
                                                and is_noreturn(prog, prog.call_dest[prev]))))


def dead_after_noreturn(prog: Program, visited: bytearray) -> set[int]:
    """Instructions no walk reached that only code after a call that never returns
    leads to (its fall-through, the blocks it jumps to, theirs): the compiler keeps
    them when it does not know the callee's noreturn (a stack-protector check after
    ``call out_of_memory``, bc's ``main``).  Dead code, never executed."""
    out: set[int] = set()
    work = [g + 1 for g in range(len(prog.kind) - 1)
            if not visited[g + 1] and follows_noreturn_call(prog, g + 1)]
    while work:
        g = work.pop()
        if g in out or visited[g]:
            continue
        out.add(g)
        k = prog.kind[g]
        if k in (d.JUMP_COND, d.JUMP_UNCOND) and prog.call_dest[g] is None:
            jd = prog.jump_dest[g]
            if jd >= 0 and prog.func[jd] == prog.func[g]:
                work.append(jd)
        if k in (d.RETURN, d.JUMP_UNCOND, d.JUMP_DYNAMIC, d.CONTEXT_SWITCH) or prog.dead_end[g]:
            continue
        if k in (d.CALL, d.CALL_DYNAMIC) and is_noreturn(prog, prog.call_dest[g]):
            continue
        n = prog.next_same_sec(g)
        if n >= 0 and prog.func[n] == prog.func[g]:
            work.append(n)
    return out


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
