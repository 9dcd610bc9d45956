"""A lazy array made of several memory-mapped ``.npy`` shards concatenated along axis 0.

A :class:`ShardedArray` over shards of shapes ``(n_0, *item)``, ``(n_1, *item)``, ... (one dtype) behaves
like the array ``np.concatenate(shards)`` of shape ``(sum n_k, *item)`` without ever building it: indexing
with an integer, a slice or a 1-D integer index array reads only the requested items (from the
memory maps) and returns them as a new in-memory ``ndarray``, so reading a batch costs O(batch) memory.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ShardedArray"]


class ShardedArray:
    """Concatenation of array shards along axis 0, read lazily.

    Args:
        shards: arrays (typically ``np.memmap``) with the same ``shape[1:]`` and dtype; at least one.
            Empty shards are allowed. The shards are kept, never copied.
    """

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        if not shards:
            raise ValueError("ShardedArray needs at least one shard")
        first = shards[0]
        if first.ndim < 1:
            raise ValueError(f"shards need a leading item axis, got shape {first.shape}")
        for k, s in enumerate(shards):
            if s.shape[1:] != first.shape[1:] or s.dtype != first.dtype:
                raise ValueError(
                    f"shard {k} is {s.dtype} {s.shape}, expected {first.dtype} items of shape {first.shape[1:]}"
                )
        self.shards: tuple[np.ndarray, ...] = tuple(shards)
        sizes = np.array([s.shape[0] for s in self.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._n = int(sizes.sum())

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *(int(d) for d in self.shards[0].shape[1:]))

    @property
    def dtype(self) -> np.dtype:
        return self.shards[0].dtype

    @property
    def ndim(self) -> int:
        return self.shards[0].ndim

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"

    def __getitem__(self, index: Any) -> np.ndarray:
        """``self[i]`` -> one item ``(*item)``; ``self[a:b:c]`` or ``self[idx]`` (1-D integers) -> ``(k, *item)``."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            if step == 1:
                return self._read_range(start, max(start, stop))
            return self._gather(np.arange(start, stop, step, dtype=np.int64))
        if isinstance(index, (bool, np.bool_, tuple)):
            raise TypeError(f"ShardedArray indexes items (axis 0) only, not a {type(index).__name__}; index the result")
        try:
            i = operator.index(index)
        except TypeError:
            return self._gather(np.asarray(index))
        if not -self._n <= i < self._n:
            raise IndexError(f"index {i} is out of bounds for {self._n} items")
        i %= self._n
        k = self._shard_of(np.array([i]))[0]
        return np.array(self.shards[k][i - self._starts[k]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Materialise everything (O(dataset) memory): only when explicitly asked, e.g. ``np.asarray``."""
        if copy is False:
            raise ValueError("a ShardedArray cannot be turned into an ndarray without copying")
        out = self._read_range(0, self._n)
        return out if dtype is None else out.astype(dtype, copy=False)

    def range(self, start: int, stop: int) -> "ShardedArray":
        """A lazy view of items ``[start, stop)`` (``0 <= start <= stop <= len``): slices of the shards, no reading."""
        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"range [{start}, {stop}) is not within [0, {self._n}]")
        parts = [
            s[max(start - a, 0) : min(stop - a, s.shape[0])]
            for s, a in zip(self.shards, self._starts.tolist())
            if a < stop and a + s.shape[0] > start
        ]
        return ShardedArray(parts or [self.shards[0][:0]])

    # ------------------------------------------------------------------------------------- reading

    def _shard_of(self, idx: np.ndarray) -> np.ndarray:
        # the last shard starting at or before idx: skips empty shards, which share their start
        return np.searchsorted(self._starts, idx, side="right") - 1

    def _empty(self, n: int) -> np.ndarray:
        return np.empty((n, *self.shape[1:]), dtype=self.dtype)

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        out = self._empty(stop - start)
        for s, a in zip(self.shards, self._starts.tolist()):
            lo, hi = max(start, a), min(stop, a + s.shape[0])
            if lo < hi:
                out[lo - start : hi - start] = s[lo - a : hi - a]
        return out

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(
                f"ShardedArray indices must be an int, a slice or a 1-D integer array, got {idx.dtype} {idx.shape}"
            )
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            bad = idx[(idx < -self._n) | (idx >= self._n)][0]
            raise IndexError(f"index {bad} is out of bounds for {self._n} items")
        idx = np.where(idx < 0, idx + self._n, idx)
        out = self._empty(idx.size)
        which = self._shard_of(idx)
        for k in np.unique(which).tolist():
            pos = np.flatnonzero(which == k)
            out[pos] = self.shards[k][idx[pos] - self._starts[k]]
        return out
