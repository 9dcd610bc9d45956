"""CIFAR-10 loaders: npz layouts and the restricted unpickler for the official python batches."""

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from functa.data import DataError, load_dataset
from functa.data.cifar import restricted_unpickle

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def write_batches(directory, protocol=pickle.DEFAULT_PROTOCOL):
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_10", "test_batch"]):
        data, labels = make_batch(3 + i, seed=i)
        batches[name] = (data, labels)
        with open(directory / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=protocol)
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f, protocol=protocol)
    return batches


def hwc(data):
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_batches(tmp_path, protocol):
    batches = write_batches(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset(tmp_path)  # parent directory of cifar-10-batches-py also works
    assert ds.meta["format"] == "cifar-python" and ds.meta["class_names"] == NAMES
    order = ["data_batch_1", "data_batch_2", "data_batch_10"]  # numeric, not lexicographic
    np.testing.assert_array_equal(ds.data, np.concatenate([hwc(batches[b][0]) for b in order]))
    assert ds.labels.tolist() == sum((batches[b][1] for b in order), [])
    assert ds.data.shape[1:] == (32, 32, 3) and ds.data.flags.c_contiguous
    test = load_dataset(tmp_path / "cifar-10-batches-py", "test")
    np.testing.assert_array_equal(test.data, hwc(batches["test_batch"][0]))
    assert load_dataset(tmp_path, "all", limit=5).labels.tolist() == batches["data_batch_1"][1] + batches[
        "data_batch_2"][1][:2]  # fmt: skip


def test_pixel_layout_is_chw_planes(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0, 1, 2] = 200  # red plane, row 1, column 2
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": img.reshape(1, 3072), b"labels": [4]}, f)
    ds = load_dataset(d)
    assert ds.data[0, 1, 2].tolist() == [200, 0, 0] and ds.data.sum() == 200


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system from .*data_batch_1"):
        load_dataset(d)
    assert not marker.exists()
    with pytest.raises(DataError, match="refusing to unpickle"):
        restricted_unpickle(d / "data_batch_1")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [print, io.BytesIO, eval])
def test_other_globals_refused(tmp_path, obj):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"x": obj}))
    with pytest.raises(DataError, match=r"refusing to unpickle .* from .*data_batch_1"):
        restricted_unpickle(p)


def test_truncated_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_batches(d)
    raw = (d / "data_batch_1").read_bytes()
    (d / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_1.*corrupt pickle"):
        load_dataset(d)


def test_bad_batch_shape(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_1.*3072"):
        load_dataset(d)


def write_lossless(path, n_train=6, n_test=3):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test).astype(np.uint8),
        class_names=np.array(NAMES),
    )
    np.savez(path, **arrays)
    return arrays


def write_jpeg_npz(path, n, seed):
    rng = np.random.default_rng(seed)
    # smooth images survive JPEG well enough to compare
    base = np.linspace(0, 255, 32, dtype=np.float64)
    imgs = []
    blobs = []
    for _ in range(n):
        c = rng.uniform(0.2, 1.0, size=3)
        img = (base[None, :, None] * c[None, None, :] + 0 * base[:, None, None]).astype(np.uint8)
        img = np.broadcast_to(img, (32, 32, 3)).copy()
        imgs.append(img)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    y = rng.integers(0, 10, n).astype(np.uint8)
    np.savez(path, jpeg_bytes=np.concatenate(blobs), offsets=offsets, y=y, class_names=np.array(NAMES))
    return np.stack(imgs), y


def test_lossless_npz(tmp_path):
    arrays = write_lossless(tmp_path / "sub.npz")
    ds = load_dataset(tmp_path / "sub.npz", "test")
    np.testing.assert_array_equal(ds.data, arrays["x_test"])
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == arrays["y_test"].tolist()
    assert ds.meta["class_names"] == NAMES and ds.meta["split"] == "test"
    assert len(load_dataset(tmp_path / "sub.npz", "all")) == 9


def test_jpeg_npz_and_directory_preference(tmp_path):
    d = tmp_path / "c10"
    d.mkdir()
    imgs, y = write_jpeg_npz(d / "cifar10_jpeg_q75_test.npz", 4, seed=1)
    write_jpeg_npz(d / "cifar10_jpeg_q75_train.npz", 6, seed=2)
    test = load_dataset(d, "test")
    assert test.meta["files"][0].endswith("cifar10_jpeg_q75_test.npz") and test.meta["split"] == "test"
    assert test.data.shape == (4, 32, 32, 3) and test.labels.tolist() == y.tolist()
    assert np.abs(test.data.astype(int) - imgs).mean() < 3
    assert len(load_dataset(d, "train")) == 6
    assert len(load_dataset(d, "all")) == 10
    # once a lossless archive is present, the directory prefers it
    write_lossless(d / "cifar10_lossless_subset.npz")
    assert load_dataset(d, "test").meta["layout"] == "lossless"


def test_corrupt_jpeg_names_file_and_index(tmp_path):
    p = tmp_path / "cifar10_jpeg_q75_train.npz"
    write_jpeg_npz(p, 3, seed=0)
    z = dict(np.load(p, allow_pickle=False))
    start = int(z["offsets"][1])
    z["jpeg_bytes"][start + 20 : int(z["offsets"][2])] = 0  # wipe image #1 after its SOI marker
    z["jpeg_bytes"][start : start + 2] = 0  # and its SOI marker
    np.savez(p, **z)
    with pytest.raises(DataError, match=r"cifar10_jpeg_q75_train\.npz.*JPEG #1"):
        load_dataset(p)


def test_progress_bar_only_when_asked(tmp_path, capsys, monkeypatch):
    """Decoding many JPEGs shows a bar, unless ``progress=False`` (``functa --quiet``)."""
    import functa.data.cifar as cifar

    monkeypatch.setattr(cifar, "_PROGRESS_MIN", 2)
    p = tmp_path / "cifar10_jpeg_q75_train.npz"
    write_jpeg_npz(p, 4, seed=0)
    load_dataset(p, "train", progress=False)
    assert "decoding" not in capsys.readouterr().err
    load_dataset(p, "train")
    assert "decoding" in capsys.readouterr().err


def test_single_split_file_refuses_the_other_split(tmp_path):
    p = tmp_path / "cifar10_jpeg_q75_train.npz"
    write_jpeg_npz(p, 3, seed=0)
    assert load_dataset(p).meta["split"] == "train" and len(load_dataset(p, "all")) == 3
    with pytest.raises(DataError, match=r"holds the 'train' split, not 'test'"):
        load_dataset(p, "test")
