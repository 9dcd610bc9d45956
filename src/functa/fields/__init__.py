"""Neural fields: SIREN layers, modulated SIRENs and meta-SGD learning rates."""

from .init import init_latent_map_, init_siren_linear_, siren_weight_bound
from .meta_sgd import MetaSGDLrs
from .siren import LatentModulatedSiren, SirenConfig, Trace, hidden_matmul_flops

__all__ = [
    "LatentModulatedSiren",
    "MetaSGDLrs",
    "SirenConfig",
    "Trace",
    "hidden_matmul_flops",
    "init_latent_map_",
    "init_siren_linear_",
    "siren_weight_bound",
]
