"""Throughput benchmark of meta-learning (train) and encoding on CPU, fp32.

Usage::

    python bench/throughput.py --config C1            # Fashion-MNIST sized, width 128, depth 6
    python bench/throughput.py --config C2            # width 256, depth 10, latent 256, batch 16
    python bench/throughput.py --config C1 --no-compile --checkpoint --steps 10
    python bench/throughput.py --config C1 --matmul aten   # torch.mm (MKL) instead of oneDNN
    python bench/throughput.py --config C1 --no-fast-path --no-compile   # the autograd inner loop

Targets are random uniform ``[0, 1]`` 28x28 single-channel images (throughput does not depend on the
pixel values). FLOPs count the hidden ``width x width`` matmuls only, in two ways:

* conventional (``*_peak_fraction``), as if every inner step ran a full forward pass per item::

      train:  3 * (2K + 1) * 2 * N * W^2 * (depth - 2) * B   per outer step
      encode: (2K + 1) * 2 * N * W^2 * (depth - 2) * B       per batch

* executed (``*_executed_peak_fraction``, what the targets refer to): the library evaluates the
  first inner step's forward pass (zero latents: identical shifts for every item) once per batch
  (``shared_first_step``), so ``(2K + 1) * B`` passes become ``2 K B + 1``; the autograd path and
  ``--no-shared-first-step`` execute the conventional count::

      train:  3 * (2 K B + 1) * 2 * N * W^2 * (depth - 2)    per outer step
      encode: (2 K B + 1) * 2 * N * W^2 * (depth - 2)        per batch

The peak is the best square-matmul rate of either GEMM library in PyTorch's CPU build (MKL and
oneDNN), measured at the start and the end of the run. The last line of output is a single JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from functa.fields import LatentModulatedSiren, SirenConfig  # noqa: E402
from functa.fitting import Batch, InnerLoop, OuterObjective, fit_latents  # noqa: E402
from functa.fields.matmul import matmul_backend, set_matmul_backend  # noqa: E402

CONFIGS = {
    "C1": dict(width=128, depth=6, latent_dim=128, batch=32),
    "C2": dict(width=256, depth=10, latent_dim=256, batch=16),
}
SIDE = 28
INNER_STEPS = 3


def rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def matmul_peak_gflops(repeats: int = 12) -> dict[str, float]:
    """Best achieved fp32 GFLOP/s over square matmuls of a few sizes, per GEMM library.

    Both libraries inside PyTorch's CPU build are timed: MKL (``torch.mm``) and oneDNN (the kernel
    functa's layers use, see ``functa.fields.matmul``); the machine's peak is the better of the two.
    """
    from functa.fields.matmul import _HAS_ONEDNN, _mm_nt_onednn

    kernels = {"mkl": lambda a, b, out: torch.mm(a, b, out=out)}
    if _HAS_ONEDNN:
        kernels["onednn"] = lambda a, b, out: _mm_nt_onednn(a, b)
    best = {name: 0.0 for name in kernels}
    for n in (2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        for name, mm in kernels.items():
            mm(a, b, out)
            for _ in range(repeats if n == 2048 else max(2, repeats // 3)):
                t0 = time.perf_counter()
                mm(a, b, out)
                dt = time.perf_counter() - t0
                best[name] = max(best[name], 2 * n**3 / dt / 1e9)
        del a, b, out
    best["peak"] = max(best.values())
    return best


def make_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lin = torch.linspace(-1.0, 1.0, SIDE)
    coords = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(1, -1, 2)
    y = torch.rand(batch, SIDE * SIDE, 1, generator=generator)
    return coords, y


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="C1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the outer objective and the encoder (default: on)")
    p.add_argument("--checkpoint", action="store_true", help="gradient checkpointing per inner step")
    p.add_argument("--shared-first-step", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the zero-latent first inner step once per batch (default: on)")
    p.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=True,
                   help="the explicit latent gradient of the SIREN (default); --no-fast-path: autograd inner loop")
    p.add_argument("--steps", type=int, default=10, help="timed outer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed outer steps (include compilation)")
    p.add_argument("--encode-batches", type=int, default=10, help="timed encode batches")
    p.add_argument("--encode-batch", type=int, default=None, help="encode batch size (default: train batch)")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--max-autotune", action="store_true",
                   help="inductor max_autotune with the CPP GEMM template for the train step (not the encoder)")
    p.add_argument("--matmul", choices=("auto", "aten"), default="auto",
                   help="matmul backend of the layers (functa.fields.matmul): auto = oneDNN, aten = torch.mm (MKL)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    set_matmul_backend(args.matmul)
    import torch._inductor.config as inductor_config

    if args.max_autotune:  # train only: measured slower for the (no-grad) encoder
        inductor_config.max_autotune = True
        inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
    torch.manual_seed(args.seed)
    cfgd = CONFIGS[args.config]
    W, depth, B, K = cfgd["width"], cfgd["depth"], cfgd["batch"], INNER_STEPS
    N = SIDE * SIDE
    EB = args.encode_batch or B

    peaks = matmul_peak_gflops()
    peak = peaks["peak"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32 matmul peak {peak:.1f} GFLOP/s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in peaks.items() if k != 'peak')})")

    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=W, depth=depth,
                                             latent_dim=cfgd["latent_dim"], w0=30.0))
    gen = torch.Generator().manual_seed(args.seed)
    x, y = make_batch(B, gen)
    flops_pass = 2 * N * W**2 * (depth - 2)  # hidden matmuls of one forward pass of one item

    # ------------------------------------------------------------------ train
    rss_before = current_rss_mb()
    inner = InnerLoop(K, first_order=False, checkpoint=args.checkpoint, shared_first_step=args.shared_first_step,
                      fast_path=args.fast_path)
    obj = OuterObjective(field, inner, compile=args.compile, tune_allocator=True)
    params = field.base_parameters() + field.meta_parameters()
    opt = torch.optim.Adam(params, lr=1e-6)
    batch = Batch(x, y)
    shared = args.shared_first_step and args.fast_path  # the shared first step exists on the fast path only

    def train_step() -> float:
        r = obj(batch)
        opt.zero_grad(set_to_none=True)
        r.loss.backward()
        opt.step()
        return float(r.loss.detach())

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        train_step()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t1 = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - t1)
    step_s = sorted(times)[len(times) // 2]  # median
    mean_step_s = sum(times) / len(times)
    compile_s = max(warm_s - args.warmup * step_s, 0.0) if args.compile else 0.0
    train_flops = 3 * (2 * K + 1) * flops_pass * B
    train_gflops = train_flops / step_s / 1e9
    passes = lambda b: (2 * K * b + 1) if shared else (2 * K + 1) * b  # noqa: E731  executed forward passes
    train_exec_gflops = 3 * passes(B) * flops_pass / step_s / 1e9
    peak_rss_train = rss_mb()
    print(f"train {args.config}: median step {step_s * 1e3:.1f} ms (mean {mean_step_s * 1e3:.1f} ms), "
          f"{B / step_s:.1f} examples/s, {train_gflops:.1f} GFLOP/s = {train_gflops / peak:.1%} of peak, "
          f"warm-up {warm_s:.1f} s, peak RSS {peak_rss_train:.0f} MB (before train {rss_before:.0f} MB)")

    result = {
        "config": args.config, "width": W, "depth": depth, "latent_dim": cfgd["latent_dim"], "batch": B,
        "inner_steps": K, "points": N, "targets": "random uniform [0,1]",
        "compile": args.compile, "max_autotune": args.max_autotune, "checkpoint": args.checkpoint,
        "shared_first_step": args.shared_first_step, "fast_path": args.fast_path,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "matmul_peak_gflops": round(peak, 1),
        "train_step_ms": round(step_s * 1e3, 2), "train_examples_per_s": round(B / step_s, 2),
        "train_gflops": round(train_gflops, 1), "train_peak_fraction": round(train_gflops / peak, 4),
        "train_executed_gflops": round(train_exec_gflops, 1),
        "train_executed_peak_fraction": round(train_exec_gflops / peak, 4),
        "compile_s": round(compile_s, 1), "rss_before_train_mb": round(rss_before, 0),
        "peak_rss_mb": round(peak_rss_train, 0),
        "flops_convention": "train 3*(2K+1)*2*N*W^2*(depth-2)*B per step; encode (2K+1)*2*N*W^2*(depth-2) per item",
        "flops_executed": "train 3*(2KB+1)*2*N*W^2*(depth-2) per step; encode (2KB+1)*2*N*W^2*(depth-2) per batch "
                          "(shared first step on the fast path; otherwise as the convention)",
    }

    # ------------------------------------------------------------------ encode
    if not args.skip_encode:
        _, ye = make_batch(EB, gen)
        inductor_config.max_autotune = False
        enc_kw = dict(compile=args.compile and args.fast_path, shared_first_step=args.shared_first_step)
        enc_batch = Batch(x, ye)
        if not args.fast_path:  # the encoder's inner loop through autograd
            from functa.fitting import encode as encode_mod

            def encode_once() -> None:
                inner_ag = InnerLoop(K, first_order=True, fast_path=False)
                with torch.no_grad():
                    encode_mod._encode(field, inner_ag, enc_batch, False)
        else:
            def encode_once() -> None:
                fit_latents(field, enc_batch, K, **enc_kw)
        t0 = time.perf_counter()
        for _ in range(2):
            encode_once()
        enc_warm = time.perf_counter() - t0
        times = []
        for _ in range(args.encode_batches):
            t1 = time.perf_counter()
            encode_once()
            times.append(time.perf_counter() - t1)
        enc_s = sorted(times)[len(times) // 2]
        enc_gflops = (2 * K + 1) * flops_pass * EB / enc_s / 1e9
        enc_exec_gflops = passes(EB) * flops_pass / enc_s / 1e9
        print(f"encode {args.config}: batch {EB} in {enc_s * 1e3:.1f} ms, {EB / enc_s:.1f} items/s, "
              f"{enc_gflops:.1f} GFLOP/s = {enc_gflops / peak:.1%} of peak (warm-up {enc_warm:.1f} s)")
        result.update({"encode_batch": EB, "encode_batch_ms": round(enc_s * 1e3, 2),
                       "encode_items_per_s": round(EB / enc_s, 1), "encode_gflops": round(enc_gflops, 1),
                       "encode_peak_fraction": round(enc_gflops / peak, 4),
                       "encode_executed_peak_fraction": round(enc_exec_gflops / peak, 4),
                       "encode_compile_s": round(max(enc_warm - 2 * enc_s, 0.0), 1) if args.compile else 0.0})
    result["peak_rss_mb"] = round(rss_mb(), 0)
    # The machine's matmul rate drifts (frequency, neighbours): re-measure at the end and use the best.
    peaks_end = matmul_peak_gflops()
    peak_end = peaks_end["peak"]
    if peak_end > peak:
        print(f"matmul peak re-measured at the end: {peak_end:.1f} GFLOP/s (start {peak:.1f}); fractions rescaled")
        for key in ("train_peak_fraction", "encode_peak_fraction", "train_executed_peak_fraction",
                    "encode_executed_peak_fraction"):
            if key in result:
                result[key] = round(result[key] * peak / peak_end, 4)
    result["matmul_peak_gflops_start"] = round(peak, 1)
    result["matmul_peak_gflops_end"] = round(peak_end, 1)
    result["matmul_peak_gflops_by_library"] = {k: round(max(peaks.get(k, 0.0), peaks_end.get(k, 0.0)), 1)
                                               for k in peaks if k != "peak"}
    result["matmul_backend"] = matmul_backend()
    result["matmul_peak_gflops"] = round(max(peak, peak_end), 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
