"""Run configuration: dataclasses, TOML/JSON files and ``section.key=value`` overrides.

A config file has two top-level keys and three sections, e.g. ``fit.toml``::

    modality = "image"          # a registered modality; omitted: inferred from the data
                                # (or a table: [modality] name = "scene", points_per_ray = 32, ...: the
                                # modality's own settings, e.g. functa.modalities.SceneModality)
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
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fitting import MetaLearningConfig, available_losses
from .validation import MAX_GRID_POINTS, Bool, Choice, Int, IntSeq, Real, Text, check_fields, check_total, in_file

__all__ = ["DataConfig", "RunConfig", "PRESETS", "load_config", "apply_overrides", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 16 * 2**20  # a config file larger than this is refused before it is parsed


@dataclass(frozen=True)
class DataConfig:
    """How to read the data (see :func:`functa.data.load_dataset`)."""

    variable: str | None = None
    test_fraction: float = 0.1
    limit: int | None = None
    patch: list[int] | None = None  # meta-learn on random crops of this size (COIN++ patches for large items)
    audio_length: int | None = None  # audio: crop clips to their first N samples (default: the shortest clip)
    audio_channel: int | None = None  # audio: the channel of multichannel files (refused without it)
    audio_pad: bool = False  # audio: pad clips shorter than audio_length with silence (else they are refused)
    audio_sample_rate: int | None = None  # audio: resample every clip to this rate (soxr); default: never resample
    normalisation: str = "dataset"  # "dataset" (the modality's fixed map / window) or "item" (each item by itself)
    camera_convention: str | None = None  # scenes: "opengl" or "opencv" where the data does not say
    near: float | None = None  # scenes: ray bounds, replacing those stored with the data
    far: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, "data", variable=Text(max_len=256, optional=True), test_fraction=Real(0, 1),
                     limit=Int(1, 2**40, optional=True), audio_length=Int(16, 2**40, optional=True),
                     audio_channel=Int(0, 1024, optional=True), audio_pad=Bool(),
                     audio_sample_rate=Int(1, 10**7, optional=True),
                     normalisation=Choice("dataset", "item"), camera_convention=Choice("opengl", "opencv", optional=True),
                     near=Real(0, 1e9, optional=True), far=Real(0, 1e9, lo_open=True, optional=True),
                     patch=IntSeq(1, 65536, min_len=1, max_len=4, optional=True, as_list=True))
        if self.patch is not None:
            check_total("data.patch", math.prod(self.patch), MAX_GRID_POINTS, f"a patch of {self.patch}", "points")


@dataclass(frozen=True)
class RunConfig:
    """A whole ``fit`` configuration. ``modality_settings`` are settings of the modality class beyond
    what it reads from the data (a ``[modality]`` table; checked when the modality is built)."""

    modality: str | None = None
    loss: str | None = None
    field: dict[str, Any] = dc_field(default_factory=dict)
    train: MetaLearningConfig = dc_field(default_factory=MetaLearningConfig)
    data: DataConfig = dc_field(default_factory=DataConfig)
    modality_settings: dict[str, Any] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        # the modality name is checked where it is looked up (functa.modalities.get_modality)
        check_fields(self, "", modality=Text(max_len=64, optional=True), loss=Choice(*available_losses(), optional=True))
        if not isinstance(self.modality_settings, dict):
            raise ConfigError(f"modality settings {str(self.modality_settings)[:60]} are not a table")
        if not isinstance(self.field, dict):
            raise ConfigError(f"field = {self.field!r} is not a section (allowed: a table of field settings)")
        if not isinstance(self.train, MetaLearningConfig) or not isinstance(self.data, DataConfig):
            raise ConfigError("train and data must be MetaLearningConfig and DataConfig objects")

    def to_dict(self) -> dict:
        modality = {"name": self.modality, **self.modality_settings} if self.modality_settings else self.modality
        return {"modality": modality, "loss": self.loss, "field": dict(self.field), "train": asdict(self.train),
                "data": asdict(self.data)}


# ``paper``: the functa paper's optimiser settings (meant for 10^5-10^6 steps on accelerators).
# ``coinpp``: COIN++'s CIFAR-10 compression settings (thesis ch. 4; reference-study 1.2-1.5): width 512,
#   depth 10, w0 50, no meta-SGD (inner lr 1e-2), PyTorch init of the latent map, Adam 3e-6,
#   batch 64, 390k steps on a GPU.
# ``cpu``: settings measured to give the best PSNR per CPU minute (docs/benchmarks.md).
# ``shapes-cpu``: 3-D occupancy grids on a CPU (docs/benchmarks.md, 3-D shapes): a small SIREN, 1,024 random
#   voxels per item and step, constant Adam 3e-4 (for runs stopped by --time-limit).
# ``scenes-cpu``: NeRF scenes on a CPU (docs/benchmarks.md, NeRF scenes): a small SIREN (width 64, depth 4,
#   w0 5: the scene modality's default), 4 scenes x 4 views x 128 pixels x 16 points per step instead of the
#   paper's 1 x 16 x 512 x 32, Adam 1e-3, and encoding on 8 views x 512 pixels instead of 32 x 2048 (measured:
#   +0.7 dB on novel views over width 128 / 24 points / 3e-4 after 10 CPU minutes).
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
    "scenes-cpu": {"modality": {"points_per_ray": 16, "views_per_step": 4, "pixels_per_view": 128,
                                "encode_views": 8, "encode_pixels": 512},
                   "field": {"width": 64, "depth": 4, "latent_dim": 128},
                   "train": {"outer_lr": 1e-3, "schedule": "constant", "warmup_steps": 50, "grad_clip": 1.0,
                             "batch_size": 4, "eval_every": 250, "eval_items": 16, "save_every": 250}},
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
    """Apply ``section.key=value`` strings (values parsed as JSON when possible). A string given for a
    table (``modality=scene`` where a preset has a ``[modality]`` table) names it: the table's ``name``."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        *path, last = key.strip().split(".")
        if not all(path) or not last:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = raw
        for i, p in enumerate(path):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i + 1])} is a value ({node!r}), not a section")
        parsed = _parse_value(value.strip())
        if isinstance(node.get(last), dict) and isinstance(parsed, str):
            node[last]["name"] = parsed
        else:
            node[last] = parsed
    return raw


def _section(raw: dict, name: str) -> dict:
    d = raw.get(name, {})
    if not isinstance(d, dict):
        raise ConfigError(f"{name} = {d!r} is not a section (allowed: a table of [{name}] settings)")
    return d


def _build(raw: dict) -> RunConfig:
    """Check every section, key, type and range of a raw config and build it (:class:`ConfigError` otherwise)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(raw).__name__}")
    unknown = set(raw) - {"modality", "loss", "field", "train", "data"}
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; expected modality, loss, field, train, data")

    def make(cls, d: dict, section: str):
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ConfigError(f"unknown [{section}] keys {sorted(bad)}; valid: {sorted(names)}")
        return cls(**d)

    modality, settings = raw.get("modality"), {}
    if isinstance(modality, dict):  # [modality] name = "scene", points_per_ray = 16, ...
        settings = dict(modality)
        modality = settings.pop("name", None)
        misplaced = sorted(set(settings) & {f.name for f in fields(DataConfig)})
        if misplaced:
            raise ConfigError(f"modality.{misplaced[0]} is not a modality setting but a [data] key (e.g. "
                              "data.normalisation=item, data.audio_sample_rate=16000)")
    from .fields import DEFAULT_FIELD, available_fields, get_field

    field = _section(raw, "field")
    name = Choice(*available_fields())(field.get("name", DEFAULT_FIELD), "field.name")
    field_cls = get_field(name)
    all_names = {f.name for f in fields(field_cls.config_class)}
    field_names = (all_names - {"in_dim", "out_dim"}) | {"name"}
    bad = set(field) - field_names
    if bad:
        raise ConfigError(f"unknown [field] keys {sorted(bad)}; valid: {sorted(field_names)}")
    # the field's own checks (types, ranges, parameter count) before anything is allocated; in_dim and
    # out_dim come from the modality later (small: they hardly change the parameter count)
    field_cls.config_class(**{k: v for k, v in field.items() if k != "name"},
                           **{k: 1 for k in ("in_dim", "out_dim") if k in all_names})
    train = make(MetaLearningConfig, _section(raw, "train"), "train")
    data = make(DataConfig, _section(raw, "data"), "data")
    return RunConfig(modality=modality, loss=raw.get("loss"), field=dict(field), train=train, data=data,
                     modality_settings=settings)


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file of {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} allowed")
    try:
        text = path.read_bytes().decode("utf-8")
        loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, UTF-8, huge ints
        raise ConfigError(f"{path}: cannot parse config ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a table of sections, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, preset: str = "cpu") -> RunConfig:
    """Preset, then the file (TOML or JSON), then the overrides; validated into a :class:`RunConfig`.

    A preset's ``[field]`` settings that the chosen field does not have (e.g. ``latent_dim`` for
    ``field.name = "spatial"``, whose latent is a grid) are left out; the file's and the overrides'
    are all checked."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    given = _read_config_file(Path(path)) if path is not None else {}
    chosen = apply_overrides(_merge(json.loads(json.dumps(PRESETS[preset])), given), overrides or [])
    raw = json.loads(json.dumps(PRESETS[preset]))
    raw["field"] = _preset_field(raw.get("field", {}), chosen.get("field", {}))
    if path is not None:
        path = Path(path)
        raw = _merge(raw, given)
        try:
            _build(raw)  # the file's own values, named with the file
        except ConfigError as e:
            raise in_file(path, e) from None
    raw = apply_overrides(raw, overrides or [])
    return _build(raw)


def _preset_field(preset_field: dict, chosen: Any) -> dict:
    """The preset's field settings that the finally chosen field class has."""
    from .fields import DEFAULT_FIELD, available_fields, get_field

    name = chosen.get("name", DEFAULT_FIELD) if isinstance(chosen, dict) else DEFAULT_FIELD
    if not isinstance(name, str) or name not in available_fields():
        return preset_field  # _build reports the unknown name
    valid = {f.name for f in fields(get_field(name).config_class)}
    return {k: v for k, v in preset_field.items() if k in valid}

