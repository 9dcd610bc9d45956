"""Quality for time: test PSNR reached after given minutes of meta-learning on CPU.

Usage::

    python bench/quality_time.py ../shared/data/fashion_mnist --latent 128 --minutes 5 10 20
    python bench/quality_time.py ../shared/data/cifar10/cifar10_lossless_subset.npz --latent 256 --minutes 5
    python bench/quality_time.py ../shared/data/cifar10/cifar10_lossless_subset.npz --minutes 5 \
        --set field.name=spatial --set field.grid=4 --set field.channels=16      # spatial functa, 4x4x16 = 256

Training time excludes evaluation time. At each mark the test split (first ``--eval-items``) is
encoded with 3 meta-SGD steps and PSNR is reported in both conventions. Prints one JSON line per
mark and a final JSON line with the whole curve (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from functa.config import load_config
from functa.fields import field_from_config
from functa.fitting import MetaLearner, evaluate_reconstruction
from functa.modalities import FieldDataset
from functa.pipeline import _infer_modality, open_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--latent", type=int, default=128, help="latent_dim of the vector field (not used by others)")
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--eval-items", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path, help="also save the base network here (a `functa fit`-style directory "
                   "that `functa encode` accepts)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from functa.fitting import tune_cpu_allocator

    tune_cpu_allocator()  # as the functa command line does
    marks = sorted(m * 60 for m in args.minutes)
    vector = not any(o.replace(" ", "").startswith("field.name=") and "latent_modulated_siren" not in o
                     for o in args.overrides)
    latent = [f"field.latent_dim={args.latent}"] if vector else []
    cfg = load_config(None, latent + ["train.steps=1000000000"] + args.overrides, args.preset)
    train_ds, test_ds = open_data(args.data, "train"), open_data(args.data, "test")
    modality = _infer_modality(train_ds, cfg.modality)
    train, test = FieldDataset(train_ds, modality), FieldDataset(test_ds, modality)
    torch.manual_seed(cfg.train.seed)
    field = field_from_config({**cfg.field, "in_dim": modality.in_dim, "out_dim": modality.out_channels})
    learner = MetaLearner(field, cfg.train)

    def batch(step):
        idx = np.random.default_rng([cfg.train.seed, step]).choice(len(train), cfg.train.batch_size, replace=False)
        return train.batch(idx)

    # the cosine schedule needs a horizon in steps: re-estimate it from the measured step rate
    from dataclasses import replace
    curve, trained_s, mark_i = [], 0.0, 0
    while mark_i < len(marks):
        t = time.perf_counter()
        learner.train_step(batch(learner.step_count))
        trained_s += time.perf_counter() - t
        if learner.step_count >= 10:
            horizon = int(learner.step_count / trained_s * marks[-1]) + 1
            learner.config = replace(learner.config, steps=max(horizon, learner.step_count + 1))
        if trained_s >= marks[mark_i]:
            ev = evaluate_reconstruction(field, test, cfg.train.inner_steps, limit=args.eval_items)
            last = ev["per_step"][-1]
            row = {"minutes": marks[mark_i] / 60, "steps": learner.step_count, "test_psnr_of_mean_mse":
                   round(last["psnr_of_mean_mse"], 3), "test_mean_psnr": round(last["mean_psnr"], 3),
                   "per_inner_step_psnr_of_mean_mse": [round(r["psnr_of_mean_mse"], 3) for r in ev["per_step"]]}
            curve.append(row)
            print(json.dumps(row), flush=True)
            mark_i += 1
    result = {"bench": "quality_time", "data": args.data, "latent_shape": list(field.latent_shape),
              "field": field.to_config(),
              "train": {k: v for k, v in vars(cfg.train).items()}, "threads": args.threads,
              "eval_items": min(args.eval_items, len(test)), "curve": curve, "torch": torch.__version__}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.save:
        from dataclasses import asdict
        from functa.io import save_base_network
        from functa.pipeline import _small_meta
        save_base_network(args.save, field, modality=modality.to_config(), run=cfg.to_dict(),
                          data={"path": args.data, **asdict(cfg.data), "meta": _small_meta(train_ds.meta)},
                          training={"step": learner.step_count, "history": learner.history, "quality_time": curve})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
