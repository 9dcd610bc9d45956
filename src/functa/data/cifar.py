"""CIFAR-10 in three layouts.

* ``cifar-npz`` lossless: one ``.npz`` with ``x_train`` ``(N, 32, 32, 3)`` uint8, ``y_train`` ``(N,)``,
  ``x_test``, ``y_test``, ``class_names`` ``(10,)`` str.
* ``cifar-npz`` JPEG: one ``.npz`` per split with ``jpeg_bytes`` ``(total,)`` uint8, ``offsets`` ``(N+1,)``
  int64 (image ``i`` is ``jpeg_bytes[offsets[i]:offsets[i+1]]``), ``y`` ``(N,)``, ``class_names``.
* ``cifar-python``: the official ``cifar-10-batches-py`` pickles (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``), each a dict with ``b"data"`` ``(n, 3072)`` uint8 (CHW planes) and ``b"labels"``.
  They are read with a restricted unpickler that can only rebuild a dict of numeric numpy arrays, flat lists,
  bytes, strings and numbers, in time and memory linear in the file's size (nested or shared lists, sets,
  objects and any other global are refused).

Every array is checked against its declared size and the array limit before it is decoded
(:mod:`functa.data.safeio`); JPEG sizes are read from their headers first.

All loaders return images ``(M, 32, 32, 3)`` uint8 (HWC, RGB) and labels ``(M,)`` int64.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import ArrayDataset, DataError, concat_datasets
from .folder import decode_image, open_image
from .safeio import Npz, check_nbytes, empty_array

__all__ = [
    "LOSSLESS_KEYS",
    "JPEG_KEYS",
    "npz_keys",
    "find_cifar_npz",
    "load_cifar_npz",
    "is_cifar_python_dir",
    "load_cifar_python",
    "restricted_unpickle",
]

LOSSLESS_KEYS = frozenset({"x_train", "y_train", "x_test", "y_test"})
JPEG_KEYS = frozenset({"jpeg_bytes", "offsets", "y"})
_PROGRESS_MIN = 1000


# --------------------------------------------------------------------------------------------- npz


def npz_keys(path: Path) -> list[str]:
    """Array names stored in an ``.npz`` archive (raises :class:`DataError` if it is not a valid archive)."""
    with Npz(path) as z:
        return list(z.names)


def _npz_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz``, each checked against its zip sizes and the array limit before decoding."""
    with Npz(path) as z:
        return z.read_all(names)


def _class_names(path: Path) -> list[str] | None:
    with Npz(path) as z:
        if "class_names" not in z:
            return None
        shape, dtype = z.header("class_names")
        if dtype.kind not in "US" or len(shape) > 1 or math.prod(shape) > _MAX_CLASSES:
            raise DataError(f"{path}: 'class_names' must be a 1-D array of at most {_MAX_CLASSES} strings, "
                            f"found {dtype} {shape}")  # fmt: skip
        names = z.read("class_names")
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in names.reshape(-1).tolist()]


def _check_images(x: np.ndarray, y: np.ndarray, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{path}: {what} images must be uint8 (N, H, W, C), found {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: {what} has {x.shape[0]} images but labels of shape {y.shape}")
    return x, y.astype(np.int64)


def find_cifar_npz(directory: Path, split: str) -> Path | None:
    """The CIFAR npz to use in ``directory``: the lossless archive if any, else the JPEG one for ``split``."""
    keys: dict[Path, set[str]] = {}
    for f in sorted(directory.glob("*.npz")):
        try:
            keys[f] = set(npz_keys(f))
        except DataError:
            continue  # unreadable archives are reported only when loaded directly
    lossless = [f for f, k in keys.items() if LOSSLESS_KEYS <= k]
    if lossless:
        preferred = [f for f in lossless if f.name == "cifar10_lossless_subset.npz"]
        return (preferred or lossless)[0]
    jpeg = [f for f, k in keys.items() if JPEG_KEYS <= k]
    for f in jpeg:
        if re.search(rf"(^|[_\-.]){split}([_\-.]|$)", f.stem):
            return f
    return None


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray, path: Path, progress: bool = True) -> np.ndarray:
    """Decode ``len(offsets) - 1`` JPEGs into ``(N, H, W, 3)`` uint8 (a per-image loop: PIL decodes one at a time).

    Each image's size is read from its header and checked before it is decoded: the same size as the first,
    within the pixel limit (:func:`~functa.data.folder.open_image`), the stacked array within the array limit."""
    n = len(offsets) - 1
    if n < 0 or np.any(np.diff(offsets) <= 0) or offsets[0] < 0 or offsets[-1] > buf.size:
        raise DataError(f"{path}: 'offsets' must increase strictly within 0..{buf.size} (len(jpeg_bytes))")
    it: Any = range(n)
    if progress and n > _PROGRESS_MIN:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"decoding {path.name}", unit="img", leave=False)
    out: np.ndarray | None = None
    for i in it:
        chunk = buf[offsets[i] : offsets[i + 1]].tobytes()
        where = f"{path}: JPEG #{i}"
        with open_image(io.BytesIO(chunk), where) as im:
            shape = (im.size[1], im.size[0], 3)
            if out is None:
                check_nbytes(n * math.prod(shape), str(path), f"{n} decoded {shape[1]}x{shape[0]} RGB images")
                out = empty_array((n, *shape), np.dtype(np.uint8), str(path))
            elif shape != out.shape[1:]:
                raise DataError(f"{path}: JPEG #{i} has shape {shape}, expected {out.shape[1:]}")
            out[i] = decode_image(im, "RGB", where)
    return out if out is not None else np.zeros((0, 32, 32, 3), np.uint8)


def _split_from_name(name: str) -> str | None:
    for s in ("train", "test"):
        if re.search(rf"(^|[_\-.]){s}([_\-.]|$)", name):
            return s
    return None


def load_cifar_npz(path: Path, split: str | None, limit: int | None = None, progress: bool = True) -> ArrayDataset:
    """Load a CIFAR ``.npz`` file (lossless or JPEG layout) or a directory holding such files.

    ``split`` in {"train", "test", "all"} selects arrays of the lossless file; a JPEG file holds one split
    (named in the file name): asking it for the other split raises :class:`DataError` (no silent
    substitution), ``"all"`` returns what it holds. ``split=None``: the JPEG file's own split, else "train".
    """
    source = path
    if split is None and (path.is_dir() or LOSSLESS_KEYS <= set(npz_keys(path))):
        split = "train"
    if path.is_dir():
        found = find_cifar_npz(path, "test" if split == "test" else "train")
        if found is None:
            raise DataError(f"{path}: no CIFAR .npz (lossless x_train/x_test or JPEG for split {split!r}) found")
        if split == "all" and not (LOSSLESS_KEYS <= set(npz_keys(found))):
            parts = [load_cifar_npz(path, s) for s in ("train", "test")]
            ds = concat_datasets(parts, {**parts[0].meta, "source": str(path), "split": "all",
                                         "files": parts[0].meta["files"] + parts[1].meta["files"]})
            return ds.subset(slice(0, limit)) if limit is not None else ds
        path = found
    keys = set(npz_keys(path))
    class_names = _class_names(path)
    meta: dict[str, Any] = {"source": str(source), "format": "cifar-npz", "kind": "image", "files": [str(path)]}
    if class_names is not None:
        meta["class_names"] = class_names

    if LOSSLESS_KEYS <= keys:
        splits = ("train", "test") if split == "all" else (split,)
        xs, ys = [], []
        for s in splits:
            a = _npz_arrays(path, [f"x_{s}", f"y_{s}"])
            x, y = _check_images(a[f"x_{s}"], a[f"y_{s}"], path, s)
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if limit is not None:
            x, y = x[:limit].copy(), y[:limit].copy()
        meta.update(split=split, layout="lossless")
        return ArrayDataset(x, y, meta)

    if JPEG_KEYS <= keys:
        a = _npz_arrays(path, ["jpeg_bytes", "offsets", "y"])
        buf, offsets, y = a["jpeg_bytes"].reshape(-1), a["offsets"].astype(np.int64).reshape(-1), a["y"].reshape(-1)
        if buf.dtype != np.uint8:
            raise DataError(f"{path}: 'jpeg_bytes' must be uint8, found {buf.dtype}")
        if len(offsets) != len(y) + 1:
            raise DataError(f"{path}: 'offsets' has {len(offsets)} entries, expected len(y)+1 = {len(y) + 1}")
        file_split = _split_from_name(path.stem)
        if split in ("train", "test") and file_split not in (None, split):
            raise DataError(f"{path}: this JPEG archive holds the {file_split!r} split, not {split!r}; point at a "
                            f"directory holding both archives (or the lossless one) to get both splits")
        n = len(y) if limit is None else min(limit, len(y))
        x = _decode_jpegs(buf, offsets[: n + 1], path, progress)
        meta.update(split=file_split, layout="jpeg")
        return ArrayDataset(x, y[:n].astype(np.int64), meta)

    raise DataError(
        f"{path}: .npz is not a CIFAR archive "
        f"(needs {sorted(LOSSLESS_KEYS)} or {sorted(JPEG_KEYS)}; has {sorted(keys)})"
    )


# ------------------------------------------------------------------------------------------ python

# The official batches are protocol-2 pickles of a dict of a numpy array, lists and bytes. They are read
# with a restricted pure-Python unpickler: only the opcodes such pickles use (no sets, no persistent ids, no
# extension codes, no out-of-band buffers), at most _MAX_PICKLE_OPS opcodes, dict keys that are strings,
# memo indices below 2**32, and only the globals below -- each replaced by a checking stand-in -- so that
# unpickling takes time and memory linear in the file's size. The result must then be a dict of numeric
# arrays (backed by bytes of the file), flat lists of numbers or strings, strings and numbers (checked
# without recursion, before anything is converted).

_MAX_PICKLE_OPS = 1 << 22  # a CIFAR-100 training batch has ~0.3M
_MAX_DICT_KEYS = 1024
_MAX_MEMO_INDEX = 1 << 32
_MAX_CLASSES = 1 << 16
_SCALARS = (int, float, bool, str, bytes, type(None))
_PICKLE_OPCODES = frozenset(
    getattr(pickle, name)[0]
    for name in (
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
        "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    )
)  # fmt: skip


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` accepts it (it cannot be called)."""


def _pickle_error(message: str) -> DataError:
    return DataError(message)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain arrays: an empty array that ``BUILD`` then fills from the pickle's bytes."""
    if subtype is not _NdarrayType or not isinstance(shape, tuple) or len(shape) > 32 or \
            not all(type(d) is int for d in shape) or math.prod(shape) > 1:  # fmt: skip
        raise _pickle_error("numpy _reconstruct with unexpected arguments (only plain arrays are allowed)")
    return np.empty(0, np.int8)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5): a numeric array over bytes of the pickle itself."""
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or order not in ("C", "F") \
            or not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):  # fmt: skip
        raise _pickle_error("numpy _frombuffer with unexpected arguments")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise _pickle_error(f"numpy _frombuffer: {len(buf)} bytes for {dtype} {shape}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` for plain numeric types only (a fresh copy, so ``BUILD`` cannot alter numpy's own)."""
    if not isinstance(obj, str) or len(obj) > 8:
        raise _pickle_error(f"numpy dtype {obj!r:.40} is not a plain numeric type")
    try:
        d = np.dtype(obj)
    except (TypeError, ValueError) as e:
        raise _pickle_error(f"numpy dtype {obj!r}: {e}") from None
    if d.kind not in "biuf" or d.fields is not None or d.subdtype is not None:
        raise _pickle_error(f"numpy dtype {obj!r} is not a plain numeric type (bool, integer or float)")
    return np.dtype(obj, bool(align), True)


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "latin_1"):
        raise _pickle_error(f"_codecs.encode with unexpected arguments (encoding {encoding!r:.20})")
    return text.encode("latin-1")


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _frombuffer for m in _NUMERIC},  # protocol-5 pickles of arrays
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,  # bytes in protocol-2 pickles
}


def _setstate_array(inst: np.ndarray, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _pickle_error("ndarray state of unexpected form")
    shape, dtype, fortran, raw = state[-4:]
    good_shape = isinstance(shape, tuple) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)
    if not good_shape or not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" \
            or not isinstance(raw, (bytes, bytearray)):  # fmt: skip
        raise _pickle_error("ndarray state of unexpected form (only numeric arrays stored as bytes are allowed)")
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise _pickle_error(f"ndarray state: {len(raw)} bytes of data for {dtype} {shape}")
    inst.__setstate__((shape, dtype, bool(fortran), raw))


def _setstate_dtype(inst: np.dtype, state: Any) -> None:
    # (version, byte order, subarray, names, fields, element size, alignment, flags) of a plain type
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in "<>|="
            and state[2:5] == (None, None, None) and state[5:8] == (-1, -1, 0)
            and (len(state) == 8 or state[8] is None)):  # fmt: skip
        raise _pickle_error("numpy dtype state of unexpected form (only plain numeric types are allowed)")
    inst.__setstate__(state[:8])


def _check_key(key: Any) -> None:
    if type(key) not in (str, bytes) or len(key) > 256:
        raise _pickle_error(f"dict key of type {type(key).__name__} (only short strings are allowed)")


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, whose opcodes can be restricted
    """Unpickler for plain dicts of numpy arrays, lists, bytes, strings and numbers (see the comment above).

    Globals other than those in ``_ALLOWED_GLOBALS`` raise :class:`DataError` ("refusing to unpickle ...")."""

    dispatch: dict[int, Any] = {}

    def __init__(self, file: Any, *, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source
        self._ops = 0

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self._source}")
        return found

    def _count(self) -> None:
        if self._ops > _MAX_PICKLE_OPS:
            raise _pickle_error(f"more than {_MAX_PICKLE_OPS} pickle opcodes (a CIFAR batch needs far fewer)")

    def _memo_index(self, i: int) -> int:
        if not 0 <= i < _MAX_MEMO_INDEX:
            raise _pickle_error(f"memo index {i} out of range")
        return i

    def load_put(self) -> None:
        self.memo[self._memo_index(int(self.readline()[:-1]))] = self.stack[-1]

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: dict = {}
        self._set_items(d, items)
        self.append(d)

    def _set_items(self, d: Any, items: list) -> None:
        if type(d) is not dict or len(d) + len(items) // 2 > _MAX_DICT_KEYS:
            raise _pickle_error(f"SETITEM on a {type(d).__name__}, or a dict of more than {_MAX_DICT_KEYS} keys")
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
            d[items[i]] = items[i + 1]

    def load_append(self) -> None:
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise _pickle_error(f"APPEND to a {type(self.stack[-1]).__name__}")
        self.stack[-1].append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise _pickle_error(f"APPENDS to a {type(self.stack[-1]).__name__}")
        self.stack[-1].extend(items)

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)  # from memory: never more than the pickle holds
        if len(data) != n:
            raise _pickle_error(f"BYTEARRAY8 of {n} bytes, more than the pickle holds")
        self.append(bytearray(data))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _setstate_array(inst, state)
        elif isinstance(inst, np.dtype):
            _setstate_dtype(inst, state)
        else:
            raise _pickle_error(f"BUILD of a {type(inst).__name__} (only numpy arrays and dtypes are rebuilt)")


def _counted(fn: Any) -> Any:
    def counted(self: _RestrictedUnpickler) -> None:
        self._ops += 1
        if self._ops > _MAX_PICKLE_OPS:
            self._count()  # raises
        fn(self)

    return counted


def _refused(op: int) -> Any:
    def refuse(self: _RestrictedUnpickler) -> None:
        raise _pickle_error(f"pickle opcode {bytes([op])!r} is not allowed in a CIFAR batch")

    return refuse


_OVERRIDES = {pickle.PUT[0]: "load_put", pickle.SETITEM[0]: "load_setitem", pickle.SETITEMS[0]: "load_setitems",
              pickle.DICT[0]: "load_dict", pickle.APPEND[0]: "load_append", pickle.APPENDS[0]: "load_appends",
              pickle.BYTEARRAY8[0]: "load_bytearray8", pickle.BUILD[0]: "load_build"}  # fmt: skip
_RestrictedUnpickler.dispatch = {
    op: _counted(getattr(_RestrictedUnpickler, _OVERRIDES[op]) if op in _OVERRIDES else fn)
    if op in _PICKLE_OPCODES else _refused(op)
    for op, fn in pickle._Unpickler.dispatch.items()
}


def _check_value(value: Any, where: str, budget: int) -> None:
    """A batch value: a scalar, a numeric array of at most ``budget`` bytes, or a flat list of scalars."""
    if type(value) in _SCALARS or type(value) is bytearray:
        return
    if type(value) is np.ndarray:
        if value.dtype.kind not in "biuf" or value.nbytes > budget:
            raise DataError(f"{where}: array {value.dtype} {value.shape} is not numeric data held in the file")
        return
    if type(value) is list:
        if not all(type(x) in _SCALARS for x in value):
            bad = next(x for x in value if type(x) not in _SCALARS)
            raise DataError(f"{where}: a list holding a {type(bad).__name__} (only flat lists of numbers or strings "
                            "are allowed)")  # fmt: skip
        return
    raise DataError(f"{where}: unexpected {type(value).__name__} (a CIFAR batch holds arrays, flat lists, strings "
                    "and numbers)")  # fmt: skip


def restricted_unpickle(path: Path) -> dict:
    """Read one CIFAR python pickle: a dict of numeric numpy arrays, flat lists, bytes, str and numbers.

    The file is read whole (its size within the array limit) and unpickled by a restricted unpickler
    (comment above): time and memory stay linear in its size, and anything else -- other globals, nested
    or shared lists, sets, objects -- is a :class:`DataError` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_nbytes(size, str(path), "a pickle file")
            raw = f.read(size + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if len(raw) > size:
        raise DataError(f"{path}: the file grew while it was read")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), source=str(path), encoding="bytes").load()
    except DataError as e:
        if str(path) in str(e):
            raise
        raise DataError(f"{path}: refused pickle ({e})") from None
    except MemoryError:
        raise DataError(f"{path}: corrupt pickle (out of memory)") from None
    except Exception as e:  # truncated / malformed pickles raise a variety of errors
        raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict batch, found {type(obj).__name__}")
    for key, value in obj.items():
        _check_value(value, f"{path}: {key!r:.60}", len(raw))
    return obj


def _get(d: dict, key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


def _batch_dir(path: Path) -> Path:
    sub = path / "cifar-10-batches-py"
    return sub if sub.is_dir() else path


def is_cifar_python_dir(path: Path) -> bool:
    """Is ``path`` (or its ``cifar-10-batches-py`` sub-directory) a directory of CIFAR python batches?"""
    d = _batch_dir(path)
    return (d / "data_batch_1").is_file() or (d / "test_batch").is_file()


def _as_int_array(value: Any, path: Path, key: str) -> np.ndarray:
    """A flat list of ints or an integer array -> int64 ``(n,)`` / as is (checked, no silent float truncation)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biu":
            raise DataError(f"{path}: {key!r} must hold integers, found {value.dtype}")
        return value.astype(np.int64)
    if isinstance(value, list) and all(type(x) is int for x in value):
        try:
            return np.array(value, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{path}: {key!r} holds integers outside the int64 range") from None
    raise DataError(f"{path}: {key!r} must be a flat list of integers or an integer array, found "
                    f"{type(value).__name__}")  # fmt: skip


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64."""
    d = restricted_unpickle(path)
    data, labels = _get(d, "data"), _get(d, "labels")
    if labels is None:
        labels = _get(d, "fine_labels")  # CIFAR-100
    if data is None or labels is None:
        raise DataError(f"{path}: batch dict lacks 'data' or 'labels' (keys: {sorted(map(repr, d))})")
    if isinstance(data, (bytes, bytearray)) and len(data) % 3072 == 0:
        data = np.frombuffer(data, np.uint8).reshape(-1, 3072)
    elif isinstance(data, list):
        flat = _as_int_array(data, path, "data")
        if flat.size % 3072 or (flat.size and (flat.min() < 0 or flat.max() > 255)):
            raise DataError(f"{path}: 'data' list of {flat.size} values is not (n, 3072) pixels in 0..255")
        data = flat.astype(np.uint8).reshape(-1, 3072)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be uint8 (n, 3072), found {found}")
    labels = _as_int_array(labels, path, "labels").reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def load_cifar_python(path: Path, split: str, limit: int | None = None) -> ArrayDataset:
    """Load official CIFAR-10 python batches: a ``cifar-10-batches-py`` directory (or its parent) or one batch file.

    ``split``: "train" -> ``data_batch_*`` (numeric order), "test" -> ``test_batch``, "all" -> both.
    """
    if path.is_file():
        files = [path]
        directory = path.parent
        split_name: str | None = None
        if path.name.startswith("test"):
            split_name = "test"
        elif "data_batch" in path.name:
            split_name = "train"
    else:
        directory = _batch_dir(path)
        train = sorted(directory.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
        test = [directory / "test_batch"] if (directory / "test_batch").is_file() else []
        files = {"train": train, "test": test, "all": train + test}[split]
        if not files:
            raise DataError(f"{directory}: no CIFAR python batch files for split {split!r}")
        split_name = split
    xs, ys, used, n = [], [], [], 0
    for f in files:
        if limit is not None and n >= limit:
            break
        x, y = _read_batch(f)
        xs.append(x)
        ys.append(y)
        used.append(str(f))
        n += len(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit is not None:
        x, y = x[:limit].copy(), y[:limit].copy()
    meta: dict[str, Any] = {
        "source": str(path),
        "format": "cifar-python",
        "kind": "image",
        "split": split_name,
        "files": used,
    }
    meta_file = directory / "batches.meta"
    if meta_file.is_file():
        m = restricted_unpickle(meta_file)
        names = _get(m, "label_names")
        if isinstance(names, list):
            meta["class_names"] = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in names]
    return ArrayDataset(x, y, meta)
