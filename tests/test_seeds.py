"""The review-thread bugs of ../shared/seeds, rebuilt as fixtures (issue 3, beyond objtool)."""

from __future__ import annotations

from pathlib import Path

from conftest import FIXTURES

from framevet.load import load_path
from framevet.pipeline import Options, analyse

SEEDS = FIXTURES / "seeds"


def findings(name: str, hints: str | None = None, **opts: object) -> list[tuple[str, str]]:
    obj = load_path(str(SEEDS / name))[0]
    o = Options(hints_file=str(SEEDS / hints) if hints else None, **opts)  # type: ignore[arg-type]
    return [(f.rule, f.location.text() if f.location else "") for f in analyse(obj, o).findings]


def test_xen_pv_trampoline_flagged_without_declaration() -> None:
    assert findings("xen-pv-trap-trampoline.S") == [
        ("sibling-call-modified-frame", "xen_page_fault+0x3")]


def test_xen_pv_trampoline_clean_with_declaration() -> None:
    assert findings("xen-pv-trap-trampoline.S", "xen-pv-trap-trampoline.toml") == []


def test_sidecar_found_beside_input(tmp_path: Path) -> None:
    (tmp_path / "stub.S").write_text((SEEDS / "xen-pv-trap-trampoline.S").read_text())
    (tmp_path / "framevet.toml").write_text(
        (SEEDS / "xen-pv-trap-trampoline.toml").read_text())
    obj = load_path(str(tmp_path / "stub.S"))[0]
    assert analyse(obj, Options()).findings == []


def test_return_oriented_gpr_switch() -> None:
    got = findings("gpr-switch-return-oriented.S")
    assert ("return-address-overwrite", "host_to_guest_gpr_switch+0x4") in got  # movq %rdi,(%rsp)
    assert ("return-address-overwrite", "host_to_guest_gpr_switch+0x5b") in got  # ret to pushed
    assert ("return-modified-frame", "host_to_guest_gpr_switch+0x5b") in got
    assert ("return-modified-frame", "guest_to_host_gpr_switch+0x4b") in got


def test_gpr_switch_rewrite_needs_its_convention_declared() -> None:
    assert findings("gpr-switch-call-ret.S") == [
        ("callee-saved-clobber", "load_guest_gprs+0x3b")]
    assert findings("gpr-switch-call-ret.S", "gpr-switch-call-ret.toml") == []


def test_save_extra_regs_slot_writes_are_caller_frame_writes() -> None:
    got = findings("save-extra-regs-slots.S")
    assert [r for r, _ in got] == ["caller-frame-write"] * 6
    assert got[0][1] == "lockdep_sys_exit_thunk+0x0"


def test_save_extra_regs_slots_pass_objtool_checks() -> None:
    # objtool accepts the bug silently: only framevet's own rule sees it
    assert findings("save-extra-regs-slots.S", objtool_only=True) == []


def test_push_based_save_is_clean() -> None:
    assert findings("save-extra-regs-push.S") == []


def test_fred_frame_builder() -> None:
    got = findings("fred-frame-builder.S")
    assert ("return-modified-frame", "vmx_do_fred_interrupt_irqoff+0x17") in got
    assert ("sibling-call-modified-frame", "vmx_do_fred_nmi_irqoff+0x19") in got
    assert findings("fred-frame-builder-fixed.S") == []
