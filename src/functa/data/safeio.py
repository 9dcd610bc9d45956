"""Bounded readers for untrusted dataset files: size limits, ``.npy`` headers, ``.npz`` members, streams.

Every reader of :mod:`functa.data` decodes an array only after checking what the file's header declares
against two bounds, before allocating anything:

* **the array limit**: at most :func:`max_array_bytes` decoded bytes per array -- one ``.npy`` file or
  ``.npz`` member (and all the members read from one ``.npz`` together), one idx file, one image, one binvox
  grid, and the stacked array a loader builds from many files (an image folder, a binvox folder, a JPEG
  archive). The default is :data:`DEFAULT_MAX_ARRAY_BYTES` (2 GiB); the environment variable
  ``FUNCTA_MAX_ARRAY_BYTES`` changes it (a number of bytes, optionally with a binary suffix: ``8G``,
  ``512M``, ``16GiB``), and the ``max_bytes=`` argument of :func:`~functa.data.load_dataset`,
  :func:`~functa.data.read_array_file` and :func:`~functa.data.read_idx` overrides both for one call.
  Lazy ``.npy`` data (:class:`~functa.data.ShardedArray`) is read item by item and is not limited.
* **what the stored bytes can hold**: an uncompressed payload must be exactly the declared size, and a
  deflate stream (gzip, a zip member) cannot expand its input more than about 1032-fold
  (:data:`DEFLATE_MAX_RATIO`), so a header declaring more than that is refused as corrupt.

The data are then read from a bounded stream straight into a preallocated array, refusing a stream that
ends before the declared size or goes on past it. Every refusal is a :class:`~functa.errors.DataError`
whose one-line message names the file (and ``.npz`` member); a ``MemoryError`` while reading becomes one too.
``.npz`` archives are read with :class:`Npz`, never with ``np.load``; pickled objects are never loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "PickledArrayError",
    "DEFAULT_MAX_ARRAY_BYTES",
    "DEFLATE_MAX_RATIO",
    "ENV_VAR",
    "Npz",
    "array_limit",
    "check_deflate",
    "check_nbytes",
    "empty_array",
    "fill_from",
    "max_array_bytes",
    "npy_header",
    "parse_byte_size",
]

ENV_VAR = "FUNCTA_MAX_ARRAY_BYTES"
DEFAULT_MAX_ARRAY_BYTES = 2 << 30  # 2 GiB
DEFLATE_MAX_RATIO = 1032  # deflate emits at most 258 bytes per 2 bits of a match: ~1032-fold
_DEFLATE_SLACK = 1 << 10  # stream headers and tiny inputs
_CHUNK = 1 << 18  # bytes per read while filling an array (as numpy reads zip members)
_NPY_HEADER_CAP = 1 << 17  # magic + length + header dict (numpy itself refuses headers over 10 000 bytes)
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, NotImplementedError, TypeError,
                SyntaxError, RecursionError, OverflowError, zipfile.BadZipFile, zlib.error)  # fmt: skip
_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("functa_max_array_bytes", default=None)


class PickledArrayError(DataError):
    """A ``.npy`` (member) holds Python objects, which only pickle could read: never loaded."""


# ---------------------------------------------------------------------------------------- the limit


def parse_byte_size(text: str | int, what: str = ENV_VAR) -> int:
    """``"8G"`` -> 8 GiB: a positive number of bytes with an optional binary suffix K, M, G, T (``KiB``... too)."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: expected a number of bytes, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ConfigError(f"{what}={text!r}: expected a number of bytes such as 4000000000, 512M or 8G")
        value = int(float(m.group(1)) * _SUFFIXES[m.group(2).lower()])
    if value < 1:
        raise ConfigError(f"{what}={text!r}: the limit must be at least 1 byte")
    return value


def max_array_bytes() -> int:
    """The decoded-bytes limit per array in force: ``max_bytes=`` of the current call, else ``$FUNCTA_MAX_ARRAY_BYTES``,
    else :data:`DEFAULT_MAX_ARRAY_BYTES`."""
    value = _override.get()
    if value is not None:
        return value
    env = os.environ.get(ENV_VAR, "").strip()
    return parse_byte_size(env) if env else DEFAULT_MAX_ARRAY_BYTES


@contextlib.contextmanager
def array_limit(max_bytes: int | str | None) -> Iterator[None]:
    """Within the block, readers use ``max_bytes`` as the array limit (``None``: leave it as it is)."""
    if max_bytes is None:
        yield
        return
    token = _override.set(parse_byte_size(max_bytes, "max_bytes"))
    try:
        yield
    finally:
        _override.reset(token)


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.3g} {unit})"
    return f"{n} bytes"


def check_nbytes(nbytes: int, where: str, what: str) -> None:
    """Refuse ``nbytes`` decoded bytes over the array limit: ``"{where}: {what} needs N bytes, more than ..."``."""
    limit = max_array_bytes()
    if nbytes > limit:
        raise DataError(
            f"{where}: {what} needs {_size(nbytes)}, more than the limit of {_size(limit)} per array "
            f"(set {ENV_VAR}, e.g. {ENV_VAR}=16G, or max_bytes= to read larger arrays)"
        )


def check_deflate(declared: int, stored: int, where: str, what: str) -> None:
    """Refuse a deflate stream of ``stored`` bytes said to expand to ``declared`` (beyond the ratio deflate allows)."""
    if declared > DEFLATE_MAX_RATIO * stored + _DEFLATE_SLACK:
        raise DataError(
            f"{where}: {what} declares {_size(declared)}, more than {stored} bytes of deflate data can hold "
            f"(at most ~{DEFLATE_MAX_RATIO}x); corrupt, or a decompression bomb"
        )


def empty_array(shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    """``np.empty(shape, dtype)``, a ``MemoryError`` becoming a :class:`DataError` naming ``where``."""
    try:
        return np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as e:
        raise DataError(f"{where}: cannot allocate {dtype} {tuple(shape)} ({type(e).__name__}: {e})") from None


def fill_from(stream: Any, out: np.ndarray) -> int:
    """Read into ``out`` (C-contiguous) from ``stream`` until it is full or the stream ends; returns the bytes read.

    Reads at most ``out.nbytes`` bytes, in chunks, so a stream can never make this allocate more than a chunk."""
    flat = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
    pos, n = 0, len(flat)
    readinto = getattr(stream, "readinto", None)
    while pos < n:
        step = min(_CHUNK, n - pos)
        if readinto is not None:
            got = readinto(flat[pos : pos + step])
        else:
            data = stream.read(step)
            got = len(data)
            flat[pos : pos + got] = data
        if not got:
            break
        pos += got
    return pos


# --------------------------------------------------------------------------------------------- .npy


class _Capped(io.RawIOBase):
    """At most ``cap`` bytes of ``f``: numpy's header parser cannot be made to read (or allocate) more."""

    def __init__(self, f: BinaryIO, cap: int) -> None:
        self._f, self._left = f, cap

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n) if n else b""
        self._left -= len(data)
        return data


def npy_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """Read a ``.npy`` header from ``f`` (positioned at its start): ``(shape, dtype, header_bytes, fortran_order)``.

    Versions 1.0 and 2.0; no object dtypes; no negative dimensions. ``header_bytes`` is the data's offset
    from the start of the ``.npy``."""
    start = f.tell()
    capped = _Capped(f, _NPY_HEADER_CAP)
    try:
        version = np.lib.format.read_magic(capped)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(capped)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(capped)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        offset = f.tell() - start
    except MemoryError:
        raise DataError(f"{where}: not a valid .npy array (header too large)") from None
    except _READ_ERRORS as e:
        raise DataError(f"{where}: not a valid .npy array ({e})") from e
    if dtype.hasobject:
        raise PickledArrayError(f"{where}: holds Python objects (dtype {dtype}), which would need pickle")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: not a valid .npy array (negative dimension in shape {shape})")
    return shape, dtype, offset, bool(fortran)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


# --------------------------------------------------------------------------------------------- .npz


class Npz:
    """A read-only ``.npz`` archive whose members are checked before they are decoded (module docstring).

    ``names``: the array names (members ``NAME.npy``), in archive order. :meth:`header` checks a member's
    ``.npy`` header against its sizes in the zip directory (no data read); :meth:`read` also checks the
    array limit -- for the member and for all the members read from this archive together -- and then
    decompresses the member incrementally into a preallocated array. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode):  # a device (/dev/zero never ends) or a pipe (blocks)
                raise DataError(f"{self.path}: not a regular file (an .npz archive must be a file)")
            self._size = st.st_size
            self._zf = zipfile.ZipFile(self.path)
        except MemoryError:
            raise DataError(f"{self.path}: cannot open as .npz archive (zip directory too large)") from None
        except _READ_ERRORS as e:
            raise DataError(f"{self.path}: cannot open as .npz archive ({e})") from e
        self.names = [n[:-4] for n in self._zf.namelist() if n.endswith(".npy")]
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype, int, bool]] = {}
        self._decoded = 0

    def __enter__(self) -> "Npz":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def _where(self, key: str) -> str:
        return f"{self.path}: array {key!r}"

    def _info(self, key: str) -> zipfile.ZipInfo:
        try:
            return self._zf.getinfo(key + ".npy")
        except KeyError:
            raise DataError(f"{self.path}: no array {key!r} (found {sorted(self.names)})") from None

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of member ``key``, checked against its declared sizes (nothing decoded beyond the header)."""
        shape, dtype, _, _ = self._header(key)
        return shape, dtype

    def _header(self, key: str) -> tuple[tuple[int, ...], np.dtype, int, bool]:
        if key in self._headers:
            return self._headers[key]
        where, info = self._where(key), self._info(key)
        if info.flag_bits & 0x1:
            raise DataError(f"{where}: the member is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise DataError(f"{where}: zip compression method {info.compress_type} is not supported "
                            "(numpy writes stored or deflated members)")  # fmt: skip
        stored = info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size
        inflated = (info.compress_type == zipfile.ZIP_DEFLATED
                    and info.file_size > DEFLATE_MAX_RATIO * info.compress_size + _DEFLATE_SLACK)  # fmt: skip
        if stored or inflated or info.header_offset + info.compress_size > self._size:
            raise DataError(f"{where}: member sizes in the zip directory are inconsistent (truncated or corrupt "
                            f"archive: {info.compress_size} bytes stored for {info.file_size} declared)")  # fmt: skip
        try:
            with self._zf.open(info) as f:
                shape, dtype, offset, fortran = npy_header(f, where)
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{where}: cannot read (out of memory reading the header)") from None
        except _READ_ERRORS as e:
            raise DataError(f"{where}: cannot read ({type(e).__name__}: {e})") from e
        need = offset + _nbytes(shape, dtype)
        if need != info.file_size:
            raise DataError(f"{where}: header declares {dtype} {shape} ({need} bytes), the member holds "
                            f"{info.file_size}")  # fmt: skip
        self._headers[key] = (shape, dtype, offset, fortran)
        return self._headers[key]

    def read(self, key: str) -> np.ndarray:
        """Decode member ``key`` (checked with :meth:`header` and against the array limit first)."""
        shape, dtype, offset, fortran = self._header(key)
        where, nbytes = self._where(key), _nbytes(shape, dtype)
        check_nbytes(nbytes, where, f"{dtype} {shape}")
        if self._decoded:
            check_nbytes(self._decoded + nbytes, str(self.path), "the arrays read from this archive together")
        out = empty_array(shape[::-1] if fortran else shape, dtype, where)
        try:
            with self._zf.open(key + ".npy") as f:
                if len(f.read(offset)) != offset:
                    raise EOFError("the member ends inside its header")
                got = fill_from(f, out)
                extra = f.read(1)
        except MemoryError:
            raise DataError(f"{where}: cannot read (out of memory)") from None
        except _READ_ERRORS as e:
            raise DataError(f"{where}: cannot read ({type(e).__name__}: {e})") from e
        if got != nbytes or extra:
            raise DataError(f"{where}: the member holds {'more' if extra else got} bytes of data, its header "
                            f"declares {nbytes}")  # fmt: skip
        self._decoded += nbytes
        return out.T if fortran else out

    def read_all(self, keys: list[str]) -> dict[str, np.ndarray]:
        """``{key: array}`` for ``keys``; a missing one is a :class:`DataError` listing what the archive holds."""
        missing = [k for k in keys if k not in self.names]
        if missing:
            raise DataError(f"{self.path}: missing arrays {missing} (has {sorted(self.names)})")
        for k in keys:  # every header first: a bad member is refused before anything is decoded
            self._header(k)
        return {k: self.read(k) for k in keys}
