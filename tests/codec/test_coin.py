import numpy as np
import pytest

from functa.codec import ContainerError, unpack
from functa.codec.coin import CoinCodec, CoinConfig


def test_rate_accounting_hand_computed():
    cfg = CoinConfig(width=12, hidden_layers=2, channels=3)
    assert cfg.shapes() == [(12, 2), (12, 12), (3, 12)]
    assert cfg.num_params == (24 + 12) + (144 + 12) + (36 + 3)
    assert cfg.bits_per_pixel(32, 32) == pytest.approx(16 * 231 / 1024)
    c = CoinCodec.for_rate(3.61, 32, 32)  # COIN's lowest CIFAR-10 point
    assert c.config.bits_per_pixel(32, 32) <= 3.61 < CoinConfig(width=c.config.width + 1).bits_per_pixel(32, 32)


def test_fit_improves_and_round_trip_is_exact_in_float16():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:8, 0:8]
    imgs = np.stack([np.stack([np.sin(xx / 2 + k) * 100 + 128] * 3, -1) for k in range(3)]).astype(np.uint8)
    imgs = np.clip(imgs + rng.integers(-3, 4, imgs.shape), 0, 255).astype(np.uint8)
    short = CoinCodec(CoinConfig(width=8, steps=0, lr=1e-3))
    longer = CoinCodec(CoinConfig(width=8, steps=150, lr=1e-3))
    err = {}
    for name, c in (("short", short), ("longer", longer)):
        files = c.compress_many(imgs)
        header, payload = unpack(files[0])
        assert header.entropy_model == "raw16" and header.bits == 16 and len(payload) == 2 * c.config.num_params
        out = np.stack([c.decompress(f) for f in files])
        assert out.shape == imgs.shape
        err[name] = float(np.mean((out - imgs) ** 2))
    assert err["longer"] < err["short"] / 2
    with pytest.raises(ValueError, match="this is COIN codec"):
        CoinCodec(CoinConfig(width=9)).decompress(files[0])
    with pytest.raises(ContainerError):
        longer.decompress(files[0][:-1])
