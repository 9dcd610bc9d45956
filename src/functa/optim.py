"""Optimisation helpers shared by meta-learning and the downstream trainers.

- :func:`lr_at`: learning-rate schedules (linear warm-up, then constant, cosine to zero, or the
  ``1/sqrt(t)`` decay of the functa paper's flows and diffusion models, App. A.4/A.5);
- :func:`optimizer_tensors` / :func:`load_optimizer_tensors`: optimizer state as a flat dict of
  tensors, so it can be checkpointed with safetensors (no pickle);
- :class:`EMA`: an exponential moving average of a model's floating-point state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["EMA", "Schedule", "load_optimizer_tensors", "lr_at", "optimizer_tensors"]

Schedule = Literal["constant", "cosine", "rsqrt"]
SCHEDULES = ("constant", "cosine", "rsqrt")


def lr_at(step: int, base_lr: float, schedule: Schedule = "constant", warmup_steps: int = 0,
          total_steps: int = 1) -> float:
    """Learning rate at ``step`` (0-based).

    Linear warm-up from ``base_lr/warmup_steps`` to ``base_lr`` over ``warmup_steps``, then
    ``constant``; ``cosine`` decay to 0 at ``total_steps``; or ``rsqrt``: ``base_lr *
    sqrt(warmup_steps / (step + 1))`` (decay proportional to one over the square root of the
    iteration count, continuous at the end of the warm-up).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "rsqrt":
        return base_lr * math.sqrt(max(warmup_steps, 1) / (step + 1))
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> dict[str, Tensor]:
    """Per-parameter optimizer state as ``{f"{prefix}{param_id}.{name}": tensor}``."""
    out = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for name, v in st.items():
            out[f"{prefix}{pid}.{name}"] = torch.as_tensor(v)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                           prefix: str = "optim.") -> None:
    """Inverse of :func:`optimizer_tensors` (hyper-parameters stay those of ``optimizer``)."""
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            pid, name = k[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)


class EMA:
    """Exponential moving average of ``model``'s floating-point parameters and buffers.

    ``shadow <- decay * shadow + (1 - decay) * current`` after each :meth:`update`. Use
    :meth:`state_dict` (a full state dict with the averaged values) to evaluate or save the
    averaged model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        cur = model.state_dict()
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [cur[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(cur[k])

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: state[k].clone() for k in self.shadow}
