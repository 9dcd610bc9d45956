"""Cost of functaset verification: open a functaset and read all of it, with and without hashes.

Writes (once) a functaset of ``--rows`` random latents of ``--dim`` floats in chunks of 4,096 rows
(the size :func:`functa.pipeline.encode` uses), or uses ``--path``; then times, interleaved,
``Functaset(path, verify=...)`` + :meth:`~functa.functaset.Functaset.arrays` (every column, as the
``classify``/``flow``/``diffusion train`` commands read it) ``--repeats`` times each and prints the
medians as JSON. The files are read once before timing, so both variants read from the page cache
(the hash is then the whole difference; a cold read adds the same disk time to both).

    python bench/functaset_verify.py --rows 200000 --dim 256 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from functa.functaset import Functaset, FunctasetWriter


def make(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    header = {"base_network": {"sha256": "0" * 64}, "latent_shape": [dim], "latent_dim": dim}
    w = FunctasetWriter(path, header, total=rows, chunk_size=4096)
    for s in range(0, rows, 4096):
        n = min(4096, rows - s)
        w.append(torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32)), np.zeros(n), np.arange(s, s + n),
                 {"loss": torch.zeros(n), "mse": torch.zeros(n), "psnr": torch.zeros(n)})
    w.close({})


def read_all(path: Path, verify: bool) -> float:
    t0 = time.perf_counter()
    arrays = Functaset(path, verify=verify).arrays()
    elapsed = time.perf_counter() - t0
    assert arrays["latents"].shape[0] > 0
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", type=Path, help="an existing functaset (default: write one in a temporary directory)")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or Path(tmp) / "large.functaset"
        if args.path is None:
            make(path, args.rows, args.dim)
        size = sum(f.stat().st_size for f in path.iterdir())
        read_all(path, False)  # warm the page cache
        times: dict[str, list[float]] = {"verify": [], "no_verify": []}
        for _ in range(args.repeats):
            times["verify"].append(read_all(path, True))
            times["no_verify"].append(read_all(path, False))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({"path": str(args.path) if args.path else f"temporary, {args.rows} x {args.dim}",
                          "rows": len(Functaset(path, verify=False)), "bytes": size, "repeats": args.repeats,
                          "median_s": med, "times_s": times,
                          "overhead_s": med["verify"] - med["no_verify"],
                          "overhead_ratio": med["verify"] / med["no_verify"],
                          "verify_MB_per_s": size / 2**20 / med["verify"]}, indent=2))


if __name__ == "__main__":
    main()
