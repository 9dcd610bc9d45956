"""idx reader: round trips and corrupt files."""

import gzip
import struct

import numpy as np
import pytest

from functa.data import DataError, load_dataset, read_idx

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
          np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}  # fmt: skip


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr, gz=False):
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_split(directory, prefix, n, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{sfx}", images, gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{sfx}", labels, gz)
    return images, labels


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, dtype, gz):
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / "a.idx", arr, gz))
    assert out.shape == (2, 3, 5) and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable copy


def test_header_is_big_endian(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"\x00\x00\x01\x00" + b"\xff\xff\xff\xfe")
    assert read_idx(p).tolist() == [256, -2]


def test_directory_train_test(tmp_path):
    tr_x, tr_y = make_split(tmp_path, "train", 12)
    te_x, te_y = make_split(tmp_path, "t10k", 5, gz=False, seed=1)
    train = load_dataset(tmp_path)
    assert train.meta["format"] == "idx" and train.data.shape == (12, 28, 28, 1)
    np.testing.assert_array_equal(train.data[..., 0], tr_x)
    np.testing.assert_array_equal(train.labels, tr_y.astype(np.int64))
    test = load_dataset(tmp_path, "test")
    np.testing.assert_array_equal(test.data[..., 0], te_x)
    both = load_dataset(tmp_path, "all", limit=14)
    assert len(both) == 14 and both.labels[12:].tolist() == te_y[:2].tolist()


def test_truncated_file(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(data[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        read_idx(p)
    msg = str(e.value)
    assert "truncated" in msg and str(4 * 784) in msg and str(4 * 784 - 100) in msg


def test_truncated_inside_gzip(tmp_path):
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5]))
    with pytest.raises(DataError, match=r"cut\.gz.*truncated"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = tmp_path / "long"
    p.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match=r"long.*need 3 bytes, found 4"):
        read_idx(p)


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad-magic"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match=r"bad-magic.*magic"):
        read_idx(p)


def test_unknown_dtype_code(tmp_path):
    p = tmp_path / "bad-code"
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match=r"bad-code.*dtype code 0x07"):
        read_idx(p)


def test_truncated_header(tmp_path):
    p = tmp_path / "short-header"
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match=r"short-header.*header"):
        read_idx(p)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(good[:12] + bytes(b ^ 0x5A for b in good[12:40]) + good[40:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*gzip"):
        read_idx(p)
    p.write_bytes(good[: len(good) // 2])  # cut mid-stream
    with pytest.raises(DataError, match="gzip"):
        read_idx(p)


def test_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*4 labels.*5 images"):
        load_dataset(tmp_path)


def test_missing_test_split(tmp_path):
    make_split(tmp_path, "train", 3)
    with pytest.raises(DataError, match="t10k-images"):
        load_dataset(tmp_path, "test")


def test_labels_file_is_not_an_image_set(tmp_path):
    p = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="not an image stack"):
        load_dataset(p)
