"""Compression with functa (COIN++ and beyond): quantisation, entropy coding, the ``.fta``
container, patches for large items, the codec itself, and the baselines it is measured against."""

from .container import MAX_OUTPUT_POINTS, ContainerError, Header, pack, unpack
from .autoregressive import AutoregressiveConfig, AutoregressiveModel
from .context import ContextConfig, ContextModel
from .entropy import ENTROPY_MODELS, FactorizedModel, fit_entropy_model
from .model import CodecConfig, CodecError, EncodeSettings, FunctaCodec
from .patches import PatchGrid, from_patches, to_patches
from .quantize import Quantizer, QuantizerConfig, default_std_range

__all__ = [
    "AutoregressiveConfig",
    "AutoregressiveModel",
    "CodecConfig",
    "CodecError",
    "ContainerError",
    "ContextConfig",
    "ContextModel",
    "EncodeSettings",
    "ENTROPY_MODELS",
    "FactorizedModel",
    "FunctaCodec",
    "Header",
    "MAX_OUTPUT_POINTS",
    "PatchGrid",
    "Quantizer",
    "QuantizerConfig",
    "default_std_range",
    "fit_entropy_model",
    "from_patches",
    "pack",
    "to_patches",
    "unpack",
]
