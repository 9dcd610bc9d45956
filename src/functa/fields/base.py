"""The field protocol and the registry of field classes.

A *field* is a base network shared by a whole dataset: ``forward(x, z)`` evaluates the function
of every per-datum latent ``z`` at coordinates ``x``. The fitting code (inner loop, meta-learner,
encoder) sees nothing else, so any class implementing :class:`Field` can be meta-learned with the
autograd inner loop; a field that also implements :class:`LatentAdjoint` (an explicit gradient of
its outputs with respect to the latents) gets the fast path.

Fields are registered by name (:func:`register_field`); a saved base network records the name in
its ``config.json``, so :func:`field_from_config` rebuilds whatever class it was saved with.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["Field", "LatentAdjoint", "available_fields", "field_device", "field_from_config", "get_field",
           "register_field", "DEFAULT_FIELD"]

DEFAULT_FIELD = "latent_modulated_siren"


@runtime_checkable
class Field(Protocol):
    """A base network evaluated per datum: the object the fitting code meta-learns.

    Attributes:
        name: registry key (``config.json`` records it).
        config_class: the frozen dataclass of its settings (the run config's ``[field]`` keys).
        latent_shape: shape of one datum's latent, e.g. ``(D,)`` or ``(s, s, c)``.
        in_dim, out_dim: coordinate and output dimensions ``d`` and ``C``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    latent_shape: tuple[int, ...]
    in_dim: int
    out_dim: int

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Outputs ``(B, N, C)`` at coordinates ``x (1|B, N, d)`` (shared or per datum) for latents
        ``z (B, *latent_shape)``."""
        ...

    def zero_latents(self, batch: int) -> Tensor:
        """Initial latents ``(B, *latent_shape)`` of the inner loop (zeros in the papers)."""
        ...

    def inner_lrs(self) -> Tensor:
        """Inner-loop learning rates, of ``latent_shape`` or broadcastable to it (meta-SGD)."""
        ...

    def base_parameters(self) -> list[nn.Parameter]:
        """Shared weights of the base network (meta-learned by the outer optimiser)."""
        ...

    def meta_parameters(self) -> list[nn.Parameter]:
        """Meta-learned inner-loop learning rates (empty without meta-SGD)."""
        ...

    def activation_floats_per_point(self) -> int:
        """Floats of the widest activation per query point (sizes memory-bounded batches)."""
        ...

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable config, ``name`` included; :func:`field_from_config` reads it."""
        ...

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Field":
        """Build from the settings of :meth:`to_config` (``name`` may be present)."""
        ...


@runtime_checkable
class LatentAdjoint(Protocol):
    """Optional fast path of a field: an explicit gradient of its outputs with respect to the latents.

    ``forward_points(x, z, keep_trace=True)`` returns the outputs ``(B, N, C)`` and whatever the
    backward needs; ``backward_latents(trace, grad_out (B, N, C))`` returns ``d <grad_out, f> / dz``
    ``(B, *latent_shape)`` as a differentiable first-order graph, so an inner loop built from it can
    be backpropagated through exactly (second-order MAML) at first-order cost. The trace may have
    batch 1 and be broadcast against a per-item ``grad_out`` (the shared zero-latent first step).
    """

    def forward_points(self, x: Tensor, z: Tensor, keep_trace: bool = False) -> tuple[Tensor, Any]: ...

    def backward_latents(self, trace: Any, grad_out: Tensor) -> Tensor: ...


_REGISTRY: dict[str, type] = {}


def register_field(cls: type) -> type:
    """Class decorator adding a field class to the registry under ``cls.name``."""
    if not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_fields() -> list[str]:
    return sorted(_REGISTRY)


def get_field(name: str) -> type:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"unknown field {str(name)[:40]!r}; available: {', '.join(available_fields())}")
    return _REGISTRY[name]


def field_from_config(config: dict[str, Any]) -> nn.Module:
    """Build the field a config describes (``name`` defaults to :data:`DEFAULT_FIELD`, as in the
    configs written before fields were registered)."""
    if not isinstance(config, dict):
        raise ConfigError(f"field = {str(config)[:40]!r} is not a section (allowed: a table of field settings)")
    config = dict(config)
    cls = get_field(config.pop("name", DEFAULT_FIELD))
    return cls.from_config(config)


def field_device(field: nn.Module) -> torch.device:
    """Device of a field's first parameter or buffer (CPU for a field without tensors)."""
    for t in list(field.parameters()) + list(field.buffers()):
        return t.device
    return torch.device("cpu")
