"""CIFAR-10 in three layouts.

* ``cifar-npz`` lossless: one ``.npz`` with ``x_train`` ``(N, 32, 32, 3)`` uint8, ``y_train`` ``(N,)``,
  ``x_test``, ``y_test``, ``class_names`` ``(10,)`` str.
* ``cifar-npz`` JPEG: one ``.npz`` per split with ``jpeg_bytes`` ``(total,)`` uint8, ``offsets`` ``(N+1,)``
  int64 (image ``i`` is ``jpeg_bytes[offsets[i]:offsets[i+1]]``), ``y`` ``(N,)``, ``class_names``.
* ``cifar-python``: the official ``cifar-10-batches-py`` pickles (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``), each a dict with ``b"data"`` ``(n, 3072)`` uint8 (CHW planes) and ``b"labels"``.
  They are read with a restricted unpickler that can only rebuild numpy arrays, lists and bytes.

All loaders return images ``(M, 32, 32, 3)`` uint8 (HWC, RGB) and labels ``(M,)`` int64.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .dataset import ArrayDataset, DataError, concat_datasets

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
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: cannot open as .npz archive ({e})") from e


def _npz_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {sorted(z.files)})")
            return {n: z[n] for n in names}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise DataError(f"{path}: cannot read .npz archive ({e})") from e


def _class_names(path: Path) -> list[str] | None:
    if "class_names" not in npz_keys(path):
        return None
    names = _npz_arrays(path, ["class_names"])["class_names"]
    return [str(s) for s in names.reshape(-1).tolist()]


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
    """Decode ``len(offsets) - 1`` JPEGs into ``(N, H, W, 3)`` uint8 (a per-image loop: PIL decodes one at a time)."""
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
        try:
            with Image.open(io.BytesIO(chunk)) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises many exception types for corrupt data
            raise DataError(f"{path}: cannot decode JPEG #{i} ({type(e).__name__}: {e})") from e
        if out is None:
            out = np.empty((n, *arr.shape), dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise DataError(f"{path}: JPEG #{i} has shape {arr.shape}, expected {out.shape[1:]}")
        out[i] = arr
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

# (module, name) pairs needed to rebuild a plain dict of numpy arrays / lists / bytes.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python-2 str payloads
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``; anything else is a DataError."""

    def __init__(self, file: Any, *, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from {self._source}")


def restricted_unpickle(path: Path) -> Any:
    """Read one pickle file allowing only numpy arrays, dtypes, lists, dicts, bytes, str and numbers."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, source=str(path), encoding="bytes").load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except Exception as e:  # truncated / malformed pickles raise a variety of errors
        raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from e


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


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64."""
    d = restricted_unpickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict batch, found {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: batch dict lacks 'data' or 'labels' (keys: {sorted(map(str, d))})")
    data = np.asarray(data)
    labels = np.asarray(labels).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 (n, 3072), found {data.dtype} {data.shape}")
    if labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {data.shape[0]} images but labels {labels.dtype} {labels.shape}")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


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
        names = _get(m, "label_names") if isinstance(m, dict) else None
        if names is not None:
            meta["class_names"] = [s.decode() if isinstance(s, bytes) else str(s) for s in names]
    return ArrayDataset(x, y, meta)
