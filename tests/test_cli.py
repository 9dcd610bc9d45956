"""End to end through the command line on tiny data written by the tests."""

import json

import numpy as np
import pytest
from PIL import Image

from functa.cli import build_parser, main

FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "train.batch_size=4", "--set", "train.eval_items=8", "--set", "train.eval_every=4",
        "--set", "train.save_every=4", "--set", "train.warmup_steps=2"]


def image_folder(root, n=24, size=6):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 8)):
        for i in range(count):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("fit", "encode", "render", "eval", "demo"):
        assert cmd in out


def test_fit_encode_render_eval_images(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "8", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"] == {"name": "image", "height": 6, "width": 6, "channels": 3,
                               "coordinates_convention": "centres", "max_value": 255.0}
    assert cfg["training"]["step"] == 8 and len(cfg["training"]["history"]) == 2

    fs = tmp_path / "train.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--batch-size", "5"]) == 0
    manifest = json.loads((fs / "manifest.json").read_text())
    assert manifest["count"] == 24 and manifest["complete"]
    assert manifest["header"]["base_network"]["sha256"] == cfg["sha256"]

    out = tmp_path / "renders"
    assert main(["render", "-m", str(run), "--functaset", str(fs), "--indices", "0:3", "--scale", "4", "-o", str(out)]) == 0
    with Image.open(out / "item000000_24x24.png") as im:
        assert im.size == (24, 24) and im.mode == "RGB"
    assert np.load(out / "renders.npz")["values"].shape == (3, 24, 24, 3)

    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0
    res = json.loads(js.read_text())["results"]
    assert [r["step"] for r in res["per_step"]] == [0, 1, 2, 3] and res["count"] == 8
    assert res["per_step"][-1]["mean_psnr"] >= res["per_step"][-1]["psnr_of_mean_mse"]
    assert "psnr_of_mean_mse" in capsys.readouterr().out


def test_sphere_end_to_end(tmp_path):
    lat = np.linspace(-80, 80, 6).astype(np.float32)
    lon = np.arange(0, 360, 30).astype(np.float32)
    rng = np.random.default_rng(1)
    t = (260 + 30 * np.cos(np.deg2rad(lat))[None, :, None] + rng.normal(0, 1, (20, 6, 12))).astype(np.float32)
    path = tmp_path / "temps.npz"
    np.savez(path, t2m=t, lat=lat, lon=lon, units=np.array("K"))
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(path), "-o", str(run), "--steps", "4", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["name"] == "sphere" and cfg["modality"]["units"] == "K"
    assert cfg["modality"]["vmin"] == pytest.approx(float(t[:18].min()), abs=1e-3)
    js = tmp_path / "e.json"
    assert main(["--quiet", "eval", str(path), "-m", str(run), "--json", str(js)]) == 0
    res = json.loads(js.read_text())["results"]
    assert 0 < res["rmse_lat"] < 60
    out = tmp_path / "r"
    assert main(["render", "-m", str(run), "--data", str(path), "--indices", "0,1", "--shape", "12", "24",
                 "-o", str(out)]) == 0
    vals = np.load(out / "renders.npz")["values"]
    assert vals.shape == (2, 12, 24) and 150 < vals.mean() < 350  # back in kelvin
    imp = tmp_path / "imp"  # fill in the southern hemisphere from the northern one (no prior)
    assert main(["--quiet", "impute", str(path), "-m", str(run), "-o", str(imp), "--mask", "top-half",
                 "--indices", "0,1", "--steps", "5"]) == 0
    r = json.loads((imp / "metrics.json").read_text())
    assert r["observed_fraction"] == pytest.approx(0.5) and 0 < r["no_prior"]["hidden_rmse_data_units"] < 100


def test_resume_continues_a_run(tmp_path):
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "4", *FAST]) == 0
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "8", *FAST]) == 0
    assert json.loads((run / "train_state.json").read_text())["step"] == 8


def test_errors_are_clear(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope"), "-o", str(tmp_path / "r")]) == 2
    assert "nope" in capsys.readouterr().err
    data = image_folder(tmp_path / "imgs")
    assert main(["fit", str(data), "-o", str(tmp_path / "r"), "--set", "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["encode", str(data), "-m", str(tmp_path / "missing_run"), "-o", str(tmp_path / "x")]) == 2
    assert "missing_run" in capsys.readouterr().err
    # a functaset from another base network is refused by render
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", *FAST]) == 0
    fs = tmp_path / "fs"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs)]) == 0
    run2 = tmp_path / "run2"
    assert main(["--quiet", "fit", str(data), "-o", str(run2), "--steps", "2", *FAST, "--set", "train.seed=3"]) == 0
    assert main(["render", "-m", str(run2), "--functaset", str(fs), "-o", str(tmp_path / "o")]) == 2
    assert "encoded with base network" in capsys.readouterr().err


def test_parser_builds():
    assert build_parser().parse_args(["info", "x"]).command == "info"


def test_presets_build_networks_with_their_settings():
    from functa.config import PRESETS, load_config
    from functa.fields import LatentModulatedSiren, SirenConfig

    coinpp = load_config(None, ["field.latent_dim=64"], preset="coinpp")
    assert coinpp.train.outer_lr == 3e-6 and coinpp.train.batch_size == 64 and coinpp.train.steps == 390_000
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, **coinpp.field))
    assert field.config.w0 == 50.0 and field.config.width == 512 and field.config.latent_dim == 64
    assert field.config.meta_sgd is False and field.config.latent_map_init == "torch"
    for name in PRESETS:  # every preset makes a valid network
        LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, **load_config(None, [], preset=name).field))
    with pytest.raises(ValueError, match="unknown preset 'coin'"):
        load_config(None, [], preset="coin")
