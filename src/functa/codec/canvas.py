"""The canvas layout of the codec: one latent grid over a whole item (spatial functa).

A spatial-functa base network meta-learned on patches of ``patch`` points with ``s`` cells per axis
has cells of ``patch / s`` points. If it treats every cell alike (1-NN, or bilinear with periodic
input: :attr:`~functa.fields.SpatialConfig.translation_equivariant`) and its modality places the
points at cell-aligned centres in ``[0, 1]^k`` (images: pixel centres), it extends to a grid of any
size, :meth:`~functa.fields.SpatialSiren.canvas`, and the codec fits, quantises and codes one canvas
``(*cells, C)`` per item instead of independent patches. These helpers decide and do that.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import CodecError, ConfigError
from ..fields import field_device
from ..fitting import Batch, fit_latents, get_loss, max_points_per_pass
from ..modalities import Modality
from .patches import PatchGrid, pad_to_grid

__all__ = ["canvas_layout", "cell_grid", "cell_shape", "coded_dim", "fit_canvas"]


def _centred(modality: Modality) -> bool:
    """Whether the modality's points are the cell-aligned centres ``(i + 1/2) / n`` of ``[0, 1]^k``."""
    shape = tuple(modality.shape)
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in shape]
    expected = torch.cartesian_prod(*axes).reshape(-1, len(shape))
    got = modality.coordinates().double()
    return got.shape == expected.shape and bool(torch.allclose(got, expected, atol=1e-6))


def canvas_layout(field: nn.Module, modality: Modality, layout: str, entropy_model: str = "per_dimension") -> bool:
    """Whether a codec of ``field`` codes whole items on one latent canvas. ``layout``: ``"patches"``,
    ``"canvas"`` (refused where impossible) or ``"auto"`` (a canvas where the field extends to any grid,
    its cells tile the patch and the modality's points are cell-aligned centres). The ``context`` entropy
    model needs a canvas."""
    if layout == "patches":
        if entropy_model == "context":
            raise ConfigError("entropy model 'context' codes latent grids over whole items: it needs the canvas "
                              "layout (a spatial-functa base network with 1-NN or periodic-input bilinear cells)")
        return False
    cfg = getattr(field, "config", None)
    extends = callable(getattr(field, "canvas", None)) and bool(getattr(cfg, "translation_equivariant", False))
    cells = tuple(getattr(field, "latent_shape", ())[:-1])
    shape = tuple(modality.shape)
    tiles = (extends and len(cells) == len(shape) and all(p % g == 0 for p, g in zip(shape, cells))
             and _centred(modality))
    if (layout == "canvas" or entropy_model == "context") and not tiles:
        raise ConfigError("layout 'canvas' needs a spatial-functa base network whose cells treat every position "
                          "alike (1-NN, or bilinear with field.periodic_input), tile its training patch, and see "
                          "points at cell-aligned centres in [0, 1] (images: pixel centres)")
    return tiles


def coded_dim(field: nn.Module, canvas: bool) -> int:
    """Values per coded row: the channels of a cell on a canvas, else a whole (flat) latent."""
    return int(field.latent_shape[-1]) if canvas else math.prod(field.latent_shape)


def cell_shape(field: nn.Module, modality: Modality) -> tuple[int, ...]:
    """Points per cell along each axis: the training patch over the field's grid."""
    return tuple(p // g for p, g in zip(modality.shape, field.latent_shape[:-1]))


def cell_grid(field: nn.Module, modality: Modality, shape: tuple[int, ...]) -> PatchGrid:
    """The cells of an item of ``shape`` (spatial axes): ``counts`` per axis and the ``padded`` shape;
    :class:`~functa.errors.CodecError` beyond the field's largest grid."""
    grid = PatchGrid(tuple(shape), cell_shape(field, modality))
    try:
        field.canvas(grid.counts)
    except ValueError as e:
        raise CodecError(f"a {'x'.join(map(str, shape))} item is too large for one latent canvas ({e})") from None
    return grid


def fit_canvas(field: nn.Module, modality: Modality, items: np.ndarray, steps: int, loss=None):
    """Fit one latent canvas per item of a same-shape stack ``items (B, *shape[, C])``, reflect-padded to
    whole cells, with ``steps`` meta-SGD steps (the learned per-cell rates tiled over the canvas), in
    point chunks of bounded memory. Returns the canvas field, the batch ``(x (1, N, k), y (B, N, C))``
    and the latents ``(B, *cells, C)`` on the field's device."""
    grid = cell_grid(field, modality, items.shape[1:1 + len(modality.shape)])
    canvas = field.canvas(grid.counts)
    dev = field_device(field)
    x = modality.coordinates(grid.padded)[None].to(dev)
    y = modality.with_shape(grid.padded).to_features(np.stack([pad_to_grid(it, grid) for it in items])).to(dev)
    batch = Batch(x, y)
    return canvas, batch, fit_latents(canvas, batch, steps, loss=loss or get_loss("mse"),
                                      max_points=max_points_per_pass(field)).latents
