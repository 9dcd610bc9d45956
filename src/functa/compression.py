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

from .codec import CodecConfig, FunctaCodec, QuantizerConfig, to_patches
from .fitting import auto_batch_size, fit_latents
from .functaset import Functaset
from .io import ArtefactError, atomic_write_bytes
from .pipeline import load_model, open_data

__all__ = ["build_codec", "compress_file", "decompress_file", "psnr_8bit", "bits_per_point"]


def bits_per_point(num_bytes: int, shape: tuple[int, ...]) -> float:
    """Rate in bits per spatial point (bits per pixel for images: channels are not counted)."""
    return 8.0 * num_bytes / math.prod(shape)


def psnr_8bit(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> float:
    """PSNR in dB of two items in data units after rounding both to integer levels (what files store)."""
    x = np.clip(np.round(np.asarray(a, np.float64)), 0, max_value) / max_value
    y = np.clip(np.round(np.asarray(b, np.float64)), 0, max_value) / max_value
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _training_latents(model: Path, data: str | Path | None, functaset: str | Path | None, split: str,
                      limit: int | None, progress: bool) -> tuple[torch.Tensor, dict]:
    field, modality, cfg = load_model(model)
    if functaset is not None:
        fs = Functaset(functaset)
        fs.check_base_network(cfg["sha256"])
        latents = fs.take(np.arange(len(fs) if limit is None else min(limit, len(fs))))["latents"]
        return latents, {"functaset": str(functaset), "count": int(latents.shape[0])}
    if data is None:
        raise ValueError("build a codec from a functaset or from data (one of the two is needed)")
    ds = open_data(data, split, {**cfg.get("data", {}), "limit": limit}, progress)
    steps = int(cfg["run"]["train"]["inner_steps"])
    x = modality.coordinates()[None]
    out = []
    per_item = to_patches(ds.take(np.arange(1))[0], tuple(modality.shape))[1].num_patches if len(ds) else 1
    batch = max(1, auto_batch_size(field, int(np.prod(modality.shape))) // per_item)
    for start in tqdm(range(0, len(ds), batch), desc="encoding training patches", disable=not progress):
        items = ds.take(np.arange(start, min(start + batch, len(ds))))
        patches = np.concatenate([to_patches(it, tuple(modality.shape))[0] for it in items])
        out.append(fit_latents(field, x, modality.to_features(patches), steps).latents)
    latents = torch.cat(out)
    return latents, {"data": str(data), "split": split, "items": len(ds), "count": int(latents.shape[0])}


def build_codec(model: str | Path, out: str | Path, data: str | Path | None = None,
                functaset: str | Path | None = None, split: str = "train", limit: int | None = None,
                bits: int = 5, per_dimension: bool = True, entropy_model: str = "per_dimension",
                inner_steps: int | None = None, refine_steps: int = 0, progress: bool = True) -> dict:
    """Freeze a codec for the base network ``model``: quantiser statistics and entropy tables are
    fitted on the latents of a functaset of that network or of (the patches of) ``data[split]``."""
    model, out = Path(model), Path(out)
    field, modality, cfg = load_model(model)
    latents, source = _training_latents(model, data, functaset, split, limit, progress)
    config = CodecConfig(QuantizerConfig(bits=bits, per_dimension=per_dimension), entropy_model, inner_steps,
                         refine_steps)
    codec = FunctaCodec.build(field, modality, cfg, latents, config)
    sym = codec.quantizer.quantize(latents)
    stats = {"train_latents": int(latents.shape[0]),
             "ideal_bits_per_latent_dim": codec.entropy.bits(sym) / sym.numel(),
             "raw_bits_per_latent_dim": bits}
    codec.save(out, model, {"built_from": source, "stats": stats})
    return {"codec": str(out), "codec_id": codec.codec_id.hex(), "config": config.to_dict(), **stats,
            "built_from": source}


def compress_file(codec_dir: str | Path, source: str | Path, out: str | Path, inner_steps: int | None = None,
                  refine_steps: int | None = None) -> dict:
    """Compress one file (an image, a field, ...) into a ``.fta`` file; reports size, rate and PSNR."""
    codec = FunctaCodec.load(codec_dir)
    item = codec.modality.read_item(Path(source))
    k = len(codec.patch_shape)
    t = time.perf_counter()
    data = codec.compress(item, inner_steps, refine_steps)
    encode_s = time.perf_counter() - t
    atomic_write_bytes(out, data)
    recon = codec.decompress(data)
    shape = tuple(item.shape[:k])
    res = {"input": str(source), "output": str(out), "shape": list(item.shape), "bytes": len(data),
           "bits_per_point": bits_per_point(len(data), shape), "encode_s": encode_s,
           "patches": int(np.prod([-(-s // p) for s, p in zip(shape, codec.patch_shape)]))}
    if codec.modality.name == "image":
        res["psnr_db"] = psnr_8bit(recon, item, codec.modality.max_value)
    else:
        res["rmse"] = float(np.sqrt(np.mean((recon.astype(np.float64) - item) ** 2)))
    return res


def decompress_file(codec_dir: str | Path, source: str | Path, out: str | Path) -> dict:
    """Decode a ``.fta`` file made by this codec and write the item (format from ``out``'s suffix)."""
    codec = FunctaCodec.load(codec_dir)
    path = Path(source)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such file")
    t = time.perf_counter()
    try:
        item = codec.decompress(path.read_bytes())
    except ValueError as e:
        raise ArtefactError(f"{path}: {e}") from None
    decode_s = time.perf_counter() - t
    codec.modality.write_item(item, Path(out))
    return {"input": str(path), "output": str(out), "shape": list(item.shape), "decode_s": decode_s}
