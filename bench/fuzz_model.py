"""Fuzz target ``model`` (``bench/fuzz.py``): base networks loaded as ``functa encode`` / ``eval`` load them.

:meth:`ModelTarget.make_seed` saves, with :func:`~functa.io.save_base_network`, a tiny base network
directory (``model.safetensors`` and a ``config.json`` shaped like the one ``functa fit`` writes:
field and modality config, loss, the run config, data settings and training info): a SIREN of
width 16 and depth 3 with 8-d latents for 8x8 grey images. The driver mutates ``config.json``
(JSON mutations: wrong types, huge widths and depths, deleted keys such as ``sha256``) or the
weights' bytes, or replaces a file by a directory.

:meth:`ModelTarget.load` loads it with :func:`functa.pipeline.load_model` (default settings: the
recorded SHA-256 is required and checked), reads what ``encode`` and ``eval`` read next (the loss,
``run.train.inner_steps``, the modality's metrics) and runs one forward pass of 2 latents at 16
random coordinates, whose output must have the expected shape.
"""

from __future__ import annotations

from pathlib import Path

import torch

from functa.config import load_config
from functa.fields import LatentModulatedSiren, SirenConfig
from functa.io import save_base_network
from functa.modalities import get_modality
from functa.pipeline import load_model, model_loss


class ModelTarget:
    name = "model"

    def make_seed(self, workdir: Path) -> Path:
        torch.manual_seed(0)
        modality = get_modality("image")(height=8, width=8, channels=1)
        run = load_config(None, ["field.width=16", "field.depth=3", "field.latent_dim=8", "train.steps=10"])
        field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, **run.field))
        path = workdir / "base"
        save_base_network(path, field, modality=modality.to_config(), loss="mse", run=run.to_dict(),
                          data={"path": str(workdir / "data"), "variable": None, "test_fraction": 0.1, "limit": None,
                                "patch": None, "meta": {"kind": "image", "format": "npy"}},
                          training={"step": 10, "history": [{"step": 10, "loss": 0.05}]})
        return path

    def load(self, path: Path) -> None:
        field, modality, cfg = load_model(path)
        loss = model_loss(cfg)
        steps = cfg["run"]["train"]["inner_steps"]  # encode / eval / render read it next
        assert isinstance(steps, int) and steps >= 0
        modality.reconstruction_metrics()
        with torch.no_grad():
            x = torch.rand(1, 16, field.in_dim)
            z = torch.randn(2, *field.latent_shape) * 0.1
            out = loss.predict(field(x, z))
        assert out.shape == (2, 16, field.out_dim), out.shape


TARGET = ModelTarget()
