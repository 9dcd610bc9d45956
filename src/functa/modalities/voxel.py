"""3-D shapes: binary occupancy grids ``(X, Y, Z)`` <-> voxel-centre coordinates in ``[0, 1]^3``.

Coordinates are the voxel centres when the grid's corners are the unit cube's vertices,
``(i + 1/2) / X`` along each axis (functa paper A.1), so a field fitted on 32³ renders at 128³ on
the same cube (super-resolution of shapes). Features are occupancies in ``{0, 1}``; the default
loss is binary cross-entropy of logits (the field's outputs are logits; predictions are
``sigmoid``), MSE on ``{0, 1}`` targets is the alternative (``loss = "mse"``). Metrics: voxel
accuracy after rounding at 0.5 (paper A.3) and IoU of the occupied sets; nothing here is a PSNR.
Array axes are ``[x, y, z]`` with ``z`` up (ModelNet, binvox ``read_as_3d_array``).

Renders: a mesh by marching cubes at level 0.5 (``.obj`` and ``.ply``) and a shaded PNG view.
Augmentation ``scale``: independent per-axis rescaling about the centre by ``U[0.75, 1.25]``
(paper A.1, 50 copies). Observation masks for imputation: halves along an axis, random voxels,
and a simulated single-view depth scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import DataError, read_array_file, read_binvox, write_array_file, write_binvox
from ..atomic import atomic_stream
from ..errors import ConfigError
from ..validation import MAX_GRID_POINTS, Int, check_fields, check_total
from ..viz import occupancy_mesh, shaded_view, write_mesh
from .base import ModalityBase, grid_centres, register_modality

__all__ = ["OccupancyMetrics", "VoxelModality", "VoxelRescale", "depth_scan_mask", "voxel_coordinates"]

VIEW_SIZE = 256  # pixels of the shaded PNG views


def voxel_coordinates(shape: tuple[int, int, int]) -> Tensor:
    """``(X*Y*Z, 3)`` voxel centres in ``[0, 1]^3``, row-major over ``(x, y, z)``."""
    axes = [grid_centres(int(n)) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


@dataclass(frozen=True)
class OccupancyMetrics:
    """Per item ``voxel_accuracy`` (fraction of voxels right after rounding predictions at 0.5)
    and ``iou`` (|pred ∩ target| / |pred ∪ target|, 1 when both are empty); the summary is their
    dataset means. Predictions are occupancy probabilities ``(B, N, 1)``."""

    headline: str = "voxel_accuracy"

    def per_item(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        p, t = pred >= 0.5, target >= 0.5
        w = torch.ones_like(pred, dtype=torch.bool) if mask is None else (mask >= 0.5).expand_as(pred)
        correct = ((p == t) & w).sum((1, 2)).double()
        count = w.sum((1, 2)).double().clamp_min(1.0)
        inter = (p & t & w).sum((1, 2)).double()
        union = ((p | t) & w).sum((1, 2)).double()
        iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
        return {"voxel_accuracy": correct / count, "iou": iou}

    def summary(self, sums: dict[str, float], count: int) -> dict[str, float]:
        n = max(count, 1)
        nan = float("nan")
        return {"voxel_accuracy": sums["voxel_accuracy"] / n if count else nan,
                "iou": sums["iou"] / n if count else nan}

    def describe(self, summary: dict[str, float]) -> str:
        return f"voxel accuracy {100 * summary['voxel_accuracy']:.2f} %, IoU {summary['iou']:.4f}"


@dataclass(frozen=True)
class VoxelRescale:
    """Independent per-axis rescaling of shapes about the grid centre by factors ``U[low, high]``
    (paper A.1). Vectorised over the batch: each output voxel takes the source voxel it maps back
    to (fills enlarged shapes) and every occupied source voxel marks the voxel it maps to (thin
    surfaces stay closed when shrunk)."""

    low: float = 0.75
    high: float = 1.25
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got ({self.low}, {self.high})")

    def parameters(self, count: int, copy: int) -> np.ndarray:
        """Per-item scale factors ``(count, 3)`` of dataset copy ``copy``."""
        return np.random.default_rng([self.seed, copy]).uniform(self.low, self.high, (count, 3))

    def apply(self, items: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Rescale occupancy grids ``(B, X, Y, Z)`` by ``params (B, 3)``."""
        items = np.asarray(items)
        if items.ndim != 4:
            raise ValueError(f"voxel rescaling needs grids (B, X, Y, Z), got shape {items.shape}")
        b, dims = items.shape[0], items.shape[1:]
        occupied = items >= 0.5
        # backward: output voxel centre -> source index (nearest), per item and axis
        src = []
        for a, n in enumerate(dims):
            c = (np.arange(n) + 0.5 - n / 2)[None, :] / params[:, a:a + 1] + n / 2  # (B, n) continuous
            src.append(np.floor(c).astype(np.int64))
        valid = [(s >= 0) & (s < n) for s, n in zip(src, dims)]
        sx, sy, sz = (np.clip(s, 0, n - 1) for s, n in zip(src, dims))
        bi = np.arange(b)[:, None, None, None]
        out = occupied[bi, sx[:, :, None, None], sy[:, None, :, None], sz[:, None, None, :]]
        out &= valid[0][:, :, None, None] & valid[1][:, None, :, None] & valid[2][:, None, None, :]
        # forward: every occupied voxel marks its destination
        ib, ix, iy, iz = np.nonzero(occupied)
        dest = [np.floor((i + 0.5 - n / 2) * params[ib, a] + n / 2).astype(np.int64)
                for a, (i, n) in enumerate(zip((ix, iy, iz), dims))]
        keep = np.all([(d >= 0) & (d < n) for d, n in zip(dest, dims)], axis=0)
        out[ib[keep], dest[0][keep], dest[1][keep], dest[2][keep]] = True
        return out.astype(items.dtype)


def depth_scan_mask(items: np.ndarray, axis: int = 0) -> np.ndarray:
    """Voxels seen by a simulated single-view depth scan along ``+axis`` (from index 0): on every
    ray, the empty voxels in front of the first occupied one and that voxel; rays that hit nothing
    are seen entirely (free space). ``items (B, X, Y, Z)`` -> bool ``(B, X, Y, Z)``."""
    occ = np.moveaxis(np.asarray(items) >= 0.5, axis + 1, 1)
    n = occ.shape[1]
    first = np.where(occ.any(1), occ.argmax(1), n - 1)  # (B, *other)
    seen = np.arange(n).reshape(1, n, *([1] * (occ.ndim - 2))) <= first[:, None]
    return np.moveaxis(seen, 1, axis + 1)


_HALVES = {"x-half": (0, False), "y-half": (1, False), "z-half": (2, False), "bottom-half": (2, False),
           "top-half": (2, True)}
MASKS = ("x-half", "y-half", "z-half", "bottom-half", "top-half", "random", "depth-scan")


@register_modality
@dataclass
class VoxelModality(ModalityBase):
    """Binary occupancy grids of a fixed size ``(size_x, size_y, size_z)``."""

    name: ClassVar[str] = "voxel"
    code: ClassVar[int] = 3
    rate_unit: ClassVar[str] = "bits per voxel"
    rate_targets: ClassVar[tuple[float, ...]] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    dataset_kind: ClassVar[str] = "voxel"
    default_loss: ClassVar[str] = "bce"
    unobserved_fill: ClassVar[float] = 0.0  # imputation panels show hidden voxels as empty
    size_x: int = 32
    size_y: int = 32
    size_z: int = 32
    class_names: list[str] = field(default_factory=list)
    in_dim: int = field(init=False, default=3)
    out_channels: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        check_fields(self, "modality", size_x=Int(1, 4096), size_y=Int(1, 4096), size_z=Int(1, 4096))
        self.shape = (self.size_x, self.size_y, self.size_z)
        check_total("modality", self.size_x * self.size_y * self.size_z, MAX_GRID_POINTS,
                    f"{self.size_x}x{self.size_y}x{self.size_z} voxel grids", "points")
        if isinstance(self.class_names, (str, bytes, dict)) or not isinstance(self.class_names, (list, tuple)):
            raise ConfigError(f"modality.class_names = {str(self.class_names)[:40]!r} is not a list of names")
        self.class_names = [str(c) for c in self.class_names]

    @classmethod
    def from_dataset(cls, dataset) -> "VoxelModality":
        d = dataset.data
        if d.ndim != 4:
            raise ValueError(f"{dataset.meta.get('source')}: voxel datasets are (M, X, Y, Z), got shape {d.shape}")
        return cls(*(int(s) for s in d.shape[1:]), class_names=list(dataset.meta.get("class_names", [])))

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        return voxel_coordinates(tuple(shape or self.shape))

    def to_features(self, items: np.ndarray) -> Tensor:
        items = np.asarray(items)
        if items.shape[1:] != self.shape:
            raise ValueError(f"expected voxel grids of shape {self.shape}, got {items.shape[1:]}")
        return torch.from_numpy(np.ascontiguousarray(items >= 0.5)).to(torch.float32).reshape(items.shape[0], -1, 1)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Occupancy probabilities ``(B, N, 1)`` -> ``(B, X, Y, Z)`` float32 in ``[0, 1]``."""
        shape = tuple(shape or self.shape)
        return features.detach().float().clamp(0, 1).reshape(features.shape[0], *shape).cpu().numpy()

    def reconstruction_metrics(self) -> OccupancyMetrics:
        return OccupancyMetrics()

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        """Voxel accuracy and IoU of a decoded grid against the original (both rounded at 0.5)."""
        p, t = np.asarray(reconstruction) >= 0.5, np.asarray(item) >= 0.5
        union = int((p | t).sum())
        return {"voxel_accuracy": float((p == t).mean()), "iou": float((p & t).sum() / union) if union else 1.0}

    def make_augmentation(self, kinds: tuple[str, ...], seed: int = 0, low: float = 0.75,
                          high: float = 1.25) -> VoxelRescale:
        if tuple(kinds) != ("scale",):
            raise ValueError(f"voxel augmentations: 'scale' (per-axis rescaling, paper A.1); got {', '.join(kinds)}")
        return VoxelRescale(low, high, seed)

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        """Observed voxels, bool ``(1|B, N)``: ``x-half``/``y-half``/``z-half`` (the lower half along
        that axis; ``bottom-half`` = ``z-half``), ``top-half`` (z >= 1/2), ``random`` (a ``fraction``
        of the voxels) or ``depth-scan`` (a single view along +x, :func:`depth_scan_mask`)."""
        n = int(np.prod(self.shape))
        if kind in _HALVES:
            axis, upper = _HALVES[kind]
            c = self.coordinates()[:, axis]
            return ((c >= 0.5) if upper else (c < 0.5))[None]
        if kind == "random":
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {fraction}")
            m = np.zeros(n, bool)
            m[np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False)] = True
            return torch.from_numpy(m)[None]
        if kind == "depth-scan":
            items = self.from_features(features)
            return torch.from_numpy(depth_scan_mask(items, 0).reshape(len(items), n))
        raise ValueError(f"unknown voxel mask {kind!r}; choose from {', '.join(MASKS)}")

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """A shaded PNG view and a marching-cubes mesh (``.obj`` and ``.ply``; none for an empty or full
        grid, which has no surface) per item; returns the PNGs."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for grid, name in zip(items, names):
            p = directory / f"{name}.png"
            view = Image.fromarray(shaded_view(grid, size=VIEW_SIZE))  # one size at every resolution
            atomic_stream(p, lambda f: view.save(f, format="PNG"))
            vertices, faces = occupancy_mesh(grid)
            for suffix in (".obj", ".ply") if len(faces) else ():
                write_mesh(vertices, faces, directory / f"{name}{suffix}")
            paths.append(p)
        return paths

    def read_item(self, path: Path) -> np.ndarray:
        """One grid ``(X, Y, Z)`` uint8 from ``.binvox``, ``.npy`` or ``.npz`` (array ``voxels``)."""
        path = Path(path)
        if path.suffix.lower() == ".binvox":
            return read_binvox(path)
        arr = read_array_file(path, "voxels")
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise DataError(f"{path}: a voxel grid must be a 3-D integer or boolean array, got {arr.dtype} {arr.shape}")
        if not np.isin(arr, (0, 1)).all():
            raise DataError(f"{path}: voxel occupancies must be 0 or 1")
        return arr.astype(np.uint8)

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write a grid (occupancies rounded at 0.5) as ``.binvox``, ``.npy``, ``.npz``, or a mesh ``.obj``/``.ply``."""
        path = Path(path)
        grid = (np.asarray(item) >= 0.5).astype(np.uint8)
        suffix = path.suffix.lower()
        if suffix == ".binvox":
            write_binvox(grid, path)
        elif suffix in (".obj", ".ply"):
            write_mesh(*occupancy_mesh(np.asarray(item, np.float32)), path)
        elif suffix in (".npy", ".npz"):
            write_array_file(path, grid, "voxels")
        else:
            raise ValueError(f"{path}: unknown voxel file suffix {path.suffix!r}; use .binvox, .npy, .npz, .obj or .ply")
        return path

    def with_shape(self, shape: tuple[int, ...]) -> "VoxelModality":
        if len(shape) != 3:
            raise ValueError(f"voxel patches are (x, y, z), got {tuple(shape)}")
        return replace(self, size_x=int(shape[0]), size_y=int(shape[1]), size_z=int(shape[2]))

    def to_config(self) -> dict:
        return {"name": self.name, "size_x": self.size_x, "size_y": self.size_y, "size_z": self.size_z,
                "class_names": list(self.class_names)}
