"""Per-dimension inner-loop learning rates (meta-SGD, Li et al. 2017; functa paper A.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MetaSGDLrs"]


class MetaSGDLrs(nn.Module):
    """One learning rate per latent dimension, meta-learned by the outer optimiser.

    Initialised ``U(lo, hi)`` (paper: ``U(0.005, 0.1)``) and clamped to ``clip`` (paper: ``(0, 1)``)
    every time they are used — the official code declares the clip but never applies it; here
    :meth:`forward` is the only way the rates are read. With ``learned=False`` the module holds a
    fixed scalar rate in a buffer (plain SGD inner loop, as in COIN++).
    """

    def __init__(
        self,
        dim: int,
        init_range: tuple[float, float] = (0.005, 0.1),
        clip: tuple[float, float] | None = (0.0, 1.0),
        learned: bool = True,
        fixed_lr: float = 1e-2,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.learned = learned
        if learned:
            lo, hi = init_range
            self.raw = nn.Parameter(torch.empty(dim).uniform_(lo, hi))
        else:
            self.register_buffer("raw", torch.full((dim,), float(fixed_lr)))

    def forward(self) -> Tensor:
        """The effective learning rates ``(D,)``, clamped to ``clip`` when set."""
        if self.clip is None:
            return self.raw
        return self.raw.clamp(self.clip[0], self.clip[1])
