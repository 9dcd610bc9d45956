"""Fitting latents with a frozen base network (no second-order graph): the encoder of functasets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fields import field_device
from .inner import InnerLoop, field_outputs, latent_grad
from .losses import Loss, MSELoss
from .source import Batch

__all__ = ["Encoding", "activation_budget", "auto_batch_size", "chunked_outputs", "fit_latents", "max_points_per_pass", "point_chunks",
           "predict", "rendered_fit_points"]

ACTIVATION_BUDGET_BYTES = 24 * 2**20
CUDA_ITEMS_CAP = 4096  # items per batch on a GPU
GRAPH_PASSES = 7  # forward passes whose activations one fitting step may hold: 2 x 3 inner steps + 1


def activation_budget(field: nn.Module) -> int:
    """Bytes one ``(B, N, width)`` float32 activation may take.

    On the CPU 24 MiB (glibc's mmap threshold, see :func:`auto_batch_size`). On CUDA a share of the
    device's **free** memory: ``free / (2 x layers x 7)``, room for every layer's activation and its
    gradient in each of the 7 passes of a 3-step inner loop (not yet measured on a GPU:
    ``bench/gpu_check.sh`` is the place)."""
    device = field_device(field)
    if device.type != "cuda":
        return ACTIVATION_BUDGET_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    layers = int(getattr(getattr(field, "config", None), "depth", 8) or 8)
    return max(ACTIVATION_BUDGET_BYTES, int(free // (2 * layers * GRAPH_PASSES)))


def auto_batch_size(field: nn.Module, n_points: int, max_items: int = 256) -> int:
    """Items per batch so that one ``(B, N, width)`` float32 activation stays under :func:`activation_budget`.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages that
    are faulted in on every use and unmapped on free; on the development VM a batch of 256
    Fashion-MNIST images (100 MB activations) encoded at 98 items/s against 156 items/s at 32. On
    CUDA the budget follows the device's free memory and ``max_items`` rises to 4096. Items
    are independent in encoding and evaluation, so the batch size changes only the speed.
    """
    per_item = max(n_points * field.activation_floats_per_point() * 4, 1)
    if field_device(field).type == "cuda":
        max_items = max(max_items, CUDA_ITEMS_CAP)
    return int(max(1, min(max_items, activation_budget(field) // per_item)))


@dataclass
class Encoding:
    """``latents (B, *latent_shape)``; ``loss (B,)`` after the last step; ``outputs (B, N, C)``: what
    the loss compared with the targets after the last step; ``history``: the latents after each of
    ``0..steps`` steps (with ``track_steps``) or ``None``."""

    latents: Tensor
    loss: Tensor
    outputs: Tensor
    history: list[Tensor] | None = None


def point_chunks(batch: Batch, max_points: int) -> list[tuple[Batch, Tensor]]:
    """The batch as sub-batches of at most ``max_points`` points, each with the per-item weight ``(B,)``
    of its points in the item's mean loss (observed points over all observed points), so that
    ``sum_c w_c * loss.per_item(chunk c)`` is the item's loss and the same sum of gradients its gradient."""
    n = batch.num_targets
    if batch.renderer is not None:  # max_points counts field points: P per ray
        max_points = max(1, max_points // batch.renderer.samples_per_target)
    if batch.mask is None:
        total = torch.full((len(batch),), float(n), device=batch.y.device, dtype=batch.y.dtype)
    else:
        total = batch.mask.sum((1, 2)).expand(len(batch)).clamp_min(1.0)
    out = []
    for start in range(0, n, max_points):
        sub = batch.points(torch.arange(start, min(start + max_points, n), device=batch.x.device))
        count = (torch.full_like(total, float(sub.num_targets)) if sub.mask is None
                 else sub.mask.sum((1, 2)).expand(len(batch)))
        out.append((sub, count / total))
    return out


def _fit_in_chunks(field: nn.Module, inner: InnerLoop, batch: Batch, max_points: int, fast: bool,
                   track_steps: bool = False) -> Encoding:
    """:func:`fit_latents` with every step's gradient summed over point chunks (first order, exact):
    memory is that of ``max_points`` points whatever the item's size."""
    chunks = point_chunks(batch, max_points)
    lrs = field.inner_lrs()
    latents = field.zero_latents(len(batch))
    history = [latents] if track_steps else None

    def weighted(value: Tensor, w: Tensor) -> Tensor:
        return value * w.reshape(-1, *([1] * (value.ndim - 1)))

    for _ in range(inner.steps):
        grad = sum(weighted(latent_grad(field, inner.loss, sub, latents, create_graph=False, fast=fast), w)
                   for sub, w in chunks)
        latents = latents - lrs * grad
        if history is not None:
            history.append(latents)
    outs = [field_outputs(field, sub, latents) for sub, _ in chunks]
    item_loss = sum(weighted(inner.loss.per_item(o, sub.y, sub.mask), w) for o, (sub, w) in zip(outs, chunks))
    return Encoding(latents, item_loss, torch.cat(outs, 1), history)


def rendered_fit_points(field: nn.Module, batch: Batch) -> int | None:
    """Field points per pass when fitting rendered batches (rays of scenes), so that a scene of any number
    of rays fits in bounded memory (``fit_latents(max_points=)``; the autograd graph of the renderer holds
    a few floats per point); ``None`` for batches without a renderer (fitted whole)."""
    return None if batch.renderer is None else max_points_per_pass(field) * 4


@torch.no_grad()
def fit_latents(field: nn.Module, batch: Batch, steps: int = 3, *, loss: Loss = MSELoss(),
                track_steps: bool = False, shared_first_step: bool = True, compile: bool = False,
                max_points: int | None = None) -> Encoding:
    """Fit latents to a batch with ``steps`` meta-SGD steps from zero, using the learned rates.

    Args:
        batch: the observations (moved to the field's device; the results stay there). Its
            ``mask`` restricts the fit to observed points.
        loss: the loss the base network was meta-learned with.
        track_steps: also return the latents after every step.
        shared_first_step: evaluate the zero-latent first step once per batch (same results).
        compile: run through ``torch.compile`` (fuses the elementwise work; compiles once per
            input shape, tens of seconds). Batches with a renderer run eagerly.
        max_points: fit items with more points chunk by chunk (:func:`point_chunks`: the same latents
            up to float rounding, memory bounded by ``max_points``); e.g. a whole photo on one canvas.
    """
    batch = batch.to(field_device(field))
    inner = InnerLoop(steps, loss, first_order=True, shared_first_step=shared_first_step)
    if max_points is not None and batch.x.shape[1] > max_points:
        return _fit_in_chunks(field, inner, batch, max_points, inner.is_fast(field, batch), track_steps)
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


def max_points_per_pass(field: nn.Module) -> int:
    """Points of one item whose ``(N, width)`` activations fit the ~24 MiB budget of :func:`auto_batch_size`."""
    return max(1, ACTIVATION_BUDGET_BYTES // (4 * field.activation_floats_per_point()))


@torch.no_grad()
def chunked_outputs(field: nn.Module, batch: Batch, latents: Tensor, max_points: int | None = None) -> Tensor:
    """:func:`~functa.fitting.field_outputs` of ``latents (B, ...)`` on ``batch`` (moved to the field's device),
    in chunks of at most ``max_points`` field points (default :func:`max_points_per_pass` per item), so whole
    views render in bounded memory. ``(B, N, C)`` on the field's device."""
    batch = batch.to(field_device(field))
    max_points = max_points or max_points_per_pass(field)
    if batch.x.shape[1] <= max_points:
        return field_outputs(field, batch, latents)
    return torch.cat([field_outputs(field, sub, latents) for sub, _ in point_chunks(batch, max_points)], 1)


@torch.no_grad()
def predict(field: nn.Module, x: Tensor, latents: Tensor, *, loss: Loss = MSELoss()) -> Tensor:
    """Predicted features ``(B, N, C)`` (``loss.predict`` of the outputs) of latents ``(B, *latent_shape)``
    at coordinates ``x (1|B, N, d)``, evaluated in memory-bounded chunks of items and of points
    (a 128^3 grid is 2M points), on the field's device; the result is on the CPU."""
    dev = field_device(field)
    n = x.shape[1]
    items = auto_batch_size(field, n)
    points = n if items > 1 else max_points_per_pass(field)
    parts = []
    for s in range(0, latents.shape[0], items):
        z = latents[s:s + items].to(dev)
        xs = x if x.shape[0] == 1 else x[s:s + items]
        out = [loss.predict(field(xs[:, p:p + points].to(dev), z)).cpu() for p in range(0, n, points)]
        parts.append(torch.cat(out, 1))
    if not parts:
        return torch.zeros(0, n, getattr(field, "out_dim", 1))
    return torch.cat(parts)
