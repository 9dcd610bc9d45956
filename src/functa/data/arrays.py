"""3-D occupancy grids (voxels) and generic arrays: ``.npz``, ``.npy``, shard directories and binvox files.

Formats (``meta["format"]``), what they hold and the ``meta["kind"]`` they give:

* ``voxel-npz``    ``.npz`` with ``voxels`` ``(M, X, Y, Z)`` bool or integer with values in {0, 1}, optional
  ``label`` or ``labels`` ``(M,)`` integers and ``class_names`` ``(C,)`` strings -> "voxel".
* ``array-npz``    ``.npz`` with ``data`` ``(M, ...)`` bool, integer or (finite) float, same optional arrays -> "array".
* ``npy``          one ``.npy`` ``(M, ...)``, lazy (only the header is read at open): a one-shard
  :class:`~functa.data.shards.ShardedArray`; optional ``NAME.labels.npy`` ``(M,)`` beside ``NAME.npy``.
  "voxel" for a 4-D bool array, else "array" (values are not scanned: the file may be larger than memory).
* ``npy-shards``   a directory of ``*.npy`` shards ``(n_k, ...)`` of one item shape and dtype, sorted by name and
  concatenated lazily into a :class:`~functa.data.shards.ShardedArray`, each shard with an
  optional ``NAME.labels.npy`` ``(n_k,)`` (every shard or none); or ``train/`` and ``test/`` sub-directories
  of shards. An optional ``meta.json`` beside them may give ``{"kind": "voxel" | "array", "class_names": [...]}``;
  without it the kind is decided as for ``npy``.
* ``binvox``       one binvox file (a dataset of one grid); ``binvox-folder``: a directory of ``.binvox`` files,
  optionally in class sub-folders (labels by sorted folder name) and ``train/``/``test/`` sub-folders, in
  either order (``train/<class>/x.binvox`` or ModelNet's ``<class>/train/x.binvox``). All grids must have
  the same dims.

Voxels come back as ``(M, X, Y, Z)`` uint8 with values {0, 1} (lazy bool data is viewed as uint8), arrays
``(M, ...)`` in their own dtype (native byte order), labels ``(M,)`` int64. ``.npy`` inputs need native byte order
and C order (Fortran order only for 1-D arrays, where it is the same), and a file size of exactly the header
plus the declared data. Lazy ``.npy`` data is never memory-mapped: items are read with positional file reads
when indexed (:mod:`functa.data.shards`), so reading costs memory for the batch only, however many items
are read in all.

Size checks (:mod:`functa.data.safeio`): ``.npz`` members are read with :class:`~functa.data.safeio.Npz`,
never ``np.load``: each member's ``.npy`` header must match its size in the zip directory, a stored member
its compressed size, a deflated one at most ~1032 times its compressed size, and what is decoded (each
member, and all the members read from one file together) must fit the array limit (2 GiB by default,
``FUNCTA_MAX_ARRAY_BYTES``); the member is then inflated incrementally into a preallocated array. Arrays read
whole from ``.npy`` files (:func:`read_array_file`), binvox grids and binvox folders are held to the same limit.

Splits (``split="all"`` always returns every item, train before test):

* hashed, for files that hold a single split (``voxel-npz``, ``array-npz``, binvox folders without
  ``train/``/``test/``): item ``i`` is "test" iff
  ``int.from_bytes(sha256(item_bytes)[:8], "little") % 1000 < round(1000 * test_fraction)``, where
  ``item_bytes`` are the item's values as returned, in C order (little-endian for multi-byte dtypes; for
  voxels the uint8 grid). Items with identical content hash alike, so duplicate shapes always share a split
  and none leaks from train into test; an item's split does not depend on the other items or their order.
  About ``test_fraction`` of the items are "test".
* tail, for lazy data (``npy``, ``npy-shards`` without sub-directories), where hashing would read everything:
  the last ``round(test_fraction * M)`` items (at least 1) are "test", as for grids
  (:func:`~functa.data.grid.split_range`).
* folders: ``train/`` and ``test/`` sub-directories.

binvox (Patrick Min's format): ASCII lines ``#binvox 1``, ``dim D0 D1 D2``, ``translate tx ty tz``, ``scale s``
(any order), ``data``, then (value, count) byte pairs run-length encoding ``D0 * D1 * D2`` voxels. As in
``binvox_rw.read_as_3d_array`` (``fix_coords=True``) the decoded run is reshaped to ``(D0, D1, D2)`` and
transposed to axes [x, y, z], giving ``(D0, D2, D1)``; :func:`write_binvox` writes the inverse (header
``dim X Z Y``), so a round trip returns the array. Dims must be in 1..1024 and the grid within the array
limit; the payload size must be possible for the grid, and the run lengths must add up to exactly the grid
size, both checked before the grid is allocated.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_write_bytes
from .dataset import ArrayDataset, DataError
from .grid import split_range
from .safeio import Npz, array_limit, check_nbytes, empty_array, fill_from, npy_header
from .shards import NpyShard, ShardedArray

__all__ = [
    "BINVOX_MAX_DIM",
    "read_array_file",
    "has_binvox",
    "hashed_test_mask",
    "is_npy_shard_dir",
    "load_array_npz",
    "load_binvox",
    "load_binvox_folder",
    "load_npy",
    "load_npy_shards",
    "load_voxel_npz",
    "read_binvox",
    "write_array_file",
    "write_binvox",
]

BINVOX_MAX_DIM = 1024
_SPLIT_DIRS = ("train", "test")
_HASH_BUCKETS = 1000
_NUMERIC = "biuf"  # numpy dtype kinds accepted as data: bool, signed, unsigned, float
_KINDS = ("voxel", "array")
_META_KEYS = frozenset({"kind", "class_names"})
_META_MAX_BYTES = 1 << 20
_BINVOX_LINE_MAX = 256
_BINVOX_PATTERNS = ("*.binvox", "*/*.binvox", "*/*/*.binvox")
_PROGRESS_MIN = 1000


# ------------------------------------------------------------------------------------------- checks


def _check_fraction(path: Path, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{path}: test_fraction must be in (0, 1), got {test_fraction}; use split='all' for everything")


def _check_items(shape: tuple[int, ...], where: str) -> None:
    if len(shape) < 1 or shape[0] < 1:
        raise DataError(f"{where}: no items (shape {shape}); expected (M, ...) with M >= 1")
    if any(d < 1 for d in shape[1:]):
        raise DataError(f"{where}: items of shape {shape[1:]} are empty")


def _check_voxel_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biu":
        raise DataError(f"{where}: voxels must be bool or integer occupancy (0/1), found dtype {dtype}")
    if len(shape) != 4:
        raise DataError(f"{where}: voxels must be (M, X, Y, Z), found shape {shape}")
    _check_items(shape, where)


def _check_array_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.kind not in _NUMERIC:
        raise DataError(f"{where}: data must be bool, integer or float, found dtype {dtype}")
    _check_items(shape, where)


def _check_labels_layout(shape: tuple[int, ...], dtype: np.dtype, m: int, where: str) -> None:
    if shape != (m,):
        raise DataError(f"{where}: labels must have shape ({m},) (one per item), found {shape}")
    if dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, found dtype {dtype}")


def _as_voxels(a: np.ndarray, where: str) -> np.ndarray:
    """In-memory occupancy grids -> C-contiguous uint8, refusing values outside {0, 1}."""
    if a.dtype != np.bool_:
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > 1:
            flat = a.reshape(len(a), -1)
            first = int(np.flatnonzero((flat.min(1) < 0) | (flat.max(1) > 1))[0])
            raise DataError(f"{where}: voxel values must be 0 or 1, found {lo}..{hi} (first bad item: {first})")
    return np.ascontiguousarray(a, dtype=np.uint8)


def _as_array(a: np.ndarray, where: str) -> np.ndarray:
    """In-memory generic data -> C-contiguous, native byte order, refusing NaN and infinities."""
    if a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DataError(f"{where}: data has {bad} non-finite value(s) (NaN/inf) out of {a.size}")
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


def _as_labels(a: np.ndarray, where: str, class_names: list[str] | None) -> np.ndarray:
    labels = a.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {labels.min()}")
    if class_names is not None and labels.size and labels.max() >= len(class_names):
        raise DataError(f"{where}: label {labels.max()} has no entry in class_names ({len(class_names)} names)")
    return labels


# ------------------------------------------------------------------------------------------- splits


def hashed_test_mask(items: np.ndarray, test_fraction: float) -> np.ndarray:
    """``(M,)`` bool: which items of ``items`` ``(M, ...)`` are "test" under the hashed rule (module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    threshold = math.floor(_HASH_BUCKETS * test_fraction + 0.5)
    a = np.ascontiguousarray(items, dtype=items.dtype.newbyteorder("<"))
    rows = a.reshape(len(a), math.prod(a.shape[1:])).view(np.uint8)
    out = np.empty(len(a), dtype=bool)
    for i in range(len(a)):
        digest = hashlib.sha256(rows[i]).digest()
        out[i] = int.from_bytes(digest[:8], "little") % _HASH_BUCKETS < threshold
    return out


def _hashed_select(data: np.ndarray, split: str, test_fraction: float, limit: int | None, path: Path) -> np.ndarray:
    """Indices of the items of ``split`` under the hashed rule, the first ``limit`` of them."""
    if split == "all":
        idx = np.arange(len(data))
    else:
        test = hashed_test_mask(data, test_fraction)
        idx = np.flatnonzero(test if split == "test" else ~test)
    if not idx.size:
        raise DataError(
            f"{path}: none of the {len(data)} items falls in the {split!r} split (hashed, test_fraction="
            f"{test_fraction}); use split='all' or another test_fraction"
        )
    return idx[:limit]


def _tail_range(m: int, split: str, test_fraction: float, limit: int | None, path: Path) -> tuple[int, int]:
    start, stop = split_range(m, split, test_fraction, path)
    return start, stop if limit is None else min(stop, start + limit)


# ---------------------------------------------------------------------------------------------- npy


def _open_npy(path: Path) -> NpyShard:
    """Describe a numeric ``.npy`` as a file shard after checking its header against the file size (no data read)."""
    try:
        with open(path, "rb") as f:
            shape, dtype, offset, fortran = npy_header(f, str(path))
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    need = offset + math.prod(shape) * dtype.itemsize
    if size != need:
        what = "truncated" if size < need else "trailing bytes in"
        raise DataError(f"{path}: {what} .npy file: header declares {dtype} {shape} ({need} bytes), file has {size}")
    if dtype.kind not in _NUMERIC:
        raise DataError(f"{path}: data must be bool, integer or float, found dtype {dtype}")
    if not dtype.isnative:
        raise DataError(f"{path}: non-native byte order ({dtype}); rewrite it with a.astype(a.dtype.newbyteorder('='))")
    if fortran and len(shape) > 1:
        raise DataError(f"{path}: Fortran-order {dtype} {shape} array; items must be stored in C order "
                        "(rewrite it with np.save(path, np.ascontiguousarray(a)))")  # fmt: skip
    if not shape:
        _check_items(shape, str(path))
    return NpyShard(str(path), offset, shape[0], shape[1:], dtype)


def _labels_path(data_path: Path) -> Path:
    return data_path.with_name(data_path.stem + ".labels.npy")


def _read_labels_file(path: Path, m: int, data_path: Path, class_names: list[str] | None) -> np.ndarray:
    shard = _open_npy(path)
    _check_labels_layout(shard.shape, shard.dtype, m, f"{path} (labels of {data_path.name}, {m} items)")
    return _as_labels(np.asarray(ShardedArray([shard])), str(path), class_names)


def _lazy_kind(mm: NpyShard, declared: str | None, where: str) -> str:
    if declared is None:
        return "voxel" if mm.dtype == np.bool_ and mm.ndim == 4 else "array"
    if declared == "voxel" and (mm.dtype not in (np.bool_, np.uint8) or mm.ndim != 4):
        raise DataError(f"{where}: kind 'voxel' needs bool or uint8 (n, X, Y, Z) shards, found {mm.dtype} {mm.shape}")
    return declared


def _lazy_voxels(shard: NpyShard) -> NpyShard:
    return shard.view(np.uint8) if shard.dtype == np.bool_ else shard  # the same bytes, nothing read


def load_npy(path: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None) -> ArrayDataset:
    """Open one ``.npy`` file ``(M, ...)`` lazily (module docstring); ``data`` is a one-shard :class:`ShardedArray`."""
    _check_fraction(path, test_fraction)
    shard = _open_npy(path)
    _check_items(shard.shape, str(path))
    kind = _lazy_kind(shard, None, str(path))
    data = ShardedArray([_lazy_voxels(shard) if kind == "voxel" else shard])
    files = [str(path)]
    labels = None
    if _labels_path(path).is_file():
        labels = _read_labels_file(_labels_path(path), len(shard), path, None)
        files.append(str(_labels_path(path)))
    start, stop = _tail_range(len(shard), split, test_fraction, limit, path)
    meta: dict[str, Any] = {
        "source": str(path), "format": "npy", "kind": kind, "split": split, "files": files,
        "n_total": len(shard), "item_range": [start, stop], "test_fraction": float(test_fraction), "split_rule": "tail",
    }  # fmt: skip
    return ArrayDataset(data.range(start, stop), None if labels is None else labels[start:stop], meta)


# --------------------------------------------------------------------------------------- npy shards


def _shard_files(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(
        p for p in d.iterdir()
        if p.suffix.lower() == ".npy" and not p.name.lower().endswith(".labels.npy")
        and not p.name.startswith(".") and p.is_file()
    )  # fmt: skip


def is_npy_shard_dir(path: Path) -> bool:
    """Does ``path`` hold ``.npy`` shards directly or in ``train/``/``test/``?"""
    return any(_shard_files(d) for d in (path, *(path / s for s in _SPLIT_DIRS)))


def _read_meta_json(root: Path) -> tuple[str | None, list[str] | None]:
    """``(kind, class_names)`` from ``root/meta.json`` (each None when not given)."""
    p = root / "meta.json"
    if not p.is_file():
        return None, None
    try:
        size = p.stat().st_size
        text = p.read_text(encoding="utf-8") if size <= _META_MAX_BYTES else ""
        obj = json.loads(text) if text else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{p}: cannot read as JSON ({type(e).__name__}: {e})") from e
    if size > _META_MAX_BYTES:
        raise DataError(f"{p}: {size} bytes, larger than {_META_MAX_BYTES}; expected a small JSON object")
    if not isinstance(obj, dict):
        raise DataError(f"{p}: expected a JSON object with keys {sorted(_META_KEYS)}, found {type(obj).__name__}")
    unknown = sorted(set(obj) - _META_KEYS)
    if unknown:
        raise DataError(f"{p}: unknown keys {unknown}; allowed: {sorted(_META_KEYS)}")
    kind, names = obj.get("kind"), obj.get("class_names")
    if kind is not None and kind not in _KINDS:
        raise DataError(f"{p}: 'kind' must be one of {list(_KINDS)}, found {kind!r}")
    if names is not None and not (isinstance(names, list) and all(isinstance(s, str) for s in names)):
        raise DataError(f"{p}: 'class_names' must be a list of strings")
    return kind, names


def _shard_layout(root: Path, split: str) -> tuple[list[Path], list[Path], bool]:
    """``(shards of split, every shard, has train/test sub-directories)``."""
    loose = _shard_files(root)
    groups = {s: _shard_files(root / s) for s in _SPLIT_DIRS}
    if not any(groups.values()):
        if not loose:
            raise DataError(f"{root}: no .npy shards found")
        return loose, loose, False
    if loose:
        raise DataError(f"{root}: mixes shards ({loose[0].name}) with train/ and test/ sub-directories of shards")
    every = groups["train"] + groups["test"]
    if split == "all":
        return every, every, True
    if not groups[split]:
        raise DataError(f"{root}: no .npy shards in '{split}/' (shards found in {[s for s in groups if groups[s]]})")
    return groups[split], every, True


def _check_shards(shards: dict[Path, NpyShard]) -> bool:
    """Same item shape and dtype everywhere; labels beside every shard or none. Returns: labelled."""
    (first, a), *_ = shards.items()
    for f, s in shards.items():
        if s.shape[1:] != a.shape[1:] or s.dtype != a.dtype:
            raise DataError(
                f"{f}: shard holds {s.dtype} items of shape {s.shape[1:]}, but {first.name} holds {a.dtype} "
                f"items of shape {a.shape[1:]}; all shards need one item shape and dtype"
            )
    labelled = [f for f in shards if _labels_path(f).is_file()]
    if labelled and len(labelled) != len(shards):
        missing = next(f for f in shards if f not in labelled)
        raise DataError(
            f"{missing}: no {_labels_path(missing).name} beside it, but {labelled[0].name} has labels; "
            "give labels for every shard or for none"
        )
    return bool(labelled)


def load_npy_shards(root: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None) -> ArrayDataset:
    """Open a directory of ``.npy`` shards lazily (see module docstring); ``data`` is a :class:`ShardedArray`."""
    _check_fraction(root, test_fraction)
    files, every, by_folder = _shard_layout(root, split)
    opened = {f: _open_npy(f) for f in every}
    labelled = _check_shards(opened)
    declared, class_names = _read_meta_json(root)
    kind = _lazy_kind(opened[every[0]], declared, str(every[0]))
    parts = [_lazy_voxels(opened[f]) if kind == "voxel" else opened[f] for f in files]
    data = ShardedArray(parts)
    _check_items(data.shape, f"{root} ({split!r} split)")
    labels = None
    if labelled:
        labels = np.concatenate([_read_labels_file(_labels_path(f), len(opened[f]), f, class_names) for f in files])
    if by_folder:
        start, stop = 0, len(data) if limit is None else min(len(data), limit)
    else:
        start, stop = _tail_range(len(data), split, test_fraction, limit, root)
    meta: dict[str, Any] = {
        "source": str(root), "format": "npy-shards", "kind": kind, "split": split,
        "files": [str(f) for f in files] + ([str(_labels_path(f)) for f in files] if labelled else []),
        "n_shards": len(files), "n_total": len(data), "item_range": [start, stop],
        "split_rule": "folders" if by_folder else "tail", "test_fraction": float(test_fraction),
    }  # fmt: skip
    if class_names is not None:
        meta["class_names"] = class_names
    return ArrayDataset(data.range(start, stop), None if labels is None else labels[start:stop], meta)


# ---------------------------------------------------------------------------------------------- npz


def read_array_file(path: str | os.PathLike, key: str, *, max_bytes: int | str | None = None) -> np.ndarray:
    """One numeric array from a ``.npy`` file, or the array ``key`` of a ``.npz`` file (no pickle).

    Declared shapes are checked against the file (or zip member) sizes and against the array limit
    (``max_bytes``, else ``$FUNCTA_MAX_ARRAY_BYTES``, else 2 GiB: :mod:`functa.data.safeio`) before anything
    is read, so a small hostile file cannot make this allocate. Raises :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    with array_limit(max_bytes):
        if head == b"\x93NUMPY":
            shard = _open_npy(path)
            check_nbytes(len(shard) * shard.item_nbytes, str(path), f"{shard.dtype} {shard.shape}")
            out = empty_array(shard.shape, shard.dtype, str(path))
            try:
                with open(path, "rb") as f:
                    f.seek(shard.offset)
                    got = fill_from(f, out)
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
            if got != out.nbytes:
                raise DataError(f"{path}: the file ends after {got} of its {out.nbytes} bytes of data (truncated?)")
            return out
        with Npz(path) as z:
            return z.read(key)


def write_array_file(path: str | os.PathLike, array: np.ndarray, key: str) -> Path:
    """Write ``array`` atomically as ``.npy``, or as a compressed ``.npz`` holding it under ``key``
    (what :func:`read_array_file` reads back)."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz path")
    buf = io.BytesIO()
    np.save(buf, array) if path.suffix.lower() == ".npy" else np.savez_compressed(buf, **{key: array})
    return atomic_write_bytes(path, buf.getvalue())


def _class_names(a: np.ndarray, path: Path) -> list[str]:
    if a.dtype.kind not in "US" or a.ndim != 1:
        raise DataError(f"{path}: 'class_names' must be a 1-D array of strings, found {a.dtype} {a.shape}")
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in a.tolist()]


def _load_npz(path: Path, split: str, key: str, kind: str, test_fraction: float, limit: int | None) -> ArrayDataset:
    _check_fraction(path, test_fraction)
    layout = _check_voxel_layout if kind == "voxel" else _check_array_layout
    with Npz(path) as z:
        names = set(z.names)
        if key not in names:
            raise DataError(f"{path}: {kind}-npz needs a {key!r} array; has {sorted(names)}")
        label_keys = [k for k in ("label", "labels") if k in names]
        if len(label_keys) > 1:
            raise DataError(f"{path}: has both 'label' and 'labels' arrays; keep one")
        shape, dtype = z.header(key)
        layout(shape, dtype, f"{path}: array {key!r}")
        for k in label_keys:
            _check_labels_layout(*z.header(k), shape[0], f"{path}: array {k!r}")
        wanted = [key, *label_keys, *(["class_names"] if "class_names" in names else [])]
        arrays = z.read_all(wanted)
    class_names = _class_names(arrays["class_names"], path) if "class_names" in arrays else None
    where = f"{path}: array {key!r}"
    data = _as_voxels(arrays[key], where) if kind == "voxel" else _as_array(arrays[key], where)
    labels = _as_labels(arrays[label_keys[0]], f"{path}: array {label_keys[0]!r}", class_names) if label_keys else None
    idx = _hashed_select(data, split, test_fraction, limit, path)
    meta: dict[str, Any] = {
        "source": str(path), "format": f"{kind}-npz", "kind": kind, "split": split, "files": [str(path)],
        "n_total": len(data), "split_rule": "hash", "test_fraction": float(test_fraction),
    }  # fmt: skip
    if class_names is not None:
        meta["class_names"] = class_names
    return ArrayDataset(data[idx], None if labels is None else labels[idx], meta)


def load_voxel_npz(path: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None) -> ArrayDataset:
    """Occupancy grids ``voxels`` ``(M, X, Y, Z)`` from an ``.npz`` -> uint8 {0, 1}, hashed split (module docstring)."""
    return _load_npz(path, split, "voxels", "voxel", test_fraction, limit)


def load_array_npz(path: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None) -> ArrayDataset:
    """Generic ``data`` ``(M, ...)`` from an ``.npz``, kind "array", hashed split (module docstring)."""
    return _load_npz(path, split, "data", "array", test_fraction, limit)


# ------------------------------------------------------------------------------------------- binvox


def _header_line(f: BinaryIO, path: Path) -> list[str]:
    raw = f.readline(_BINVOX_LINE_MAX)
    if not raw.endswith(b"\n"):
        problem = f"a line longer than {_BINVOX_LINE_MAX} bytes" if len(raw) == _BINVOX_LINE_MAX else "truncated"
        raise DataError(f"{path}: corrupt binvox header ({problem}; it must end with a 'data' line)")
    try:
        return raw.decode("ascii").split()
    except UnicodeDecodeError:
        raise DataError(f"{path}: corrupt binvox header (non-ASCII line {raw[:40]!r})") from None


def _numbers(words: list[str], n: int, key: str, path: Path) -> list[float]:
    try:
        values = [float(w) for w in words]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise DataError(f"{path}: corrupt binvox header: {key!r} needs {n} finite number(s), found {' '.join(words)!r}")
    return values


def _max_rle_bytes(n: int) -> int:
    # at most one pair per voxel, plus the (value, 0) pair binvox_rw writes after each full 255-run
    return 2 * (n + n // 255 + 1)


def _binvox_layout(f: BinaryIO, path: Path) -> tuple[tuple[int, int, int], int]:
    """Parse and check the header: ``(header dims (D0, D1, D2), run-length payload bytes)``."""
    first = _header_line(f, path)
    if first != ["#binvox", "1"]:
        raise DataError(f"{path}: not a binvox file (first line {' '.join(first)!r}, expected '#binvox 1')")
    fields: dict[str, list[str]] = {}
    while (words := _header_line(f, path)) != ["data"]:
        if not words or words[0] not in ("dim", "translate", "scale") or words[0] in fields:
            raise DataError(f"{path}: corrupt binvox header: unexpected line {' '.join(words)!r}")
        fields[words[0]] = words[1:]
    missing = [k for k in ("dim", "translate", "scale") if k not in fields]
    if missing:
        raise DataError(f"{path}: corrupt binvox header: no {' or '.join(missing)} line before 'data'")
    _numbers(fields["translate"], 3, "translate", path)
    _numbers(fields["scale"], 1, "scale", path)
    if len(fields["dim"]) != 3 or not all(w.isdigit() for w in fields["dim"]):
        raise DataError(f"{path}: corrupt binvox header: 'dim' needs 3 integers, found {' '.join(fields['dim'])!r}")
    dims = tuple(int(w) for w in fields["dim"])
    if not all(1 <= d <= BINVOX_MAX_DIM for d in dims):
        raise DataError(f"{path}: binvox dims {' '.join(map(str, dims))} must each be in 1..{BINVOX_MAX_DIM}")
    n = math.prod(dims)
    check_nbytes(n, str(path), f"a binvox grid of dim {' '.join(map(str, dims))}")
    payload = os.fstat(f.fileno()).st_size - f.tell()
    if not 2 * -(-n // 255) <= payload <= _max_rle_bytes(n):
        raise DataError(
            f"{path}: binvox run-length data of {payload} bytes cannot encode the {n} voxels of dim "
            f"{' '.join(map(str, dims))} (needs {2 * -(-n // 255)}..{_max_rle_bytes(n)} bytes); truncated or corrupt"
        )
    return dims, payload  # type: ignore[return-value]


def _open_binvox(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def _binvox_shape(path: Path) -> tuple[int, int, int]:
    """The ``(X, Y, Z)`` shape :func:`read_binvox` returns, from the header alone."""
    with _open_binvox(path) as f:
        (d0, d1, d2), _ = _binvox_layout(f, path)
    return d0, d2, d1


def read_binvox(path: str | os.PathLike) -> np.ndarray:
    """Decode one binvox file into ``(X, Y, Z)`` uint8 occupancy {0, 1}, axes as binvox_rw (module docstring).

    Raises :class:`DataError` naming the file on a corrupt header, dims outside 1..1024, values other
    than 0/1, or run lengths that do not add up to exactly the grid size (checked before allocating it).
    """
    path = Path(path)
    with _open_binvox(path) as f:
        dims, size = _binvox_layout(f, path)
        try:
            raw = np.frombuffer(f.read(size), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if raw.size != size or size % 2:
        raise DataError(f"{path}: binvox run-length data has {raw.size} bytes; expected whole (value, count) pairs")
    values, counts = raw[0::2], raw[1::2]
    n, total = math.prod(dims), int(counts.sum(dtype=np.int64))
    if total != n:
        raise DataError(f"{path}: binvox run lengths add up to {total} voxels, but dim {' '.join(map(str, dims))} "
                        f"needs exactly {n}")  # fmt: skip
    if values.max() > 1:
        raise DataError(f"{path}: binvox voxel values must be 0 or 1, found {int(values.max())}")
    try:
        return np.ascontiguousarray(np.repeat(values, counts).reshape(dims).transpose(0, 2, 1))
    except MemoryError:
        raise DataError(f"{path}: out of memory decoding a binvox grid of dim {' '.join(map(str, dims))}") from None


def write_binvox(voxels: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``(X, Y, Z)`` occupancy (bool or integer 0/1) as a binvox file (atomically; translate 0, scale 1)."""
    path = Path(path)
    a = np.asarray(voxels)
    if a.ndim != 3 or a.dtype.kind not in "biu":
        raise ValueError(f"{path}: binvox needs a 3-D bool or integer occupancy grid, got {a.dtype} {a.shape}")
    if not all(1 <= d <= BINVOX_MAX_DIM for d in a.shape):
        raise ValueError(f"{path}: binvox dims {a.shape} must each be in 1..{BINVOX_MAX_DIM}")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"{path}: binvox voxels must be 0 or 1, found {a.min()}..{a.max()}")
    flat = np.ascontiguousarray(a.transpose(0, 2, 1), dtype=np.uint8).reshape(-1)
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.append(starts, flat.size))
    pairs_per_run = -(-lengths // 255)
    values = np.repeat(flat[starts], pairs_per_run)
    counts = np.full(values.size, 255, dtype=np.int64)
    counts[np.cumsum(pairs_per_run) - 1] = lengths - 255 * (pairs_per_run - 1)
    payload = np.stack([values, counts.astype(np.uint8)], axis=1).tobytes()
    x, y, z = a.shape
    atomic_write_bytes(path, f"#binvox 1\ndim {x} {z} {y}\ntranslate 0 0 0\nscale 1\ndata\n".encode("ascii") + payload)


def load_binvox(path: Path, split: str) -> ArrayDataset:
    """One binvox file as a dataset of one grid ``(1, X, Y, Z)`` uint8; it has no test split."""
    if split == "test":
        raise DataError(f"{path}: a single binvox grid has no test split (use split='train' or 'all')")
    grid = read_binvox(path)
    meta = {"source": str(path), "format": "binvox", "kind": "voxel", "split": split, "files": [str(path)],
            "notes": ["single grid: no test split held out"]}  # fmt: skip
    return ArrayDataset(grid[None], None, meta)


def _place(dirs: tuple[str, ...], f: Path) -> tuple[str | None, str | None]:
    """``(split, class)`` of a file from the folders between the root and it."""
    if not dirs:
        return None, None
    if len(dirs) == 1:
        return (dirs[0], None) if dirs[0] in _SPLIT_DIRS else (None, dirs[0])
    if dirs[0] in _SPLIT_DIRS:
        return dirs[0], dirs[1]
    if dirs[1] in _SPLIT_DIRS:
        return dirs[1], dirs[0]
    raise DataError(f"{f}: two folders deep but neither is 'train' or 'test' (expected [train|test]/<class>/ "
                    "or <class>/[train|test]/)")  # fmt: skip


def _binvox_files(root: Path) -> list[Path]:
    return sorted(
        f for pattern in _BINVOX_PATTERNS for f in root.glob(pattern)
        if not any(p.startswith(".") for p in f.relative_to(root).parts) and f.is_file()
    )  # fmt: skip


def has_binvox(path: Path) -> bool:
    """Does ``path`` hold ``.binvox`` files (at most two folders down)?"""
    return bool(_binvox_files(path))


def _all_or_none(root: Path, files: list[Path], inside: list[bool], what: str) -> None:
    if any(inside) and not all(inside):
        raise DataError(f"{root}: mixes files in {what} ({files[inside.index(True)]}) with files outside them "
                        f"({files[inside.index(False)]})")  # fmt: skip


def _binvox_entries(root: Path, split: str) -> tuple[list[tuple[Path, int]], list[str] | None, bool]:
    """``(file, label)`` pairs of ``split`` (label -1 unlabelled), the class names, and whether folders split."""
    files = _binvox_files(root)
    if not files:
        raise DataError(f"{root}: no .binvox files found")
    places = [_place(f.relative_to(root).parts[:-1], f) for f in files]
    _all_or_none(root, files, [s is not None for s, _ in places], "train/ and test/ sub-folders")
    _all_or_none(root, files, [c is not None for _, c in places], "class sub-folders")
    class_names = sorted({c for _, c in places}) if places[0][1] is not None else None
    index = {c: i for i, c in enumerate(class_names or [])}
    entries = [(f, s, index.get(c, -1)) for f, (s, c) in zip(files, places)]
    by_folder = places[0][0] is not None
    if by_folder:
        order = {s: i for i, s in enumerate(_SPLIT_DIRS)}
        entries = sorted((e for e in entries if split in ("all", e[1])), key=lambda e: (order[e[1]], e[0]))
        if not entries:
            raise DataError(f"{root}: no .binvox files in a '{split}/' sub-folder")
    return [(f, lab) for f, _, lab in entries], class_names, by_folder


def _read_grids(files: list[Path], root: Path, progress: bool) -> np.ndarray:
    """Decode binvox files of one shape into ``(M, X, Y, Z)`` uint8 (headers are checked first)."""
    shapes = [_binvox_shape(f) for f in files]
    if len(set(shapes)) > 1:
        example = {s: f for f, s in reversed(list(zip(files, shapes)))}
        counts = Counter(shapes).items()
        listing = "; ".join(f"{'x'.join(map(str, s))}: {c} file(s), e.g. {example[s]}" for s, c in counts)
        raise DataError(f"{root}: binvox grids of different dims ({listing}); all grids of a dataset must match")
    shape = (len(files), *shapes[0])
    check_nbytes(math.prod(shape), str(root), f"{len(files)} binvox grids of {'x'.join(map(str, shapes[0]))}")
    out = empty_array(shape, np.dtype(np.uint8), str(root))
    it: Any = enumerate(files)
    if progress and len(files) > _PROGRESS_MIN:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(files), desc=f"reading {root.name}", unit="grid", leave=False)
    for i, f in it:
        out[i] = read_binvox(f)
    return out


def load_binvox_folder(
    root: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None, progress: bool = True
) -> ArrayDataset:
    """Every ``.binvox`` grid under ``root`` (layouts and splits: module docstring) -> ``(M, X, Y, Z)`` uint8."""
    _check_fraction(root, test_fraction)
    entries, class_names, by_folder = _binvox_entries(root, split)
    if by_folder:
        entries = entries[:limit]
    data = _read_grids([f for f, _ in entries], root, progress)
    labels = np.array([lab for _, lab in entries], dtype=np.int64) if class_names is not None else None
    idx = np.arange(len(data)) if by_folder else _hashed_select(data, split, test_fraction, limit, root)
    meta: dict[str, Any] = {
        "source": str(root), "format": "binvox-folder", "kind": "voxel", "split": split, "n_files": len(entries),
        "split_rule": "folders" if by_folder else "hash", "test_fraction": float(test_fraction),
    }  # fmt: skip
    if class_names is not None:
        meta["class_names"] = class_names
    if by_folder:
        return ArrayDataset(data, labels, meta)
    return ArrayDataset(data[idx], None if labels is None else labels[idx], meta)
