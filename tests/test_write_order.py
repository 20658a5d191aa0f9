"""write-order (seed 003): C writers compiled here at -O2/-O3/-Os with and without each
barrier; the expected verdict of every build comes from running its emitted code
(tests/write_order_oracle.py), and the static rule and the emulated check must agree
with it on every build."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import write_order_oracle as oracle
from conftest import _CACHE, FIXTURES, ROOT, corpus_required, fv

from framevet.emulate.writeorder import read_declarations, run_write_order
from framevet.load import load_path

HERE = FIXTURES / "write-order"
#: the README's example declarations, one per kind, declare these fixtures
TOML = {"runstate": ROOT / "examples" / "write-order-flag.toml",
        "seqcount": ROOT / "examples" / "write-order-seqcount.toml",
        "publish": ROOT / "examples" / "write-order-publish.toml"}
OPTS = ("-O2", "-O3", "-Os")
FLAG_STORES = {0: "plain store", 1: "volatile store", 2: "asm store"}
SOURCES = {
    "runstate": [(), ("-DOPEN_BARRIER",), ("-DCLOSE_BARRIER",),
                 ("-DOPEN_BARRIER", "-DCLOSE_BARRIER")],
    "seqcount": [(), ("-DOPEN_BARRIER",), ("-DCLOSE_BARRIER",),
                 ("-DOPEN_BARRIER", "-DCLOSE_BARRIER")],
    "publish": [(), ("-DPUBLISH_BARRIER",)],
}
FUNCTIONS = {"runstate": ("runstate_arm", "runstate_x86"),
             "seqcount": ("stats_update", "pvclock_publish"),
             "publish": ("cfg_install", "cfg_new")}
KIND = {"runstate_arm": "flag", "runstate_x86": "flag", "stats_update": "seqcount",
        "pvclock_publish": "seqcount", "cfg_install": "publish", "cfg_new": "publish"}


@dataclass(frozen=True)
class Build:
    obj: Path
    source: str
    flags: tuple[str, ...]

    @property
    def flag_store(self) -> int:
        return next(int(f.split("=")[1]) for f in self.flags if f.startswith("-DFLAG_STORE="))

    def has(self, define: str) -> bool:
        return f"-D{define}" in self.flags


def _compile(src: Path, flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256(src.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    out = _CACHE / "write-order" / f"{src.stem}-{key}.o"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC") or shutil.which("gcc") or "cc"
        tmp = out.with_suffix(".tmp.o")
        subprocess.run([cc, "-c", "-fno-asynchronous-unwind-tables", *flags, "-o", str(tmp),
                        str(src)], check=True)
        tmp.replace(out)
    return out


def _builds() -> list[Build]:
    out = []
    for source, barriers in SOURCES.items():
        copies = ((), ("-DFIELD_COPY",)) if source == "runstate" else ((),)
        for opt, store, barrier, copy in itertools.product(OPTS, FLAG_STORES, barriers, copies):
            flags = (opt, f"-DFLAG_STORE={store}", *barrier, *copy)
            out.append(Build(_compile(HERE / f"{source}.c", flags), source, flags))
    return out


def _expected(b: Build, func: str, rng: random.Random) -> oracle.Verdict:
    """Run the build's code and judge the stores it really makes."""
    path = str(b.obj)
    if b.source == "runstate":
        area = bytearray(rng.randbytes(48))
        area[15] &= 0x7F                                 # XEN_RUNSTATE_UPDATE clear
        vcpu = bytearray(rng.randbytes(0x100))
        struct.pack_into("<QQ", vcpu, 0x40, oracle.AREA, 0x20)   # guest area, assist on
        stores = oracle.run(path, func, ["heap"], 48, bytes(area), heap=bytes(vcpu))
        return oracle.judge(stores, bytes(area), (8, 8), 63)
    if b.source == "seqcount":
        area = bytearray(rng.randbytes(32))
        area[0] &= 0xFE                                  # an even sequence
        args: list[int | str] = ["area", 5, 6, 7] if func == "stats_update" else ["area", "heap"]
        stores = oracle.run(path, func, args, 32, bytes(area), heap=rng.randbytes(64))
        return oracle.judge(stores, bytes(area), (0, 4), None)
    args = ["area", 1000, 7] if func == "cfg_install" else [1000, 7]
    stores = oracle.run(path, func, args, 32, rng.randbytes(32), slot="active_cfg",
                        returns_area="cfg_alloc")
    return oracle.judge_publish(stores)


@pytest.fixture(scope="module")
def matrix() -> list[tuple[Build, str, oracle.Verdict]]:
    rng = random.Random(3)
    return [(b, f, _expected(b, f, rng)) for b in _builds() for f in FUNCTIONS[b.source]]


@pytest.fixture(scope="module")
def static(matrix: list[tuple[Build, str, oracle.Verdict]]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for source, toml in TOML.items():
        objs = sorted({str(b.obj) for b, _, _ in matrix if b.source == source})
        r = fv("check", "--format", "json", "--fail-on", "never", "-j", "2", "--hints",
               str(toml), *objs, timeout=300)
        assert r.returncode == 0, r.stderr
        for f in json.loads(r.stdout):
            if f["rule"].startswith("write-order"):
                out.setdefault((f["file"], f["symbol"]), []).append(f)
    return out


def _name(b: Build, func: str) -> str:
    return f"{func} {' '.join(b.flags)}"


def test_static_verdict_matches_the_emitted_code(matrix, static) -> None:
    wrong = []
    for b, func, want in matrix:
        got = static.get((str(b.obj), func), [])
        errors = [f for f in got if f["rule"] == "write-order"]
        notes = [f for f in got if f["rule"] != "write-order"]
        if bool(errors) != want.broken or notes:
            wrong.append(f"{_name(b, func)}: code says {want.why}, framevet says "
                         f"{[f['message'] for f in got] or 'clean'}")
    assert not wrong, "\n".join(wrong)


def test_dynamic_verdict_matches_the_emitted_code(matrix) -> None:
    decls = {s: read_declarations(str(t), None) for s, t in TOML.items()}
    wrong = []
    for b, func, want in matrix:
        decl, declared = decls[b.source]
        spec = "ptr:64,ptr:64:rand" if func == "pvclock_publish" else None
        found = run_write_order(load_path(str(b.obj)), func, decl, declared, runs=1, seed=1,
                                args_spec=spec)
        errors = [f for f in found if f.rule == "write-order"]
        if bool(errors) != want.broken or len(errors) != len(found):
            wrong.append(f"{_name(b, func)}: code says {want.why}, emulation says "
                         f"{[f.message for f in found] or 'clean'}")
        if errors:
            assert " (run " in errors[0].message and errors[0].trace
    assert not wrong, "\n".join(wrong)


def test_the_matrix_exercises_every_case(matrix, static) -> None:
    """The builds cover what the issue names; each case is recognised in the listing."""
    by_kind = {(KIND[f], v.broken) for _, f, v in matrix}
    assert by_kind == {(k, v) for k in ("flag", "seqcount", "publish") for v in (True, False)}
    merged = [(b, f, v) for b, f, v in matrix if v.merged]
    assert any(v.rep for _, _, v in merged), "no build sets the flag inside a rep movs"
    assert any(not v.rep for _, _, v in merged), "no build merges flag and data in one store"
    # the compiler deleted the flag store: a plain-store build whose code never writes
    # the guard on its own
    assert any(KIND[f] == "flag" and b.flag_store == 0 and v.broken and not v.guard_alone
               for b, f, v in matrix)
    # asm stores GCC treats as barriers keep the order even without smp_wmb()
    assert any(b.flag_store == 2 and not b.has("OPEN_BARRIER") and not b.has("CLOSE_BARRIER")
               and not b.has("PUBLISH_BARRIER") and not v.broken for b, f, v in matrix)
    for b, func, _ in merged:
        msgs = [f["message"] for f in static[(str(b.obj), func)]]
        assert any(m.startswith("one store both opens the update and writes data") for m in msgs)


def test_messages_name_the_opening_and_closing_store(matrix, static) -> None:
    seen = set()
    for b, func, _ in matrix:
        for f in static.get((str(b.obj), func), []):
            m = f["message"]
            if "before the update is opened (" in m and "later)" in m:
                assert " sets bit 63 of +0x8 later" in m or " odd later" in m
                seen.add("before")
            if "closed the update" in m:
                assert f"after {func}+0x" in m
                seen.add("after")
            if "published it to active_cfg" in m:
                assert m.startswith("store to cfg+0x") and f"after {func}+0x" in m
                seen.add("publish")
            if m.startswith("sequence goes from even to even"):
                seen.add("even")
    assert seen == {"before", "after", "publish", "even"}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "framevet.toml"
    p.write_text(text)
    return p


BASE = """[runstate_x86.protocol.runstate]
kind = "flag"
area = "[rdi+0x40]"
size = 48
guard = { offset = 8, size = 8, bit = 63 }
"""


@pytest.mark.parametrize("extra, line, words", [
    ("colour = \"red\"\n", 6, "unknown key 'colour'"),
    ("when = \"[rdi+0x48 & 0x20\"\n", 6, "bad expression in when"),
    ("copy_helpers = [\"memcpy\"]\n", 6, "not declared in [framevet.copy_helpers]"),
])
def test_bad_declarations_are_errors_with_the_line(tmp_path: Path, extra: str, line: int,
                                                   words: str) -> None:
    obj = _compile(HERE / "runstate.c", ("-O2", "-DFLAG_STORE=1"))
    toml = _write(tmp_path, BASE + extra)
    commands = [("check",)] + [("abi", "--function", "runstate_x86")] * ("colour" in extra)
    for cmd in commands:
        r = fv(*cmd, "--hints", str(toml), str(obj))
        assert r.returncode == 2, r.stderr
        assert f"{toml}:{line}: error:" in r.stderr and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_bad_area_expression(tmp_path: Path) -> None:
    obj = _compile(HERE / "runstate.c", ("-O2", "-DFLAG_STORE=1"))
    toml = _write(tmp_path, BASE.replace("[rdi+0x40]", "[rdi*2]"))
    r = fv("check", "--hints", str(toml), str(obj))
    assert r.returncode == 2 and f"{toml}:3: error: bad expression in area" in r.stderr


RAID10 = (HERE / "raid10.toml.template").read_text()


def test_raid10_seqlock_writers_are_clean(tmp_path: Path) -> None:
    """Linux 6.1 raid10's raise_barrier/lower_barrier update conf->barrier inside
    write_seqlock: correct, so silent; with the guard declared one field off, the same
    stores are reported, so the silence comes from the walk, not from missing them."""
    ko = corpus_required() / "raid10.ko"
    good = _write(tmp_path, RAID10.replace("GUARD", "0xd8"))
    r = fv("check", "--format", "json", "--fail-on", "never", "--hints", str(good), str(ko))
    assert [f for f in json.loads(r.stdout) if f["rule"].startswith("write-order")] == []
    (tmp_path / "bad").mkdir()
    bad = _write(tmp_path / "bad", RAID10.replace("GUARD", "0xd4"))
    r = fv("check", "--format", "json", "--fail-on", "never", "--hints", str(bad), str(ko))
    found = {f["symbol"] for f in json.loads(r.stdout) if f["rule"] == "write-order"}
    assert found == {"raise_barrier", "lower_barrier"}


EXTRAS = HERE / "extras.toml"


@pytest.mark.parametrize("opt", ("-O2", "-Os"))
@pytest.mark.parametrize("barriers", [(), ("-DBARRIERS",)])
def test_sum_areas_register_conditions_and_field_slots(tmp_path: Path, opt: str,
                                                       barriers: tuple[str, ...]) -> None:
    """area = "rdi+rsi", when = "rdx & 1", slot = "rdi+0x10": static and emulated verdicts
    agree with the code; a call that receives the area is a note until it is declared."""
    obj = _compile(HERE / "extras.c", (opt, *barriers))
    rng = random.Random(5)
    area = bytearray(rng.randbytes(32))
    area[0] &= 0xFE
    want = {
        "rec_update": oracle.judge(oracle.run(str(obj), "rec_update",
                                              [oracle.AREA - 0x40, 0x40, 1, 7, 9], 32,
                                              bytes(area)), bytes(area), (0, 8), 0),
        "rec_at": oracle.judge(oracle.run(str(obj), "rec_at", [oracle.AREA - 0x40, 0x40, 7],
                                          32, bytes(area)), bytes(area), (0, 8), 0),
        "dev_attach": oracle.judge_publish(oracle.run(
            str(obj), "dev_attach", ["heap", "area", 1000], 32, rng.randbytes(32),
            heap=rng.randbytes(64), slot_at=oracle.HEAP + 0x10)),
    }
    r = fv("check", "--format", "json", "--fail-on", "never", "--hints", str(EXTRAS), str(obj))
    got = json.loads(r.stdout)
    decls, declared = read_declarations(str(EXTRAS), None)
    for func, verdict in want.items():
        static = [f for f in got if f["symbol"] == func and f["rule"] == "write-order"]
        dynamic = [f for f in run_write_order(load_path(str(obj)), func, decls, declared,
                                              runs=1, args_spec="ptr:64,long,long")
                   if f.rule == "write-order"]
        assert bool(static) == bool(dynamic) == verdict.broken, (func, verdict.why, static)
    notes = [f["message"] for f in got if f["rule"] == "write-order-unverified"]
    assert notes == ["trace_rec receives rec+0x0 in rdi: its stores are not verified "
                     "(declare it in framevet.toml)"]
    declared_callee = tmp_path / "framevet.toml"
    declared_callee.write_text(EXTRAS.read_text() + "[trace_rec]\n")
    r = fv("check", "--format", "json", "--fail-on", "never", "--hints", str(declared_callee),
           str(obj))
    assert [f for f in json.loads(r.stdout) if f["rule"] == "write-order-unverified"] == []
