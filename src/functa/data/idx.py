"""MNIST / Fashion-MNIST idx files (raw or gzip-compressed).

idx layout (big-endian): 2 zero bytes, 1 dtype-code byte, 1 byte ``ndim``, ``ndim`` uint32 dims,
then ``prod(dims)`` items of that dtype in C order. Images files are ``(N, 28, 28)`` uint8 and become
``(N, 28, 28, 1)``; label files are ``(N,)`` uint8 and become ``(N,)`` int64. Every dimension must be at
least 1, and the declared size must fit the array limit (:mod:`functa.data.safeio`, 2 GiB unless
``FUNCTA_MAX_ARRAY_BYTES`` says otherwise) and, for ``.gz`` files, what the compressed file can hold (deflate
expands at most ~1032-fold): both are checked before anything is decompressed.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .dataset import ArrayDataset, DataError, concat_datasets
from .safeio import array_limit, check_deflate, check_nbytes, empty_array, fill_from

__all__ = ["read_idx", "is_idx_file", "find_idx_pair", "load_idx"]

# idx dtype code -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end)."""
    parts, left = [], n
    while left:
        data = stream.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _check_header(stream: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and validate an idx header from ``stream``; return ``(big-endian dtype, dims, header_size)``."""
    buf = _read_exact(stream, 4)
    if len(buf) < 4:
        raise DataError(f"{path}: not an idx file (only {len(buf)} bytes, need a 4-byte magic number)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(
            f"{path}: bad idx magic number 0x{buf[:4].hex()} (expected 0x0000 followed by dtype code and ndim)"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown idx dtype code 0x{code:02x} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    raw = _read_exact(stream, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated idx header (need {header} bytes for {ndim} dims, file has {4 + len(raw)})")
    dims = tuple(int(d) for d in struct.unpack(f">{ndim}I", raw))
    if 0 in dims:
        raise DataError(f"{path}: idx header declares an empty dimension (dims {list(dims)}); every dimension "
                        "must be at least 1")  # fmt: skip
    return np.dtype(_IDX_DTYPES[code]), dims, header


def _read_payload(stream: BinaryIO, path: Path, gz: bool, size: int) -> np.ndarray:
    """Header and data of an idx stream (raw file or gunzipped), every size checked before allocating."""
    dtype, dims, header = _check_header(stream, path)
    expected = math.prod(dims) * dtype.itemsize
    check_nbytes(expected, str(path), f"idx header dims {list(dims)} ({dtype.name})")
    if gz:
        check_deflate(header + expected, size, str(path), f"the idx header (dims {list(dims)})")
    elif size - header != expected:
        what = "truncated" if size - header < expected else "trailing bytes in"
        raise DataError(f"{path}: {what} idx payload: header dims {list(dims)} need {expected} bytes, "
                        f"found {size - header}")  # fmt: skip
    arr = empty_array(dims, dtype, str(path))
    got = fill_from(stream, arr)
    extra = _read_exact(stream, 1) if got == expected else b""
    if got != expected or extra:
        what = "truncated" if got < expected else "trailing bytes in"
        found = f"{got}" if got < expected else "more"
        raise DataError(f"{path}: {what} idx payload: header dims {list(dims)} need {expected} bytes, found {found}")
    return arr


def read_idx(path: str | Path, *, max_bytes: int | str | None = None) -> np.ndarray:
    """Parse one idx file (raw or ``.gz``) into an array of shape ``dims`` in native byte order.

    Raises :class:`DataError` (naming the file) on a bad magic number, unknown dtype code, an empty
    dimension, corrupt gzip stream, or a payload whose size differs from ``prod(dims) * itemsize``
    (expected vs actual bytes). The declared size is checked before anything is decompressed: against
    the array limit (``max_bytes``, else ``$FUNCTA_MAX_ARRAY_BYTES``, else 2 GiB) and, for ``.gz``, against
    what the compressed file can hold; the stream is then read into a preallocated array and may not yield
    more or fewer bytes than declared.
    """
    path = Path(path)
    try:
        with array_limit(max_bytes), open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not gz:
                arr = _read_payload(raw, path, False, size)
            else:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    try:
                        arr = _read_payload(stream, path, True, size)
                    except (OSError, EOFError, zlib.error) as e:
                        raise DataError(f"{path}: corrupt gzip stream ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read idx file ({e.strerror or e})") from e
    except MemoryError:
        raise DataError(f"{path}: out of memory reading the idx file") from None
    if not arr.dtype.isnative:
        arr = arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))
    return arr  # writable, native byte order


def is_idx_file(path: Path) -> bool:
    """Cheap sniff: does ``path`` start with a plausible idx magic number (after optional gunzip)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == _GZIP_MAGIC:
            with gzip.open(path, "rb") as g:
                magic = g.read(4)
        else:
            with open(path, "rb") as f:
                magic = f.read(4)
    except (OSError, EOFError, zlib.error):
        return bool(re.search(r"idx\d", path.name))  # let read_idx report the real problem
    return len(magic) == 4 and magic[:2] == b"\0\0" and magic[2] in _IDX_DTYPES and 1 <= magic[3] <= 4


def _find(directory: Path, prefix: str, kind: str) -> Path | None:
    """``<prefix>-<kind>-idxN-ubyte`` (or ``.idxN-ubyte``), raw preferred over ``.gz``."""
    n = 3 if kind == "images" else 1
    for stem in (f"{prefix}-{kind}-idx{n}-ubyte", f"{prefix}-{kind}.idx{n}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    return None


def find_idx_pair(directory: Path, split: str) -> tuple[Path | None, Path | None]:
    """``(images, labels)`` paths for ``split`` in ``directory`` ("train" -> ``train-*``, "test" -> ``t10k-*``)."""
    prefix = _SPLIT_PREFIX[split]
    return _find(directory, prefix, "images"), _find(directory, prefix, "labels")


def _as_images(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: idx images must be uint8, found {arr.dtype}")
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return arr
    raise DataError(f"{path}: idx array of shape {arr.shape} is not an image stack (N, H, W)")


def _as_labels(arr: np.ndarray, path: Path, n_images: int, images_path: Path) -> np.ndarray:
    if arr.ndim != 1:
        raise DataError(f"{path}: idx labels must be 1-D, found shape {arr.shape}")
    if arr.shape[0] != n_images:
        raise DataError(f"{path}: {arr.shape[0]} labels but {images_path} has {n_images} images")
    return arr.astype(np.int64)


def _split_of(name: str) -> str | None:
    if name.startswith("train"):
        return "train"
    if name.startswith("t10k") or name.startswith("test"):
        return "test"
    return None


def load_idx(path: Path, split: str | None, limit: int | None = None) -> ArrayDataset:
    """Load an idx image dataset from a directory (``split`` picks ``train-*`` / ``t10k-*``) or a single file.

    Returns images ``(M, H, W, 1)`` uint8 and labels ``(M,)`` int64 (``None`` if no labels file is found).
    ``split="all"`` concatenates train and test. For a single images file the matching
    ``*-labels-idx1-ubyte[.gz]`` next to it is used if present and the split is taken from the file name
    (asking a ``train-*`` file for ``"test"`` or the reverse raises :class:`DataError`). ``split=None``:
    "train" for a directory, the file's own split for a file.
    """
    if split is None and path.is_dir():
        split = "train"
    if path.is_dir() and split == "all":
        parts = [load_idx(path, s) for s in ("train", "test") if find_idx_pair(path, s)[0] is not None]
        if not parts:
            raise DataError(f"{path}: no train-/t10k-images-idx3-ubyte[.gz] files")
        files = [f for p in parts for f in p.meta["files"]]
        ds = concat_datasets(parts, {**parts[0].meta, "split": "all", "files": files})
        return ds.subset(slice(0, limit)) if limit is not None else ds
    if path.is_dir():
        images_path, labels_path = find_idx_pair(path, split)
        if images_path is None:
            prefix = _SPLIT_PREFIX[split]
            raise DataError(f"{path}: no {prefix}-images-idx3-ubyte[.gz] file for split {split!r}")
        if labels_path is None:
            raise DataError(f"{path}: {images_path.name} found but no {_SPLIT_PREFIX[split]}-labels-idx1-ubyte[.gz]")
        split_name: str | None = split
    else:
        images_path = path
        labels_path = None
        m = re.match(r"(.*)-images([.-])idx3-ubyte(\.gz)?$", path.name)
        if m:
            for suffix in ("", ".gz"):
                cand = path.with_name(f"{m.group(1)}-labels{m.group(2)}idx1-ubyte{suffix}")
                if cand.is_file():
                    labels_path = cand
                    break
        split_name = _split_of(path.name)
        if split in ("train", "test") and split_name not in (None, split):
            raise DataError(f"{path}: this file holds the {split_name!r} split, not {split!r}; point at the "
                            "directory holding both splits")

    images = _as_images(read_idx(images_path), images_path)
    labels = None
    if labels_path is not None:
        labels = _as_labels(read_idx(labels_path), labels_path, images.shape[0], images_path)
    if limit is not None:
        images = images[:limit].copy()
        labels = None if labels is None else labels[:limit].copy()
    meta = {
        "source": str(path),
        "format": "idx",
        "kind": "image",
        "split": split_name,
        "files": [str(p) for p in (images_path, labels_path) if p is not None],
    }
    return ArrayDataset(images, labels, meta)
