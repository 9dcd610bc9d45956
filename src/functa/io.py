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
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from torch import nn

from .atomic import atomic_write_bytes
from .errors import ArtefactError, ConfigError
from .fields import field_from_config
from .validation import in_file

__all__ = [
    "ArtefactError",
    "atomic_write_bytes",
    "write_json",
    "read_json",
    "save_tensors",
    "write_train_state",
    "load_tensors",
    "tensor_metadata",
    "tensors_digest",
    "weights_metadata",
    "state_metadata",
    "read_train_state",
    "sync_state_copy",
    "mismatched_weights_error",
    "sha256_file",
    "save_base_network",
    "load_base_network",
    "check_weights",
    "unverified_allowed",
    "read_json_object",
    "tensor_shapes",
    "ALLOW_UNVERIFIED_ENV",
    "versions",
    "MODEL_FILE",
    "CONFIG_FILE",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 64 * 2**20  # larger JSON files (configs, manifests) are refused before they are read
# Loading weights whose config.json records no SHA-256 is refused unless this variable is 1 (or
# allow_unverified=True is passed): a deleted hash must not silently switch verification off.
ALLOW_UNVERIFIED_ENV = "FUNCTA_ALLOW_UNVERIFIED"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# safetensors metadata of a weights file: the digest of its tensors (see weights_metadata)
TENSORS_DIGEST_KEY = "functa.tensors_sha256"




def versions() -> dict[str, str]:
    from . import __version__

    return {"functa": __version__, "torch": torch.__version__, "format": str(FORMAT_VERSION)}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def _not_a_file(path: Path) -> ArtefactError:
    return ArtefactError(f"{path}: {'not a regular file' if path.exists() else 'file not found'}")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path`` (at most ``max_bytes`` long; :class:`ArtefactError` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise _not_a_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ArtefactError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a functa JSON file may have")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer too long to convert, deep nesting
        raise ArtefactError(f"{path}: not valid JSON ({' '.join(str(e).split())[:200]})") from None


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict:
    """:func:`read_json` of a file that must hold an object (``what`` names what it should be)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ArtefactError(f"{path}: expected {what}, found a JSON {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            type(None): "null"}.get(type(value), type(value).__name__)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(flat, metadata=metadata))  # bytes first: a full disk is an OSError, named


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise _not_a_file(path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise ArtefactError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of a safetensors file from its header alone (nothing is allocated);
    ``dtype`` as safetensors spells it (``"F32"``, ``"I64"``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise _not_a_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(int(n) for n in sl.get_shape()), str(sl.get_dtype()))
            return out
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt headers
        raise ArtefactError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None


def tensor_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (its header only is read; ``{}`` when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise ArtefactError(f"{path}: not a readable safetensors file ({e})") from None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of ``tensors`` (independent of the file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_metadata(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Metadata that makes a weights file recognisable as intact: the digest of its own tensors.

    A weights file and the ``config.json`` recording its SHA-256 are two files, renamed one after
    the other; when the hashes disagree, an intact weights file (its tensors match this digest)
    means the writer was killed between the two renames, not that the weights were modified.
    """
    return {TENSORS_DIGEST_KEY: tensors_digest(tensors)}


def _intact(path: Path) -> bool:
    try:
        recorded = tensor_metadata(path).get(TENSORS_DIGEST_KEY)
        return recorded is not None and tensors_digest(load_tensors(path)) == recorded
    except ArtefactError:
        return False


def mismatched_weights_error(directory: str | os.PathLike, advice: str, model_file: str = MODEL_FILE,
                             config_file: str = CONFIG_FILE) -> ArtefactError:
    """The error for a weights file whose SHA-256 is not the one ``config_file`` records: an
    interrupted (or concurrent) save when the weights file is intact (see :func:`weights_metadata`),
    modified weights otherwise. ``advice`` says how to finish an interrupted save."""
    directory = Path(directory)
    if _intact(directory / model_file):
        return ArtefactError(f"{directory}: interrupted while saving ({model_file} and {config_file} are from "
                             f"different checkpoints; or a save is in progress); {advice}")
    return ArtefactError(f"{directory / model_file}: SHA-256 does not match {config_file}; the weights were "
                         "modified or belong to another run")


def _rerun_advice(directory: Path) -> str:
    if (directory / "codec.json").is_file():
        return "rerun 'functa codec build' to rewrite the codec"
    return "rerun fit to resume"


STATE_KEY = "functa.train_state"  # safetensors metadata of a train state: its JSON (step, config, history, ...)


def state_metadata(state: dict) -> dict[str, str]:
    """The train-state JSON to store in the tensor file's metadata (one file: one atomic checkpoint)."""
    return {STATE_KEY: json.dumps(state, sort_keys=True, allow_nan=True)}


def write_train_state(run_dir: Path, tensors_file: str, json_file: str, tensors: dict[str, torch.Tensor],
                      state: dict) -> None:
    """One checkpoint: ``tensors`` with ``state`` (step, settings, history) in their metadata, renamed into
    place as one file, then its readable copy ``json_file``."""
    save_tensors(run_dir / tensors_file, tensors, metadata=state_metadata(state))
    write_json(run_dir / json_file, state)


def read_train_state(run_dir: Path, tensors_file: str, json_file: str, seed: int | None = None) -> dict:
    """The train state of ``run_dir``: the JSON stored in ``tensors_file``'s metadata, which was
    renamed into place with the tensors it describes; checkpoints written before it was stored
    there are described by ``json_file``. With ``seed``, a state saved with another ``config.seed``
    is refused."""
    meta = tensor_metadata(run_dir / tensors_file)
    if STATE_KEY not in meta:
        state = read_json(run_dir / json_file)
    else:
        try:
            state = json.loads(meta[STATE_KEY])
        except json.JSONDecodeError as e:
            raise ArtefactError(f"{run_dir / tensors_file}: unreadable train state in its metadata ({e})") from None
        if not isinstance(state, dict) or "step" not in state:
            raise ArtefactError(f"{run_dir / tensors_file}: the train state in its metadata has no step")
    if seed is not None and state.get("config", {}).get("seed") != seed:
        raise ArtefactError(f"{run_dir / json_file}: saved with another seed; use a new output directory")
    return state


def sync_state_copy(path: str | os.PathLike, state: dict) -> None:
    """Rewrite the readable copy ``path`` of a train state (``train_state.json``) when a kill left it
    behind the tensor file (a resumed run with no step left to do would never rewrite it)."""
    try:
        current = read_json(path)
    except ArtefactError:
        current = None
    if not isinstance(current, dict) or current.get("step") != state.get("step"):
        write_json(path, state)


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
    state = dict(field.state_dict())
    save_tensors(directory / MODEL_FILE, state, metadata=weights_metadata(state))  # then config.json (its hash)
    digest = sha256_file(directory / MODEL_FILE)
    config = {"field": field.to_config(), "versions": versions(), "sha256": digest, **extra}
    write_json(directory / CONFIG_FILE, config)
    return digest


def unverified_allowed(allow_unverified: bool = False) -> bool:
    """Whether weights without a recorded SHA-256 may be loaded: ``allow_unverified`` or the
    environment variable ``FUNCTA_ALLOW_UNVERIFIED=1`` (the command line's way to say it)."""
    return bool(allow_unverified) or os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def check_weights(directory: str | os.PathLike, config: dict, *, verify: bool = True, allow_unverified: bool = False,
                  advice: str = "rerun fit to resume", model_file: str = MODEL_FILE,
                  config_file: str = CONFIG_FILE) -> None:
    """Check ``directory/model_file`` against the SHA-256 that ``config`` (read from ``config_file``) records.

    A config without ``sha256`` is refused (:class:`ArtefactError`) unless :func:`unverified_allowed`;
    a malformed one always is. With ``verify=False`` the hash is neither required nor compared.
    """
    directory = Path(directory)
    weights, cfg_path = directory / model_file, directory / config_file
    if not weights.is_file():
        raise _not_a_file(weights)
    if not verify:
        return
    recorded = config.get("sha256")
    if recorded is None:
        if not unverified_allowed(allow_unverified):
            raise ArtefactError(f"{cfg_path}: records no 'sha256' of {model_file}, so the weights cannot be verified; "
                                f"set {ALLOW_UNVERIFIED_ENV}=1 (or pass allow_unverified=True) to load them anyway")
        warnings.warn(f"{weights}: loaded without verification ({config_file} records no SHA-256)", stacklevel=3)
        return
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        raise ArtefactError(f"{cfg_path}: 'sha256' = {str(recorded)[:70]!r} is not a SHA-256 digest "
                            "(64 lowercase hexadecimal digits)")
    if sha256_file(weights) != recorded:
        raise mismatched_weights_error(directory, advice, model_file, config_file)


def _check_base_config(config: dict, path: Path) -> None:
    """Types of the sections of a base network's ``config.json`` that later stages read (the field is
    checked by its config class; the modality, loss and data settings by :func:`functa.pipeline.load_model`)."""
    from .validation import MAX_INNER_STEPS, Int, Text

    try:
        Text(max_len=64, optional=True)(config.get("loss"), "loss")  # a registered name: checked by load_model
        for name in ("modality", "run", "data"):
            if name in config and not isinstance(config[name], dict):
                raise ConfigError(f"{name} = {str(config[name])[:40]!r} is not a section")
        modality = config.get("modality")
        if modality is not None and not isinstance(modality.get("name"), str):
            raise ConfigError("modality.name is missing or not a string")
        train = config.get("run", {}).get("train", {})
        if not isinstance(train, dict):
            raise ConfigError(f"run.train = {str(train)[:40]!r} is not a section")
        if "inner_steps" in train:
            Int(0, MAX_INNER_STEPS)(train["inner_steps"], "run.train.inner_steps")
    except ConfigError as e:
        raise in_file(path, e) from None


def load_base_network(directory: str | os.PathLike, verify: bool = True,
                      allow_unverified: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild a base network saved by :func:`save_base_network`; returns ``(field, config)``.

    Everything is checked before the weights are allocated: ``config.json`` (an object with a
    ``field`` section whose settings pass the field's checks, and valid ``loss``/``run``/``data``
    sections where present), the SHA-256 of ``model.safetensors`` against the one recorded (see
    :func:`check_weights`: a missing hash is an error unless ``allow_unverified=True`` or
    ``FUNCTA_ALLOW_UNVERIFIED=1``; ``verify=False`` skips the hash), and the names, shapes and dtypes
    of the stored tensors against the network the config describes. Bad settings raise
    :class:`~functa.errors.ConfigError`, bad files :class:`ArtefactError`; both name the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtefactError(f"{directory}: not a base-network directory (expected {MODEL_FILE} and {CONFIG_FILE})")
    cfg_path, weights = directory / CONFIG_FILE, directory / MODEL_FILE
    config = read_json_object(cfg_path, "a base-network config (a JSON object)")
    if not isinstance(config.get("field"), dict):
        raise ArtefactError(f"{cfg_path}: no 'field' section; not a functa base network")
    _check_base_config(config, cfg_path)
    # Build the network on the meta device first: its config is checked and its tensor shapes are
    # known without allocating anything, so a hostile config cannot allocate more than the file holds.
    skeleton = None
    try:
        with torch.device("meta"):
            skeleton = field_from_config(config["field"])
    except ConfigError as e:
        raise in_file(cfg_path, e) from None
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{cfg_path}: invalid field config ({' '.join(str(e).split())[:200]})") from None
    except Exception:  # noqa: BLE001 - a field class that cannot be built on the meta device: checked below
        skeleton = None
    check_weights(directory, config, verify=verify, allow_unverified=allow_unverified,
                  advice=_rerun_advice(directory))
    if skeleton is not None:
        _match_weights(weights, {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()},
                       tensor_shapes(weights))
    try:
        field = field_from_config(config["field"])
    except ConfigError as e:
        raise in_file(cfg_path, e) from None
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{cfg_path}: invalid field config ({' '.join(str(e).split())[:200]})") from None
    expected = {k: (tuple(v.shape), v.dtype) for k, v in field.state_dict().items()}
    state = load_tensors(weights)
    _match_weights(weights, expected, {k: (tuple(v.shape), v.dtype) for k, v in state.items()})
    field.load_state_dict(state)
    return field, config


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _match_weights(path: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]], stored: dict) -> None:
    """Refuse stored tensors (``{name: (shape, dtype)}``, dtype a torch dtype or a safetensors name)
    that are not exactly the ones the config implies."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise ArtefactError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, (shape, dtype) in expected.items():
        s_shape, s_dtype = stored[k]
        s_dtype = _ST_DTYPES.get(s_dtype, s_dtype) if isinstance(s_dtype, str) else s_dtype
        if tuple(s_shape) != tuple(shape):
            raise ArtefactError(f"{path}: tensor {k!r} has shape {tuple(s_shape)}, config implies {tuple(shape)}")
        if s_dtype != dtype:
            raise ArtefactError(f"{path}: tensor {k!r} has dtype {s_dtype}, config implies {dtype}")
