"""Classifiers: an MLP on functa latents and a small CNN on the arrays (the baseline: waveforms, pixels, voxels).

Paper recipes: functa App. A.7 (Haiku-style MLP with SiLU and dropout, width 128-512, depth 2-4)
and spatial functa App. B.1 (width 1024, depth 3, dropout 0.2, label smoothing 0.1, AdamW with
weight decay 0.1, EMA 0.9999). Both models are trained by :class:`functa.tasks.train.Trainer`
with :func:`classification_loss`, so accuracy and parameter counts compare like for like.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_GRID_POINTS, MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total

__all__ = ["ConvClassifier", "ConvConfig", "MLPClassifier", "MLPConfig", "TransformerClassifier", "TransformerConfig", "accuracy", "classification_loss",
           "count_parameters", "predict"]


@dataclass(frozen=True)
class MLPConfig:
    """``depth`` hidden layers of ``width`` units (SiLU, dropout), then a linear read-out."""

    in_dim: int
    num_classes: int
    width: int = 512
    depth: int = 3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_fields(self, "model", in_dim=Int(1, 2**24), num_classes=Int(2, 2**20), width=Int(1, 65536),
                     depth=Int(0, 64), dropout=Real(0, 1, hi_open=True))
        w, d = self.width, self.depth
        n = (self.in_dim + 1) * w + (d - 1) * (w + 1) * w + (w + 1) * self.num_classes if d else \
            (self.in_dim + 1) * self.num_classes
        check_total("model", n, MAX_PARAMETERS, f"an MLP of width {w}, depth {d} on {self.in_dim}-d inputs")

    def to_dict(self) -> dict:
        return asdict(self)


class MLPClassifier(nn.Module):
    """Latents ``(B, D)`` → logits ``(B, num_classes)``."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        d = config.in_dim
        for _ in range(config.depth):
            layers += [nn.Linear(d, config.width), nn.SiLU(), nn.Dropout(config.dropout)]
            d = config.width
        layers.append(nn.Linear(d, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.config.in_dim:
            raise ValueError(f"expected latents (B, {self.config.in_dim}), got {tuple(z.shape)}")
        return self.net(z)


@dataclass(frozen=True)
class ConvConfig:
    """Array baseline on a 1-D (waveforms), 2-D (pixels) or 3-D (voxels) grid: ``len(channels)``
    convolutions of ``kernel`` (per axis) and ``stride``, zero-padded by ``kernel // 2`` (SiLU,
    dropout), a hidden linear layer of ``width`` and a read-out (after Maturana & Scherer's 3D CNN,
    as in functa App. A.7). The defaults, stride-2 3×3(×3) convolutions, are those of 2-D / 3-D
    grids; :data:`functa.downstream.BASELINE_GRID_DEFAULTS` gives 1-D grids wider kernels and strides."""

    in_channels: int
    num_classes: int
    grid_shape: tuple[int, ...]
    channels: tuple[int, ...] = (32, 64, 128)
    width: int = 128
    dropout: float = 0.2
    kernel: int = 3  # absent from configs saved before 1-D grids: they used these defaults
    stride: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.grid_shape, (list, tuple)) and len(self.grid_shape) not in (1, 2, 3):
            raise ConfigError(f"the conv baseline takes 1-D, 2-D or 3-D grids, got {tuple(self.grid_shape)}")
        check_fields(self, "model", in_channels=Int(1, 4096), num_classes=Int(2, 2**20),
                     grid_shape=IntSeq(1, MAX_GRID_POINTS, min_len=1, max_len=3),
                     channels=IntSeq(1, 8192, min_len=0, max_len=16), width=Int(1, 65536),
                     dropout=Real(0, 1, hi_open=True), kernel=Int(1, 63), stride=Int(1, 64))
        grid, c, n = self.grid_shape, self.in_channels, 0
        check_total("model", math.prod(grid), MAX_GRID_POINTS, f"a {'x'.join(map(str, grid))} grid", "points")
        for out in self.channels:
            n += c * out * self.kernel ** len(grid) + out
            c, grid = out, self.conv_output(grid)
        n += (c * math.prod(grid) + 1) * self.width + (self.width + 1) * self.num_classes
        check_total("model", n, MAX_PARAMETERS, f"a conv net of channels {list(self.channels)} and width {self.width} "
                    f"on {'x'.join(map(str, self.grid_shape))} grids")

    def conv_output(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The grid after one convolution (padding ``kernel // 2``; ``(g + 1) // 2`` for 3 and 2)."""
        k, s = self.kernel, self.stride
        return tuple((g + 2 * (k // 2) - k) // s + 1 for g in grid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ConvConfig":
        d = dict(d)
        grid = d.pop("grid_shape", None) or d.pop("image_shape")  # image_shape: configs of 2-D-only versions
        return cls(**{**d, "grid_shape": tuple(grid), "channels": tuple(d["channels"])})


class ConvClassifier(nn.Module):
    """Arrays ``(B, C, *grid_shape)`` (waveforms at unit RMS, images or voxel grids in ``[0, 1]``)
    → logits ``(B, num_classes)``."""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = config
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(config.grid_shape)]
        layers: list[nn.Module] = []
        c, grid = config.in_channels, tuple(config.grid_shape)
        for out in config.channels:
            layers += [conv(c, out, config.kernel, stride=config.stride, padding=config.kernel // 2), nn.SiLU(),
                       nn.Dropout(config.dropout)]
            c, grid = out, config.conv_output(grid)
        layers += [nn.Flatten(), nn.Linear(c * math.prod(grid), config.width), nn.SiLU(), nn.Dropout(config.dropout),
                   nn.Linear(config.width, config.num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != 2 + len(cfg.grid_shape) or x.shape[1] != cfg.in_channels or \
                tuple(x.shape[2:]) != tuple(cfg.grid_shape):
            raise ValueError(f"expected arrays (B, {cfg.in_channels}, {', '.join(map(str, cfg.grid_shape))}), "
                             f"got {tuple(x.shape)}")
        return self.net(x)


@dataclass(frozen=True)
class TransformerConfig:
    """Pre-LN Transformer over the cells of a latent grid (spatial functa §5.1): one token per cell
    (its ``token_dim`` channels, linearly embedded to ``width``), learned absolute position embeddings,
    ``depth`` blocks of ``heads``-head self-attention and a ``mlp_ratio * width`` MLP (GELU, dropout),
    a final LayerNorm, mean pooling over the tokens and a linear read-out."""

    tokens: int
    token_dim: int
    num_classes: int
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, "transformer", tokens=Int(1, 2**16), token_dim=Int(1, 2**16), num_classes=Int(2, 2**20),
                     width=Int(1, 8192), depth=Int(1, 64), heads=Int(1, 256), mlp_ratio=Int(1, 16),
                     dropout=Real(0, 1, hi_open=True))
        if self.width % self.heads:
            raise ConfigError(f"transformer.width = {self.width} is not divisible by heads = {self.heads}")
        w = self.width
        block = 4 * (w * w + w) + 2 * (self.mlp_ratio * w * w) + self.mlp_ratio * w + w + 4 * w
        n = (self.token_dim + 1) * w + self.tokens * w + self.depth * block + 2 * w + (w + 1) * self.num_classes
        check_total("transformer", n, MAX_PARAMETERS, f"a transformer of width {w}, depth {self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)


class TransformerClassifier(nn.Module):
    """Latent grids, flat ``(B, tokens * token_dim)`` (cells row-major, channels last) or shaped
    ``(B, *grid, token_dim)``, → logits ``(B, num_classes)``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.token_dim, c.width)
        self.position = nn.Parameter(torch.randn(1, c.tokens, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, c.mlp_ratio * c.width, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.num_classes)

    def forward(self, z: Tensor) -> Tensor:
        c = self.config
        if z.shape[0] and z[0].numel() != c.tokens * c.token_dim:
            raise ValueError(f"expected latent grids of {c.tokens} cells x {c.token_dim} channels, got {tuple(z.shape)}")
        h = self.embed(z.reshape(z.shape[0], c.tokens, c.token_dim)) + self.position
        return self.head(self.norm(self.blocks(h)).mean(1))


def classification_loss(label_smoothing: float = 0.0):
    """Loss function for the trainer: cross-entropy of ``model(inputs)`` on ``labels``."""

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels, label_smoothing=label_smoothing)

    return loss


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, batch_size: int = 4096) -> Tensor:
    """Predicted classes ``(N,)`` (model in eval mode)."""
    was = model.training
    model.eval()
    out = torch.cat([model(inputs[s:s + batch_size]).argmax(1) for s in range(0, len(inputs), batch_size)])
    model.train(was)
    return out


def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy in ``[0, 1]``."""
    return float((predict(model, inputs, batch_size) == labels).double().mean())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
