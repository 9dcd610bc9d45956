"""Reconstruction losses: a per-item value and, where one exists, its analytic output gradient.

A loss compares outputs ``(B, N, C)`` (of the field, or of a renderer after it) with targets
``(B, N, C)``; an optional observation ``mask (B|1, N, 1)`` of 0/1 restricts it to observed
points. Every loss is a *mean over the observed points and channels of each item*, and batches sum
or average the per-item values, so an item's inner-loop step does not depend on the batch size.

* :class:`MSELoss` (default, images and fields): ``mean (f - y)^2``; outputs are predictions.
* :class:`BCEWithLogitsLoss` (occupancies): ``mean softplus(l) - y l``; outputs are logits and the
  prediction is ``sigmoid(l)``, so the field's output offset is 0 (:attr:`Loss.output_offset`).

``output_grad`` (:class:`AnalyticOutputGrad`, optional) is ``d sum_b loss_b / d outputs``: it lets a field with an explicit latent
gradient (:class:`functa.fields.LatentAdjoint`) skip autograd in the inner loop. It is itself
differentiable in the outputs, so the fast path stays exact at second order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = ["AnalyticOutputGrad", "Loss", "MSELoss", "BCEWithLogitsLoss", "available_losses", "get_loss"]


@runtime_checkable
class Loss(Protocol):
    """Per-item reconstruction loss of outputs ``(B, N, C)`` against targets ``(B, N, C)``."""

    name: ClassVar[str]
    output_offset: ClassVar[float]  # constant the field adds to its outputs (0.5 for [0, 1] targets)

    def per_item(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` loss of each item, averaged over its (observed) points and channels."""
        ...

    def predict(self, outputs: Tensor) -> Tensor:
        """Outputs -> predicted features in the targets' space (identity, or sigmoid of logits)."""
        ...


@runtime_checkable
class AnalyticOutputGrad(Protocol):
    """Optional part of a loss: its gradient with respect to the outputs in closed form."""

    def output_grad(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """``d sum_b per_item_b / d outputs`` ``(B, N, C)``, differentiable in ``outputs``."""
        ...


def _check(outputs: Tensor, target: Tensor) -> None:
    if outputs.shape != target.shape:
        raise ValueError(f"outputs of shape {tuple(outputs.shape)} do not match targets {tuple(target.shape)}")


def _mean_per_item(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values (B, N, C)`` per item over all points or over the observed ones."""
    if mask is None:
        return values.reshape(values.shape[0], -1).mean(1)
    count = mask.sum((1, 2)).clamp_min(1.0) * values.shape[2]  # (B|1,)
    return (values * mask).sum((1, 2)) / count


def _mean_scale(outputs: Tensor, mask: Tensor | None) -> Tensor | float:
    """``1 / count`` per item, shaped to broadcast against ``(B, N, C)``."""
    if mask is None:
        return 1.0 / (outputs.shape[1] * outputs.shape[2])
    return mask / (mask.sum(1, keepdim=True).clamp_min(1.0) * outputs.shape[2])


@dataclass(frozen=True)
class MSELoss:
    """Mean squared error per item (all codebases: over all points *and* channels)."""

    name: ClassVar[str] = "mse"
    output_offset: ClassVar[float] = 0.5

    def per_item(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        _check(outputs, target)
        return _mean_per_item((outputs - target).square(), mask)

    def output_grad(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return (outputs - target) * (2.0 * _mean_scale(outputs, mask))

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs


@dataclass(frozen=True)
class BCEWithLogitsLoss:
    """Binary cross-entropy of logits against targets in ``[0, 1]`` (occupancies), per item."""

    name: ClassVar[str] = "bce"
    output_offset: ClassVar[float] = 0.0

    def per_item(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        _check(outputs, target)
        return _mean_per_item(F.binary_cross_entropy_with_logits(outputs, target, reduction="none"), mask)

    def output_grad(self, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(outputs) - target) * _mean_scale(outputs, mask)

    def predict(self, outputs: Tensor) -> Tensor:
        return torch.sigmoid(outputs)


_LOSSES: dict[str, type] = {cls.name: cls for cls in (MSELoss, BCEWithLogitsLoss)}


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str) -> Loss:
    """The loss registered under ``name`` (``"mse"`` or ``"bce"``)."""
    if not isinstance(name, str) or name not in _LOSSES:
        raise ConfigError(f"unknown loss {str(name)[:40]!r}; available: {', '.join(available_losses())}")
    return _LOSSES[name]()
