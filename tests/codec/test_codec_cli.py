"""``functa codec build`` / ``compress`` / ``decompress`` through the command line on a tiny model."""

import json

import numpy as np
import pytest
from PIL import Image

from functa.cli import main

FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "train.batch_size=4", "--set", "train.eval_items=8", "--set", "train.save_every=4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_cli")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        d = root / "imgs" / split
        d.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    assert main(["--quiet", "fit", str(root / "imgs"), "-o", str(root / "run"), "--steps", "4", *FAST]) == 0
    return root


@pytest.mark.parametrize("quantizer, entropy", [("per-dimension", "per_dimension"), ("global", "histogram"),
                                               ("per-dimension", "autoregressive")])
def test_build_compress_decompress(base, tmp_path, capsys, quantizer, entropy):
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(base / "run"), "--data", str(base / "imgs"), "-o", str(codec),
                 "--bits", "6", "--quantizer", quantizer, "--entropy", entropy, "--ar-steps", "20"]) == 0
    meta = json.loads((codec / "codec.json").read_text())
    assert meta["config"]["quantizer"] == {"bits": 6, "per_dimension": quantizer == "per-dimension", "std_range": None}
    assert meta["config"]["entropy_model"] == entropy and meta["built_from"]["count"] == 16

    photo = tmp_path / "photo.png"  # larger than the 8x8 patches: 3 x 2 patches after padding
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 13, 3), dtype=np.uint8)).save(photo)
    fta = tmp_path / "photo.fta"
    assert main(["compress", str(photo), "-m", str(codec), "-o", str(fta), "--steps", "5"]) == 0
    out = capsys.readouterr().out
    size = fta.stat().st_size
    assert f"{size} bytes" in out and f"{8 * size / (20 * 13):.4f} bpp" in out and "6 patch(es)" in out

    back = tmp_path / "back.png"
    assert main(["decompress", str(fta), "-m", str(codec), "-o", str(back)]) == 0
    with Image.open(back) as im:
        assert im.size == (13, 20) and im.mode == "RGB"

    capsys.readouterr()
    fta.write_bytes(fta.read_bytes()[:-3])
    assert main(["decompress", str(fta), "-m", str(codec), "-o", str(tmp_path / "x.png")]) == 2
    assert "photo.fta: checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_clear_errors(base, tmp_path, capsys):
    assert main(["compress", str(tmp_path / "missing.png"), "-m", str(base / "run"), "-o", str(tmp_path / "a.fta")]) == 2
    assert "codec.json" in capsys.readouterr().err  # a base network is not a codec yet
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(base / "run"), "--data", str(base / "imgs"), "-o", str(codec)]) == 0
    assert main(["compress", str(tmp_path / "missing.png"), "-m", str(codec), "-o", str(tmp_path / "a.fta")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_meta_learning_on_patches_then_compressing_large_images(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for split, count in (("train", 6), ("test", 2)):
        d = tmp_path / "big" / split
        d.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(tmp_path / "big"), "-o", str(run), "--steps", "3", *FAST,
                 "--set", "data.patch=[8,8]"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["modality"]["height"], cfg["modality"]["width"]) == (8, 8) and cfg["data"]["patch"] == [8, 8]
    assert main(["--quiet", "eval", str(tmp_path / "big"), "-m", str(run)]) == 0  # one crop per test item
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--data", str(tmp_path / "big"), "-o", str(codec)]) == 0
    assert json.loads((codec / "codec.json").read_text())["built_from"]["count"] == 6 * 9  # 3 x 3 patches each
    capsys.readouterr()
    src = tmp_path / "big" / "test" / "0.png"
    assert main(["compress", str(src), "-m", str(codec), "-o", str(tmp_path / "a.fta")]) == 0
    assert "9 patch(es)" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "a.fta"), "-m", str(codec), "-o", str(tmp_path / "a.png")]) == 0
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (24, 20)
