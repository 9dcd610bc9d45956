"""Fitting latents with a frozen base network (no second-order graph): the encoder of functasets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fields import field_device
from .inner import InnerLoop, field_outputs
from .losses import Loss, MSELoss
from .source import Batch

__all__ = ["Encoding", "auto_batch_size", "fit_latents", "predict"]

ACTIVATION_BUDGET_BYTES = 24 * 2**20


def auto_batch_size(field: nn.Module, n_points: int, max_items: int = 256) -> int:
    """Items per batch so that one ``(B, N, width)`` float32 activation stays under ~24 MiB.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages that
    are faulted in on every use and unmapped on free; on the development VM a batch of 256
    Fashion-MNIST images (100 MB activations) encoded at 98 items/s against 156 items/s at 32. Items
    are independent in encoding and evaluation, so the batch size changes only the speed.
    """
    per_item = max(n_points * field.activation_floats_per_point() * 4, 1)
    return int(max(1, min(max_items, ACTIVATION_BUDGET_BYTES // per_item)))


@dataclass
class Encoding:
    """``latents (B, *latent_shape)``; ``loss (B,)`` after the last step; ``outputs (B, N, C)``: what
    the loss compared with the targets after the last step; ``history``: the latents after each of
    ``0..steps`` steps (with ``track_steps``) or ``None``."""

    latents: Tensor
    loss: Tensor
    outputs: Tensor
    history: list[Tensor] | None = None


@torch.no_grad()
def fit_latents(field: nn.Module, batch: Batch, steps: int = 3, *, loss: Loss = MSELoss(),
                track_steps: bool = False, shared_first_step: bool = True, compile: bool = False) -> Encoding:
    """Fit latents to a batch with ``steps`` meta-SGD steps from zero, using the learned rates.

    Args:
        batch: the observations (moved to the field's device; the results stay there). Its
            ``mask`` restricts the fit to observed points.
        loss: the loss the base network was meta-learned with.
        track_steps: also return the latents after every step.
        shared_first_step: evaluate the zero-latent first step once per batch (same results).
        compile: run through ``torch.compile`` (fuses the elementwise work; compiles once per
            input shape, tens of seconds). Batches with a renderer run eagerly.
    """
    batch = batch.to(field_device(field))
    inner = InnerLoop(steps, loss, first_order=True, shared_first_step=shared_first_step)
    if track_steps:
        hist = inner.history(field, batch)
        out = field_outputs(field, batch, hist[-1])
        return Encoding(hist[-1], loss.per_item(out, batch.y, batch.mask), out, hist)
    fast = inner.is_fast(field, batch)
    if compile and batch.renderer is None and not batch.aux:
        latents, item_loss, out = _compiled_encode()(field, inner, batch.x, batch.y, batch.mask, fast)
    else:
        latents, item_loss, out = _encode(field, inner, batch, fast)
    return Encoding(latents, item_loss, out)


def _encode(field: nn.Module, inner: InnerLoop, batch: Batch, fast: bool) -> tuple[Tensor, Tensor, Tensor]:
    latents = inner(field, batch, fast=fast)
    out = field_outputs(field, batch, latents)
    return latents, inner.loss.per_item(out, batch.y, batch.mask), out


def _encode_tensors(field: nn.Module, inner: InnerLoop, x: Tensor, y: Tensor, mask: Tensor | None,
                    fast: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _encode(field, inner, Batch(x, y, mask), fast)


_COMPILED = None


def _compiled_encode():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_encode_tensors, dynamic=False)
    return _COMPILED


@torch.no_grad()
def predict(field: nn.Module, x: Tensor, latents: Tensor, *, loss: Loss = MSELoss()) -> Tensor:
    """Predicted features ``(B, N, C)`` (``loss.predict`` of the outputs) of latents ``(B, *latent_shape)``
    at coordinates ``x (1|B, N, d)``, evaluated in memory-bounded chunks of items and of points
    (a 128^3 grid is 2M points), on the field's device; the result is on the CPU."""
    dev = field_device(field)
    n = x.shape[1]
    items = auto_batch_size(field, n)
    points = n if items > 1 else max(1, ACTIVATION_BUDGET_BYTES // (4 * field.activation_floats_per_point()))
    parts = []
    for s in range(0, latents.shape[0], items):
        z = latents[s:s + items].to(dev)
        xs = x if x.shape[0] == 1 else x[s:s + items]
        out = [loss.predict(field(xs[:, p:p + points].to(dev), z)).cpu() for p in range(0, n, points)]
        parts.append(torch.cat(out, 1))
    if not parts:
        return torch.zeros(0, n, getattr(field, "out_dim", 1))
    return torch.cat(parts)
