"""Batches of observations and the sources that produce them.

A :class:`Batch` is what one inner loop fits: coordinates ``x (1|B, M, d)`` shared by the batch
(a grid: the fast path) or per item (point clouds, rays), targets ``y (B, N, C)``, an optional
observation mask and an optional :class:`Renderer` between the field's outputs and the loss. Without
a renderer ``M == N``; with one, the field is evaluated at ``M = N * P`` points (e.g. ``P`` samples
along each of ``N`` rays) and the renderer maps its outputs to ``(B, N, C')`` before the loss.

A :class:`BatchSource` is a dataset seen by the trainer and the encoder: ``len`` and ``batch(indices)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "BatchSource", "Renderer"]


@runtime_checkable
class Renderer(Protocol):
    """Maps field outputs ``(B, N*P, C)`` to observations ``(B, N, C')`` (differentiated by autograd,
    second order included). Per-batch inputs (ray sample depths, ...) come in ``batch.aux``."""

    def __call__(self, outputs: Tensor, batch: "Batch") -> Tensor: ...


@dataclass
class Batch:
    """Observations of ``B`` items.

    Attributes:
        x: ``(1|B, M, d)`` query coordinates (``1``: shared by every item).
        y: ``(B, N, C)`` targets.
        mask: ``(1|B, N, 1)`` 0/1 weights of observed targets, or ``None`` (all observed).
        renderer: maps field outputs to ``(B, N, C')`` before the loss, or ``None`` (``M == N``).
        aux: per-batch tensors the renderer reads.
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    renderer: Renderer | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.ndim != 3:
            raise ValueError(f"a batch needs x (1|B, M, d) and y (B, N, C), got {tuple(self.x.shape)} and "
                             f"{tuple(self.y.shape)}")
        if self.x.shape[0] not in (1, self.y.shape[0]):
            raise ValueError(f"coordinates for {self.x.shape[0]} items, targets for {self.y.shape[0]}")
        if self.renderer is None and self.x.shape[1] != self.y.shape[1]:
            raise ValueError(f"{self.x.shape[1]} coordinates but {self.y.shape[1]} targets per item (a batch "
                             "without a renderer observes the field at its coordinates)")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shared(self) -> bool:
        """Whether every item is observed at the same coordinates (``x`` has batch 1)."""
        return self.x.shape[0] == 1

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, x=self.x.to(device), y=self.y.to(device), mask=move(self.mask),
                       aux={k: v.to(device) for k, v in self.aux.items()})

    def points(self, index: Tensor) -> "Batch":
        """The same items observed at a subset ``index (K,)`` of their points (no renderer)."""
        if self.renderer is not None:
            raise ValueError("point subsets of a rendered batch are drawn by its source (rays), not here")
        return replace(self, x=self.x[:, index], y=self.y[:, index],
                       mask=None if self.mask is None else self.mask[:, index])


@runtime_checkable
class BatchSource(Protocol):
    """What the meta-learner and the encoder need from a dataset.

    ``num_points`` is the number of targets ``N`` per item (it sizes memory-bounded batches).
    """

    num_points: int

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> Batch:
        """The items ``indices (B,)`` as one :class:`Batch`."""
        ...
