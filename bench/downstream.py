"""Downstream benchmark on a pair of functasets: classifier (seeds), pixel baseline, flow NLL vs a
diagonal Gaussian, flow samples, and half-image imputation with vs without the flow prior.

Usage::

    python bench/downstream.py --model runs/fmnist256 --data ../shared/data/fashion_mnist \\
        --train runs/fs_train --test runs/fs_test --out runs/bench_fmnist [--skip baseline]

Each stage is the library call behind the matching ``functa`` command; per-stage wall time is
recorded. Prints one JSON line per stage and a final JSON line with everything (also ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from functa import downstream as ds

STAGES = ("classify", "baseline", "flow", "samples", "impute")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="base network run directory")
    p.add_argument("--data", required=True, help="the image dataset (pixel baseline and imputation)")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--test", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--skip", nargs="*", default=[], choices=STAGES)
    p.add_argument("--classify-set", action="append", default=[], help="overrides for the classifier")
    p.add_argument("--baseline-set", action="append", default=[])
    p.add_argument("--flow-set", action="append", default=[])
    p.add_argument("--impute-items", type=int, default=200)
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from functa.fitting import tune_cpu_allocator

    tune_cpu_allocator()  # as the functa command line does
    result: dict = {"bench": "downstream", "train": str(args.train), "test": str(args.test),
                    "threads": args.threads, "torch": torch.__version__}

    def stage(name, fn):
        if name in args.skip:
            return
        t = time.perf_counter()
        r = fn()
        r = {"wall_s": round(time.perf_counter() - t, 1), **r}
        result[name] = r
        print(json.dumps({name: r}, default=str), flush=True)

    def classify():
        r = ds.classify_train(args.train, args.out / "classifier", args.test, args.classify_set, progress=False)
        return {k: r.get(k) for k in ("test_accuracy_mean", "test_accuracy_std", "parameters", "runs")}

    def baseline():
        r = ds.classify_baseline(args.data, args.out / "baseline", args.baseline_set, progress=False)
        return {k: r.get(k) for k in ("test_accuracy_mean", "test_accuracy_std", "parameters", "runs")}

    stage("classify", classify)
    stage("baseline", baseline)
    stage("flow", lambda: ds.flow_train(args.train, args.out / "flow", args.test, args.flow_set, progress=False))
    stage("samples", lambda: {k: v for k, v in ds.flow_sample(args.out / "flow", args.out / "flow_samples", n=64,
                                                              temperature=0.8, scale=2).items()
                              if k in ("memorisation", "samples")})
    stage("impute", lambda: ds.impute(args.model, args.data, args.out / "impute", prior=args.out / "flow",
                                      indices=f"0:{args.impute_items}", mask="left-half",
                                      prior_weight=args.prior_weight, progress=False))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
