"""A modality defined in this file goes through fit, encode, eval, render, compress and decompress
with no change to the library: the trainer, the codec and the command line find it in the registry."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from functa.cli import main
from functa.data import DataError
from functa.functaset import Functaset
from functa.io import atomic_write_bytes
from functa.modalities import ModalityBase, register_modality


@register_modality
@dataclass
class Trace1D(ModalityBase):
    """1-D signals in [0, 1] sampled on ``length`` points; coordinates in [-1, 1]."""

    name: ClassVar[str] = "test-trace1d"
    code: ClassVar[int] = 201
    length: int = 16
    in_dim: int = field(init=False, default=1)
    out_channels: int = field(init=False, default=1)

    def __post_init__(self):
        self.shape = (self.length,)

    @classmethod
    def detect(cls, dataset):
        return dataset.meta.get("kind") == "array" and dataset.data.ndim == 2

    @classmethod
    def from_dataset(cls, dataset):
        return cls(length=int(dataset.data.shape[1]))

    def coordinates(self, shape=None):
        n = (shape or self.shape)[0]
        return torch.linspace(-1, 1, n)[:, None]

    def to_features(self, items):
        return torch.from_numpy(np.asarray(items, np.float32)).reshape(len(items), -1, 1)

    def from_features(self, features, shape=None):
        return features.detach().float().clamp(0, 1).reshape(features.shape[0], -1).numpy()

    def save(self, items, directory, names):
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for item, name in zip(items, names):
            img = np.zeros((8, len(item)), np.uint8)
            img[:] = np.clip(item * 255, 0, 255).astype(np.uint8)[None]
            p = directory / f"{name}.png"
            Image.fromarray(img).save(p)
            paths.append(p)
        return paths

    def read_item(self, path):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 1:
            raise DataError(f"{path}: a trace is 1-D")
        return arr.astype(np.float32)

    def write_item(self, item, path):
        buf = io.BytesIO()
        np.save(buf, np.asarray(item, np.float32))
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    def to_config(self):
        return {"name": self.name, "length": self.length}

    def with_shape(self, shape):
        return replace(self, length=int(shape[0]))


FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=4", "--set", "field.w0=5",
        "--set", "train.batch_size=8", "--set", "train.eval_items=8", "--set", "train.eval_every=10",
        "--set", "train.save_every=10", "--set", "train.warmup_steps=2"]


def test_a_modality_defined_outside_the_library_runs_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 16)
    data = 0.5 + 0.3 * np.sin(2 * np.pi * (t[None] * rng.uniform(0.5, 1.5, (60, 1)) + rng.uniform(0, 1, (60, 1))))
    path = tmp_path / "traces.npz"
    np.savez(path, data=data.astype(np.float32), labels=np.arange(60) % 2)
    run = tmp_path / "run"
    # the modality is inferred from the data (its detect), and is a CLI choice
    assert main(["--quiet", "fit", str(path), "-o", str(run), "--steps", "20", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"] == {"name": "test-trace1d", "length": 16} and cfg["loss"] == "mse"
    fs = tmp_path / "train.functaset"
    assert main(["--quiet", "encode", str(path), "-m", str(run), "-o", str(fs)]) == 0
    f = Functaset(fs)
    assert f.complete and f.latent_shape == (4,) and set(f.columns) >= {"loss", "mse", "psnr"}
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(path), "-m", str(run), "--json", str(js)]) == 0
    last = json.loads(js.read_text())["results"]["per_step"][-1]
    first = json.loads(js.read_text())["results"]["per_step"][0]
    assert last["psnr_of_mean_mse"] > first["psnr_of_mean_mse"]  # the inner loop fits the traces
    out = tmp_path / "renders"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:3", "--shape", "64",
                 "-o", str(out)]) == 0
    assert np.load(out / "renders.npz")["values"].shape == (3, 64)
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    item = tmp_path / "long.npy"
    np.save(item, (0.5 + 0.3 * np.sin(np.linspace(0, 6, 40))).astype(np.float32))  # 40 points: 3 patches of 16
    fta = tmp_path / "long.fta"
    capsys.readouterr()
    assert main(["compress", str(item), "-m", str(codec), "-o", str(fta)]) == 0
    assert "rmse" in capsys.readouterr().out  # the base modality's default comparison
    assert fta.read_bytes()[13] == 201  # the modality's own container code
    back = tmp_path / "back.npy"
    assert main(["decompress", str(fta), "-m", str(codec), "-o", str(back)]) == 0
    assert np.load(back).shape == (40,)
