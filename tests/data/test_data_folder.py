"""Image-folder loader."""

import numpy as np
import pytest
from PIL import Image

from functa.data import DataError, load_dataset


def save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return arr


def rgb(v, size=(6, 5)):
    a = np.zeros((*size, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = v, 255 - v, v // 2
    return a


def test_class_subfolders(tmp_path):
    # written out of order: labels come from the sorted folder names, files sorted within a class
    save(tmp_path / "zebra" / "b.png", rgb(30))
    save(tmp_path / "zebra" / "a.png", rgb(20))
    save(tmp_path / "ant" / "x.png", rgb(10))
    save(tmp_path / "moth" / "1.jpg", rgb(200))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(tmp_path)
    assert ds.meta["format"] == "image-folder" and ds.meta["kind"] == "image"
    assert ds.meta["class_names"] == ["ant", "moth", "zebra"]
    assert ds.labels.tolist() == [0, 1, 2, 2]
    assert ds.data.shape == (4, 6, 5, 3) and ds.data.dtype == np.uint8
    np.testing.assert_array_equal(ds.data[0], rgb(10))
    np.testing.assert_array_equal(ds.data[2], rgb(20))
    assert np.abs(ds.data[1].astype(int) - rgb(200)).max() < 12  # JPEG


def test_train_test_dirs_share_class_ids(tmp_path):
    for cls in ["a", "b", "c"]:
        save(tmp_path / "train" / cls / "0.png", rgb(ord(cls)))
    save(tmp_path / "test" / "c" / "0.png", rgb(1))  # test lacks classes a, b
    test = load_dataset(tmp_path, "test")
    assert test.labels.tolist() == [2] and test.meta["class_names"] == ["a", "b", "c"]
    assert test.meta["split"] == "test"
    assert len(load_dataset(tmp_path, "train")) == 3
    assert len(load_dataset(tmp_path, "all")) == 4


def test_grayscale_unlabelled_and_limit(tmp_path):
    arrs = [save(tmp_path / f"{i:02d}.png", np.full((4, 7), 10 * i, np.uint8)) for i in range(5)]
    ds = load_dataset(tmp_path, limit=3)
    assert ds.data.shape == (3, 4, 7, 1) and ds.labels is None
    np.testing.assert_array_equal(ds.data[..., 0], np.stack(arrs[:3]))
    assert ds[1][1] == -1
    with pytest.raises(DataError, match="test/"):
        load_dataset(tmp_path, "test")


def test_mixed_gray_and_rgba_become_rgb(tmp_path):
    save(tmp_path / "a.png", np.full((3, 3), 100, np.uint8))
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 50, 128
    save(tmp_path / "b.png", rgba)
    ds = load_dataset(tmp_path)
    assert ds.data.shape == (2, 3, 3, 3)
    assert ds.data[0].tolist() == [[[100] * 3] * 3] * 3
    assert ds.data[1, 0, 0].tolist() == [50, 0, 0]
    assert any("alpha" in n for n in ds.meta["notes"])


def test_mismatched_sizes(tmp_path):
    save(tmp_path / "a.png", rgb(1, (8, 8)))
    save(tmp_path / "b.png", rgb(1, (8, 8)))
    save(tmp_path / "c.png", rgb(1, (8, 9)))
    save(tmp_path / "d.png", rgb(1, (5, 5)))
    with pytest.raises(DataError, match=r"c\.png: image size 9x8 differs from .*a\.png \(8x8\)"):
        load_dataset(tmp_path)


def test_corrupt_png(tmp_path):
    save(tmp_path / "cls" / "good.png", rgb(3))
    bad = tmp_path / "cls" / "bad.png"
    save(bad, rgb(4))
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # header intact, pixel data truncated
    with pytest.raises(DataError, match=r"bad\.png: cannot read image"):
        load_dataset(tmp_path)
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"bad\.png: cannot read image"):
        load_dataset(tmp_path)


def test_mixed_loose_and_class_folders(tmp_path):
    save(tmp_path / "loose.png", rgb(1))
    save(tmp_path / "cls" / "x.png", rgb(1))
    with pytest.raises(DataError, match="mixes loose images"):
        load_dataset(tmp_path)
