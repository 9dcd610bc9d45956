"""Fitting latents with a frozen base network (no second-order graph): the encoder of functasets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..fields import LatentModulatedSiren
from .inner import InnerLoop
from .metrics import mse_per_item

__all__ = ["Encoding", "auto_batch_size", "fit_latents"]

ACTIVATION_BUDGET_BYTES = 24 * 2**20


def auto_batch_size(field: LatentModulatedSiren, n_points: int, max_items: int = 256) -> int:
    """Items per batch so that one ``(B, N, width)`` float32 activation stays under ~24 MiB.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages that
    are faulted in on every use and unmapped on free; on the development VM a batch of 256
    Fashion-MNIST images (100 MB activations) encoded at 98 items/s against 156 items/s at 32. Items
    are independent in encoding and evaluation, so the batch size changes only the speed.
    """
    per_item = max(n_points * field.config.width * 4, 1)
    return int(max(1, min(max_items, ACTIVATION_BUDGET_BYTES // per_item)))


@dataclass
class Encoding:
    """``latents (B, D)``; ``mse (B,)`` after the last step; ``mse_per_step (steps+1, B)`` or None."""

    latents: Tensor
    mse: Tensor
    mse_per_step: Tensor | None = None


@torch.no_grad()
def fit_latents(field: LatentModulatedSiren, x: Tensor, y: Tensor, steps: int = 3,
                weight: Tensor | None = None, track_steps: bool = False, *,
                shared_first_step: bool = True, compile: bool = False) -> Encoding:
    """Fit latents to a batch with ``steps`` meta-SGD steps from zero, using the learned rates.

    Args:
        x: ``(1|B, N, d)`` coordinates; ``y``: ``(B, N, C)`` features in ``[0, 1]`` (moved to the
            field's device; the results stay there).
        weight: optional ``(B|1, N, 1)`` 0/1 mask of observed points.
        track_steps: also return the MSE after each step ``0..steps``.
        shared_first_step: evaluate the zero-latent first step once per batch (same results).
        compile: run through ``torch.compile`` (fuses the elementwise work; compiles once per
            input shape, tens of seconds).
    """
    dev = field.device
    x, y = x.to(dev), y.to(dev)
    weight = None if weight is None else weight.to(dev)
    inner = InnerLoop(steps, first_order=True, shared_first_step=shared_first_step)
    if track_steps:
        hist = inner.history(field, x, y, weight)
        mses = torch.stack([mse_per_item(field.forward_points(x, z)[0], y) for z in hist])
        return Encoding(hist[-1], mses[-1], mses)
    fn = _compiled_encode() if compile else _encode
    latents, mse = fn(field, inner, x, y, weight)
    return Encoding(latents, mse)


def _encode(field: LatentModulatedSiren, inner: InnerLoop, x: Tensor, y: Tensor,
            weight: Tensor | None) -> tuple[Tensor, Tensor]:
    latents = inner(field, x, y, weight)
    pred, _ = field.forward_points(x, latents)
    return latents, mse_per_item(pred, y)


_COMPILED = None


def _compiled_encode():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_encode, dynamic=False)
    return _COMPILED
