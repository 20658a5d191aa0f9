"""Which emulator runs the code: unicorn, or Bochs when the code needs it or the user asks.

unicorn 2.1 (QEMU 5 TCG) executes x86-64 up to SSE4.2 plus BMI1/2, and is the default:
it is what the existing figures were measured with.  Bochs (``bochscpu-python``) also
executes AVX, AVX2, FMA and AVX-512, and lets ``--cpu`` choose the model ``cpuid``
describes.  ``auto`` picks Bochs when the code that may run (every executable section of
the linked image) contains a VEX/EVEX/XOP instruction unicorn lacks.
"""

from __future__ import annotations

from collections.abc import Iterable

from iced_x86 import Decoder, EncodingKind, Mnemonic

from framevet.emulate import bxlib
from framevet.emulate.image import Image
from framevet.load.errors import InputError

EMULATORS = ("auto", "unicorn", "bochs")
#: VEX-encoded instructions unicorn executes (see machine._VEX_OK)
_UNICORN_VEX = frozenset({Mnemonic.ANDN, Mnemonic.BEXTR, Mnemonic.BLSI, Mnemonic.BLSMSK,
                          Mnemonic.BLSR, Mnemonic.BZHI, Mnemonic.MULX, Mnemonic.PDEP,
                          Mnemonic.PEXT, Mnemonic.RORX, Mnemonic.SARX, Mnemonic.SHLX,
                          Mnemonic.SHRX, Mnemonic.VZEROUPPER, Mnemonic.VZEROALL})
_WIDE = (EncodingKind.VEX, EncodingKind.EVEX, EncodingKind.XOP)


def needs_bochs(image: Image) -> str | None:
    """The first instruction of ``image``'s code unicorn cannot run (as text), or None."""
    for chunk in image.chunks:
        if not chunk.perms & 4 or not chunk.data:
            continue
        dec = Decoder(64, bytes(chunk.data), ip=chunk.addr)
        for ins in dec:
            if ins.encoding in _WIDE and ins.mnemonic not in _UNICORN_VEX:
                return f"{image.describe(ins.ip)}: {ins}"
    return None


def choose(emulator: str, cpu: str | None, images: Iterable[Image],
           notes: list[str] | None = None) -> tuple[str, str]:
    """(``"unicorn"`` or ``"bochs"``, CPU model) for ``--emulator`` and ``--cpu``."""
    if emulator not in EMULATORS:
        raise InputError("--emulator", f"unknown emulator {emulator!r} "
                                       f"(choose {', '.join(EMULATORS)})")
    if cpu is not None and cpu not in bxlib.CPU_MODELS:
        raise InputError("--cpu", f"unknown CPU model {cpu!r} (choose "
                                  f"{', '.join(sorted(bxlib.CPU_MODELS))})")
    if cpu is not None and emulator == "unicorn":
        raise InputError("--cpu", "a CPU model needs the Bochs emulator (--emulator bochs)")
    model = cpu or bxlib.DEFAULT_CPU
    if emulator == "unicorn":
        return "unicorn", model
    why: str | None = None
    if emulator == "auto" and cpu is None:
        why = next((w for im in images if (w := needs_bochs(im)) is not None), None)
        if why is None:
            return "unicorn", model
    try:
        bxlib.load()
    except bxlib.BochsUnavailable as exc:
        if emulator == "bochs" or cpu is not None:
            raise InputError("--emulator", str(exc)) from None
        if notes is not None:
            notes.append(f"the code needs Bochs ({why}), which cannot be loaded: {exc}; "
                         f"running under unicorn")
        return "unicorn", model
    return "bochs", model
