"""Scalar fields on the globe: lat/lon grids ``(H, W)`` <-> 3-D unit-sphere coordinates.

Coordinates follow functa §6.5 / A.1: ``x = (cos λ cos φ, cos λ sin φ, sin λ)`` for latitude λ and
longitude φ. Values are min-max normalised to ``[0, 1]`` with the training set's range, stored in
the config, so renders and metrics come back in physical units (e.g. kelvin).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import DataError, read_array_file
from ..atomic import atomic_stream
from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..validation import MAX_GRID_POINTS, Real, Text, check_fields, check_total
from .base import ModalityBase, register_modality

__all__ = ["SphereModality", "sphere_coordinates", "latitude_weights"]


def sphere_coordinates(lat_deg: Tensor, lon_deg: Tensor) -> Tensor:
    """Unit-sphere coordinates of a lat/lon grid: ``(H,), (W,) -> (H*W, 3)``, row-major over (lat, lon)."""
    lat = torch.deg2rad(torch.as_tensor(lat_deg, dtype=torch.float64))[:, None]
    lon = torch.deg2rad(torch.as_tensor(lon_deg, dtype=torch.float64))[None, :]
    xyz = torch.stack(torch.broadcast_tensors(torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon),
                                              torch.sin(lat).expand(-1, lon.shape[1])), -1)
    return xyz.reshape(-1, 3).to(torch.float32)


def latitude_weights(lat_deg: Tensor) -> Tensor:
    """Area weights ``cos(lat)`` normalised to mean 1: ``(H,) -> (H,)``."""
    w = torch.cos(torch.deg2rad(torch.as_tensor(lat_deg, dtype=torch.float64))).clamp_min(0)
    return (w / w.mean()).to(torch.float32)


# A perceptually ordered blue -> white -> red map for temperature renders (anchors, linearly interpolated).
_ANCHORS = np.array([[49, 54, 149], [69, 117, 180], [116, 173, 209], [171, 217, 233], [224, 243, 248],
                     [254, 224, 144], [253, 174, 97], [244, 109, 67], [215, 48, 39], [165, 0, 38]], dtype=np.float64)


def _colormap(v: np.ndarray) -> np.ndarray:
    """``v`` in [0, 1] (any shape) -> uint8 RGB ``(*shape, 3)``."""
    pos = np.clip(v, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (pos - lo)[..., None]
    return np.round(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


@register_modality
@dataclass
class SphereModality(ModalityBase):
    """A scalar field on a lat/lon grid. ``lat``/``lon`` in degrees (native grid of the data).

    Loss MSE on min-max normalised values, metrics PSNR plus latitude-weighted RMSE in data units."""

    name: ClassVar[str] = "sphere"
    code: ClassVar[int] = 2
    dataset_kind: ClassVar[str] = "field"
    lat: list[float] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    vmin: float = 0.0
    vmax: float = 1.0
    units: str = ""
    in_dim: int = field(init=False, default=3)
    out_channels: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        check_fields(self, "modality", vmin=Real(), vmax=Real(), units=Text(max_len=256))
        for name in ("lat", "lon"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes, dict)) or not isinstance(values, (list, tuple)):
                raise ConfigError(f"modality.{name} = {str(values)[:40]!r} is not a list of degrees")
            setattr(self, name, [Real(-1e4, 1e4)(v, f"modality.{name}[{i}]") for i, v in enumerate(values)])
        if len(self.lat) < 2 or len(self.lon) < 2:
            raise ConfigError("a sphere modality needs at least 2 latitudes and 2 longitudes")
        check_total("modality", len(self.lat) * len(self.lon), MAX_GRID_POINTS,
                    f"a {len(self.lat)}x{len(self.lon)} lat/lon grid", "points")
        if not self.vmax > self.vmin:
            raise ConfigError(f"vmax ({self.vmax}) must exceed vmin ({self.vmin})")
        self.shape = (len(self.lat), len(self.lon))

    @classmethod
    def from_dataset(cls, dataset) -> "SphereModality":
        d, meta = dataset.data, dataset.meta
        if d.ndim != 3 or "lat" not in meta or "lon" not in meta:
            raise ValueError(f"{meta.get('source')}: sphere data must be (M, H, W) with lat/lon coordinates")
        if len(meta["lat"]) < 2 or len(meta["lon"]) < 2:
            raise DataError(f"{meta.get('source')}: a sphere field needs at least 2 latitudes and 2 longitudes, "
                            f"found {len(meta['lat'])}x{len(meta['lon'])}")  # fmt: skip
        vmin, vmax = float(d.min()), float(d.max())
        if not vmax > vmin:
            raise DataError(f"{meta.get('source')}: the field is constant ({vmin:g} everywhere), so it cannot be "
                            "normalised: vmax must exceed vmin")  # fmt: skip
        return cls(lat=list(meta["lat"]), lon=list(meta["lon"]), vmin=vmin, vmax=vmax,
                   units=str(meta.get("units", "")))

    def grid(self, shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Latitudes ``(H,)`` and longitudes ``(W,)`` of the native grid or of an equally spaced one.

        A new grid spans the native latitude range (same direction) with equal spacing and starts at
        the native first longitude with step ``360 / W``.
        """
        if shape is None or tuple(shape) == self.shape:
            return torch.tensor(self.lat), torch.tensor(self.lon)
        h, w = shape
        lat = torch.linspace(self.lat[0], self.lat[-1], h)
        lon = self.lon[0] + torch.arange(w, dtype=torch.float32) * (360.0 / w)
        return lat, lon

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        return sphere_coordinates(*self.grid(shape))

    def coordinate_box(self) -> tuple[float, float]:
        return (-1.0, 1.0)  # points on the unit sphere

    def to_features(self, items: np.ndarray) -> Tensor:
        items = np.asarray(items)
        if items.shape[1:] != self.shape:
            raise ValueError(f"expected fields of shape {self.shape}, got {items.shape[1:]}")
        x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
        return ((x - self.vmin) / (self.vmax - self.vmin)).reshape(items.shape[0], -1, 1)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        h, w = shape or self.shape
        x = features.detach().float().reshape(features.shape[0], h, w)
        return (x * (self.vmax - self.vmin) + self.vmin).cpu().numpy()

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """RMSE in physical units on the native grid: latitude-weighted (``rmse_lat``) and plain."""
        err = (pred - target).reshape(pred.shape[0], *self.shape) * (self.vmax - self.vmin)
        w = latitude_weights(torch.tensor(self.lat))[None, :, None]
        return {"rmse_lat": (err.square() * w).mean((1, 2)).sqrt(), "rmse": err.square().mean((1, 2)).sqrt()}

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """Equirectangular PNGs (north up, fixed colour range ``vmin..vmax``) plus one ``.npz`` each."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        ascending = self.lat[-1] > self.lat[0]
        for field_, name in zip(items, names):
            img = _colormap((field_ - self.vmin) / (self.vmax - self.vmin))
            if ascending:
                img = img[::-1]
            p = directory / f"{name}.png"
            image = Image.fromarray(np.ascontiguousarray(img))
            atomic_stream(p, lambda f: image.save(f, format="PNG"))
            lat, lon = self.grid(field_.shape)
            atomic_stream(directory / f"{name}.npz", lambda f: np.savez(
                f, values=field_.astype(np.float32), lat=lat.numpy(), lon=lon.numpy(), units=np.array(self.units)))
            paths.append(p)
        return paths

    def read_item(self, path: Path) -> np.ndarray:
        """A field ``(lat, lon)`` from ``.npy`` or ``.npz`` (array ``values``, as :meth:`save` writes)."""
        arr = read_array_file(path, "values")
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise DataError(f"{path}: a field must be a finite 2-D numeric array, got {arr.dtype} {arr.shape}")
        return arr.astype(np.float32)

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write a field as ``.npz`` (``values``, ``lat``, ``lon``, ``units``) or ``.npy``."""
        path = Path(path)
        buf = io.BytesIO()
        values = np.asarray(item, dtype=np.float32)
        if path.suffix == ".npy":
            np.save(buf, values)
        else:
            lat, lon = self.grid(values.shape)
            np.savez(buf, values=values, lat=lat.numpy(), lon=lon.numpy(), units=np.array(self.units))
        atomic_write_bytes(path, buf.getvalue())
        return path

    def with_shape(self, shape: tuple[int, ...]) -> "SphereModality":
        raise ValueError("fields on the sphere are fitted whole; their coordinates come from the lat/lon grid, "
                         "so they cannot be cut into patches")

    def to_config(self) -> dict:
        return {"name": self.name, "lat": self.lat, "lon": self.lon, "vmin": self.vmin, "vmax": self.vmax,
                "units": self.units}
