"""What a scan reads: ELF files, ``ar`` archives, directories and Debian packages.

Every input becomes a stream of :class:`Member` (one ELF image and where it lives) and
:class:`Broken` (an input that could not be read, and why). A ``.deb`` is read in place:
its ``ar`` members are walked in order, ``control.tar.*`` gives the package name and
version, and ``data.tar.*`` is decompressed as a stream and read with :mod:`tarfile` in
stream mode, so nothing is extracted to disk and only one member is in memory at a time.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from framevet.load.archive import MAGIC as AR_MAGIC
from framevet.load.archive import iter_members
from framevet.load.errors import InputError

ELF_MAGIC = b"\x7fELF"
_AR_HEADER = 60


@dataclass(frozen=True, slots=True)
class Member:
    """One ELF image: the package it came from ("" for a loose file) and its path there."""

    package: str
    package_version: str
    path: str
    data: bytes

    @property
    def display(self) -> str:
        """How findings name it: ``PACKAGE:PATH`` inside a package, else the path."""
        return f"{self.package}:{self.path}" if self.package else self.path


@dataclass(frozen=True, slots=True)
class Broken:
    """An input (or a part of one) that could not be read."""

    package: str
    path: str
    reason: str

    def line(self) -> str:
        where = f"{self.package}:{self.path}" if self.package else self.path
        return f"{where}: error: {self.reason}"


Item = Member | Broken


@dataclass(frozen=True, slots=True)
class Source:
    """One input file: an ELF image, an archive or a package (whole-file hash and size)."""

    path: str
    sha256: str
    size: int
    explicit: bool

    def items(self) -> Iterator[Item]:
        """Its ELF images (and what could not be read)."""
        return _file(self.path, self.explicit)


def iter_sources(paths: list[str]) -> Iterator[Source | Broken]:
    """Every input file under ``paths``, in a stable order (directories sorted); in a
    directory only ELF files, archives and packages, recognised by their magic."""
    for path in paths:
        if os.path.isdir(path):
            yield from _walk(path)
        elif not os.path.exists(path):
            yield Broken("", path, "no such file")
        else:
            yield _source(path, explicit=True)


def _walk(root: str) -> Iterator[Source | Broken]:
    for top, dirs, files in os.walk(root, onerror=None):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                source = _source(path, explicit=False)
                if isinstance(source, Broken) or source.sha256:
                    yield source


def _source(path: str, explicit: bool) -> Source | Broken:
    """A file as a :class:`Source`; one that is neither ELF nor ``ar`` gets no hash (it is
    not read further) unless it was named, when :meth:`Source.items` says what it is."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if not (head.startswith(ELF_MAGIC) or head == AR_MAGIC):
                return Source(path, "", 0, explicit)
            digest.update(head)
            size = len(head)
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return Broken("", path, exc.strerror or str(exc))
    return Source(path, digest.hexdigest(), size, explicit)


def _file(path: str, explicit: bool) -> Iterator[Item]:
    """One file: an ELF image, an archive, or a package; other files count only when named."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head.startswith(ELF_MAGIC):
                fh.seek(0)
                yield Member("", "", path, fh.read())
            elif head == AR_MAGIC:
                fh.seek(0)
                if _is_deb(fh):
                    fh.seek(0)
                    yield from read_deb(fh, path)
                else:
                    fh.seek(0)
                    yield from _archive("", "", path, fh.read())
            elif explicit:
                yield Broken("", path, "not an ELF file, archive or Debian package")
    except OSError as exc:
        yield Broken("", path, exc.strerror or str(exc))


def _archive(package: str, version: str, path: str, data: bytes) -> Iterator[Item]:
    """Every ELF member of a static library, named ``LIB(MEMBER)`` as ``check`` names it."""
    try:
        for name, body in iter_members(data, path):
            if body.startswith(ELF_MAGIC):
                yield Member(package, version, f"{path}({name})", body)
    except InputError as exc:
        yield Broken(package, path, exc.reason)


# -- Debian packages ------------------------------------------------------------------------

def _is_deb(fh: BinaryIO) -> bool:
    """A ``.deb`` is an ``ar`` archive whose first member is ``debian-binary``."""
    fh.seek(len(AR_MAGIC))
    hdr = fh.read(_AR_HEADER)
    return hdr[:16].rstrip().rstrip(b"/") == b"debian-binary"


def read_deb(fh: BinaryIO, path: str) -> Iterator[Item]:
    """The ELF images of the package in ``fh`` under their installed paths."""
    package, version = _name_from_filename(path), ""
    fh.seek(len(AR_MAGIC))
    saw_data = False
    try:
        while True:
            hdr = fh.read(_AR_HEADER)
            if not hdr:
                break
            name, size = _ar_header(hdr, path)
            start = fh.tell()
            body = _Window(fh, size)
            if name.startswith("control.tar"):
                package, version = _control(_decompressed(body, name, path), path, package)
            elif name.startswith("data.tar"):
                saw_data = True
                yield from _data_tar(_decompressed(body, name, path), package, version, path)
            fh.seek(start + size + (size & 1))
    except InputError as exc:
        yield Broken("", path, exc.reason)
        return
    except (OSError, EOFError, tarfile.TarError, lzma.LZMAError, zlib.error) as exc:
        yield Broken("", path, f"corrupt package ({_why(exc)})")
        return
    except Exception as exc:  # noqa: BLE001 - a decompressor's own error: one line, go on
        yield Broken("", path, f"corrupt package ({type(exc).__name__}: {_why(exc)})")
        return
    if not saw_data:
        yield Broken("", path, "corrupt package (no data.tar member)")


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _ar_header(hdr: bytes, path: str) -> tuple[str, int]:
    if len(hdr) < _AR_HEADER or hdr[58:60] != b"`\n":
        raise InputError(path, "corrupt package (malformed ar member header)")
    try:
        size = int(hdr[48:58].decode("ascii").strip())
    except ValueError:
        raise InputError(path, "corrupt package (malformed ar member size)") from None
    return hdr[:16].decode("ascii", "replace").rstrip().rstrip("/"), size


def _name_from_filename(path: str) -> str:
    return os.path.basename(path).split("_")[0]


class _Window(io.RawIOBase):
    """``size`` bytes of ``fh`` from its current position, as a readable stream."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self.left)
        if want <= 0:
            return 0
        chunk = self.fh.read(want)
        if not chunk:
            raise EOFError("package is truncated")
        buf[:len(chunk)] = chunk
        self.left -= len(chunk)
        return len(chunk)


def _decompressed(body: _Window, name: str, path: str) -> IO[bytes]:
    """A stream of the uncompressed tar in an ``ar`` member called ``name``."""
    raw = io.BufferedReader(body, 1 << 16)
    suffix = name.rsplit(".", 1)[-1] if name.count(".") > 1 else ""
    if suffix == "xz" or suffix == "lzma":
        return lzma.open(raw)
    if suffix == "gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw))
    if suffix == "bz2":
        return bz2.BZ2File(raw)
    if suffix == "zst":
        try:
            import zstandard
        except ImportError:
            raise InputError(path, f"{name} needs the zstandard module: "
                             "pip install 'framevet[zstd]'") from None
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw))
    if suffix == "":
        return raw
    raise InputError(path, f"corrupt package (unknown compression of {name})")


def _control(stream: IO[bytes], path: str, fallback: str) -> tuple[str, str]:
    """(Package, Version) from the ``control`` file of ``control.tar``."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if info.isfile() and info.name.lstrip("./") == "control":
                fields = _fields(_read(tar, info))
                return fields.get("package", fallback), fields.get("version", "")
    return fallback, ""


def _fields(control: bytes) -> dict[str, str]:
    out = {}
    for line in control.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            out[key.strip().lower()] = value.strip()
    return out


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(info)
    return fh.read() if fh is not None else b""


def _data_tar(stream: IO[bytes], package: str, version: str, path: str) -> Iterator[Item]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile() or info.size < len(ELF_MAGIC):
                continue
            fh = tar.extractfile(info)
            if fh is None:
                continue
            head = fh.read(8)
            if not (head.startswith(ELF_MAGIC) or head == AR_MAGIC):
                continue
            data = head + fh.read()
            if len(data) != info.size:
                yield Broken(package, _installed(info.name), "member is truncated")
                continue
            where = _installed(info.name)
            if head == AR_MAGIC:
                yield from _archive(package, version, where, data)
            else:
                yield Member(package, version, where, data)


def _installed(name: str) -> str:
    """A tar member's path as installed: ``./usr/bin/x`` -> ``/usr/bin/x``."""
    return "/" + name.lstrip(".").lstrip("/")
