"""The modality protocol, its defaults, the registry, and the batch sources built on a modality.

A modality turns data items into coordinates and features and back, names its loss and its
reconstruction metrics, reports file-level quality, renders fields to files and reads and writes
single items. Everything that depends on the kind of data comes from the modality class: the
trainer, the codec and the command line look modalities up in the registry (container codes,
detection from a dataset, CLI choices, augmentations, metrics), so adding a modality is one module
with a class implementing :class:`Modality` (usually by subclassing :class:`ModalityBase`),
registered with :func:`register_modality`. The trainer never imports a modality: it sees a
:class:`FieldDataset` or :class:`PatchDataset` (a :class:`~functa.fitting.BatchSource`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..fitting import Batch, Metrics, PsnrMetrics, predict
from .masks import grid_mask

__all__ = ["Augmentation", "Modality", "ModalityBase", "FieldDataset", "PatchDataset", "register_modality",
           "get_modality", "modality_from_config", "available_modalities", "detect_modality", "modality_by_code",
           "grid_centres"]


@runtime_checkable
class Augmentation(Protocol):
    """Random transformations of data items for encoding augmented copies of a dataset.

    ``parameters(count, copy)`` draws the per-item choices of dataset copy ``copy`` up front (so
    they do not depend on batching, and an interrupted encoding resumes identically);
    ``apply(items, params)`` transforms a batch of items in data units with its rows of them.
    """

    def parameters(self, count: int, copy: int) -> np.ndarray: ...

    def apply(self, items: np.ndarray, params: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Modality(Protocol):
    """Protocol of a data modality (image, sphere, voxel, ...).

    ``shape`` arguments are the spatial grid (e.g. ``(H, W)``); ``None`` means the native grid of
    the dataset the modality was built from. Class attributes: ``name`` (registry key), ``code``
    (1-255, the ``.fta`` container's modality byte; 1-63 are reserved for the library's own),
    ``default_loss`` (a :func:`functa.fitting.get_loss` name).
    """

    name: ClassVar[str]
    code: ClassVar[int]
    default_loss: ClassVar[str]
    in_dim: int
    out_channels: int
    shape: tuple[int, ...]

    @classmethod
    def from_dataset(cls, dataset: Any) -> "Modality":
        """Build from an :class:`~functa.data.ArrayDataset` (statistics from its items)."""
        ...

    @classmethod
    def detect(cls, dataset: Any) -> bool:
        """Whether a dataset (as loaded by :func:`functa.data.load_dataset`) is of this modality."""
        ...

    @classmethod
    def normalise_items(cls, dataset: Any) -> Any:
        """``data.normalisation = "item"``: the dataset with every item scaled by its own statistics and
        ``meta["normalisation"] = "item"`` (which :meth:`from_dataset` then records in the modality)."""
        ...

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        """Coordinates of a grid, flattened: ``(N, in_dim)`` with ``N = prod(shape)``."""
        ...

    def coordinate_box(self) -> tuple[float, float] | None:
        """``(lo, hi)``: every coordinate of every grid lies in ``[lo, hi]`` along each axis (GASP maps
        this box to ``[-1, 1]``); ``None`` where items are not point clouds (scenes: rays)."""
        ...

    def to_features(self, items: np.ndarray) -> Tensor:
        """Data items ``(B, *shape[, C])`` in data units -> features ``(B, N, C)``."""
        ...

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Predicted features ``(B, N, C)`` -> items ``(B, *shape[, C])`` in data units."""
        ...

    def reconstruction_metrics(self) -> Metrics:
        """The headline metrics reported after every inner step (PSNR, voxel accuracy, ...)."""
        ...

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """More per-item metrics ``(B,)`` on features ``(B, N, C)``, reported for the final step."""
        ...

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        """Quality of a decoded item against the original, both in data units (compress / RD)."""
        ...

    def make_augmentation(self, kinds: tuple[str, ...], seed: int = 0, **options: Any) -> Augmentation:
        """The augmentation ``kinds`` of this modality (``ValueError`` for unknown kinds)."""
        ...

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        """Observed points for imputation: bool ``(1|B, N)`` for features ``(B, N, C)``."""
        ...

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """Write items ``(B, *shape[, C])`` (data units) as viewable files (the first path of each item
        is a PNG); returns those paths."""
        ...

    def read_item(self, path: Path) -> np.ndarray:
        """One item from a file, of any size along the spatial axes: ``(*size[, C])`` in data units.
        Raises :class:`~functa.data.DataError` naming the file for unreadable or unsuitable input."""
        ...

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write one item ``(*size[, C])`` in data units to ``path`` (atomically; format from the suffix)."""
        ...

    def to_config(self) -> dict:
        """JSON-serialisable description (``name`` included) that :func:`modality_from_config` reads."""
        ...

    def rate(self, num_bytes: int, shape: tuple[int, ...]) -> float:
        """The compression rate of ``num_bytes`` for an item of ``shape`` ``(*size[, C])``, in the unit
        ``rate_unit`` names (a class attribute: bits per pixel, kbps, ...)."""
        ...

    def with_shape(self, shape: tuple[int, ...]) -> "Modality":
        """The same modality on another grid (the patch size of a base network trained on crops).
        Raises ``ValueError`` where items cannot be cut into patches."""
        ...

    def render_values(self, field: Any, latents: Tensor, loss: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """What latents ``(B, *latent_shape)`` look like, in data units, as :meth:`save` writes them: the
        field on the grid ``shape`` (default: the native grid); for scenes, views rendered from cameras."""
        ...

    def sources(self, train: Any, val: Any, *, patches: bool, seed: int) -> tuple[Any, Any]:
        """The meta-learner's training and validation :class:`~functa.fitting.BatchSource` of two datasets
        (``patches``: random crops of the modality's grid, ``data.patch``)."""
        ...

    def encode_source(self, dataset: Any, seed: int = 0) -> Any:
        """The :class:`~functa.fitting.BatchSource` whose ``batch(indices)`` the encoder fits."""
        ...


class ModalityBase:
    """Defaults for the optional parts of :class:`Modality`: MSE and PSNR, no detection, no
    augmentations, RMSE in data units for :meth:`compare`, half / random / box masks on 2-D grids."""

    default_loss: ClassVar[str] = "mse"
    unobserved_fill: ClassVar[float] = 0.5  # feature value that shows unobserved points in imputation panels

    dataset_kind: ClassVar[str | None] = None  # the loaders' ``meta["kind"]`` this modality claims
    field_defaults: ClassVar[dict[str, Any]] = {}  # base network settings under the run's [field] (e.g. w0)
    rate_unit: ClassVar[str] = "bits per point"  # what :meth:`rate` returns
    rate_targets: ClassVar[tuple[float, ...]] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # codec-bench baselines

    def coordinate_box(self) -> tuple[float, float] | None:
        return (0.0, 1.0)  # the functa convention: coordinates in [0, 1]

    @classmethod
    def detect(cls, dataset: Any) -> bool:
        return cls.dataset_kind is not None and dataset.meta.get("kind") == cls.dataset_kind

    @classmethod
    def normalise_items(cls, dataset: Any) -> Any:
        raise ConfigError(f"the {cls.name} modality has no per-item normalisation (data.normalisation = 'item' is "
                          "for audio and volumes)")

    def reconstruction_metrics(self) -> Metrics:
        return PsnrMetrics()

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {}

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        diff = np.asarray(reconstruction, np.float64) - np.asarray(item, np.float64)
        return {"rmse": float(np.sqrt(np.mean(diff**2)))}

    def rate(self, num_bytes: int, shape: tuple[int, ...]) -> float:
        """Bits per grid point, ``8 * num_bytes / prod(size)`` (channels are not counted, as COIN++ does)."""
        return 8.0 * num_bytes / float(np.prod(shape[:len(self.shape)]))

    def make_augmentation(self, kinds: tuple[str, ...], seed: int = 0, **options: Any) -> Augmentation:
        raise ValueError(f"the {self.name} modality has no augmentations (asked for {', '.join(kinds)})")

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        return torch.from_numpy(grid_mask(tuple(self.shape), kind, fraction, seed))[None]

    def render_values(self, field: Any, latents: Tensor, loss: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The field's predictions on ``shape`` (default: the native grid) as items in data units."""
        shape = tuple(shape) if shape else tuple(self.shape)
        return self.from_features(predict(field, self.coordinates(shape)[None], latents, loss=loss), shape)

    def sources(self, train: Any, val: Any, *, patches: bool, seed: int) -> tuple[Any, Any]:
        """Whole items on the modality's grid, or random crops of it (``data.patch``)."""
        if not patches:
            return FieldDataset(train, self), FieldDataset(val, self)
        return PatchDataset(train, self, seed=seed), PatchDataset(val, self, crops_per_item=1, seed=seed + 1)

    def encode_source(self, dataset: Any, seed: int = 0) -> Any:
        return FieldDataset(dataset, self)


_REGISTRY: dict[str, type] = {}


def register_modality(cls: type) -> type:
    """Class decorator adding a modality to the registry under ``cls.name`` (its ``code`` must be
    unique: it identifies the modality in ``.fta`` files)."""
    code = getattr(cls, "code", None)
    if not isinstance(code, int) or not 1 <= code <= 255:
        raise ValueError(f"modality {cls.__name__} needs an int class attribute 'code' in 1..255, got {code!r}")
    for other in _REGISTRY.values():
        if other.code == code and other.name != cls.name:
            raise ValueError(f"modality code {code} of {cls.name!r} is already used by {other.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def available_modalities() -> list[str]:
    return sorted(_REGISTRY)


def get_modality(name: str) -> type:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"unknown modality {str(name)[:40]!r}; available: {', '.join(available_modalities())}")
    return _REGISTRY[name]


def modality_by_code(code: int) -> type:
    """The registered modality class whose container code is ``code`` (``KeyError`` if none)."""
    for cls in _REGISTRY.values():
        if cls.code == code:
            return cls
    raise KeyError(code)


def detect_modality(dataset: Any) -> type:
    """The one registered modality whose :meth:`Modality.detect` accepts ``dataset``."""
    found = [cls for cls in _REGISTRY.values() if cls.detect(dataset)]
    source = dataset.meta.get("source", "dataset")
    if not found:
        raise ValueError(f"{source}: no modality recognises this data (items {dataset.shape}); pass one of "
                         f"{', '.join(available_modalities())} explicitly")
    if len(found) > 1:
        raise ValueError(f"{source}: the data fits the modalities {sorted(c.name for c in found)}; choose one explicitly")
    return found[0]


def modality_from_config(config: dict) -> Modality:
    """The modality a config (``to_config()``, e.g. from a ``config.json``) describes; a bad config
    raises :class:`~functa.errors.ConfigError` (callers reading a file name it)."""
    if not isinstance(config, dict):
        raise ConfigError(f"modality = {str(config)[:40]!r} is not a section (allowed: a table with a 'name')")
    config = dict(config)
    name = config.pop("name", None)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"modality.name = {str(name)[:40]!r} is invalid (allowed: one of {', '.join(available_modalities())})")
    cls = _REGISTRY[name]
    if is_dataclass(cls):
        valid = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ConfigError(f"unknown {name} modality settings {unknown[:5]}; valid: {sorted(valid)}")
    try:
        return cls(**config)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"invalid {name} modality config ({' '.join(str(e).split())[:200]})") from None


def grid_centres(n: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Centres of ``n`` equal cells of ``[lo, hi]``: ``lo + (i + 1/2)(hi - lo)/n`` (functa convention)."""
    return lo + (torch.arange(n, dtype=torch.float32) + 0.5) * ((hi - lo) / n)


@dataclass
class FieldDataset:
    """A dataset seen through a modality: the trainer's and encoder's batch source.

    ``coords`` ``(N, d)`` shared by every item; :meth:`features` gathers items by index (one
    fancy-indexing call) and converts them to ``(B, N, C)``; :meth:`batch` makes the
    :class:`~functa.fitting.Batch` ``x (1, N, d)``, ``y (B, N, C)``.
    """

    data: Any  # ArrayDataset
    modality: Modality

    def __post_init__(self) -> None:
        self.coords = self.modality.coordinates()
        self.num_points = int(self.coords.shape[0])
        item_shape = tuple(self.data.data.shape[1:1 + len(self.modality.shape)])
        if item_shape != tuple(self.modality.shape):
            raise ValueError(f"{self.data.meta.get('source', 'dataset')}: items have grid {item_shape}, the "
                             f"base network's modality expects {tuple(self.modality.shape)}")

    def __len__(self) -> int:
        return len(self.data)

    def features(self, indices: np.ndarray) -> Tensor:
        return self.modality.to_features(self.data.take(np.asarray(indices)))

    def batch(self, indices: np.ndarray) -> Batch:
        return Batch(self.coords[None], self.features(indices))

    def labels(self, indices: np.ndarray) -> np.ndarray:
        if self.data.labels is None:
            return np.full(len(indices), -1, dtype=np.int64)
        return np.asarray(self.data.labels)[np.asarray(indices)].astype(np.int64)


@dataclass
class PatchDataset:
    """Random crops of the modality's grid (the patch size) from larger items: a batch source for
    meta-learning on patches (COIN++ §4.2.3).

    Index ``i`` is crop number ``i % crops_per_item`` of item ``i // crops_per_item``; its offset is a
    hash of ``(seed, i)``, so a crop depends only on its index and a resumed run sees the same crops.
    ``len`` is ``items * crops_per_item``.
    """

    data: Any  # ArrayDataset
    modality: Modality
    crops_per_item: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        self.coords = self.modality.coordinates()
        self.num_points = int(self.coords.shape[0])
        self.patch = tuple(int(p) for p in self.modality.shape)
        self.item_shape = tuple(self.data.data.shape[1:1 + len(self.patch)])
        if any(s < p for s, p in zip(self.item_shape, self.patch)):
            raise ValueError(f"{self.data.meta.get('source', 'dataset')}: items of grid {self.item_shape} are smaller "
                             f"than the patches {self.patch}")
        if self.crops_per_item < 1:
            raise ValueError(f"crops_per_item must be >= 1, got {self.crops_per_item}")

    def __len__(self) -> int:
        return len(self.data) * self.crops_per_item

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """Crop origins ``(B, k)``: a SplitMix64 hash of ``(seed, index, axis)``, uniform per axis."""
        i = np.asarray(indices, dtype=np.uint64)[:, None]
        axis = np.arange(len(self.patch), dtype=np.uint64)[None, :]
        with np.errstate(over="ignore"):
            x = (np.uint64(self.seed) * np.uint64(0xD1B54A32D192ED03) + i * np.uint64(0x9E3779B97F4A7C15)
                 + axis * np.uint64(0xBF58476D1CE4E5B9))
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        room = np.array([s - p + 1 for s, p in zip(self.item_shape, self.patch)], dtype=np.uint64)
        return (x % room[None, :]).astype(np.int64)

    def crops(self, indices: np.ndarray) -> np.ndarray:
        """Crops ``(B, *patch[, C])`` in data units (one fancy-indexing gather)."""
        indices = np.asarray(indices, dtype=np.int64)
        items = self.data.take(indices // self.crops_per_item)
        start, k = self.offsets(indices), len(self.patch)
        index = [np.arange(len(indices)).reshape(-1, *([1] * k))]
        for a, p in enumerate(self.patch):
            shape = [1] * k
            shape[a] = p
            index.append(start[:, a].reshape(-1, *([1] * k)) + np.arange(p).reshape(shape))
        return items[tuple(index)]

    def features(self, indices: np.ndarray) -> Tensor:
        return self.modality.to_features(self.crops(indices))

    def batch(self, indices: np.ndarray) -> Batch:
        return Batch(self.coords[None], self.features(indices))
