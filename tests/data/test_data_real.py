"""load_dataset on the real shared datasets (skipped when /work/shared/data is absent)."""

import json

import numpy as np
import pytest

from functa.data import DataError, load_dataset


def test_fashion_mnist_train_and_test(shared_data):
    train = load_dataset(shared_data / "fashion_mnist", "train")
    assert len(train) == 60000
    assert train.data.shape == (60000, 28, 28, 1) and train.data.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.labels.min() == 0 and train.labels.max() == 9
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.meta["format"] == "idx" and train.meta["kind"] == "image" and train.meta["split"] == "train"
    json.dumps(train.meta)
    test = load_dataset(shared_data / "fashion_mnist", "test")
    assert test.data.shape == (10000, 28, 28, 1)
    assert test.meta["split"] == "test"


def test_mnist_labels_and_pixels(shared_data):
    train = load_dataset(shared_data / "mnist")
    assert train.labels[0] == 5
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # published label counts and pixel mean (PROVENANCE.md)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(train.data.mean() - 33.318) < 1e-2
    img, label = train[0]
    assert img.shape == (28, 28, 1) and label == 5


def test_mnist_single_file_and_limit(shared_data):
    ds = load_dataset(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz", limit=7)
    assert ds.data.shape == (7, 28, 28, 1)
    assert ds.labels.tolist() == [7, 2, 1, 0, 4, 1, 4]  # labels file found next to the images file
    assert ds.meta["split"] == "test"


def test_cifar_lossless(shared_data):
    ds = load_dataset(shared_data / "cifar10")  # directory -> prefers the lossless archive
    assert ds.meta["format"] == "cifar-npz"
    assert ds.data.shape == (4000, 32, 32, 3) and ds.data.dtype == np.uint8
    assert ds.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert ds.meta["class_names"][6] == "frog" and len(ds.meta["class_names"]) == 10
    test = load_dataset(shared_data / "cifar10", "test")
    assert len(test) == 1000 and test.labels[:5].tolist() == [3, 8, 8, 0, 6]


def test_cifar_jpeg_matches_lossless(shared_data):
    jpeg = load_dataset(shared_data / "cifar10" / "cifar10_jpeg_q75_train.npz", limit=32)
    exact = load_dataset(shared_data / "cifar10", limit=32)
    assert jpeg.data.shape == (32, 32, 32, 3) and jpeg.meta["split"] == "train"
    np.testing.assert_array_equal(jpeg.labels, exact.labels)
    mse = np.mean((jpeg.data.astype(np.float64) - exact.data) ** 2)
    assert 10 * np.log10(255**2 / mse) > 25  # same images, lossy (~30 dB); a mismatch gives ~10 dB


def test_climate_trefht_splits(shared_data):
    path = shared_data / "climate_temperature" / "ccsm_trefht_annual_1890-1999_t42.npz"
    train = load_dataset(path, "train")
    test = load_dataset(path, "test")
    full = load_dataset(path, "all")
    assert len(full) == 880 and len(train) + len(test) == 880 and len(test) == 88
    assert full.data.shape == (880, 64, 128) and full.data.dtype == np.float32
    assert full.meta["kind"] == "field" and full.meta["variable"] == "trefht" and full.meta["units"] == "K"
    assert len(full.meta["lat"]) == 64 and len(full.meta["lon"]) == 128
    assert full.meta["lat"][0] < 0 < full.meta["lat"][-1]
    assert 200 < full.data.min() and full.data.max() < 310
    # test split is the tail of the C-order flattening (run-major, year-minor)
    np.testing.assert_array_equal(test.data, full.data[792:])
    np.testing.assert_array_equal(train.data, full.data[:792])
    raw = np.load(path, allow_pickle=False)["trefht"]
    np.testing.assert_array_equal(full.data[110 + 3], raw[1, 3])
    json.dumps(full.meta)


def test_t2m_single_field(shared_data):
    path = shared_data / "climate_temperature" / "t2m_1x1_197901.npz"
    ds = load_dataset(path)
    assert ds.data.shape == (1, 181, 360)
    assert ds.meta["units"] == "K" and len(ds.meta["lat"]) == 181 and len(ds.meta["lon"]) == 360
    field, label = ds[0]
    assert field.shape == (181, 360) and label == -1
    with pytest.raises(DataError, match="t2m_1x1_197901.npz"):
        load_dataset(path, "test")


def test_era5_needs_variable(shared_data):
    path = shared_data / "climate_temperature" / "era5_t2m_conus_1995-07-14T12.npz"
    with pytest.raises(DataError, match=r"variable=.*|several") as e:
        load_dataset(path)
    assert "t2m" in str(e.value) and "d2m" in str(e.value)
    ds = load_dataset(path, variable="t2m", split="all")
    assert ds.data.shape == (1, 105, 237) and 250 < ds.data.mean() < 320


def test_single_idx_file_refuses_the_other_split(shared_data):
    with pytest.raises(DataError, match=r"holds the 'test' split, not 'train'"):
        load_dataset(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz", "train")
