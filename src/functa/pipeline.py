"""The three stages a user runs: meta-learn (``fit``), make a functaset (``encode``), look at and
measure the result (``evaluate``, ``render``). Each stage reads the previous stage's artefacts,
which describe themselves, so only paths need to be passed along. The CLI calls these functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from torch import Tensor, nn

from . import distributed
from .atomic import atomic_stream, output_lock
from .codec.patches import PatchGrid, from_patches, to_patches
from .config import DataConfig, RunConfig
from .data import ArrayDataset, DataError, load_dataset
from .device import resolve_device
from .fields import DEFAULT_FIELD, field_from_config
from .fitting import (Batch, Loss, MetaLearner, MetricMeter, auto_batch_size, evaluate_reconstruction, fit_latents,
                      get_loss, predict, rendered_fit_points, HeapGuard)
from .functaset import Functaset, FunctasetWriter
from .io import ArtefactError, load_base_network, read_json, read_json_object, save_base_network
from .errors import ConfigError
from .validation import in_file
from .modalities import (FieldDataset, Modality, available_modalities, detect_modality, get_modality,
                         modality_from_config)

__all__ = ["contact_sheet", "encode", "evaluate", "fit", "format_table", "load_model", "model_loss", "open_data",
           "parse_indices", "render", "stored_latents"]

HEAP_SLACK_MB = 256  # RSS growth that triggers a heap trim while encoding (bounded RSS on any number of items)


def open_data(path: str | Path, split: str, data_cfg: dict | None = None, progress: bool = True) -> ArrayDataset:
    """Load ``split`` of the dataset at ``path`` with the ``data`` section of a run config.

    ``data.normalisation = "item"`` returns every item normalised by itself (the modality's
    :meth:`~functa.modalities.ModalityBase.normalise_items`: volumes min-max, audio clips by their peak), so
    every stage of such a run sees the same features."""
    d = data_cfg or {}
    ds = load_dataset(path, split, variable=d.get("variable"), test_fraction=d.get("test_fraction", 0.1),
                      limit=d.get("limit"), progress=progress, audio_length=d.get("audio_length"),
                      audio_channel=d.get("audio_channel"), audio_pad=bool(d.get("audio_pad", False)),
                      audio_sample_rate=d.get("audio_sample_rate"), camera_convention=d.get("camera_convention"),
                      near=d.get("near"), far=d.get("far"))
    if d.get("normalisation", "dataset") == "item":
        ds = detect_modality(ds).normalise_items(ds)
    return ds


def _infer_modality(ds: ArrayDataset, name: str | None, settings: dict | None = None) -> Modality:
    """The modality of ``ds`` (detected, or ``name``), built from the data, then with ``settings`` (a
    ``[modality]`` table: e.g. ``points_per_ray`` of scenes) applied and checked."""
    cls = detect_modality(ds) if name is None else get_modality(name)
    modality = cls.from_dataset(ds)  # an item-normalised dataset says so in its meta (normalise_items)
    return modality_from_config({**modality.to_config(), **settings}) if settings else modality


def model_loss(config: dict) -> Loss:
    """The loss a base network was meta-learned with (its ``config.json``; MSE before losses were recorded)."""
    return get_loss(config.get("loss") or "mse")


def load_model(run_dir: str | Path, device: str | torch.device | None = "cpu") -> tuple[nn.Module, Modality, dict]:
    """Base network (on ``device``; ``"auto"``: CUDA if available), modality and config of a ``fit`` directory."""
    field, config = load_base_network(run_dir)
    if "modality" not in config:
        raise ArtefactError(f"{run_dir}: base network has no modality config")
    if "inner_steps" not in config.get("run", {}).get("train", {}):  # types checked by load_base_network
        raise ArtefactError(f"{Path(run_dir) / 'config.json'}: no run.train.inner_steps; not written by 'functa fit'")
    try:  # the settings later stages use, named with the file
        modality = modality_from_config(config["modality"])
        model_loss(config)
        data = config.get("data", {})
        DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__})
    except ConfigError as e:
        raise in_file(Path(run_dir) / "config.json", e) from None
    if (field.in_dim, field.out_dim) != (modality.in_dim, modality.out_channels):
        raise ArtefactError(f"{Path(run_dir) / 'config.json'}: the field maps {field.in_dim}-d coordinates to "
                            f"{field.out_dim} channel(s), the {modality.name} modality needs {modality.in_dim} to "
                            f"{modality.out_channels}")
    field.to(resolve_device(device))
    field.eval()
    return field, modality, config


def fit(data: str | Path, out: str | Path, config: RunConfig, progress: bool = True,
        time_limit_s: float | None = None, device: str | torch.device | None = "cpu") -> dict:
    """Meta-learn a base network on the ``train`` split of ``data``; writes ``out/``.

    Resumes if ``out`` holds an unfinished run with the same field settings. With ``data.patch``
    the base network is meta-learned on random crops of that size (its modality grid is the patch;
    large items are then compressed patch by patch). Returns the final ``config.json`` content.
    ``out`` is locked while the run writes it (:func:`functa.atomic.output_lock`: a second ``fit``
    into it raises :class:`~functa.errors.LockError`).
    """
    _check_modality_settings(config)
    if not distributed.is_main():  # under torchrun: rank 0 holds the lock and writes; the others compute
        return _fit(data, Path(out), config, False, time_limit_s, device)
    with output_lock(out):
        return _fit(data, Path(out), config, progress, time_limit_s, device)


def _check_modality_settings(config: RunConfig) -> None:
    """Refuse ``[modality]`` settings that the chosen modality (or, with none chosen, every modality) lacks,
    before any data is read."""
    if not config.modality_settings:
        return
    names = [config.modality] if config.modality else available_modalities()
    valid = {n: {f.name for f in fields(get_modality(n)) if f.init} if is_dataclass(get_modality(n)) else set()
             for n in names}
    for key in config.modality_settings:
        if not any(key in v for v in valid.values()):
            where = f"the {names[0]} modality" if config.modality else "any modality"
            allowed = sorted(valid[names[0]]) if config.modality else sorted(set().union(*valid.values()))
            raise ConfigError(f"modality.{key} is not a setting of {where} (settings: {', '.join(allowed)})")


def _fit(data: str | Path, out: Path, config: RunConfig, progress: bool, time_limit_s: float | None,
         device: str | torch.device | None) -> dict:
    data_cfg = asdict(config.data)
    train_ds = open_data(data, "train", data_cfg, progress)
    try:
        val_ds = open_data(data, "test", data_cfg, progress)
    except DataError:  # data without a test split: validate on the first training items
        val_ds = train_ds
    modality = _infer_modality(train_ds, config.modality, config.modality_settings)
    if config.data.patch:
        modality = modality.with_shape(tuple(config.data.patch))
    if (out / "config.json").exists():
        prev = read_json_object(out / "config.json", "a base network config (a JSON object)")
        if prev.get("modality"):
            modality = modality_from_config(prev["modality"])  # keep the normalisation of the run
    loss = get_loss(config.loss or modality.default_loss)
    field_cfg = {"name": DEFAULT_FIELD, "output_offset": loss.output_offset, **modality.field_defaults, **config.field,
                 "in_dim": modality.in_dim, "out_dim": modality.out_channels}
    torch.manual_seed(config.train.seed)
    field = field_from_config(field_cfg).to(resolve_device(device))
    metrics = modality.reconstruction_metrics()
    learner = MetaLearner(field, config.train, loss, metrics)
    train_src, val_src = modality.sources(train_ds, val_ds, patches=config.data.patch is not None, seed=config.train.seed)
    t0 = time.perf_counter()

    def extra() -> dict[str, Any]:
        return {"modality": modality.to_config(), "loss": loss.name, "run": config.to_dict(),
                "data": {"path": str(data), **data_cfg, "meta": _small_meta(train_ds.meta)},
                "training": {"step": learner.step_count, "history": learner.history}}

    learner.fit(train_src, val_src, out, on_save=lambda d: save_base_network(d, field, **extra()),
                progress=progress, time_limit_s=time_limit_s)
    if not distributed.is_main():
        distributed.barrier()  # rank 0 evaluates and writes the base network
        return {"rank": distributed.rank(), "step": learner.step_count}
    if config.data.patch and tuple(val_ds.data.shape[1:1 + len(modality.shape)]) != tuple(modality.shape):
        final = evaluate_whole_items(field, loss, modality, val_ds, config.train.inner_steps,
                                     limit=config.train.eval_items)
    else:
        final = evaluate_reconstruction(field, val_src, config.train.inner_steps, loss=loss, metrics=metrics,
                                        limit=config.train.eval_items, extra=modality.metrics)
    info = extra()
    info["training"].update(wall_s=time.perf_counter() - t0, final_eval=final)
    save_base_network(out, field, **info)
    distributed.barrier()
    return read_json(out / "config.json")


def _small_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("lat", "lon")}


def encode(model: str | Path, data: str | Path, out: str | Path, split: str = "train", steps: int | None = None,
           batch_size: int | None = None, chunk_size: int = 4096, progress: bool = True,
           augment: tuple[str, ...] = (), copies: int = 0, augment_seed: int = 0,
           augment_options: dict[str, Any] | None = None, device: str | torch.device | None = "cpu") -> Functaset:
    """Encode every item of ``data[split]`` into latents with the frozen base network ``model``.

    ``steps`` defaults to the inner steps used in meta-learning; ``batch_size`` to
    :func:`functa.fitting.auto_batch_size` (memory-bounded). With ``augment`` (kinds the modality
    offers, e.g. ``("flip", "crop")`` for images, ``("scale",)`` for shapes; options such as
    ``{"pad": 4}`` in ``augment_options``) and ``copies > 0`` the functaset holds the originals
    followed by ``copies`` augmented copies of the whole split (rows of the same item share
    ``index``). Items are read batch by batch, so a memory-mapped dataset streams. Every row stores
    the fitting loss and the modality's per-item metrics. Resumes an interrupted run; ``out`` is
    locked while it is written (a second writer raises :class:`~functa.errors.LockError`).
    """
    with output_lock(out):
        return _encode(model, data, Path(out), split, steps, batch_size, chunk_size, progress, augment, copies,
                       augment_seed, augment_options, device)


def _encode(model, data, out: Path, split, steps, batch_size, chunk_size, progress, augment, copies, augment_seed,
            augment_options, device) -> Functaset:
    field, modality, cfg = load_model(model, device)
    loss, metrics = model_loss(cfg), modality.reconstruction_metrics()
    steps = cfg["run"]["train"]["inner_steps"] if steps is None else steps
    ds = open_data(data, split, cfg.get("data"), progress)
    item_grid = tuple(int(g) for g in ds.data.shape[1:1 + len(modality.shape)])
    grid = PatchGrid(item_grid, tuple(modality.shape)) if _patched(cfg, modality, item_grid) else None
    src = FieldDataset(ds, modality.with_shape(item_grid)) if grid is not None else modality.encode_source(ds)
    if grid is not None and augment:
        raise ValueError("augmented copies are not supported for items encoded patch by patch")
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    if copies and not augment:
        raise ValueError("copies > 0 needs an augmentation")
    augmentation = modality.make_augmentation(tuple(augment), augment_seed, **(augment_options or {})) if augment else None
    m = len(ds)
    header = {"base_network": {"sha256": cfg["sha256"], "path": str(Path(model).resolve()), "field": cfg["field"],
                               "modality": cfg["modality"], "loss": loss.name},
              "encoding": {"inner_steps": steps}, "source": {"path": str(data), "split": split, "count": m,
                                                            "meta": _small_meta(ds.meta)},
              "latent_shape": list(field.latent_shape), "latent_dim": math.prod(field.latent_shape)}
    if grid is not None:  # one latent per patch: items are (P, *latent_shape)
        header["latent_shape"] = [grid.num_patches, *field.latent_shape]
        header["latent_dim"] = grid.num_patches * math.prod(field.latent_shape)
        header["patches"] = {"item_grid": list(grid.shape), "patch": list(grid.patch), "num_patches": grid.num_patches}
    if copies:
        header["augmentation"] = {"kinds": list(augment), "seed": augment_seed, "options": dict(augment_options or {}),
                                  "copies": copies}
    total = m * (1 + copies)
    if grid is None:
        batch_size = batch_size or auto_batch_size(field, src.num_points)
    else:  # items per batch: the patches of a batch are fitted together
        batch_size = max(1, (batch_size or auto_batch_size(field, math.prod(grid.patch))) // grid.num_patches)
    writer = FunctasetWriter(out, header, total=total, chunk_size=chunk_size)
    bar = tqdm(total=total, initial=writer.count, desc=f"encoding {split}", disable=not progress, unit="item")
    t0 = time.perf_counter()
    row = writer.count
    params = None
    heap = HeapGuard(HEAP_SLACK_MB)
    while row < total:
        copy, s = divmod(row, m)
        # batches never straddle a chunk boundary: a resumed run (it restarts at one) fits the same batches
        idx = np.arange(s, min(s + batch_size, m, s + writer.chunk_size - row % writer.chunk_size))
        if copy == 0:
            batch = src.batch(idx)
        else:
            if params is None or params[0] != copy:
                params = (copy, augmentation.parameters(m, copy))
            batch = Batch(src.coords[None], modality.to_features(augmentation.apply(ds.take(idx), params[1][idx])))
        y = batch.y
        if grid is None:
            enc = fit_latents(field, batch, steps, loss=loss, max_points=rendered_fit_points(field, batch))
            latents, item_loss, pred = enc.latents, enc.loss, loss.predict(enc.outputs)
        else:
            enc, _ = fit_patched(field, loss, modality, ds.take(idx), steps)
            latents = enc.latents.reshape(len(idx), grid.num_patches, *field.latent_shape)
            item_loss = enc.loss.reshape(len(idx), grid.num_patches).mean(1)
            pred = stitched(field, loss, modality, latents, grid)
        values = metrics.per_item(pred, y.to(pred.device))
        writer.append(latents, src.labels(idx), idx, {"loss": item_loss, **values})
        bar.update(len(idx))
        row += len(idx)
        heap.step()  # bounded RSS however many items (see HeapGuard)
    bar.close()
    writer.flush()
    writer.close({**_summary(metrics, writer), "encode_s_last_session": time.perf_counter() - t0})
    return Functaset(out)


def _patched(cfg: dict, modality: Modality, item_grid: tuple[int, ...]) -> bool:
    """Whether items of ``item_grid`` are fitted patch by patch: the base network was meta-learned on
    patches (``data.patch``) smaller than the items."""
    return bool(cfg.get("data", {}).get("patch")) and tuple(item_grid) != tuple(modality.shape)


def _summary(metrics, writer: FunctasetWriter) -> dict[str, float]:
    """Reconstruction summary of the items a writer holds (from its running sums)."""
    sums, n = writer.sums, writer.count
    return {**metrics.summary(sums, n), "mean_loss": sums.get("loss", float("nan")) / max(n, 1)}


def evaluate(model: str | Path, data: str | Path, split: str = "test", steps: int | None = None,
             limit: int | None = None, batch_size: int | None = None, progress: bool = True,
             device: str | torch.device | None = "cpu", modality_settings: dict | None = None) -> dict:
    """The modality's reconstruction metrics after each inner step (PSNR in both conventions for
    images and fields; voxel accuracy and IoU for shapes) and its other metrics on ``data[split]``.

    A base network meta-learned on patches (``data.patch``) is evaluated, as COIN++ reports it, on the
    stitched, un-padded reconstruction of every whole item. ``modality_settings`` change the modality's
    evaluation settings for this call (e.g. the context and novel views of scenes).
    """
    field, modality, cfg = load_model(model, device)
    if modality_settings:
        modality = modality_from_config({**modality.to_config(), **modality_settings})
    loss, metrics = model_loss(cfg), modality.reconstruction_metrics()
    steps = cfg["run"]["train"]["inner_steps"] if steps is None else steps
    ds = open_data(data, split, cfg.get("data"), progress)
    item_grid = tuple(ds.data.shape[1:1 + len(modality.shape)])
    if _patched(cfg, modality, item_grid):
        res = evaluate_whole_items(field, loss, modality, ds, steps, limit=limit, batch_size=batch_size,
                                   progress=progress)
    else:
        _, src = modality.sources(ds, ds, patches=False, seed=int(cfg["run"]["train"].get("seed", 0)))
        res = evaluate_reconstruction(field, src, steps, loss=loss, metrics=metrics, batch_size=batch_size,
                                      limit=limit, extra=modality.metrics, progress=progress)
    return {"name": "functa-eval", "model": str(model), "data": str(data), "split": split,
            "base_network_sha256": cfg["sha256"], "loss": loss.name, "headline": metrics.headline,
            "modality_settings": dict(modality_settings or {}), "results": res}


def fit_patched(field: nn.Module, loss: Loss, modality: Modality, items: np.ndarray, steps: int,
                track_steps: bool = False):
    """Fit the latents of whole items ``(B, *grid[, C])`` cut into the base network's patches (reflect-padded),
    all patches of the batch together; returns the fit (latents ``(B * P, *latent_shape)``) and the grid."""
    patch = tuple(modality.shape)
    patches, grids = zip(*(to_patches(it, patch) for it in items))
    x = modality.coordinates()[None]
    enc = fit_latents(field, Batch(x, modality.to_features(np.concatenate(patches))), steps, loss=loss,
                      track_steps=track_steps)
    return enc, grids[0]


def stitched(field: nn.Module, loss: Loss, modality: Modality, latents: Tensor, grid: PatchGrid,
             scale: float = 1.0) -> Tensor:
    """Predicted features of whole items from their patch latents ``(B, P, *latent_shape)``: every patch
    rendered on ``scale`` x its grid, stitched, and cropped to ``scale`` x the item grid: ``(B, N, C)``."""
    patch = tuple(int(round(p * scale)) for p in grid.patch)
    if scale != 1.0 and any(abs(p - q * scale) > 1e-9 for p, q in zip(patch, grid.patch)):
        raise ValueError(f"scale {scale} does not give whole patches of {grid.patch}")
    big = PatchGrid(tuple(int(round(s_ * scale)) for s_ in grid.shape), patch)
    b, num = latents.shape[0], grid.num_patches
    x = modality.coordinates(patch)[None]
    feats = predict(field, x, latents.reshape(b * num, *latents.shape[2:]), loss=loss)
    feats = feats.reshape(b, num, *patch, -1).cpu().numpy()
    return torch.from_numpy(np.stack([from_patches(f, big) for f in feats])).reshape(b, math.prod(big.shape), -1)


def evaluate_whole_items(field: nn.Module, loss: Loss, modality: Modality, ds: ArrayDataset, steps: int,
                         limit: int | None = None, batch_size: int | None = None, progress: bool = False) -> dict:
    """Metrics of stitched reconstructions: every item is cut into the base network's patches
    (reflect-padded), the patches of a batch of items are fitted together, and each item's predicted
    patches are stitched and cropped back to the item before measuring, after each inner step ``0..steps``."""
    metrics = modality.reconstruction_metrics()
    n = len(ds) if limit is None else min(limit, len(ds))
    patch = tuple(modality.shape)
    meters = [MetricMeter(metrics) for _ in range(steps + 1)]
    sums: dict[str, float] = {}
    x = modality.coordinates()[None]
    grid = to_patches(ds.take(np.array([0]))[0], patch)[1]
    whole = modality.with_shape(grid.shape)
    per_batch = max(1, (batch_size or auto_batch_size(field, x.shape[1])) // grid.num_patches)
    for start in tqdm(range(0, n, per_batch), desc="eval (whole items)", disable=not progress, leave=False):
        items = ds.take(np.arange(start, min(start + per_batch, n)))
        target = whole.to_features(items)
        enc, grid = fit_patched(field, loss, modality, items, steps, track_steps=True)
        for meter, z in zip(meters, enc.history):
            pred = stitched(field, loss, modality, z.reshape(len(items), grid.num_patches, *z.shape[1:]), grid)
            meter.update(pred, target)
        for key, v in whole.metrics(pred, target).items():
            sums[key] = sums.get(key, 0.0) + float(v.double().sum())
    out = {"per_step": [{"step": k, **m.as_dict()} for k, m in enumerate(meters)], "count": n,
           "protocol": "whole items: stitched, un-padded reconstructions of every item (COIN++)"}
    out.update({k: v / max(n, 1) for k, v in sums.items()})
    return out


def format_table(result: dict) -> str:
    """Plain-text table of an :func:`evaluate` result: every summary metric after every inner step."""
    res = result["results"]
    keys = [k for k in res["per_step"][0] if k not in ("step", "count")]
    lines = [f"{'inner step':>10}  " + "  ".join(f"{k:>16}" for k in keys), "-" * (12 + 18 * len(keys))]
    for row in res["per_step"]:
        lines.append(f"{row['step']:>10}  " + "  ".join(f"{row[k]:>16.4f}" for k in keys))
    extras = {k: v for k, v in res.items() if k not in ("per_step", "count") and isinstance(v, (int, float))}
    for k, v in extras.items():
        lines.append(f"{k}: {v:.4f}")
    lines.append(f"items: {res['count']}")
    return "\n".join(lines)


def parse_indices(spec: str | None, n: int) -> np.ndarray:
    if spec is None:
        return np.arange(min(n, 16))
    out: list[int] = []
    for part in spec.split(","):
        if ":" in part or "-" in part:
            a, b = part.replace("-", ":").split(":")
            out.extend(range(int(a), int(b)))
        else:
            out.append(int(part))
    idx = np.array(out, dtype=np.int64)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices {spec!r} out of range for {n} items")
    return idx


def stored_latents(functaset: str | Path, cfg: dict, indices: str | None) -> tuple[Functaset, np.ndarray, Tensor]:
    """The functaset, the item indices ``indices`` names (:func:`parse_indices`) and their latents, from a
    functaset of the base network ``cfg`` describes (refused for another network, or when empty)."""
    fs = Functaset(functaset)
    fs.check_base_network(cfg["sha256"])
    if not len(fs):
        raise ArtefactError(f"{functaset}: the functaset holds no items")
    idx = parse_indices(indices, len(fs))
    return fs, idx, fs.take(idx)["latents"]


def render(model: str | Path, out: str | Path, functaset: str | Path | None = None, data: str | Path | None = None,
           split: str = "test", indices: str | None = None, scale: float = 1.0,
           shape: tuple[int, ...] | None = None, device: str | torch.device | None = "cpu") -> dict:
    """Render fields at any resolution, from a functaset or by encoding items of ``data``.

    ``scale`` multiplies the native grid (``scale=4``: 4x super-resolution) unless ``shape`` is
    given. Writes one file per item, a ``grid.png`` contact sheet and ``renders.npz``
    (``values`` in data units, ``indices``); with ``data`` also the originals for comparison.
    """
    field, modality, cfg = load_model(model, device)
    loss = model_loss(cfg)
    out = Path(out)
    originals, grid = None, None
    if functaset is not None:
        fs, idx, latents = stored_latents(functaset, cfg, indices)
        if "patches" in fs.header:  # one latent per patch of a whole item
            grid = PatchGrid(tuple(fs.header["patches"]["item_grid"]), tuple(modality.shape))
    elif data is not None:
        ds = open_data(data, split, cfg.get("data"))
        idx = parse_indices(indices, len(ds))
        item_grid = tuple(int(g) for g in ds.data.shape[1:1 + len(modality.shape)])
        steps = cfg["run"]["train"]["inner_steps"]
        if _patched(cfg, modality, item_grid):
            items = ds.take(idx)
            enc, grid = fit_patched(field, loss, modality, items, steps)
            latents = enc.latents.reshape(len(idx), grid.num_patches, *field.latent_shape)
            originals = np.asarray(items)
        else:
            batch = modality.encode_source(ds).batch(idx)
            latents = fit_latents(field, batch, steps, loss=loss, max_points=rendered_fit_points(field, batch)).latents
            originals = modality.from_features(batch.y) if batch.renderer is None else None
    else:
        raise ValueError("render needs a functaset or data to encode")
    if grid is None:
        target_shape = tuple(shape) if shape else tuple(int(round(s * scale)) for s in modality.shape)
        values = modality.render_values(field, latents, loss, target_shape)
    else:  # patches rendered at `scale` and stitched (whole patches only: an explicit shape must be a multiple)
        if shape:
            factors = {t / g for t, g in zip(shape, grid.shape)}
            if len(factors) != 1:
                raise ValueError(f"render --shape {list(shape)}: items of {list(grid.shape)} patch by patch scale "
                                 "by one factor along every axis")
            scale = factors.pop()
        target_shape = tuple(int(round(g * scale)) for g in grid.shape)
        values = modality.with_shape(target_shape).from_features(stitched(field, loss, modality, latents, grid, scale),
                                                                 target_shape)
    native = modality if grid is None else modality.with_shape(grid.shape)  # writes at the item's own rate / spacing
    names = [f"item{int(i):06d}_{'x'.join(map(str, target_shape))}" for i in idx]
    paths = native.save(values, out, names)
    written = {"renders": [str(p) for p in paths]}
    if originals is not None:
        written["originals"] = [str(p) for p in native.save(originals, out, [f"item{int(i):06d}_original" for i in idx])]
    grid = contact_sheet(paths, out / "grid.png")
    atomic_stream(out / "renders.npz", lambda f: np.savez(f, values=values.astype(np.float32), indices=idx))
    return {"shape": list(target_shape), "count": len(idx), "grid": str(grid), **written}


def contact_sheet(paths: list[Path], dest: Path, columns: int = 8) -> Path:
    """Tile same-size PNGs into one image (2 px gaps)."""
    imgs = [Image.open(p).convert("RGB") for p in paths]
    w, h = imgs[0].size
    cols = min(columns, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 2), rows * (h + 2)), "white")
    for k, im in enumerate(imgs):
        sheet.paste(im, ((k % cols) * (w + 2), (k // cols) * (h + 2)))
    atomic_stream(dest, lambda f: sheet.save(f, format="PNG"))
    return dest
