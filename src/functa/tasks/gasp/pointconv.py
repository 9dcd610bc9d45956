"""Point-cloud convolution (PointConv, Wu et al. 2019), the building block of GASP's discriminator.

A point cloud is coordinates ``x (1|B, N, d)`` with features ``f (B, N, C)``. A PointConv layer
computes at each centre ``c`` ``f_out(c) = sum_{x_i in N(c)} W(x_i - c) f_i``, with ``W`` an MLP from
relative coordinates to kernel values, in the memory-efficient form of the PointConv paper: the
weight MLP outputs ``mid`` values per neighbour, the neighbour sum gives ``(C_in, mid)`` per centre,
and a linear layer maps its ``C_in * mid`` entries to ``C_out``.

Neighbourhoods depend on the coordinates only, never on the features. :class:`Level` holds one
layer's neighbourhoods (centres, their ``k`` nearest neighbours, the offsets); the discriminator
builds all its levels once per coordinate set and reuses them for real and generated features (and,
when the coordinates repeat, across steps). Centres are chosen by farthest point sampling from the
first point (deterministic, as the reference configs use); neighbours by a batched
``torch.cdist`` + ``topk``, chunked over centres so at most ``max_elements`` distances exist at once.
Coordinates shared by the batch (leading dimension 1) are searched once for all items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AvgPool", "Level", "PointConv", "WeightNet", "farthest_point_sample", "gather_points", "knn", "level"]

MAX_DISTANCES = 2**24  # distances held at once by knn (64 MiB of float32)


def knn(queries: Tensor, points: Tensor, k: int, p: float = 2.0, max_elements: int = MAX_DISTANCES) -> Tensor:
    """Indices ``(B, M, k)`` of the ``k`` nearest ``points (B, N, d)`` to each of ``queries (B, M, d)``
    in the ``l_p`` norm, nearest first (the order among equidistant points is ``topk``'s)."""
    if queries.ndim != 3 or points.ndim != 3 or queries.shape[0] != points.shape[0] or queries.shape[2] != points.shape[2]:
        raise ValueError(f"knn: expected queries (B, M, d) and points (B, N, d), got {tuple(queries.shape)} and "
                         f"{tuple(points.shape)}")
    b, m, _ = queries.shape
    n = points.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"knn: k = {k} must be between 1 and the number of points {n}")
    chunk = max(1, max_elements // max(1, b * n))
    out = [torch.cdist(queries[:, s:s + chunk], points, p=p).topk(k, dim=-1, largest=False, sorted=True).indices
           for s in range(0, m, chunk)]
    return torch.cat(out, 1) if len(out) > 1 else out[0]


def farthest_point_sample(points: Tensor, m: int, p: float = 2.0) -> Tensor:
    """Indices ``(B, m)`` of ``m`` of ``points (B, N, d)``: the first point, then repeatedly the point
    farthest (``l_p``) from those chosen. All of them, in order, when ``m = N``."""
    b, n, _ = points.shape
    if not 1 <= m <= n:
        raise ValueError(f"farthest_point_sample: m = {m} must be between 1 and the number of points {n}")
    if m == n:
        return torch.arange(n, device=points.device).expand(b, n)
    chosen = torch.zeros(b, m, dtype=torch.long, device=points.device)
    distance = torch.full((b, n), float("inf"), dtype=points.dtype, device=points.device)
    rows = torch.arange(b, device=points.device)
    farthest = torch.zeros(b, dtype=torch.long, device=points.device)
    for i in range(m):  # sequential by definition; batched over the point clouds
        chosen[:, i] = farthest
        centre = points[rows, farthest].unsqueeze(1)
        distance = torch.minimum(distance, torch.linalg.vector_norm(points - centre, ord=p, dim=-1))
        farthest = distance.argmax(-1)
    return chosen


def gather_points(values: Tensor, index: Tensor) -> Tensor:
    """``values (B, N, C)`` at ``index (1|B, M[, K])`` -> ``(B, M[, K], C)`` (an index of batch 1 serves every item)."""
    b, _, c = values.shape
    if index.shape[0] == 1:
        return values[:, index[0]]
    flat = index.reshape(b, -1, 1).expand(-1, -1, c)
    return values.gather(1, flat).reshape(*index.shape, c)


@dataclass(frozen=True)
class Level:
    """Neighbourhoods of one layer on a point cloud of ``N`` points (``Bc`` = 1 for shared coordinates).

    ``coords (Bc, M, d)`` the centres; ``neighbours (Bc, M, K)`` indices into the ``N`` input points;
    ``offsets (Bc, M, K, d)`` neighbour minus centre coordinates."""

    coords: Tensor
    neighbours: Tensor
    offsets: Tensor


def level(coords: Tensor, num_centres: int, k: int, p: float = 2.0) -> Level:
    """The :class:`Level` of ``num_centres`` farthest-point centres of ``coords (Bc, N, d)`` and their ``k``
    nearest neighbours (``k`` is capped at ``N``)."""
    centres = torch.gather(coords, 1, farthest_point_sample(coords, num_centres, p).unsqueeze(-1)
                           .expand(-1, -1, coords.shape[-1]))
    neighbours = knn(centres, coords, min(k, coords.shape[1]), p)
    offsets = gather_points(coords, neighbours) - centres.unsqueeze(2)
    return Level(centres, neighbours, offsets)


class WeightNet(nn.Module):
    """The MLP ``offsets (..., d) -> (..., hidden[-1])`` giving kernel values (each hidden layer: linear,
    optional batch norm over all points, LeakyReLU)."""

    def __init__(self, coord_dim: int, hidden: tuple[int, ...], batchnorm: bool, negative_slope: float) -> None:
        super().__init__()
        widths = [coord_dim, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) if batchnorm else nn.Identity() for w in hidden)
        self.negative_slope = negative_slope

    def forward(self, offsets: Tensor) -> Tensor:
        h = offsets.reshape(-1, offsets.shape[-1])
        for linear, norm in zip(self.linears, self.norms):
            h = F.leaky_relu(norm(linear(h)), self.negative_slope)
        return h.reshape(*offsets.shape[:-1], h.shape[-1])


class PointConv(nn.Module):
    """``forward(features (B, N, C_in), level) -> (B, M, C_out)`` at the level's ``M`` centres."""

    def __init__(self, coord_dim: int, in_channels: int, out_channels: int, weight_hidden: tuple[int, ...],
                 batchnorm: bool, negative_slope: float) -> None:
        super().__init__()
        self.weight_net = WeightNet(coord_dim, weight_hidden, batchnorm, negative_slope)
        self.linear = nn.Linear(in_channels * weight_hidden[-1], out_channels)

    def forward(self, features: Tensor, lv: Level) -> Tensor:
        kernels = self.weight_net(lv.offsets)  # (Bc, M, K, mid)
        grouped = gather_points(features, lv.neighbours)  # (B, M, K, C_in)
        mixed = grouped.transpose(-1, -2) @ kernels  # (B, M, C_in, mid): the sum over neighbours
        return self.linear(mixed.flatten(-2))


class AvgPool(nn.Module):
    """``forward(features (B, N, C), level) -> (B, M, C)``: the mean over each centre's neighbours."""

    def forward(self, features: Tensor, lv: Level) -> Tensor:
        return gather_points(features, lv.neighbours).mean(2)
