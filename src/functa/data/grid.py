"""Gridded lat-lon fields from ``.npz`` archives and NetCDF files.

Inputs hold 1-D coordinates ``lat`` ``(H,)`` and ``lon`` ``(W,)`` in degrees (NetCDF also ``latitude`` /
``longitude``) and a float data variable of shape ``(..., H, W)``. Leading dimensions are flattened in C
order into ``M`` items, giving ``data`` ``(M, H, W)`` float32 in the variable's physical units.

Split: the last ``round(test_fraction * M)`` items (at least 1) are "test", the rest "train";
"all" returns every item. A single field (``M == 1``) has no test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dataset import ArrayDataset, DataError
from .safeio import Npz, PickledArrayError, check_nbytes

__all__ = ["LAT_NAMES", "LON_NAMES", "is_grid_npz", "load_grid_npz", "load_netcdf", "netcdf_kind", "split_range"]

LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CONVERT_HINT = (
    "convert it to NetCDF3 classic or to .npz (keys 'lat', 'lon', '<variable>', optional 'units'), "
    "e.g. with xarray: ds.to_netcdf(out, format='NETCDF3_CLASSIC')"
)


@dataclass
class _Var:
    """A candidate data variable: its shape, whether it is numeric-float, and how to load it."""

    name: str
    shape: tuple[int, ...]
    is_float: bool
    load: Callable[[], np.ndarray]  # -> float array, NaN where missing
    units: str = ""
    dims: tuple[str, ...] | None = None


def _find_name(names: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    for w in wanted:
        if w in lower:
            return lower[w]
    return None


def split_range(m: int, split: str, test_fraction: float, path: Path) -> tuple[int, int]:
    """``[start, stop)`` of the flattened items belonging to ``split`` (see module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{path}: test_fraction must be in (0, 1), got {test_fraction}; use split='all' for everything")
    if split == "all":
        return 0, m
    if m < 2:
        if split == "test":
            raise DataError(f"{path}: only {m} item(s); cannot hold out a test split (use split='train' or 'all')")
        return 0, m
    n_test = min(max(1, int(math.floor(test_fraction * m + 0.5))), m - 1)
    return (0, m - n_test) if split == "train" else (m - n_test, m)


def _coords(arr: Any, name: str, path: Path, lo: float, hi: float) -> np.ndarray:
    if np.ndim(arr) != 1:
        raise DataError(f"{path}: coordinate '{name}' must be 1-D, found shape {np.shape(arr)}")
    a = np.ma.filled(np.ma.asarray(arr).astype(np.float64), np.nan)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise DataError(f"{path}: coordinate '{name}' is empty or has non-finite values")
    if a.min() < lo or a.max() > hi:
        raise DataError(
            f"{path}: coordinate '{name}' has values {a.min():g}..{a.max():g} outside [{lo:g}, {hi:g}] degrees"
        )
    return a


def _build(
    path: Path,
    fmt: str,
    variables: dict[str, _Var],
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    variable: str | None,
    split: str,
    test_fraction: float,
    limit: int | None,
    default_units: str = "",
    by_dims: tuple[str, str] | None = None,
) -> ArrayDataset:
    h, w = lat.size, lon.size

    def on_grid(v: _Var) -> bool:
        if len(v.shape) < 2:
            return False
        if by_dims is not None and v.dims is not None:
            return v.dims[-2:] == by_dims
        return v.shape[-2:] == (h, w)

    candidates = [n for n, v in variables.items() if v.is_float and on_grid(v)]
    if variable is None:
        if not candidates:
            raise DataError(
                f"{path}: no float variable with trailing dims (lat={h}, lon={w}); variables: {sorted(variables)}"
            )
        if len(candidates) > 1:
            raise DataError(f"{path}: several field variables {candidates}; pass variable= to choose one")
        variable = candidates[0]
    elif variable not in variables:
        raise DataError(f"{path}: no variable {variable!r}; field variables on the lat/lon grid: {candidates}")
    elif variable not in candidates:
        v = variables[variable]
        raise DataError(
            f"{path}: variable {variable!r} (shape {v.shape}) is not a float field on the ({h}, {w}) lat/lon grid; "
            f"candidates: {candidates}"
        )
    var = variables[variable]
    raw = np.ma.filled(np.ma.asarray(var.load()).astype(np.float32), np.nan)
    bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
    if bad:
        raise DataError(
            f"{path}: variable {variable!r} has {bad} non-finite value(s) (NaN/inf/missing) out of {raw.size}; "
            "fill or drop them before loading"
        )
    leading = [int(s) for s in raw.shape[:-2]]
    flat = raw.reshape(-1, h, w)
    start, stop = split_range(flat.shape[0], split, test_fraction, path)
    if limit is not None:
        stop = min(stop, start + limit)
    data = np.ascontiguousarray(flat[start:stop])
    meta: dict[str, Any] = {
        "source": str(path),
        "format": fmt,
        "kind": "field",
        "split": split,
        "variable": variable,
        "units": var.units or default_units,
        "lat": lat.astype(float).tolist(),
        "lon": lon.astype(float).tolist(),
        "leading_shape": leading,
        "n_total": int(flat.shape[0]),
        "item_range": [int(start), int(stop)],
        "test_fraction": float(test_fraction),
        "files": [str(path)],
    }
    if var.dims is not None:
        meta["leading_dims"] = list(var.dims[:-2])
    if flat.shape[0] == 1:
        meta["notes"] = ["single field: no test split held out"]
    return ArrayDataset(data, None, meta)


# ------------------------------------------------------------------------------------------------ npz


def is_grid_npz(keys: list[str]) -> bool:
    """Does an ``.npz`` with these array names look like a lat/lon grid archive?"""
    return _find_name(keys, LAT_NAMES) is not None and _find_name(keys, LON_NAMES) is not None


def load_grid_npz(
    path: Path, split: str, *, variable: str | None = None, test_fraction: float = 0.1, limit: int | None = None
) -> ArrayDataset:
    """Load a lat/lon field variable from an ``.npz`` archive (see module docstring).

    Only the members needed are decoded (coordinates, ``units``, the chosen variable), each after its header
    has been checked against its zip sizes and the array limit (:mod:`functa.data.safeio`)."""
    with Npz(path) as z:
        headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for k in z.names:
            try:
                headers[k] = z.header(k)
            except PickledArrayError:
                if k == variable:
                    raise
                # object arrays (need pickle) are never field candidates; corrupt members are reported
        lat_name, lon_name = _find_name(list(headers), LAT_NAMES), _find_name(list(headers), LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: grid .npz needs 'lat' and 'lon' arrays; has {sorted(headers)}")
        for name in (lat_name, lon_name):
            if len(headers[name][0]) != 1:
                raise DataError(f"{path}: coordinate '{name}' must be 1-D, found shape {headers[name][0]}")
        lat = _coords(z.read(lat_name), lat_name, path, -90.0, 90.0)
        lon = _coords(z.read(lon_name), lon_name, path, -360.0, 360.0)
        units = ""
        if "units" in headers and headers["units"][0] == () and headers["units"][1].kind in "US":
            u = z.read("units").item()
            units = u.decode("utf-8", "replace") if isinstance(u, bytes) else str(u)
        variables = {
            k: _Var(k, shape, dtype.kind == "f", (lambda k=k: z.read(k)))
            for k, (shape, dtype) in headers.items()
            if k not in (lat_name, lon_name)
        }
        return _build(
            path, "grid-npz", variables, lat, lon,
            variable=variable, split=split, test_fraction=test_fraction, limit=limit, default_units=units,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------- netcdf


def netcdf_kind(path: Path) -> str | None:
    """"netcdf3", "cdf5", "hdf5" from the file's magic bytes, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[:3] == b"CDF" and len(head) >= 4:
        return {1: "netcdf3", 2: "netcdf3", 5: "cdf5"}.get(head[3])
    if head == _HDF5_MAGIC:
        return "hdf5"
    return None


def _attr_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SU" and value.size == 1:
            return _attr_str(value.reshape(-1)[0])
        if value.dtype.kind == "S":
            return b"".join(value.reshape(-1).tolist()).decode("utf-8", "replace")
    return str(value)


def _load_netcdf3(path: Path, **kw: Any) -> ArrayDataset:
    try:
        from scipy.io import netcdf_file
    except ImportError as e:  # pragma: no cover - scipy is a test dependency
        raise DataError(f"{path}: reading NetCDF needs scipy (pip install 'functa[netcdf]')") from e
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    check_nbytes(size, str(path), "reading this NetCDF3 file (it is read whole)")
    try:
        nc = netcdf_file(path, "r", mmap=False, maskandscale=True)
    except Exception as e:
        raise DataError(f"{path}: cannot read NetCDF3 file ({type(e).__name__}: {e})") from e
    with nc:
        names = list(nc.variables)
        lat_name, lon_name = _find_name(names, LAT_NAMES), _find_name(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: NetCDF file needs 'lat'/'latitude' and 'lon'/'longitude' variables; has {names}")
        lat_v, lon_v = nc.variables[lat_name], nc.variables[lon_name]
        lat = _coords(lat_v[:], lat_name, path, -90.0, 90.0)
        lon = _coords(lon_v[:], lon_name, path, -360.0, 360.0)
        variables: dict[str, _Var] = {}
        for k, v in nc.variables.items():
            if k in (lat_name, lon_name):
                continue
            attrs = v._attributes
            packed = v.data.dtype.kind in "iu" and ("scale_factor" in attrs or "add_offset" in attrs)
            is_float = v.data.dtype.kind == "f" or packed
            variables[k] = _Var(
                k, tuple(v.shape), is_float, (lambda v=v: v[:]), _attr_str(attrs.get("units")), tuple(v.dimensions)
            )
        by_dims = (lat_v.dimensions[0], lon_v.dimensions[0]) if lat_v.dimensions and lon_v.dimensions else None
        return _build(path, "netcdf", variables, lat, lon, by_dims=by_dims, **kw)


def _load_hdf5(path: Path, **kw: Any) -> ArrayDataset:  # pragma: no cover - needs optional h5py
    import h5py

    def unpack(ds: Any) -> np.ndarray:
        a = np.asarray(ds[()])
        fill = ds.attrs.get("_FillValue", ds.attrs.get("missing_value"))
        a = np.ma.masked_equal(a, np.asarray(fill).reshape(-1)[0]) if fill is not None else np.ma.asarray(a)
        if "scale_factor" in ds.attrs or "add_offset" in ds.attrs:
            a = a.astype(np.float64) * float(np.asarray(ds.attrs.get("scale_factor", 1.0)).reshape(-1)[0])
            a = a + float(np.asarray(ds.attrs.get("add_offset", 0.0)).reshape(-1)[0])
        return np.ma.filled(a.astype(np.float64), np.nan)

    try:
        h = h5py.File(path, "r")
    except Exception as e:
        raise DataError(f"{path}: cannot read HDF5/NetCDF4 file ({type(e).__name__}: {e})") from e
    with h:
        names = [k for k in h.keys() if isinstance(h[k], h5py.Dataset)]
        lat_name, lon_name = _find_name(names, LAT_NAMES), _find_name(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: NetCDF4 file needs 'lat'/'latitude' and 'lon'/'longitude' variables; has {names}")
        lat = _coords(unpack(h[lat_name]), lat_name, path, -90.0, 90.0)
        lon = _coords(unpack(h[lon_name]), lon_name, path, -360.0, 360.0)
        variables = {}
        for k in names:
            if k in (lat_name, lon_name):
                continue
            ds = h[k]
            packed = ds.dtype.kind in "iu" and ("scale_factor" in ds.attrs or "add_offset" in ds.attrs)
            variables[k] = _Var(
                k, tuple(ds.shape), ds.dtype.kind == "f" or packed, (lambda ds=ds: unpack(ds)),
                _attr_str(ds.attrs.get("units")),
            )  # fmt: skip
        return _build(path, "netcdf", variables, lat, lon, **kw)


def load_netcdf(
    path: Path, split: str, *, variable: str | None = None, test_fraction: float = 0.1, limit: int | None = None
) -> ArrayDataset:
    """Load a lat/lon field from a NetCDF3 classic file (scipy); NetCDF4/HDF5 only if ``h5py`` is installed."""
    kw = dict(variable=variable, split=split, test_fraction=test_fraction, limit=limit)
    kind = netcdf_kind(path)
    if kind == "netcdf3":
        return _load_netcdf3(path, **kw)
    if kind == "hdf5":
        try:
            import h5py  # noqa: F401
        except ImportError:
            msg = f"{path}: NetCDF4/HDF5 files need the optional 'h5py' package; or {_CONVERT_HINT}"
            raise DataError(msg) from None
        return _load_hdf5(path, **kw)
    if kind == "cdf5":
        raise DataError(f"{path}: NetCDF CDF-5 (64-bit data) is not supported; {_CONVERT_HINT}")
    raise DataError(f"{path}: not a NetCDF file (no 'CDF' or HDF5 signature)")
