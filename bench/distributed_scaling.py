"""Data-parallel meta-learning on this machine, and what the all-reduce would cost at scale.

    python bench/distributed_scaling.py --data ../shared/data/fashion_mnist --json bench/results/distributed_scaling.json

1. **Two ways to use 2 cores, same global batch** (C1: width 128, depth 6, latent 128, batch 32, 28x28):
   one process with 2 threads, and ``torchrun --nproc-per-node 2`` with 1 thread each (gloo), each
   for ``--steps`` meta-learning steps on ``--limit`` training images, interleaved ``--rounds`` times.
   Reported: seconds per step (from the run's own clock, without start-up), examples per second, and
   the largest difference between the two runs' final weights.
2. **All-reduce volume and the largest world size**: bytes per step (parameters x 4: base network and
   meta-SGD rates), and the largest ``W`` for which a ring all-reduce (``2 (W-1)/W`` x bytes over
   ``--bandwidth-gbps``, plus ``2 (W-1)`` x ``--latency-us``) stays under 10 % of a step, for C1 and for
   the paper's CelebA configuration (width 512, depth 15, latent 512, 64x64, 16 images per device: the
   paper's batch 256 on 16 devices), with its step time measured here on one core for one image and
   multiplied by 16 (the step is linear in the batch; 16 images do not fit in this machine's memory with
   the second-order inner loop), and for C1 the step time of part 1.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from functa.fields import field_from_config  # noqa: E402
from functa.fitting import Batch, InnerLoop, OuterObjective  # noqa: E402

C1 = ["--set", "field.width=128", "--set", "field.depth=6", "--set", "field.latent_dim=128",
      "--set", "train.batch_size=32", "--set", "train.eval_items=8", "--set", "train.compile=false"]


def run_fit(data: str, out: Path, steps: int, limit: int, nproc: int, threads: int) -> dict:
    args = ["-m", "functa", "--quiet", "--threads", str(threads), "fit", data, "-o", str(out), "--steps", str(steps),
            "--set", f"train.eval_every={steps}", "--set", f"train.save_every={steps}", "--set", f"data.limit={limit}",
            *C1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    state = json.loads((out / "train_state.json").read_text())
    return {"wall_s": time.perf_counter() - start, "train_s": state["history"][-1]["time_s"]}


def ring_world_size(bytes_per_step: float, step_s: float, gbps: float, latency_us: float) -> int | None:
    """Largest ``W`` with ``2 (W-1)/W * bytes / bandwidth + 2 (W-1) latency <= 0.1 step`` (None: not even 2)."""
    best = None
    for w in range(2, 1_000_001):
        t = 2 * (w - 1) / w * bytes_per_step * 8 / (gbps * 1e9) + 2 * (w - 1) * latency_us * 1e-6
        if t > 0.1 * step_s:
            break
        best = w
    return best


def step_time(width: int, depth: int, latent: int, side: int, batch: int, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    field = field_from_config({"name": "latent_modulated_siren", "width": width, "depth": depth, "latent_dim": latent,
                               "in_dim": 2, "out_dim": 3})
    params = field.base_parameters() + field.meta_parameters()
    objective = OuterObjective(field, InnerLoop(3))
    i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    x = ((torch.stack([i, j], -1).reshape(1, -1, 2).float() + 0.5) / side)
    batch = Batch(x, torch.rand(batch, side * side, 3))
    times = []
    for _ in range(steps + 1):
        s = time.perf_counter()
        r = objective(batch)
        torch.autograd.grad(r.loss, params)
        times.append(time.perf_counter() - s)
    return (statistics.median(times[1:]) if steps else float("nan")), sum(p.numel() for p in params)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bandwidth-gbps", type=float, default=100.0)
    p.add_argument("--latency-us", type=float, default=20.0)
    p.add_argument("--celeba-steps", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="functa_dist_"))
    runs: dict[str, list[dict]] = {"1 process x 2 threads": [], "2 processes x 1 thread (gloo)": []}
    diffs = []
    try:
        for k in range(args.rounds):
            a = run_fit(args.data, tmp / f"one{k}", args.steps, args.limit, 1, 2)
            b = run_fit(args.data, tmp / f"two{k}", args.steps, args.limit, 2, 1)
            runs["1 process x 2 threads"].append(a)
            runs["2 processes x 1 thread (gloo)"].append(b)
            wa, wb = load_file(str(tmp / f"one{k}" / "train_state.safetensors")), \
                load_file(str(tmp / f"two{k}" / "train_state.safetensors"))
            diffs.append(max(float((wa[n].float() - wb[n].float()).abs().max()) for n in wa if n.startswith("model.")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    local = {}
    for name, rows in runs.items():
        per_step = [r["train_s"] / args.steps for r in rows]
        local[name] = {"seconds_per_step": statistics.median(per_step), "range": [min(per_step), max(per_step)],
                       "examples_per_s": 32 / statistics.median(per_step),
                       "wall_s_median": statistics.median(r["wall_s"] for r in rows)}
    torch.set_num_threads(1)
    c1_step = local["1 process x 2 threads"]["seconds_per_step"]
    _, c1_params = step_time(128, 6, 128, 28, 1, 0)
    one_image_s, celeba_params = step_time(512, 15, 512, 64, 1, args.celeba_steps)
    celeba_s = 16 * one_image_s
    scale = {}
    for name, params, step_s in (("C1", c1_params, c1_step), ("paper CelebA, 16 images per device", celeba_params, celeba_s)):
        nbytes = params * 4
        scale[name] = {"parameters": params, "allreduce_bytes_per_step": nbytes, "step_s_here": step_s,
                       "largest_world_size_under_10pct": ring_world_size(nbytes, step_s, args.bandwidth_gbps,
                                                                         args.latency_us),
                       "allreduce_s_bandwidth_term": 2 * nbytes * 8 / (args.bandwidth_gbps * 1e9)}
    out = {"bench": "distributed_scaling", "steps": args.steps, "limit": args.limit, "rounds": args.rounds,
           "global_batch": 32, "this_machine": local, "max_weight_difference": max(diffs),
           "network": {"bandwidth_gbps": args.bandwidth_gbps, "latency_us": args.latency_us, "algorithm": "ring"},
           "simulated_scale": scale}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
