"""DDPM over functa latent vectors (functa paper, Dupont et al. 2022, App. A.5 and Fig. 14).

Two independent pieces, in the manner of diffusers' schedulers and models:

* :class:`DDPMSchedule` holds the noise schedule (``T = 1000``, ``betas = linspace(1e-4, 0.02,
  T)`` as in the functa paper, or Nichol & Dhariwal's cosine schedule as in the spatial functa
  paper; float64 internally) and does the math on tensors: forward noising, the closed-form
  posterior ``q(x_{t-1} | x_t, x_0)``, one ancestral DDPM step and one DDIM step. It knows
  nothing about models.
* :class:`ResidualMLPDenoiser` is the ε-predictor of the paper: Ho et al.'s U-Net recipe with
  residual MLP blocks in place of convolutional blocks (LayerNorm in place of GroupNorm,
  zero-initialised last layers), optionally class-conditional with a learned "null" label for
  classifier-free guidance.

:func:`diffusion_loss` is the simple ε-prediction loss of Ho et al. (timesteps uniform, or with
linearly decreasing probability: :func:`sample_timesteps`, spatial functa App. C.4.3) and
:func:`sample` runs the reverse process (ancestral DDPM or DDIM) with any callable
``model(xt, t, labels)``. The convolutional denoiser for latent grids is
:class:`functa.tasks.unet.UNetDenoiser`.

Timesteps are **0-based indices**: index ``t`` in ``[0, T-1]`` is step ``t + 1`` of the papers,
so ``betas[t] = β_{t+1}`` and ``alphas_cumprod[t] = ᾱ_{t+1}``; ``alphas_cumprod[-1]`` is the
last, noisiest step. The same index is what the denoiser receives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..validation import MAX_PARAMETERS, Int, Real, check_fields, check_total

__all__ = ["ConditionalDenoiser", "DDPMSchedule", "DenoiserConfig", "ResidualMLPDenoiser", "diffusion_loss", "diffusion_loss_fn",
           "cosine_alphas_cumprod", "ddim_timesteps", "sample", "sample_timesteps", "timestep_embedding", "timestep_probabilities"]

Variance = Literal["beta", "posterior"]
_VARIANCES = ("beta", "posterior")
BetaSchedule = Literal["linear", "cosine"]
_SCHEDULES = ("linear", "cosine")
COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s
MAX_BETA = 0.999  # their clip of the cosine betas (the last step would otherwise be β = 1)


def cosine_alphas_cumprod(num_steps: int) -> Tensor:
    """Nichol & Dhariwal's ``ᾱ(u) = f(u) / f(0)``, ``f(u) = cos²((u + s) / (1 + s) · π/2)``, ``s = 0.008``,
    at ``u = t / T`` for ``t = 0..T`` (float64 ``(T + 1,)``; the first value is 1, the last 0)."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return f / f[0]


def _from_dict(cls, d: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


# ---------------------------------------------------------------------------------------------
# Noise schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DDPMSchedule:
    """DDPM noise schedule: linear β (Ho et al. 2020; functa App. A.5 uses the defaults) or cosine.

    ``schedule="linear"``: ``betas = linspace(beta_start, beta_end, T)``. ``schedule="cosine"``
    (Nichol & Dhariwal 2021; spatial functa App. C): ``β_t = min(1 - ᾱ(t+1) / ᾱ(t), 0.999)`` with
    ``ᾱ`` of :func:`cosine_alphas_cumprod`, so ``alphas_cumprod[t] = ᾱ((t+1) / T)`` exactly except at
    the clipped last step(s); ``beta_start`` and ``beta_end`` are only used by the linear schedule.
    Schedules saved before the cosine schedule existed have no ``schedule`` key: they load as linear.

    ``variance`` chooses the reverse-step variance of :meth:`step`: ``"beta"`` is Ho et al.'s
    ``σ_t² = β_t`` (their default, used by the functa code base), ``"posterior"`` the posterior
    variance ``β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t``. Both are exact in the limit of many steps.

    All arrays are float64 ``(T,)`` tensors on the CPU; the methods cast the coefficients to the
    dtype and device of their inputs. Inputs ``x`` have shape ``(B, ...)`` (latents: ``(B, D)``)
    and per-row timesteps ``t`` are a LongTensor ``(B,)`` (a Python int or 0-d tensor is
    broadcast to every row).
    """

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance: Variance = "beta"
    schedule: BetaSchedule = "linear"

    def __post_init__(self) -> None:
        check_fields(self, "schedule", num_steps=Int(1, 100_000), beta_start=Real(), beta_end=Real())
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {_VARIANCES}, got {self.variance!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)
        else:
            abar = cosine_alphas_cumprod(self.num_steps)
            betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)
        alphas = 1.0 - betas
        acp = torch.cumprod(alphas, 0)
        acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
        # frozen dataclass: the derived arrays are set once here and are not fields
        object.__setattr__(self, "_betas", betas)
        object.__setattr__(self, "_alphas", alphas)
        object.__setattr__(self, "_acp", acp)
        object.__setattr__(self, "_acp_prev", acp_prev)

    # --- arrays ----------------------------------------------------------------------------

    @property
    def betas(self) -> Tensor:
        """``β`` ``(T,)`` float64."""
        return self._betas

    @property
    def alphas(self) -> Tensor:
        """``α = 1 - β`` ``(T,)`` float64."""
        return self._alphas

    @property
    def alphas_cumprod(self) -> Tensor:
        """``ᾱ_t = Π_{s<=t} α_s`` ``(T,)`` float64."""
        return self._acp

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """``ᾱ_{t-1}`` ``(T,)`` float64, with ``ᾱ`` before the first step equal to 1."""
        return self._acp_prev

    @property
    def posterior_variance(self) -> Tensor:
        """``β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t`` ``(T,)`` float64 (zero at ``t = 0``)."""
        return (1.0 - self._acp_prev) / (1.0 - self._acp) * self._betas

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DDPMSchedule":
        return _from_dict(cls, d)

    # --- helpers ---------------------------------------------------------------------------

    def _t(self, t: Tensor | int, x: Tensor) -> Tensor:
        """Validated per-row timesteps ``(B,)`` (int64, on ``x``'s device)."""
        t = torch.as_tensor(t, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}], got "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t

    @staticmethod
    def _at(arr: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``arr[t]`` as ``(B, 1, ..., 1)`` in ``x``'s dtype/device (gathered in float64)."""
        v = arr.to(t.device)[t]
        return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)

    def _check_step(self, t: int) -> int:
        t = int(t)
        if not 0 <= t < self.num_steps:
            raise ValueError(f"timestep must lie in [0, {self.num_steps - 1}], got {t}")
        return t

    # --- forward process -------------------------------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Sample of ``q(x_t | x_0)``: ``sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise``.

        ``x0``, ``noise``: ``(B, ...)``; ``t``: LongTensor ``(B,)``. Returns ``(B, ...)``.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and x0 {tuple(x0.shape)} differ in shape")
        t = self._t(t, x0)
        return self._at(self._acp.sqrt(), t, x0) * x0 + self._at((1.0 - self._acp).sqrt(), t, x0) * noise

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """``q(x_{t-1} | x_t, x_0) = N(mean, variance)`` in closed form (Ho et al. eq. 6-7).

        ``x0``, ``xt``: ``(B, ...)``; ``t``: LongTensor ``(B,)``. Returns ``mean`` ``(B, ...)``
        and ``variance`` ``(B, 1, ..., 1)`` (broadcastable against ``x``; zero at ``t = 0``,
        where ``x_{t-1}`` is ``x_0``).
        """
        if x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} differ in shape")
        t = self._t(t, xt)
        denom = 1.0 - self._acp
        c0 = self._betas * self._acp_prev.sqrt() / denom
        ct = (1.0 - self._acp_prev) * self._alphas.sqrt() / denom
        mean = self._at(c0, t, xt) * x0 + self._at(ct, t, xt) * xt
        return mean, self._at(self.posterior_variance, t, xt)

    def predict_x0(self, xt: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """``x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)``; ``xt``, ``eps``: ``(B, ...)``, ``t``: ``(B,)``."""
        if eps.shape != xt.shape:
            raise ValueError(f"eps {tuple(eps.shape)} and xt {tuple(xt.shape)} differ in shape")
        t = self._t(t, xt)
        return (xt - self._at((1.0 - self._acp).sqrt(), t, xt) * eps) * self._at(self._acp.rsqrt(), t, xt)

    # --- reverse process -------------------------------------------------------------------

    def step(self, eps: Tensor, xt: Tensor, t: int, noise: Tensor | None = None, *,
             variance: Variance | None = None, generator: torch.Generator | None = None) -> Tensor:
        """One ancestral step ``x_t → x_{t-1}`` (Ho et al. Algorithm 2).

        ``x_{t-1} = (x_t - β_t / sqrt(1 - ᾱ_t) ε) / sqrt(α_t) + σ_t z``, with ``σ_t² = β_t``
        or ``β̃_t`` (``variance``, default the schedule's) and no noise at ``t = 0``. ``eps``,
        ``xt``, ``noise``: ``(B, ...)``; ``t`` an int shared by the batch. ``noise`` defaults
        to ``randn`` drawn with ``generator``. Returns ``(B, ...)``.
        """
        t = self._check_step(t)
        if eps.shape != xt.shape:
            raise ValueError(f"eps {tuple(eps.shape)} and xt {tuple(xt.shape)} differ in shape")
        variance = self.variance if variance is None else variance
        if variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}")
        beta, alpha, acp = float(self._betas[t]), float(self._alphas[t]), float(self._acp[t])
        mean = (xt - (beta / math.sqrt(1.0 - acp)) * eps) / math.sqrt(alpha)
        if t == 0:
            return mean
        var = beta if variance == "beta" else float(self.posterior_variance[t])
        if noise is None:
            noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
        elif noise.shape != xt.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and xt {tuple(xt.shape)} differ in shape")
        return mean + math.sqrt(var) * noise

    def ddim_step(self, eps: Tensor, xt: Tensor, t: int, t_prev: int, eta: float = 0.0,
                  noise: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """One DDIM step ``x_t → x_{t_prev}`` (Song et al. 2021, eq. 12).

        ``t_prev`` in ``[-1, t)``; ``-1`` means "before the first step" (``ᾱ = 1``), so the
        last step returns ``x̂_0``. ``eta = 0`` is the deterministic sampler, ``eta = 1`` with
        ``t_prev = t - 1`` is the ancestral step with the posterior variance ``β̃_t``.
        ``eps``, ``xt``, ``noise``: ``(B, ...)``. Returns ``(B, ...)``.
        """
        t = self._check_step(t)
        t_prev = int(t_prev)
        if not -1 <= t_prev < t:
            raise ValueError(f"t_prev must lie in [-1, {t - 1}], got {t_prev}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eps.shape != xt.shape:
            raise ValueError(f"eps {tuple(eps.shape)} and xt {tuple(xt.shape)} differ in shape")
        acp = float(self._acp[t])
        acp_prev = float(self._acp[t_prev]) if t_prev >= 0 else 1.0
        x0 = (xt - math.sqrt(1.0 - acp) * eps) / math.sqrt(acp)
        sigma2 = eta ** 2 * (1.0 - acp_prev) / (1.0 - acp) * (1.0 - acp / acp_prev)
        out = math.sqrt(acp_prev) * x0 + math.sqrt(max(1.0 - acp_prev - sigma2, 0.0)) * eps
        if sigma2 > 0:
            if noise is None:
                noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
            elif noise.shape != xt.shape:
                raise ValueError(f"noise {tuple(noise.shape)} and xt {tuple(xt.shape)} differ in shape")
            out = out + math.sqrt(sigma2) * noise
        return out


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced over ``[0, T-1]``, descending, both ends included
    (``steps = 1`` gives ``[T-1]``)."""
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must lie in [1, {num_steps}] (the schedule's T), got {steps}")
    if steps == 1:
        return [num_steps - 1]
    ts = torch.linspace(0, num_steps - 1, steps, dtype=torch.float64).round().long()
    return ts.flip(0).tolist()


# ---------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps ``(B,)`` → ``(B, dim)`` (Ho et al.'s
    ``get_timestep_embedding``: ``[sin(t ω_k), cos(t ω_k)]``, ``ω_k = max_period^(-k/(dim/2-1))``;
    zero-padded when ``dim`` is odd)."""
    half = dim // 2
    scale = math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


@dataclass(frozen=True)
class DenoiserConfig:
    """Residual-MLP ε-predictor. The paper's CelebA-HQ model (functa App. A.5): ``width=3072``,
    ``blocks=4``, ``dropout=0.3``; the defaults here are CPU-sized.

    ``time_embed_dim`` is the size of the sinusoidal embedding; the time MLP maps it to
    ``4 * time_embed_dim`` as in Ho et al. ``num_classes > 0`` adds a learned label embedding
    (``num_classes + 1`` rows, the last one the "null" label) that replaces the true label with
    probability ``cond_drop`` during training (classifier-free guidance, Ho & Salimans 2022).
    """

    dim: int
    width: int = 512
    blocks: int = 4
    dropout: float = 0.1
    time_embed_dim: int = 128
    num_classes: int = 0
    cond_drop: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, "model", dim=Int(1, 2**20), width=Int(1, 65536), blocks=Int(0, 256),
                     dropout=Real(0, 1, hi_open=True), time_embed_dim=Int(2, 65536), num_classes=Int(0, 2**20),
                     cond_drop=Real(0, 1, hi_open=True))
        w, t = self.width, 4 * self.time_embed_dim
        n = (self.time_embed_dim + 1) * t + (t + 1) * t + (self.num_classes + 1) * t * bool(self.num_classes) + \
            2 * (self.dim + 1) * w + self.blocks * (2 * (w + 1) * w + (t + 1) * w + 4 * w)
        check_total("model", n, MAX_PARAMETERS, f"a denoiser of width {w} and {self.blocks} blocks on {self.dim}-d latents")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        return _from_dict(cls, d)


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualMLPBlock(nn.Module):
    """``x + Linear_0(Dropout(SiLU(LN(Linear(SiLU(LN(x))) + proj(SiLU(temb))))))`` on ``(B, W)``."""

    def __init__(self, width: int, temb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width)
        self.temb_proj = nn.Linear(temb_dim, width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = _zero_linear(width, width)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.linear1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))
        h = self.linear2(self.dropout(F.silu(self.norm2(h))))
        return x + h


class ConditionalDenoiser(nn.Module):
    """What the denoisers share: a ``config`` with ``num_classes`` and ``cond_drop``, and a
    ``label_embed`` (``nn.Embedding(num_classes + 1, E)``, the last row the null label) or ``None``."""

    config: "DenoiserConfig"
    label_embed: nn.Embedding | None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no label" (``num_classes``), ``None`` if unconditional."""
        return self.config.num_classes if self.config.num_classes > 0 else None

    @property
    def cond_drop(self) -> float:
        return self.config.cond_drop

    def with_labels(self, emb: Tensor, labels: Tensor | None) -> Tensor:
        """The embedding ``emb (B, E)`` plus that of ``labels (B,)`` (checked against the model's classes)."""
        n = self.config.num_classes
        if self.label_embed is None:
            if labels is not None:
                raise ValueError("this denoiser is unconditional (num_classes=0) but labels were given")
            return emb
        if labels is None:
            raise ValueError(f"this denoiser is class-conditional: pass labels (B,) in [0, {n}] "
                             f"({n} = null label, unconditional)")
        _check_labels(labels, emb.shape[0], n, allow_null=True)
        return emb + self.label_embed(labels)


class ResidualMLPDenoiser(ConditionalDenoiser):
    """ε-predictor ``(x_t (B, D), t (B,), labels (B,) | None) → ε̂ (B, D)`` (functa Fig. 14).

    Sinusoidal timestep embedding → Linear, SiLU, Linear (time embedding, plus a label embedding
    when conditional); input Linear ``D → W``; ``blocks`` residual MLP blocks; LayerNorm, SiLU and
    a zero-initialised Linear ``W → D``, so the untrained model predicts exactly zero.

    Labels: an unconditional model takes ``labels=None``. A conditional model needs labels in
    ``[0, num_classes]``, where ``num_classes`` (:attr:`null_label`) asks for the unconditional
    prediction.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        temb = 4 * config.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.label_embed = nn.Embedding(config.num_classes + 1, temb) if config.num_classes > 0 else None
        self.input = nn.Linear(config.dim, config.width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(config.width, temb, config.dropout)
                                    for _ in range(config.blocks))
        self.out_norm = nn.LayerNorm(config.width)
        self.output = _zero_linear(config.width, config.dim)

    @property
    def dim(self) -> int:
        return self.config.dim


    def forward(self, xt: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if xt.ndim != 2 or xt.shape[1] != cfg.dim:
            raise ValueError(f"expected x_t of shape (B, {cfg.dim}), got {tuple(xt.shape)}")
        if t.shape != (xt.shape[0],):
            raise ValueError(f"expected timesteps of shape ({xt.shape[0]},), got {tuple(t.shape)}")
        temb = self.time_mlp(timestep_embedding(t, cfg.time_embed_dim).to(xt.dtype))
        temb = self.with_labels(temb, labels)
        h = self.input(xt)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(F.silu(self.out_norm(h)))


def _check_labels(labels: Tensor, n: int, num_classes: int | None, allow_null: bool) -> None:
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {type(labels).__name__} "
                         f"{getattr(labels, 'dtype', '')}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel():
        hi = num_classes if allow_null else num_classes - 1
        lo_v, hi_v = int(labels.min()), int(labels.max())
        if lo_v < 0 or hi_v > hi:
            raise ValueError(f"labels must lie in [0, {hi}]"
                             + (f" ({num_classes} = null label)" if allow_null else "")
                             + f", got values in [{lo_v}, {hi_v}]")


def _num_classes(model) -> int | None:
    """``model.num_classes`` (or ``model.config.num_classes``), ``None`` if unknown."""
    n = getattr(model, "num_classes", None)
    if n is None:
        n = getattr(getattr(model, "config", None), "num_classes", None)
    return None if n is None else int(n)


# ---------------------------------------------------------------------------------------------
# Training loss and sampling
# ---------------------------------------------------------------------------------------------


def timestep_probabilities(num_steps: int, ratio: float = 1.0) -> Tensor:
    """Training distribution of the timesteps ``(T,)`` float64 (spatial functa App. C.4.3): the
    probability decreases linearly from ``t = 0`` to ``t = T-1`` with ``p(0) / p(T-1) = ratio``,
    ``p(t) ∝ ratio - (ratio - 1) t / (T - 1)``. ``ratio = 1`` is uniform; ``ratio > 1`` draws the
    less noisy steps more often (the paper finds ``ratio >= 3`` best); ``ratio < 1`` the noisier ones."""
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"timestep_ratio must be a finite number > 0, got {ratio!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        return torch.ones(1, dtype=torch.float64)
    w = ratio - (ratio - 1.0) * torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    return w / w.sum()


def sample_timesteps(num_steps: int, n: int, ratio: float = 1.0, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """``n`` training timesteps ``(n,)`` int64 in ``[0, T-1]`` drawn from
    :func:`timestep_probabilities`: exactly, with ``torch.multinomial`` (with replacement) on
    ``generator``. ``ratio = 1`` draws ``torch.randint(0, T, (n,))`` (the same uniform stream as
    before non-uniform sampling existed, so old runs reproduce)."""
    p = timestep_probabilities(num_steps, ratio)
    if ratio == 1:
        return torch.randint(0, num_steps, (n,), generator=generator, device=device)
    draw_on = generator.device if generator is not None else torch.device(device if device is not None else "cpu")
    t = torch.multinomial(p.to(draw_on), n, replacement=True, generator=generator)
    return t if device is None else t.to(device)


def diffusion_loss(model: Callable[..., Tensor], schedule: DDPMSchedule, x0: Tensor, labels: Tensor | None = None,
                   generator: torch.Generator | None = None, timestep_ratio: float = 1.0) -> Tensor:
    """Ho et al.'s simple loss ``E ||ε - ε_θ(sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, t)||²``, averaged over
    the batch and the dimensions (a scalar), with ``t`` drawn by :func:`sample_timesteps`: uniform
    for ``timestep_ratio = 1`` (Ho et al.), else with probability decreasing linearly in ``t`` and
    ``p(0) / p(T-1) = timestep_ratio`` (spatial functa App. C.4.3; no importance re-weighting, so
    the objective weights the early steps more, as in the paper).

    ``x0``: ``(B, ...)`` (latent vectors ``(B, D)`` or grids ``(B, *grid, C)``); ``labels``:
    LongTensor ``(B,)`` in ``[0, num_classes)``, required for a conditional model and rejected for
    an unconditional one. While ``model.training``, each label is replaced by the null label with
    probability ``model.cond_drop``. ``generator`` draws ``t``, ``ε`` and the label drop (the global
    RNG when ``None``).
    """
    if x0.ndim < 2:
        raise ValueError(f"expected x0 of shape (B, D), got {tuple(x0.shape)}")
    b = x0.shape[0]
    num_classes = _num_classes(model)
    if num_classes is not None and num_classes > 0 and labels is None:
        raise ValueError(f"the model is class-conditional ({num_classes} classes): labels are required")
    if num_classes == 0 and labels is not None:
        raise ValueError("the model is unconditional (num_classes=0): labels must be None")
    t = sample_timesteps(schedule.num_steps, b, timestep_ratio, generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = schedule.add_noise(x0, noise, t)
    if labels is not None:
        labels = labels.to(x0.device)
        _check_labels(labels, b, num_classes, allow_null=False)
        cond_drop = float(getattr(model, "cond_drop", 0.0))
        null = getattr(model, "null_label", None)
        if getattr(model, "training", False) and cond_drop > 0 and null is not None:
            drop = torch.rand(b, generator=generator, device=x0.device) < cond_drop
            labels = torch.where(drop, torch.full_like(labels, null), labels)
    eps = model(xt, t, labels)
    return F.mse_loss(eps, noise)


def diffusion_loss_fn(schedule: DDPMSchedule, timestep_ratio: float = 1.0
                      ) -> Callable[[nn.Module, tuple[Tensor, ...]], Tensor]:
    """``loss_fn(model, batch)`` for :class:`functa.tasks.train.Trainer`: ``batch = (x0,)`` or
    ``(x0, labels)``; the trainer seeds torch's RNG per step, so the noise is reproducible."""
    timestep_probabilities(schedule.num_steps, timestep_ratio)  # validate now, not at the first step

    def loss_fn(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return diffusion_loss(model, schedule, batch[0], batch[1] if len(batch) > 1 else None,
                              timestep_ratio=timestep_ratio)

    return loss_fn


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _sample_shape(model, dim: int | tuple[int, ...] | None, x_init: Tensor | None) -> tuple[int, ...]:
    """The shape ``S`` of one sample (see :func:`sample`)."""
    if dim is None:
        dim = getattr(model, "sample_shape", None)
    if dim is None:
        dim = getattr(model, "dim", None) or getattr(getattr(model, "config", None), "dim", None)
    if dim is None and x_init is not None:
        dim = tuple(x_init.shape[1:])
    if dim is None:
        raise ValueError("cannot tell the latent dimension of this model: pass dim=")
    return (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)


@torch.no_grad()
def sample(model: Callable[..., Tensor], schedule: DDPMSchedule, n: int, labels: Tensor | int | None = None, *,
           method: str = "ddpm", steps: int | None = None, eta: float = 0.0, guidance_scale: float = 1.0,
           generator: torch.Generator | None = None, progress: bool = False,
           dim: int | tuple[int, ...] | None = None,
           x_init: Tensor | None = None, device: torch.device | str | None = None,
           clip_x0: float | None = None) -> Tensor:
    """Draw ``n`` samples ``(n, *S)`` by running the reverse process from ``x_T ~ N(0, I)``.

    ``model(xt (n, *S), t (n,), labels (n,) | None) -> ε̂ (n, *S)`` is any callable; an
    ``nn.Module`` is put in eval mode while sampling and restored after. The sample shape ``S`` is
    ``dim`` (an int ``D`` means ``S = (D,)``, a tuple is ``S``), or ``model.sample_shape`` (e.g. the
    UNet's grid ``(*grid, C)``), or ``(model.dim,)`` / ``(model.config.dim,)``, or ``x_init.shape[1:]``.

    * ``method="ddpm"``: ancestral sampling over all ``T`` steps (:meth:`DDPMSchedule.step`,
      variance as set on the schedule); ``steps`` must be ``None`` or ``T``.
    * ``method="ddim"``: :meth:`DDPMSchedule.ddim_step` over ``steps`` (default ``T``) evenly
      spaced timesteps (:func:`ddim_timesteps`), stochasticity ``eta`` (0 = deterministic).

    ``labels``: an int (all rows) or LongTensor ``(n,)`` for a conditional model (required;
    ``model.null_label`` samples unconditionally). ``guidance_scale`` ``s`` applies classifier-free
    guidance ``ε = ε_uncond + s (ε_cond - ε_uncond)``, where ``ε_uncond`` uses
    ``model.null_label`` (or ``labels=None`` for a callable without one); ``s = 1`` is the plain
    conditional prediction and costs one model call per step. ``generator`` draws all noise.
    ``x_init`` ``(n, *S)`` replaces the initial noise. ``clip_x0`` ``c`` clips every step's prediction
    of ``x_0`` to ``[-c, c]`` and continues from the ``ε`` consistent with it (Ho et al.'s and Dhariwal &
    Nichol's ``clip_denoised``, there ``c = 1`` for pixels): with the cosine schedule the first steps
    divide by ``sqrt(ᾱ_t) ≈ 0.006``, so a slightly wrong ``ε̂`` there sends unclipped samples far off
    the data.
    """
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be > 0, got {clip_x0}")
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    T = schedule.num_steps
    if steps is not None and not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}] (the schedule's T), got {steps}")
    if method == "ddpm" and steps not in (None, T):
        raise ValueError(f"method='ddpm' runs all T={T} steps; for fewer steps use method='ddim' "
                         "(eta=1 gives a strided ancestral sampler)")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if method == "ddpm" and eta != 0:
        raise ValueError("eta only applies to method='ddim'")

    p_device, dtype = _model_device_dtype(model)
    device = torch.device(device) if device is not None else p_device
    shape = _sample_shape(model, dim, x_init)

    num_classes = _num_classes(model)
    null = getattr(model, "null_label", None)
    if labels is not None:
        if num_classes == 0:
            raise ValueError("the model is unconditional (num_classes=0): labels must be None")
        if isinstance(labels, int):
            labels = torch.full((n,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels).to(device)
        _check_labels(labels, n, num_classes, allow_null=True)
    elif num_classes:
        raise ValueError(f"the model is class-conditional ({num_classes} classes): pass labels (int or (n,)); "
                         f"label {null} samples unconditionally")
    if guidance_scale != 1.0 and labels is None:
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs labels")
    uncond_labels = torch.full_like(labels, null) if (labels is not None and null is not None) else None

    if x_init is not None:
        if tuple(x_init.shape) != (n, *shape):
            raise ValueError(f"x_init must have shape {(n, *shape)}, got {tuple(x_init.shape)}")
        x = x_init.to(device=device, dtype=dtype).clone()
    else:
        x = torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)

    def eps_at(x: Tensor, t: int) -> Tensor:
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        eps = model(x, tt, labels)
        if guidance_scale != 1.0:
            eps_u = model(x, tt, uncond_labels)
            eps = eps_u + guidance_scale * (eps - eps_u)
        if clip_x0 is not None:
            a = float(schedule.alphas_cumprod[t])
            x0 = ((x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)).clamp(-clip_x0, clip_x0)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1.0 - a)
        return eps

    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        if method == "ddpm":
            for t in tqdm(range(T - 1, -1, -1), desc="DDPM sampling", disable=not progress, dynamic_ncols=True):
                x = schedule.step(eps_at(x, t), x, t, generator=generator)
        else:
            ts = ddim_timesteps(T, T if steps is None else steps)
            prevs = ts[1:] + [-1]
            for t, t_prev in tqdm(list(zip(ts, prevs)), desc="DDIM sampling", disable=not progress,
                                  dynamic_ncols=True):
                x = schedule.ddim_step(eps_at(x, t), x, t, t_prev, eta, generator=generator)
    finally:
        if was_training is not None:
            model.train(was_training)
    return x
