"""The three stages a user runs: meta-learn (``fit``), make a functaset (``encode``), look at and
measure the result (``evaluate``, ``render``). Each stage reads the previous stage's artefacts,
which describe themselves, so only paths need to be passed along. The CLI calls these functions.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import RunConfig
from .data import ArrayDataset, DataError, load_dataset
from .data.augment import ImageAugmentation
from .device import resolve_device
from .fields import LatentModulatedSiren, SirenConfig
from .fitting import MetaLearner, auto_batch_size, evaluate_reconstruction, fit_latents
from .functaset import Functaset, FunctasetWriter
from .io import ArtefactError, load_base_network, read_json, save_base_network
from .modalities import FieldDataset, Modality, PatchDataset, get_modality, modality_from_config

__all__ = ["contact_sheet", "encode", "evaluate", "fit", "format_table", "load_model", "open_data", "parse_indices", "render"]


def open_data(path: str | Path, split: str, data_cfg: dict | None = None, progress: bool = True) -> ArrayDataset:
    """Load ``split`` of the dataset at ``path`` with the ``data`` section of a run config."""
    d = data_cfg or {}
    return load_dataset(path, split, variable=d.get("variable"), test_fraction=d.get("test_fraction", 0.1),
                        limit=d.get("limit"), progress=progress)


def _infer_modality(ds: ArrayDataset, name: str | None) -> Modality:
    if name is None:
        name = "sphere" if ds.meta.get("kind") == "field" else "image"
    return get_modality(name).from_dataset(ds)


def load_model(run_dir: str | Path, device: str | torch.device | None = "cpu") -> tuple[LatentModulatedSiren, Modality, dict]:
    """Base network (on ``device``; ``"auto"``: CUDA if available), modality and config of a ``fit`` directory."""
    field, config = load_base_network(run_dir)
    field.to(resolve_device(device))
    if "modality" not in config:
        raise ArtefactError(f"{run_dir}: base network has no modality config")
    field.eval()
    return field, modality_from_config(config["modality"]), config


def fit(data: str | Path, out: str | Path, config: RunConfig, progress: bool = True,
        time_limit_s: float | None = None, device: str | torch.device | None = "cpu") -> dict:
    """Meta-learn a base network on the ``train`` split of ``data``; writes ``out/``.

    Resumes if ``out`` holds an unfinished run with the same field settings. With ``data.patch``
    the base network is meta-learned on random crops of that size (its modality grid is the patch;
    large items are then compressed patch by patch). Returns the final ``config.json`` content.
    """
    out = Path(out)
    data_cfg = asdict(config.data)
    train_ds = open_data(data, "train", data_cfg, progress)
    try:
        val_ds = open_data(data, "test", data_cfg, progress)
    except DataError:  # data without a test split: validate on the first training items
        val_ds = train_ds
    modality = _infer_modality(train_ds, config.modality)
    if config.data.patch:
        modality = modality.with_shape(tuple(config.data.patch))
    if (out / "config.json").exists():
        prev = read_json(out / "config.json")
        if prev.get("modality"):
            modality = modality_from_config(prev["modality"])  # keep the normalisation of the run
    field_cfg = SirenConfig(in_dim=modality.in_dim, out_dim=modality.out_channels, **config.field)
    torch.manual_seed(config.train.seed)
    field = LatentModulatedSiren(field_cfg).to(resolve_device(device))
    learner = MetaLearner(field, config.train)
    train_src, val_src = _sources(train_ds, val_ds, modality, config.data.patch is not None, config.train.seed)
    t0 = time.perf_counter()

    def extra() -> dict[str, Any]:
        return {"modality": modality.to_config(), "run": config.to_dict(),
                "data": {"path": str(data), **data_cfg, "meta": _small_meta(train_ds.meta)},
                "training": {"step": learner.step_count, "history": learner.history}}

    learner.fit(train_src, val_src, out, on_save=lambda d: save_base_network(d, field, **extra()),
                progress=progress, time_limit_s=time_limit_s)
    final = evaluate_reconstruction(field, val_src, config.train.inner_steps, limit=config.train.eval_items,
                                    extra=modality.metrics)
    info = extra()
    info["training"].update(wall_s=time.perf_counter() - t0, final_eval=final)
    save_base_network(out, field, **info)
    return read_json(out / "config.json")


def _sources(train_ds: ArrayDataset, val_ds: ArrayDataset, modality: Modality, patches: bool, seed: int):
    """Batch sources: whole items, or random crops of the modality's grid (``data.patch``)."""
    if not patches:
        return FieldDataset(train_ds, modality), FieldDataset(val_ds, modality)
    return PatchDataset(train_ds, modality, seed=seed), PatchDataset(val_ds, modality, crops_per_item=1, seed=seed + 1)


def _small_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("lat", "lon")}


def encode(model: str | Path, data: str | Path, out: str | Path, split: str = "train", steps: int | None = None,
           batch_size: int | None = None, chunk_size: int = 4096, progress: bool = True,
           augmentation: ImageAugmentation | None = None, copies: int = 0,
           device: str | torch.device | None = "cpu") -> Functaset:
    """Encode every item of ``data[split]`` into latents with the frozen base network ``model``.

    ``steps`` defaults to the inner steps used in meta-learning; ``batch_size`` to
    :func:`functa.fitting.auto_batch_size` (memory-bounded). With ``augmentation`` and
    ``copies > 0`` the functaset holds the originals followed by ``copies`` augmented copies of
    the whole split (rows of the same image share ``index``). Resumes an interrupted run.
    """
    field, modality, cfg = load_model(model, device)
    steps = cfg["run"]["train"]["inner_steps"] if steps is None else steps
    ds = open_data(data, split, cfg.get("data"), progress)
    src = FieldDataset(ds, modality)
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    if copies and augmentation is None:
        raise ValueError("copies > 0 needs an augmentation")
    if copies and ds.data.ndim != 4:
        raise ValueError(f"{data}: augmentations are defined for images (M, H, W, C); this data is {ds.data.shape}")
    m = len(ds)
    header = {"base_network": {"sha256": cfg["sha256"], "path": str(Path(model).resolve()), "field": cfg["field"],
                               "modality": cfg["modality"]},
              "encoding": {"inner_steps": steps}, "source": {"path": str(data), "split": split, "count": m,
                                                            "meta": _small_meta(ds.meta)},
              "latent_dim": field.config.code_dim}
    if copies:
        header["augmentation"] = {**asdict(augmentation), "copies": copies}
    total = m * (1 + copies)
    batch_size = batch_size or auto_batch_size(field, src.coords.shape[0])
    writer = FunctasetWriter(out, header, total=total, chunk_size=chunk_size)
    x = src.coords[None]
    bar = tqdm(total=total, initial=writer.count, desc=f"encoding {split}", disable=not progress, unit="item")
    t0 = time.perf_counter()
    row = writer.count
    params = None
    while row < total:
        copy, s = divmod(row, m)
        idx = np.arange(s, min(s + batch_size, m))
        if copy == 0:
            y = src.features(idx)
        else:
            if params is None or params[0] != copy:
                params = (copy, augmentation.parameters(m, copy))
            y = modality.to_features(augmentation.apply(ds.data[idx], params[1][idx]))
        enc = fit_latents(field, x, y, steps)
        writer.append(enc.latents, enc.mse, src.labels(idx), idx)
        bar.update(len(idx))
        row += len(idx)
    bar.close()
    writer.close({"encode_s_last_session": time.perf_counter() - t0})
    return Functaset(out)


def evaluate(model: str | Path, data: str | Path, split: str = "test", steps: int | None = None,
             limit: int | None = None, batch_size: int | None = None, progress: bool = True,
             device: str | torch.device | None = "cpu") -> dict:
    """PSNR after each inner step (both conventions) and modality metrics on ``data[split]``.

    A base network meta-learned on patches (``data.patch``) is evaluated on one random crop per item.
    """
    field, modality, cfg = load_model(model, device)
    steps = cfg["run"]["train"]["inner_steps"] if steps is None else steps
    ds = open_data(data, split, cfg.get("data"), progress)
    patches = bool(cfg.get("data", {}).get("patch")) and tuple(ds.data.shape[1:1 + len(modality.shape)]) != modality.shape
    src = PatchDataset(ds, modality, crops_per_item=1, seed=1) if patches else FieldDataset(ds, modality)
    res = evaluate_reconstruction(field, src, steps, batch_size=batch_size, limit=limit, extra=modality.metrics,
                                  progress=progress)
    return {"name": "functa-eval", "model": str(model), "data": str(data), "split": split,
            "base_network_sha256": cfg["sha256"], "results": res}


def format_table(result: dict) -> str:
    """Plain-text PSNR table of an :func:`evaluate` result."""
    res = result["results"]
    lines = [f"{'inner step':>10}  {'PSNR of mean MSE':>17}  {'mean PSNR':>10}", "-" * 41]
    for row in res["per_step"]:
        lines.append(f"{row['step']:>10}  {row['psnr_of_mean_mse']:>14.2f} dB  {row['mean_psnr']:>7.2f} dB")
    extras = {k: v for k, v in res.items() if k not in ("per_step", "count")}
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


def render(model: str | Path, out: str | Path, functaset: str | Path | None = None, data: str | Path | None = None,
           split: str = "test", indices: str | None = None, scale: float = 1.0,
           shape: tuple[int, ...] | None = None, device: str | torch.device | None = "cpu") -> dict:
    """Render fields at any resolution, from a functaset or by encoding items of ``data``.

    ``scale`` multiplies the native grid (``scale=4``: 4x super-resolution) unless ``shape`` is
    given. Writes one file per item, a ``grid.png`` contact sheet and ``renders.npz``
    (``values`` in data units, ``indices``); with ``data`` also the originals for comparison.
    """
    field, modality, cfg = load_model(model, device)
    out = Path(out)
    target_shape = tuple(shape) if shape else tuple(int(round(s * scale)) for s in modality.shape)
    originals = None
    if functaset is not None:
        fs = Functaset(functaset)
        fs.check_base_network(cfg["sha256"])
        idx = parse_indices(indices, len(fs))
        latents = fs.take(idx)["latents"]
    elif data is not None:
        src = FieldDataset(open_data(data, split, cfg.get("data")), modality)
        idx = parse_indices(indices, len(src))
        y = src.features(idx)
        latents = fit_latents(field, src.coords[None], y, cfg["run"]["train"]["inner_steps"]).latents
        originals = modality.from_features(y)
    else:
        raise ValueError("render needs a functaset or data to encode")
    with torch.no_grad():
        coords = modality.coordinates(target_shape).to(field.device)
        values = modality.from_features(field.forward_points(coords[None], latents.to(field.device))[0], target_shape)
    names = [f"item{int(i):06d}_{'x'.join(map(str, target_shape))}" for i in idx]
    paths = modality.save(values, out, names)
    written = {"renders": [str(p) for p in paths]}
    if originals is not None:
        written["originals"] = [str(p) for p in modality.save(originals, out, [f"item{int(i):06d}_original" for i in idx])]
    grid = contact_sheet(paths, out / "grid.png")
    np.savez(out / "renders.npz", values=values.astype(np.float32), indices=idx)
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
    sheet.save(dest)
    return dest
