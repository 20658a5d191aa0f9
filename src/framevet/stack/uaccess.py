"""Functions that may run with UACCESS (SMAP disabled): objtool 6.1's built-in list."""

from __future__ import annotations

UACCESS_SAFE = frozenset({
    # KASAN
    "kasan_report", "kasan_check_range", "__asan_loadN", "__asan_storeN",
    "__asan_loadN_noabort", "__asan_storeN_noabort", "__asan_report_load_n_noabort",
    "__asan_report_store_n_noabort", "__kasan_check_read", "__kasan_check_write",
    *(f"__asan_{op}{n}" for op in ("load", "store") for n in (1, 2, 4, 8, 16)),
    *(f"__asan_{op}{n}_noabort" for op in ("load", "store") for n in (1, 2, 4, 8, 16)),
    *(f"__asan_report_{op}{n}_noabort" for op in ("load", "store") for n in (1, 2, 4, 8, 16)),
    # KCSAN
    "__kcsan_check_access", "__kcsan_mb", "__kcsan_wmb", "__kcsan_rmb", "__kcsan_release",
    "kcsan_found_watchpoint", "kcsan_setup_watchpoint", "kcsan_check_scoped_accesses",
    "kcsan_disable_current", "kcsan_enable_current_nowarn",
    *(f"__tsan_{op}{n}" for op in ("read", "write", "unaligned_read", "unaligned_write",
                                   "read_write") for n in (1, 2, 4, 8, 16)),
    "__tsan_func_entry", "__tsan_func_exit", "__tsan_read_range", "__tsan_write_range",
    # KCOV
    "write_comp_data", "check_kcov_mode", "__sanitizer_cov_trace_pc",
    *(f"__sanitizer_cov_trace_{k}cmp{n}" for k in ("", "const_") for n in (1, 2, 4, 8)),
    "__sanitizer_cov_trace_switch",
    # KMSAN
    "kmsan_copy_to_user", "kmsan_report", "kmsan_unpoison_entry_regs",
    "kmsan_unpoison_memory", "__msan_chain_origin", "__msan_get_context_state",
    "__msan_instrument_asm_store", "__msan_metadata_ptr_for_load_1",
    "__msan_poison_alloca", "__msan_warning",
    # UBSAN
    "ubsan_type_mismatch_common", "__ubsan_handle_type_mismatch",
    "__ubsan_handle_type_mismatch_v1", "__ubsan_handle_shift_out_of_bounds",
    "__ubsan_handle_load_invalid_value",
    # misc
    "csum_partial_copy_generic", "copy_mc_fragile", "copy_mc_fragile_handle_tail",
    "copy_mc_enhanced_fast_string", "ftrace_likely_update", "clear_user_erms",
    "clear_user_rep_good", "clear_user_original",
})
