"""Batches of observations and the sources that produce them.

A :class:`Batch` is what one inner loop fits: coordinates ``x (1|B, M, d)`` shared by the batch
(a grid: the fast path) or per item (point clouds, rays), targets ``y (B, N, C)``, an optional
observation mask and an optional :class:`Renderer` between the field's outputs and the loss. Without
a renderer ``M == N``; with one, the field is evaluated at ``M = N * P`` points (e.g. ``P`` samples
along each of ``N`` rays) and the renderer maps its outputs to ``(B, N, C')`` before the loss.

A :class:`BatchSource` is a dataset seen by the trainer and the encoder: ``len`` and ``batch(indices)``.
A :class:`SampledSource` also draws random training batches (``sample(indices, rng)``); a
:class:`HeldOutSource` is scored on other observations than it is fitted on (novel views of scenes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "BatchSource", "HeldOutSource", "Renderer", "SampledSource"]


@runtime_checkable
class Renderer(Protocol):
    """Maps field outputs ``(B, N*P, C)`` to observations ``(B, N, C')`` (differentiated by autograd,
    second order included). Per-batch inputs (ray sample depths, ...) come in ``batch.aux``: tensors
    ``(1|B, N, ...)`` hold one entry per target (subsets of targets take theirs), others are constants.
    ``samples_per_target`` is ``P``: target ``n`` is rendered from the field points ``n*P .. n*P + P - 1``."""

    samples_per_target: int

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
        if self.renderer is not None and self.x.shape[1] != self.y.shape[1] * self.renderer.samples_per_target:
            raise ValueError(f"{self.x.shape[1]} points for {self.y.shape[1]} targets of "
                             f"{self.renderer.samples_per_target} samples each")

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

    @property
    def num_targets(self) -> int:
        """Targets ``N`` per item (pixels of rays, or points without a renderer)."""
        return int(self.y.shape[1])

    def items(self, sl: slice) -> "Batch":
        """The items ``sl`` of the batch (shared coordinates and constants stay shared)."""
        take = lambda t: t if t is None or t.ndim == 0 or t.shape[0] == 1 else t[sl]  # noqa: E731
        return replace(self, x=take(self.x), y=self.y[sl], mask=take(self.mask),
                       aux={k: take(v) for k, v in self.aux.items()})

    def points(self, index: Tensor) -> "Batch":
        """The same items observed at a subset ``index (K,)`` of their targets (with a renderer: of their
        rays, each with its ``P`` field points and ``aux`` entries)."""
        mask = None if self.mask is None else self.mask[:, index]
        if self.renderer is None:
            return replace(self, x=self.x[:, index], y=self.y[:, index], mask=mask)
        p = self.renderer.samples_per_target
        x_index = (index[:, None] * p + torch.arange(p, device=index.device)).reshape(-1)
        n = self.num_targets
        aux = {k: v[:, index] if v.ndim >= 2 and v.shape[1] == n else v for k, v in self.aux.items()}
        return replace(self, x=self.x[:, x_index], y=self.y[:, index], mask=mask, aux=aux)


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


@runtime_checkable
class SampledSource(Protocol):
    """Optional part of a :class:`BatchSource` whose training batches are random subsets of each item's
    observations (views and pixels of scenes): the meta-learner calls ``sample`` with its per-step
    generator ``default_rng([seed, step])`` instead of ``batch``, so a resumed run draws the same."""

    def sample(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        """A random training batch of the items ``indices (B,)``."""
        ...


@runtime_checkable
class HeldOutSource(Protocol):
    """Optional part of an evaluation source: latents are fitted on ``batch(indices)`` (e.g. the context
    views of scenes) and scored on ``heldout(indices)`` (the novel views), as in PixelNeRF."""

    def heldout(self, indices: np.ndarray) -> Batch:
        """The observations that score the latents fitted to ``batch(indices)``."""
        ...
