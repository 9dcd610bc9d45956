import json

import numpy as np
import pytest

from functa.data import DataError
import torch

from functa.modalities import (ImageModality, modality_by_code, SphereModality, VoxelModality, available_modalities, get_modality,
                               image_coordinates, latitude_weights, modality_from_config, sphere_coordinates)


def test_image_coordinates_are_pixel_centres():
    c = image_coordinates(2, 4)
    assert c.shape == (8, 2)
    assert torch.allclose(c[0], torch.tensor([0.25, 0.125]))
    assert torch.allclose(c[-1], torch.tensor([0.75, 0.875]))
    corners = image_coordinates(3, 3, "corners")
    assert torch.allclose(corners[0], torch.tensor([0.0, 0.0])) and torch.allclose(corners[-1], torch.tensor([1.0, 1.0]))


def test_sphere_coordinates_mapping():
    xyz = sphere_coordinates(torch.tensor([0.0, 90.0, -90.0]), torch.tensor([0.0, 90.0]))
    expect = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, -1], [0, 0, -1]], dtype=torch.float32)
    assert torch.allclose(xyz, expect, atol=1e-6)
    assert torch.allclose(xyz.norm(dim=-1), torch.ones(6))


def test_latitude_weights():
    w = latitude_weights(torch.tensor([0.0, 60.0]))
    assert torch.allclose(w, torch.tensor([4 / 3, 2 / 3]))


def sphere():
    return SphereModality(lat=[-60.0, 0.0, 60.0], lon=[0.0, 90.0, 180.0, 270.0], vmin=200.0, vmax=300.0, units="K")


MODALITIES = {
    "image": (lambda: ImageModality(height=3, width=4, channels=3),
              lambda rng: rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)),
    "sphere": (sphere, lambda rng: rng.uniform(200, 300, (2, 3, 4)).astype(np.float32)),
    "voxel": (lambda: VoxelModality(4, 5, 6), lambda rng: (rng.random((2, 4, 5, 6)) < 0.3).astype(np.uint8)),
}


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_modality_contract(name, tmp_path):
    """Every modality: coordinates, features in [0,1], exact round trip, metrics, config, save."""
    make, items_fn = MODALITIES[name]
    mod = make()
    items = items_fn(np.random.default_rng(0))
    feats = mod.to_features(items)
    n = int(np.prod(mod.shape))
    assert feats.shape == (2, n, mod.out_channels) and feats.dtype == torch.float32
    assert 0 <= float(feats.min()) and float(feats.max()) <= 1
    assert mod.coordinates().shape == (n, mod.in_dim)
    bigger = tuple(2 * s for s in mod.shape)
    assert mod.coordinates(bigger).shape == (int(np.prod(bigger)), mod.in_dim)
    np.testing.assert_allclose(mod.from_features(feats), items, rtol=1e-5, atol=1e-3)
    metrics = mod.metrics(feats, feats)
    assert all(v.shape == (2,) for v in metrics.values())
    cfg = json.loads(json.dumps(mod.to_config()))
    again = modality_from_config(cfg)
    assert again.to_config() == mod.to_config()
    paths = mod.save(mod.from_features(feats), tmp_path, ["a", "b"])
    assert all(p.is_file() for p in paths)
    assert name in available_modalities() and get_modality(name) is type(mod)
    assert modality_by_code(type(mod).code) is type(mod)
    written = mod.write_item(items[0], tmp_path / ("one.png" if name == "image" else "one.npz"))
    np.testing.assert_allclose(mod.read_item(written), items[0], rtol=1e-6)  # exact for 8-bit images
    (tmp_path / "junk.png").write_bytes(b"not an image or array")
    with pytest.raises(DataError, match="junk.png"):
        mod.read_item(tmp_path / "junk.png")
    with pytest.raises(DataError, match="no such file"):
        mod.read_item(tmp_path / "missing.png")


def test_sphere_rmse_in_physical_units_latitude_weighted():
    mod = sphere()
    target = torch.zeros(1, 12, 1)
    pred = torch.zeros(1, 12, 1)
    pred[0, 4:8] = 0.01  # equator row off by 0.01 * 100 K = 1 K
    m = mod.metrics(pred, target)
    # weights cos(lat) normalised to mean 1: equator 1/(2/3)=1.5 -> weighted MSE = 1.5 * 1/3
    assert float(m["rmse_lat"][0]) == pytest.approx(np.sqrt(0.5), rel=1e-5)
    assert float(m["rmse"][0]) == pytest.approx(np.sqrt(1 / 3), rel=1e-5)


def test_sphere_render_grid_spans_native_range():
    mod = sphere()
    lat, lon = mod.grid((5, 8))
    assert float(lat[0]) == -60 and float(lat[-1]) == 60
    assert torch.allclose(lon[:2], torch.tensor([0.0, 45.0]))


def test_image_quantised_psnr_and_errors():
    mod = ImageModality(height=2, width=2, channels=1)
    with pytest.raises(ValueError, match="expected images"):
        mod.to_features(np.zeros((1, 3, 2, 1), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        ImageModality(channels=2)
    with pytest.raises(ValueError, match="unknown modality"):
        get_modality("audio-xyz")


def test_patch_dataset_crops_are_slices_and_depend_only_on_index():
    from functa.data import ArrayDataset
    from functa.modalities import PatchDataset

    data = np.arange(3 * 10 * 12 * 3, dtype=np.int64).reshape(3, 10, 12, 3).astype(np.uint8)
    ds = ArrayDataset(data=data, labels=None, meta={"source": "toy"})
    mod = ImageModality(height=4, width=5, channels=3)
    a = PatchDataset(ds, mod, crops_per_item=7, seed=2)
    idx = np.array([0, 6, 7, 20, 13])
    crops, starts = a.crops(idx), a.offsets(idx)
    for k, i in enumerate(idx):
        r, c = starts[k]
        assert np.array_equal(crops[k], data[i // 7, r:r + 4, c:c + 5])
    assert np.array_equal(PatchDataset(ds, mod, crops_per_item=7, seed=2).crops(idx[::-1]), crops[::-1])
    many = a.offsets(np.arange(5000))
    assert many.min(0).tolist() == [0, 0] and many.max(0).tolist() == [6, 7]  # every origin reachable
    assert len(a) == 21 and a.features(idx).shape == (5, 20, 3)
    with pytest.raises(ValueError, match="smaller than the patches"):
        PatchDataset(ds, ImageModality(height=11, width=5, channels=3))
    with pytest.raises(ValueError, match="cannot be cut into patches"):
        sphere().with_shape((2, 2))
