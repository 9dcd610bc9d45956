"""Volume rendering of rays (NeRF): the :class:`~functa.fitting.source.Renderer` between a field whose
outputs are RGB + density and a loss on pixels.

The minimal renderer of functa (paper Listing 1, after Tancik et al. 2021): ``P`` depths per ray between
``near`` and ``far``, no hierarchical sampling, no view dependence, one network for colour and density.
For a ray ``o + t d`` with depths ``t (P,)`` and field outputs ``(rgb, sigma)`` at its points:

* density ``clip(elu(sigma, 0.1) + 0.1, 0, 10)`` (the official code: "more stable than relu for
  meta-learning"); RGB is the raw output (the field adds its output offset 0.5);
* ``delta_i = t_{i+1} - t_i`` and a last ``delta = 1e-3``; ``alpha_i = 1 - exp(-density_i delta_i)``;
* transmittance ``T_i = prod_{j<i} min(1, 1 - alpha_j + 1e-10)``, weights ``w_i = alpha_i T_i``;
* pixel ``sum_i w_i rgb_i`` plus ``1 - sum_i w_i`` on a white background.

Conventions, each an option with the paper's default: ``metric_deltas`` (``False``: deltas in ``t``, as
Listing 1; ``True``: times ``|d|``, as the official ``minimal_nerf.py`` and NeRF) and ``white_background``.
Everything is plain autograd, so it is differentiable to any order (the inner loop differentiates it
twice). Rays come as a :class:`~functa.fitting.source.Batch` whose ``x (1|B, N*P, 3)`` holds the ray
points, ``P`` consecutive points per ray, and ``aux["t"] (1|B, N, P)`` their depths
(:func:`ray_batch`); :meth:`~functa.fitting.source.Batch.points` takes subsets of rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .source import Batch

__all__ = ["VolumeRenderer", "ray_depths", "ray_points", "ray_batch", "LAST_DELTA"]

LAST_DELTA = 1e-3
DENSITY_MAX = 10.0


def ray_depths(near: float, far: float, points: int, rays_shape: tuple[int, ...], *, stratified: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
    """Depths ``(*rays_shape, P)`` of ``P`` samples per ray: ``linspace(near, far, P)``, or with
    ``stratified`` one uniform draw inside each sample's interval (bounded by the midpoints to its
    neighbours, and by ``near`` / ``far``: NeRF's stratified sampling, never outside the bounds)."""
    t = torch.linspace(near, far, points)
    if not stratified or points < 2:
        return t.expand(*rays_shape, points)
    mids = 0.5 * (t[1:] + t[:-1])
    lower, upper = torch.cat([t[:1], mids]), torch.cat([mids, t[-1:]])
    u = torch.rand(*rays_shape, points, generator=generator)
    return lower + (upper - lower) * u


def ray_points(origins: Tensor, directions: Tensor, t: Tensor) -> Tensor:
    """Points ``o + t d``: origins and directions ``(B, N, 3)``, depths ``(1|B, N, P)`` -> ``(B, N*P, 3)``."""
    pts = origins[..., None, :] + directions[..., None, :] * t[..., :, None]
    return pts.reshape(pts.shape[0], -1, 3)


@dataclass(frozen=True)
class VolumeRenderer:
    """Field outputs ``(B, N*P, 4)`` -> pixels ``(B, N, 3)`` (see the module docstring).

    Args:
        samples_per_ray: ``P`` (what :meth:`Batch.points` needs to take subsets of rays).
        white_background: add ``1 - sum w`` (paper and official code: ``True`` for SRN cars).
        metric_deltas: scale the deltas by the ray direction's norm (official code) instead of using
            depth differences (paper Listing 1, the default).
    """

    samples_per_ray: int
    white_background: bool = True
    metric_deltas: bool = False

    @property
    def samples_per_target(self) -> int:
        return self.samples_per_ray

    def weights(self, outputs: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """RGB ``(B, N, P, 3)`` and compositing weights ``(B, N, P)`` of the ray samples."""
        t = batch.aux["t"]
        n, p = t.shape[-2], t.shape[-1]
        if p != self.samples_per_ray or outputs.shape[1] != n * p or outputs.shape[-1] != 4:
            raise ValueError(f"volume rendering needs outputs (B, {n}*{self.samples_per_ray}, 4) for rays of "
                             f"{p} depths, got {tuple(outputs.shape)}")
        out = outputs.reshape(outputs.shape[0], n, p, 4)
        rgb, sigma = out[..., :3], out[..., 3]
        density = (F.elu(sigma, alpha=0.1) + 0.1).clamp(0.0, DENSITY_MAX)
        deltas = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], LAST_DELTA)], -1)
        if self.metric_deltas:
            deltas = deltas * batch.aux["ray_norm"][..., None]
        alpha = 1.0 - torch.exp(-density * deltas)
        trans = torch.minimum(torch.ones_like(alpha), 1.0 - alpha + 1e-10)
        trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
        return rgb, alpha * torch.cumprod(trans, -1)

    def _pixels(self, rgb: Tensor, w: Tensor) -> Tensor:
        pixels = (w[..., None] * rgb).sum(-2)
        return pixels + (1.0 - w.sum(-1, keepdim=True)) if self.white_background else pixels

    def __call__(self, outputs: Tensor, batch: Batch) -> Tensor:
        return self._pixels(*self.weights(outputs, batch))

    def render(self, outputs: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Pixels ``(B, N, 3)``, expected depth ``sum w t + (1 - sum w) t_last`` ``(B, N)`` (``t_last = far``
        without jitter) and opacity ``sum w`` ``(B, N)``, from one compositing pass."""
        rgb, w = self.weights(outputs, batch)
        t = batch.aux["t"]
        acc = w.sum(-1)
        return self._pixels(rgb, w), (w * t).sum(-1) + (1.0 - acc) * t[..., -1], acc


def ray_batch(origins: Tensor, directions: Tensor, t: Tensor, target: Tensor, renderer: VolumeRenderer) -> Batch:
    """The :class:`Batch` of rays ``origins, directions (B, N, 3)`` with depths ``t (1|B, N, P)`` observing
    pixels ``target (B, N, 3)``."""
    aux = {"t": t}
    if renderer.metric_deltas:
        aux["ray_norm"] = directions.norm(dim=-1)
    return Batch(ray_points(origins, directions, t), target, renderer=renderer, aux=aux)
