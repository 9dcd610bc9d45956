"""Interleaved A/B of the matmul backends (oneDNN vs torch.mm) on the throughput configurations.

Usage::

    python bench/matmul_ab.py --config C1             # compiled (default)
    python bench/matmul_ab.py --config C2 --rounds 6
    python bench/matmul_ab.py --config C1 --no-compile

Shared VMs change speed from minute to minute, so two separate runs of ``bench/throughput.py``
cannot resolve a 20 % difference reliably. This script builds one objective per backend in one
process (each compiled for its own backend), then alternates: one train step and one encoding
batch with ``auto`` (oneDNN), then the same with ``aten``, for ``--rounds`` rounds. Prints the
median and minimum times and ends with one JSON line.
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
from functa.fields.matmul import set_matmul_backend  # noqa: E402
from functa.fitting import Batch, InnerLoop, OuterObjective, fit_latents  # noqa: E402

CONFIGS = {
    "C1": dict(width=128, depth=6, latent_dim=128, batch=32),
    "C2": dict(width=256, depth=10, latent_dim=256, batch=16),
}
BACKENDS = ("auto", "aten")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="C1")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = CONFIGS[args.config]
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=c["width"], depth=c["depth"],
                                             latent_dim=c["latent_dim"], w0=30.0))
    lin = torch.linspace(0.0, 1.0, 28)
    x = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(1, -1, 2)
    y = torch.rand(c["batch"], 28 * 28, 1)
    opt = torch.optim.Adam(field.base_parameters() + field.meta_parameters(), lr=1e-7)
    batch = Batch(x, y)
    objectives = {b: OuterObjective(field, InnerLoop(3), compile=args.compile, tune_allocator=True) for b in BACKENDS}

    def train(backend: str) -> None:
        set_matmul_backend(backend)
        r = objectives[backend](batch)
        opt.zero_grad(set_to_none=True)
        r.loss.backward()
        opt.step()

    def encode(backend: str) -> None:
        set_matmul_backend(backend)
        fit_latents(field, batch, 3, compile=args.compile)

    for b in BACKENDS:  # warm-up, compilation included
        for _ in range(2):
            train(b)
            encode(b)
    times: dict[str, list[float]] = {f"{kind}_{b}": [] for kind in ("train", "encode") for b in BACKENDS}
    for _ in range(args.rounds):
        for b in BACKENDS:
            for kind, fn in (("train", train), ("encode", encode)):
                t = time.perf_counter()
                fn(b)
                times[f"{kind}_{b}"].append(time.perf_counter() - t)
    set_matmul_backend("auto")
    result = {"config": args.config, "compile": args.compile, "rounds": args.rounds, "threads": args.threads,
              "torch": torch.__version__}
    for key, v in times.items():
        result[f"{key}_median_ms"] = round(statistics.median(v) * 1e3, 1)
        result[f"{key}_min_ms"] = round(min(v) * 1e3, 1)
        print(f"{key:14s} median {statistics.median(v) * 1e3:8.1f} ms   min {min(v) * 1e3:8.1f} ms")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
