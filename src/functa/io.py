"""Pickle-free artefacts: atomic file writes, JSON, safetensors, and base-network checkpoints.

A base network is a directory holding ``model.safetensors`` (weights and meta-SGD rates) and
``config.json`` (field config with the field's registered name, modality config, loss, provenance:
library and torch versions, what produced it, and the SHA-256 of the weights file).
:func:`load_base_network` rebuilds whatever field class it was saved with, from nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from torch import nn

from .atomic import atomic_write_bytes
from .errors import ArtefactError
from .fields import field_from_config

__all__ = [
    "ArtefactError",
    "atomic_write_bytes",
    "write_json",
    "read_json",
    "save_tensors",
    "load_tensors",
    "sha256_file",
    "save_base_network",
    "load_base_network",
    "versions",
    "MODEL_FILE",
    "CONFIG_FILE",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1




def versions() -> dict[str, str]:
    from . import __version__

    return {"functa": __version__, "torch": torch.__version__, "format": str(FORMAT_VERSION)}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path}: not valid JSON ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(flat, metadata=metadata))  # bytes first: a full disk is an OSError, named


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtefactError(f"{path}: not a readable safetensors file ({e})") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_base_network(directory: str | os.PathLike, field: nn.Module, **extra: Any) -> str:
    """Save ``field`` and JSON-serialisable ``extra`` (modality, data, training info).

    Returns the SHA-256 of the weights file, which identifies the base network (functasets and
    later stages record it).
    """
    directory = Path(directory)
    save_tensors(directory / MODEL_FILE, dict(field.state_dict()))
    digest = sha256_file(directory / MODEL_FILE)
    config = {"field": field.to_config(), "versions": versions(), "sha256": digest, **extra}
    write_json(directory / CONFIG_FILE, config)
    return digest


def load_base_network(directory: str | os.PathLike, verify: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild a base network saved by :func:`save_base_network`; returns ``(field, config)``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtefactError(f"{directory}: not a base-network directory (expected {MODEL_FILE} and {CONFIG_FILE})")
    config = read_json(directory / CONFIG_FILE)
    if "field" not in config:
        raise ArtefactError(f"{directory / CONFIG_FILE}: no 'field' section; not a functa base network")
    try:
        field = field_from_config(config["field"])
    except (TypeError, ValueError) as e:
        raise ArtefactError(f"{directory / CONFIG_FILE}: invalid field config ({e})") from None
    if verify and config.get("sha256") and sha256_file(directory / MODEL_FILE) != config["sha256"]:
        raise ArtefactError(f"{directory / MODEL_FILE}: SHA-256 does not match {CONFIG_FILE}; the weights were "
                            "modified or belong to another run")
    state = load_tensors(directory / MODEL_FILE)
    expected = field.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtefactError(f"{directory / MODEL_FILE}: weights do not match the config "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ArtefactError(f"{directory / MODEL_FILE}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                f"config implies {tuple(v.shape)}")
    field.load_state_dict(state)
    return field, config
