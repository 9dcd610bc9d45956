"""Dataset loading: sniff a path's format and return an in-memory :class:`ArrayDataset`.

Supported formats (``meta["format"]``):

* ``idx``           MNIST / Fashion-MNIST idx files (raw or ``.gz``): a directory or one images file
* ``cifar-npz``     CIFAR-10 ``.npz`` (lossless ``x_train``/``x_test`` or JPEG ``jpeg_bytes``/``offsets``)
* ``cifar-python``  official ``cifar-10-batches-py`` pickles (read with a restricted unpickler)
* ``image-folder``  a directory of PNG/JPEG files, optional ``train/``/``test/`` and class sub-folders
* ``grid-npz``      ``.npz`` with ``lat`` ``(H,)``, ``lon`` ``(W,)`` and a float field ``(..., H, W)``
* ``netcdf``        NetCDF3 classic ``.nc`` with the same lat/lon/variable layout

Images come back as ``(M, H, W, C)`` uint8 with ``C`` in {1, 3}; fields as ``(M, H, W)`` float32.
"""

from __future__ import annotations

from pathlib import Path

from .cifar import (
    JPEG_KEYS,
    LOSSLESS_KEYS,
    find_cifar_npz,
    is_cifar_python_dir,
    load_cifar_npz,
    load_cifar_python,
    npz_keys,
)
from .dataset import ArrayDataset, DataError
from .folder import MixedSizesError, has_images, load_image_folder, load_image_list
from .grid import is_grid_npz, load_grid_npz, load_netcdf, netcdf_kind
from .idx import find_idx_pair, is_idx_file, load_idx, read_idx

__all__ = ["ArrayDataset", "DataError", "MixedSizesError", "load_dataset", "load_image_list", "read_idx",
           "SUPPORTED_FORMATS", "sniff_format"]

SUPPORTED_FORMATS = (
    "idx (MNIST/Fashion-MNIST directory or idx[.gz] file), "
    "cifar-npz (CIFAR-10 lossless or JPEG .npz, file or directory), "
    "cifar-python (cifar-10-batches-py directory), "
    "image-folder (directory of PNG/JPEG, optional train/test and class sub-folders), "
    "grid-npz (.npz with lat, lon and a (..., H, W) float field), "
    "netcdf (NetCDF3 classic .nc)"
)
_SPLITS = ("train", "test", "all")
_NETCDF_SUFFIXES = (".nc", ".nc3", ".nc4", ".cdf", ".netcdf")


def _npz_kind(path: Path) -> str:
    keys = set(npz_keys(path))
    if LOSSLESS_KEYS <= keys or JPEG_KEYS <= keys:
        return "cifar-npz"
    if is_grid_npz(sorted(keys)):
        return "grid-npz"
    raise DataError(
        f"{path}: unrecognised .npz layout (arrays: {sorted(keys)}); supported formats: {SUPPORTED_FORMATS}"
    )


def sniff_format(path: str | Path) -> str:
    """The ``meta["format"]`` that :func:`load_dataset` would use for ``path`` (raises :class:`DataError`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; supported formats: {SUPPORTED_FORMATS}")
    if p.is_dir():
        if any(find_idx_pair(p, s)[0] is not None for s in ("train", "test")):
            return "idx"
        if is_cifar_python_dir(p):
            return "cifar-python"
        if find_cifar_npz(p, "train") is not None or find_cifar_npz(p, "test") is not None:
            return "cifar-npz"
        if has_images(p):
            return "image-folder"
        raise DataError(f"{p}: directory holds no recognised dataset; supported formats: {SUPPORTED_FORMATS}")
    if netcdf_kind(p) is not None:
        return "netcdf"
    if p.suffix.lower() in _NETCDF_SUFFIXES:
        raise DataError(f"{p}: has a NetCDF suffix but no NetCDF ('CDF') or HDF5 signature")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from e
    if head.startswith(b"PK") or p.suffix.lower() == ".npz":
        return _npz_kind(p)
    if is_idx_file(p):
        return "idx"
    if head[:1] == b"\x80" and ("batch" in p.name):
        return "cifar-python"
    raise DataError(f"{p}: unknown dataset format; supported formats: {SUPPORTED_FORMATS}")


def load_dataset(
    path: str | Path,
    split: str | None = None,
    *,
    variable: str | None = None,
    test_fraction: float = 0.1,
    limit: int | None = None,
    progress: bool = True,
) -> ArrayDataset:
    """Load the dataset at ``path`` (format sniffed, see module docstring) into memory.

    Args:
        path: file or directory.
        split: "train", "test" or "all"; ``None`` (default): "train", or for a file holding a single
            split (one idx file, a JPEG CIFAR npz) that split. Such a file asked for the other split
            by name refuses (``DataError``) rather than returning the wrong data; "all" returns it.
        variable: field variable to load from grid / NetCDF files (required when several qualify).
        test_fraction: grids only: the last ``round(test_fraction * M)`` items (at least 1) form "test".
        limit: keep only the first ``limit`` items of the split.
        progress: show a progress bar while decoding many image files (JPEG npz, image folders).

    Returns:
        :class:`ArrayDataset` with ``data`` ``(M, H, W, C)`` uint8 (images) or ``(M, H, W)`` float32 (fields).
    """
    p = Path(path).expanduser()
    single = split is None
    split = "train" if split is None else split
    if split not in _SPLITS:
        raise DataError(f"{p}: unknown split {split!r}; expected one of {list(_SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise DataError(f"{p}: limit must be a positive integer or None, got {limit!r}")
    limit = None if limit is None else int(limit)
    fmt = sniff_format(p)
    if fmt == "idx":
        return load_idx(p, None if single else split, limit)
    if fmt == "cifar-npz":
        return load_cifar_npz(p, None if single else split, limit, progress=progress)
    if fmt == "cifar-python":
        return load_cifar_python(p, split, limit)
    if fmt == "image-folder":
        return load_image_folder(p, split, limit, progress=progress)
    kw = dict(variable=variable, test_fraction=test_fraction, limit=limit)
    if fmt == "grid-npz":
        return load_grid_npz(p, split, **kw)
    return load_netcdf(p, split, **kw)
