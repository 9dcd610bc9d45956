"""Modulated SIREN base networks.

A :class:`LatentModulatedSiren` (functa paper §3.1 and A.2) maps a coordinate ``x (d,)`` and a
latent ``phi (D,)`` to features ``(C,)``::

    s   = W' phi + b'                                      # linear latent -> shift map
    h_1 = sin(w0 (W_1 x + b_1 + s_1))                      # depth-1 modulated sine layers
    h_l = sin(w0 (W_l h_{l-1} + b_l + s_l))
    f   = W_out h_{depth-1} + b_out + 0.5                   # linear output layer

With ``modulate_scale=True`` each layer computes ``sin(w0 ((1 + c_l) (W_l h + b_l) + s_l))``.
With ``latent_dim=None`` there is no latent map: the per-datum vector *is* the modulation vector
(the plain shift-modulated SIREN of the paper's Figure 3, functa's ``ModulatedSiren``).

It implements the :class:`~functa.fields.base.Field` protocol (registered as
``"latent_modulated_siren"``) and its optional fast path :class:`~functa.fields.base.LatentAdjoint`:
besides ``forward`` the module offers :meth:`forward_points` / :meth:`backward_latents`, an
explicit (hand-derived) gradient of the output with respect to the latents. The inner loop of
meta-learning uses it instead of ``autograd.grad(create_graph=True)``: the whole inner loop then
becomes an ordinary first-order graph, which is cheaper, and which ``torch.compile`` can fuse.
Performance notes: the shift-only path folds ``w0`` into the weights (one matmul + one add per
layer), computes ``(sin, cos)`` once in the forward pass and reuses both in the explicit backward
and in autograd (:func:`functa.fields.sincos.sin_cos`), and runs matmuls on 2-D ``(B*N, W)`` views through
:mod:`functa.fields.matmul` (oneDNN for fp32 on the CPU). A trace may have
batch 1 (shared zero-latent first step) and is broadcast against a per-item ``grad_out``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_PARAMETERS, Bool, Choice, Int, Real, RealPair, check_fields, check_total
from .base import register_field
from .init import BiasInit, init_latent_map_, init_siren_linear_
from .matmul import matmul_nn, matmul_nt
from .sincos import sin_cos
from .meta_sgd import MetaSGDLrs

__all__ = ["SirenConfig", "LatentModulatedSiren", "Trace", "hidden_matmul_flops", "MAX_WIDTH", "MAX_DEPTH",
           "MAX_LATENT_DIM"]

# Bounds of a SIREN config (generous; they refuse absurd allocations, e.g. ``--set field.width=1e6``).
MAX_WIDTH = 8192
MAX_DEPTH = 64
MAX_LATENT_DIM = 65536
MAX_IO_DIM = 4096  # coordinate and output dimensions


@dataclass(frozen=True)
class SirenConfig:
    """Hyper-parameters of a (latent) modulated SIREN.

    ``depth`` counts all layers, the output layer included (functa convention): ``depth - 1``
    modulated sine layers of ``width`` units, of which ``depth - 2`` are ``width x width``.
    """

    in_dim: int = 2
    out_dim: int = 1
    width: int = 256
    depth: int = 6
    latent_dim: int | None = 128
    w0: float = 30.0
    modulate_shift: bool = True
    modulate_scale: bool = False
    bias_init: BiasInit = "zeros"
    latent_map_init: Literal["haiku", "torch"] = "haiku"
    output_offset: float = 0.5
    meta_sgd: bool = True
    meta_sgd_init: tuple[float, float] = (0.005, 0.1)
    meta_sgd_clip: tuple[float, float] | None = (0.0, 1.0)
    inner_lr: float = 1e-2  # used only when meta_sgd is False

    def __post_init__(self) -> None:
        check_fields(self, "field", in_dim=Int(1, MAX_IO_DIM), out_dim=Int(1, MAX_IO_DIM), width=Int(1, MAX_WIDTH),
                     depth=Int(2, MAX_DEPTH), latent_dim=Int(1, MAX_LATENT_DIM, optional=True),
                     w0=Real(0, 1e4, lo_open=True), modulate_shift=Bool(), modulate_scale=Bool(),
                     bias_init=Choice("zeros", "uniform"), latent_map_init=Choice("haiku", "torch"),
                     output_offset=Real(-1e6, 1e6), meta_sgd=Bool(),
                     # JSON round trips turn tuples into lists; the specs return tuples, so configs compare equal.
                     meta_sgd_init=RealPair(0, 1e3), meta_sgd_clip=RealPair(0, 1e3, optional=True),
                     inner_lr=Real(0, 1e3, lo_open=True))
        if not (self.modulate_shift or self.modulate_scale):
            raise ConfigError("field: at least one of modulate_shift / modulate_scale must be true")
        check_total("field", self.num_parameters, MAX_PARAMETERS,
                    f"width {self.width}, depth {self.depth}, latent_dim {self.latent_dim}"
                    + (" with scale modulations" if self.modulate_scale else ""))

    @property
    def num_parameters(self) -> int:
        """Parameters of the network this config describes (weights, biases, latent map, meta-SGD rates)."""
        w, mods = self.width, self.num_modulations
        n = (self.in_dim + 1) * w + (self.depth - 2) * (w + 1) * w + (w + 1) * self.out_dim
        if self.latent_dim is not None:
            n += (self.latent_dim + 1) * mods
        return n + self.code_dim

    @property
    def num_mod_layers(self) -> int:
        return self.depth - 1

    @property
    def num_modulations(self) -> int:
        """Size of the shift (+ scale) modulation vector."""
        return self.num_mod_layers * self.width * (int(self.modulate_shift) + int(self.modulate_scale))

    @property
    def code_dim(self) -> int:
        """Size of the per-datum vector fitted in the inner loop (latent or modulations)."""
        return self.latent_dim if self.latent_dim is not None else self.num_modulations

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SirenConfig":
        return cls(**d)


@dataclass
class Trace:
    """Activations kept by :meth:`LatentModulatedSiren.forward_points` for the explicit backward.

    ``cos`` holds ``cos(w0 * z_l)`` per sine layer ``(B|1, N, W)`` (the sine's derivative up to
    ``w0``, computed once in the forward pass and reused by the explicit backward and by autograd);
    ``lin`` holds ``W_l h + b_l`` (only needed with scale modulations); ``scale`` holds ``1 + c_l``
    ``(B, 1, W)`` or ``None``; ``weights`` holds ``w0 * W_l`` for the shift-only fast path.
    """

    cos: list[Tensor]
    lin: list[Tensor | None]
    scale: list[Tensor | None]
    weights: list[Tensor] = dc_field(default_factory=list)


@register_field
class LatentModulatedSiren(nn.Module):
    """SIREN with per-datum (latent) shift and optional scale modulations.

    Parameter groups are explicit attributes, never found by name matching:
    ``layers`` + ``output`` + ``latent_map`` are the shared base network, ``inner_lrs`` holds the
    meta-SGD learning rates. Per-datum latents are never parameters of the module; they are passed
    to :meth:`forward`.
    """

    name: ClassVar[str] = "latent_modulated_siren"
    config_class: ClassVar[type] = SirenConfig

    def __init__(self, config: SirenConfig) -> None:
        super().__init__()
        self.config = c = config
        self.latent_shape = (c.code_dim,)
        self.in_dim, self.out_dim = c.in_dim, c.out_dim
        dims = [c.in_dim] + [c.width] * c.num_mod_layers
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(c.num_mod_layers))
        for i, layer in enumerate(self.layers):
            init_siren_linear_(layer.weight, layer.bias, c.w0, is_first=i == 0, bias_init=c.bias_init)
        self.output = nn.Linear(c.width, c.out_dim)
        init_siren_linear_(self.output.weight, self.output.bias, c.w0, is_first=False, bias_init=c.bias_init)
        if c.latent_dim is not None:
            self.latent_map: nn.Linear | None = nn.Linear(c.latent_dim, c.num_modulations)
            init_latent_map_(self.latent_map.weight, self.latent_map.bias, c.latent_map_init)
        else:
            self.latent_map = None
        self.inner_lrs = MetaSGDLrs(c.code_dim, c.meta_sgd_init, c.meta_sgd_clip, learned=c.meta_sgd, fixed_lr=c.inner_lr)

    # ------------------------------------------------------------------ parameter groups
    def base_parameters(self) -> list[nn.Parameter]:
        """Shared weights of the base network (sine layers, output layer, latent map)."""
        params = [p for layer in self.layers for p in layer.parameters()] + list(self.output.parameters())
        if self.latent_map is not None:
            params += list(self.latent_map.parameters())
        return params

    def meta_parameters(self) -> list[nn.Parameter]:
        """The meta-SGD learning rates (empty when ``meta_sgd=False``: a fixed inner rate)."""
        return list(self.inner_lrs.parameters())

    def activation_floats_per_point(self) -> int:
        return self.config.width

    def to_config(self) -> dict:
        return {"name": self.name, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "LatentModulatedSiren":
        config = {k: v for k, v in config.items() if k != "name"}
        valid = set(SirenConfig.__dataclass_fields__)
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ValueError(f"unknown {cls.name} settings {unknown}; valid: {sorted(valid)}")
        return cls(SirenConfig.from_dict(config))

    @property
    def device(self) -> torch.device:
        """Device of the base network's weights (inputs are moved here by the fitting code)."""
        return self.output.weight.device

    def zero_latents(self, batch: int, device=None, dtype=None) -> Tensor:
        """Initial per-datum codes ``(B, code_dim)``: zeros, as in the paper."""
        p = self.output.weight
        return torch.zeros(batch, self.config.code_dim, device=device or p.device, dtype=dtype or p.dtype)

    # ------------------------------------------------------------------ modulations
    def modulations(self, latents: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Map latents ``(B, D)`` to ``(shift, scale)``, each ``(B, depth-1, W)`` or ``None``.

        Layout of the modulation vector: ``[shifts of all layers | scales of all layers]``;
        scales are offsets from identity (``1 + c``).
        """
        mods = self.latent_map(latents) if self.latent_map is not None else latents
        c = self.config
        mods = mods.reshape(latents.shape[0], -1, c.num_mod_layers, c.width)
        shift = mods[:, 0] if c.modulate_shift else None
        scale = mods[:, -1] if c.modulate_scale else None
        return shift, scale

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """Evaluate the fields of a batch of latents.

        Args:
            x: ``(1, N, in_dim)`` coordinates shared by every latent or ``(B, N, in_dim)`` per latent.
            latents: ``(B, D)`` per-datum codes.
        Returns:
            ``(B, N, out_dim)``.
        """
        return self.forward_points(x, latents)[0]

    def forward_points(self, x: Tensor, latents: Tensor, keep_trace: bool = False) -> tuple[Tensor, Trace | None]:
        """Core evaluation on flattened points.

        Args:
            x: ``(1, N, in_dim)`` shared or ``(B, N, in_dim)`` per-datum coordinates.
            latents: ``(B, D)``.
            keep_trace: keep the activations needed by :meth:`backward_latents`.
        Returns:
            ``(B, N, out_dim)`` outputs and the trace (or ``None``).
        """
        c = self.config
        if x.ndim != 3 or latents.ndim != 2:
            raise ValueError(f"expected coordinates (1|B, N, {c.in_dim}) and latents (B, {c.code_dim}), got "
                             f"{tuple(x.shape)} and {tuple(latents.shape)}")
        if x.shape[-1] != c.in_dim:
            raise ValueError(f"coordinates have {x.shape[-1]} dims, the network expects {c.in_dim}")
        if latents.shape[-1] != c.code_dim:
            raise ValueError(f"latents have {latents.shape[-1]} dims, the network expects {c.code_dim}")
        shift, scale = self.modulations(latents)
        if scale is not None:
            return self._forward_scaled(x, latents, shift, scale, keep_trace)
        # Shift-only fast path. ``w0`` is folded into the (small) weights and biases so that each
        # layer is one matmul, one in-place add of the per-item bias and one (sin, cos) pass:
        #   pre = h @ (w0 W)^T + w0 (b + s)
        trace = Trace([], [], [], []) if keep_trace else None
        w0 = c.w0
        h = x
        for i, layer in enumerate(self.layers):
            ws = layer.weight * w0  # (W, W_in)
            v = ((layer.bias + shift[:, i]) * w0)[:, None, :]  # (B, 1, W)
            u = matmul_nt(h, ws)  # (Bh, N, W)
            if not torch.is_grad_enabled() and (u.shape[0] == v.shape[0] or v.shape[0] == 1):
                pre = u.add_(v)  # no graph: reuse the matmul output
            else:
                pre = u + v
            h, cs = sin_cos(pre, need_cos=keep_trace)
            if trace is not None:
                trace.cos.append(cs)
                trace.lin.append(None)
                trace.scale.append(None)
                trace.weights.append(ws)
        out = matmul_nt(h, self.output.weight) + (self.output.bias + c.output_offset)
        if out.shape[0] != latents.shape[0]:  # shared coordinates and a single latent
            out = out.expand(latents.shape[0], *out.shape[1:])
        return out, trace

    def _forward_scaled(self, x: Tensor, latents: Tensor, shift: Tensor | None, scale: Tensor,
                        keep_trace: bool) -> tuple[Tensor, Trace | None]:
        c = self.config
        trace = Trace([], [], [], []) if keep_trace else None
        h = x
        for i, layer in enumerate(self.layers):
            lin = matmul_nt(h, layer.weight) + layer.bias
            sc = 1.0 + scale[:, i, None, :]
            z = lin * sc
            z = z + shift[:, i, None, :] if shift is not None else z
            h, cs = sin_cos(c.w0 * z, need_cos=keep_trace)
            if trace is not None:
                trace.cos.append(cs)
                trace.lin.append(lin)
                trace.scale.append(sc)
        out = matmul_nt(h, self.output.weight) + (self.output.bias + c.output_offset)
        if out.shape[0] != latents.shape[0]:
            out = out.expand(latents.shape[0], *out.shape[1:])
        return out, trace

    def backward_latents(self, trace: Trace, grad_out: Tensor) -> Tensor:
        """Gradient of ``sum(grad_out * f)`` with respect to the latents, written out explicitly.

        Args:
            trace: from ``forward_points(..., keep_trace=True)`` (its batch may be 1 and broadcast,
                as for the shared zero-latent first inner step).
            grad_out: ``(B, N, out_dim)`` gradient of the loss with respect to the outputs.
        Returns:
            ``(B, D)``. Differentiable (a plain first-order graph), so meta-learning can
            backpropagate through it.
        """
        c = self.config
        batch = grad_out.shape[0]
        if grad_out.shape[-1] == 1:  # outer product: one broadcast multiply instead of a matmul
            g = grad_out * self.output.weight[0]
        else:
            g = matmul_nn(grad_out, self.output.weight)  # (B, N, W)
        g_shift: list[Tensor] = []
        g_scale: list[Tensor] = []
        fast = bool(trace.weights)
        for i in range(c.num_mod_layers - 1, -1, -1):
            if fast:  # d pre / d s = w0 cos(pre); the w0 is applied to the small results / weights
                gz = g * trace.cos[i]
                g_shift.append(gz.sum(1))
                if i > 0:
                    g = matmul_nn(gz, trace.weights[i])
                continue
            gz = g * (c.w0 * trace.cos[i])
            if c.modulate_shift:
                g_shift.append(gz.sum(1))
            sc = trace.scale[i]
            if sc is not None:
                g_scale.append((gz * trace.lin[i]).sum(1))
                gz = gz * sc
            if i > 0:
                g = matmul_nn(gz, self.layers[i].weight)
        parts = []
        if c.modulate_shift:
            gs = torch.stack(g_shift[::-1], 1)
            parts.append(gs * c.w0 if fast else gs)
        if c.modulate_scale:
            parts.append(torch.stack(g_scale[::-1], 1))
        g_mods = (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).reshape(batch, -1)  # (B, num_mods)
        if self.latent_map is None:
            return g_mods
        return g_mods @ self.latent_map.weight

    # ------------------------------------------------------------------ cost model
    def flops_per_point(self) -> int:
        """Multiply-add FLOPs of one forward evaluation at one point (all layers)."""
        c = self.config
        return 2 * (c.in_dim * c.width + (c.depth - 2) * c.width**2 + c.width * c.out_dim)

    def extra_repr(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.base_parameters())
        return f"width={c.width}, depth={c.depth}, latent_dim={c.latent_dim}, w0={c.w0}, base_params={n}"


def hidden_matmul_flops(config: SirenConfig, num_points: int) -> int:
    """FLOPs of the ``width x width`` matmuls of one forward pass over ``num_points`` points."""
    return 2 * num_points * config.width**2 * (config.depth - 2)
