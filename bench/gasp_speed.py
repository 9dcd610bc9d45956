"""GASP speed: training steps per second at batch 64, and the discriminator's cost against the point count.

    taskset -c 0 python bench/gasp_speed.py --json bench/results/gasp_speed.json

1. **Steps**: one discriminator + one generator update (R1 included) on 28x28 point clouds (Fashion-MNIST
   sized, random features), batch 64, for the thesis' MNIST model (discriminator widths 64, 128, 256) and
   the lighter CPU one of the benchmarks (32, 64, 128); the two are interleaved round by round; medians
   and ranges over ``--rounds``.
2. **Discriminator vs points**: forward, and forward + backward to the features, of the thesis' MNIST
   discriminator at batch 8 on N random points in [-1, 1]^2 for N = 256 ... 16384, neighbourhoods
   cached (the training case with fixed coordinates), plus the cost of building the neighbourhoods
   themselves (farthest point sampling + kNN, what a step with ``max_num_points`` pays). The log-log
   slope between the smallest and largest N says how the cost grows (1 = linear).

One thread (``torch.set_num_threads(1)``); pin the process to a core. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from functa.tasks.gasp import (DiscriminatorConfig, GaspTrainConfig, GaspTrainer, GeneratorConfig, HyperGenerator,
                               PointConvDiscriminator)


def _grid(side: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return ((torch.stack([i, j], -1).reshape(1, -1, 2).float() + 0.5) / side) * 2 - 1


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def steps(rounds: int, batch: int) -> dict:
    x = _grid(28)
    models = {}
    for name, channels in (("thesis_mnist", (64, 128, 256)), ("cpu", (32, 64, 128))):
        torch.manual_seed(0)
        g = HyperGenerator(GeneratorConfig(in_dim=2, out_dim=1, fourier_scale=1.0))
        d = PointConvDiscriminator(DiscriminatorConfig(channels=channels))
        models[name] = (GaspTrainer(g, d, GaspTrainConfig(batch_size=batch)), channels,
                        sum(p.numel() for p in g.parameters()), sum(p.numel() for p in d.parameters()))
    real = torch.rand(batch, 784, 1) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    for t, *_ in models.values():
        t.train_step(x, real, gen)  # warm-up (and the cached neighbourhoods)
    times = {k: [] for k in models}
    for _ in range(rounds):
        for name, (t, *_) in models.items():
            s = time.perf_counter()
            t.train_step(x, real, gen)
            times[name].append(time.perf_counter() - s)
    return {name: {"discriminator_channels": list(ch), "generator_parameters": gp, "discriminator_parameters": dp,
                   "seconds_per_step": _stats(times[name]), "steps_per_second": 1 / statistics.median(times[name])}
            for name, (_, ch, gp, dp) in models.items()}


def scaling(points: list[int], batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    d = PointConvDiscriminator(DiscriminatorConfig())
    rows = []
    for n in points:
        x = torch.rand(1, n, 2) * 2 - 1
        f = torch.randn(batch, n, 1, requires_grad=True)
        plan_s = []
        for _ in range(repeats):
            d._plans.clear()
            s = time.perf_counter()
            d.plan(x)
            plan_s.append(time.perf_counter() - s)
        d(x, f)  # warm-up
        fwd, fwd_bwd = [], []
        for _ in range(repeats):
            s = time.perf_counter()
            with torch.no_grad():
                d(x, f)
            fwd.append(time.perf_counter() - s)
            s = time.perf_counter()
            torch.autograd.grad(d(x, f).sum(), f)
            fwd_bwd.append(time.perf_counter() - s)
        rows.append({"points": n, "forward_s": statistics.median(fwd), "forward_backward_s": statistics.median(fwd_bwd),
                     "neighbourhoods_s": statistics.median(plan_s), "levels": [lv.coords.shape[1] for lv in d.plan(x)]})
    lo, hi = rows[0], rows[-1]

    def slope(key: str) -> float:
        return math.log(hi[key] / lo[key]) / math.log(hi["points"] / lo["points"])

    return {"batch": batch, "rows": rows, "loglog_slope": {k: slope(k) for k in
                                                           ("forward_s", "forward_backward_s", "neighbourhoods_s")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--points", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--scaling-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"bench": "gasp_speed", "threads": 1, "steps_batch": args.batch,
           "steps": steps(args.rounds, args.batch), "discriminator_scaling": scaling(args.points, args.scaling_batch,
                                                                                     args.repeats)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
