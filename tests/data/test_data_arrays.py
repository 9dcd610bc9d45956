"""Voxel / generic-array loaders: npz, npy, shard directories, binvox; ShardedArray; the hashed split."""

import gc
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from functa.data import (
    ArrayDataset,
    DataError,
    ShardedArray,
    hashed_test_mask,
    load_dataset,
    read_binvox,
    sniff_format,
    write_binvox,
)
from functa.data import __all__ as data_all
from functa.data.shards import NpyShard


def grids(m, shape=(4, 5, 6), seed=0):
    return (np.random.default_rng(seed).random((m, *shape)) < 0.3).astype(np.uint8)


def binvox_bytes(dims, pairs, header_extra=b""):
    head = b"#binvox 1\ndim %d %d %d\ntranslate 0 0 0\nscale 1\n" % tuple(dims) + header_extra + b"data\n"
    return head + bytes(v for pair in pairs for v in pair)


def binvox_rw_decode(raw: bytes):
    """binvox_rw.read_as_3d_array(fix_coords=True), transcribed: the reference our reader must match."""
    lines = raw.split(b"\n", 5)
    dims = [int(w) for w in lines[1].split(b" ")[1:]]
    data = np.frombuffer(lines[5], dtype=np.uint8)
    values, counts = data[::2], data[1::2]
    return np.transpose(np.repeat(values, counts).astype(bool).reshape(dims), (0, 2, 1))


def test_public_api():
    assert {"ShardedArray", "read_binvox", "write_binvox", "hashed_test_mask"} <= set(data_all)


# ------------------------------------------------------------------------------------------- binvox


@pytest.mark.parametrize("shape", [(5, 7, 3), (16, 16, 16), (1, 1, 1)])
def test_binvox_round_trip(tmp_path, shape):
    a = (np.random.default_rng(1).random(shape) < 0.4).astype(np.uint8)
    a[0] = 1  # long runs: more than 255 equal voxels in a row for the 16^3 grid
    p = tmp_path / "x.binvox"
    write_binvox(a, p)
    b = read_binvox(p)
    assert b.dtype == np.uint8 and b.shape == shape and b.flags.c_contiguous
    np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(binvox_rw_decode(p.read_bytes()), a.astype(bool))  # same axes as binvox_rw
    assert sorted(os.listdir(tmp_path)) == ["x.binvox"]  # the temporary file was renamed into place


def test_binvox_write_long_runs_and_bool(tmp_path):
    a = np.ones((8, 8, 8), dtype=bool)  # 512 ones: pairs (1, 255), (1, 255), (1, 2)
    write_binvox(a, tmp_path / "ones.binvox")
    raw = (tmp_path / "ones.binvox").read_bytes()
    assert raw.endswith(b"data\n\x01\xff\x01\xff\x01\x02")
    np.testing.assert_array_equal(read_binvox(tmp_path / "ones.binvox"), a.astype(np.uint8))


def test_binvox_hand_made_bytes(tmp_path):
    # header dims (2, 3, 4): the run is reshaped to (2, 3, 4), then axes 1 and 2 swap -> (2, 4, 3) [x, y, z]
    p = tmp_path / "h.binvox"
    p.write_bytes(binvox_bytes((2, 3, 4), [(0, 1), (1, 1), (0, 20), (1, 2)]))
    g = read_binvox(p)
    expected = np.zeros((2, 4, 3), np.uint8)
    expected[0, 1, 0] = 1  # flat index 1 -> (x=0, z=0, y=1)
    expected[1, 2, 2] = expected[1, 3, 2] = 1  # flat indices 22, 23 -> (x=1, z=2, y=2), (x=1, z=2, y=3)
    np.testing.assert_array_equal(g, expected)
    assert sniff_format(p) == "binvox"
    ds = load_dataset(p)
    assert ds.data.shape == (1, 2, 4, 3) and ds.meta["kind"] == "voxel" and ds.meta["format"] == "binvox"
    with pytest.raises(DataError, match="h.binvox: a single binvox grid has no test split"):
        load_dataset(p, "test")


def test_binvox_header_any_order_and_zero_count_pairs(tmp_path):
    # binvox_rw's writer emits a (value, 0) pair after a full 255-run that is followed by another value
    raw = b"#binvox 1\nscale 0.5\ndim 16 16 1\r\ntranslate -1 2 3.5\ndata\n" + bytes([1, 255, 1, 0, 0, 1])
    p = tmp_path / "q.binvox"
    p.write_bytes(raw)
    g = read_binvox(p)
    assert g.shape == (16, 1, 16) and g.sum() == 255 and g[15, 0, 15] == 0


def test_binvox_run_length_overflow_refused_before_allocating(tmp_path, monkeypatch):
    p = tmp_path / "over.binvox"
    p.write_bytes(binvox_bytes((4, 4, 4), [(1, 255)] * 10))
    calls = []
    real_repeat = np.repeat
    monkeypatch.setattr(np, "repeat", lambda *a, **k: calls.append(1) or real_repeat(*a, **k))
    with pytest.raises(DataError, match=r"over\.binvox: binvox run lengths add up to 2550 voxels.*needs exactly 64"):
        read_binvox(p)
    p.write_bytes(binvox_bytes((4, 4, 4), [(1, 60)]))  # too few
    with pytest.raises(DataError, match="add up to 60 voxels"):
        read_binvox(p)
    assert calls == []  # the grid was never built


def test_binvox_huge_dims_tiny_payload_never_allocates(tmp_path):
    p = tmp_path / "big.binvox"
    p.write_bytes(binvox_bytes((1024, 1024, 1024), [(0, 255)] * 4))  # claims a 1 GiB grid
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"big\.binvox: binvox run-length data of 8 bytes cannot encode"):
            read_binvox(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"#binvox 2\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "not a binvox file"),
        (b"PK\x03\x04 not binvox at all\n", "not a binvox file"),
        (b"#binvox 1\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "no dim line"),
        (b"#binvox 1\ndim 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "'dim' needs 3 integers"),
        (b"#binvox 1\ndim 2 -2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "'dim' needs 3 integers"),
        (b"#binvox 1\ndim 2 0 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", r"dims 2 0 2 must each be in 1\.\.1024"),
        (b"#binvox 1\ndim 2 2 100000\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "must each be in 1..1024"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 x 0\nscale 1\ndata\n\x00\x08", "'translate' needs 3 finite"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale nan\ndata\n\x00\x08", "'scale' needs 1 finite"),
        (b"#binvox 1\ndim 2 2 2\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x08", "unexpected line 'dim 2 2 2'"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\n", "truncated"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n", "cannot encode"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x04\x01", "whole .value, count. pairs"),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x00\x04\x02\x04", "must be 0 or 1, found 2"),
        (b"#binvox 1\ndim 2 2 2\n\xff\xfe\ndata\n\x00\x08", "non-ASCII"),
        (b"#binvox 1\n" + b"9" * 300, "longer than 256 bytes"),
        (b"", "truncated"),
    ],
)
def test_binvox_corrupt_inputs(tmp_path, raw, message):
    p = tmp_path / "bad.binvox"
    p.write_bytes(raw)
    with pytest.raises(DataError, match=r"bad\.binvox: .*" + message):
        read_binvox(p)


def test_write_binvox_refuses_bad_grids(tmp_path):
    with pytest.raises(ValueError, match="0 or 1"):
        write_binvox(np.full((2, 2, 2), 2, np.uint8), tmp_path / "a.binvox")
    with pytest.raises(ValueError, match="3-D"):
        write_binvox(np.zeros((2, 2), np.uint8), tmp_path / "a.binvox")
    with pytest.raises(ValueError, match="3-D bool or integer"):
        write_binvox(np.zeros((2, 2, 2), np.float32), tmp_path / "a.binvox")
    assert list(tmp_path.iterdir()) == []


def test_binvox_folder_classes_and_splits(tmp_path):
    g = grids(6, (3, 3, 3))
    # ModelNet layout <class>/<split>/; written out of order
    for i, (cls, split) in enumerate([("sofa", "test"), ("bed", "train"), ("sofa", "train"), ("bed", "test"),
                                      ("bed", "train"), ("sofa", "train")]):  # fmt: skip
        write_binvox(g[i], tmp_path / cls / split / f"{cls}_{i}.binvox")
    assert sniff_format(tmp_path) == "binvox-folder"
    train = load_dataset(tmp_path)
    assert train.meta["class_names"] == ["bed", "sofa"] and train.meta["split_rule"] == "folders"
    assert train.labels.tolist() == [0, 0, 1, 1] and train.data.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(train.data, g[[1, 4, 2, 5]])
    test = load_dataset(tmp_path, "test")
    np.testing.assert_array_equal(test.data, g[[3, 0]])
    assert test.labels.tolist() == [0, 1]
    full = load_dataset(tmp_path, "all")
    np.testing.assert_array_equal(full.data, g[[1, 4, 2, 5, 3, 0]])  # train before test
    assert len(load_dataset(tmp_path, limit=3)) == 3
    json.dumps(full.meta)


def test_binvox_folder_split_first_layout_and_hash_split(tmp_path):
    g = grids(40, (2, 3, 4), seed=3)
    for i in range(4):
        write_binvox(g[i], tmp_path / "a" / ("train" if i < 3 else "test") / "chair" / f"{i}.binvox")
    ds = load_dataset(tmp_path / "a", "test")
    assert ds.labels.tolist() == [0] and ds.meta["class_names"] == ["chair"]
    np.testing.assert_array_equal(ds.data[0], g[3])
    for i in range(40):  # no split folders: hashed split, unlabelled
        write_binvox(g[i], tmp_path / "b" / f"{i:02d}.binvox")
    train, test = load_dataset(tmp_path / "b"), load_dataset(tmp_path / "b", "test", test_fraction=0.3)
    assert train.labels is None and test.meta["split_rule"] == "hash"
    mask = hashed_test_mask(g, 0.3)
    np.testing.assert_array_equal(test.data, g[mask])
    np.testing.assert_array_equal(load_dataset(tmp_path / "b", test_fraction=0.3).data, g[~mask])
    assert len(train) == int((~hashed_test_mask(g, 0.1)).sum())


def test_binvox_folder_errors(tmp_path):
    write_binvox(np.zeros((2, 2, 2), np.uint8), tmp_path / "a" / "x.binvox")
    write_binvox(np.zeros((2, 2, 2), np.uint8), tmp_path / "a" / "y.binvox")
    write_binvox(np.zeros((3, 2, 2), np.uint8), tmp_path / "a" / "z.binvox")
    with pytest.raises(DataError, match=r"binvox grids of different dims \(2x2x2: 2 file\(s\), e\.g\. .*x\.binvox; "
                                        r"3x2x2: 1 file\(s\), e\.g\. .*z\.binvox\)"):  # fmt: skip
        load_dataset(tmp_path / "a", "all")
    write_binvox(np.zeros((2, 2, 2), np.uint8), tmp_path / "b" / "loose.binvox")
    write_binvox(np.zeros((2, 2, 2), np.uint8), tmp_path / "b" / "cls" / "x.binvox")
    with pytest.raises(DataError, match="mixes files in class sub-folders"):
        load_dataset(tmp_path / "b")
    write_binvox(np.zeros((2, 2, 2), np.uint8), tmp_path / "c" / "train" / "x.binvox")
    with pytest.raises(DataError, match=r"no \.binvox files in a 'test/' sub-folder"):
        load_dataset(tmp_path / "c", "test")
    (tmp_path / "d" / "c").mkdir(parents=True)
    (tmp_path / "d" / "c" / "bad.binvox").write_bytes(b"#binvox 1\ndim 2 2 2\n")
    with pytest.raises(DataError, match=r"bad\.binvox: corrupt binvox header"):
        load_dataset(tmp_path / "d")


# -------------------------------------------------------------------------------------- hashed split


def test_hashed_split_rule():
    g = grids(2000, (2, 2, 3), seed=5)
    mask = hashed_test_mask(g, 0.1)
    np.testing.assert_array_equal(mask, hashed_test_mask(g.copy(), 0.1))  # deterministic
    perm = np.random.default_rng(0).permutation(len(g))
    np.testing.assert_array_equal(hashed_test_mask(g[perm], 0.1), mask[perm])  # per item, order-independent
    for i in (0, 1, 17):
        h = int.from_bytes(hashlib.sha256(g[i].tobytes()).digest()[:8], "little")
        assert mask[i] == (h % 1000 < 100)
    # 4096 distinct grids of 12 voxels; ~10 % held out
    distinct = np.unique(g.reshape(len(g), -1), axis=0)
    assert 0.07 < hashed_test_mask(distinct.reshape(-1, 2, 2, 3), 0.1).mean() < 0.13
    assert hashed_test_mask(g, 0.2).sum() > mask.sum()
    # duplicates always share a split
    for row in distinct[:50]:
        same = np.flatnonzero((g.reshape(len(g), -1) == row).all(1))
        assert len(set(mask[same].tolist())) == 1


def make_voxel_npz(path, m=60, seed=0, compressed=True, **extra):
    v = grids(m, (4, 4, 4), seed)
    v[m // 2 :] = v[: m - m // 2]  # every item of the second half duplicates one of the first
    labels = np.arange(m) % 3
    save = np.savez_compressed if compressed else np.savez
    arrays = dict(voxels=v, labels=labels, class_names=np.array(["a", "b", "c"]))
    arrays.update(extra)
    save(path, **{k: a for k, a in arrays.items() if a is not None})
    return v, labels


def test_voxel_npz_hashed_split(tmp_path):
    p = tmp_path / "v.npz"
    v, labels = make_voxel_npz(p)
    assert sniff_format(p) == "voxel-npz"
    full, train, test = load_dataset(p, "all"), load_dataset(p), load_dataset(p, "test", test_fraction=0.3)
    assert full.meta["format"] == "voxel-npz" and full.meta["kind"] == "voxel" and full.meta["split"] == "all"
    assert full.meta["class_names"] == ["a", "b", "c"] and full.meta["files"] == [str(p)]
    assert full.data.dtype == np.uint8 and full.data.shape == (60, 4, 4, 4)
    np.testing.assert_array_equal(full.data, v)
    np.testing.assert_array_equal(full.labels, labels)
    train30 = load_dataset(p, "train", test_fraction=0.3)
    assert len(train30) + len(test) == 60 and 0 < len(test) < 30
    seen_train = {x.tobytes() for x in train30.data}
    assert not seen_train & {x.tobytes() for x in test.data}  # no duplicate leaks across the split
    mask = hashed_test_mask(v, 0.1)
    np.testing.assert_array_equal(train.data, v[~mask])
    np.testing.assert_array_equal(train.labels, labels[~mask])
    assert len(load_dataset(p, limit=5)) == 5
    json.dumps(full.meta)


def test_hashed_split_can_be_empty(tmp_path):
    v = grids(1, (2, 2, 2))
    p = tmp_path / "one.npz"
    np.savez(p, voxels=v)
    empty = "train" if hashed_test_mask(v, 0.1)[0] else "test"
    full = "train" if empty == "test" else "test"
    assert len(load_dataset(p, full)) == 1
    with pytest.raises(DataError, match=rf"one\.npz: none of the 1 items falls in the '{empty}' split"):
        load_dataset(p, empty)
    with pytest.raises(DataError, match=r"one\.npz: test_fraction must be in \(0, 1\)"):
        load_dataset(p, test_fraction=1.0)


def test_voxel_npz_bool_and_label_key(tmp_path):
    v = grids(5, (2, 3, 4)).astype(bool)
    np.savez(tmp_path / "b.npz", voxels=v, label=np.array([1, 0, 1, 0, 1], np.uint8))
    ds = load_dataset(tmp_path / "b.npz", "all")
    assert ds.data.dtype == np.uint8 and ds.labels.dtype == np.int64 and "class_names" not in ds.meta
    np.testing.assert_array_equal(ds.data, v)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(voxels=np.full((3, 2, 2, 2), 2, np.uint8)), r"values must be 0 or 1, found 2\.\.2 \(first bad item: 0\)"),
        (dict(voxels=np.array([[[[0, 1]]], [[[0, -1]]]], np.int8)), r"found -1\.\.1 \(first bad item: 1\)"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.float32)), "bool or integer occupancy"),
        (dict(voxels=np.full((3, 2, 2, 2), np.nan)), "bool or integer occupancy"),
        (dict(voxels=np.zeros((3, 2, 2), np.uint8)), r"must be \(M, X, Y, Z\), found shape \(3, 2, 2\)"),
        (dict(voxels=np.zeros((0, 2, 2, 2), np.uint8)), "no items"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), labels=np.zeros(2, int)), r"labels must have shape \(3,\)"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), labels=np.zeros(3)), "labels must be integers"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), labels=-np.ones(3, int)), "labels must be >= 0"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), label=np.zeros(3, int), labels=np.zeros(3, int)), "both"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), labels=np.array([0, 1, 2]), class_names=np.array(["a", "b"])),
         "label 2 has no entry in class_names"),
        (dict(voxels=np.zeros((3, 2, 2, 2), np.uint8), class_names=np.arange(3)), "class_names' must be a 1-D array"),
    ],
)
def test_voxel_npz_malformed(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=r"bad\.npz: .*" + message):
        load_dataset(p, "all")


def test_voxel_npz_object_array_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, voxels=np.zeros((3, 2, 2, 2), np.uint8), labels=np.array([0, "x", None], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz: array 'labels': holds Python objects"):
        load_dataset(p)


def test_npz_header_lying_about_shape_refused_before_reading(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 4, 4, 4), np.uint8))
    member = buf.getvalue().replace(b"(3, 4, 4, 4), }   ", b"(9000, 4, 4, 4), }")  # same header size, 3000x the data
    assert b"(9000, 4, 4, 4)" in member
    p = tmp_path / "lie.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:  # a valid archive (CRCs match) with a lying header
        zf.writestr("voxels.npy", member)
    with pytest.raises(DataError, match=r"lie\.npz: array 'voxels': header declares uint8 \(9000, 4, 4, 4\)"):
        load_dataset(p)


@pytest.mark.parametrize("compressed", [True, False])
def test_npz_truncated_or_corrupted_always_data_error(tmp_path, compressed):
    good = tmp_path / "good.npz"
    make_voxel_npz(good, m=20, compressed=compressed)
    raw = good.read_bytes()
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    cuts = sorted(set(np.linspace(1, len(raw) - 1, 40).astype(int).tolist()))
    variants = [raw[:c] for c in cuts]
    for _ in range(40):
        b = bytearray(raw)
        b[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        variants.append(bytes(b))
    for v in variants:
        bad.write_bytes(v)
        try:
            load_dataset(bad, "all")
        except DataError as e:
            assert "bad.npz" in str(e)


def test_array_npz(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 5, 2)).astype(np.float32)
    p = tmp_path / "arr.npz"
    np.savez(p, data=data, labels=np.arange(30) % 2)
    assert sniff_format(p) == "array-npz"
    ds = load_dataset(p, "all")
    assert ds.meta["kind"] == "array" and ds.meta["format"] == "array-npz" and ds.data.dtype == np.float32
    np.testing.assert_array_equal(ds.data, data)
    train, test = load_dataset(p), load_dataset(p, "test", test_fraction=0.4)
    np.testing.assert_array_equal(test.data, data[hashed_test_mask(data, 0.4)])
    assert len(train) == int((~hashed_test_mask(data, 0.1)).sum())
    np.savez(p, data=data.astype(">f8"))  # big-endian: converted, hashed as little-endian
    ds = load_dataset(p, "all")
    assert ds.data.dtype == np.float64 and ds.data.dtype.isnative
    np.savez(p, data=np.where(data > 1, np.nan, data))
    with pytest.raises(DataError, match=r"arr\.npz: array 'data': data has \d+ non-finite"):
        load_dataset(p)
    np.savez(p, data=np.array(["a", "b"]))
    with pytest.raises(DataError, match="must be bool, integer or float"):
        load_dataset(p)
    np.savez(p, other=np.zeros(3))
    with pytest.raises(DataError, match=r"arr\.npz: unrecognised \.npz layout"):
        load_dataset(p)


# ----------------------------------------------------------------------------------- ShardedArray


def shard_list(sizes, item=(2, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 100, size=(n, *item)).astype(np.int16) for n in sizes]


def test_sharded_array_indexing_matches_concatenate():
    parts = shard_list([3, 0, 4, 1, 5])
    sa, full = ShardedArray(parts), np.concatenate(parts)
    assert sa.shape == full.shape == (13, 2, 3) and sa.dtype == np.int16 and sa.ndim == 3 and len(sa) == 13
    for i in (0, 2, 3, 6, 7, 12, -1, -13):
        np.testing.assert_array_equal(sa[i], full[i])
        np.testing.assert_array_equal(sa[np.int64(i)], full[i])
    for s in (slice(None), slice(2, 9), slice(1, 12, 3), slice(None, None, -2), slice(5, 2), slice(-4, None)):
        np.testing.assert_array_equal(sa[s], full[s])
    idx = np.array([12, 0, 7, 2, 3, 3, 8, -1, 6])  # across every shard boundary, repeated, negative
    out = sa[idx]
    assert type(out) is np.ndarray and out.flags.writeable
    np.testing.assert_array_equal(out, full[idx])
    np.testing.assert_array_equal(sa[[4, 1]], full[[4, 1]])
    assert sa[np.array([], dtype=np.int64)].shape == (0, 2, 3)
    np.testing.assert_array_equal(np.asarray(sa), full)
    view = sa.range(2, 11)
    assert isinstance(view, ShardedArray) and len(view) == 9
    np.testing.assert_array_equal(view[np.arange(9)], full[2:11])
    assert len(sa.range(5, 5)) == 0
    for bad in (13, -14):
        with pytest.raises(IndexError):
            sa[bad]
    with pytest.raises(IndexError):
        sa[np.array([0, 13])]
    with pytest.raises(TypeError):
        sa[np.array([0.5])]
    with pytest.raises(TypeError):
        sa[True]
    with pytest.raises(TypeError):
        sa[0, 1]  # not numpy's multi-axis meaning: refused rather than read as items [0, 1]
    with pytest.raises(ValueError):
        ShardedArray([parts[0], parts[2].astype(np.int32)])


def test_array_dataset_on_lazy_data(tmp_path):
    parts = shard_list([4, 3])
    for k, a in enumerate(parts):
        np.save(tmp_path / f"s{k}.npy", a)
    sa = ShardedArray([np.load(tmp_path / f"s{k}.npy", mmap_mode="r") for k in range(2)])
    ds = ArrayDataset(sa, np.arange(7), {})
    assert ds.data is sa and ds.lazy and ds.shape == (2, 3) and len(ds) == 7
    full = np.concatenate(parts)
    np.testing.assert_array_equal(ds.take([6, 0, 4]), full[[6, 0, 4]])
    item, label = ds[5]
    np.testing.assert_array_equal(item, full[5])
    assert label == 5
    sub = ds.subset([3, 4])
    assert not sub.lazy and type(sub.data) is np.ndarray and sub.labels.tolist() == [3, 4]
    np.testing.assert_array_equal(sub.data, full[3:5])
    mm = ArrayDataset(np.load(tmp_path / "s0.npy", mmap_mode="r"))
    assert mm.lazy and isinstance(mm.data, np.memmap)
    for x in (mm[1][0], mm.take([1, 2]), mm.subset(slice(0, 2)).data):
        assert type(x) is np.ndarray and x.flags.writeable  # copied out of the read-only map
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 2, 3) and yb.tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- npy


def test_npy_file_is_lazy_with_tail_split(tmp_path):
    a = np.random.default_rng(0).normal(size=(20, 3, 2)).astype(np.float32)
    p = tmp_path / "x.npy"
    np.save(p, a)
    np.save(tmp_path / "x.labels.npy", np.arange(20) % 4)
    assert sniff_format(p) == "npy"
    train, test, full = load_dataset(p), load_dataset(p, "test"), load_dataset(p, "all")
    assert isinstance(train.data, ShardedArray) and train.lazy and train.meta["kind"] == "array"
    assert len(train.data.shards) == 1 and isinstance(train.data.shards[0], NpyShard)  # a file shard, not a memmap
    assert len(train) == 18 and len(test) == 2 and test.meta["item_range"] == [18, 20]
    np.testing.assert_array_equal(test.take([0, 1]), a[18:])
    np.testing.assert_array_equal(test.labels, [2, 3])
    np.testing.assert_array_equal(full.data, a)
    assert full.meta["files"] == [str(p), str(tmp_path / "x.labels.npy")]
    assert len(load_dataset(p, "test", limit=1)) == 1
    json.dumps(full.meta)


def test_npy_bool_4d_is_voxel(tmp_path):
    v = grids(6, (2, 2, 3)).astype(bool)
    np.save(tmp_path / "v.npy", v)
    ds = load_dataset(tmp_path / "v.npy", "all")
    assert ds.meta["kind"] == "voxel" and ds.data.dtype == np.uint8 and isinstance(ds.data, ShardedArray) and ds.lazy
    np.testing.assert_array_equal(ds.take(np.arange(6)), v)
    np.save(tmp_path / "u.npy", v.astype(np.uint8))  # uint8 is not scanned, so it stays a generic array
    assert load_dataset(tmp_path / "u.npy").meta["kind"] == "array"


def test_npy_malformed(tmp_path):
    p = tmp_path / "bad.npy"
    np.save(p, np.zeros((10, 4), np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[:-3])
    with pytest.raises(DataError, match=r"bad\.npy: truncated \.npy file: header declares float32 \(10, 4\)"):
        load_dataset(p)
    p.write_bytes(raw + b"xx")
    with pytest.raises(DataError, match="trailing bytes"):
        load_dataset(p)
    p.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"bad\.npy: not a valid \.npy array"):
        load_dataset(p)
    np.save(p, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        load_dataset(p)
    np.save(p, np.zeros((4, 2), ">f4"))
    with pytest.raises(DataError, match="non-native byte order"):
        load_dataset(p)
    np.save(p, np.zeros((0, 2), np.float32))
    with pytest.raises(DataError, match="no items"):
        load_dataset(p)
    np.save(p, np.zeros((4, 2), np.float32))
    np.save(tmp_path / "bad.labels.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"bad\.labels\.npy \(labels of bad\.npy, 4 items\): labels must have shape"):
        load_dataset(p)


# --------------------------------------------------------------------------------------- npy shards


def write_shards(d, sizes, item=(2, 3), labels=True, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    parts = shard_list(sizes, item, seed)
    for k, a in enumerate(parts):
        np.save(d / f"part{k:03d}.npy", a)
        if labels:
            np.save(d / f"part{k:03d}.labels.npy", np.full(len(a), k))
    return parts


def test_shard_directory_is_lazy(tmp_path):
    parts = write_shards(tmp_path, [300, 200], item=(32, 32))  # 2 shards of int16, 1 MiB in all
    assert sniff_format(tmp_path) == "npy-shards"
    tracemalloc.start()
    try:
        ds = load_dataset(tmp_path, "all")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # only the headers were read
    assert isinstance(ds.data, ShardedArray) and all(isinstance(s, NpyShard) for s in ds.data.shards)
    assert ds.meta["format"] == "npy-shards" and ds.meta["n_shards"] == 2 and ds.meta["kind"] == "array"
    tracemalloc.start()
    try:
        batch, sub = ds.take([299, 300, 0, 499]), ds.subset([1, 301])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # O(batch): a few 2 KiB items, not the 1 MiB of shards
    full = np.concatenate(parts)
    np.testing.assert_array_equal(batch, full[[299, 300, 0, 499]])
    np.testing.assert_array_equal(sub.data, full[[1, 301]])
    assert ds.labels.tolist() == [0] * 300 + [1] * 200
    # the data is read from the files when indexed: rewriting a shard in place shows through
    mm = np.load(tmp_path / "part001.npy", mmap_mode="r+")
    mm[0] = 7
    mm.flush()
    del mm
    np.testing.assert_array_equal(ds[300][0], np.full((32, 32), 7, np.int16))
    train, test = load_dataset(tmp_path), load_dataset(tmp_path, "test")
    assert len(train) == 450 and len(test) == 50 and test.meta["item_range"] == [450, 500]
    assert isinstance(test.data, ShardedArray) and test.labels.tolist() == [1] * 50
    assert len(load_dataset(tmp_path, limit=7)) == 7
    json.dumps(ds.meta)


def test_shard_train_test_dirs_and_meta_json(tmp_path):
    tr = write_shards(tmp_path / "train", [3, 2], item=(2, 2, 2), labels=False)
    te = write_shards(tmp_path / "test", [2], item=(2, 2, 2), labels=False, seed=1)
    tr = [(a % 2).astype(np.uint8) for a in tr]
    te = [(a % 2).astype(np.uint8) for a in te]
    for k, a in enumerate(tr):
        np.save(tmp_path / "train" / f"part{k:03d}.npy", a)
    np.save(tmp_path / "test" / "part000.npy", te[0])
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "voxel", "class_names": ["chair"]}))
    train, test, full = load_dataset(tmp_path), load_dataset(tmp_path, "test"), load_dataset(tmp_path, "all")
    assert train.meta["kind"] == "voxel" and train.meta["class_names"] == ["chair"]
    assert train.meta["split_rule"] == "folders" and len(train) == 5 and len(test) == 2
    np.testing.assert_array_equal(full.take(np.arange(7)), np.concatenate(tr + te))
    np.testing.assert_array_equal(test.take([1, 0]), te[0][[1, 0]])
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "voxel", "classes": []}))
    with pytest.raises(DataError, match=r"meta\.json: unknown keys \['classes'\]"):
        load_dataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "mesh"}))
    with pytest.raises(DataError, match=r"meta\.json: 'kind' must be one of"):
        load_dataset(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json: cannot read as JSON"):
        load_dataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"class_names": "chair"}))
    with pytest.raises(DataError, match="list of strings"):
        load_dataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "voxel"}))
    np.save(tmp_path / "test" / "part000.npy", te[0].astype(np.float32))
    with pytest.raises(DataError, match=r"test/part000\.npy: shard holds float32 items .* part000\.npy holds uint8"):
        load_dataset(tmp_path)


def test_shard_directory_errors(tmp_path):
    write_shards(tmp_path / "a", [3, 2])
    np.save(tmp_path / "a" / "part002.npy", np.zeros((2, 2, 4), np.int16))
    with pytest.raises(DataError, match=r"part002\.npy: shard holds int16 items of shape \(2, 4\), but part000\.npy"):
        load_dataset(tmp_path / "a")
    np.save(tmp_path / "a" / "part002.npy", np.zeros((2, 2, 3), np.int16))
    with pytest.raises(DataError, match=r"part002\.npy: no part002\.labels\.npy beside it.*every shard or for none"):
        load_dataset(tmp_path / "a")
    np.save(tmp_path / "a" / "part002.labels.npy", np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"part002\.labels\.npy \(labels of part002\.npy, 2 items\)"):
        load_dataset(tmp_path / "a")
    write_shards(tmp_path / "b" / "train", [2])
    with pytest.raises(DataError, match=r"no \.npy shards in 'test/'"):
        load_dataset(tmp_path / "b", "test")
    write_shards(tmp_path / "b", [2])
    with pytest.raises(DataError, match="mixes shards"):
        load_dataset(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "s.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(DataError, match=r"s\.npy: not a valid \.npy array"):
        load_dataset(tmp_path / "c")
    write_shards(tmp_path / "d", [2], item=(2, 2, 2), labels=False)
    (tmp_path / "d" / "meta.json").write_text(json.dumps({"kind": "voxel"}))  # int16 is not occupancy
    with pytest.raises(DataError, match="kind 'voxel' needs bool or uint8"):
        load_dataset(tmp_path / "d")


# ----------------------------------------------------------------------- file shards: positional reads


def npy_shard(path):
    """An NpyShard for a .npy file, from numpy's own header reader."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        assert not fortran
        return NpyShard(path, f.tell(), shape[0], shape[1:], dtype)


def run_python(script, *args, timeout=240):
    """Run ``script`` in a fresh interpreter (clean of this process's memory history); its stdout."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_file_shards_match_concatenate(tmp_path):
    sizes = [7, 0, 1, 13, 5, 0, 20, 2]
    parts = write_shards(tmp_path, sizes, item=(3, 2), labels=False, seed=4)
    full = np.concatenate(parts)
    ds = load_dataset(tmp_path, "all")
    direct = ShardedArray([npy_shard(tmp_path / f"part{k:03d}.npy") for k in range(len(sizes))])
    mixed = ShardedArray([p if k % 2 else npy_shard(tmp_path / f"part{k:03d}.npy") for k, p in enumerate(parts)])
    rng = np.random.default_rng(0)
    n = len(full)
    for sa in (ds.data, direct, mixed):
        assert sa.shape == full.shape and sa.dtype == full.dtype and sa.ndim == 3 and len(sa) == n
        assert repr(sa).startswith(f"ShardedArray(shape={full.shape}, dtype=int16")
        for _ in range(30):  # random, unsorted, repeated, negative, across every shard boundary
            idx = rng.integers(-n, n, size=int(rng.integers(1, 3 * n)))
            out = sa[idx]
            assert type(out) is np.ndarray and out.flags.writeable and out.flags.c_contiguous
            np.testing.assert_array_equal(out, full[idx])
        runs = np.concatenate([np.arange(5, 30), np.arange(2, 9), [8, 8, 7], np.arange(n - 1, -1, -1)])
        np.testing.assert_array_equal(sa[runs], full[runs])  # consecutive runs spanning shards, reversed
        np.testing.assert_array_equal(sa[runs.tolist()], full[runs])
        for sl in (slice(None), slice(3, 40), slice(1, None, 3), slice(None, None, -1), slice(40, 2, -7),
                   slice(-5, None), slice(6, 6), slice(30, 2), slice(100, 200), slice(None, None, 1000)):  # fmt: skip
            np.testing.assert_array_equal(sa[sl], full[sl])
        for i in (0, 6, 7, 8, 20, 21, n - 1, -1, -n):
            assert sa[i].shape == (3, 2)
            np.testing.assert_array_equal(sa[i], full[i])
        assert sa[np.array([], dtype=np.int64)].shape == (0, 3, 2)
        assert sa[[]].shape == (0, 3, 2)
        np.testing.assert_array_equal(np.asarray(sa), full)
        np.testing.assert_array_equal(np.asarray(sa, dtype=np.float32), full.astype(np.float32))
        view = sa.range(6, 45).range(2, 30)  # a view of a view: items 8 .. 36
        np.testing.assert_array_equal(view[:], full[8:36])
        np.testing.assert_array_equal(view[np.array([27, 0, 13, 13])], full[[35, 8, 21, 21]])
        empty = sa.range(9, 9)
        assert len(empty) == 0 and empty[:].shape == (0, 3, 2) and np.asarray(empty).shape == (0, 3, 2)
        with pytest.raises(IndexError):
            sa[n]
        with pytest.raises(IndexError):
            sa[np.array([0, -n - 1])]
        with pytest.raises(TypeError):
            sa[0, 1]
        with pytest.raises(TypeError):
            sa[np.zeros((2, 2), np.int64)]
    with pytest.raises(ValueError):
        ShardedArray([npy_shard(tmp_path / "part000.npy"), parts[1].astype(np.int32)])
    one = ShardedArray([npy_shard(tmp_path / "part006.npy")])  # 1-D items and 0-d results
    np.testing.assert_array_equal(one.range(3, 9)[::2], parts[6][3:9:2])


def test_file_shards_scalar_items_and_voxel_view(tmp_path):
    a = np.arange(50, dtype=np.float64) / 7
    np.save(tmp_path / "s.npy", a)
    sa = load_dataset(tmp_path / "s.npy", "all").data
    assert sa.shape == (50,) and sa[3].shape == () and sa[3] == a[3] and type(sa[3]) is np.ndarray
    np.testing.assert_array_equal(sa[[49, 0, 1, 2, 2]], a[[49, 0, 1, 2, 2]])
    v = grids(5, (2, 3, 4), seed=2).astype(bool)
    np.save(tmp_path / "v.npy", v)
    ds = load_dataset(tmp_path / "v.npy", "all")
    assert ds.data.dtype == np.uint8 and ds.data.shards[0].dtype == np.uint8
    np.testing.assert_array_equal(ds.data[::-1], v[::-1].astype(np.uint8))


def test_file_shards_read_runs_at_once_and_map_nothing(tmp_path, monkeypatch):
    parts = write_shards(tmp_path, [10, 10, 10], item=(4,), labels=False)
    full = np.concatenate(parts)
    sa = load_dataset(tmp_path, "all").data
    calls = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off, *a: calls.append(off) or real(fd, bufs, off, *a))
    np.testing.assert_array_equal(sa[np.arange(3, 25)], full[3:25])
    assert len(calls) == 3  # one read per shard touched
    calls.clear()
    np.testing.assert_array_equal(sa[[5, 6, 7, 2, 9, 10, 11]], full[[5, 6, 7, 2, 9, 10, 11]])
    assert len(calls) == 4  # runs [5, 6, 7], [2], [9] | [10, 11]
    calls.clear()
    np.testing.assert_array_equal(sa[4:17], full[4:17])
    assert len(calls) == 2
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            assert str(tmp_path) not in f.read()  # nothing of the shards is mapped into the process


def test_file_shards_pickle_fds_and_changed_files(tmp_path):
    parts = write_shards(tmp_path, [4] * 100, item=(3,), labels=False)
    full = np.concatenate(parts)
    sa = load_dataset(tmp_path, "all").data
    idx = np.random.default_rng(1).permutation(len(full))
    np.testing.assert_array_equal(sa[idx], full[idx])
    raw = pickle.dumps(sa)
    assert len(raw) < 40_000  # the shard descriptions, not the data
    np.testing.assert_array_equal(pickle.loads(raw)[idx], full[idx])

    def open_here():
        fd_dir = "/proc/self/fd"
        if not os.path.isdir(fd_dir):
            return 0
        links = []
        for name in os.listdir(fd_dir):
            try:
                links.append(os.readlink(os.path.join(fd_dir, name)))
            except OSError:
                pass
        return sum(link.startswith(str(tmp_path)) for link in links)

    assert open_here() <= 64  # a bounded cache of descriptors, not one per shard
    # a shard rewritten in place is read as it is now; one cut short raises a DataError naming it
    mm = np.load(tmp_path / "part050.npy", mmap_mode="r+")
    mm[:] = -1
    mm.flush()
    del mm
    np.testing.assert_array_equal(sa[200:204], np.full((4, 3), -1, np.int16))
    with open(tmp_path / "part051.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "part051.npy") - 1)
    with pytest.raises(DataError, match=r"part051\.npy: the file ends at byte \d+"):
        sa[207]
    np.testing.assert_array_equal(sa[203], np.full(3, -1, np.int16))  # the other shards still read
    with pytest.raises(DataError, match=r"part051\.npy: truncated \.npy file"):
        load_dataset(tmp_path)
    del sa
    gc.collect()
    assert open_here() == 0  # closed with the arrays


def test_npy_fortran_order_and_0d_refused(tmp_path):
    p = tmp_path / "f.npy"
    np.save(p, np.asfortranarray(np.zeros((4, 3), np.float32)))
    with pytest.raises(DataError, match=r"f\.npy: Fortran-order float32 \(4, 3\) array"):
        load_dataset(p)
    np.save(p, np.asfortranarray(np.arange(4.0)))  # 1-D: the same layout, accepted
    np.testing.assert_array_equal(load_dataset(p, "all").data[:], np.arange(4.0))
    np.save(p, np.float32(3))
    with pytest.raises(DataError, match=r"f\.npy: no items \(shape \(\)\)"):
        load_dataset(p)


RSS_SCRIPT = """
    import os, resource, sys
    from pathlib import Path
    import numpy as np
    from functa.data import ShardedArray, load_dataset

    root, how = Path(sys.argv[1]), sys.argv[2]
    if how == "memmap":  # the control: shards read through memory maps
        data = ShardedArray([np.load(p, mmap_mode="r") for p in sorted(root.glob("*.npy"))])
    else:
        data = load_dataset(root, "all").data
    order = np.random.default_rng(0).permutation(len(data))
    # Read in a forked child: its ru_maxrss starts at its resident size, free of the peaks of the imports and
    # of the parent processes (a process's ru_maxrss carries over the pre-exec peak of the process it came from).
    r, w = os.pipe()
    if os.fork() == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        total = 0
        for s in range(0, len(data), 64):
            total += int(data[order[s : s + 64]].sum(dtype=np.uint64))
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        os.write(w, f"{total} {growth}".encode())
        os._exit(0)
    os.close(w)
    print(os.read(r, 100).decode())
    assert os.wait()[1] == 0
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB, fork: Linux")
def test_reading_every_item_keeps_peak_rss_bounded(tmp_path):
    rng = np.random.default_rng(0)
    total = 0
    for k in range(8):  # 8 shards of 1024 items of 8 KiB: 64 MiB
        a = rng.integers(0, 256, size=(1024, 8, 32, 32), dtype=np.uint8)
        np.save(tmp_path / f"part{k}.npy", a)
        total += int(a.sum(dtype=np.uint64))
    got, growth = map(int, run_python(RSS_SCRIPT, tmp_path, "pread").split())
    assert got == total  # every item was read, in random batches of 64
    assert growth < 32 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB while reading a 64 MiB dataset"
    # the measurement does see mapped pages: read through memory maps, the whole 64 MiB stays resident
    got, growth = map(int, run_python(RSS_SCRIPT, tmp_path, "memmap").split())
    assert got == total and growth > 48 * 2**20, f"memmap control: peak RSS grew by only {growth / 2**20:.1f} MiB"


FD_SCRIPT = """
    import os, resource, sys
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
    import numpy as np
    from functa.data import load_dataset

    ds = load_dataset(sys.argv[1], "all")
    order = np.random.default_rng(0).permutation(len(ds))
    total = sum(int(ds.take(order[s : s + 64]).sum(dtype=np.int64)) for s in range(0, len(ds), 64))
    print(total, int(np.asarray(ds.data).sum(dtype=np.int64)), int(ds.labels.sum()), len(os.listdir("/proc/self/fd")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE and /proc: Linux")
def test_more_shards_than_the_open_file_limit(tmp_path):
    parts = write_shards(tmp_path, [5] * 300, item=(4, 4))  # 300 shards and 300 label files, limit 40
    total = int(np.concatenate(parts).sum(dtype=np.int64))
    labels = sum(5 * k for k in range(300))
    gathered, whole, label_sum, n_open = map(int, run_python(FD_SCRIPT, tmp_path, 40).split())
    assert gathered == whole == total and label_sum == labels and n_open <= 40


# --------------------------------------------------------------------------------------- real data


def test_modelnet_vox32_real(shared_data):
    path = shared_data / "modelnet10_vox32" / "modelnet10_chair_monitor_vox32.npz"
    full, train, test = load_dataset(path, "all"), load_dataset(path), load_dataset(path, "test")
    assert full.meta["format"] == "voxel-npz" and full.meta["kind"] == "voxel"
    assert full.data.shape == (1354, 32, 32, 32) and full.data.dtype == np.uint8 and full.data.max() == 1
    names = full.meta["class_names"]
    assert len(names) == 10 and names[2] == "chair" and names[5] == "monitor"
    assert np.bincount(full.labels, minlength=10)[[2, 5]].tolist() == [889, 465]
    # the fixed hashed split (test_fraction 0.1)
    assert len(train) == 1218 and len(test) == 136
    assert np.bincount(train.labels, minlength=10)[[2, 5]].tolist() == [794, 424]
    assert np.bincount(test.labels, minlength=10)[[2, 5]].tolist() == [95, 41]
    train_items = {x.tobytes() for x in train.data}
    test_items = {x.tobytes() for x in test.data}
    assert len(train_items) + len(test_items) == 1290  # PROVENANCE: 1290 unique grids
    assert not train_items & test_items  # duplicate shapes never straddle the split
    assert abs(full.data[full.labels == 2].mean() - 0.060) < 0.005  # chair occupancy 6.0 %
    json.dumps(full.meta)
