"""Cost of the fitting core's abstractions (Batch, Loss, InnerLoop paths) on the image fast path.

Times, interleaved in one process, the library's meta-learning step and encoder against the same
computation written out by hand (the SIREN's forward pass and explicit latent gradient, the MSE
gradient, the meta-SGD update: what the core did before it served other fields and losses), at
C1 (28x28, width 128, depth 6, latent 128, batch 32, 3 inner steps), eager or compiled.

Usage::

    taskset -c 1 python bench/abstraction_overhead.py --compile
    taskset -c 1 python bench/abstraction_overhead.py --no-compile

The last line of output is a single JSON object (medians in ms and the ratio hand / library).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from functa.fields import LatentModulatedSiren, SirenConfig  # noqa: E402
from functa.fitting import Batch, InnerLoop, OuterObjective, fit_latents, tune_cpu_allocator  # noqa: E402


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    f = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=128, depth=6, latent_dim=128))
    lin = torch.linspace(-1, 1, 28)
    x = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(1, -1, 2)
    y = torch.rand(32, 784, 1)
    params = f.base_parameters() + f.meta_parameters()

    def by_hand(x, y, detach: bool):
        lrs, z, n = f.inner_lrs(), f.zero_latents(1), y.shape[1] * y.shape[2]
        for _ in range(3):
            out, trace = f.forward_points(x, z, keep_trace=True)
            g = f.backward_latents(trace, (out - y) * (2.0 / n))
            z = z - lrs * (g.detach() if detach else g)
        pred, _ = f.forward_points(x, z)
        mse = (pred - y).square().reshape(y.shape[0], -1).mean(1)
        return mse.mean(), mse, z

    wrap = (lambda fn: torch.compile(fn, dynamic=False)) if args.compile else (lambda fn: fn)
    train_hand, encode_hand = wrap(lambda x, y: by_hand(x, y, False)), wrap(lambda x, y: by_hand(x, y, True))
    objective, batch = OuterObjective(f, InnerLoop(3), compile=args.compile), Batch(x, y)

    def step_hand():
        torch.autograd.grad(train_hand(x, y)[0], params)

    def step_library():
        torch.autograd.grad(objective(batch).loss, params)

    def enc_hand():
        with torch.no_grad():
            encode_hand(x, y)

    def enc_library():
        fit_latents(f, batch, 3, compile=args.compile)

    pairs = {"train": (step_hand, step_library), "encode": (enc_hand, enc_library)}
    out = {"bench": "abstraction_overhead", "compile": args.compile, "threads": args.threads, "config": "C1"}
    for name, (a, b) in pairs.items():
        for fn in (a, b):
            fn(), fn()  # warm-up and compilation
        ta, tb = [], []
        for r in range(args.rounds):
            for fn, t in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
        out[f"{name}_by_hand_ms"] = round(statistics.median(ta) * 1e3, 1)
        out[f"{name}_library_ms"] = round(statistics.median(tb) * 1e3, 1)
        out[f"{name}_ratio_hand_over_library"] = round(statistics.median(ta) / statistics.median(tb), 4)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
