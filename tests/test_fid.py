"""FID: Fréchet distance, feature statistics, and the FID Inception-v3 (random weights; nothing downloaded)."""

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from functa.tasks.fid import InceptionFeatures, feature_statistics, fid, frechet_distance


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The Inception forward passes are small; with other work on the machine, OpenMP threads
    # contending for cores can make them 100x slower. One thread keeps these tests fast.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form():
    gen = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    a = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(6, generator=gen, dtype=torch.float64) * 3
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # numpy inputs give the same value
    assert frechet_distance(mu1.numpy(), np.diag(a.numpy()), mu2.numpy(), np.diag(b.numpy())) == pytest.approx(
        expected, rel=1e-9, abs=1e-12)
    assert frechet_distance(mu1.float(), torch.diag(a).float(), mu2.float(), torch.diag(b).float()) == pytest.approx(
        expected, rel=1e-5)


def test_frechet_distance_commuting_covariances_closed_form():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute, so tr sqrt(S1 S2) = sum sqrt(a b).
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    a, b = torch.rand(8, generator=gen, dtype=torch.float64), torch.rand(8, generator=gen, dtype=torch.float64)
    a[0] = 0.0  # a singular covariance is fine
    mu = torch.zeros(8, dtype=torch.float64)
    got = frechet_distance(mu, q @ torch.diag(a) @ q.T, mu, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(float(((a.sqrt() - b.sqrt()) ** 2).sum()), rel=1e-8, abs=1e-10)


def test_frechet_distance_identical_is_zero_and_symmetric():
    gen = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    s1, s2 = _random_spd(16, gen), _random_spd(16, gen)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0.1
    assert d12 == pytest.approx(d21, rel=1e-9)
    # against a direct tr(sqrtm(S1 S2)) via the eigenvalues of S1 S2 (real, non-negative)
    ev = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    direct = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * ev)
    assert d12 == pytest.approx(direct, rel=1e-8)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))
    with pytest.raises(ValueError, match="means"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ---- statistics with a tiny stand-in extractor ------------------------------------------------


def _tiny_extractor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())  # F = 32


def test_feature_statistics_match_numpy():
    ext = _tiny_extractor()
    images = torch.rand(37, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mu, sigma = feature_statistics(images, ext, batch_size=10)
    with torch.no_grad():
        feats = ext(images).double().numpy()
    assert mu.dtype == torch.float64 and mu.shape == (32,) and sigma.shape == (32, 32)
    np.testing.assert_allclose(mu.numpy(), feats.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-9)


def test_fid_self_is_zero_and_grows_with_shift():
    ext = _tiny_extractor()
    images = torch.rand(64, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 0.5
    assert fid(images, images, ext, batch_size=16) == pytest.approx(0.0, abs=1e-8)
    small, large = fid(images, images + 0.1, ext), fid(images, images + 0.4, ext)
    assert 1e-4 < small < large
    assert fid(images + 0.4, images, ext) == pytest.approx(large, rel=1e-6)
    assert ext.training  # the extractor's mode is restored


def test_uint8_and_grayscale_inputs():
    ext = _tiny_extractor()
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, size=(20, 10, 10, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    as_float = torch.from_numpy(gray).permute(0, 3, 1, 2).float() / 255
    mu_g, s_g = feature_statistics(gray, ext, batch_size=7)
    mu_c, s_c = feature_statistics(rgb, ext)
    mu_f, s_f = feature_statistics(as_float, ext)
    mu_n, s_n = feature_statistics(gray[..., 0], ext)  # (N, H, W)
    for mu, s in ((mu_c, s_c), (mu_f, s_f), (mu_n, s_n)):
        torch.testing.assert_close(mu, mu_g, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(s, s_g, rtol=1e-6, atol=1e-9)
    with pytest.raises(TypeError, match="uint8"):
        feature_statistics(gray.astype(np.float32), ext)
    with pytest.raises(ValueError, match="C in"):
        feature_statistics(torch.rand(4, 2, 8, 8), ext)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.rand(1, 3, 8, 8), ext)


# ---- FID Inception-v3 ---------------------------------------------------------------------------

# Keys of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision Inception3 names, no
# AuxLogits, 1008-class fc): every conv is `<name>.conv.weight` + `<name>.bn.{weight,bias,running_mean,
# running_var,num_batches_tracked}`.
EXPECTED_TOP_LEVEL = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                      "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                      "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.bn.weight": (384,),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    torch.manual_seed(0)
    return InceptionFeatures()


def test_inception_state_dict_layout(inception):
    sd = inception.state_dict()
    assert list(dict.fromkeys(k.split(".")[0] for k in sd)) == EXPECTED_TOP_LEVEL
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in sd)
    assert len(sd) == 94 * 6 + 2  # 94 conv+BN units, plus fc
    n_params = sum(p.numel() for p in inception.parameters())
    assert n_params == 23_850_960  # torchvision Inception3 w/o aux: 23,834,568 with 1000 classes; +8*2049
    assert n_params - sd["fc.weight"].numel() - sd["fc.bias"].numel() == 21_785_568
    assert all(not p.requires_grad for p in inception.parameters())
    inception.train()
    assert not inception.training  # frozen in eval mode


def test_inception_forward_shape(inception):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    y = inception(x)  # resized to 299x299 inside
    assert y.shape == (2, 2048) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert (y >= 0).all() and y.std() > 1e-3  # post-ReLU averages, informative under He init
    assert not torch.equal(y[0], y[1])


def _small_input() -> torch.Tensor:
    return torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(7))  # smallest size, no resize


def test_from_file_safetensors_round_trip(inception, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "inception.safetensors"
    save_file(inception.state_dict(), str(path))
    loaded = InceptionFeatures.from_file(path, resize_input=False)
    inception.resize_input = False
    try:
        x = _small_input()
        torch.testing.assert_close(loaded(x), inception(x), rtol=0, atol=0)
    finally:
        inception.resize_input = True
    for k, v in inception.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_from_file_pth_weights_only(inception, tmp_path):
    # As pytorch-fid's file: a plain state dict; fc and num_batches_tracked may be absent.
    sd = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path)
    loaded = InceptionFeatures.from_file(path)
    torch.testing.assert_close(loaded.Mixed_7c.branch_pool.conv.weight, inception.Mixed_7c.branch_pool.conv.weight,
                               rtol=0, atol=0)
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    torch.save(no_fc, tmp_path / "no_fc.pth")
    loaded = InceptionFeatures.from_file(tmp_path / "no_fc.pth")
    assert torch.equal(loaded.Conv2d_1a_3x3.bn.running_var, inception.Conv2d_1a_3x3.bn.running_var)


class _NotWeights:
    pass


def test_from_file_errors(inception, tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures.from_file(tmp_path / "absent.pth")

    wrong = tmp_path / "wrong.pth"
    torch.save(nn.Linear(3, 4).state_dict(), wrong)
    msg = r"wrong\.pth.*missing keys.*Conv2d_1a_3x3\.conv\.weight.*unexpected.*'weight'"
    with pytest.raises(ValueError, match=msg):
        InceptionFeatures.from_file(wrong)

    # right keys, one wrong shape (e.g. torchvision's 1000-class head)
    sd = dict(inception.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(ValueError, match=r"tv\.pth.*fc\.weight"):
        InceptionFeatures.from_file(tmp_path / "tv.pth")

    # extra (aux) keys are unexpected
    sd = dict(inception.state_dict())
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(sd, tmp_path / "aux.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \(first: \['AuxLogits"):
        InceptionFeatures.from_file(tmp_path / "aux.pth")

    # a pickle of arbitrary objects is refused (weights_only=True), never executed
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": _NotWeights()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights-only"):
        InceptionFeatures.from_file(evil)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        InceptionFeatures.from_file(garbage)


def test_inception_as_fid_extractor():
    torch.manual_seed(1)
    ext = InceptionFeatures(resize_input=False)
    images = (np.random.default_rng(8).random((3, 75, 75, 1)) * 255).astype(np.uint8)
    mu, sigma = feature_statistics(images, ext, batch_size=2)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert torch.isfinite(sigma).all() and torch.equal(sigma, sigma.T)
    assert math.isfinite(float(sigma.trace())) and float(sigma.trace()) > 0
