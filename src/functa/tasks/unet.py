"""A convolutional UNet ε-predictor for DDPMs on latent grids (spatial functa, Bauer et al. 2023, App. C).

The spatial functa paper models its latent grids ``(s, s, c)`` with "the same UNet used by
Dhariwal & Nichol (2021)" (Table 6: 2 residual blocks per level, 320 channels, channel multipliers
``(2, 2)`` or ``(2, 2, 2)``, attention at grid sizes 4 / 8, dropout 0-0.4). :class:`UNetDenoiser`
follows that design, sized for a CPU by its defaults:

* sinusoidal timestep embedding of ``channels`` → Linear, SiLU, Linear to ``4 * channels``, plus a
  learned label embedding (``num_classes + 1`` rows, the last the "null" label for classifier-free
  guidance) when conditional;
* an input 3×3 convolution; per level ``blocks`` residual blocks (GroupNorm, SiLU, 3×3 conv; the
  embedding enters as a scale and shift of the second GroupNorm, "AdaGN"; SiLU, dropout and a
  zero-initialised 3×3 conv; a 1×1 conv on the skip path when the width changes), optional
  multi-head self-attention over the grid cells, and a stride-2 3×3 conv between levels;
* a middle block (residual block, attention, residual block);
* the mirrored up path, each block taking the concatenated skip activation of the down path, with
  nearest-neighbour ×2 upsampling followed by a 3×3 conv between levels;
* GroupNorm, SiLU and a zero-initialised 3×3 conv back to the latent channels, so the untrained
  model predicts exactly zero.

Grids are 1-D, 2-D or 3-D (``Conv1d`` / ``Conv2d`` / ``Conv3d``); inputs and outputs are
channels-last ``(B, *grid, C)`` as functasets store them, the network runs channels-first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_GRID_POINTS, MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total
from .diffusion import ConditionalDenoiser, _from_dict, timestep_embedding

__all__ = ["UNetConfig", "UNetDenoiser"]

MAX_GROUPS = 32  # GroupNorm groups: the largest divisor of the width up to 32 (Dhariwal & Nichol use 32)


def _groups(channels: int) -> int:
    return max(g for g in range(1, min(MAX_GROUPS, channels) + 1) if channels % g == 0)


@dataclass(frozen=True)
class UNetConfig:
    """Dhariwal & Nichol's UNet on latent grids ``(*grid_shape, in_channels)``.

    ``channels`` is the base width; level ``i`` has ``channels * channel_mult[i]`` channels and the
    grid halves between levels, so every axis of ``grid_shape`` must be divisible by
    ``2 ** (len(channel_mult) - 1)``. ``blocks`` residual blocks per level (``blocks + 1`` on the
    way up); self-attention with ``heads`` heads follows every block at a level whose grid size (its
    largest axis) is in ``attention`` (sizes that no level has are ignored), and always in the
    middle block. ``num_classes > 0`` adds a label embedding whose last row (index ``num_classes``)
    is the null label; ``cond_drop`` is the probability with which training replaces a label by it
    (spatial functa: 0.2).
    """

    grid_shape: tuple[int, ...]
    in_channels: int
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    blocks: int = 2
    attention: tuple[int, ...] = (4,)
    heads: int = 4
    dropout: float = 0.1
    num_classes: int = 0
    cond_drop: float = 0.2

    def __post_init__(self) -> None:
        check_fields(self, "unet", grid_shape=IntSeq(1, MAX_GRID_POINTS, min_len=1, max_len=3),
                     in_channels=Int(1, 65536), channels=Int(1, 8192), channel_mult=IntSeq(1, 64, min_len=1, max_len=8),
                     blocks=Int(1, 16), attention=IntSeq(1, MAX_GRID_POINTS, min_len=0, max_len=16),
                     heads=Int(1, 256), dropout=Real(0, 1, hi_open=True), num_classes=Int(0, 2**20),
                     cond_drop=Real(0, 1, hi_open=True))
        grid = self.grid_shape
        check_total("unet", math.prod(grid), MAX_GRID_POINTS, f"a {'x'.join(map(str, grid))} grid", "points")
        factor = 2 ** (len(self.channel_mult) - 1)
        if any(g % factor for g in grid):
            raise ConfigError(f"unet: a UNet of {len(self.channel_mult)} levels (channel_mult = "
                              f"{list(self.channel_mult)}) halves the grid {len(self.channel_mult) - 1} times, so every "
                              f"axis must be divisible by {factor}; the latent grid is {'x'.join(map(str, grid))} "
                              f"(use fewer levels, e.g. --set unet.channel_mult=[1], or denoiser=mlp)")
        for c in {self.channels * m for level, m in enumerate(self.channel_mult)
                  if level == len(self.channel_mult) - 1 or self.level_size(level) in self.attention}:
            if c % self.heads:
                raise ConfigError(f"unet: {c} channels of an attention layer are not divisible by heads = {self.heads}")
        check_total("unet", self.num_parameters, MAX_PARAMETERS,
                    f"a UNet of {self.channels} channels x {list(self.channel_mult)}, {self.blocks} blocks")

    def level_size(self, level: int) -> int:
        """The grid size (largest axis) at ``level`` (0 = the input grid)."""
        return max(self.grid_shape) // 2 ** level

    @property
    def embed_dim(self) -> int:
        """Width of the timestep (and label) embedding: ``4 * channels``."""
        return 4 * self.channels

    def plan(self) -> Iterator[tuple]:
        """The layers in order: ``("res", c_in, c_out, attention)``, ``("down", c)``, ``("mid", c)``,
        ``("up", c)``; the up path's ``c_in`` includes the concatenated skip channels."""
        ch = self.channels * self.channel_mult[0]
        skips = [ch]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.blocks):
                yield "res", ch, self.channels * mult, self.level_size(level) in self.attention
                ch = self.channels * mult
                skips.append(ch)
            if level != last:
                yield "down", ch
                skips.append(ch)
        yield "mid", ch
        for level in range(last, -1, -1):
            for i in range(self.blocks + 1):
                out = self.channels * self.channel_mult[level]
                yield "res", ch + skips.pop(), out, self.level_size(level) in self.attention
                ch = out
            if level:
                yield "up", ch

    @property
    def num_parameters(self) -> int:
        """Exact parameter count of :class:`UNetDenoiser` with this config."""
        k = 3 ** len(self.grid_shape)
        e, c0 = self.embed_dim, self.channels * self.channel_mult[0]

        def conv(a: int, b: int, kernel: int = k) -> int:
            return a * b * kernel + b

        def res(a: int, b: int) -> int:
            return 2 * a + conv(a, b) + (e * 2 * b + 2 * b) + 2 * b + conv(b, b) + (conv(a, b, 1) if a != b else 0)

        def attn(c: int) -> int:
            return 2 * c + (c * 3 * c + 3 * c) + (c * c + c)

        n = (self.channels * e + e) + (e * e + e) + (self.num_classes + 1) * e * bool(self.num_classes)
        n += conv(self.in_channels, c0) + 2 * c0 + conv(c0, self.in_channels)
        for step in self.plan():
            if step[0] == "res":
                n += res(step[1], step[2]) + (attn(step[2]) if step[3] else 0)
            elif step[0] in ("down", "up"):
                n += conv(step[1], step[1])
            else:
                n += 2 * res(step[1], step[1]) + attn(step[1])
        return n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return _from_dict(cls, d)


def _conv(dims: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, zero: bool = False) -> nn.Module:
    layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](c_in, c_out, kernel, stride=stride, padding=kernel // 2)
    if zero:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    """``skip(x) + Conv_0(Dropout(SiLU(GN(h) (1 + scale) + shift)))``, ``h = Conv(SiLU(GN(x)))``,
    ``(scale, shift) = Linear(SiLU(emb))``, on ``(B, C_in, *grid)`` → ``(B, C_out, *grid)``."""

    def __init__(self, dims: int, c_in: int, c_out: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = _conv(dims, c_in, c_out)
        self.emb = nn.Linear(embed_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(dims, c_out, c_out, zero=True)
        self.skip = _conv(dims, c_in, c_out, kernel=1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (x.ndim - 2))).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """``x + Linear_0(MHSA(GN(x)))`` over the cells of ``(B, C, *grid)`` (``heads`` heads)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(h).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return x + self.proj(a).transpose(1, 2).reshape(x.shape)


class _Level(nn.Module):
    """A residual block, optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class Downsample(nn.Module):
    """Stride-2 3×3 conv: ``(B, C, *grid)`` → ``(B, C, *grid / 2)``."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(dims, channels, channels, stride=2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv: ``(B, C, *grid)`` → ``(B, C, *grid * 2)``."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(dims, channels, channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetDenoiser(ConditionalDenoiser):
    """ε-predictor on latent grids ``(x_t (B, *grid, C), t (B,), labels (B,) | None) → ε̂ (B, *grid, C)``.

    Same interface and label semantics as :class:`functa.tasks.diffusion.ResidualMLPDenoiser`: an
    unconditional model takes ``labels=None``; a conditional one needs labels in ``[0, num_classes]``,
    where ``num_classes`` (:attr:`null_label`) asks for the unconditional prediction.
    :attr:`sample_shape` ``(*grid, C)`` tells :func:`functa.tasks.diffusion.sample` what to draw.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dims, e = len(cfg.grid_shape), cfg.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.channels, e), nn.SiLU(), nn.Linear(e, e))
        self.label_embed = nn.Embedding(cfg.num_classes + 1, e) if cfg.num_classes > 0 else None
        c0 = cfg.channels * cfg.channel_mult[0]
        self.input = _conv(dims, cfg.in_channels, c0)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        path = self.down
        for step in cfg.plan():
            kind = step[0]
            if kind == "res":
                _, c_in, c_out, attn = step
                path.append(_Level(ResBlock(dims, c_in, c_out, e, cfg.dropout),
                                   AttentionBlock(c_out, cfg.heads) if attn else None))
            elif kind == "down":
                path.append(Downsample(dims, step[1]))
            elif kind == "up":
                path.append(Upsample(dims, step[1]))
            else:  # "mid"
                c = step[1]
                self.mid = nn.ModuleList([ResBlock(dims, c, c, e, cfg.dropout), AttentionBlock(c, cfg.heads),
                                          ResBlock(dims, c, c, e, cfg.dropout)])
                path = self.up
        self.out_norm = nn.GroupNorm(_groups(c0), c0)
        self.output = _conv(dims, c0, cfg.in_channels, zero=True)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one latent grid, channels last: ``(*grid_shape, in_channels)``."""
        return (*self.config.grid_shape, self.config.in_channels)


    def forward(self, xt: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if tuple(xt.shape[1:]) != self.sample_shape:
            raise ValueError(f"expected x_t of shape (B, {', '.join(map(str, self.sample_shape))}), "
                             f"got {tuple(xt.shape)}")
        if t.shape != (xt.shape[0],):
            raise ValueError(f"expected timesteps of shape ({xt.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, cfg.channels).to(xt.dtype))
        emb = self.with_labels(emb, labels)
        h = self.input(xt.movedim(-1, 1))  # channels-first (B, C, *grid)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], 1), emb) if isinstance(layer, _Level) else layer(h, emb)
        return self.output(F.silu(self.out_norm(h))).movedim(1, -1)
