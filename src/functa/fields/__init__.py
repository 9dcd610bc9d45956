"""Neural fields: the field protocol and registry, SIREN layers, modulated SIRENs (vector and spatial
latents) and meta-SGD rates."""

from .base import (DEFAULT_FIELD, Field, LatentAdjoint, available_fields, field_device, field_from_config, get_field,
                   register_field)
from .init import init_latent_map_, init_siren_linear_, siren_weight_bound
from .meta_sgd import MetaSGDLrs
from .siren import LatentModulatedSiren, SirenConfig, Trace, hidden_matmul_flops
from .spatial import SpatialConfig, SpatialSiren

__all__ = [
    "DEFAULT_FIELD",
    "Field",
    "LatentAdjoint",
    "LatentModulatedSiren",
    "MetaSGDLrs",
    "SirenConfig",
    "SpatialConfig",
    "SpatialSiren",
    "Trace",
    "available_fields",
    "field_device",
    "field_from_config",
    "get_field",
    "hidden_matmul_flops",
    "init_latent_map_",
    "init_siren_linear_",
    "register_field",
    "siren_weight_bound",
]
