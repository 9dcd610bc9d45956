"""The modality protocol and registry.

A modality turns data items into coordinates and features in ``[0, 1]`` and back, reports
modality-specific metrics and renders fields to files. The trainer never imports a modality: it
sees a :class:`FieldDataset` (coordinates ``(N, d)`` + feature batches ``(B, N, C)``).
Adding a modality = one module with a class implementing :class:`Modality`, registered with
:func:`register_modality`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["Modality", "FieldDataset", "PatchDataset", "register_modality", "get_modality", "modality_from_config",
           "available_modalities", "grid_centres"]


@runtime_checkable
class Modality(Protocol):
    """Protocol of a data modality (image, sphere, ...).

    ``shape`` arguments are the spatial grid (e.g. ``(H, W)``); ``None`` means the native grid of
    the dataset the modality was built from.
    """

    name: ClassVar[str]
    in_dim: int
    out_channels: int
    shape: tuple[int, ...]

    @classmethod
    def from_dataset(cls, dataset: Any) -> "Modality":
        """Build from an :class:`~functa.data.ArrayDataset` (statistics from its items)."""
        ...

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        """Coordinates of a grid, flattened: ``(N, in_dim)`` with ``N = prod(shape)``."""
        ...

    def to_features(self, items: np.ndarray) -> Tensor:
        """Data items ``(B, *shape[, C])`` in data units -> features ``(B, N, C)`` in ``[0, 1]``."""
        ...

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Features ``(B, N, C)`` -> items ``(B, *shape[, C])`` in data units (clipped to range)."""
        ...

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Per-item metrics ``(B,)`` beyond PSNR, computed on features ``(B, N, C)``."""
        ...

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """Write items ``(B, *shape[, C])`` (data units) as viewable files; returns the paths."""
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

    def with_shape(self, shape: tuple[int, ...]) -> "Modality":
        """The same modality on another grid (the patch size of a base network trained on crops).
        Raises ``ValueError`` where items cannot be cut into patches."""
        ...


_REGISTRY: dict[str, type] = {}


def register_modality(cls: type) -> type:
    """Class decorator adding a modality to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_modalities() -> list[str]:
    return sorted(_REGISTRY)


def get_modality(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; available: {', '.join(available_modalities())}") from None


def modality_from_config(config: dict) -> Modality:
    config = dict(config)
    cls = get_modality(config.pop("name"))
    return cls(**config)


def grid_centres(n: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Centres of ``n`` equal cells of ``[lo, hi]``: ``lo + (i + 1/2)(hi - lo)/n`` (functa convention)."""
    return lo + (torch.arange(n, dtype=torch.float32) + 0.5) * ((hi - lo) / n)


@dataclass
class FieldDataset:
    """A dataset seen through a modality: the trainer's and encoder's batch source.

    ``coords`` ``(N, d)``; :meth:`features` gathers items by index (one fancy-indexing call) and
    converts them to ``(B, N, C)``.
    """

    data: Any  # ArrayDataset
    modality: Modality

    def __post_init__(self) -> None:
        self.coords = self.modality.coordinates()
        item_shape = tuple(self.data.data.shape[1:1 + len(self.modality.shape)])
        if item_shape != tuple(self.modality.shape):
            raise ValueError(f"{self.data.meta.get('source', 'dataset')}: items have grid {item_shape}, the "
                             f"base network's modality expects {tuple(self.modality.shape)}")

    def __len__(self) -> int:
        return len(self.data)

    def features(self, indices: np.ndarray) -> Tensor:
        return self.modality.to_features(self.data.take(np.asarray(indices)))

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
