"""Split items of any size into equal patches and stitch them back (COIN++ §4.2.3).

A base network is meta-learned on fixed-size patches; a larger item is reflect-padded at the end
of every spatial axis to a multiple of the patch size, cut into non-overlapping patches, encoded
patch by patch, and reassembled. Works for any number of spatial axes (images, volumes, audio)
with an optional trailing channel axis.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PatchGrid", "pad_to_grid", "to_patches", "from_patches"]


class PatchGrid:
    """Geometry of an item ``shape`` (spatial axes only) cut into patches of ``patch``."""

    def __init__(self, shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
        if len(shape) != len(patch):
            raise ValueError(f"item has {len(shape)} spatial axes, patches have {len(patch)}")
        if min(shape) < 1 or min(patch) < 1:
            raise ValueError(f"shapes must be positive, got item {shape} and patch {patch}")
        self.shape, self.patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
        self.counts = tuple(math.ceil(s / p) for s, p in zip(self.shape, self.patch))
        self.padded = tuple(c * p for c, p in zip(self.counts, self.patch))

    @property
    def num_patches(self) -> int:
        return math.prod(self.counts)


def pad_to_grid(item: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``item (*shape[, C])`` reflect-padded at the end of every spatial axis to ``grid.padded``."""
    return _pad(item, grid)


def _pad(item: np.ndarray, grid: PatchGrid) -> np.ndarray:
    pad = [(0, p - s) for s, p in zip(grid.shape, grid.padded)] + [(0, 0)] * (item.ndim - len(grid.shape))
    if not any(after for _, after in pad):
        return item
    # reflect needs at least 2 samples along an axis; a single sample is repeated instead
    mode = "reflect" if min(grid.shape) > 1 else "edge"
    return np.pad(item, pad, mode=mode)


def to_patches(item: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, PatchGrid]:
    """``item (*shape[, C])`` -> patches ``(P, *patch[, C])`` in row-major patch order, and the grid."""
    k = len(patch)
    grid = PatchGrid(item.shape[:k], patch)
    x = _pad(item, grid)
    rest = x.shape[k:]
    split = [d for c, p in zip(grid.counts, grid.patch) for d in (c, p)]  # (c0, p0, c1, p1, ...)
    x = x.reshape(*split, *rest)
    order = [2 * i for i in range(k)] + [2 * i + 1 for i in range(k)] + list(range(2 * k, 2 * k + len(rest)))
    return np.ascontiguousarray(x.transpose(order)).reshape(grid.num_patches, *grid.patch, *rest), grid


def from_patches(patches: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Inverse of :func:`to_patches`: ``(P, *patch[, C])`` -> ``(*shape[, C])`` (padding cropped)."""
    k = len(grid.patch)
    if patches.shape[0] != grid.num_patches or tuple(patches.shape[1:1 + k]) != grid.patch:
        raise ValueError(f"expected ({grid.num_patches}, *{grid.patch}) patches, got {patches.shape}")
    rest = patches.shape[1 + k:]
    x = patches.reshape(*grid.counts, *grid.patch, *rest)
    order = [d for i in range(k) for d in (i, k + i)] + list(range(2 * k, 2 * k + len(rest)))
    x = x.transpose(order).reshape(*grid.padded, *rest)
    return np.ascontiguousarray(x[tuple(slice(0, s) for s in grid.shape)])
