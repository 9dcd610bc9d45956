"""Data parallelism under ``torchrun``: the process group, and the few collectives training needs.

``torchrun --nproc-per-node N -m functa fit ...`` starts ``N`` processes with ``RANK``, ``WORLD_SIZE``
and a rendezvous in their environment; :func:`init_from_env` joins them into one process group (gloo
on the CPU, NCCL on CUDA, one GPU per local rank). Every rank draws the same global batch from
``(seed, step)`` and computes its contiguous share of the items; :func:`all_reduce_mean_` averages
the gradients, so the update is that of one process on the whole batch (to float rounding).
Decisions that must agree (a non-finite loss, the time limit, divergence) are made on values every
rank holds after a collective (:func:`mean`, :func:`any_rank`, :func:`broadcast`).

In a single process (no ``torchrun``, or ``WORLD_SIZE=1``) every function is a cheap no-op.
Collectives exchange plain tensors only (no pickled objects).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean_", "any_rank", "average_gradients", "barrier", "broadcast", "close", "init_from_env", "is_main", "mean",
           "rank", "shard", "world_size"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE > 1``); returns
    whether this process is one of several. ``device`` ``cuda``/``auto`` with CUDA: NCCL and the GPU
    ``LOCAL_RANK``; else gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        want = str(device or "auto")
        cuda = torch.cuda.is_available() and (want == "auto" or want.startswith("cuda"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _scalar(value: float | int, dtype: torch.dtype) -> Tensor:
    """A one-element tensor where the backend can reduce it (NCCL: the current GPU)."""
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor([value], dtype=dtype, device=device)


def close() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that saves, evaluates and shows progress."""
    return rank() == 0


def shard(count: int) -> slice:
    """This rank's contiguous share of ``count`` items (``count`` must divide evenly)."""
    size = world_size()
    if count % size:
        raise ValueError(f"a batch of {count} items cannot be split evenly across {size} processes; "
                         f"use a batch size that is a multiple of {size}")
    per = count // size
    return slice(rank() * per, (rank() + 1) * per)


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in one collective on a flat buffer."""
    if not _active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    start = 0
    for t in tensors:
        t.copy_(flat[start:start + t.numel()].view_as(t))
        start += t.numel()


def average_gradients(params: list[Tensor]) -> None:
    """Average the gradients of ``params`` over the ranks (a missing gradient counts as zeros)."""
    if not _active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params])


def mean(value: float) -> float:
    """The mean of a float over the ranks (every rank gets the same value; NaN if any rank has NaN)."""
    if not _active():
        return value
    t = _scalar(value, torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (the same answer everywhere)."""
    if not _active():
        return flag
    t = _scalar(1 if flag else 0, torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(value: float) -> float:
    """Rank 0's float on every rank."""
    if not _active():
        return value
    t = _scalar(value, torch.float64)
    dist.broadcast(t, 0)
    return float(t)


def barrier() -> None:
    if _active():
        dist.barrier()
