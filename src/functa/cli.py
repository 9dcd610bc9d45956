"""``functa`` command line: a thin layer over :mod:`functa.pipeline` and :mod:`functa.demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def _add_common_fit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or JSON config file (sections: modality, field, train, data)")
    p.add_argument("--preset", default="cpu", help="starting settings: 'cpu' (best PSNR per CPU minute, default) or 'paper'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 --set field.latent_dim=64 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functa", description="Data points as functions: meta-learn modulated "
                                     "neural fields, encode datasets into functasets, render at any resolution.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="meta-learn a base network on a dataset (resumes an interrupted run)")
    p.add_argument("data", help="dataset path: idx directory, CIFAR-10 npz/python batches, image folder, lat/lon npz or .nc")
    p.add_argument("-o", "--out", required=True, type=Path, help="run directory (model.safetensors + config.json)")
    p.add_argument("--modality", choices=["image", "sphere"], help="default: inferred from the data")
    p.add_argument("--steps", type=int, help="outer steps (same as --set train.steps=N)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds (a checkpoint is saved)")
    _add_common_fit(p)

    p = sub.add_parser("encode", help="fit a latent for every item of a dataset split -> functaset")
    p.add_argument("data")
    p.add_argument("-m", "--model", required=True, type=Path, help="run directory written by 'functa fit'")
    p.add_argument("-o", "--out", required=True, type=Path, help="output .functaset directory")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--steps", type=int, help="inner steps (default: as in meta-learning)")
    p.add_argument("--batch-size", type=int, default=256)

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

    p = sub.add_parser("eval", help="PSNR table (per inner step, both conventions) and modality metrics")
    p.add_argument("data")
    p.add_argument("-m", "--model", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--steps", type=int, help="inner steps (default: as in meta-learning)")
    p.add_argument("--limit", type=int, help="evaluate the first N items only")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")

    p = sub.add_parser("info", help="describe a run directory or functaset")
    p.add_argument("path", type=Path)

    p = sub.add_parser("demo", help="end-to-end demo on scikit-learn's bundled digits (no download)")
    p.add_argument("-o", "--out", type=Path, default=Path("functa-demo"))
    p.add_argument("--steps", type=int, default=None, help="meta-learning steps (default: demo setting)")
    p.add_argument("--time-limit", type=float, default=180.0, help="cap on meta-learning seconds")
    return parser


def _run(args: argparse.Namespace) -> int:
    from . import pipeline
    from .config import load_config

    progress = not args.quiet
    if args.command == "fit":
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"train.steps={args.steps}")
        if args.modality:
            overrides.append(f"modality={json.dumps(args.modality)}")
        cfg = load_config(args.config, overrides, preset=args.preset)
        result = pipeline.fit(args.data, args.out, cfg, progress=progress, time_limit_s=args.time_limit)
        final = result["training"]["final_eval"]["per_step"][-1]
        print(f"saved base network to {args.out} (sha256 {result['sha256'][:12]}); validation PSNR "
              f"{final['psnr_of_mean_mse']:.2f} dB (of mean MSE), {final['mean_psnr']:.2f} dB (mean of items)")
    elif args.command == "encode":
        fs = pipeline.encode(args.model, args.data, args.out, split=args.split, steps=args.steps,
                             batch_size=args.batch_size, progress=progress)
        s = fs.manifest["summary"]
        print(f"wrote {len(fs)} latents of dim {fs.header['latent_dim']} to {args.out}: PSNR "
              f"{s['psnr_of_mean_mse']:.2f} dB (of mean MSE), {s['mean_psnr']:.2f} dB (mean of items)")
    elif args.command == "render":
        res = pipeline.render(args.model, args.out, functaset=args.functaset, data=args.data, split=args.split,
                              indices=args.indices, scale=args.scale, shape=args.shape)
        print(f"rendered {res['count']} items at {'x'.join(map(str, res['shape']))} to {args.out} (grid: {res['grid']})")
    elif args.command == "eval":
        res = pipeline.evaluate(args.model, args.data, split=args.split, steps=args.steps, limit=args.limit,
                                progress=progress)
        print(pipeline.format_table(res))
        if args.json:
            from .io import write_json

            write_json(args.json, res)
    elif args.command == "info":
        from .io import read_json

        for name in ("manifest.json", "config.json"):
            if (args.path / name).is_file():
                info = read_json(args.path / name)
                info.pop("chunks", None)
                if "modality" in info:
                    info["modality"] = {k: v for k, v in info["modality"].items() if k not in ("lat", "lon")}
                print(json.dumps(info, indent=2)[:20000])
                break
        else:
            print(f"{args.path}: neither a run directory nor a functaset", file=sys.stderr)
            return 2
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, steps=args.steps, time_limit_s=args.time_limit, progress=progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .data import DataError
    from .io import ArtefactError

    try:
        return _run(args)
    except (DataError, ArtefactError, FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"functa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"functa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
