"""Dataset container shared by every loader in :mod:`functa.data`.

An :class:`ArrayDataset` holds the whole dataset as one array of items along axis 0:

* images: ``data`` has shape ``(M, H, W, C)``, dtype ``uint8``, ``C`` in ``{1, 3}``;
* fields (lat-lon grids): ``data`` has shape ``(M, H, W)``, dtype ``float32``, physical units;
* voxels (occupancy grids): ``data`` has shape ``(M, X, Y, Z)``, dtype ``uint8``, values in ``{0, 1}``;
* arrays (generic data for user-defined modalities): ``data`` has shape ``(M, ...)``, any numeric dtype.

``data`` is an in-memory ``ndarray`` or a lazy array (larger than memory): a
:class:`~functa.data.shards.ShardedArray` (what the ``npy`` / ``npy-shards`` loaders give: items read from
the files with positional reads, nothing memory-mapped) or a read-only ``np.memmap`` made by the caller.
Lazy data is never materialised as a whole: ``dataset[i]``, ``take`` and ``subset`` read only the items asked
for and return in-memory arrays.

``labels`` is ``(M,)`` ``int64`` or ``None``; ``meta`` is a JSON-serialisable dict describing the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.utils.data

from ..errors import DataError
from .shards import ShardedArray

__all__ = ["ArrayDataset", "DataError", "concat_datasets"]




@dataclass(eq=False)
class ArrayDataset(torch.utils.data.Dataset):
    """A dataset of items along axis 0 of ``data`` (in memory or lazy, see the module docstring).

    Attributes:
        data: ``(M, H, W, C)`` uint8 images, ``(M, H, W)`` float32 fields, ``(M, X, Y, Z)`` uint8 voxels or
            ``(M, ...)`` arrays; an ``ndarray``, a :class:`ShardedArray` or an ``np.memmap``.
        labels: ``(M,)`` int64 class ids, or ``None`` when the source has no labels.
        meta: JSON-serialisable description (``source``, ``format``, ``kind``, ``split``, ...).
    """

    data: np.ndarray | ShardedArray
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lazy:
            self.data = np.asarray(self.data)
        if self.data.ndim < 1:
            raise ValueError(f"ArrayDataset.data must have a leading item axis, got shape {self.data.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (self.data.shape[0],):
                raise ValueError(
                    f"ArrayDataset.labels must have shape ({self.data.shape[0]},), got {self.labels.shape}"
                )

    @property
    def lazy(self) -> bool:
        """Whether ``data`` is read on demand (a :class:`ShardedArray` or a memory map)."""
        return isinstance(self.data, (np.memmap, ShardedArray))

    def _read(self, index: Any) -> np.ndarray:
        """``data[index]`` as an in-memory array (items read from a memory map are copied out of it)."""
        out = self.data[index]
        return np.array(out) if isinstance(out, np.memmap) else out

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """Return ``(item, label)``; item is ``data.shape[1:]`` (e.g. ``(H, W, C)``), label is -1 without labels."""
        item = self._read(i)
        label = -1 if self.labels is None else int(self.labels[i])
        return item, label

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Batch of items by fancy indexing: ``(len(indices), *data.shape[1:])``, in memory."""
        return self._read(np.asarray(indices, dtype=np.int64))

    def subset(self, indices: Any) -> "ArrayDataset":
        """A new dataset with the items at ``indices`` (an index array or a slice), in that order.

        The subset of lazy data holds the selected items in memory (read from the source, nothing else)."""
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        labels = None if self.labels is None else self.labels[idx]
        return ArrayDataset(self._read(idx), labels, dict(self.meta))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item: ``(H, W, C)`` for images, ``(H, W)`` for fields, ``(X, Y, Z)`` for voxels."""
        return tuple(int(s) for s in self.data.shape[1:])

    def __repr__(self) -> str:
        fmt = self.meta.get("format", "?")
        split = self.meta.get("split", "?")
        return (
            f"ArrayDataset(n={len(self)}, item_shape={self.shape}, dtype={self.data.dtype}, "
            f"labels={'yes' if self.labels is not None else 'no'}, format={fmt!r}, split={split!r})"
        )


def concat_datasets(parts: list[ArrayDataset], meta: dict[str, Any]) -> ArrayDataset:
    """Concatenate datasets with identical item shapes along the item axis (labels kept only if all have them).

    The result is in memory (lazy parts are read)."""
    if not parts:
        raise ValueError("concat_datasets needs at least one dataset")
    shapes = {p.data.shape[1:] for p in parts}
    if len(shapes) != 1:
        raise DataError(f"{meta.get('source', '?')}: cannot combine splits with item shapes {sorted(shapes)}")
    data = np.concatenate([p.data for p in parts], axis=0)
    if all(p.labels is not None for p in parts):
        labels = np.concatenate([p.labels for p in parts], axis=0)  # type: ignore[misc]
    else:
        labels = None
    return ArrayDataset(data, labels, meta)
