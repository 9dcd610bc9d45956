"""Downstream commands end to end on tiny data: augmentation, classify, flow, diffusion, impute,
interpolate, and the checks that tie every model to the base network of its functaset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from functa.cli import main
from functa.functaset import Functaset
from functa.tasks.checkpoint import load_task_model

FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=6",
        "--set", "train.batch_size=4", "--set", "train.eval_items=8", "--set", "train.eval_every=4",
        "--set", "train.save_every=4", "--set", "train.warmup_steps=2"]
TRAIN = ["--set", "train.steps=30", "--set", "train.batch_size=16", "--set", "train.warmup_steps=5",
         "--set", "train.eval_every=15", "--set", "train.save_every=15"]


def bars(root, n_train=40, n_test=10, size=8):
    """Two classes of grey images: a bright top half or a bright bottom half, with noise (the
    horizontal flip augmentation keeps the class)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            cls = i % 2
            img[: size // 2] += 150 * (cls == 0)
            img[size // 2:] += 150 * (cls == 1)
            d = root / split / f"c{cls}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("down")
    data = bars(tmp / "bars")
    run = tmp / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "12", *FAST]) == 0
    train_fs, test_fs = tmp / "train.functaset", tmp / "test.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(train_fs), "--augment", "flip,crop",
                 "--copies", "2", "--pad", "1", "--batch-size", "16"]) == 0
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(test_fs), "--split", "test"]) == 0
    return tmp, data, run, train_fs, test_fs


def test_augmented_functaset_layout(setup):
    _, _, _, train_fs, _ = setup
    fs = Functaset(train_fs)
    arr = fs.arrays()
    assert len(fs) == 120 and fs.complete  # 40 originals + 2 augmented copies
    assert fs.header["augmentation"]["copies"] == 2 and fs.header["augmentation"]["kinds"] == ["flip", "crop"]
    assert np.array_equal(arr["index"].numpy(), np.tile(np.arange(40), 3))
    assert np.array_equal(arr["labels"][:40].numpy(), arr["labels"][40:80].numpy())
    assert not np.allclose(arr["latents"][:40].numpy(), arr["latents"][40:80].numpy())  # copies differ
    assert fs.manifest["summary"]["psnr_of_mean_mse"] > 5


def test_classify_train_eval_and_baseline(setup, capsys):
    tmp, data, _, train_fs, test_fs = setup
    out = tmp / "clf"
    assert main(["--quiet", "classify", "train", str(train_fs), "--test", str(test_fs), "-o", str(out),
                 *TRAIN, "--set", "train.steps=200", "--set", "model.width=32", "--set", "model.depth=2",
                 "--set", "seeds=[0,1]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the two classes (bright top / bright bottom half) are separable: far above chance (0.5)
    assert len(metrics["runs"]) == 2 and metrics["test_accuracy_mean"] >= 0.9, metrics["runs"]
    assert metrics["parameters"] == 6 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
    assert "test accuracy" in capsys.readouterr().out
    model, extra, cfg = load_task_model(out / "seed0")
    assert cfg["kind"] == "mlp-classifier" and "standardizer.mean" in extra
    assert main(["classify", "eval", str(out / "seed0"), str(test_fs)]) == 0
    assert "accuracy" in capsys.readouterr().out
    base = tmp / "pix"
    assert main(["--quiet", "classify", "baseline", str(data), "-o", str(base), *TRAIN, "--set", "train.steps=200",
                 "--set", "train.ema_decay=0.9", "--set", "model.channels=[4,8]", "--set", "model.width=16"]) == 0
    pix = json.loads((base / "metrics.json").read_text())
    assert pix["name"] == "pixel CNN" and pix["test_accuracy_mean"] >= 0.9, pix["runs"]


def tones_npz(path, speakers=6, per_class=8, rate=8000):
    """An FSDD-layout npz of two classes of noisy int16 tone clips, 300 Hz (label 0) or 2000 Hz (label 1),
    of 400-600 samples with random phase and amplitude; every speaker says both classes, so the
    speaker-disjoint split has both in train and test."""
    rng = np.random.default_rng(0)
    clips, labels, spk = [], [], []
    for s in range(speakers):
        for i in range(2 * per_class):
            cls, n = i % 2, int(rng.integers(400, 601))
            t = np.arange(n) / rate
            a = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * (300, 2000)[cls] * t + rng.uniform(0, 2 * np.pi))
            clips.append(np.round(32767 * np.clip(a + 0.05 * rng.standard_normal(n), -1, 1)).astype(np.int16))
            labels.append(cls)
            spk.append(s)
    np.savez(path, audio=np.concatenate(clips), offsets=np.cumsum([0] + [len(c) for c in clips]),
             sample_rate=np.int32(rate), label=np.array(labels, np.uint8), speaker=np.array(spk, np.uint8),
             speaker_names=np.array([f"spk{s}" for s in range(speakers)]))
    return path


def test_waveform_baseline_on_audio(tmp_path):
    from functa.downstream import _arrays, settings
    from functa.errors import ConfigError
    from functa.tasks.classify import ConvClassifier, ConvConfig, count_parameters

    data = tones_npz(tmp_path / "tones.npz")
    opts = {"audio_length": 512, "audio_pad": True}
    x, y, meta = _arrays(data, "test", opts, progress=False)
    assert x.shape == (len(y), 1, 512) and float(x.square().mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
    x2, _, _ = _arrays(data, "test", opts, progress=False, audio_rms=2 * meta["audio_rms"])
    torch.testing.assert_close(x2, x / 2)  # the test split is scaled by the training split's RMS
    assert set(y.tolist()) == {0, 1}  # the held-out speaker said both classes
    out = tmp_path / "wave"
    # kernel=5 overrides the 1-D default (9); stride and channels keep the 1-D defaults (4; 32, 64, 128, 128)
    assert main(["--quiet", "classify", "baseline", str(data), "-o", str(out), *TRAIN, "--set", "train.steps=200",
                 "--set", "train.ema_decay=0.9", "--set", "data.audio_length=512", "--set", "data.audio_pad=true",
                 "--set", "model.kernel=5"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    model = m["settings"]["model"]
    assert (model["kernel"], model["stride"], model["channels"]) == (5, 4, [32, 64, 128, 128])
    assert m["parameters"] == count_parameters(ConvClassifier(ConvConfig(1, 2, (512,), (32, 64, 128, 128),
                                                                         kernel=5, stride=4)))
    # 300 Hz vs 2000 Hz tones on a held-out speaker: far above chance (0.5)
    assert m["name"] == "waveform 1D CNN" and m["test_accuracy_mean"] >= 0.9, m["runs"]
    saved, _, cfg = load_task_model(out / "seed0")
    assert cfg["kind"] == "conv-classifier" and (saved.config.kernel, saved.config.grid_shape) == (5, (512,))
    with pytest.raises(ConfigError, match="unknown baseline data settings"):
        settings("baseline", ["data.audio_lenght=512"])
    with pytest.raises(ConfigError, match="data.audio_pad"):
        settings("baseline", ["data.audio_pad=3"])


def test_flow_train_sample_interpolate_impute(setup, capsys):
    tmp, data, run, train_fs, test_fs = setup
    flow = tmp / "flow"
    assert main(["--quiet", "flow", "train", str(train_fs), "--test", str(test_fs), "-o", str(flow), *TRAIN,
                 "--set", "model.layers=2", "--set", "model.hidden=[16,16]"]) == 0
    m = json.loads((flow / "metrics.json").read_text())
    # the flow models the latents better than the diagonal Gaussian fitted to the same training set
    assert m["test_nll_nats_per_dim"] < m["diagonal_gaussian_test_nll_nats_per_dim"], m
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll_nats_per_dim"] / np.log(2))
    samples = tmp / "flow_samples"
    assert main(["flow", "sample", str(flow), "-o", str(samples), "-n", "6", "--scale", "2",
                 "--temperature", "0.8"]) == 0
    res = json.loads((samples / "metrics.json").read_text())
    assert res["samples"]["shape"] == [16, 16] and res["memorisation"]["train_nn_distance_median"] > 0
    assert (samples / "sample_grid.png").is_file() and (samples / "nearest_train_grid.png").is_file()
    assert np.load(samples / "sample.npz")["values"].shape == (6, 16, 16, 1)

    inter = tmp / "inter"
    assert main(["interpolate", str(test_fs), "-m", str(run), "-o", str(inter), "--pair", "0", "3",
                 "--steps", "5", "--flow", str(flow)]) == 0
    values = np.load(inter / "latent_path.npz")
    assert values["values"].shape == (5, 8, 8, 1)
    ends = Functaset(test_fs).take([0, 3])["latents"].numpy()
    assert np.allclose(values["latents"][[0, -1]], ends, atol=1e-6)
    flow_path = np.load(inter / "flow_path.npz")["latents"]
    assert np.allclose(flow_path[[0, -1]], ends, atol=1e-3)  # the base-space path ends at the items too

    imp = tmp / "imp"
    assert main(["--quiet", "impute", str(data), "-m", str(run), "-o", str(imp), "--prior", str(flow),
                 "--indices", "0:4", "--mask", "left-half", "--steps", "20"]) == 0
    r = json.loads((imp / "metrics.json").read_text())
    assert set(r) >= {"no_prior", "prior"} and r["observed_fraction"] == pytest.approx(0.5)
    assert r["headline"] == "psnr_of_mean_mse" and r["no_prior"]["hidden"]["count"] == 4
    # MAP fitting fits what it sees better than what it does not
    assert r["no_prior"]["observed"]["psnr_of_mean_mse"] > r["no_prior"]["hidden"]["psnr_of_mean_mse"]
    with Image.open(imp / "imputation_grid.png") as im:
        assert im.size == (4 * (8 + 2), 4 * (8 + 2))  # original | observed | no prior | prior, 4 rows
    assert "hidden region psnr_of_mean_mse" in capsys.readouterr().out


def test_fid_command_with_a_stand_in_inception(setup, tmp_path, capsys):
    """The FID code path end to end; a randomly initialised Inception stands in for the real weights."""
    import torch
    from safetensors.torch import save_file

    from functa.tasks.fid import InceptionFeatures

    tmp, data, run, _, test_fs = setup
    torch.manual_seed(0)
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in InceptionFeatures().state_dict().items()}, str(weights))
    renders = tmp_path / "renders"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(test_fs), "--indices", "0:4",
                 "-o", str(renders)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "fid", str(renders / "renders.npz"), "--reference", str(data), "--weights", str(weights),
                 "--limit", "6"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "4 samples vs 6 reference images" in out
    fid_renders = float(out.split()[1])
    # the reference images against themselves: FID 0; the renders are further away
    from functa.data import load_dataset

    same = tmp_path / "same.npz"
    np.savez(same, values=load_dataset(data, "test").data[:6].astype(np.float32))
    assert main(["--quiet", "fid", str(same), "--reference", str(data), "--weights", str(weights), "--limit", "6"]) == 0
    fid_same = float(capsys.readouterr().out.split()[1])
    assert abs(fid_same) < 1e-3 * max(fid_renders, 1.0) and fid_renders > 10 * max(abs(fid_same), 1e-6)
    assert main(["fid", str(renders / "renders.npz"), "--reference", str(data), "--weights",
                 str(tmp_path / "none.pth")]) == 2


def test_diffusion_train_and_sample(setup):
    tmp, _, _, train_fs, _ = setup
    out = tmp / "ddpm"
    assert main(["--quiet", "diffusion", "train", str(train_fs), "-o", str(out), *TRAIN,
                 "--set", "model.width=32", "--set", "model.blocks=1"]) == 0
    history = json.loads((out / "config.json").read_text())["history"]
    # the loss curve is recorded without an evaluation set, and it goes down from the first record
    assert len(history) >= 2 and history[-1]["train_loss"] < history[0]["train_loss"], history
    samples = tmp / "ddpm_samples"
    assert main(["--quiet", "diffusion", "sample", str(out), "-o", str(samples), "-n", "4", "--method", "ddim",
                 "--steps", "10", "--no-neighbours"]) == 0
    assert np.load(samples / "sample.npz")["values"].shape == (4, 8, 8, 1)
    assert json.loads((samples / "metrics.json").read_text())["eta"] == 1.0  # DDIM defaults to the stochastic sampler
    det = tmp / "ddpm_det"
    assert main(["--quiet", "diffusion", "sample", str(out), "-o", str(det), "-n", "4", "--method", "ddim",
                 "--steps", "10", "--eta", "0", "--no-neighbours"]) == 0
    assert json.loads((det / "metrics.json").read_text())["eta"] == 0.0
    assert not np.allclose(np.load(det / "sample.npz")["values"], np.load(samples / "sample.npz")["values"])


def test_models_are_tied_to_their_base_network(setup, tmp_path, capsys):
    tmp, data, run, train_fs, test_fs = setup
    other = tmp_path / "other"
    assert main(["--quiet", "fit", str(data), "-o", str(other), "--steps", "4", *FAST, "--set", "train.seed=5"]) == 0
    other_fs = tmp_path / "other_test.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(other), "-o", str(other_fs), "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["classify", "train", str(train_fs), "--test", str(other_fs), "-o", str(tmp_path / "c"), *TRAIN]) == 2
    assert "encoded with base network" in capsys.readouterr().err
    assert main(["interpolate", str(other_fs), "-m", str(run), "-o", str(tmp_path / "i")]) == 2
    assert "encoded with base network" in capsys.readouterr().err
    assert main(["encode", str(data), "-m", str(run), "-o", str(tmp_path / "x"), "--copies", "2"]) == 2
    assert "augmentation" in capsys.readouterr().err
    assert main(["classify", "train", str(tmp_path / "missing"), "-o", str(tmp_path / "c2")]) == 2
    assert "not a functaset" in capsys.readouterr().err
    # a functaset without labels cannot train a classifier
    from functa.functaset import FunctasetWriter

    src = Functaset(test_fs)
    w = FunctasetWriter(tmp_path / "nolabels", src.header, total=len(src))
    arr = src.arrays()
    w.append(arr["latents"], np.full(len(src), -1), arr["index"].numpy(), {"loss": arr["loss"]})
    w.close()
    assert main(["classify", "train", str(tmp_path / "nolabels"), "-o", str(tmp_path / "c3"), *TRAIN]) == 2
    assert "needs labels" in capsys.readouterr().err
