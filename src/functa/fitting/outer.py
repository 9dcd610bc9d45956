"""Outer (meta-learning) objective: the loss after the inner loop, per item and for the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..fields import LatentModulatedSiren
from .inner import InnerLoop
from .metrics import mse_per_item

__all__ = ["OuterResult", "outer_loss", "OuterObjective"]


@dataclass
class OuterResult:
    """``loss``: scalar batch mean of per-item MSE; ``mse``: ``(B,)``; ``latents``: ``(B, D)``."""

    loss: Tensor
    mse: Tensor
    latents: Tensor


def outer_loss(field: LatentModulatedSiren, inner: InnerLoop, x: Tensor, y: Tensor) -> OuterResult:
    """Fit latents with ``inner`` and return the reconstruction loss to meta-learn from.

    Args:
        x: ``(1|B, N, d)`` coordinates; ``y``: ``(B, N, C)`` targets.
    """
    latents = inner(field, x, y)
    pred, _ = field.forward_points(x, latents)
    mse = mse_per_item(pred, y)
    return OuterResult(mse.mean(), mse, latents)


class OuterObjective:
    """Callable ``(x, y) -> OuterResult`` for a field and inner loop, optionally ``torch.compile``-d.

    Compilation fuses the elementwise work around the matmuls (sine, cosine, reductions); it
    needs a C++ compiler and costs tens of seconds once per input shape.
    """

    def __init__(self, field: LatentModulatedSiren, inner: InnerLoop, compile: bool = False) -> None:
        self.field, self.inner, self.compile = field, inner, compile

        def fn(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            r = outer_loss(self.field, self.inner, x, y)
            return r.loss, r.mse, r.latents

        self._fn = torch.compile(fn, dynamic=False) if compile else fn

    def __call__(self, x: Tensor, y: Tensor) -> OuterResult:
        loss, mse, latents = self._fn(x, y)
        return OuterResult(loss, mse, latents)
