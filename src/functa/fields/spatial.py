"""Spatial functa: a SIREN shift-modulated by a *grid* of latents (Bauer et al. 2023, §4 and App. C).

The latent of one datum is a grid ``z (s, ..., s, c)`` (``s^k`` cells for ``k``-D coordinates). One
convolution over the grid (``kernel`` 1: a per-cell linear map, the paper's default; 3 as an option)
turns it into shift modulations for every sine layer, ``m (s, ..., s, (depth - 1) * width)``; each query
point ``x`` in ``[0, 1]^k`` reads its modulations from the grid:

* ``interpolation = "nearest"`` (1-NN, the paper's better mode downstream): the cell containing ``x``,
  ``j = clamp(floor(s x), 0, s - 1)`` per axis; the SIREN sees the point's *local* coordinates in its
  cell, ``s x - j`` in ``[0, 1]^k`` (the paper's ``(s x) mod 1``, with ``x = 1`` kept in the last cell).
  Perturbing one cell changes the outputs of the points in that cell only.
* ``interpolation = "bilinear"``: cell centres at ``(j + 1/2) / s``; the 2^k neighbouring cells weighted
  by the (multi)linear interpolation weights, edges clamped. The SIREN sees the binary encoding of the
  integer pixel index, ``binary_bits`` bits per axis (``i = clamp(floor(2^bits x), 0, 2^bits - 1)``,
  bits in ``{0, 1}``, most significant first), as in the paper; ``binary_bits = None`` feeds the global
  coordinates ``x`` instead (which, unlike the binary code, is not tied to one resolution);
  ``periodic_input = True`` feeds ``(sin, cos)(2 pi s x)`` per axis, the position within a cell as a
  continuous periodic code (beyond the paper: the field then treats every cell alike and its outputs are
  continuous across cell borders). A cell influences the points within one cell width of its centre.

A *translation-equivariant* field (1-NN, or bilinear with ``periodic_input``) extends to a latent grid of
any size, :meth:`SpatialSiren.canvas`: one grid over a whole photo, ``patch / s`` pixels per cell, which
the spatial codec fits and codes as one item (no patch seams with bilinear interpolation).

Then every layer is ``h_l = sin(w0 (W_l h_{l-1} + b_l + m_l(x)))`` and ``f = W_out h + b_out + 0.5`` as in
:class:`~functa.fields.LatentModulatedSiren`; with ``s = 1`` (and a 1x1 map) the field *is* that
vector-functa SIREN (its latent map is the 1x1 convolution). Modulations are per point and per layer,
``m_l(x)`` of shape ``(B, N, W)``: the public JAX port reshapes ``(N, L * W)`` straight to ``(L, N, W)``,
which mixes points and layers (reference-study §1.11); the locality tests rule that out here. With the
1x1 map, which is affine, the point's *latent* is interpolated first ``(B, N, c)`` and mapped one layer at
a time (exact, since the interpolation weights sum to one), so no ``(B, N, L, W)`` tensor is held; a 3x3
map interpolates the shift grid.

Meta-SGD rates are one per cell, shared over the channels (``(s, ..., s, 1)``), as in the paper.
It works through the autograd inner loop, and also implements the fast path
(:class:`~functa.fields.LatentAdjoint`): an explicit gradient with respect to the latent grids, the
adjoint of the gather (a scatter-add into the cells) after the SIREN's own backward.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_PARAMETERS, Bool, Choice, Int, Real, RealPair, check_fields, check_total
from .base import register_field
from .init import BiasInit, init_latent_map_, init_siren_linear_
from .matmul import matmul_nt
from .meta_sgd import MetaSGDLrs
from .siren import MAX_DEPTH, MAX_IO_DIM, MAX_WIDTH
from .sincos import sin_cos

__all__ = ["SpatialConfig", "SpatialSiren", "SpatialTrace", "MAX_GRID"]

MAX_GRID = 1024  # cells per axis
MAX_CHANNELS = 65536


@dataclass(frozen=True)
class SpatialConfig:
    """Hyper-parameters of a spatial-functa SIREN (module docstring). ``depth`` counts all layers, the
    output layer included; ``in_dim`` is the coordinate dimension ``k`` (the grid has ``grid^k`` cells)."""

    in_dim: int = 2
    out_dim: int = 1
    width: int = 256
    depth: int = 6
    grid: int = 4
    channels: int = 64
    kernel: int = 1
    interpolation: Literal["nearest", "bilinear"] = "nearest"
    binary_bits: int | None = None  # bilinear only: SIREN input = binary pixel index (None: global x)
    periodic_input: bool = False  # bilinear only: SIREN input = (sin, cos)(2 pi s x), periodic in the cells
    w0: float = 30.0
    bias_init: BiasInit = "zeros"
    latent_map_init: Literal["haiku", "torch"] = "haiku"
    output_offset: float = 0.5
    meta_sgd: bool = True
    meta_sgd_init: tuple[float, float] = (0.005, 0.1)
    meta_sgd_clip: tuple[float, float] | None = (0.0, 1.0)
    inner_lr: float = 1e-2  # used only when meta_sgd is False

    def __post_init__(self) -> None:
        check_fields(self, "field", in_dim=Int(1, 3), out_dim=Int(1, MAX_IO_DIM), width=Int(1, MAX_WIDTH),
                     depth=Int(2, MAX_DEPTH), grid=Int(1, MAX_GRID), channels=Int(1, MAX_CHANNELS),
                     kernel=Int(1, 3), interpolation=Choice("nearest", "bilinear"),
                     binary_bits=Int(1, 16, optional=True), periodic_input=Bool(), w0=Real(0, 1e4, lo_open=True),
                     bias_init=Choice("zeros", "uniform"), latent_map_init=Choice("haiku", "torch"),
                     output_offset=Real(-1e6, 1e6), meta_sgd=Bool(), meta_sgd_init=RealPair(0, 1e3),
                     meta_sgd_clip=RealPair(0, 1e3, optional=True), inner_lr=Real(0, 1e3, lo_open=True))
        if self.kernel == 2:
            raise ConfigError("field.kernel = 2 is invalid (allowed: 1, the paper's 1x1 map, or 3)")
        if self.binary_bits is not None and self.interpolation != "bilinear":
            raise ConfigError("field.binary_bits is the SIREN input of bilinear interpolation; 1-NN uses local "
                              "coordinates (set field.interpolation=bilinear, or drop binary_bits)")
        if self.periodic_input and (self.interpolation != "bilinear" or self.binary_bits is not None):
            raise ConfigError("field.periodic_input is a SIREN input of bilinear interpolation, instead of binary_bits "
                              "(1-NN already uses local coordinates)")
        check_total("field", self.num_parameters, MAX_PARAMETERS,
                    f"width {self.width}, depth {self.depth}, grid {self.grid}, channels {self.channels}")
        check_total("field", self.grid ** self.in_dim * self.channels, 2**26, f"a {self.grid}^{self.in_dim} x "
                    f"{self.channels} latent grid", "latent values")

    @property
    def num_mod_layers(self) -> int:
        return self.depth - 1

    @property
    def siren_in_dim(self) -> int:
        """What the first sine layer sees: local or global coordinates, ``in_dim * binary_bits`` bits, or
        ``2 * in_dim`` periodic features."""
        if self.binary_bits is not None:
            return self.in_dim * self.binary_bits
        return 2 * self.in_dim if self.periodic_input else self.in_dim

    @property
    def translation_equivariant(self) -> bool:
        """Whether the field treats every cell alike (1-NN, or bilinear with periodic input), so that it
        extends to a latent grid of any size (:meth:`SpatialSiren.canvas`)."""
        return self.interpolation == "nearest" or self.periodic_input

    @property
    def num_parameters(self) -> int:
        w, mods = self.width, self.num_mod_layers * self.width
        n = (self.siren_in_dim + 1) * w + (self.depth - 2) * (w + 1) * w + (w + 1) * self.out_dim
        n += (self.channels * self.kernel ** self.in_dim + 1) * mods
        return n + self.grid ** self.in_dim

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PatchLayout:
    """Shared coordinates grouped by cell: point ``perm[j * points + p]`` is local point ``p`` of cell ``j``;
    ``inverse`` undoes ``perm``; ``local (1, points, k)`` the local coordinates every cell shares."""

    perm: Tensor
    inverse: Tensor
    local: Tensor
    cells: int
    points: int


@dataclass
class SpatialTrace:
    """What :meth:`SpatialSiren.forward_points` keeps for the explicit backward: ``cos(pre)`` of every
    sine layer (``(1|B, N, W)``, or ``(B * S, P, W)`` per patch), the w0-folded weights, the points'
    cells and weights ``[(1|B, N)]``, and the patch layout when the fast 1-NN layout was used."""

    cos: list[Tensor]
    weights: list[Tensor]
    index: list[Tensor]
    weight: list[Tensor]
    layout: PatchLayout | None = None


@register_field
class SpatialSiren(nn.Module):
    """SIREN shift-modulated by a latent grid ``(B, s, ..., s, c)`` (module docstring).

    Parameter groups: ``layers`` + ``output`` + ``latent_map`` are the base network, ``inner_lrs`` the
    per-cell meta-SGD rates."""

    name: ClassVar[str] = "spatial"
    config_class: ClassVar[type] = SpatialConfig

    def __init__(self, config: SpatialConfig) -> None:
        super().__init__()
        self.config = c = config
        k = c.in_dim
        self.cells: tuple[int, ...] = (c.grid,) * k  # cells per axis (a canvas may differ from config.grid)
        self.latent_shape = self.cells + (c.channels,)
        self.in_dim, self.out_dim = c.in_dim, c.out_dim
        dims = [c.siren_in_dim] + [c.width] * c.num_mod_layers
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(c.num_mod_layers))
        for i, layer in enumerate(self.layers):
            init_siren_linear_(layer.weight, layer.bias, c.w0, is_first=i == 0, bias_init=c.bias_init)
        self.output = nn.Linear(c.width, c.out_dim)
        init_siren_linear_(self.output.weight, self.output.bias, c.w0, is_first=False, bias_init=c.bias_init)
        mods = c.num_mod_layers * c.width
        if c.kernel == 1:  # a 1x1 convolution: one linear map applied to every cell
            self.latent_map: nn.Module = nn.Linear(c.channels, mods)
            init_latent_map_(self.latent_map.weight, self.latent_map.bias, c.latent_map_init)
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]
            self.latent_map = conv(c.channels, mods, c.kernel, padding=c.kernel // 2)
        self.inner_lrs_per_cell = MetaSGDLrs(c.grid ** k, c.meta_sgd_init, c.meta_sgd_clip, learned=c.meta_sgd,
                                             fixed_lr=c.inner_lr)

    # ------------------------------------------------------------------ the Field protocol
    def base_parameters(self) -> list[nn.Parameter]:
        return ([p for layer in self.layers for p in layer.parameters()] + list(self.output.parameters())
                + list(self.latent_map.parameters()))

    def meta_parameters(self) -> list[nn.Parameter]:
        return list(self.inner_lrs_per_cell.parameters())

    def inner_lrs(self) -> Tensor:
        """Per-cell rates ``(*cells, 1)``, broadcast over the channels. A canvas tiles the learned
        ``(s, ..., s)`` rates periodically (cell ``j`` takes the rate of cell ``j mod s``) and scales them
        by its size in training grids, ``prod(cells) / s^k``: the inner loss is the *mean* over the item's
        points, so a cell's gradient on a canvas is that much smaller than in a training grid (with this,
        meta-SGD on a canvas of whole grids is meta-SGD on each grid)."""
        s = self.config.grid
        r = self.inner_lrs_per_cell().reshape((s,) * self.config.in_dim)
        if self.cells != r.shape:
            r = r.repeat(*(-(-g // s) for g in self.cells))[tuple(slice(0, g) for g in self.cells)]
            r = r * (math.prod(self.cells) / s ** self.config.in_dim)
        return r[..., None]

    def canvas(self, cells: tuple[int, ...]) -> "SpatialSiren":
        """The same field over a latent grid of ``cells`` per axis (e.g. a whole photo, one cell per
        ``patch / s`` pixels), sharing every parameter: coordinates in ``[0, 1]^k`` then span all the
        cells. Needs a translation-equivariant field (:attr:`SpatialConfig.translation_equivariant`);
        with 1-NN and the 1x1 map a canvas of whole training grids equals fitting each grid on its own (a 3x3
        map also sees the neighbouring grids' cells). The view shares the parameters (and module state such as
        ``training``) at the time it is made: make it where it is used."""
        c = self.config
        cells = tuple(int(g) for g in cells)
        if len(cells) != c.in_dim or min(cells) < 1 or max(cells) > MAX_GRID:
            raise ValueError(f"a canvas needs {c.in_dim} cell counts in [1, {MAX_GRID}], got {cells}")
        if not c.translation_equivariant:
            raise ConfigError("only 1-NN fields and bilinear fields with periodic_input extend to a canvas (the "
                              "SIREN input of this field depends on the position in the whole grid)")
        view = copy.copy(self)  # shares the parameter and module dictionaries
        view.cells, view.latent_shape = cells, cells + (c.channels,)
        return view

    def zero_latents(self, batch: int, device=None, dtype=None) -> Tensor:
        p = self.output.weight
        return torch.zeros(batch, *self.latent_shape, device=device or p.device, dtype=dtype or p.dtype)

    def activation_floats_per_point(self) -> int:
        # the gathered modulations of every layer are held per point, beside the widest activation
        return self.config.width * (1 + self.config.num_mod_layers)

    def to_config(self) -> dict:
        return {"name": self.name, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "SpatialSiren":
        config = {k: v for k, v in config.items() if k != "name"}
        unknown = sorted(set(config) - set(SpatialConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown {cls.name} settings {unknown}; valid: {sorted(SpatialConfig.__dataclass_fields__)}")
        return cls(SpatialConfig(**config))

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    # ------------------------------------------------------------------ modulations
    def modulation_grid(self, latents: Tensor) -> Tensor:
        """Latent grids ``(B, *cells, c)`` -> shift grids ``(B, prod(cells), depth - 1, W)`` (cells row-major)."""
        c = self.config
        b = latents.shape[0]
        if c.kernel == 1:
            m = self.latent_map(latents)
        else:  # channels-first for the convolution, then back
            k = c.in_dim
            perm = (0, k + 1, *range(1, k + 1))
            m = self.latent_map(latents.permute(*perm)).permute(0, *range(2, k + 2), 1)
        return m.reshape(b, math.prod(self.cells), c.num_mod_layers, c.width)

    def _cells(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Per query point: the flat indices of the cells it reads ``[(1|B, N)]``, their weights
        ``[(1|B, N)]`` and the SIREN input ``(1|B, N, siren_in_dim)``."""
        c = self.config
        k = c.in_dim
        strides = [math.prod(self.cells[a + 1:]) for a in range(k)]
        s = torch.tensor(self.cells, dtype=x.dtype, device=x.device)
        if c.interpolation == "nearest":
            sx = x * s
            j = torch.minimum(sx.floor().clamp_min(0), s - 1)
            flat = (j * torch.tensor(strides, dtype=x.dtype, device=x.device)).sum(-1).long()
            return [flat], [torch.ones_like(flat, dtype=x.dtype)], sx - j
        u = x * s - 0.5
        i0 = u.floor()
        frac = u - i0
        lo = torch.minimum(i0.clamp_min(0), s - 1).long()
        hi = torch.minimum((i0 + 1).clamp_min(0), s - 1).long()
        index, weight = [], []
        for corner in itertools.product((0, 1), repeat=k):
            flat = sum((hi[..., a] if bit else lo[..., a]) * strides[a] for a, bit in enumerate(corner))
            w = math.prod((frac[..., a] if bit else 1 - frac[..., a]) for a, bit in enumerate(corner))
            index.append(flat)
            weight.append(w)
        if c.periodic_input:
            phase = (2 * math.pi) * x * s
            return index, weight, torch.cat([torch.sin(phase), torch.cos(phase)], -1)
        if c.binary_bits is None:
            return index, weight, x
        n = 2 ** c.binary_bits
        pix = (x * n).floor().clamp(0, n - 1).long()  # (.., N, k)
        shifts = torch.arange(c.binary_bits - 1, -1, -1, device=x.device)
        bits = (pix[..., None] >> shifts) & 1  # (.., N, k, bits), most significant first
        return index, weight, bits.reshape(*pix.shape[:-1], -1).to(x.dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """Outputs ``(B, N, out_dim)`` at coordinates ``x (1|B, N, k)`` in ``[0, 1]^k`` of latent grids
        ``latents (B, *cells, c)`` (``cells`` is ``(s, ..., s)``, or a canvas's)."""
        return self.forward_points(x, latents)[0]

    def forward_points(self, x: Tensor, latents: Tensor, keep_trace: bool = False) -> tuple[Tensor, "SpatialTrace | None"]:
        """Outputs ``(B, N, out_dim)`` and, with ``keep_trace``, what :meth:`backward_latents` needs."""
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.in_dim:
            raise ValueError(f"expected coordinates (1|B, N, {c.in_dim}), got {tuple(x.shape)}")
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"expected latent grids (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        layout = self._patch_layout(x)
        if layout is not None:
            return self._forward_patches(layout, latents, keep_trace)
        index, weight, h = self._cells(x)
        shift_of = self._point_shifts(latents, index, weight)
        trace = SpatialTrace([], [], index, weight) if keep_trace else None
        for i, layer in enumerate(self.layers):
            ws = layer.weight * c.w0  # w0 folded into the weights: pre = h (w0 W)^T + w0 (b + m)
            pre = matmul_nt(h, ws) + (layer.bias + shift_of(i)) * c.w0
            h, cs = sin_cos(pre, need_cos=keep_trace)
            if trace is not None:
                trace.cos.append(cs)
                trace.weights.append(ws)
        out = matmul_nt(h, self.output.weight) + (self.output.bias + c.output_offset)
        return out, trace

    def _patch_layout(self, x: Tensor) -> "PatchLayout | None":
        """The fast layout of 1-NN on shared coordinates ``(1, N, k)`` whose cells all hold the same
        local points (a regular grid divisible by ``s``; equal to within 1e-6, float rounding, and the
        first cell's are used): each patch is then an independent small field, a vector-functa SIREN on
        the patch's local points with the cell's modulations; else ``None``."""
        c = self.config
        if c.interpolation != "nearest" or x.shape[0] != 1:
            return None
        index, _, local = self._cells(x)
        idx, cells, n = index[0][0], math.prod(self.cells), x.shape[1]
        if n % cells or not bool((torch.bincount(idx, minlength=cells) == n // cells).all()):
            return None
        perm = torch.argsort(idx, stable=True)
        loc = local[0, perm].reshape(cells, n // cells, -1)
        if not torch.allclose(loc, loc[:1].expand_as(loc), rtol=0.0, atol=1e-6):
            return None
        return PatchLayout(perm, torch.argsort(perm), loc[:1], cells, n // cells)

    def _forward_patches(self, layout: "PatchLayout", latents: Tensor, keep_trace: bool):
        """1-NN on a regular grid (:meth:`_patch_layout`): ``B * S`` small fields of ``P`` points, each
        shifted by its cell's modulations ``(B * S, 1, W)`` (no per-point gather)."""
        c = self.config
        b = latents.shape[0]
        shift = self.modulation_grid(latents).reshape(b * layout.cells, c.num_mod_layers, c.width)
        trace = SpatialTrace([], [], [], [], layout) if keep_trace else None
        h = layout.local  # (1, P, k), shared by every patch
        for i, layer in enumerate(self.layers):
            ws = layer.weight * c.w0
            pre = matmul_nt(h, ws) + ((layer.bias + shift[:, i]) * c.w0)[:, None, :]  # (B * S, P, W)
            h, cs = sin_cos(pre, need_cos=keep_trace)
            if trace is not None:
                trace.cos.append(cs)
                trace.weights.append(ws)
        out = matmul_nt(h, self.output.weight) + (self.output.bias + c.output_offset)
        return out.reshape(b, layout.cells * layout.points, -1)[:, layout.inverse], trace

    def _backward_patches(self, trace: "SpatialTrace", grad_out: Tensor) -> Tensor:
        """:meth:`backward_latents` of :meth:`_forward_patches`: per patch, the SIREN's backward with the
        shift gradient summed over the patch's points."""
        c, lay = self.config, trace.layout
        b = grad_out.shape[0]
        g = grad_out[:, lay.perm].reshape(b, lay.cells, lay.points, -1)
        g = g * self.output.weight[0] if g.shape[-1] == 1 else g @ self.output.weight  # (B, S, P, W)
        g_shift: list[Tensor] = []
        for i in range(c.num_mod_layers - 1, -1, -1):
            cos = trace.cos[i]
            gz = g * cos.reshape(-1, lay.cells, *cos.shape[1:])  # a trace of batch 1 broadcasts
            g_shift.append(gz.sum(2))
            if i > 0:
                g = gz @ trace.weights[i]
        g_grid = torch.stack(g_shift[::-1], 2).reshape(b, lay.cells, -1) * c.w0  # (B, S, L * W)
        return self._map_backward(g_grid)

    def _map_backward(self, g_grid: Tensor) -> Tensor:
        """Through the latent map: shift-grid gradients ``(B, S, L * W)`` -> latent-grid gradients."""
        c = self.config
        b = g_grid.shape[0]
        if c.kernel == 1:
            return (g_grid @ self.latent_map.weight).reshape(b, *self.latent_shape)
        k = c.in_dim
        g_cf = g_grid.transpose(1, 2).reshape(b, -1, *self.latent_shape[:-1])  # channels first
        transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[k]
        g_lat = transpose(g_cf, self.latent_map.weight, padding=c.kernel // 2)
        return g_lat.permute(0, *range(2, k + 2), 1)

    def _point_shifts(self, latents: Tensor, index: list[Tensor], weight: list[Tensor]):
        """``i -> `` the points' shifts of sine layer ``i`` ``(B, N, W)``. With the 1x1 map the *latents*
        are interpolated first, ``(B, N, c)``, and mapped layer by layer (the map is affine and the weights
        sum to one, so this is exact): no ``(B, N, depth - 1, W)`` tensor is ever held. A 3x3 map
        interpolates the shift grid instead."""
        c = self.config
        b = latents.shape[0]
        if c.kernel != 1:
            shift = self._gather(self.modulation_grid(latents), index, weight)
            return lambda i: shift[:, :, i]
        zp = self._gather(latents.reshape(b, -1, 1, c.channels), index, weight)[:, :, 0]  # (B, N, c)
        maps = self.latent_map.weight.reshape(c.num_mod_layers, c.width, c.channels)
        bias = self.latent_map.bias.reshape(c.num_mod_layers, c.width)
        return lambda i: matmul_nt(zp, maps[i]) + bias[i]

    @staticmethod
    def _gather(grid: Tensor, index: list[Tensor], weight: list[Tensor]) -> Tensor:
        """Point modulations ``(B, N, L, W)``: the cells' rows of ``grid (B, S, L, W)``, weighted."""
        b = grid.shape[0]
        shift = None
        for idx, w in zip(index, weight):
            idx = idx.expand(b, -1)  # (B, N)
            rows = torch.gather(grid, 1, idx[:, :, None, None].expand(-1, -1, *grid.shape[2:]))
            term = rows * w.expand(b, -1)[:, :, None, None]
            shift = term if shift is None else shift + term
        return shift

    def backward_latents(self, trace: "SpatialTrace", grad_out: Tensor) -> Tensor:
        """Gradient of ``sum(grad_out * f)`` with respect to the latent grids ``(B, *latent_shape)``,
        written out: back through the sine layers to the point modulations, scatter-added into their
        cells (the adjoint of the gather / interpolation), then through the 1x1 (or 3x3) map.
        A first-order differentiable graph, as for :class:`~functa.fields.LatentModulatedSiren`."""
        if trace.layout is not None:
            return self._backward_patches(trace, grad_out)
        c = self.config
        b, n = grad_out.shape[0], grad_out.shape[1]
        if grad_out.shape[-1] == 1:
            g = grad_out * self.output.weight[0]
        else:
            g = grad_out @ self.output.weight  # (B, N, W)
        maps = self.latent_map.weight.reshape(c.num_mod_layers, c.width, -1) if c.kernel == 1 else None
        g_shift: list[Tensor] = []
        g_point = None  # 1x1 map: the gradient of the interpolated point latents (B, N, c)
        for i in range(c.num_mod_layers - 1, -1, -1):
            gz = g * trace.cos[i]
            if maps is None:
                g_shift.append(gz)
            else:
                g_point = gz @ maps[i] if g_point is None else g_point + gz @ maps[i]
            if i > 0:
                g = gz @ trace.weights[i]
        if maps is None:
            gm = torch.stack(g_shift[::-1], 2).reshape(b * n, -1) * c.w0  # (B * N, L * W)
        else:
            gm = g_point.reshape(b * n, -1) * c.w0  # (B * N, c)
        cells = math.prod(self.cells)
        offset = (torch.arange(b, device=gm.device) * cells)[:, None]
        g_grid = None
        for idx, w in zip(trace.index, trace.weight):
            flat = (idx.expand(b, -1) + offset).reshape(-1)
            src = gm * w.expand(b, -1).reshape(-1, 1)
            part = gm.new_zeros(b * cells, gm.shape[1]).index_add(0, flat, src)
            g_grid = part if g_grid is None else g_grid + part
        if maps is not None:
            return g_grid.reshape(b, *self.latent_shape)
        return self._map_backward(g_grid.reshape(b, cells, -1))  # (B, S, L * W)

    def flops_per_point(self) -> int:
        c = self.config
        return 2 * (c.siren_in_dim * c.width + (c.depth - 2) * c.width**2 + c.width * c.out_dim)

    def extra_repr(self) -> str:
        c = self.config
        return (f"cells={'x'.join(map(str, self.cells))}x{c.channels}, width={c.width}, depth={c.depth}, w0={c.w0}, "
                f"interpolation={c.interpolation}, kernel={c.kernel}")
