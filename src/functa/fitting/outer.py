"""Outer (meta-learning) objective: the loss after the inner loop, per item and for the batch."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .inner import InnerLoop, field_outputs
from .source import Batch

__all__ = ["OuterResult", "outer_loss", "OuterObjective", "tune_cpu_allocator"]

_ALLOCATOR_TUNED: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the process heap instead of returning them to the OS.

    PyTorch's CPU tensors come from glibc ``malloc``; blocks above the mmap threshold are
    ``munmap``-ed on free, so every new ``(B*N, W)`` activation page-faults all its pages again
    (measured: a 12.8 MB elementwise op takes 4 ms instead of 1 ms while the meta-learning graph is
    alive). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold lets the heap
    recycle them. Results are unchanged; only the peak resident memory is kept rather than returned.
    Idempotent; a no-op (returns False) outside glibc or with ``FUNCTA_NO_MALLOC_TUNING=1``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if not sys.platform.startswith("linux") or os.environ.get("FUNCTA_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        ok = False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


@dataclass
class OuterResult:
    """``loss``: scalar batch mean of the per-item losses ``item_loss (B,)``; ``latents (B, *latent_shape)``
    after the inner loop; ``outputs (B, N, C)``: what the loss saw (rendered field outputs)."""

    loss: Tensor
    item_loss: Tensor
    latents: Tensor
    outputs: Tensor


def outer_loss(field: nn.Module, inner: InnerLoop, batch: Batch, *, fast: bool | None = None) -> OuterResult:
    """Fit latents with ``inner`` and return the reconstruction loss to meta-learn from
    (functa Algorithm 1: the loss after the inner loop, on the same observations)."""
    latents = inner(field, batch, fast=fast)
    outputs = field_outputs(field, batch, latents)
    item_loss = inner.loss.per_item(outputs, batch.y, batch.mask)
    return OuterResult(item_loss.mean(), item_loss, latents, outputs)


class OuterObjective:
    """Callable ``batch -> OuterResult`` for a field and inner loop, optionally ``torch.compile``-d.

    Compilation fuses the elementwise work around the matmuls (sine, cosine, reductions); it
    needs a C++ compiler and costs tens of seconds once per input shape. Batches with a renderer
    run eagerly. ``tune_allocator`` calls :func:`tune_cpu_allocator` (heap reuse of activation
    buffers; process-wide, so opt-in).
    """

    def __init__(self, field: nn.Module, inner: InnerLoop, compile: bool = False, *,
                 tune_allocator: bool = False) -> None:
        self.field, self.inner, self.compile = field, inner, compile
        if tune_allocator:
            tune_cpu_allocator()

        def fn(x: Tensor, y: Tensor, mask: Tensor | None, fast: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            r = outer_loss(self.field, self.inner, Batch(x, y, mask), fast=fast)
            return r.loss, r.item_loss, r.latents, r.outputs

        self._fn = torch.compile(fn, dynamic=False) if compile else fn

    def __call__(self, batch: Batch) -> OuterResult:
        if batch.renderer is not None or batch.aux:
            return outer_loss(self.field, self.inner, batch)
        return OuterResult(*self._fn(batch.x, batch.y, batch.mask, self.inner.is_fast(self.field, batch)))
