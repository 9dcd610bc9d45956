"""Meta-learning and encoding throughput of spatial functa against vector functa at equal total
latent size, interleaved in one process (one thread; pin it with ``taskset -c 1``).

Every round times one meta-learning step (batch ``--batch``, 3 inner steps, second order) and one
encoding of ``--encode`` items (3 steps, no graph) for each configuration in turn; the medians and
spreads over ``--rounds`` rounds are printed as one JSON object. CIFAR-10 sized inputs (32×32×3,
random targets: throughput does not depend on the values).

Usage::

    taskset -c 1 python bench/spatial_throughput.py --rounds 7 --json bench/results/spatial_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


from functa.fields import field_from_config
from functa.fitting import Batch, MetaLearner, MetaLearningConfig, fit_latents
from functa.modalities.image import image_coordinates


def configs(width: int, depth: int) -> dict[str, dict]:
    base = {"in_dim": 2, "out_dim": 3, "width": width, "depth": depth, "w0": 30.0}
    return {
        "vector 256": {**base, "name": "latent_modulated_siren", "latent_dim": 256},
        "spatial 4x4x16 (1-NN)": {**base, "name": "spatial", "grid": 4, "channels": 16},
        "spatial 8x8x4 (1-NN)": {**base, "name": "spatial", "grid": 8, "channels": 4},
        "spatial 4x4x16 (bilinear)": {**base, "name": "spatial", "grid": 4, "channels": 16,
                                      "interpolation": "bilinear", "binary_bits": 5},
        "spatial 4x4x16 (bilinear, periodic input)": {**base, "name": "spatial", "grid": 4, "channels": 16,
                                                      "interpolation": "bilinear", "periodic_input": True},
        "vector 1024": {**base, "name": "latent_modulated_siren", "latent_dim": 1024},
        "spatial 8x8x16 (1-NN)": {**base, "name": "spatial", "grid": 8, "channels": 16},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--encode", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = image_coordinates(32, 32)[None]
    y = torch.rand(a.batch, 1024, 3)
    ye = torch.rand(a.encode, 1024, 3)
    runs = {}
    for name, cfg in configs(a.width, a.depth).items():
        field = field_from_config(cfg)
        learner = MetaLearner(field, MetaLearningConfig(batch_size=a.batch, steps=10**6))
        runs[name] = (field, learner)
        learner.train_step(Batch(x, y))  # warm-up
    times = {name: {"train_s": [], "encode_s": []} for name in runs}
    for _ in range(a.rounds):
        for name, (field, learner) in runs.items():
            t = time.perf_counter()
            learner.train_step(Batch(x, y))
            times[name]["train_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fit_latents(field, Batch(x, ye), 3)
            times[name]["encode_s"].append(time.perf_counter() - t)
    out = {"bench": "spatial_throughput", "threads": 1, "batch": a.batch, "encode_items": a.encode,
           "width": a.width, "depth": a.depth, "image": [32, 32, 3], "rounds": a.rounds, "results": {}}
    for name, t in times.items():
        tr, en = statistics.median(t["train_s"]), statistics.median(t["encode_s"])
        out["results"][name] = {
            "latent_shape": list(runs[name][0].latent_shape), "train_examples_per_s": a.batch / tr,
            "train_s_median": tr, "train_s_spread": [min(t["train_s"]), max(t["train_s"])],
            "encode_items_per_s": a.encode / en, "encode_s_median": en,
            "encode_s_spread": [min(t["encode_s"]), max(t["encode_s"])]}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
