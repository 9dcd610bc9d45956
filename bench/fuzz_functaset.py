"""Fuzz target ``functaset`` (``bench/fuzz.py``): functasets read as the downstream commands read them.

:meth:`FunctasetTarget.make_seed` writes, with :class:`~functa.functaset.FunctasetWriter`, a small
complete functaset: 60 random 16-d latents in 3 chunks of 20 rows, labels, ``index`` 0..59 and the
per-item columns ``loss``, ``mse`` and ``psnr``, under a header shaped like the one
:func:`functa.pipeline.encode` writes (base network hash, field and modality config, loss, encoding
settings, data source, ``latent_shape``, ``latent_dim``). The driver mutates the manifest (JSON
mutations: wrong types, huge counts, hostile chunk paths, deleted keys) or one chunk's bytes.

:meth:`FunctasetTarget.load` opens it with the default settings (chunk hashes verified), reads the
header fields ``classify``/``flow``/``diffusion train`` record (base-network hash and path,
``latent_dim``), checks the base network as they do, reads every column (:meth:`Functaset.arrays`)
and a few rows (:meth:`Functaset.take`, indexing, as ``render`` and ``interpolate`` do). A load that
succeeds must return true data: every latent row read equals the seed's row of the same ``index``
(an :class:`AssertionError`, a failure, otherwise).

:class:`GridFunctasetTarget` is the same for latent *grids*, as spatial functa write them: 60 latents
``(4, 4, 3)`` under a header whose base network is a ``spatial`` field (``latent_shape [4, 4, 3]``), or,
with ``patches=True``, items encoded patch by patch: ``(4, 2, 2, 3)`` latents (4 patches of 8 x 8 of
16 x 16 items) with a ``header.patches`` block. A load that succeeds must also return the seed's grid
shape. The driver ``bench/fuzz.py`` runs :data:`TARGET` (vectors); the grid targets run from here::

    python bench/fuzz_functaset.py --grid --count 10000 --seed 0      # (4, 4, 3) grids
    python bench/fuzz_functaset.py --patches --count 10000 --seed 0   # (P, 2, 2, 3) patch grids
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from functa.functaset import Functaset, FunctasetWriter

ROWS, CHUNK, DIM = 60, 20, 16


class FunctasetTarget:
    name = "functaset"

    def __init__(self) -> None:
        self.latents = torch.empty(0)

    def make_seed(self, workdir: Path) -> Path:
        rng = np.random.default_rng(0)
        self.latents = torch.from_numpy(rng.normal(0, 0.3, (ROWS, DIM)).astype(np.float32))
        field = {"name": "latent_modulated_siren", "in_dim": 2, "out_dim": 1, "width": 16, "depth": 3,
                 "latent_dim": DIM, "w0": 30.0, "modulate_shift": True, "modulate_scale": False, "bias_init": "zeros",
                 "latent_map_init": "haiku", "output_offset": 0.5, "meta_sgd": True, "meta_sgd_init": [0.005, 0.1],
                 "meta_sgd_clip": [0.0, 1.0], "inner_lr": 0.01}
        modality = {"name": "image", "height": 8, "width": 8, "channels": 1, "coordinates_convention": "centres",
                    "max_value": 255.0}
        header = {"base_network": {"sha256": hashlib.sha256(b"fuzz base network").hexdigest(),
                                   "path": str(workdir / "base"), "field": field, "modality": modality, "loss": "mse"},
                  "encoding": {"inner_steps": 3},
                  "source": {"path": str(workdir / "data"), "split": "train", "count": ROWS,
                             "meta": {"kind": "image", "format": "npy", "source": "fuzz"}},
                  "latent_shape": [DIM], "latent_dim": DIM}
        path = workdir / "seed.functaset"
        writer = FunctasetWriter(path, header, total=ROWS, chunk_size=CHUNK)
        for start in range(0, ROWS, 7):
            idx = np.arange(start, min(start + 7, ROWS))
            mse = torch.from_numpy(rng.uniform(1e-4, 1e-2, len(idx)).astype(np.float32))
            writer.append(self.latents[idx], idx % 10, idx,
                          {"loss": mse, "mse": mse, "psnr": -10 * torch.log10(mse)})
        writer.close({"mean_loss": writer.sums["loss"] / ROWS})
        return path

    def load(self, path: Path) -> None:
        fs = Functaset(path)  # verify=True: the default, as every command opens functasets
        base = fs.header["base_network"]
        fs.check_base_network(base["sha256"])  # classify/flow/diffusion train check their test set this way
        source = {"count": len(fs), "base_network": base["sha256"], "base_network_path": base.get("path"),
                  "latent_dim": fs.header["latent_dim"], "latent_shape": fs.latent_shape}
        arrays = fs.arrays()
        n = len(fs)
        assert source["count"] == n and all(len(arrays[k]) == n for k in fs.columns if n), "row counts differ"
        if n:
            latents, index = arrays["latents"].reshape(n, -1), arrays["index"]
            assert latents.shape[1] == DIM and bool(((index >= 0) & (index < ROWS)).all()), "rows out of range"
            assert torch.equal(latents, self.latents[index]), "a load that succeeded returned wrong latents"
            rows = fs.take([n - 1, 0])
            assert torch.equal(rows["latents"].reshape(2, -1), latents[[n - 1, 0]])
            z, label = fs[n // 2]
            assert torch.equal(z.reshape(-1), latents[n // 2]) and label == int(arrays["labels"][n // 2])


TARGET = FunctasetTarget()


class GridFunctasetTarget(FunctasetTarget):
    """Grid latents (spatial functa): ``(4, 4, 3)``, or ``(4, 2, 2, 3)`` with ``patches=True``."""

    def __init__(self, patches: bool = False) -> None:
        super().__init__()
        self.patches = patches
        self.name = "functaset-patches" if patches else "functaset-grid"
        self.shape = (4, 2, 2, 3) if patches else (4, 4, 3)

    def make_seed(self, workdir: Path) -> Path:
        rng = np.random.default_rng(0)
        dim = math.prod(self.shape)
        self.latents = torch.from_numpy(rng.normal(0, 0.3, (ROWS, *self.shape)).astype(np.float32))
        grid = 2 if self.patches else 4
        field = {"name": "spatial", "in_dim": 2, "out_dim": 3, "width": 16, "depth": 3, "grid": grid, "channels": 3,
                 "interpolation": "nearest", "kernel": 1, "binary_bits": None, "periodic_input": False, "w0": 30.0,
                 "bias_init": "zeros", "latent_map_init": "haiku", "output_offset": 0.5, "meta_sgd": True,
                 "meta_sgd_init": [0.005, 0.1], "meta_sgd_clip": [0.0, 1.0], "inner_lr": 0.01}
        modality = {"name": "image", "height": 8, "width": 8, "channels": 3, "coordinates_convention": "centres",
                    "max_value": 255.0}
        header = {"base_network": {"sha256": hashlib.sha256(b"fuzz spatial base network").hexdigest(),
                                   "path": str(workdir / "base"), "field": field, "modality": modality, "loss": "mse"},
                  "encoding": {"inner_steps": 3},
                  "source": {"path": str(workdir / "data"), "split": "train", "count": ROWS,
                             "meta": {"kind": "image", "format": "npy", "source": "fuzz"}},
                  "latent_shape": list(self.shape), "latent_dim": dim}
        if self.patches:  # as pipeline.encode writes it for 16 x 16 items and a base network of 8 x 8 patches
            header["patches"] = {"item_grid": [16, 16], "patch": [8, 8], "num_patches": 4}
        path = workdir / "seed.functaset"
        writer = FunctasetWriter(path, header, total=ROWS, chunk_size=CHUNK)
        for start in range(0, ROWS, 7):
            idx = np.arange(start, min(start + 7, ROWS))
            mse = torch.from_numpy(rng.uniform(1e-4, 1e-2, len(idx)).astype(np.float32))
            writer.append(self.latents[idx], idx % 10, idx, {"loss": mse, "mse": mse, "psnr": -10 * torch.log10(mse)})
        writer.close({"mean_loss": writer.sums["loss"] / ROWS})
        return path

    def load(self, path: Path) -> None:
        fs = Functaset(path)
        base = fs.header["base_network"]
        fs.check_base_network(base["sha256"])
        assert fs.header["latent_dim"] == math.prod(fs.latent_shape), "latent_dim does not match latent_shape"
        arrays = fs.arrays()
        n = len(fs)
        assert all(len(arrays[k]) == n for k in fs.columns if n), "row counts differ"
        if n:
            latents, index = arrays["latents"], arrays["index"]
            assert tuple(latents.shape) == (n, *self.shape), f"a load that succeeded returned {tuple(latents.shape)}"
            assert fs.latent_shape == self.shape and bool(((index >= 0) & (index < ROWS)).all()), "rows out of range"
            assert torch.equal(latents, self.latents[index]), "a load that succeeded returned wrong latents"
            rows = fs.take([n - 1, 0])
            assert torch.equal(rows["latents"], latents[[n - 1, 0]])
            z, label = fs[n // 2]
            assert tuple(z.shape) == self.shape and torch.equal(z, latents[n // 2])
            assert label == int(arrays["labels"][n // 2])
            p = fs.header.get("patches")  # a deleted block leaves a consistent plain grid functaset
            if self.patches and p is not None:  # render stitches items of header.patches.item_grid from them
                assert p["num_patches"] == self.shape[0] and math.prod(-(-g // q) for g, q in
                                                                       zip(p["item_grid"], p["patch"])) == self.shape[0]


def main() -> None:
    """Fuzz the grid targets with the driver of ``bench/fuzz.py``; one JSON report per target."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", action="store_true", help="fuzz a functaset of (4, 4, 3) latent grids")
    p.add_argument("--patches", action="store_true", help="fuzz a functaset of (4, 2, 2, 3) patch grids")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds per input counted as too slow")
    p.add_argument("--memory-limit", type=float, default=500.0, help="MB of RSS growth per input counted as too much")
    p.add_argument("--keep", type=Path, default=None, help="save failing inputs under this directory")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuzz

    torch.set_num_threads(1)
    targets = ([GridFunctasetTarget()] if args.grid or not args.patches else []) + \
        ([GridFunctasetTarget(patches=True)] if args.patches else [])
    for target in targets:
        step = max(1, args.count // 20)
        def progress(n: int, name: str = target.name) -> None:
            if n % step == 0:
                print(f"{name}: {n}/{args.count}", file=sys.stderr, flush=True)

        report = fuzz.run(target, args.count, args.seed, time_limit_s=args.time_limit,
                          memory_limit_mb=args.memory_limit, keep=args.keep, progress=progress)
        print(json.dumps(report.as_dict()), flush=True)


if __name__ == "__main__":
    main()
