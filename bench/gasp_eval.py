"""What a GASP run learned: its training curve, and simple statistics of its samples against the data.

    python bench/gasp_eval.py runs/gasp_vox runs/gasp_vox_samples/sample.npz --json bench/results/gasp_vox.json

* **Training**: the history rows (interval means of both losses, ``D(real)``, ``D(fake)``, R1) at the
  start, middle and end, the largest ``D(real) - D(fake)`` gap, and the run's events (saturation).
* **Samples** (``sample.npz`` from ``functa gasp sample`` at the native grid) against as many training
  items: per-item mean and standard deviation of the values (data units), and the **diversity** of the
  set: the median distance between two samples against that between two training items (a collapsed
  generator gives near-identical samples). Occupancy grids (voxels) also get the occupied fraction and
  the IoU of pairs (samples with each other, training items with each other) and of each sample with its
  nearest training item.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from functa.io import read_json_object
from functa.pipeline import open_data


def _pairs(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a, b = rng.integers(0, n, count), rng.integers(0, n, count)
    keep = a != b
    return a[keep], b[keep]


def _iou(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inter = (x & y).reshape(len(x), -1).sum(1)
    union = (x | y).reshape(len(x), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("samples", help="sample.npz at the native grid")
    p.add_argument("--json")
    args = p.parse_args(argv)
    run = Path(args.run)
    state = read_json_object(run / "train_state.json", "a GASP train state")
    cfg = read_json_object(run / "config.json", "a GASP model config")
    hist = state["history"]
    out = {"bench": "gasp_eval", "run": str(run), "steps": state["step"], "train_seconds": state["elapsed_s"],
           "events": state["events"],
           "history": [hist[0], hist[len(hist) // 2], hist[-1]] if hist else [],
           "max_gap": max((h["d_real"] - h["d_fake"] for h in hist), default=None),
           "min_gap": min((h["d_real"] - h["d_fake"] for h in hist), default=None)}
    values = np.load(args.samples)["values"].astype(np.float64)
    train = open_data(cfg["data"]["path"], "train", cfg.get("data_settings") or {}, False)
    rng = np.random.default_rng(0)
    real = np.asarray(train.take(rng.choice(len(train), size=min(len(train), max(len(values), 256)), replace=False)),
                      dtype=np.float64)
    if real.shape[1:] != values.shape[1:]:
        raise SystemExit(f"samples have shape {values.shape[1:]}, the data {real.shape[1:]}: sample at the native grid")

    def spread(v: np.ndarray) -> dict:
        flat = v.reshape(len(v), -1)
        a, b = _pairs(len(v), 2000, rng)
        return {"item_mean": float(flat.mean(1).mean()), "item_std": float(flat.std(1).mean()),
                "pair_distance_median": float(np.median(np.linalg.norm(flat[a] - flat[b], axis=1)))}

    out["samples"], out["data"] = spread(values), spread(real)
    if cfg["modality"]["name"] == "voxel":
        s_occ, r_occ = values >= 0.5, real >= 0.5
        a, b = _pairs(len(values), 2000, rng)
        c, d = _pairs(len(real), 2000, rng)
        ref = torch.from_numpy(np.asarray(train.take(np.arange(len(train))), dtype=np.float32).reshape(len(train), -1))
        _, nn = torch.cdist(torch.from_numpy(s_occ.reshape(len(values), -1).astype(np.float32)), ref).min(1)
        nearest = np.asarray(train.take(nn.numpy())) >= 0.5
        out["occupancy"] = {"samples_fraction": float(s_occ.mean()), "data_fraction": float(r_occ.mean()),
                            "samples_pair_iou_median": float(np.median(_iou(s_occ[a], s_occ[b]))),
                            "data_pair_iou_median": float(np.median(_iou(r_occ[c], r_occ[d]))),
                            "nearest_train_iou_median": float(np.median(_iou(s_occ, nearest)))}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
