"""``functa`` command line: a thin layer over :mod:`functa.pipeline`, :mod:`functa.downstream` and
:mod:`functa.demo`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]

FIELD_ALIASES = {"siren": "latent_modulated_siren"}  # --field siren: vector functa


def _latent_shape(info: dict) -> list[int] | None:
    """The latent shape of one item of a functaset manifest or a run's config.json (``None`` if unknown)."""
    header = info.get("header")
    if isinstance(header, dict) and isinstance(header.get("latent_shape"), list):
        return header["latent_shape"]
    if isinstance(info.get("field"), dict):
        from .errors import FunctaError
        from .fields import field_from_config

        try:
            return list(field_from_config(info["field"]).latent_shape)
        except (FunctaError, ValueError, TypeError):
            return None
    return None


def _field_names() -> list[str]:
    from .fields import available_fields

    return sorted(set(available_fields()) | set(FIELD_ALIASES))


def _add_common_fit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or JSON config file (sections: modality, field, train, data)")
    p.add_argument("--preset", default="cpu", help="starting settings: 'cpu' (best PSNR per CPU minute, default), 'shapes-cpu' (3-D occupancy grids on a CPU), 'scenes-cpu' (NeRF scenes on a CPU), "
                   "'paper' (functa) or 'coinpp' (COIN++ CIFAR-10 compression)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 --set field.latent_dim=64 (repeatable)")


def _sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set model.width=1024 --set train.steps=3000 (repeatable; "
                        "see docs/tasks.md for the defaults)")


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, help="directory written by the train command")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    p.add_argument("--label", type=int, help="class of every sample (class-conditional models; default: cycle)")
    p.add_argument("--scale", type=float, default=1.0, help="render at this multiple of the native resolution")
    p.add_argument("--base-model", type=Path, help="base network (default: the one recorded in the functaset)")
    p.add_argument("--no-neighbours", action="store_true", help="skip the nearest-training-item check")
    p.add_argument("--seed", type=int, default=0)


def _add_downstream(sub) -> None:
    c = sub.add_parser("classify", help="classifiers on functasets, and the array CNN baseline")
    cs = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = cs.add_parser("train", help="train an MLP on a functaset (one model per seed; --set seeds=[0,1,2])")
    p.add_argument("functaset", type=Path)
    p.add_argument("--test", type=Path, help="test functaset (same base network)")
    p.add_argument("-o", "--out", required=True, type=Path)
    _sets(p)
    p = cs.add_parser("eval", help="accuracy of a trained classifier on a functaset")
    p.add_argument("model_dir", type=Path)
    p.add_argument("functaset", type=Path)
    text = ("train the CNN baseline on the arrays of the same dataset: 2-D on images, 3-D on voxel grids, 1-D on "
            "audio waveforms (read them as the functaset was, e.g. --set data.audio_length=4000 --set data.audio_pad=true)")
    p = cs.add_parser("baseline", help=text, description=text)
    p.add_argument("data")
    p.add_argument("-o", "--out", required=True, type=Path)
    _sets(p)

    f = sub.add_parser("flow", help="neural spline flow over functa latents")
    fs = f.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = fs.add_parser("train", help="fit the flow; reports test NLL vs a diagonal Gaussian")
    p.add_argument("functaset", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("-o", "--out", required=True, type=Path)
    _sets(p)
    p = fs.add_parser("sample", help="sample and render")
    _sample_args(p)
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the base noise (< 1: typical samples)")

    d = sub.add_parser("diffusion", help="DDPM over functa latents")
    ds = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ds.add_parser("train", help="train the denoiser (residual MLP on vectors, UNet on latent grids: "
                                    "--set denoiser=auto|mlp|unet)")
    p.add_argument("functaset", type=Path)
    p.add_argument("-o", "--out", required=True, type=Path)
    _sets(p)
    p = ds.add_parser("sample", help="sample (ancestral DDPM or DDIM) and render")
    _sample_args(p)
    p.add_argument("--method", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--steps", type=int, help="DDIM steps (default 50 for ddim)")
    p.add_argument("--eta", type=float, default=1.0,
                   help="DDIM stochasticity: 1 (default) = strided ancestral sampling, 0 = deterministic DDIM")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (conditional models)")
    p.add_argument("--clip-x0", default="auto", help="clip each step's predicted x0 to [-C, C]: 'auto' (the largest "
                   "standardised training value, recorded at training), a number, or 'none'")

    p = sub.add_parser("impute", help="fill in hidden parts of items by MAP fitting, with and without a flow prior")
    p.add_argument("data")
    p.add_argument("-m", "--model", required=True, type=Path, help="base network")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--prior", type=Path, help="flow directory (unconditional) trained on this base network's latents")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--indices", help="items, e.g. '0:16' (default: first 16)")
    p.add_argument("--mask", default="left-half",
                   help="observed region: left-half, right-half, top-half, bottom-half, random, centre-box")
    p.add_argument("--fraction", type=float, default=0.5, help="observed fraction (random) / hidden area (centre-box)")
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)

    text = ("novel view synthesis: infer scenes from one (or a partial) view by MAP fitting, with and without a flow "
            "prior, render the novel views and score them (functa paper 6.3, Figure 11)")
    p = sub.add_parser("nvs", help=text, description=text)
    p.add_argument("data", help="scenes (Blender or SRN layout, or a scene npz)")
    p.add_argument("-m", "--model", required=True, type=Path, help="base network meta-learned on scenes")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--prior", type=Path, help="flow directory (unconditional) trained on this base network's latents")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--indices", help="scenes, e.g. '0:8' (default: first 16)")
    p.add_argument("--context", default="0", help="context view(s), e.g. '0' or '0,25' (default 0)")
    p.add_argument("--novel", help="views to synthesise and score, e.g. '10,20,30,40' (default: four views spread "
                   "over the others)")
    p.add_argument("--mask", default="full", help="what of the context views is observed: full (default), "
                   "left-half, right-half, top-half, bottom-half, random, centre-box")
    p.add_argument("--pixels", type=int, help="fit on this many of the observed pixels of each context view (a "
                   "random draw; default: all)")
    p.add_argument("--prior-weight", type=float, default=0.01,
                   help="weight of -log p(z) / D against the MSE (default 0.01: measured best on ModelNet scenes)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0, help="seed of a random mask and of --pixels")

    p = sub.add_parser("fid", help="Fréchet Inception Distance of rendered samples against a dataset split")
    p.add_argument("samples", type=Path, help="sample.npz / renders.npz written by a sample or render command")
    p.add_argument("--reference", required=True, help="image dataset (the real images)")
    p.add_argument("--weights", required=True, type=Path,
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or a safetensors copy); not downloaded")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--limit", type=int, help="use the first N reference images")

    p = sub.add_parser("interpolate", help="render the path between two items of a functaset")
    p.add_argument("functaset", type=Path)
    p.add_argument("-m", "--model", required=True, type=Path, help="base network")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--pair", type=int, nargs=2, default=[0, 1], metavar=("A", "B"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--flow", type=Path, help="also interpolate in this flow's base space")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--turntable", type=int, metavar="FRAMES", help="scenes: FRAMES frames, the camera moving round "
                   "the scene as the latent moves from A to B (an animated GIF; paper Figure 10)")


def _add_compression(sub) -> None:
    c = sub.add_parser("codec", help="build a codec (quantiser + entropy model) for a base network")
    cs = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = cs.add_parser("build", help="fit quantiser statistics and entropy tables on training latents")
    p.add_argument("-m", "--model", required=True, type=Path, help="base network (a 'functa fit' directory)")
    p.add_argument("-o", "--out", required=True, type=Path, help="codec directory to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="training data: its items (or their patches) are encoded first")
    src.add_argument("--functaset", type=Path, help="a functaset of this base network")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--limit", type=int, help="use the first N items")
    p.add_argument("--bits", type=int, default=5, help="bits per latent dimension (COIN++: 5 low rate, 6 high)")
    p.add_argument("--quantizer", choices=["per-dimension", "global"], default="per-dimension",
                   help="statistics per latent dimension (thesis 6.4.1) or one for all (COIN++)")
    p.add_argument("--entropy", choices=["per_dimension", "histogram", "autoregressive", "context"],
                   default="per_dimension",
                   help="per-dimension frequency tables, one shared histogram (COIN++), an autoregressive "
                        "flow (FlowCOIN; trained here, see --ar-steps), or a causal context model over the cells "
                        "of a latent canvas (spatial functa; see --context-steps)")
    p.add_argument("--ar-steps", type=int, default=3000, help="training steps of the autoregressive entropy model")
    p.add_argument("--context-steps", type=int, default=2000, help="training steps of the context entropy model")
    p.add_argument("--layout", choices=["auto", "patches", "canvas"], default="auto",
                   help="code items patch by patch, or as one latent grid over the whole item (canvas: spatial "
                        "functa with 1-NN or periodic-input bilinear cells); auto: canvas where the field allows")
    p.add_argument("--steps", type=int, help="default encode-time inner steps (default: as in meta-learning)")
    p.add_argument("--refine", type=int, default=0, help="default refinement steps on the quantised latents")
    p.add_argument("--rate-weight", type=float, default=0.0,
                   help="default λ of rate-aware refinement: minimise MSE + λ·bits per point (needs --refine)")

    p = sub.add_parser("compress", help="compress a file with a codec into a .fta file")
    p.add_argument("input", type=Path)
    p.add_argument("-m", "--codec", required=True, type=Path, help="codec directory ('functa codec build')")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--steps", type=int, help="inner steps when fitting latents (e.g. 3, 10, 50)")
    p.add_argument("--refine", type=int, help="Adam steps on the quantised latents (straight-through)")
    p.add_argument("--rate-weight", type=float, help="λ: refine on MSE + λ·bits per point (rate-aware fitting)")

    p = sub.add_parser("codec-bench", help="rate-distortion table and plot: functa codecs vs the standard codecs of "
                       "the modality (JPEG, JPEG 2000, WebP, AVIF; MP3, Opus; per-slice JPEG 2000 / WebP, SPERR)")
    p.add_argument("data", help="dataset of the codecs' modality (images, audio folder or file, NIfTI file or folder, "
                   "npz)")
    p.add_argument("-m", "--codec", dest="codecs", action="append", required=True, type=Path,
                   help="functa codec directory (repeat: one RD point each)")
    p.add_argument("-o", "--out", required=True, type=Path, help="directory for rd.json and rd.png")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--limit", type=int, help="first N items")
    p.add_argument("--standard", nargs="*", help="standard codecs (default: all available for the modality)")
    p.add_argument("--targets", type=float, nargs="+", help="target rates of the standard codecs, in the modality's "
                   "unit: bits per pixel, kbps (audio), bits per voxel (volumes)")
    p.add_argument("--steps", type=int, help="functa inner steps at encode time")
    p.add_argument("--refine", type=int, help="functa refinement steps on the quantised latents")
    p.add_argument("--rate-weight", type=float, help="functa rate-aware refinement weight λ")
    p.add_argument("--coin", type=float, nargs="+", default=[], metavar="BPP",
                   help="also COIN (a SIREN overfitted per image) at these rates")
    p.add_argument("--coin-steps", type=int, default=2000, help="Adam steps per COIN image")
    p.add_argument("--baselines-from", type=Path, help="reuse the standard-codec / COIN curves of an earlier rd.json "
                   "of the same images (use with --standard to skip measuring them again)")

    p = sub.add_parser("decompress", help="decode a .fta file")
    p.add_argument("input", type=Path)
    p.add_argument("-m", "--codec", required=True, type=Path)
    p.add_argument("-o", "--out", required=True, type=Path, help="output file (e.g. .png for images)")
    p.add_argument("--max-output-points", type=int, default=2**25,
                   help="refuse files whose item has more points, padded to whole patches (default 2^25: one 8K frame)")


def _positive_float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be 'auto', 'none' or a positive number, got {text[:40]!r}")
    return value


def _run_compression(args: argparse.Namespace, progress: bool) -> None:
    from . import compression as comp
    from .codec import AutoregressiveConfig, ContextConfig, EncodeSettings

    if args.command == "codec":
        r = comp.build_codec(args.model, args.out, data=args.data, functaset=args.functaset, split=args.split,
                             limit=args.limit, bits=args.bits, per_dimension=args.quantizer == "per-dimension",
                             entropy_model=args.entropy,
                             encode=EncodeSettings(args.steps, args.refine, rate_weight=args.rate_weight),
                             autoregressive=AutoregressiveConfig(steps=args.ar_steps),
                             context=ContextConfig(steps=args.context_steps), layout=args.layout,
                             progress=progress, device=args.device)
        print(f"wrote codec {r['codec_id']} to {args.out}: {r['train_latents']} training latents, "
              f"{r['ideal_bits_per_latent_dim']:.3f} bits per latent dimension (of {args.bits})")
    elif args.command == "compress":
        r = comp.compress_file(args.codec, args.input, args.out, args.steps, args.refine, args.rate_weight,
                               device=args.device)
        quality = ", ".join(f"{k} {v:.4g}" for k, v in r["quality"].items())
        print(f"wrote {args.out}: {r['bytes']} bytes, {r['rate']:.4f} {r['rate_unit']}, {quality}, "
              + (f"{r['cells']} latent cell(s)" if "cells" in r else f"{r['patches']} patch(es)")
              + f", {r['encode_s']:.2f} s")
    elif args.command == "codec-bench":
        kw = {"targets": tuple(args.targets)} if args.targets else {}
        r = comp.codec_bench(args.data, args.codecs, args.out, split=args.split, limit=args.limit,
                             standard=args.standard, inner_steps=args.steps, refine_steps=args.refine,
                             rate_weight=args.rate_weight,
                             coin_targets=tuple(args.coin), coin_steps=args.coin_steps, progress=progress,
                             baselines_from=args.baselines_from, device=args.device, **kw)
        for name, pts in r["results"].items():
            for p in sorted(pts, key=lambda q: q["rate"]):
                print(f"{name:>50} {p['rate']:8.4g} {r['rate_unit']}  {p['psnr']:6.2f} dB  {p['label']}")
        for name, row in r["bd_rate_percent"].items():
            for other, v in row.items():
                print(f"BD-rate {name} vs {other}: " + ("curves do not overlap" if v is None else f"{v:+.1f}%"))
        print(f"wrote {args.out / 'rd.json'}" + (f" and {r['plot']}" if r.get("plot") else " (pip install matplotlib for rd.png)"))
    else:
        r = comp.decompress_file(args.codec, args.input, args.out, device=args.device,
                                 max_output_points=args.max_output_points)
        print(f"wrote {args.out}: shape {tuple(r['shape'])}, {r['decode_s']:.3f} s")


def _run_downstream(args: argparse.Namespace, progress: bool) -> None:
    from . import downstream as ds

    cmd, action = args.command, getattr(args, "action", None)
    if cmd == "classify" and action == "train":
        r = ds.classify_train(args.functaset, args.out, args.test, args.overrides, progress)
        _print_accuracy(r)
    elif cmd == "classify" and action == "baseline":
        _print_accuracy(ds.classify_baseline(args.data, args.out, args.overrides, progress))
    elif cmd == "classify" and action == "eval":
        r = ds.classify_eval(args.model_dir, args.functaset)
        print(f"accuracy {100 * r['accuracy']:.2f}% on {r['count']} items")
    elif cmd == "flow" and action == "train":
        r = ds.flow_train(args.functaset, args.out, args.test, args.overrides, progress)
        print(json.dumps(r, indent=2))
    elif cmd == "diffusion" and action == "train":
        r = ds.diffusion_train(args.functaset, args.out, args.overrides, progress)
        print(json.dumps(r, indent=2))
    elif action == "sample":
        common = dict(n=args.num, label=args.label, scale=args.scale, model=args.base_model,
                      neighbours=not args.no_neighbours, seed=args.seed)
        if cmd == "flow":
            r = ds.flow_sample(args.model_dir, args.out, temperature=args.temperature, **common)
        else:
            clip = {"auto": "auto", "none": None}.get(args.clip_x0.lower()) if args.clip_x0.lower() in ("auto", "none") \
                else _positive_float(args.clip_x0, "--clip-x0")
            r = ds.diffusion_sample(args.model_dir, args.out, method=args.method, steps=args.steps, eta=args.eta,
                                    guidance_scale=args.guidance, progress=progress, clip_x0=clip, **common)
        print(f"wrote {r['samples']['count']} samples to {r['samples']['grid']}")
        if "memorisation" in r:
            m = r["memorisation"]
            print(f"nearest training item: median distance {m['sample_nn_distance_median']:.3f} "
                  f"(training items to each other: {m['train_nn_distance_median']:.3f})")
    elif cmd == "impute":
        r = ds.impute(args.model, args.data, args.out, prior=args.prior, split=args.split, indices=args.indices,
                      mask=args.mask, fraction=args.fraction, prior_weight=args.prior_weight, steps=args.steps,
                      lr=args.lr, progress=progress)
        key = r["headline"]
        for name in ("no_prior", "prior"):
            if name in r:
                print(f"{name:>8}: hidden region {key} {r[name]['hidden'][key]:.4g}, "
                      f"observed region {key} {r[name]['observed'][key]:.4g}")
        print(f"grid: {r['grid']}")
    elif cmd == "fid":
        r = ds.fid_score(args.weights, args.reference, args.samples, split=args.split, limit=args.limit,
                         progress=progress)
        print(f"FID {r['fid']:.2f} ({r['sample_count']} samples vs {r['reference_count']} reference images)")
    elif cmd == "interpolate" and args.turntable is not None:
        from .scenes import interpolation_turntable

        if args.flow is not None:
            raise ValueError("interpolate --turntable interpolates latents; it does not take --flow")

        r = interpolation_turntable(args.model, args.functaset, args.out, *args.pair, frames=args.turntable,
                                    scale=args.scale)
        print(f"wrote {r['gif']} ({r['frames']} frames)")
    elif cmd == "interpolate":
        r = ds.interpolate_items(args.model, args.functaset, args.out, *args.pair, steps=args.steps, flow=args.flow,
                                 scale=args.scale)
        print(f"wrote {r['latent']['grid']}" + (f" and {r['flow_base']['grid']}" if "flow_base" in r else ""))


def _print_accuracy(r: dict) -> None:
    if "test_accuracy_mean" in r:
        print(f"{r['name']}: test accuracy {100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}% "
              f"over {len(r['runs'])} seed(s), {r['parameters']:,} parameters")
    else:
        print(f"{r['name']}: trained {len(r['runs'])} model(s); no test set given")


def build_parser() -> argparse.ArgumentParser:
    from .fitting import available_losses
    from .modalities import available_modalities

    parser = argparse.ArgumentParser(prog="functa", description="Data points as functions: meta-learn modulated "
                                     "neural fields, encode datasets into functasets, render at any resolution.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="auto",
                        help="where fit / encode / eval / render / compress run: 'auto' (CUDA if available, else CPU), "
                             "'cpu', 'cuda', 'cuda:1', ...")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="meta-learn a base network on a dataset (resumes an interrupted run)")
    p.add_argument("data", help="dataset path: idx directory, CIFAR-10 npz/python batches, image folder, lat/lon npz "
                                "or .nc, voxel npz/binvox/npy, audio folder (WAV/FLAC/OGG) or FSDD npz, NIfTI "
                                "file/folder or volume npz")
    p.add_argument("-o", "--out", required=True, type=Path, help="run directory (model.safetensors + config.json)")
    p.add_argument("--modality", choices=available_modalities(), help="default: inferred from the data")
    p.add_argument("--loss", choices=available_losses(), help="reconstruction loss (default: the modality's; "
                   "same as --set loss=NAME)")
    p.add_argument("--field", choices=_field_names(), help="base network: latent_modulated_siren (vector functa, "
                   "the default; alias 'siren') or spatial (a latent grid: --set field.grid=S --set field.channels=C); "
                   "same as --set field.name=NAME")
    p.add_argument("--steps", type=int, help="outer steps (same as --set train.steps=N)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds (a checkpoint is saved)")
    _add_common_fit(p)

    p = sub.add_parser("encode", help="fit a latent for every item of a dataset split -> functaset")
    p.add_argument("data")
    p.add_argument("-m", "--model", required=True, type=Path, help="run directory written by 'functa fit'")
    p.add_argument("-o", "--out", required=True, type=Path, help="output .functaset directory")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--steps", type=int, help="inner steps (default: as in meta-learning)")
    p.add_argument("--batch-size", type=int, help="items per batch (default: as many as fit ~24 MiB activations)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="items per chunk file (default 4096); an interrupted run resumes after its last chunk")
    p.add_argument("--augment", help="also encode augmented copies of every item, with the modality's augmentations: "
                   "images 'flip,crop', 'crop' or 'flip'; shapes 'scale' (paper A.1: per-axis rescaling)")
    p.add_argument("--copies", type=int, default=0, help="number of augmented copies of the split (with --augment)")
    p.add_argument("--pad", type=int, help="images: zero padding in pixels before the random crop (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentations")

    p = sub.add_parser("render", help="decode items to PNG/npz at any resolution")
    p.add_argument("-m", "--model", required=True, type=Path)
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--functaset", type=Path, help="render stored latents")
    src.add_argument("--data", help="encode these items first (originals are written too)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--indices", help="e.g. '0:16' or '3,7,9' (default: first 16)")
    p.add_argument("--scale", type=float, default=1.0, help="resolution multiplier, e.g. 4 for 4x super-resolution")
    p.add_argument("--shape", type=int, nargs="+", help="explicit output grid, e.g. --shape 256 512")
    p.add_argument("--turntable", type=int, metavar="FRAMES", help="scenes: render FRAMES views around each scene "
                   "(PNG frames, an animated GIF and depth maps in OUT/item<index>/)")
    p.add_argument("--elevation", type=float, default=30.0, help="scenes: camera elevation of the turntable in degrees")
    p.add_argument("--no-depth", action="store_true", help="scenes: skip the depth maps of a turntable")
    p.add_argument("--fps", type=float, default=12.0, help="scenes: frames per second of the turntable GIF")

    p = sub.add_parser("eval", help="PSNR table (per inner step, both conventions) and modality metrics")
    p.add_argument("data")
    p.add_argument("-m", "--model", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--steps", type=int, help="inner steps (default: as in meta-learning)")
    p.add_argument("--limit", type=int, help="evaluate the first N items only")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="modality.KEY=VALUE",
                   help="change an evaluation setting of the modality, e.g. scenes: --set 'modality.context_views=[0,25]'"
                        " --set modality.context_pixels=null")

    _add_downstream(sub)
    _add_compression(sub)

    sc = sub.add_parser("scenes", help="scene datasets: build posed views of voxel shapes")
    ss = sc.add_subparsers(dest="scenes_command", required=True, metavar="COMMAND")
    text = ("render posed views of voxel shapes (e.g. ../shared/data/modelnet10_vox32) into NeRF Blender scene "
            "folders OUT/train|test/<class>_<index>/ (exact ray/voxel hits, Lambertian shading, white background); "
            "resumable: complete scenes are skipped")
    p = ss.add_parser("build-modelnet", help=text, description=text)
    p.add_argument("source", help="voxel data: a voxel npz (voxels, label, class_names), binvox files, ...")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--views", type=int, default=50, help="views per scene (default 50)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--limit", type=int, help="only the first N shapes (after --classes)")
    p.add_argument("--classes", help="only these classes, e.g. 'chair' or 'chair,monitor'")
    p.add_argument("--radius", type=float, default=1.7, help="camera distance from the shape's centre (default 1.7)")
    p.add_argument("--camera-angle-x", type=float, default=0.75, help="horizontal field of view in radians")
    p.add_argument("--near", type=float, default=0.8)
    p.add_argument("--far", type=float, default=2.6)
    p.add_argument("--hemisphere", action="store_true", help="cameras on the upper hemisphere only")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)

    _add_gasp(sub)

    p = sub.add_parser("info", help="describe a run directory or functaset")
    p.add_argument("path", type=Path)

    p = sub.add_parser("demo", help="end-to-end demo on scikit-learn's bundled digits (no download)")
    p.add_argument("-o", "--out", type=Path, default=Path("functa-demo"))
    p.add_argument("--steps", type=int, default=None, help="meta-learning steps (default: demo setting)")
    p.add_argument("--time-limit", type=float, default=180.0, help="cap on meta-learning seconds")
    return parser


def _add_gasp(sub) -> None:
    g = sub.add_parser("gasp", help="GASP: a GAN over functions (hypernetwork generator, point-cloud discriminator); "
                                    "no meta-learning, no functaset")
    gs = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = ("train GASP on the train split of a dataset (images, voxels, fields on the sphere, ...); running it "
            "again resumes the run")
    p = gs.add_parser("train", help=text, description=text)
    p.add_argument("data", help="dataset path (any format 'functa fit' reads, except scenes)")
    p.add_argument("-o", "--out", required=True, type=Path, help="run directory")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds (a checkpoint is saved)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set train.steps=2000 --set discriminator.channels=[32,64,128] "
                        "(sections generator, discriminator, train, data; defaults in docs/tasks.md)")
    text = "draw functions from a trained GASP run and render them at any resolution"
    p = gs.add_parser("sample", help=text, description=text)
    p.add_argument("run", type=Path, help="run directory written by 'functa gasp train'")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shape", type=int, nargs="+", metavar="N", help="grid to render, e.g. --shape 112 112")
    size.add_argument("--scale", type=float, help="render at this multiple of the native grid (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-neighbours", action="store_true", help="skip the nearest-training-item check")


def _run_gasp(args: argparse.Namespace, progress: bool) -> None:
    from .gasp import gasp_sample, gasp_train

    if args.action == "train":
        r = gasp_train(args.data, args.out, args.overrides, progress=progress, time_limit_s=args.time_limit,
                       device=args.device)
        last = r["last"] or {}
        print(f"{r['steps']} steps in {r['train_seconds']:.0f} s; saved the generator to {args.out}"
              + (f" (last interval: D(real) {last['d_real']:.3f}, D(fake) {last['d_fake']:.3f})" if last else ""))
        for e in r["events"]:
            print(f"warning: step {e['step']}: {e['event']}")
    else:
        r = gasp_sample(args.run, args.out, n=args.num, shape=args.shape, scale=args.scale, seed=args.seed,
                        neighbours=not args.no_neighbours, device=args.device)
        print(f"wrote {r['count']} samples on a {'x'.join(map(str, r['shape']))} grid to {r['grid']}")
        m = r.get("memorisation", {})
        if "sample_nn_distance_median" in m:
            print(f"nearest training item: median distance {m['sample_nn_distance_median']:.3f} "
                  f"(test items: {m['test_nn_distance_median']:.3f})")


def _describe(modality_config: dict, summary: dict) -> str:
    """The modality's one-line description of a metrics summary (PSNR, voxel accuracy, ...)."""
    from .modalities import modality_from_config

    return modality_from_config(modality_config).reconstruction_metrics().describe(summary)


def _run(args: argparse.Namespace) -> int:
    from . import pipeline
    from .config import load_config

    progress = not args.quiet
    from .device import resolve_device

    resolve_device(args.device)  # fail early and clearly when the device is not usable here
    if args.command == "fit":
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"train.steps={args.steps}")
        if args.modality:  # the name of a [modality] table too (config.apply_overrides)
            overrides.append(f"modality={json.dumps(args.modality)}")
        if args.loss:
            overrides.append(f"loss={json.dumps(args.loss)}")
        if args.field:
            overrides.insert(0, f"field.name={json.dumps(FIELD_ALIASES.get(args.field, args.field))}")
        cfg = load_config(args.config, overrides, preset=args.preset)
        result = pipeline.fit(args.data, args.out, cfg, progress=progress, time_limit_s=args.time_limit,
                              device=args.device)
        if "training" not in result:  # a rank other than 0 under torchrun: rank 0 reports
            return 0
        final = result["training"]["final_eval"]["per_step"][-1]
        print(f"saved base network to {args.out} (sha256 {result['sha256'][:12]}); validation: "
              f"{_describe(result['modality'], final)}")
    elif args.command == "encode":
        kinds = tuple(a.strip() for a in args.augment.split(",")) if args.augment else ()
        options = {"pad": args.pad} if args.pad is not None else {}
        fs = pipeline.encode(args.model, args.data, args.out, split=args.split, steps=args.steps,
                             batch_size=args.batch_size, chunk_size=args.chunk_size, progress=progress, augment=kinds,
                             copies=args.copies, augment_seed=args.seed, augment_options=options, device=args.device)
        print(f"wrote {len(fs)} latents of shape {tuple(fs.latent_shape)} to {args.out}: "
              f"{_describe(fs.header['base_network']['modality'], fs.manifest['summary'])}")
    elif args.command == "render" and args.turntable is not None:
        from .scenes import turntable

        if args.shape:
            raise ValueError("render --turntable takes --scale, not --shape")
        res = turntable(args.model, args.out, functaset=args.functaset, data=args.data, split=args.split,
                        indices=args.indices, frames=args.turntable, elevation=args.elevation, scale=args.scale,
                        depth=not args.no_depth, fps=args.fps, device=args.device)
        print(f"rendered {res['count']} turntable(s) of {res['frames']} frames at {'x'.join(map(str, res['shape']))} "
              f"to {args.out} (first frames: {res['grid']})")
    elif args.command == "render":
        res = pipeline.render(args.model, args.out, functaset=args.functaset, data=args.data, split=args.split,
                              indices=args.indices, scale=args.scale, shape=args.shape, device=args.device)
        print(f"rendered {res['count']} items at {'x'.join(map(str, res['shape']))} to {args.out} (grid: {res['grid']})")
    elif args.command == "eval":
        from .config import apply_overrides

        settings = apply_overrides({}, args.overrides)
        if set(settings) - {"modality"} or not isinstance(settings.get("modality", {}), dict):
            raise ValueError(f"eval --set takes modality.KEY=VALUE settings, got {args.overrides}")
        res = pipeline.evaluate(args.model, args.data, split=args.split, steps=args.steps, limit=args.limit,
                                progress=progress, device=args.device, modality_settings=settings.get("modality"))
        print(pipeline.format_table(res))
        if args.json:
            from .io import write_json

            write_json(args.json, res)
    elif args.command == "info":
        from .io import read_json_object

        for name in ("manifest.json", "config.json"):
            if (args.path / name).is_file():
                if name == "manifest.json":  # a functaset: every chunk is checked before it is described
                    from .functaset import Functaset

                    Functaset(args.path).check()
                info = read_json_object(args.path / name)
                info.pop("chunks", None)
                if isinstance(info.get("modality"), dict):
                    info["modality"] = {k: v for k, v in info["modality"].items() if k not in ("lat", "lon")}
                shape = _latent_shape(info)
                print(json.dumps({"latent_shape": shape, **info} if shape else info, indent=2)[:20000])
                if shape:  # also for people reading a terminal; stdout stays one JSON document
                    print(f"latent shape: ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})",
                          file=sys.stderr)
                break
        else:
            print(f"{args.path}: neither a run directory nor a functaset", file=sys.stderr)
            return 2
    elif args.command == "nvs":
        from .scenes import novel_view_synthesis

        ints = lambda text: tuple(int(v) for v in text.split(",")) if text else None  # noqa: E731
        r = novel_view_synthesis(args.model, args.data, args.out, prior=args.prior, split=args.split,
                                 indices=args.indices, context=ints(args.context), novel=ints(args.novel),
                                 mask=args.mask, pixels=args.pixels, prior_weight=args.prior_weight, steps=args.steps,
                                 lr=args.lr,
                                 seed=args.seed, progress=progress, device=args.device)
        for name in r["rows"][:-1]:
            print(f"{name:>8}: novel views PSNR {r[name]['novel_views']['psnr_of_mean_mse']:.2f} dB, observed context "
                  f"{r[name]['observed_context']['psnr_of_mean_mse']:.2f} dB")
        print(f"grid: {r['grid']}")
    elif args.command in ("classify", "flow", "diffusion", "impute", "interpolate", "fid"):
        _run_downstream(args, progress)
    elif args.command == "gasp":
        _run_gasp(args, progress)
    elif args.command in ("codec", "compress", "decompress", "codec-bench"):
        _run_compression(args, progress)
    elif args.command == "scenes":
        from .data.scene_builder import build_modelnet_scenes

        r = build_modelnet_scenes(args.source, args.out, views=args.views, size=args.size, limit=args.limit,
                                  classes=args.classes.split(",") if args.classes else None,
                                  test_fraction=args.test_fraction, seed=args.seed, radius=args.radius,
                                  camera_angle_x=args.camera_angle_x, near=args.near, far=args.far,
                                  hemisphere=args.hemisphere, progress=progress)
        print(f"{r['rendered']} scene(s) rendered, {r['skipped']} already complete, in {r['seconds']:.0f} s: "
              f"{args.out} holds {json.dumps(r['counts_on_disk'])}")
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, steps=args.steps, time_limit_s=args.time_limit, progress=progress)
    return 0


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (an ``OSError`` with its file name)."""
    if isinstance(error, OSError) and not str(error).startswith(str(error.filename or "\0")) and error.filename:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .fitting import tune_cpu_allocator

    tune_cpu_allocator()  # the command line owns its process (FUNCTA_NO_MALLOC_TUNING=1 turns it off)
    from .errors import ConfigError, FunctaError
    from . import distributed
    from .interrupts import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM saves and stops like Ctrl-C (exit code 130)
    try:
        trains = args.command == "fit" or (args.command in ("classify", "flow", "diffusion")
                                            and getattr(args, "action", None) in ("train", "baseline"))
        if not trains and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise ConfigError(f"functa {args.command} does not run on several processes yet (WORLD_SIZE="
                              f"{os.environ['WORLD_SIZE']}); run it as one process (torchrun serves fit and the "
                              "train commands of classify, flow and diffusion)")
        if trains and distributed.init_from_env(args.device):  # under torchrun
            torch.set_num_threads(args.threads or 1)
            if not distributed.is_main() and args.command != "fit":
                sys.stdout = open(os.devnull, "w")  # rank 0 reports the results
        return _run(args)
    except (FunctaError, OSError, ValueError, FloatingPointError) as e:
        # FunctaError: bad input, artefact, config, full disk, locked output (one line naming the path).
        # OSError/ValueError: raised by a dependency while reading a user's file (names it where it can).
        print(f"functa {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"functa {args.command}: error: out of memory (try a smaller --batch-size or fewer points)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"functa {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
