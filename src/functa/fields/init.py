"""Initialisation rules for SIREN layers (functa paper, Appendix A.2).

* first layer weights ``U(-1/n_in, 1/n_in)``;
* later layers ``U(-sqrt(6/n_in)/w0, sqrt(6/n_in)/w0)`` (the output layer uses the same rule);
* biases zero (paper, official functa code) or ``U`` with the weight's range (COIN++ code).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["BiasInit", "siren_weight_bound", "init_siren_linear_", "init_latent_map_"]

BiasInit = Literal["zeros", "uniform"]


def siren_weight_bound(fan_in: int, w0: float, is_first: bool) -> float:
    """Half-width of the uniform weight distribution of a SIREN layer."""
    if is_first:
        return 1.0 / fan_in
    return math.sqrt(6.0 / fan_in) / w0


@torch.no_grad()
def init_siren_linear_(
    weight: torch.Tensor, bias: torch.Tensor, w0: float, is_first: bool, bias_init: BiasInit = "zeros"
) -> None:
    """Initialise ``weight (out, in)`` and ``bias (out,)`` in place following SIREN."""
    bound = siren_weight_bound(weight.shape[1], w0, is_first)
    weight.uniform_(-bound, bound)
    if bias_init == "zeros":
        bias.zero_()
    elif bias_init == "uniform":
        bias.uniform_(-bound, bound)
    else:  # pragma: no cover - guarded by config validation
        raise ValueError(f"unknown bias_init {bias_init!r}")


@torch.no_grad()
def init_latent_map_(weight: torch.Tensor, bias: torch.Tensor, rule: Literal["haiku", "torch"]) -> None:
    """Initialise the linear latent -> modulation map ``weight (out, in)``, ``bias (out,)``.

    ``haiku``: truncated normal (±2σ) with σ = 1/sqrt(fan_in) and zero bias, the Haiku default the
    functa paper uses. ``torch``: PyTorch's ``nn.Linear`` default (as in the COIN++ code).
    """
    fan_in = weight.shape[1]
    if rule == "haiku":
        std = 1.0 / math.sqrt(fan_in)
        torch.nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        bias.zero_()
    elif rule == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bias.uniform_(-bound, bound)
    else:  # pragma: no cover
        raise ValueError(f"unknown latent map init {rule!r}")
