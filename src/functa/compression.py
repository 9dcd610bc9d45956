"""Compression commands: build a codec from a base network, compress and decompress files.

Each function is what one ``functa`` sub-command runs (``codec build``, ``compress``,
``decompress``); the codec itself is :class:`functa.codec.FunctaCodec`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .codec import (MAX_OUTPUT_POINTS, AutoregressiveConfig, CodecConfig, ContextConfig, EncodeSettings, FunctaCodec,
                    QuantizerConfig, to_patches)
from .codec.container import MAX_POINTS
from .codec.canvas import canvas_layout, cell_grid, fit_canvas
from .atomic import output_lock
from .errors import CodecError
from .fitting import Batch, auto_batch_size, fit_latents
from .data import MixedSizesError, load_image_list
from .functaset import Functaset
from .io import ArtefactError, atomic_write_bytes, read_json
from .pipeline import load_model, model_loss, open_data

__all__ = ["build_codec", "codec_bench", "compress_file", "decompress_file", "encode_settings", "bits_per_point",
           "read_fta"]


def bits_per_point(num_bytes: int, shape: tuple[int, ...]) -> float:
    """Rate in bits per spatial point (bits per pixel for images: channels are not counted)."""
    return 8.0 * num_bytes / math.prod(shape)


def _training_latents(model: Path, data: str | Path | None, functaset: str | Path | None, split: str,
                      limit: int | None, progress: bool, device: str, canvas: bool = False) -> tuple[torch.Tensor, dict]:
    """Latents ``(N, *latent_shape)`` of a functaset, or of the patches of ``data[split]``; with ``canvas``,
    one latent canvas per item of ``data`` ``(N, *cells, C)`` instead (what the canvas codec codes)."""
    field, modality, cfg = load_model(model, device)
    if functaset is not None:
        fs = Functaset(functaset)
        fs.check_base_network(cfg["sha256"])
        if tuple(fs.latent_shape) != tuple(field.latent_shape):
            raise ArtefactError(f"{functaset}: latents of shape {fs.latent_shape}, but the base network's are "
                                f"{tuple(field.latent_shape)}")
        latents = fs.take(np.arange(len(fs) if limit is None else min(limit, len(fs))))["latents"]
        return latents, {"functaset": str(functaset), "count": int(latents.shape[0])}
    if data is None:
        raise ValueError("build a codec from a functaset or from data (one of the two is needed)")
    ds = open_data(data, split, {**cfg.get("data", {}), "limit": limit}, progress)
    steps = int(cfg["run"]["train"]["inner_steps"])
    if canvas:
        return _training_canvases(field, modality, cfg, ds, steps, progress), {
            "data": str(data), "split": split, "items": len(ds), "count": len(ds), "layout": "canvas"}
    x = modality.coordinates()[None]
    out = []
    per_item = to_patches(ds.take(np.arange(1))[0], tuple(modality.shape))[1].num_patches if len(ds) else 1
    batch = max(1, auto_batch_size(field, int(np.prod(modality.shape))) // per_item)
    for start in tqdm(range(0, len(ds), batch), desc="encoding training patches", disable=not progress):
        items = ds.take(np.arange(start, min(start + batch, len(ds))))
        patches = np.concatenate([to_patches(it, tuple(modality.shape))[0] for it in items])
        out.append(fit_latents(field, Batch(x, modality.to_features(patches)), steps, loss=model_loss(cfg)).latents.cpu())
    latents = torch.cat(out)
    return latents, {"data": str(data), "split": split, "items": len(ds), "count": int(latents.shape[0])}


def _training_canvases(field, modality, cfg: dict, ds, steps: int, progress: bool) -> torch.Tensor:
    """One canvas per item of ``ds`` (same-shape items, batched within the activation budget):
    latents ``(N, *cells, C)``."""
    if not len(ds):
        raise ValueError("no training items")
    first = ds.take(np.arange(1))[0]
    points = int(np.prod(cell_grid(field, modality, first.shape[:len(modality.shape)]).padded))
    batch = max(1, auto_batch_size(field, points))
    out = []
    for start in tqdm(range(0, len(ds), batch), desc="encoding training canvases", disable=not progress):
        items = ds.take(np.arange(start, min(start + batch, len(ds))))
        out.append(fit_canvas(field, modality, np.asarray(items), steps, model_loss(cfg))[2].cpu())
    return torch.cat(out)


def build_codec(model: str | Path, out: str | Path, data: str | Path | None = None,
                functaset: str | Path | None = None, split: str = "train", limit: int | None = None,
                bits: int = 5, per_dimension: bool = True, entropy_model: str = "per_dimension",
                encode: EncodeSettings = EncodeSettings(), autoregressive: AutoregressiveConfig | None = None,
                context: ContextConfig | None = None, layout: str = "auto", progress: bool = True,
                device: str = "cpu") -> dict:
    """Freeze a codec for the base network ``model``: quantiser statistics and entropy tables are
    fitted on the latents of a functaset of that network or of (the patches of) ``data[split]``.
    ``out`` is locked while it is built (a second build into it raises :class:`~functa.errors.LockError`)."""
    model, out = Path(model), Path(out)
    with output_lock(out):
        return _build_codec(model, out, data, functaset, split, limit, bits, per_dimension, entropy_model, encode,
                            autoregressive, context, layout, progress, device)


def _build_codec(model: Path, out: Path, data, functaset, split, limit, bits, per_dimension, entropy_model,
                 encode: EncodeSettings, autoregressive, context, layout: str, progress: bool, device: str) -> dict:
    field, modality, cfg = load_model(model)
    config = CodecConfig(QuantizerConfig(bits=bits, per_dimension=per_dimension), entropy_model, encode,
                         autoregressive or AutoregressiveConfig(), context or ContextConfig(), layout)
    canvas = canvas_layout(field, modality, config.layout, config.entropy_model)
    latents, source = _training_latents(model, data, functaset, split, limit, progress, device, canvas)
    codec = FunctaCodec.build(field, modality, cfg, latents, config, progress)
    bits_total, values = codec.ideal_bits(latents)
    stats = {"train_latents": int(latents.shape[0]), "layout": "canvas" if codec.canvas else "patches",
             "ideal_bits_per_latent_dim": bits_total / values,
             "raw_bits_per_latent_dim": bits}
    codec.save(out, model, {"built_from": source, "stats": stats})
    return {"codec": str(out), "codec_id": codec.codec_id.hex(), "config": config.to_dict(), **stats,
            "built_from": source}


def encode_settings(codec: FunctaCodec, **given) -> EncodeSettings:
    """The codec's default :class:`EncodeSettings` with the given (non-``None``) values replaced."""
    from dataclasses import replace

    return replace(codec.config.encode, **{k: v for k, v in given.items() if v is not None})


def compress_file(codec_dir: str | Path, source: str | Path, out: str | Path, inner_steps: int | None = None,
                  refine_steps: int | None = None, rate_weight: float | None = None, device: str = "cpu") -> dict:
    """Compress one file (an image, a field, a shape, ...) into a ``.fta`` file; reports size, rate and
    the modality's quality measures of the decoded item (PSNR for images, RMSE for fields, ...)."""
    codec = FunctaCodec.load(codec_dir, device)
    settings = encode_settings(codec, inner_steps=inner_steps, refine_steps=refine_steps, rate_weight=rate_weight)
    item = codec.modality.read_item(Path(source))
    k = len(codec.patch_shape)
    t = time.perf_counter()
    data = codec.compress(item, settings)
    encode_s = time.perf_counter() - t
    atomic_write_bytes(out, data)
    recon = codec.decompress(data, max_output_points=MAX_POINTS)  # our own file: any size the format allows
    shape = tuple(item.shape[:k])
    res = {"input": str(source), "output": str(out), "shape": list(item.shape), "bytes": len(data),
           "bits_per_point": bits_per_point(len(data), shape), "rate": codec.modality.rate(len(data), item.shape),
           "rate_unit": codec.modality.rate_unit, "encode_s": encode_s,
           **({"cells": int(np.prod([-(-s // p) for s, p in zip(shape, codec.cell_shape)]))} if codec.canvas else
              {"patches": int(np.prod([-(-s // p) for s, p in zip(shape, codec.patch_shape)]))}),
           "quality": codec.modality.compare(recon, item)}
    return res


def read_fta(codec: FunctaCodec, path: str | Path, max_output_points: int = MAX_OUTPUT_POINTS) -> np.ndarray:
    """Decode the ``.fta`` file at ``path`` into its item ``(*shape[, C])`` (what ``functa decompress`` does
    before writing it). Any problem with the file raises :class:`~functa.errors.CodecError` naming it;
    items of more than ``max_output_points`` points (padded to whole patches) are refused."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such file")
    try:
        return codec.decompress(path.read_bytes(), max_output_points)
    except ValueError as e:  # CodecError, and anything else the file's contents provoke
        raise CodecError(f"{path}: {e}") from None


def decompress_file(codec_dir: str | Path, source: str | Path, out: str | Path, device: str = "cpu",
                    max_output_points: int = MAX_OUTPUT_POINTS) -> dict:
    """Decode a ``.fta`` file made by this codec (:func:`read_fta`) and write the item (format from ``out``'s suffix)."""
    codec = FunctaCodec.load(codec_dir, device)
    path = Path(source)
    t = time.perf_counter()
    item = read_fta(codec, path, max_output_points)
    decode_s = time.perf_counter() - t
    codec.modality.write_item(item, Path(out))
    return {"input": str(path), "output": str(out), "shape": list(item.shape), "decode_s": decode_s}


def codec_bench(data: str | Path, codecs: list[str | Path], out: str | Path, split: str = "test",
                limit: int | None = None, standard: list[str] | None = None,
                targets: tuple[float, ...] | None = None, inner_steps: int | None = None,
                refine_steps: int | None = None, rate_weight: float | None = None,
                coin_targets: tuple[float, ...] = (), coin_steps: int = 2000, baselines_from: str | Path | None = None,
                progress: bool = True, device: str = "cpu") -> dict:
    """Rate-distortion table of functa codecs and standard codecs on the items of ``data[split]``.

    The functa codecs (all of one modality) set the modality, and with it the items (whole images,
    clips or volumes: :func:`_bench_items`), the rate unit (bits per pixel, kbps, bits per voxel:
    :meth:`~functa.modalities.ModalityBase.rate`) and the standard codecs (default: every one this
    installation has for the modality, :func:`functa.codec.baselines.available_codecs`).
    Every functa codec directory gives one point (file and payload rate, mean PSNR, encode and
    decode time per item) on the curve of its scheme (quantiser statistics and entropy model);
    every standard codec gives a curve over ``targets`` (default: the modality's ``rate_targets``;
    binary search per item); ``coin_targets`` add COIN points for images (one SIREN overfitted per
    image, ``coin_steps`` Adam steps). ``baselines_from`` reuses the standard-codec and COIN curves of
    an earlier ``rd.json`` of the same items (they are slow to measure). Writes ``rd.json`` (and
    ``rd.png`` when matplotlib is installed) into ``out`` and returns the table with the BD-rate (%)
    of every functa curve against every other curve.
    """
    from .codec.baselines import available_codecs
    from .codec.rd import coin_point, functa_point, standard_point

    out = Path(out)
    loaded = [(path, FunctaCodec.load(path, device)) for path in codecs]
    if not loaded:
        raise ValueError("codec-bench needs at least one functa codec (-m)")
    kinds = sorted({c.modality.name for _, c in loaded})
    if len(kinds) > 1:
        raise ValueError(f"the functa codecs are of different modalities ({', '.join(kinds)}); bench one at a time")
    modality = loaded[0][1].modality
    items = _bench_items(data, split, limit, modality, loaded[0][1].base_config.get("data") or {}, progress)
    have = available_codecs(modality.name)
    standard = have if standard is None else list(standard)
    missing = sorted(set(standard) - set(have))
    if missing:
        raise ValueError(f"codecs {missing} are not available for {modality.name} data here; available: {have}")
    if coin_targets and modality.name != "image":
        raise ValueError("COIN points are for images only")
    targets = tuple(modality.rate_targets if targets is None else targets)
    results: dict[str, list[dict]] = {}
    for path, codec in tqdm(loaded, desc="functa codecs", disable=not progress):
        q = codec.config.quantizer
        curve = (f"functa ({'per-dim' if q.per_dimension else 'global'} quantiser, {codec.config.entropy_model} entropy"
                 f"{', canvas' if codec.canvas else ''})")
        latent = (f"canvas of {'x'.join(map(str, codec.cell_shape))} cells x {codec.latent_dim}" if codec.canvas
                  else f"latent {codec.latent_dim}")
        label = f"{Path(path).name}: {latent}, {q.bits} bits"
        settings = encode_settings(codec, inner_steps=inner_steps, refine_steps=refine_steps, rate_weight=rate_weight)
        results.setdefault(curve, []).append(functa_point(codec, items, label, settings).to_dict())
    if baselines_from is not None:
        results.update(_previous_baselines(baselines_from, data, split, len(items)))
    for name in standard:
        pts = [standard_point(items, name, t, modality) for t in tqdm(targets, desc=name, disable=not progress)]
        results[name] = [p.to_dict() for p in pts]
    if coin_targets:
        results["coin"] = [coin_point(items, t, coin_steps).to_dict()
                           for t in tqdm(coin_targets, desc="COIN", disable=not progress)]
    bd: dict[str, dict[str, float | None]] = {}
    for name, pts in results.items():
        if not name.startswith("functa"):
            continue
        bd[name] = {other: _bd(pts, b, "rate") for other, b in results.items() if other != name}
    # functa curves against each other also on the payload alone (the header is the same for all)
    functa_curves = {k: v for k, v in results.items() if k.startswith("functa")}
    bd_payload = {name: {other: _bd(a, b, "payload_rate") for other, b in functa_curves.items() if other != name}
                  for name, a in functa_curves.items()}
    shapes = sorted({it.shape for it in items})
    table = {"name": "functa-codec-bench", "data": str(data), "split": split, "modality": modality.name,
             "items": int(len(items)),
             "item_shape": list(shapes[0]) if len(shapes) == 1 else "mixed",
             "item_shapes": [list(s) for s in shapes], "rate_unit": modality.rate_unit,
             "psnr": f"mean over items of the per-item PSNR ({modality.name} compare)",
             "rate": f"{modality.rate_unit} of the whole file (functa: also payload_rate)",
             "results": results, "bd_rate_percent": bd, "bd_rate_payload_percent": bd_payload}
    if modality.name == "audio":
        table["seconds_of_audio"] = float(sum(len(it) for it in items) / modality.sample_rate)
    from .io import write_json

    write_json(out / "rd.json", table)
    table["plot"] = _plot_rd(table, out / "rd.png")
    return table


def _previous_baselines(path: str | Path, data, split: str, count: int) -> dict[str, list[dict]]:
    """The standard-codec and COIN curves of an earlier ``rd.json`` of the same items (older tables
    name the rate ``bpp``)."""
    previous = read_json(path)
    seen = previous.get("items", previous.get("images"))
    if previous.get("data") != str(data) or previous.get("split") != split or seen != count:
        raise ValueError(f"{path}: its baselines were measured on other items "
                         f"({previous.get('data')}, {previous.get('split')}, {seen} items)")
    renamed = {"bpp": "rate", "payload_bpp": "payload_rate"}
    return {k: [{renamed.get(f, f): v for f, v in p.items()} for p in pts]
            for k, pts in previous["results"].items() if not k.startswith("functa")}


def _bench_items(data: str | Path, split: str, limit: int | None, modality, data_cfg: dict,
                 progress: bool) -> list[np.ndarray]:
    """The whole items of ``data[split]`` in data units, of any sizes: 8-bit images ``(H, W, C)`` (a folder
    of images of different sizes gives them all), clips ``(L,)`` (every file of an audio folder at its full
    length), volumes; a single file (``.wav``, ``.nii.gz``, ...) is one item (read by the modality, as
    ``compress`` does). Datasets of rows (npz) are read with the base network's data settings
    ``data_cfg`` (clip length, resampling, per-volume normalisation)."""
    from .data import item_files

    path = Path(data)
    if modality.name == "image":
        return _bench_images(data, split, limit, progress)
    files = item_files(path, split)
    if files is not None:
        return [modality.read_item(f) for f in files[:limit]]
    ds = open_data(data, split, {**data_cfg, "limit": limit}, progress)
    return list(np.asarray(ds.data[:]))


def _bench_images(data: str | Path, split: str, limit: int | None, progress: bool) -> list[np.ndarray]:
    """8-bit images ``(H, W, C)`` of ``data[split]``; a folder of images of different sizes gives them all."""
    try:
        ds = open_data(data, split, {"limit": limit}, progress)
    except MixedSizesError:
        return load_image_list(Path(data), split, limit)
    if ds.data.ndim != 4 or ds.data.dtype != np.uint8:
        raise ValueError(f"{data}: the codec benchmark needs 8-bit images (N, H, W, C), got {ds.data.dtype} {ds.data.shape}")
    return list(ds.data)


def _bd(a: list[dict], b: list[dict], rate: str) -> float | None:
    """BD-rate (%) of RD points ``a`` against ``b`` on the rate column ``rate`` (``rate`` or ``payload_rate``)."""
    from .codec.rd import bd_rate

    return bd_rate([p[rate] for p in a], [p["psnr"] for p in a], [p[rate] for p in b], [p["psnr"] for p in b])


def _plot_rd(table: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, pts in table["results"].items():
        pts = sorted(pts, key=lambda p: p["rate"])
        functa = name.startswith("functa")
        line = ax.plot([p["rate"] for p in pts], [p["psnr"] for p in pts], "o-" if functa else ".--", label=name)[0]
        if functa:
            ax.plot([p["payload_rate"] for p in pts], [p["psnr"] for p in pts], "o:", alpha=0.5,
                    color=line.get_color(), label=f"{name}, payload only")
    if table["rate_unit"] != "bpp":  # kbps and bits per voxel span decades
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(table["rate_unit"])
    ax.set_ylabel("PSNR (dB)")
    shape = table["item_shape"]
    ax.set_title(f"{Path(table['data']).name} ({table['items']} {table['modality']} items, "
                 f"{'x'.join(map(str, shape)) if isinstance(shape, list) else 'mixed sizes'})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)
