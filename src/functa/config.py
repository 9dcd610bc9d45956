"""Run configuration: dataclasses, TOML/JSON files and ``section.key=value`` overrides.

A config file has two top-level keys and three sections, e.g. ``fit.toml``::

    modality = "image"          # a registered modality; omitted: inferred from the data
    loss = "mse"                # "mse" or "bce"; omitted: the modality's default
    [field]                     # name = a registered field (default "latent_modulated_siren") and
                                # its settings, functa.fields.SirenConfig (in_dim/out_dim come from the
                                # modality, output_offset from the loss unless set)
    width = 128
    depth = 6
    latent_dim = 128
    [train]                     # functa.fitting.MetaLearningConfig
    steps = 2000
    outer_lr = 3e-5
    [data]                      # DataConfig
    test_fraction = 0.1
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from .fitting import MetaLearningConfig, get_loss

__all__ = ["DataConfig", "RunConfig", "PRESETS", "load_config", "apply_overrides"]


@dataclass(frozen=True)
class DataConfig:
    """How to read the data (see :func:`functa.data.load_dataset`)."""

    variable: str | None = None
    test_fraction: float = 0.1
    limit: int | None = None
    patch: list[int] | None = None  # meta-learn on random crops of this size (COIN++ patches for large items)

    def __post_init__(self) -> None:
        if self.patch is not None:
            object.__setattr__(self, "patch", [int(p) for p in self.patch])
            if not self.patch or min(self.patch) < 1:
                raise ValueError(f"data.patch must be a list of positive sizes, got {self.patch}")


@dataclass(frozen=True)
class RunConfig:
    modality: str | None = None
    loss: str | None = None
    field: dict[str, Any] = dc_field(default_factory=dict)
    train: MetaLearningConfig = dc_field(default_factory=MetaLearningConfig)
    data: DataConfig = dc_field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.loss is not None:
            get_loss(self.loss)  # raises for unknown names

    def to_dict(self) -> dict:
        return {"modality": self.modality, "loss": self.loss, "field": dict(self.field), "train": asdict(self.train),
                "data": asdict(self.data)}


# ``paper``: the functa paper's optimiser settings (meant for 10^5-10^6 steps on accelerators).
# ``coinpp``: COIN++'s CIFAR-10 compression settings (thesis ch. 4; reference-study 1.2-1.5): width 512,
#   depth 10, w0 50, no meta-SGD (inner lr 1e-2), PyTorch init of the latent map, Adam 3e-6,
#   batch 64, 390k steps on a GPU.
# ``cpu``: settings measured to give the best PSNR per CPU minute (docs/benchmarks.md).
# ``shapes-cpu``: 3-D occupancy grids on a CPU (docs/benchmarks.md, 3-D shapes): a small SIREN, 1,024 random
#   voxels per item and step, constant Adam 3e-4 (for runs stopped by --time-limit).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"field": {"width": 256, "depth": 10, "latent_dim": 128}, "train": {"outer_lr": 3e-6, "batch_size": 32}},
    "coinpp": {"field": {"width": 512, "depth": 10, "latent_dim": 128, "w0": 50.0, "meta_sgd": False,
                         "inner_lr": 1e-2, "latent_map_init": "torch"},
               "train": {"outer_lr": 3e-6, "batch_size": 64, "steps": 390_000}},
    "cpu": {"field": {"width": 128, "depth": 6, "latent_dim": 128},
            "train": {"outer_lr": 3e-4, "schedule": "cosine", "warmup_steps": 100, "grad_clip": 1.0, "batch_size": 32}},
    "shapes-cpu": {"field": {"width": 64, "depth": 4, "latent_dim": 256},
                   "train": {"outer_lr": 3e-4, "schedule": "constant", "warmup_steps": 50, "grad_clip": 1.0,
                             "batch_size": 8, "points_per_step": 1024, "eval_every": 1000, "save_every": 1000}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as JSON when possible)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        *path, last = key.strip().split(".")
        node = raw
        for p in path:
            node = node.setdefault(p, {})
        node[last] = _parse_value(value.strip())
    return raw


def _build(raw: dict) -> RunConfig:
    unknown = set(raw) - {"modality", "loss", "field", "train", "data"}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; expected modality, loss, field, train, data")

    def make(cls, d: dict, section: str):
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown [{section}] keys {sorted(bad)}; valid: {sorted(names)}")
        return cls(**d)

    from .fields import DEFAULT_FIELD, get_field

    field_cls = get_field(raw.get("field", {}).get("name", DEFAULT_FIELD))
    field_names = ({f.name for f in fields(field_cls.config_class)} - {"in_dim", "out_dim"}) | {"name"}
    bad = set(raw.get("field", {})) - field_names
    if bad:
        raise ValueError(f"unknown [field] keys {sorted(bad)}; valid: {sorted(field_names)}")
    train = make(MetaLearningConfig, raw.get("train", {}), "train")
    data = make(DataConfig, raw.get("data", {}), "data")
    return RunConfig(modality=raw.get("modality"), loss=raw.get("loss"), field=dict(raw.get("field", {})),
                     train=train, data=data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, preset: str = "cpu") -> RunConfig:
    """Preset, then the file (TOML or JSON), then the overrides; validated into a :class:`RunConfig`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    raw = json.loads(json.dumps(PRESETS[preset]))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        text = path.read_text()
        try:
            loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot parse config ({e})") from None
        raw = _merge(raw, loaded)
    raw = apply_overrides(raw, overrides or [])
    return _build(raw)

