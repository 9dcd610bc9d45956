"""Hostile dataset files: decompression bombs and malformed headers are refused quickly, in little memory.

Every bomb is built on the fly in ``tmp_path`` (megabytes at most, in milliseconds): deflate streams of
zeros are made by repeating one independently decodable block, and sizes the header declares beyond
the data are written into the zip directory directly. Each loader -- the library function and the
``functa fit`` command, in-process -- must refuse the file with a :class:`DataError` (exit code 2) whose
message names the file, within 1 s and 200 MB of resident memory.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import pickle
import re
import struct
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from functa.cli import main
from functa.data import DataError, load_dataset, read_array_file, read_idx
from functa.data.arrays import write_binvox
from functa.data.cifar import restricted_unpickle
from functa.data.safeio import DEFAULT_MAX_ARRAY_BYTES, ENV_VAR, Npz, max_array_bytes, parse_byte_size

SECONDS = 1.0
MEGABYTES = 200
GB = 10**9


# --------------------------------------------------------------------------------------- measuring


def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmHWM") > 0
    except OSError:
        return False


_RESET_PEAK = Path("/proc/self/status").exists() and _can_reset_peak()
MEASURED: list[tuple[str, float, float]] = []


@contextlib.contextmanager
def bounded(label: str, seconds: float = SECONDS, megabytes: float = MEGABYTES):
    """The block must finish within ``seconds`` and grow the resident set by less than ``megabytes``.

    Peak RSS comes from the kernel's high-water mark (reset first through ``/proc/self/clear_refs``), or,
    where that is not allowed, from a thread sampling ``VmRSS`` every millisecond."""
    if not Path("/proc/self/status").exists():  # pragma: no cover - not Linux
        t0 = time.perf_counter()
        yield
        assert time.perf_counter() - t0 < seconds
        return
    gc.collect()
    peak = [0]
    stop = threading.Event()
    sampler = None
    if _RESET_PEAK:
        Path("/proc/self/clear_refs").write_text("5")
    else:
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _status_kb("VmRSS"))
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
    base = _status_kb("VmRSS")
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        stop.set()
        if sampler is not None:
            sampler.join()
        top = _status_kb("VmHWM") if _RESET_PEAK else max(peak[0], _status_kb("VmRSS"))
        grown = max(0, top - base) / 1024
        MEASURED.append((label, elapsed, grown))
        sys.__stdout__.write(f"\n[bomb] {label}: {elapsed * 1000:.1f} ms, RSS +{grown:.1f} MB\n")  # past capsys
    assert grown < megabytes, f"{label}: resident memory grew by {grown:.0f} MB"
    assert elapsed < seconds, f"{label}: took {elapsed:.2f} s"


def refused(label: str, fn, *args, match: str, **kwargs) -> DataError:
    """``fn(*args, **kwargs)`` raises a DataError matching ``match``, within the time and memory bounds."""
    with bounded(label):
        with pytest.raises(DataError, match=match) as e:
            fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return e.value


def test_the_bounds_are_measured():
    """The harness itself: 300 MB touched, or 1.2 s spent, inside a bounded block fails it."""
    with pytest.raises(AssertionError, match="resident memory grew"):
        with bounded("harness self-check: 300 MB"):
            a = np.ones(300 << 20, np.uint8)
            del a
    with pytest.raises(AssertionError, match="took"):
        with bounded("harness self-check: 1.2 s"):
            time.sleep(1.2)


@pytest.fixture(scope="module")
def cli_warm(tmp_path_factory):
    """Import everything ``functa fit`` needs once, so that the timed runs measure the refusal only."""
    d = tmp_path_factory.mktemp("warm")
    assert main(["--quiet", "fit", str(d / "nope"), "-o", str(d / "run")]) == 2


def cli_refuses(label: str, data: Path, tmp_path: Path, capsys, match: str) -> None:
    """``functa fit DATA`` exits with 2 and a one-line error naming the file, within the bounds."""
    capsys.readouterr()
    with bounded(f"functa fit {label}"):
        rc = main(["--quiet", "fit", str(data), "-o", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(match, err), err
    assert str(data.name) in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------ bomb makers

_BLOCK = 1 << 20


def deflate_zeros(prefix: bytes, n_zeros: int, wbits: int = -15) -> bytes:
    """A deflate stream of ``prefix`` then ``n_zeros`` zero bytes, in O(output) time.

    After a full flush the compressor forgets its history, so every further megabyte of zeros compresses to
    the same bytes: the stream is the first block, that block repeated, and the end."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(_BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(_BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == block
    full, rest = divmod(n_zeros, _BLOCK)
    return head + block * full + c.compress(bytes(rest)) + c.flush()


def deflate_random(prefix: bytes, n: int, wbits: int = -15) -> tuple[bytes, int]:
    """A deflate stream of ``prefix`` then ``n`` random bytes (incompressible: no bomb, just a lying size),
    and the CRC-32 of what it holds."""
    data = prefix + np.random.default_rng(0).bytes(n)
    c = zlib.compressobj(1, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush(), zlib.crc32(data)


def gzip_stream(deflated: bytes, size: int, crc: int = 0) -> bytes:
    """A gzip member around a raw deflate stream (CRC 0 unless given: a refusal from the header never reaches it)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


def gzip_zeros(prefix: bytes, n_zeros: int) -> bytes:
    """A gzip member holding ``prefix`` then ``n_zeros`` zeros."""
    return gzip_stream(deflate_zeros(prefix, n_zeros), len(prefix) + n_zeros)


def idx_header(dims, code=0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def npy_header(shape, dtype="|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def raw_member(zf: zipfile.ZipFile, name: str, payload: bytes, *, file_size: int, deflated: bool = True) -> None:
    """Add member ``name`` whose stored bytes are ``payload`` (already deflated) and whose zip directory entry
    declares ``file_size`` uncompressed bytes (CRC 0): how a zip bomb looks to a reader."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    with zf.open(info, "w", force_zip64=True) as w:
        w.write(payload)
    info.compress_type = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    info.file_size, info.CRC = file_size, 0  # the central directory, written at close, says so


def npz_bomb(path: Path, members: dict[str, tuple[tuple[int, ...], int]], extra: dict | None = None) -> Path:
    """An npz whose members ``name: (declared shape, zeros actually stored)`` are deflated zero streams."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for name, arr in (extra or {}).items():
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(name + ".npy", buf.getvalue(), zipfile.ZIP_DEFLATED)
        for name, (shape, stored) in members.items():
            head = npy_header(shape)
            raw_member(zf, name + ".npy", deflate_zeros(head, stored), file_size=len(head) + int(np.prod(shape)))
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels (its data would never decode: it is not needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------- the limit


def test_limit_default_env_and_keyword(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert max_array_bytes() == DEFAULT_MAX_ARRAY_BYTES == 2 << 30
    monkeypatch.setenv(ENV_VAR, "8G")
    assert max_array_bytes() == 8 << 30
    assert parse_byte_size("512MiB") == 512 << 20 and parse_byte_size("1000") == 1000
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ValueError, match=ENV_VAR):
        max_array_bytes()


def test_limit_refuses_a_genuine_file_over_it_and_keyword_raises_it(tmp_path, monkeypatch):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_header((3000, 28, 28)) + bytes(3000 * 784), 1))  # 2.35 MB decoded
    monkeypatch.setenv(ENV_VAR, "1M")
    refused("idx.gz over a lowered limit", read_idx, p, match=rf"{p.name}: idx header dims \[3000, 28, 28\].*"
            rf"more than the limit of 1048576 bytes.*{ENV_VAR}")  # fmt: skip
    assert read_idx(p, max_bytes="4M").shape == (3000, 28, 28)
    assert load_dataset(p, max_bytes=4 << 20).data.shape == (3000, 28, 28, 1)
    with pytest.raises(DataError, match="more than the limit"):
        load_dataset(p)


# ---------------------------------------------------------------------------------------------- idx


def test_idx_gz_bomb_over_the_limit(tmp_path, cli_warm, capsys):
    """The reported bomb: a 3 MB idx.gz declaring 4.2M x 28 x 28 (3.3 GB), refused from its header."""
    d = tmp_path / "mnist"
    d.mkdir()
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip_zeros(idx_header((4_200_000, 28, 28)), 4_200_000 * 784))  # the 3.3 GB it declares
    assert 2_500_000 < p.stat().st_size < 4_000_000
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_header((10,)) + bytes(10)))
    refused("idx.gz 4.2Mx28x28", read_idx, p, match=rf"{p.name}: .*3292800000 bytes.*more than the limit")
    refused("idx.gz 4.2Mx28x28 (load_dataset)", load_dataset, d, match=rf"{p.name}: .*more than the limit")
    cli_refuses("idx.gz 4.2Mx28x28", d, tmp_path, capsys, r"more than the limit")


def test_idx_gz_bomb_beyond_what_deflate_can_hold(tmp_path, monkeypatch):
    """With the limit raised, a header declaring more than ~1032x the compressed size is still refused."""
    monkeypatch.setenv(ENV_VAR, "1T")
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip_zeros(idx_header((4_200_000, 28, 28)), 100_000_000))  # 97 KB holding 100 MB of zeros
    refused("idx.gz declaring 34000x its size", read_idx, p,
            match=rf"{p.name}: the idx header .*declares 3292800016 bytes.*more than \d+ bytes of deflate data")


@pytest.mark.parametrize("stored, problem", [(4_000_000, "truncated"), (40_000_000, "trailing bytes")])
def test_idx_gz_stream_shorter_or_longer_than_declared(tmp_path, stored, problem):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    head = idx_header((10_000, 28, 28))  # declares 7.84 MB
    if stored < 7_840_000:  # random bytes: a plausible compressed size, but the stream ends early
        stream, crc = deflate_random(head, stored)
        p.write_bytes(gzip_stream(stream, len(head) + stored, crc))
    else:  # 40 MB of zeros in 40 KB: within deflate's ratio of the declared size, but more than it
        p.write_bytes(gzip_zeros(head, stored))
    refused(f"idx.gz {problem}", read_idx, p, match=rf"{p.name}: {problem}.* idx payload: header dims \[10000, 28")


def test_raw_idx_declaring_more_than_the_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(idx_header((2**31, 2**16, 28)) + bytes(100))
    refused("raw idx 2^31 x 2^16 x 28", read_idx, p, match=rf"{p.name}: .*more than the limit")
    p.write_bytes(idx_header((1000, 28, 28)) + bytes(100))
    refused("raw idx truncated", read_idx, p, match=rf"{p.name}: truncated idx payload.*need 784000 bytes, found 100")


def test_idx_with_an_empty_dimension(tmp_path, cli_warm, capsys):
    d = tmp_path / "mnist0"
    d.mkdir()
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(idx_header((5, 28, 0)))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_header((5,)) + bytes(5))
    refused("idx width 0", read_idx, p, match=rf"{p.name}: idx header declares an empty dimension \(dims \[5, 28, 0\]")
    refused("idx width 0 (load_dataset)", load_dataset, d, match=rf"{p.name}: .*empty dimension")
    cli_refuses("idx width 0", d, tmp_path, capsys, r"empty dimension")


# ---------------------------------------------------------------------------------------------- npz


def test_npz_bomb_6gb_member(tmp_path, cli_warm, capsys):
    """The reported bomb: a 6 MB npz whose deflated member inflates to 6 GB of zeros."""
    p = npz_bomb(tmp_path / "bomb.npz", {"voxels": ((5_859_375, 16, 16, 4), 6 * GB)})
    assert p.stat().st_size < 8_000_000
    match = rf"{p.name}: array 'voxels': uint8 \(5859375, 16, 16, 4\) needs 6000000000 bytes.*more than the limit"
    refused("npz 6 GB member (voxel-npz)", load_dataset, p, match=match)
    refused("npz 6 GB member (read_array_file)", read_array_file, p, "voxels", match=match)
    cli_refuses("npz 6 GB member", p, tmp_path, capsys, r"bomb\.npz: array 'voxels'.*more than the limit")


def test_npz_member_beyond_what_deflate_can_hold(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1T")
    head = npy_header((4 * GB,))
    p = tmp_path / "ratio.npz"
    with zipfile.ZipFile(p, "w") as zf:
        raw_member(zf, "data.npy", deflate_zeros(head, 1_000_000), file_size=len(head) + 4 * GB)
    refused("npz member declaring 4000x its size", load_dataset, p,
            match=rf"{p.name}: array 'data': member sizes in the zip directory are inconsistent")
    stored = tmp_path / "stored.npz"
    with zipfile.ZipFile(stored, "w") as zf:
        raw_member(zf, "data.npy", head + bytes(1000), file_size=len(head) + 4 * GB, deflated=False)
    refused("stored npz member declaring more than it holds", load_dataset, stored,
            match=rf"{stored.name}: array 'data': member sizes in the zip directory are inconsistent")


@pytest.mark.parametrize("stored, problem", [(2_000_000, r"holds 2000000 bytes of data|cannot read"),
                                             (20_000_000, r"holds more bytes|cannot read")])
def test_npz_stream_shorter_or_longer_than_declared(tmp_path, stored, problem):
    head = npy_header((10_000_000,))
    p = tmp_path / "lying.npz"
    stream = deflate_random(head, stored)[0] if stored < 10_000_000 else deflate_zeros(head, stored)
    with zipfile.ZipFile(p, "w") as zf:
        raw_member(zf, "data.npy", stream, file_size=len(head) + 10_000_000)
    refused("npz stream != declared", load_dataset, p, match=rf"{p.name}: array 'data': ({problem})")


@pytest.mark.parametrize("layout", ["array", "cifar", "grid"])
def test_npz_header_declaring_2_40_items(tmp_path, layout):
    """An npz header declaring a 2^40 shape once gave an uncaught MemoryError (np.load)."""
    key = {"array": "data", "cifar": "x_train", "grid": "t2m"}[layout]
    p = tmp_path / f"huge_{layout}.npz"
    with zipfile.ZipFile(p, "w") as zf:
        if layout == "cifar":
            for k, a in {"y_train": np.zeros(2, np.uint8), "x_test": np.zeros((1, 32, 32, 3), np.uint8),
                         "y_test": np.zeros(1, np.uint8)}.items():  # fmt: skip
                buf = io.BytesIO()
                np.save(buf, a)
                zf.writestr(k + ".npy", buf.getvalue())
        if layout == "grid":
            for k, a in {"lat": np.linspace(-80, 80, 4), "lon": np.linspace(0, 270, 4)}.items():
                buf = io.BytesIO()
                np.save(buf, a)
                zf.writestr(k + ".npy", buf.getvalue())
        shape, dtype = ((2**20, 2**20, 4, 4), "<f4") if layout == "grid" else ((2**40, 32, 32, 3), "|u1")
        zf.writestr(key + ".npy", npy_header(shape, dtype) + bytes(16), zipfile.ZIP_DEFLATED)
    refused(f"npz 2^40 header ({layout})", load_dataset, p, match=rf"{p.name}: array '{key}': header declares")


def test_npy_file_declaring_2_40_items(tmp_path, monkeypatch):
    p = tmp_path / "huge.npy"
    p.write_bytes(npy_header((2**40, 8)) + bytes(64))
    refused("npy 2^40 header", load_dataset, p, match=rf"{p.name}: truncated \.npy file: header declares")
    refused("npy 2^40 header (read_array_file)", read_array_file, p, "values", match=rf"{p.name}: truncated")
    genuine = tmp_path / "field.npy"
    np.save(genuine, np.zeros((512, 1024), np.float32))
    monkeypatch.setenv(ENV_VAR, "1M")
    refused("npy over a lowered limit (read_array_file)", read_array_file, genuine, "values",
            match=rf"{genuine.name}: float32 \(512, 1024\) needs 2097152 bytes.*more than the limit")


def test_npz_total_of_members_is_limited(tmp_path, monkeypatch):
    p = tmp_path / "two.npz"
    np.savez_compressed(p, voxels=np.zeros((40, 16, 16, 16), np.uint8), labels=np.zeros(40, np.int64))
    monkeypatch.setenv(ENV_VAR, str(40 * 4096 + 100))  # each member fits, both together do not
    with Npz(p) as z:
        z.read("voxels")
        with pytest.raises(DataError, match=rf"{p.name}: the arrays read from this archive together"):
            z.read("labels")


def test_npz_bad_members(tmp_path):
    p = tmp_path / "odd.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("data.npy", npy_header((4,)) + bytes(4), zipfile.ZIP_BZIP2)
    refused("npz bzip2 member", load_dataset, p, match=rf"{p.name}: array 'data': zip compression method 12")
    p.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: no arrays
    with pytest.raises(DataError, match=rf"{p.name}: unrecognised"):
        load_dataset(p)
    p.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match=rf"{p.name}: cannot open as \.npz archive"):
        load_dataset(p)


def test_grid_npz_reads_only_what_it_needs(tmp_path):
    """An unused member that would be a bomb does not stop a grid archive from loading (it is never decoded)."""
    p = tmp_path / "grid.npz"
    field = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
    npz_bomb(p, {"blob": ((6 * GB,), 6 * GB)},
             extra={"lat": np.linspace(-60, 60, 4), "lon": np.linspace(0, 315, 8), "t2m": field})
    with bounded("grid npz with an unused 6 GB member"):
        ds = load_dataset(p, "all", variable="t2m")
    np.testing.assert_array_equal(ds.data, field)


# -------------------------------------------------------------------------------------------- cifar


def _shared_nested_list(depth: int = 6, width: int = 100) -> list:
    lst: list = [0] * width
    for _ in range(depth):
        lst = [lst] * width  # every element the same list: width ** depth items, a few KB pickled
    return lst


def test_cifar_pickle_of_shared_nested_lists(tmp_path, cli_warm, capsys):
    """The reported bomb: a 6 KB pickle of shared nested lists that np.asarray would walk for ever."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    p = d / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": _shared_nested_list(), b"labels": _shared_nested_list()}, protocol=2))
    assert p.stat().st_size < 10_000
    refused("cifar nested lists (unpickle)", restricted_unpickle, p, match=rf"{p.name}: b'data': a list holding a list")
    refused("cifar nested lists (load_dataset)", load_dataset, d, match=rf"{p.name}: .*a list holding a list")
    cli_refuses("cifar nested lists", d, tmp_path, capsys, r"a list holding a list")


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _pickle_ops(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


@pytest.mark.parametrize(
    "payload, message",
    [
        (pickle.dumps({b"data": _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (2**40,), b"b"))}, 2),
         "_reconstruct with unexpected arguments"),
        (pickle.dumps({b"data": _Reduce(np.ndarray, ((2**33,),))}, 2), r"corrupt pickle \(TypeError"),
        (pickle.dumps({b"data": _Reduce(np.dtype, ("O8", False, True))}, 2), "not a plain numeric type"),
        (pickle.dumps({b"data": {1, 2, 3}}, 4), r"opcode .* is not allowed"),
        (_pickle_ops(b"}(", *(b"\x8a" + bytes([len(pickle.encode_long(k * (2**61 - 1)))]) + pickle.encode_long(
            k * (2**61 - 1)) + b"K\x00" for k in range(1, 50_000)), b"u"), "dict key of type int|more than 1024 keys"),
        (_pickle_ops(b"}", b"\x8a\x01\x05", b"K\x00", b"s"), "dict key of type int"),
        (pickle.dumps({b"d": {b"x": 1}}, 2), r"unexpected dict"),
        (_pickle_ops(b"\x96" + struct.pack("<Q", 2**60)), "BYTEARRAY8 of 1152921504606846976 bytes"),
        (_pickle_ops(b"}", b"p99999999999999999999\n"), "memo index 99999999999999999999 out of range"),
        (_pickle_ops(b"]", b"K\x01", b"a") * 1, "expected a dict batch"),
    ],
    ids=["reconstruct-2^40", "ndarray-call", "object-dtype", "set", "colliding-int-keys", "int-key", "nested-dict",
         "bytearray8-2^60", "memo-2^66", "not-a-dict"],
)
def test_cifar_hostile_pickles(tmp_path, payload, message):
    p = tmp_path / "data_batch_1"
    p.write_bytes(payload)
    refused(f"cifar pickle {message[:30]}", restricted_unpickle, p, match=rf"{p.name}.*{message}")


def test_cifar_pickle_opcode_budget(tmp_path, monkeypatch):
    import functa.data.cifar as cifar

    monkeypatch.setattr(cifar, "_MAX_PICKLE_OPS", 1000)
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"labels": list(range(5000))}, 2))
    refused("cifar pickle over the opcode budget", restricted_unpickle, p, match=rf"{p.name}.*more than 1000 pickle op")


def test_cifar_flat_list_and_bytes_batches_still_load(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data.reshape(-1).tolist(), b"fine_labels": [1, 2, 3], b"filenames": [b"a", b"b"]}, f)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": data.tobytes(), b"labels": [4, 5, 6]}, f, protocol=5)
    ds = load_dataset(d)
    assert ds.labels.tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(ds.data[:3], data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.data[3:], ds.data[:3])


def test_cifar_jpeg_archive_stacked_size_is_limited(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "JPEG")
    jpeg = np.frombuffer(buf.getvalue(), np.uint8)
    n = 200
    p = tmp_path / "cifar10_jpeg_train.npz"
    np.savez(p, jpeg_bytes=np.tile(jpeg, n), offsets=np.arange(n + 1) * jpeg.size, y=np.zeros(n, np.int64))
    monkeypatch.setenv(ENV_VAR, "500K")
    refused("cifar jpeg archive over the limit", load_dataset, p,
            match=rf"{p.name}: 200 decoded 32x32 RGB images needs 614400 bytes.*more than the limit")
    monkeypatch.delenv(ENV_VAR)
    assert load_dataset(p).data.shape == (n, 32, 32, 3)


def test_cifar_jpeg_declaring_a_huge_image(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # SOF0: height, width
    jpeg = np.frombuffer(bytes(raw), np.uint8)
    p = tmp_path / "cifar10_jpeg_test.npz"
    np.savez(p, jpeg_bytes=jpeg, offsets=np.array([0, jpeg.size]), y=np.zeros(1, np.int64))
    refused("cifar jpeg 30000x30000", load_dataset, p, match=rf"{p.name}: JPEG #0: image too large to decode")


# ------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("size, message", [((30000, 30000), "image too large to decode"),
                                           ((10000, 10000), "image too large to decode|larger than the limit")])
def test_png_declaring_a_huge_image(tmp_path, size, message, cli_warm, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (8, 8)).save(d / "a.png")
    (d / "b.png").write_bytes(png_header(*size))
    refused(f"png {size[0]}x{size[1]}", load_dataset, d, match=rf"b\.png: ({message})")
    cli_refuses(f"png {size[0]}x{size[1]}", d, tmp_path, capsys, message)


def test_png_bomb_with_pillow_protection_switched_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "b.png").write_bytes(png_header(30000, 30000))
    refused("png 30000x30000, MAX_IMAGE_PIXELS=None", load_dataset, d,
            match=r"b\.png: image of 30000x30000 = 900000000 pixels is larger than the limit of 89478485")


def test_image_folder_stacked_size_is_limited(tmp_path, monkeypatch):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(10):
        Image.new("L", (500, 500)).save(d / f"{i}.png")
    monkeypatch.setenv(ENV_VAR, "2M")  # one image (4 bytes a pixel: 1 MB) fits, ten grey ones (2.5 MB) do not
    refused("image folder over the limit", load_dataset, d,
            match=rf"{d.name}: 10 decoded 500x500 L images needs 2500000 bytes.*more than the limit")


def test_image_read_item_refuses_a_bomb(tmp_path):
    from functa.modalities.image import ImageModality

    p = tmp_path / "b.png"
    p.write_bytes(png_header(30000, 30000))
    refused("image read_item 30000x30000", ImageModality(height=8, width=8, channels=1).read_item, p,
            match=r"b\.png: image too large")


# ------------------------------------------------------------------------------------------- binvox


def test_binvox_limits(tmp_path, monkeypatch):
    p = tmp_path / "big.binvox"
    p.write_bytes(b"#binvox 1\ndim 1024 1024 1024\ntranslate 0 0 0\nscale 1\ndata\n" + b"\x00\xff" * 8)
    refused("binvox 1024^3 with 16 bytes of runs", load_dataset, p, match=rf"{p.name}: binvox run-length data of 16 b")
    p.write_bytes(b"#binvox 1\ndim 4096 4096 4096\ntranslate 0 0 0\nscale 1\ndata\n" + b"\x00\xff" * 8)
    refused("binvox dim 4096", load_dataset, p, match=rf"{p.name}: binvox dims 4096 4096 4096 must each be in 1..1024")
    grid = np.zeros((128, 128, 128), np.uint8)
    write_binvox(grid, p)
    monkeypatch.setenv(ENV_VAR, "1M")
    refused("binvox 128^3 over a lowered limit", load_dataset, p, match=rf"{p.name}: a binvox grid of dim 128 128 128")
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(3):
        write_binvox(np.zeros((64, 64, 64), np.uint8), folder / f"{i}.binvox")
    monkeypatch.setenv(ENV_VAR, "600K")
    refused("binvox folder over a lowered limit", load_dataset, folder, match=rf"{folder.name}: 3 binvox grids of 64x64")


# ------------------------------------------------------------------------------------------- sphere


def test_constant_field_names_the_file(tmp_path, cli_warm, capsys):
    from functa.modalities.sphere import SphereModality

    p = tmp_path / "flat.npz"
    np.savez(p, lat=np.linspace(-60, 60, 4), lon=np.linspace(0, 315, 8), t2m=np.full((5, 4, 8), 280.0, np.float32))
    with pytest.raises(DataError, match=rf"{p.name}: the field is constant \(280 everywhere\).*vmax must exceed vmin"):
        SphereModality.from_dataset(load_dataset(p, "all"))
    cli_refuses("constant field", p, tmp_path, capsys, r"vmax must exceed vmin")


# ------------------------------------------------------------------------------------ real datasets


def test_real_datasets_still_load_under_the_default_limit(shared_data, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert load_dataset(shared_data / "mnist").data.shape == (60000, 28, 28, 1)
    assert load_dataset(shared_data / "modelnet10_vox32", "all").data.shape[1:] == (32, 32, 32)
    assert load_dataset(shared_data / "cifar10", "all").data.shape == (5000, 32, 32, 3)


# ------------------------------------------------------------------------------- valid files still load


def test_valid_npz_layouts_still_load(tmp_path):
    """Fortran order, big-endian, stored and deflated members, 0-d strings: read as np.load reads them."""
    rng = np.random.default_rng(0)
    data = np.asfortranarray(rng.normal(size=(6, 5, 4)).astype(">f8"))
    p = tmp_path / "arr.npz"
    np.savez(p, data=data, labels=np.arange(6, dtype=">i4"))
    ds = load_dataset(p, "all")
    np.testing.assert_array_equal(ds.data, data)
    np.testing.assert_array_equal(ds.labels, np.arange(6))
    assert ds.data.dtype == np.float64 and ds.data.dtype.isnative and ds.data.flags.c_contiguous
    q = tmp_path / "z.npz"
    arrays = {"a": rng.integers(0, 9, (3, 7), dtype=np.uint16), "units": np.array("K"), "e": np.zeros((0, 3))}
    np.savez_compressed(q, **arrays)
    with Npz(q) as z, np.load(q) as ref:
        for k in arrays:
            got = z.read(k)
            assert got.dtype == ref[k].dtype and got.shape == ref[k].shape
            np.testing.assert_array_equal(got, ref[k])
