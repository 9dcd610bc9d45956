"""ArrayDataset container and load_dataset dispatch errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from functa.data import ArrayDataset, DataError, load_dataset
from functa.data import __all__ as data_all


def test_public_api():
    assert {"ArrayDataset", "DataError", "load_dataset", "read_idx"} <= set(data_all)
    assert issubclass(DataError, ValueError)


def make(n=10, labels=True):
    data = np.arange(n * 4 * 3 * 1, dtype=np.uint8).reshape(n, 4, 3, 1)
    return ArrayDataset(data, np.arange(n) % 3 if labels else None, {"kind": "image", "format": "idx"})


def test_len_getitem_take_subset():
    ds = make()
    assert len(ds) == 10 and ds.labels.dtype == np.int64
    x, y = ds[4]
    np.testing.assert_array_equal(x, ds.data[4])
    assert y == 1 and isinstance(y, int)
    batch = ds.take(np.array([3, 0, 3]))
    assert batch.shape == (3, 4, 3, 1)
    np.testing.assert_array_equal(batch[0], ds.data[3])
    sub = ds.subset([9, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [0, 1] and sub.meta == ds.meta
    assert sub.meta is not ds.meta
    assert len(ds.subset(slice(2, 5))) == 3
    nolab = make(labels=False)
    assert nolab[0][1] == -1 and nolab.subset([1]).labels is None
    json.dumps(ds.meta)


def test_label_shape_checked():
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2), {})


def test_works_with_dataloader():
    loader = torch.utils.data.DataLoader(make(), batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 4, 3, 1) and xb.dtype == torch.uint8 and yb.tolist() == [0, 1, 2, 0]


def test_missing_path_lists_formats(tmp_path):
    with pytest.raises(DataError, match=r"nope.*no such file.*idx.*cifar-npz.*image-folder.*netcdf"):
        load_dataset(tmp_path / "nope")


def test_unknown_formats(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"readme\.txt: unknown dataset format.*supported formats"):
        load_dataset(tmp_path / "readme.txt")
    with pytest.raises(DataError, match=r"no recognised dataset.*supported formats"):
        load_dataset(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match=r"broken\.npz"):
        load_dataset(tmp_path / "broken.npz")


def test_argument_validation(tmp_path):
    with pytest.raises(DataError, match="split"):
        load_dataset(tmp_path, split="validation")
    with pytest.raises(DataError, match="limit"):
        load_dataset(tmp_path, limit=0)


def test_no_unsafe_loaders_in_src():
    src = Path(__file__).resolve().parents[2] / "src" / "functa" / "data"
    for f in src.glob("*.py"):
        text = f.read_text()
        for bad in ("pickle.load(", "pickle.loads(", "allow_pickle=True", "torch.load"):
            assert bad not in text, f"{f.name} contains {bad}"
