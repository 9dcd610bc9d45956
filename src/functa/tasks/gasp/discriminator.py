"""GASP's point-cloud discriminator (thesis §2.3.3 and App. 2.A.2; reference-study §1.13).

A DCGAN-like stack on point clouds of (coordinate, feature) pairs: for each width in ``channels``, a
:class:`~.pointconv.PointConv` over the ``3^g`` nearest neighbours of every point, batch norm,
LeakyReLU(0.2), then an average pool onto ``ceil(N / 2^g)`` farthest-point centres (``g`` the grid
dimension of the data: 2 for images and for fields on the sphere, 3 for voxels); a last PointConv
with one output channel over all remaining points gives the logit. Weight MLPs have 4 hidden layers
of 16 with batch norm (the thesis found both batch norms crucial). The output is the **logit**;
``sigmoid(logit)`` is the thesis' probability.

Nothing depends on a grid or on ``N``: any set of points works (the sizes of the levels follow the
number of points), which is what lets GASP subsample points per step and sample at any resolution.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ...validation import MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total
from .pointconv import AvgPool, Level, PointConv, level

__all__ = ["DiscriminatorConfig", "PointConvDiscriminator"]


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the discriminator (defaults: the thesis' MNIST model)."""

    coord_dim: int = 2
    feature_dim: int = 1
    grid_dim: int = 2  # g: 3^g neighbours per convolution, pooling by 2^g
    channels: tuple[int, ...] = (64, 128, 256)
    weight_hidden: tuple[int, ...] = (16, 16, 16, 16)
    batchnorm: bool = True
    negative_slope: float = 0.2
    norm_order: float = 2.0  # the l_p norm of the neighbour search

    def __post_init__(self) -> None:
        check_fields(self, "discriminator", coord_dim=Int(1, 16), feature_dim=Int(1, 64), grid_dim=Int(1, 6),
                     channels=IntSeq(1, 8192, min_len=1, max_len=12), weight_hidden=IntSeq(1, 1024, min_len=1, max_len=12),
                     negative_slope=Real(0, 1), norm_order=Real(1, 1e3))
        if not isinstance(self.batchnorm, bool):
            raise ValueError(f"discriminator.batchnorm must be true or false, got {self.batchnorm!r}")
        mid = self.weight_hidden[-1]
        widths = [self.feature_dim, *self.channels, 1]
        n = sum(a * mid * b for a, b in zip(widths[:-1], widths[1:]))  # the PointConv linear layers dominate
        check_total("discriminator", n, MAX_PARAMETERS, f"widths {list(self.channels)} with {mid}-wide kernels")

    @property
    def neighbours(self) -> int:
        return 3 ** self.grid_dim

    @property
    def pool_factor(self) -> int:
        return 2 ** self.grid_dim


class PointConvDiscriminator(nn.Module):
    """``forward(coords (1|B, N, coord_dim), features (B, N, feature_dim)) -> logits (B,)``."""

    PLAN_CACHE = 4  # coordinate sets whose levels are kept

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = [c.feature_dim, *c.channels]
        self.convs = nn.ModuleList(PointConv(c.coord_dim, a, b, c.weight_hidden, c.batchnorm, c.negative_slope)
                                   for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) if c.batchnorm else nn.Identity() for w in c.channels)
        self.pool = AvgPool()
        self.head = PointConv(c.coord_dim, widths[-1], 1, c.weight_hidden, c.batchnorm, c.negative_slope)
        self._plans: OrderedDict[tuple, list[Level]] = OrderedDict()

    def plan(self, coords: Tensor) -> list[Level]:
        """The levels for ``coords (Bc, N, d)``: per width a convolution level (every point, its ``3^g``
        neighbours) and a pooling level (``ceil(N / 2^g)`` centres), then the head's (one centre, all
        points). Cached for the last few coordinate sets seen."""
        c = self.config
        if coords.ndim != 3 or coords.shape[-1] != c.coord_dim:
            raise ValueError(f"expected coordinates (1|B, N, {c.coord_dim}), got {tuple(coords.shape)}")
        coords = coords.detach()
        key = (coords.shape, coords.dtype, str(coords.device),
               hashlib.blake2b(coords.cpu().numpy().tobytes(), digest_size=16).digest())
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        levels, x = [], coords
        for _ in c.channels:
            conv = level(x, x.shape[1], c.neighbours, c.norm_order)
            pool = level(x, math.ceil(x.shape[1] / c.pool_factor), c.neighbours, c.norm_order)
            levels += [conv, pool]
            x = pool.coords
        if x.shape[1] < 2:
            raise ValueError(f"the discriminator pools {coords.shape[1]} points down to 1 before its last layer; "
                             "give it more points (train.max_num_points) or fewer discriminator.channels")
        levels.append(level(x, 1, x.shape[1], c.norm_order))
        self._plans[key] = levels
        while len(self._plans) > self.PLAN_CACHE:
            self._plans.popitem(last=False)
        return levels

    def forward(self, coords: Tensor, features: Tensor) -> Tensor:
        c = self.config
        if features.ndim != 3 or features.shape[-1] != c.feature_dim or features.shape[1] != coords.shape[1] \
                or coords.shape[0] not in (1, features.shape[0]):
            raise ValueError(f"expected features (B, {coords.shape[1]}, {c.feature_dim}) for coordinates "
                             f"{tuple(coords.shape)}, got {tuple(features.shape)}")
        levels = self.plan(coords)
        h = features
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = conv(h, levels[2 * k])
            h = F.leaky_relu(norm(h.transpose(1, 2)).transpose(1, 2), c.negative_slope)
            h = self.pool(h, levels[2 * k + 1])
        return self.head(h, levels[-1]).reshape(-1)
