"""Functaset preprocessing: standardising latents before downstream models see them.

The functa paper (App. A.4/A.5) centres and scales every latent dimension by its mean and
standard deviation over the training functaset and then divides by ``norm_factor`` (4 for the
flows, so that the data match a base Gaussian of std 0.25). The spatial functa classifier uses a
single scalar scale instead (``per_dimension=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Standardizer"]


@dataclass
class Standardizer:
    """``u = (z - mean) / (std * norm_factor)``; ``mean``/``std`` are ``(D,)`` tensors."""

    mean: Tensor
    std: Tensor
    norm_factor: float = 1.0

    @classmethod
    def fit(cls, latents: Tensor, norm_factor: float = 1.0, per_dimension: bool = True,
            eps: float = 1e-8, channels: int | None = None) -> "Standardizer":
        """Statistics of training latents ``(N, D)``: per dimension (array-valued: for flat latent
        grids, per position and channel), or one mean/std (``per_dimension=False``: scalar), or, with
        ``channels = c``, per channel of flat grids ``(N, S * c)`` (channel last), shared over the ``S``
        positions: spatial functa's vector-valued standardisation. ``norm_factor`` is the paper's γ."""
        if latents.ndim != 2 or latents.shape[0] < 2:
            raise ValueError(f"need latents of shape (N>=2, D), got {tuple(latents.shape)}")
        if norm_factor <= 0:
            raise ValueError(f"norm_factor must be positive, got {norm_factor}")
        z = latents.double()
        if channels is not None:
            if channels < 1 or z.shape[1] % channels:
                raise ValueError(f"{z.shape[1]} latent dimensions are not grids of {channels} channels")
            per_channel = z.reshape(-1, channels)  # (N * S, c)
            reps = z.shape[1] // channels
            mean, std = per_channel.mean(0).repeat(reps), per_channel.std(0).repeat(reps)
        elif per_dimension:
            mean, std = z.mean(0), z.std(0)
        else:
            mean = z.mean().expand(z.shape[1])
            std = z.std().expand(z.shape[1])
        return cls(mean.float().clone(), std.clamp_min(eps).float().clone(), float(norm_factor))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def _check(self, t: Tensor) -> None:
        if t.shape[-1] != self.dim:
            raise ValueError(f"latents have {t.shape[-1]} dimensions, the standardiser was fitted on {self.dim}")

    def __call__(self, z: Tensor) -> Tensor:
        """Latents ``(..., D)`` → standardised ``(..., D)``."""
        self._check(z)
        return (z - self.mean.to(z)) / (self.std.to(z) * self.norm_factor)

    def inverse(self, u: Tensor) -> Tensor:
        """Standardised ``(..., D)`` → latents ``(..., D)``."""
        self._check(u)
        return u * (self.std.to(u) * self.norm_factor) + self.mean.to(u)

    def log_abs_det(self) -> float:
        """``log |du/dz|`` (add to a density of ``u`` to get the density of ``z``)."""
        return float(-(self.std.double() * self.norm_factor).log().sum())

    def tensors(self, prefix: str = "standardizer.") -> dict[str, Tensor]:
        return {f"{prefix}mean": self.mean, f"{prefix}std": self.std,
                f"{prefix}norm_factor": torch.tensor(self.norm_factor)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "standardizer.") -> "Standardizer":
        try:
            return cls(tensors[f"{prefix}mean"], tensors[f"{prefix}std"], float(tensors[f"{prefix}norm_factor"]))
        except KeyError as e:
            raise KeyError(f"checkpoint has no standardiser ({e})") from None


def interpolate(z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """Linear interpolation ``(steps, D)`` from ``z0 (D,)`` to ``z1 (D,)`` (both ends included)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"expected two vectors of the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device)[:, None]
    return torch.lerp(z0[None], z1[None], t)


@torch.no_grad()
def nearest_neighbours(queries: Tensor, reference: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Euclidean nearest neighbour of each query ``(Q, D)`` in ``reference (R, D)``.

    Returns ``(distance (Q,), index (Q,))``. The reference is processed in chunks of ``chunk``
    rows, so large functasets need no ``Q x R`` matrix.
    """
    if queries.shape[-1] != reference.shape[-1]:
        raise ValueError(f"dimension mismatch: {queries.shape[-1]} vs {reference.shape[-1]}")
    best_d = torch.full((len(queries),), float("inf"), dtype=queries.dtype)
    best_i = torch.zeros(len(queries), dtype=torch.long)
    for s in range(0, len(reference), chunk):
        d = torch.cdist(queries, reference[s:s + chunk])
        v, i = d.min(1)
        better = v < best_d
        best_d[better], best_i[better] = v[better], i[better] + s
    return best_d, best_i
