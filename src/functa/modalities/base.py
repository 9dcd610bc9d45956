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

__all__ = ["Modality", "FieldDataset", "register_modality", "get_modality", "modality_from_config",
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
