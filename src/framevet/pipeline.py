"""One object through the pipeline: load → decode → cfg → cfa → rules."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from framevet import rules
from framevet.cfg.build import build
from framevet.cfg.declarations import Hints, read_hints
from framevet.cfg.disasm import Namer
from framevet.cfg.program import Program
from framevet.findings import Finding, SymbolIndex
from framevet.load.elf import STT_FILE, ElfObject
from framevet.load.object import LoadedObject
from framevet.stack.explain import chain, explain, listing
from framevet.stack.walker import Walker, WalkOptions, WalkResult
from framevet.stack.walkresult import Warning
from framevet.unwind.userwalk import user_walk, with_fde_functions

#: sections only kernel objects have (objtool's inputs and the kernel's own tables)
KERNEL_SECTIONS = frozenset({
    "__ex_table", ".altinstructions", "__bug_table", ".gnu.linkonce.this_module",
    ".parainstructions", "__jump_table", ".static_call_sites", ".return_sites",
    ".call_sites", ".retpoline_sites", ".ibt_endbr_seal", ".orc_unwind", ".noinstr.text",
    ".entry.text", "__mcount_loc", "__patchable_function_entries",
})


def default_profile(elf: ElfObject) -> str:
    """``kernel`` for kernel objects (a ``.ko``, an object with the kernel's sections or
    objtool's ``.discard.*`` annotations, a linked image with neither an interpreter nor
    a dynamic section: vmlinux); ``user`` for every other ELF file."""
    for sec in elf.sections:
        if sec.name in KERNEL_SECTIONS or sec.name.startswith((".discard.", "__ksymtab")):
            return "kernel"
    if elf.relocatable:
        return "user"
    return "user" if elf.section(".interp") or elf.section(".dynamic") else "kernel"


@dataclass
class Options:
    #: "kernel", "user", or "auto" (:func:`default_profile` of each input)
    profile: str = "kernel"
    sls: bool = False
    retpoline: bool = False
    rethunk: bool = False
    stackval: bool = False
    uaccess: bool = False
    noinstr: bool = False
    ibt: bool = False
    unret: bool = False
    #: objtool's --link (vmlinux.o-style object); --noinstr/--ibt/--unret need it in
    #: objtool_only mode (framevet's own check implies it), and it is forced on an object
    #: with more than one STT_FILE symbol, as objtool does
    link: bool = False
    #: objtool's --orc (framevet always walks and checks; only --noinstr looks at it: without
    #: --orc/--stackval/--uaccess objtool walks unwind hints in noinstr sections as noinstr)
    orc: bool = False
    #: objtool's --module: .init.text is not exempt from the retpoline checks
    module: bool = False
    #: rule ids to leave out
    disabled: frozenset[str] = frozenset()
    #: keep walking after non-fatal warnings (check) or stop like objtool (orc)
    all_warnings: bool = True
    hints_file: str | None = None
    #: only objtool 6.1's checks, with objtool's reporting limits
    objtool_only: bool = False
    #: only the walk (ORC generation): no post-walk rules
    orc_only: bool = False
    #: check --stats: the walk's coverage is printed
    stats: bool = False
    #: attach the paths that lead to each finding (``--explain``)
    explain: bool = False
    #: the annotated disassembly of functions for the HTML report: "findings" (those
    #: with findings) or "all"; "" for none
    listings: str = ""


@dataclass
class Context:
    obj: LoadedObject
    prog: Program
    result: WalkResult
    options: Options
    symbols: SymbolIndex
    hints: Hints
    findings: list[Finding] = field(default_factory=list)
    #: annotated disassembly per function name (``Options.listings``)
    listings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: findings objtool counts as warnings before its unreachable-instruction check
    #: (retpoline checks and the walk's)
    counted: int = 0

    def finding(self, g: int, rule: str, message: str, severity: str | None = None,
                **details: object) -> Finding:
        if g < 0:
            return self.finding_at(-1, 0, rule, message, severity, **details)
        return self.finding_at(self.prog.sec_of[g], self.prog.off[g], rule, message, severity,
                               **details)

    def finding_at(self, sec: int, off: int, rule: str, message: str,
                   severity: str | None = None, **details: object) -> Finding:
        """A finding at ``off`` in section ``sec`` (any section; -1: no location)."""
        r = rules.get(rule)
        sev = severity or (r.severity if r else "warning")
        profile = self.options.profile
        if sec < 0:
            return Finding(self.obj.display, rule, message, sev, details=dict(details),
                           profile=profile)
        loc = self.symbols.locate(sec, off)
        name = self.prog.section_name(sec)
        src = self.obj.source_of(name, off)
        col = self.obj.column_of(name, off) if src is not None else 0
        return Finding(self.obj.display, rule, message, sev, loc, src, dict(details), profile,
                       col)


def analyse(obj: LoadedObject, options: Options) -> Context:
    """Build, walk and check one object; findings in objtool's reporting order."""
    if options.profile == "auto":
        options = replace(options, profile=default_profile(obj.elf))
    options, refused = _link_options(obj, options)
    elf = obj.elf
    if (options.profile == "user" and not elf.relocatable
            and elf.section(".symtab") is None):
        # a stripped image: functions from its FDEs, as for ``framevet cfa``
        elf = with_fde_functions(elf, skip_plt=True)
    prog = build(elf, options.profile, uaccess=options.uaccess, ibt=options.ibt)
    hints = read_hints(obj, prog, options.hints_file)
    prog.declared_noreturn.update(n for n, dcl in hints.functions.items() if dcl.noreturn)
    walk_opts = WalkOptions(stackval=options.stackval, uaccess=options.uaccess,
                            noinstr=options.noinstr, all_warnings=options.all_warnings,
                            noinstr_hints=options.noinstr and not (
                                options.orc or options.stackval or options.uaccess))
    entry_funcs = {fi for fi, f in enumerate(prog.functions)
                   if (dcl := hints.functions.get(f.name)) is not None and dcl.entry != "call"}

    def declare(w: Walker) -> None:
        w.hints.update(hints.cfi)
        w.save_insns |= hints.save
        w.restore_insns |= hints.restore
        w.ignored = hints.ignored_gids
        w.entry_funcs = entry_funcs

    if options.profile == "user":
        # what static flow misses in user code: landing pads, computed jumps, padding
        result, _ = user_walk(prog, walk_opts, declare)
    else:
        walker = Walker(prog, walk_opts)
        declare(walker)
        result = walker.run()
    ctx = Context(obj, prog, result, options, SymbolIndex(prog.elf), hints)
    if options.orc_only or refused:
        return ctx
    registry = rules.all_rules()

    def wanted(rule_id: str) -> bool:
        r = registry.get(rule_id)
        if rule_id in options.disabled:
            return False
        if r is None:
            return True
        if options.objtool_only and r.objtool is None:
            return False
        return options.profile in r.profiles

    out: list[Finding] = []
    ctx.findings = out
    # what objtool prints while reading the file; it stops at the first fatal one
    for p in prog.problems:
        if wanted(p.rule):
            out.append(ctx.finding_at(p.sec, p.off, p.rule, p.message))
        if p.fatal and options.objtool_only:
            return ctx
    read = len(out)
    # objtool's order: retpoline checks, the walk's warnings, then the rest
    retpoline = registry["indirect-branch-in-retpoline-build"]
    if retpoline.check is not None and wanted(retpoline.id):
        out.extend(f for f in retpoline.check(ctx) if wanted(f.rule))
    arrivals: dict[int, Warning] = {}
    for w in result.warnings:
        if wanted(w.rule):
            if w.sec >= 0:
                out.append(ctx.finding_at(w.sec, prog.off[w.gid], w.rule, w.message))
            else:
                out.append(ctx.finding(w.gid, w.rule, w.message))
            if w.via >= 0:
                arrivals[id(out[-1])] = w
    ctx.counted = len(out) - read
    # after the walk objtool validates UNRET, then IBT; its output sections come last
    rank = {"unret": 0, "ibt": 1, "objtool-output": 3}
    for rule in sorted(registry.values(), key=lambda r: rank.get(r.family, 2)):
        if rule.check is None or rule is retpoline or not wanted(rule.id):
            continue
        found = [f for f in rule.check(ctx) if wanted(f.rule)]
        if options.objtool_only and rule.id == "unreachable-instruction":
            found = [f for f in found if f.details.get("objtool")][:1]
        out.extend(found)
        if options.objtool_only and any(f.details.get("fatal") for f in found):
            break       # objtool gives up (exit 255): nothing after it, no ORC
    link_follow_ons(out, prog, result)
    if options.explain:
        add_explanations(out, prog, result, arrivals)
    if options.listings:
        ctx.listings = function_listings(ctx, options.listings == "all")
    return ctx


def function_listings(ctx: Context, every: bool) -> dict[str, list[dict[str, Any]]]:
    """Function name -> its annotated disassembly (see :func:`stack.explain.listing`), for
    every function with a finding, or every function."""
    prog = ctx.prog
    namer = Namer(prog.elf)
    wanted = {f.location.symbol for f in ctx.findings if f.location is not None}
    out: dict[str, list[dict[str, Any]]] = {}
    for fi, f in enumerate(prog.functions):
        if f.parent != fi or not f.canonical or f.name in out:
            continue
        if every or f.name in wanted:
            out[f.name] = listing(prog, ctx.result, namer, fi, ctx.obj.source_of)
    return out


#: findings that say the stack state is wrong from here on
ROOT_RULES = frozenset({"stack-state-mismatch", "call-misaligned-stack", "undefined-stack-state"})
#: findings a frame that is off causes wherever it is used later
FRAME_FOLLOW_ONS = frozenset({"return-modified-frame", "sibling-call-modified-frame",
                              "call-misaligned-stack"})
#: a state that two paths disagree on is wrong in its registers too
STATE_FOLLOW_ONS = FRAME_FOLLOW_ONS | {"callee-saved-clobber", "return-address-overwrite"}


def link_follow_ons(findings: list[Finding], prog: Program, result: WalkResult) -> None:
    """``Finding.follows``: a finding at a later instruction of the same function that
    the walk reached only through a root finding's bad state (a stack-state mismatch, a
    misaligned call: the root is on the first path to it) follows from that root, the
    first such on the path.  A misaligned frame explains later frame findings only; a
    mismatch explains register findings too."""
    sections = {prog.section_name(ds.index): ds.index for ds in prog.sections}

    def gid(f: Finding) -> int:
        loc = f.location
        if loc is None or loc.section not in sections:
            return -1
        return prog.gid(sections[loc.section], loc.offset)

    roots: dict[int, Finding] = {}
    for f in findings:
        if f.rule in ROOT_RULES and (g := gid(f)) >= 0:
            roots.setdefault(g, f)
    if not roots:
        return
    parent = [fn.parent for fn in prog.functions]
    for f in findings:
        y = gid(f) if f.rule in STATE_FOLLOW_ONS else -1
        if y < 0 or prog.func[y] < 0:
            continue
        for x in chain(result, y)[:-1]:
            root = roots.get(x)
            if (root is None or root.location is None or prog.func[x] < 0
                    or parent[prog.func[x]] != parent[prog.func[y]]):
                continue
            if f.rule in FRAME_FOLLOW_ONS or root.rule == "stack-state-mismatch":
                f.follows = (root.location.section, root.location.offset)
                break


def add_explanations(findings: list[Finding], prog: Program, result: WalkResult,
                     arrivals: dict[int, Warning] | None = None) -> None:
    """``details["explain"]``: the path(s) the walk took to each finding's instruction
    (both paths of a stack-state mismatch, from ``arrivals``: id(finding) -> warning)."""
    namer = Namer(prog.elf)
    sections = {prog.section_name(ds.index): ds.index for ds in prog.sections}
    for f in findings:
        loc = f.location
        if loc is None or loc.section not in sections:
            continue
        g = prog.gid(sections[loc.section], loc.offset)
        w = (arrivals or {}).get(id(f))
        ex = explain(prog, result, namer, g, w.via if w else -1, w.arriving if w else None)
        if ex is not None:
            f.details["explain"] = ex


def _link_options(obj: LoadedObject, options: Options) -> tuple[Options, bool]:
    """The switches in effect, and whether objtool would refuse to run at all:
    --noinstr, --ibt and --unret need --link (framevet's own check implies it), which
    objtool forces on an object linked from several files; --unret needs --rethunk."""
    files = sum(1 for s in obj.elf.symbols if s.type == STT_FILE)
    link = options.link or files > 1 or not options.objtool_only
    wants = options.noinstr or options.ibt or options.unret
    refused = options.objtool_only and (
        (options.unret and not options.rethunk) or (wants and not link))
    if options.profile != "kernel" or refused:
        options = replace(options, noinstr=False, ibt=False, unret=False)
    return replace(options, link=link) if link != options.link else options, refused
