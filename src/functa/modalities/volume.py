"""3-D scalar volumes (MRI, CT): intensities ``(X, Y, Z)`` <-> voxel-centre coordinates in ``[0, 1]^3``.

Coordinates are the voxel centres of :func:`~functa.modalities.voxel.voxel_coordinates`, ``(i + 1/2) / X``
along each axis (the functa convention; COIN++ uses ``[-1, 1]``, an affine change that a SIREN's first
layer absorbs), so a field fitted on a grid renders at any other on the same field of view. Array axes are
the file's voxel axes (``[i, j, k]``; RAS for the niivue cubes): no reorientation.

Features are intensities normalised to ``[0, 1]`` (one channel), as COIN++ does on FastMRI (thesis 4.A.2):

* ``normalisation = "dataset"`` (default, the thesis'): one window for the whole dataset, from its
  minimum to its ``percentile`` (99.99 %) value, values outside clipped. ``lo`` and ``hi`` are stored in the
  modality config, so decoded items come back in the data's intensity units (``lo + f * (hi - lo)``).
* ``normalisation = "volume"``: every volume scaled by its own minimum and maximum *before* it is cut
  into patches: :meth:`read_item` returns it normalised, and a dataset is prepared with
  :func:`normalise_dataset` (its per-volume statistics go to ``meta["volume_stats"]``; invert with
  :func:`denormalise_volumes`). Features are then the items clipped to ``[0, 1]``, and decoded items are
  the normalised intensities (per-volume statistics are not part of a latent or of a ``.fta`` file).
  From the command line: ``functa fit VOLUMES --set data.normalisation=item`` (a ``[data]`` key,
  as every modality setting chosen at fit time; ``modality`` itself is only a name). The run's
  ``config.json`` then stores ``normalisation = "volume"`` in its modality section and
  ``normalisation = "item"`` in its data section, so ``eval``, ``encode`` and ``render --data`` normalise
  every volume of a dataset by itself (:func:`functa.pipeline.open_data`), and ``compress FILE.nii.gz``
  every file (:meth:`read_item`).

Loss MSE; metrics PSNR on the ``[0, 1]`` features (per volume, averaged over volumes, and of the mean MSE:
:class:`~functa.fitting.PsnrMetrics`); :meth:`compare` gives ``psnr_db`` of a decoded volume on the same
scale. Patches (``data.patch = [16, 16, 16]``, COIN++) use the library's patch machinery; whole volumes are
stitched for evaluation and compression.

Spacing: ``spacing`` (voxel size in mm, the NIfTI zooms) and ``affine`` (4x4 voxel-to-world) of the dataset
are stored in the config (the first volume's; a ``.fta`` file holds no header, so ``decompress`` writes
these). Volumes written at another resolution (render ``--scale``) get the affine of the
same field of view: voxel sizes scaled by ``old / new`` per axis and the origin moved to the new first
voxel centre. Renders: the three orthogonal slices through the centre (sagittal, coronal, axial) as PNGs
and the volume as ``.nii.gz``.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..data import DataError, read_array_file, write_array_file
from ..data.nifti import is_nifti_path, read_nifti
from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..validation import MAX_GRID_POINTS, Choice, Int, Real, check_fields, check_total
from ..viz import write_png
from .base import ModalityBase, register_modality
from .voxel import VoxelModality, voxel_coordinates

__all__ = ["VolumeModality", "centre_slices", "denormalise_volumes", "normalise_dataset", "normalise_volumes",
           "scaled_affine"]

_STAT_VALUES = 1 << 24  # voxels sampled for the dataset window
_SLICES = ("sagittal", "coronal", "axial")


def normalise_volumes(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume min-max normalisation: ``(B, ...)`` -> values in ``[0, 1]`` and the statistics ``(B, 2)``
    (``lo``, ``hi``) that :func:`denormalise_volumes` inverts. A constant volume maps to 0."""
    x = np.asarray(items, np.float32)
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1), flat.max(1)
    span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    out = (x - lo.reshape(-1, *[1] * (x.ndim - 1))) / span.reshape(-1, *[1] * (x.ndim - 1))
    return out.astype(np.float32), np.stack([lo, hi], 1).astype(np.float64)


def denormalise_volumes(values: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise_volumes`: ``[0, 1]`` values ``(B, ...)`` and ``(B, 2)`` statistics -> units."""
    v = np.asarray(values, np.float64)
    lo, hi = (np.asarray(stats, np.float64)[:, k].reshape(-1, *[1] * (v.ndim - 1)) for k in (0, 1))
    return (lo + v * np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def normalise_dataset(dataset):
    """A dataset of per-volume min-max normalised items (in memory, float32) for ``normalisation = "volume"``;
    ``meta["volume_stats"]`` holds each item's ``[lo, hi]``, ``meta["normalisation"]`` is ``"item"``."""
    from ..data import ArrayDataset

    values, stats = normalise_volumes(dataset.take(np.arange(len(dataset))))
    return ArrayDataset(values, dataset.labels, {**dataset.meta, "volume_stats": stats.tolist(),
                                                 "normalisation": "item"})


def scaled_affine(affine: np.ndarray, old: tuple[int, ...], new: tuple[int, ...]) -> np.ndarray:
    """The voxel-to-world affine of the same field of view sampled on ``new`` instead of ``old`` voxels:
    new voxel ``j`` is at old continuous index ``(j + 1/2) f - 1/2`` with ``f = old / new``."""
    f = np.array([o / n for o, n in zip(old, new)], np.float64)
    s = np.eye(4)
    s[:3, :3] = np.diag(f)
    s[:3, 3] = (f - 1) / 2
    return np.asarray(affine, np.float64) @ s


def centre_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The three orthogonal slices through the centre of ``(X, Y, Z)`` values in ``[0, 1]``, uint8, with the
    second in-plane axis pointing up (RAS: superior / anterior up): sagittal ``x = X/2`` (rows z, columns y),
    coronal ``y = Y/2`` (rows z, columns x), axial ``z = Z/2`` (rows y, columns x)."""
    v = np.clip(np.rint(np.asarray(volume, np.float64) * 255.0), 0, 255).astype(np.uint8)
    x, y, z = (n // 2 for n in v.shape)
    return {"sagittal": v[x, :, :].T[::-1], "coronal": v[:, y, :].T[::-1], "axial": v[:, :, z].T[::-1]}


def _side_by_side(tiles: list[np.ndarray]) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (0, 2))) for t in tiles]
    return np.ascontiguousarray(np.concatenate(padded, axis=1)[:, :-2])


@register_modality
@dataclass
class VolumeModality(ModalityBase):
    """Scalar volumes of a fixed size ``(size_x, size_y, size_z)`` (module docstring)."""

    name: ClassVar[str] = "volume"
    code: ClassVar[int] = 6
    rate_unit: ClassVar[str] = "bits per voxel"
    rate_targets: ClassVar[tuple[float, ...]] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    dataset_kind: ClassVar[str] = "volume"  # NIfTI / volume-npz loaders; voxel grids are kind "voxel"
    size_x: int = 16
    size_y: int = 16
    size_z: int = 16
    normalisation: Literal["dataset", "volume"] = "dataset"
    lo: float = 0.0
    hi: float = 1.0
    percentile: float = 99.99
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    affine: list[list[float]] | None = None
    time_index: int | None = None
    in_dim: int = field(init=False, default=3)
    out_channels: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        check_fields(self, "modality", size_x=Int(1, 4096), size_y=Int(1, 4096), size_z=Int(1, 4096),
                     normalisation=Choice("dataset", "volume"), lo=Real(-1e30, 1e30), hi=Real(-1e30, 1e30),
                     percentile=Real(50, 100), time_index=Int(-100000, 100000, optional=True))
        if not self.hi > self.lo:
            raise ConfigError(f"modality.hi = {self.hi} must be greater than modality.lo = {self.lo}")
        self.shape = (self.size_x, self.size_y, self.size_z)
        check_total("modality", math.prod(self.shape), MAX_GRID_POINTS, f"{self.size_x}x{self.size_y}x{self.size_z} "
                    "volumes", "points")
        try:
            if isinstance(self.spacing, (str, bytes, dict)):
                raise TypeError
            self.spacing = [float(s) for s in self.spacing]
            if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"modality.spacing = {str(self.spacing)[:60]} is not three positive voxel sizes") from None
        if self.affine is not None:
            a = np.asarray(self.affine, np.float64) if isinstance(self.affine, (list, tuple)) else None
            if a is None or a.shape != (4, 4) or not np.isfinite(a).all():
                raise ConfigError(f"modality.affine = {str(self.affine)[:60]} is not a 4x4 matrix")
            self.affine = a.tolist()

    # ------------------------------------------------------------------------------------ dataset

    @classmethod
    def normalise_items(cls, dataset):
        """Every volume min-max normalised by itself (:func:`normalise_dataset`)."""
        return normalise_dataset(dataset)

    @classmethod
    def from_dataset(cls, dataset, normalisation: str | None = None, percentile: float = 99.99) -> "VolumeModality":
        """Size, spacing and affine from the dataset; for ``dataset`` normalisation the window from its
        minimum to its ``percentile`` value (thesis 4.A.2), over up to 2^24 sampled voxels; for ``volume``
        normalisation the dataset must hold normalised items (:func:`normalise_dataset`). Default: ``volume``
        for a dataset that :meth:`normalise_items` prepared, else ``dataset``."""
        if normalisation is None:
            normalisation = "volume" if dataset.meta.get("normalisation") == "item" else "dataset"
        d = dataset.data
        if d.ndim != 4:
            raise ValueError(f"{dataset.meta.get('source')}: volume datasets are (M, X, Y, Z), got shape {d.shape}")
        m = len(dataset)
        items = np.unique(np.linspace(0, m - 1, min(m, 64)).round().astype(np.int64))
        step = max(1, math.ceil(len(items) * math.prod(d.shape[1:]) / _STAT_VALUES))
        sample = np.concatenate([np.asarray(dataset.take(items[k:k + 1]), np.float32).reshape(-1)[::step]
                                 for k in range(len(items))])
        lo = float(sample.min())
        hi = float(np.percentile(sample, percentile))
        if normalisation == "volume":
            if lo < 0 or sample.max() > 1:
                raise ValueError(f"{dataset.meta.get('source')}: per-volume normalisation needs items normalised "
                                 "to [0, 1] (functa.modalities.volume.normalise_dataset)")
            lo, hi = 0.0, 1.0
        if not hi > lo:
            hi = float(sample.max()) if sample.max() > lo else lo + 1.0
        spacing = dataset.meta.get("spacing", [1.0, 1.0, 1.0])
        return cls(*(int(s) for s in d.shape[1:]), normalisation=normalisation, lo=lo, hi=hi, percentile=percentile,
                   spacing=list(spacing), affine=dataset.meta.get("affine"))

    # -------------------------------------------------------------------------------- features

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        return voxel_coordinates(tuple(shape or self.shape))

    def normalise(self, items: np.ndarray) -> np.ndarray:
        """Data units -> ``[0, 1]`` (the dataset window, clipped; or per volume)."""
        x = np.asarray(items, np.float32)
        if self.normalisation == "volume":  # items are normalised per volume when read (module docstring)
            return np.clip(x, 0.0, 1.0)
        return np.clip((x - np.float32(self.lo)) / np.float32(self.hi - self.lo), 0.0, 1.0)

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        """``[0, 1]`` -> data units (identity for per-volume normalisation: module docstring)."""
        v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
        if self.normalisation == "volume":
            return v
        return (np.float64(self.lo) + v.astype(np.float64) * (self.hi - self.lo)).astype(np.float32)

    def to_features(self, items: np.ndarray) -> Tensor:
        items = np.asarray(items)
        if items.shape[1:] != self.shape:
            raise ValueError(f"expected volumes of shape {self.shape}, got {items.shape[1:]}")
        return torch.from_numpy(np.ascontiguousarray(self.normalise(items))).reshape(items.shape[0], -1, 1)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Predicted ``(B, N, 1)`` -> ``(B, X, Y, Z)`` float32 in data units."""
        shape = tuple(shape or self.shape)
        f = features.detach().float().clamp(0, 1).reshape(features.shape[0], *shape).cpu().numpy()
        return self.denormalise(f)

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        """``psnr_db`` on the ``[0, 1]`` scale of the features (the headline) and ``rmse`` in data units."""
        r, t = np.asarray(reconstruction, np.float64), np.asarray(item, np.float64)
        mse = float(np.mean((self.normalise(r[None])[0].astype(np.float64) - self.normalise(t[None])[0]) ** 2))
        return {"psnr_db": float("inf") if mse == 0 else -10.0 * math.log10(mse),
                "rmse": float(np.sqrt(np.mean((r - t) ** 2)))}

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        """Halves along an axis (``x-half``, ``y-half``, ``z-half``, ``top-half``) or ``random`` voxels, as for voxels."""
        if kind == "depth-scan":
            raise ValueError("volumes have no depth-scan mask (it needs occupancy); use a half or 'random'")
        return VoxelModality.observation_mask(self, kind, features, fraction, seed)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------- files

    def _affine_for(self, shape: tuple[int, ...]) -> np.ndarray:
        base = np.asarray(self.affine, np.float64) if self.affine is not None else np.diag([*self.spacing, 1.0])
        return base if tuple(shape) == self.shape else scaled_affine(base, self.shape, tuple(shape))

    def _nifti_bytes(self, volume: np.ndarray, affine: np.ndarray, gz: bool) -> bytes:
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(volume, np.float32), affine)
        img.header.set_xyzt_units("mm")
        raw = img.to_bytes()
        return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """Per item: ``NAME.png`` (sagittal | coronal | axial centre slices side by side, on the ``[0, 1]``
        scale), ``NAME_<plane>.png`` for each plane, and ``NAME.nii.gz`` in data units with the affine of the
        item's grid (spacing scaled by native / rendered size); returns the combined PNGs."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for vol, name in zip(items, names):
            vol = np.asarray(vol, np.float32)
            tiles = centre_slices(self.normalise(vol[None])[0])
            for plane in _SLICES:
                write_png(np.ascontiguousarray(tiles[plane]), directory / f"{name}_{plane}.png")
            p = write_png(_side_by_side([tiles[s] for s in _SLICES]), directory / f"{name}.png")
            atomic_write_bytes(directory / f"{name}.nii.gz",
                               self._nifti_bytes(vol, self._affine_for(vol.shape), gz=True))
            paths.append(Path(p))
        return paths

    def read_item(self, path: Path) -> np.ndarray:
        """One volume ``(X, Y, Z)`` float32 from ``.nii``/``.nii.gz``/``.mgz`` (a 4-D series needs
        ``time_index``) or ``.npy``/``.npz`` (array ``volumes``); at least one patch (the modality grid) along
        every axis. Per-volume normalisation returns it normalised (module docstring)."""
        path = Path(path)
        if is_nifti_path(path):
            vol = read_nifti(path, self.time_index)[0]
        else:
            arr = read_array_file(path, "volumes")
            if arr.ndim == 4 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 3 or arr.dtype.kind not in "biuf":
                raise DataError(f"{path}: a volume must be a 3-D numeric array, got {arr.dtype} {arr.shape}")
            vol = arr.astype(np.float32)
            if not np.isfinite(vol).all():
                raise DataError(f"{path}: volume has non-finite values (NaN/inf)")
        if any(s < p for s, p in zip(vol.shape, self.shape)):
            raise DataError(f"{path}: volume {vol.shape} is smaller than one patch {self.shape}")
        return normalise_volumes(vol[None])[0][0] if self.normalisation == "volume" else vol

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write ``(X, Y, Z)`` data units as ``.nii.gz`` / ``.nii`` (float32, the dataset's affine and spacing),
        ``.npy`` / ``.npz`` (array ``volumes``) or ``.png`` (the sagittal | coronal | axial centre slices
        side by side on the ``[0, 1]`` scale, as :meth:`save` draws them)."""
        path = Path(path)
        vol = np.asarray(item, np.float32)
        name = path.name.lower()
        if name.endswith((".nii.gz", ".nii")):
            affine = np.asarray(self.affine, np.float64) if self.affine is not None else np.diag([*self.spacing, 1.0])
            atomic_write_bytes(path, self._nifti_bytes(vol, affine, gz=name.endswith(".gz")))
        elif name.endswith((".npy", ".npz")):
            write_array_file(path, vol, "volumes")
        elif name.endswith(".png"):
            tiles = centre_slices(self.normalise(vol[None])[0])
            write_png(_side_by_side([tiles[s] for s in _SLICES]), path)
        else:
            raise ValueError(f"{path}: unknown volume file suffix; use .nii.gz, .nii, .npy, .npz or .png")
        return path

    def with_shape(self, shape: tuple[int, ...]) -> "VolumeModality":
        if len(shape) != 3:
            raise ValueError(f"volume patches are (x, y, z), got {tuple(shape)}")
        return replace(self, size_x=int(shape[0]), size_y=int(shape[1]), size_z=int(shape[2]))

    def to_config(self) -> dict:
        return {"name": self.name, "size_x": self.size_x, "size_y": self.size_y, "size_z": self.size_z,
                "normalisation": self.normalisation, "lo": self.lo, "hi": self.hi, "percentile": self.percentile,
                "spacing": list(self.spacing), "affine": self.affine, "time_index": self.time_index}
