"""Fréchet distance of rendered samples in the feature space of a pixel CNN (when no Inception weights exist).

The FID of the papers needs pytorch-fid's Inception-v3 weights (``functa fid --weights``), which this
machine does not hold and cannot download. As a stand-in, this script computes the same Fréchet
distance with the penultimate layer (after the SiLU) of a pixel CNN trained by ``functa classify
baseline`` on the same images: **FD-CNN**, comparable between the rows of one table, *not* with the
published FIDs.

    python bench/spatial_fd.py --cnn runs/sf/pixel_cnn/seed0 --reference runs/sf/cifar_jpeg_xy.npz \\
        vec=runs/sf/vec256_ddpm_samples/sample.npz sp=runs/sf/sp4x4x16_ddpm_samples/sample.npz

Each ``NAME=PATH`` is a ``sample.npz`` / ``renders.npz`` written by a sample or render command (its
``values``, ``(N, H, W, C)`` in data units). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from functa.pipeline import open_data
from functa.tasks.checkpoint import load_task_model
from functa.tasks.fid import fid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cnn", required=True, help="a conv-classifier directory (functa classify baseline, seedN)")
    p.add_argument("--reference", required=True, help="image dataset: the real images (its --split)")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("samples", nargs="+", help="NAME=PATH of sample.npz / renders.npz files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _, _ = load_task_model(args.cnn, "conv-classifier")
    net = model.net[:-2].eval()  # up to the SiLU of the hidden layer: (B, width) features
    channels = model.config.in_channels

    def extractor(x: torch.Tensor) -> torch.Tensor:  # fid() hands over (B, 3, H, W); grey CNNs see one channel
        return net(x[:, :channels])

    real = np.asarray(open_data(args.reference, args.split, None, False).data[:])
    out = {"bench": "spatial_fd", "feature_network": args.cnn, "reference": args.reference, "split": args.split,
           "reference_count": len(real), "features": int(model.config.width), "fd_cnn": {}}
    with torch.no_grad():
        for spec in args.samples:
            name, path = spec.split("=", 1)
            values = np.load(path)["values"]
            images = np.clip(np.round(values), 0, 255).astype(np.uint8)
            out["fd_cnn"][name] = {"path": path, "count": len(images),
                                   "fd": fid(real, images, extractor, batch_size=500)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
