"""Standard-codec baselines at a target rate, bpp accounting, BD-rate, and ``functa codec-bench``."""

import json

import numpy as np
import pytest
from PIL import Image

from functa.codec.baselines import STANDARD_CODECS, at_rate, available_codecs, encode_image, psnr_uint8
from functa.codec.rd import bd_rate
from functa.compression import bits_per_point
from functa.modalities import ImageModality


def _image(seed=0, h=32, w=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_bpp_and_psnr_hand_computed():
    assert bits_per_point(100, (32, 32)) == 800 / 1024  # channels are not counted (COIN++)
    a = np.zeros((2, 2, 1), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one of four values off by the full range: MSE 1/4 -> 6.02 dB
    assert psnr_uint8(a, b) == pytest.approx(10 * np.log10(4))
    compare = ImageModality(2, 2, 1).compare
    assert compare(a.astype(float) + 0.4, b)["psnr_db"] == pytest.approx(10 * np.log10(4))  # rounds to 8 bits first


@pytest.mark.parametrize("codec", available_codecs())
def test_binary_search_respects_the_budget_and_quality_grows_with_rate(codec):
    img = _image()
    pts = [at_rate(img, codec, t) for t in (2.0, 4.0, 8.0)]
    spec = STANDARD_CODECS[codec]
    assert spec.modalities == ("image",)
    lowest = spec.lo if spec.higher_is_better else spec.hi
    for t, p in zip((2.0, 4.0, 8.0), pts):
        data, dec = encode_image(img, codec, p.knob)
        assert len(data) == p.bytes and p.bpp == pytest.approx(8 * len(data) / (32 * 48))
        assert p.psnr == pytest.approx(psnr_uint8(dec, img))
        if p.bpp > t:  # only when even the lowest quality is over budget
            assert p.knob == lowest
    assert pts[2].psnr >= pts[1].psnr >= pts[0].psnr and pts[2].bpp > pts[0].bpp


def test_bd_rate():
    r = [0.5, 1.0, 2.0, 4.0]
    p = [25.0, 28.0, 31.0, 34.0]
    assert bd_rate(r, p, r, p) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate([x * 0.8 for x in r], p, r, p) == pytest.approx(-20.0, abs=1e-6)  # same PSNR at 20% fewer bits
    assert bd_rate(r, p, [x * 2 for x in r], p) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(r, p, r, [x + 20 for x in p]) is None  # no PSNR overlap
    assert bd_rate([1.0], [30.0], r, p) is None
    assert bd_rate([1.0, 1.0, 1.0], [30.0, 30.0, 30.0], r, p) is None  # one distinct point
    assert bd_rate(r + r[:2], p + p[:2], r, p) == pytest.approx(0.0, abs=1e-9)  # repeats change nothing
    for method in ("pchip", "cubic"):
        assert bd_rate([x * 0.8 for x in r], p, r, p, method) == pytest.approx(-20.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown BD-rate method"):
        bd_rate(r, p, r, p, "linear")


def test_bd_rate_pchip_matches_scipy_and_does_not_overshoot():
    interpolate = pytest.importorskip("scipy.interpolate")
    from scipy.integrate import quad

    rng = np.random.default_rng(0)
    xa, ya = np.sort(rng.uniform(20, 35, 5)), np.sort(rng.uniform(-3, 1, 5))
    xb, yb = np.sort(rng.uniform(22, 38, 6)), np.sort(rng.uniform(-2.5, 1.5, 6))
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    mean = [quad(interpolate.PchipInterpolator(x, y), lo, hi)[0] / (hi - lo) for x, y in ((xa, ya), (xb, yb))]
    expected = (np.exp(mean[0] - mean[1]) - 1) * 100
    assert bd_rate(np.exp(ya), xa, np.exp(yb), xb) == pytest.approx(expected, rel=1e-6)
    # an uneven curve (two points 0.05 dB apart) lying wholly below the other in rate: the cubic fit
    # swings above it, the monotone interpolant does not
    fr, fp = [0.026, 0.0345, 0.042, 0.048], [24.16, 24.45, 24.50, 26.35]
    jr, jp = [0.0465, 0.0499, 0.0998, 0.1988], [19.45, 21.23, 29.12, 35.06]
    assert bd_rate(fr, fp, jr, jp, "cubic") > 100 and -60 < bd_rate(fr, fp, jr, jp) < 0
    # a point beaten on rate and PSNR by another is not part of the curve
    assert bd_rate(fr + [0.06], fp + [24.0], jr, jp) == pytest.approx(bd_rate(fr, fp, jr, jp))


def test_codec_bench_command(tmp_path, capsys):
    from functa.cli import main

    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        d = tmp_path / "imgs" / split
        d.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_image(i, 8, 8)).save(d / f"{i}.png")
    fast = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
            "--set", "train.batch_size=4", "--set", "train.eval_items=4"]
    assert main(["--quiet", "fit", str(tmp_path / "imgs"), "-o", str(tmp_path / "run"), "--steps", "2", *fast]) == 0
    codecs = []
    for bits in (3, 6):
        c = tmp_path / f"codec{bits}"
        assert main(["--quiet", "codec", "build", "-m", str(tmp_path / "run"), "--data", str(tmp_path / "imgs"),
                     "-o", str(c), "--bits", str(bits)]) == 0
        codecs += ["-m", str(c)]
    out = tmp_path / "rd"
    assert main(["--quiet", "codec-bench", str(tmp_path / "imgs"), *codecs, "-o", str(out),
                 "--standard", "jpeg", "webp", "--targets", "4", "16", "--coin", "20", "--coin-steps", "5"]) == 0
    table = json.loads((out / "rd.json").read_text())
    curve = "functa (per-dim quantiser, per_dimension entropy)"
    assert table["items"] == 3 and set(table["results"]) == {curve, "jpeg", "webp", "coin"}
    assert table["rate_unit"] == "bpp" and table["modality"] == "image"
    assert table["results"]["coin"][0]["payload_rate"] <= 20
    assert set(table["bd_rate_percent"][curve]) == {"jpeg", "webp", "coin"}
    assert table["bd_rate_payload_percent"] == {curve: {}}  # payload BD-rates only between functa curves
    f = sorted(table["results"][curve], key=lambda p: p["rate"])
    assert len(f) == 2 and f[0]["payload_rate"] < f[0]["rate"]
    assert f[0]["rate"] < f[1]["rate"]  # 3 bits per latent dimension cost less than 6
    assert (out / "rd.png").is_file()
    assert f"BD-rate {curve} vs jpeg" in capsys.readouterr().out
    # the slow baselines can be reused for another set of functa codecs
    assert main(["--quiet", "codec-bench", str(tmp_path / "imgs"), codecs[0], codecs[1], "-o", str(tmp_path / "rd2"),
                 "--standard", "--baselines-from", str(out / "rd.json")]) == 0
    again = json.loads((tmp_path / "rd2" / "rd.json").read_text())
    assert again["results"]["jpeg"] == table["results"]["jpeg"] and len(again["results"][curve]) == 1


def test_rd_points_on_images_of_different_sizes(tmp_path):
    from functa.codec import CodecConfig, FunctaCodec
    from functa.codec.rd import coin_point, functa_point, standard_point
    from functa.data import MixedSizesError, load_dataset, load_image_list
    from functa.fields import LatentModulatedSiren, SirenConfig
    from functa.modalities import get_modality
    import torch

    for i, (h, w) in enumerate([(8, 8), (13, 21), (8, 8)]):
        Image.fromarray(_image(i, h, w)).save(tmp_path / f"{i}.png")
    with pytest.raises(MixedSizesError, match="differs"):
        load_dataset(tmp_path)
    images = load_image_list(tmp_path)
    assert [im.shape for im in images] == [(8, 8, 3), (13, 21, 3), (8, 8, 3)]
    torch.manual_seed(0)
    mod = get_modality("image")(height=8, width=8, channels=3)
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, width=8, depth=3, latent_dim=4))
    codec = FunctaCodec.build(field, mod, {"sha256": "0" * 64}, torch.randn(20, 4), CodecConfig())
    p = functa_point(codec, images, "toy")
    sizes = [len(codec.compress(im)) for im in images]
    assert p.count == 3 and p.bpp == pytest.approx(np.mean([8 * n / (im.shape[0] * im.shape[1])
                                                           for n, im in zip(sizes, images)]))
    assert standard_point(images, "jpeg", 8.0).count == 3
    assert coin_point(images, 20.0, steps=2).count == 3
