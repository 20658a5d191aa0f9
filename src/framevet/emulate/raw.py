"""Static checks of a raw stub: ``stub-size`` and ``rel32-reach``.

A generator that writes ``call rel32`` into a stub computes the displacement
from the stub's run-time address; when the target is more than 2 GiB away the
32-bit displacement silently truncates (Xen guards this with
``BUG_ON((int32_t)disp != disp)``).  The bytes then still decode to a call —
to the wrong place.  So each rel32 branch and RIP-relative operand is checked
against the declared symbols: a target that is neither in the stub nor a
declared symbol, but *is* a declared symbol modulo 2^32, is a truncated
displacement.
"""

from __future__ import annotations

from collections.abc import Mapping

from iced_x86 import Decoder, Formatter, FormatterSyntax, OpKind

from framevet.emulate.findings import REL32_REACH, STUB_SIZE, Finding

_REL32 = (OpKind.NEAR_BRANCH64,)
_fmt = Formatter(FormatterSyntax.GAS)
_fmt.uppercase_hex = False
_fmt.branch_leading_zeros = False
_SPAN = 1 << 31


def _finding(path: str, name: str, off: int, rule: str, severity: str, message: str,
             base: int, entry: int = 0) -> Finding:
    return Finding(path, ".text", name, off, rule, severity, message, [], base + entry + off,
                   None, entry + off)


def stub_checks(code: bytes, base: int, symbols: Mapping[str, int], max_size: int | None,
                path: str, name: str, entry: int = 0) -> list[Finding]:
    """``stub-size`` and ``rel32-reach`` findings for ``code`` placed at ``base``."""
    out: list[Finding] = []
    if max_size is not None and len(code) > max_size:
        out.append(_finding(path, name, max_size - entry, STUB_SIZE, "error",
                            f"stub is {len(code)} bytes, larger than its {max_size}-byte "
                            f"buffer: it overflows by {len(code) - max_size} "
                            f"byte{'s' * (len(code) - max_size != 1)}", base, entry))
    by_addr = {a: n for n, a in symbols.items()}
    end = base + len(code)
    dec = Decoder(64, code, ip=base)
    for ins in dec:
        if ins.is_invalid:
            continue
        nxt = ins.next_ip
        target: int | None = None
        kind = ""
        if ins.op_count and ins.op0_kind in _REL32 and ins.len >= 5:
            target, kind = ins.near_branch_target, "branch"
        elif ins.is_ip_rel_memory_operand:
            target, kind = ins.ip_rel_memory_address, "RIP-relative operand"
        if target is None or base <= target < end or target in by_addr:
            continue
        off = ins.ip - base - entry
        disp = (target - nxt) & 0xFFFF_FFFF
        meant = [(n, a) for n, a in symbols.items()
                 if (a - nxt) & 0xFFFF_FFFF == disp and not -_SPAN <= a - nxt < _SPAN]
        text = _fmt.format(ins)
        if meant:
            n, a = meant[0]
            out.append(_finding(path, name, off, REL32_REACH, "error",
                                f"'{text}': {kind} to {n} (0x{a:x}) needs a displacement of "
                                f"{a - nxt:+#x}, beyond the ±2 GiB of rel32: it was truncated "
                                f"and lands at 0x{target:x}", base, entry))
        else:
            out.append(_finding(path, name, off, REL32_REACH, "warning",
                                f"'{text}': {kind} target 0x{target:x} is neither inside the "
                                f"stub nor a declared --symbol", base, entry))
    return out
