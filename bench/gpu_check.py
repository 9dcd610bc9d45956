"""Meta-learning throughput on a CUDA GPU against the device's measured matmul peaks (fp32 and TF32).

    python bench/gpu_check.py --json OUT/gpu_throughput.json      (bench/gpu_check.sh runs it)

* Peaks: the best of square ``torch.mm`` at 4096 and 8192, timed with CUDA events, once with TF32
  off (fp32) and once on.
* Meta-learning steps of C1 (width 128, depth 6, latent 128, batch 32) and C2 (width 256, depth 10,
  latent 256, batch 16) on 28x28 images with 3 second-order inner steps, as ``bench/throughput.py``
  counts them (``3 (2K + 1)`` passes of the hidden matmuls per item), in fp32 and with TF32; the
  fraction of the matching peak. Plus a C2-sized step at batch 128 (what a GPU can hold).

Exits with code 2 and one line when no CUDA device is present. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from functa.fields import LatentModulatedSiren, SirenConfig  # noqa: E402
from functa.fitting import Batch, InnerLoop, OuterObjective  # noqa: E402

CONFIGS = {"C1": (128, 6, 128, 32), "C2": (256, 10, 256, 16), "C2-b128": (256, 10, 256, 128)}
SIDE, K = 28, 3


def _time(fn, repeats: int) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def matmul_peak(tf32: bool) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    best = 0.0
    for n in (4096, 8192):
        a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
        best = max(best, 2 * n**3 / _time(lambda: a @ b, 10) / 1e9)
    return best


def meta_step(name: str, tf32: bool, steps: int) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    width, depth, latent, batch = CONFIGS[name]
    torch.manual_seed(0)
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=width, depth=depth, latent_dim=latent,
                                             w0=30.0)).cuda()
    params = field.base_parameters() + field.meta_parameters()
    opt = torch.optim.Adam(params, lr=1e-6)
    obj = OuterObjective(field, InnerLoop(K))
    lin = torch.linspace(-1.0, 1.0, SIDE)
    x = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(1, -1, 2).cuda()
    data = Batch(x, torch.rand(batch, SIDE * SIDE, 1, device="cuda"))

    def step() -> None:
        r = obj(data)
        opt.zero_grad(set_to_none=True)
        r.loss.backward()
        opt.step()

    step_s = _time(step, steps)
    flops = 3 * (2 * K + 1) * 2 * SIDE * SIDE * width**2 * (depth - 2) * batch
    return {"config": name, "tf32": tf32, "batch": batch, "step_ms": step_s * 1e3, "examples_per_s": batch / step_s,
            "gflops": flops / step_s / 1e9, "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured",
              file=sys.stderr)
        return 2
    peaks = {"fp32": matmul_peak(False), "tf32": matmul_peak(True)}
    rows = []
    for name in CONFIGS:
        for tf32 in (False, True):
            row = meta_step(name, tf32, args.steps)
            row["peak_fraction"] = row["gflops"] / peaks["tf32" if tf32 else "fp32"]
            rows.append(row)
    torch.backends.cuda.matmul.allow_tf32 = False  # functa's default on CUDA
    out = {"bench": "gpu_check", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "matmul_peak_gflops": peaks, "meta_learning": rows}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
