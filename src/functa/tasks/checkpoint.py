"""Self-describing checkpoints of downstream models: ``model.safetensors`` + ``config.json``.

``config.json`` holds the model ``kind``, its config, the training settings, what data it was
trained on (functaset path and the base network's SHA-256) and metrics, so later commands
(sampling, imputation, evaluation) need only the checkpoint directory. Extra tensors (the
functaset standardiser) are stored next to the weights with their own prefix.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ..io import (ArtefactError, check_weights, load_tensors, read_json_object, save_tensors, sha256_file, versions,
                  weights_metadata, write_json)
from ..validation import in_file

__all__ = ["load_task_model", "register_kind", "save_task_model"]

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
_KINDS: dict[str, tuple[type, type]] = {}


def register_kind(kind: str, config_cls: type, model_cls: type) -> None:
    """Make ``kind`` loadable: ``model_cls(config_cls.from_dict(d) or config_cls(**d))``."""
    _KINDS[kind] = (config_cls, model_cls)


def _kinds() -> dict[str, tuple[type, type]]:
    if not _KINDS:  # populated lazily so importing this module stays cheap
        from .classify import ConvClassifier, ConvConfig, MLPClassifier, MLPConfig, TransformerClassifier, TransformerConfig
        from .diffusion import DenoiserConfig, ResidualMLPDenoiser
        from .unet import UNetConfig, UNetDenoiser
        from .flow import FlowConfig, LatentFlow
        from .gasp import GeneratorConfig, HyperGenerator

        register_kind("mlp-classifier", MLPConfig, MLPClassifier)
        register_kind("conv-classifier", ConvConfig, ConvClassifier)
        register_kind("transformer-classifier", TransformerConfig, TransformerClassifier)
        register_kind("flow", FlowConfig, LatentFlow)
        register_kind("ddpm", DenoiserConfig, ResidualMLPDenoiser)
        register_kind("unet-ddpm", UNetConfig, UNetDenoiser)
        register_kind("gasp", GeneratorConfig, HyperGenerator)
    return _KINDS


def _config_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in fields(config)}
    raise TypeError(f"cannot serialise model config {config!r}")


def save_task_model(directory: str | Path, kind: str, model: nn.Module, state: dict[str, Tensor] | None = None,
                    extra_tensors: dict[str, Tensor] | None = None, **info: Any) -> str:
    """Write ``model`` (or the given ``state``, e.g. EMA weights) and ``info``; returns the SHA-256."""
    if kind not in _kinds():
        raise ValueError(f"unknown model kind {kind!r}")
    directory = Path(directory)
    tensors = {f"model.{k}": v for k, v in (state if state is not None else model.state_dict()).items()}
    tensors.update(extra_tensors or {})
    save_tensors(directory / MODEL_FILE, tensors, metadata=weights_metadata(tensors))  # then config.json (its hash)
    digest = sha256_file(directory / MODEL_FILE)
    write_json(directory / CONFIG_FILE, {"kind": kind, "model": _config_dict(model.config), "sha256": digest,
                                         "versions": versions(), **info})
    return digest


def load_task_model(directory: str | Path, expect: str | tuple[str, ...] | None = None,
                    allow_unverified: bool = False) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """``(model in eval mode, extra tensors, config)`` of a :func:`save_task_model` directory.

    The model config passes its class's checks (types, ranges, parameter count) before anything is
    allocated, and the weights must match the SHA-256 that ``config.json`` records; a missing hash
    is an error unless ``allow_unverified=True`` or ``FUNCTA_ALLOW_UNVERIFIED=1``
    (:func:`functa.io.check_weights`)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ArtefactError(f"{directory}: not a model directory (no {CONFIG_FILE})")
    cfg = read_json_object(directory / CONFIG_FILE, "a model config (a JSON object)")
    kind = cfg.get("kind")
    kinds = _kinds()
    if not isinstance(kind, str) or kind not in kinds:
        raise ArtefactError(f"{directory / CONFIG_FILE}: unknown model kind {str(kind)[:40]!r}")
    wanted = (expect,) if isinstance(expect, str) else expect
    if wanted and kind not in wanted:
        raise ArtefactError(f"{directory}: is a {kind} model, expected {' or '.join(wanted)}")
    config_cls, model_cls = kinds[kind]
    if not isinstance(cfg.get("model"), dict):
        raise ArtefactError(f"{directory / CONFIG_FILE}: no 'model' section")
    try:
        mc = config_cls.from_dict(cfg["model"]) if hasattr(config_cls, "from_dict") else config_cls(**cfg["model"])
    except ConfigError as e:
        raise in_file(directory / CONFIG_FILE, e) from None
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{directory / CONFIG_FILE}: invalid model config ({' '.join(str(e).split())[:200]})") from None
    check_weights(directory, cfg, allow_unverified=allow_unverified, advice="rerun the train command to resume")
    try:
        model = model_cls(mc)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{directory / CONFIG_FILE}: invalid model config ({' '.join(str(e).split())[:200]})") from None
    tensors = load_tensors(directory / MODEL_FILE)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise ArtefactError(f"{directory / MODEL_FILE}: weights do not match the config ({e})") from None
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return model.eval(), extra, cfg
