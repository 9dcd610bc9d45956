"""How much of a shape a base network can represent: voxel accuracy and IoU of test shapes fitted
with the meta-learned 3 inner steps, with more inner steps, and with 300 Adam steps on the latent
(MAP fit without a prior). Separates the limit of the 3-step adaptation from the limit of the
network.

Usage::

    python bench/voxel_headroom.py RUN_DIR [--items 64]

The last line of output is a single JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from functa.fitting import Batch, MetricMeter, fit_latents, predict  # noqa: E402
from functa.modalities import FieldDataset  # noqa: E402
from functa.pipeline import load_model, model_loss, open_data  # noqa: E402
from functa.tasks.inference import map_fit  # noqa: E402


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    field, modality, cfg = load_model(args.run)
    loss, metrics = model_loss(cfg), modality.reconstruction_metrics()
    src = FieldDataset(open_data(cfg["data"]["path"], "test", cfg.get("data"), False), modality)
    idx = np.arange(min(args.items, len(src)))
    batch = src.batch(idx)
    out = {"run": str(args.run), "items": len(idx)}

    def measure(z):
        m = MetricMeter(metrics)
        m.update(predict(field, batch.x, z, loss=loss), batch.y)
        return m.as_dict()

    for steps in (3, 10, 30):
        out[f"inner_steps_{steps}"] = measure(fit_latents(field, batch, steps, loss=loss).latents)
    ones = torch.ones(1, batch.y.shape[1], 1)
    out["adam_300_steps"] = measure(map_fit(field, batch.x, batch.y, ones, loss=loss, steps=300, lr=1e-2))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
