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
"""

from __future__ import annotations

import hashlib
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
