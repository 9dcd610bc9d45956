"""A lazy array made of several array shards concatenated along axis 0, read with positional file reads.

A :class:`ShardedArray` over shards of shapes ``(n_0, *item)``, ``(n_1, *item)``, ... (one dtype) behaves
like the array ``np.concatenate(shards)`` of shape ``(sum n_k, *item)`` without ever building it: indexing
with an integer, a slice or a 1-D integer index array reads only the requested items and returns them as a
new in-memory ``ndarray``, so reading a batch costs O(batch) memory.

A shard is either an :class:`NpyShard` -- items stored in C order at a byte offset of a file (the data of a
``.npy`` file, as the loaders in :mod:`functa.data.arrays` give) -- or an array kept as it is (in memory,
or an ``np.memmap`` the caller made). File shards are read with ``os.preadv`` straight into the output array,
one read per run of consecutive indices; nothing is memory-mapped, so the file pages read stay in the
kernel's page cache and never count towards the process's resident set size (``ru_maxrss``, ``RssFile``):
the memory of reading is bounded by the batch, not by the number of distinct items ever read.

File descriptors: the files are opened read-only on first use and kept in one small process-wide LRU cache
(at most 64 descriptors, fewer under a low ``RLIMIT_NOFILE``: an eighth of the soft limit); a read holds at
most one descriptor at a time, so any number of shards can be read. The descriptors of an array's files are
closed when it is garbage-collected (unless another array is reading them) and when the cache evicts them;
when opening fails with "too many open files" the idle cached descriptors are closed and the open retried.
A forked child (e.g. a ``DataLoader`` worker) can go on reading with the inherited descriptors: positional
reads do not share a file position. Arrays of file shards pickle as their shard descriptions.

Files that change after opening are read as they are at the time of each read, without re-checking the
header: a shard rewritten in place shows its new bytes; a file replaced by renaming another over it may be
read from its old version while its descriptor stays cached; a file that became shorter than its items
raises :class:`~functa.data.dataset.DataError` naming it.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

import numpy as np

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["NpyShard", "ShardedArray"]

_MAX_CACHED_FDS = 64


@dataclass(frozen=True)
class NpyShard:
    """``count`` items of shape ``item_shape`` and dtype ``dtype``, in C order, from byte ``offset`` of ``path``.

    For a ``.npy`` file ``offset`` is the header size and ``count`` the leading dimension. Nothing is
    opened or checked here: the loaders validate the header and the file size. ``path`` is made absolute,
    so that changing the working directory later does not matter.
    """

    path: str
    offset: int
    count: int
    item_shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "path", os.path.abspath(os.fspath(self.path)))
        set_(self, "offset", operator.index(self.offset))
        set_(self, "count", operator.index(self.count))
        set_(self, "item_shape", tuple(operator.index(d) for d in self.item_shape))
        set_(self, "dtype", np.dtype(self.dtype))
        if self.offset < 0 or self.count < 0 or any(d < 0 for d in self.item_shape):
            raise ValueError(f"{self.path}: negative offset, count or item dimension in {self}")
        if self.dtype.hasobject:
            raise ValueError(f"{self.path}: dtype {self.dtype} holds Python objects, which cannot be read from a file")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def item_nbytes(self) -> int:
        return math.prod(self.item_shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.count

    def range(self, start: int, stop: int) -> "NpyShard":
        """Items ``[start, stop)`` of this shard (``0 <= start <= stop <= count``)."""
        if not 0 <= start <= stop <= self.count:
            raise IndexError(f"range [{start}, {stop}) is not within [0, {self.count}]")
        return replace(self, offset=self.offset + start * self.item_nbytes, count=stop - start)

    def view(self, dtype: Any) -> "NpyShard":
        """The same bytes as items of another dtype of the same size (e.g. bool as uint8)."""
        dtype = np.dtype(dtype)
        if dtype.itemsize != self.dtype.itemsize:
            raise ValueError(f"cannot view {self.dtype} items as {dtype}: the sizes differ")
        return replace(self, dtype=dtype)


Shard = Union[np.ndarray, NpyShard]


# ------------------------------------------------------------------------------------ descriptors


def _fd_capacity() -> int:
    soft = -1
    if resource is not None:
        try:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError):
            soft = -1
    if soft < 0 or (resource is not None and soft == resource.RLIM_INFINITY):
        return _MAX_CACHED_FDS
    return max(1, min(_MAX_CACHED_FDS, soft // 8))


class _FdCache:
    """Process-wide LRU of read-only descriptors, by path; only descriptors no read is using are closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: OrderedDict[str, list[int]] = OrderedDict()  # path -> [fd, reads using it]
        self._pending: list[Sequence[str]] = []  # paths to discard, queued while the lock was busy
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # the child has no other threads: nothing is in use, and the lock may have been held at the fork
        self._lock = threading.Lock()
        for entry in self._fds.values():
            entry[1] = 0

    def acquire(self, path: str) -> int:
        """A descriptor of ``path`` for reading; give it back with :meth:`release`."""
        with self._lock:
            self._drain()
            entry = self._fds.get(path)
            if entry is not None:
                entry[1] += 1
                self._fds.move_to_end(path)
                return entry[0]
        fd = self._open(path)
        with self._lock:
            if path not in self._fds:  # (else another thread cached one meanwhile: ours stays uncached)
                capacity = _fd_capacity()
                self._trim(capacity - 1)
                if len(self._fds) < capacity:
                    self._fds[path] = [fd, 1]
        return fd

    def release(self, path: str, fd: int) -> None:
        with self._lock:
            entry = self._fds.get(path)
            if entry is not None and entry[0] == fd:
                entry[1] -= 1
                self._drain()
                return
        os.close(fd)  # not cached

    def discard(self, paths: Sequence[str]) -> None:
        """Close the idle descriptors of ``paths`` (those in use stay until evicted).

        Called by garbage collection, which may run inside a locked section of this very thread: then (or
        while another thread holds the lock) the paths are queued for the next :meth:`acquire` or
        :meth:`release` instead of waiting for the lock.
        """
        self._pending.append(paths)
        if self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    def _drain(self) -> None:
        """Discard the queued paths (lock held)."""
        while self._pending:
            for p in self._pending.pop():
                entry = self._fds.get(p)
                if entry is not None and entry[1] == 0:
                    del self._fds[p]
                    os.close(entry[0])

    def _trim(self, size: int) -> None:
        """Close idle descriptors, least recently used first, until at most ``size`` are cached (lock held)."""
        excess = len(self._fds) - max(size, 0)
        if excess <= 0:
            return
        idle = [p for p, (_, users) in self._fds.items() if users == 0][:excess]
        for p in idle:
            os.close(self._fds.pop(p)[0])

    def _open(self, path: str) -> int:
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(path, flags)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        with self._lock:
            self._trim(0)
        return os.open(path, flags)

    def __len__(self) -> int:
        return len(self._fds)


_FDS = _FdCache()


def _data_error(message: str) -> Exception:
    from .dataset import DataError  # dataset.py imports this module

    return DataError(message)


def _pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill ``buf`` (bytes) from ``offset`` of the open file ``fd``, refusing a file that ends too soon."""
    while len(buf):
        got = os.preadv(fd, [buf], offset) if _HAS_PREADV else _pread_copy(fd, buf, offset)
        if got == 0:
            raise _data_error(
                f"{path}: the file ends at byte {offset}, before the {len(buf)} more bytes of items expected there "
                "(truncated or rewritten since it was opened?)"
            )
        buf, offset = buf[got:], offset + got


def _pread_copy(fd: int, buf: memoryview, offset: int) -> int:  # pragma: no cover - platforms without preadv
    data = os.pread(fd, len(buf), offset)
    buf[: len(data)] = data
    return len(data)


_HAS_PREADV = hasattr(os, "preadv")


def _read_file_runs(shard: NpyShard, flat: memoryview, lo: list[int], count: list[int], pos: list[int]) -> None:
    """``flat`` (the output's bytes) at items ``pos[j] ..`` <- ``count[j]`` items of ``shard`` from ``lo[j]``."""
    b = shard.item_nbytes
    try:
        fd = _FDS.acquire(shard.path)
    except OSError as e:
        raise _data_error(f"{shard.path}: cannot open ({e.strerror or e})") from e
    try:
        for l, c, p in zip(lo, count, pos):
            _pread_into(fd, flat[p * b : (p + c) * b], shard.offset + l * b, shard.path)
    except OSError as e:
        raise _data_error(f"{shard.path}: cannot read ({e.strerror or e})") from e
    finally:
        _FDS.release(shard.path, fd)


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    before = np.cumsum(counts) - counts
    return np.repeat(starts - before, counts) + np.arange(int(counts.sum()), dtype=np.int64)


# ------------------------------------------------------------------------------------ the array


class ShardedArray:
    """Concatenation of array shards along axis 0, read lazily.

    Args:
        shards: :class:`NpyShard` file descriptions and/or arrays, with the same ``shape[1:]`` and dtype; at
            least one. Empty shards are allowed. Arrays are kept, never copied (an ``np.memmap`` shard is
            read through its memory map: use :class:`NpyShard` for reads that do not map the file).
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not len(shards):
            raise ValueError("ShardedArray needs at least one shard")
        parts = tuple(s if isinstance(s, NpyShard) else np.asanyarray(s) for s in shards)
        first = parts[0]
        if first.ndim < 1:
            raise ValueError(f"shards need a leading item axis, got shape {first.shape}")
        for k, s in enumerate(parts):
            if s.shape[1:] != first.shape[1:] or s.dtype != first.dtype:
                raise ValueError(
                    f"shard {k} is {s.dtype} {s.shape}, expected {first.dtype} items of shape {first.shape[1:]}"
                )
        self.shards: tuple[Shard, ...] = parts
        sizes = np.array([s.shape[0] for s in parts], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._n = int(sizes.sum())
        paths = tuple({s.path for s in parts if isinstance(s, NpyShard)})
        if paths:
            weakref.finalize(self, _FDS.discard, paths).atexit = False

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.shards,)

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
        return self._read_range(i, i + 1)[0, ...]

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
            _sub(s, max(start - a, 0), min(stop - a, s.shape[0]))
            for s, a in zip(self.shards, self._starts.tolist())
            if a < stop and a + s.shape[0] > start
        ]
        return ShardedArray(parts or [_sub(self.shards[0], 0, 0)])

    # ------------------------------------------------------------------------------------- reading

    def _shard_of(self, idx: np.ndarray) -> np.ndarray:
        # the last shard starting at or before idx: skips empty shards, which share their start
        return np.searchsorted(self._starts, idx, side="right") - 1

    def _empty(self, n: int) -> np.ndarray:
        return np.empty((n, *self.shape[1:]), dtype=self.dtype)

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        runs = []
        for k, (s, a) in enumerate(zip(self.shards, self._starts.tolist())):
            lo, hi = max(start, a), min(stop, a + s.shape[0])
            if lo < hi:
                runs.append((k, lo - a, hi - lo, lo - start))
        out = self._empty(stop - start)
        if runs:
            self._fill(out, *(np.array(col, dtype=np.int64) for col in zip(*runs)))
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
        if idx.size:
            which = self._shard_of(idx)
            # runs of consecutive items of one shard, each read at once
            first = np.flatnonzero(np.concatenate([[True], (np.diff(idx) != 1) | (np.diff(which) != 0)]))
            count = np.diff(np.append(first, idx.size))
            k = which[first]
            self._fill(out, k, idx[first] - self._starts[k], count, first)
        return out

    def _fill(self, out: np.ndarray, k: np.ndarray, lo: np.ndarray, count: np.ndarray, pos: np.ndarray) -> None:
        """``out[pos[j] : pos[j] + count[j]] = shards[k[j]][lo[j] : lo[j] + count[j]]`` for every run ``j``."""
        if out.size == 0:
            return
        flat = memoryview(out.reshape(-1).view(np.uint8))
        order = np.argsort(k, kind="stable")  # each shard's runs together: one descriptor at a time
        k, lo, count, pos = k[order], lo[order], count[order], pos[order]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), k.size]):
            s = self.shards[int(k[a])]
            if isinstance(s, NpyShard):
                _read_file_runs(s, flat, lo[a:b].tolist(), count[a:b].tolist(), pos[a:b].tolist())
            elif b - a == 1:
                p, l, c = int(pos[a]), int(lo[a]), int(count[a])
                out[p : p + c] = s[l : l + c]
            else:
                out[_expand(pos[a:b], count[a:b])] = s[_expand(lo[a:b], count[a:b])]


def _sub(s: Shard, lo: int, hi: int) -> Shard:
    return s.range(lo, hi) if isinstance(s, NpyShard) else s[lo:hi]
