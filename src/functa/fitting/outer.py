"""Outer (meta-learning) objective: the loss after the inner loop, per item and for the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .allocator import tune_cpu_allocator
from .inner import InnerLoop, field_outputs
from .source import Batch

__all__ = ["OuterResult", "outer_loss", "OuterObjective"]

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
