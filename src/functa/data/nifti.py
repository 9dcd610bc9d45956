"""3-D scalar volumes (MRI, CT) from NIfTI-1/2 (``.nii``, ``.nii.gz``) and FreeSurfer ``.mgz`` files, via nibabel.

Formats (``meta["format"]``), all giving ``meta["kind"] = "volume"``:

* ``nifti``         one ``.nii`` / ``.nii.gz`` / ``.mgz`` file: a dataset of one volume (no test split).
* ``nifti-folder``  a directory of such files (sorted by name; all of one shape), tail split as for grids.
* ``volume-npz``    ``.npz`` with ``volumes`` ``(M, X, Y, Z)`` numeric (optional ``voxel_mm`` ``(M, 3)`` or
  ``original_voxel_mm``), hashed split as for ``array-npz`` (:mod:`.arrays`).

Volumes come back as ``(M, X, Y, Z)`` float32 in the file's intensity units (NIfTI ``scl_slope`` /
``scl_inter`` applied), array axes as stored (no reorientation). ``meta["spacing"]`` is the voxel size
(header zooms, mm) and ``meta["affine"]`` the 4x4 voxel-to-world matrix of the first volume.

Bounds (:mod:`.safeio`): the header is read first (nibabel reads no data at load); the declared shape x
dtype must fit the array limit, a gzip stream must be able to hold it (deflate ratio) and an uncompressed
file must be long enough, before any data is read. A corrupt header, a volume that is not 3-D (a 4-D
series needs an explicit ``time_index``; a trailing axis of length 1 is dropped), NaN or infinite values
are refused with a :class:`~functa.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .dataset import ArrayDataset
from .grid import split_range
from .safeio import check_deflate, check_nbytes

__all__ = ["NIFTI_SUFFIXES", "is_nifti_path", "has_nifti", "read_nifti", "load_nifti", "load_nifti_folder",
           "parse_time_index"]

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".mgz")


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def _nifti_files(root: Path) -> list[Path]:
    return sorted(f for f in root.iterdir() if is_nifti_path(f) and f.is_file() and not f.name.startswith("."))


def has_nifti(path: Path) -> bool:
    """Does the directory ``path`` hold NIfTI / mgz files directly?"""
    return path.is_dir() and bool(_nifti_files(path))


def parse_time_index(variable: str | int | None) -> int | None:
    """The 4-D series index a ``data.variable`` selects for NIfTI data: ``"t=3"``, ``"3"`` or ``None``."""
    if variable is None or isinstance(variable, int):
        return variable
    text = str(variable).strip()
    if text.lower().startswith("t="):
        text = text[2:]
    try:
        return int(text)
    except ValueError:
        raise DataError(f"data.variable = {variable!r}: for NIfTI series give the time index, e.g. 't=0'") from None


def read_nifti(path: str | os.PathLike, time_index: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One volume ``(X, Y, Z)`` float32 and ``{"spacing": [3 floats], "affine": 4x4 list}`` (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    import nibabel as nib

    try:
        img = nib.load(str(path), mmap=False)
        shape = tuple(int(s) for s in img.header.get_data_shape())
        dtype = np.dtype(img.header.get_data_dtype())
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        affine = np.asarray(img.affine, np.float64)
    except MemoryError:
        raise DataError(f"{path}: corrupt NIfTI header (declares too much)") from None
    except Exception as e:  # nibabel raises many kinds on corrupt headers
        raise DataError(f"{path}: cannot read as NIfTI/MGH ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if any(s < 1 for s in shape):
        raise DataError(f"{path}: corrupt NIfTI header: empty or negative shape {shape}")
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        if time_index is None:
            raise DataError(f"{path}: a 4-D series of {shape[3]} volumes {shape[:3]}; choose one with a time index "
                            f"(--set data.variable=t=0, or modality.time_index for single files)")
        if not -shape[3] <= time_index < shape[3]:
            raise DataError(f"{path}: time index {time_index} is outside the series of {shape[3]} volumes")
    elif len(shape) != 3:
        raise DataError(f"{path}: a volume must be 3-D (X, Y, Z), found shape {shape}")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: unsupported voxel dtype {dtype}")
    declared = math.prod(shape) * dtype.itemsize
    check_nbytes(max(declared, math.prod(shape[:3]) * 4), str(path), f"a {dtype} {shape} volume")
    size = path.stat().st_size
    if path.name.lower().endswith((".gz", ".mgz")):
        check_deflate(declared, size, str(path), f"a {dtype} {shape} volume")
    else:
        offset = int(getattr(img.header, "get_data_offset", lambda: 0)())
        if size < offset + declared:
            raise DataError(f"{path}: truncated NIfTI file: header declares {dtype} {shape} ({offset + declared} "
                            f"bytes), file has {size}")
    try:
        proxy = img.dataobj
        data = proxy[..., int(time_index)] if len(shape) == 4 else np.asanyarray(proxy)
        data = np.asarray(data, dtype=np.float32).reshape(shape[:3])
    except MemoryError:
        raise DataError(f"{path}: out of memory while reading the volume") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read the volume data ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: volume has {bad} non-finite value(s) (NaN/inf) out of {data.size}")
    if not all(math.isfinite(z) and z > 0 for z in zooms) or not np.isfinite(affine).all():
        zooms, affine = [1.0, 1.0, 1.0], np.eye(4)
    return np.ascontiguousarray(data), {"spacing": zooms, "affine": affine.tolist()}


def _dataset(volumes: np.ndarray, infos: list[dict], files: list[Path], fmt: str, source: Path, split: str,
             test_fraction: float, limit: int | None) -> ArrayDataset:
    start, stop = split_range(len(volumes), split, test_fraction, source)
    if limit is not None:
        stop = min(stop, start + limit)
    meta: dict[str, Any] = {"source": str(source), "format": fmt, "kind": "volume", "split": split,
                            "files": [str(f) for f in files[start:stop]], "n_total": len(volumes),
                            "item_range": [start, stop], "split_rule": "tail", "test_fraction": float(test_fraction),
                            "spacing": infos[start]["spacing"], "affine": infos[start]["affine"]}
    return ArrayDataset(volumes[start:stop], None, meta)


def load_nifti(path: Path, split: str, *, time_index: int | None = None, test_fraction: float = 0.1,
               limit: int | None = None) -> ArrayDataset:
    """One NIfTI / mgz file as a dataset of one volume ``(1, X, Y, Z)`` float32; it has no test split."""
    if split == "test":
        raise DataError(f"{path}: a single volume has no test split (use split='train' or 'all')")
    vol, info = read_nifti(path, time_index)
    return _dataset(vol[None], [info], [path], "nifti", path, split, test_fraction, limit)


def nifti_split_files(root: Path, split: str, test_fraction: float = 0.1) -> list[Path]:
    """The files of ``split`` of a NIfTI folder (the tail split of :func:`load_nifti_folder`), of any shapes."""
    files = _nifti_files(root)
    if not files:
        raise DataError(f"{root}: no .nii, .nii.gz or .mgz files")
    start, stop = split_range(len(files), split, test_fraction, root)
    return files[start:stop]


def load_nifti_folder(root: Path, split: str, *, time_index: int | None = None, test_fraction: float = 0.1,
                      limit: int | None = None) -> ArrayDataset:
    """A directory of NIfTI / mgz volumes of one shape -> ``(M, X, Y, Z)`` float32, tail split."""
    files = _nifti_files(root)
    if not files:
        raise DataError(f"{root}: no .nii, .nii.gz or .mgz files")
    vols, infos = [], []
    total = 0
    for f in files:
        v, info = read_nifti(f, time_index)
        if vols and v.shape != vols[0].shape:
            raise DataError(f"{f}: volume of shape {v.shape}, but {files[0].name} has {vols[0].shape}; all volumes "
                            "of a folder need one shape (resample them, or pass files one at a time)")
        total += v.nbytes
        check_nbytes(total, str(root), f"{len(vols) + 1} volumes")
        vols.append(v)
        infos.append(info)
    return _dataset(np.stack(vols), infos, files, "nifti-folder", root, split, test_fraction, limit)


def load_volume_npz(path: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None) -> ArrayDataset:
    """``volumes`` ``(M, X, Y, Z)`` (any numeric dtype, finite) from an ``.npz`` -> kind "volume", hashed split
    (the bounded ``.npz`` reader of :mod:`.arrays`); spacing 1 mm and an identity affine (the layout has none)."""
    from .arrays import _load_npz

    ds = _load_npz(path, split, "volumes", "array", test_fraction, limit)
    if ds.data.ndim != 4:
        raise DataError(f"{path}: array 'volumes' must be (M, X, Y, Z), found shape {ds.data.shape}")
    ds.meta.update({"format": "volume-npz", "kind": "volume", "spacing": [1.0, 1.0, 1.0],
                    "affine": np.eye(4).tolist()})
    return ds
