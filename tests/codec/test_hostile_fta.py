"""Hostile ``.fta`` files: crafted headers, corrupt payloads and a bounded fuzz run (issue 11).

The CRC-32 is no defence (anyone recomputes it, here via :func:`pack`), so the decoder itself
must refuse, fast and without allocating, items larger than ``max_output_points`` and headers
asking for more patches than the payload can hold, and turn every range-decoder failure into a
:class:`CodecError`.
"""

import os
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from functa.cli import build_parser, main
from functa.codec import MAX_OUTPUT_POINTS, CodecError, FactorizedModel, pack, unpack
from functa.codec.coin import CoinCodec, CoinConfig
from functa.codec.container import MAX_POINTS
from functa.compression import read_fta

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import fuzz  # noqa: E402
import fuzz_fta  # noqa: E402

CRAFTED = [(2**20, 2**11), (16384, 16384), (16384, 29)]  # 2^31 points; 3 GB in 15 s before; 38 bytes, 12.7 s
FAST_TMP = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None  # the fuzz driver copies files per input


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A fuzz target with its three codecs loaded and its seed directory of one ``.fta`` per model."""
    target = fuzz_fta.FtaTarget()
    directory = target.make_seed(tmp_path_factory.mktemp("hostile"))
    return target, directory


def _crafted(seed, kind, shape):
    _, directory = seed
    header, payload = unpack((directory / f"{kind}.fta").read_bytes())
    return pack(replace(header, shape=shape), payload)


def _refused_quickly(decode, match):
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(CodecError, match=match):
            decode()
        elapsed, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 64 * 2**20, (elapsed, peak)


@pytest.mark.parametrize("kind", fuzz_fta.MODELS)
@pytest.mark.parametrize("shape", CRAFTED)
def test_crafted_shapes_are_refused_fast_without_allocating(seed, kind, shape):
    codec = seed[0].codecs[kind]
    data = _crafted(seed, kind, shape)
    too_large = np.prod([-(-s // 8) * 8 for s in shape]) > MAX_OUTPUT_POINTS
    _refused_quickly(lambda: codec.decompress(data), "more than the limit" if too_large else "cannot hold")
    # lifting the output limit to all the format allows still leaves the payload too short
    _refused_quickly(lambda: codec.decompress(data, max_output_points=MAX_POINTS), "cannot hold")


def test_declared_size_limit_and_override(seed, tmp_path):
    target, directory = seed
    codec, path = target.codecs["per_dimension"], directory / "per_dimension.fta"
    assert read_fta(codec, path).shape == (20, 28, 3)
    padded = 24 * 32  # 20x28 in whole 8x8 patches
    assert read_fta(codec, path, max_output_points=padded).shape == (20, 28, 3)
    with pytest.raises(CodecError, match=f"{path}: .*20x28 item \\({padded} points.*limit of {padded - 1}"):
        read_fta(codec, path, max_output_points=padded - 1)
    args = build_parser().parse_args(["decompress", str(path), "-m", "codec", "-o", "out.png"])
    assert args.max_output_points == MAX_OUTPUT_POINTS


@pytest.mark.parametrize("kind", fuzz_fta.MODELS)
def test_range_decoder_failures_become_codec_errors(seed, kind):
    header, _ = unpack((seed[1] / f"{kind}.fta").read_bytes())
    data = pack(replace(header, shape=(8, 8)), b"\xff" * 12)  # not reachable by the encoder: constriction asserts
    with pytest.raises(CodecError, match="range decoder"):
        seed[0].codecs[kind].decompress(data)


def test_raw16_coin_files_are_limited_too():
    coin = CoinCodec(CoinConfig(width=4, hidden_layers=1, steps=1))
    data = coin.compress_many(np.zeros((1, 4, 4, 3), np.uint8))[0]
    header, payload = unpack(data)
    assert coin.decompress(data).shape == (4, 4, 3)
    crafted = pack(replace(header, shape=(2**20, 2**11)), payload)
    _refused_quickly(lambda: coin.decompress(crafted), "more than the limit")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([2, 3, 32, 1024]), st.integers(1, 6), st.sampled_from([0, 10, 10**4, 10**9]),
       st.sampled_from(["zeros", "likeliest", "rarest", "random"]), st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_the_payload_bound_never_refuses_a_genuine_payload(levels, dim, skew, message, count, seed):
    """Skewed tables and runs of their likeliest (cheapest) or first symbol (all-zero words) are the
    genuine payloads closest to the bound; every one must decode."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, size=(dim, levels))
    counts[np.arange(dim), rng.integers(0, levels, size=dim)] += skew
    model = FactorizedModel("per_dimension", torch.from_numpy(counts))
    table = model.table(dim)
    pick = {"zeros": np.zeros(dim, np.int64), "likeliest": table.argmax(1), "rarest": table.argmin(1)}
    msg = np.tile(pick[message], (count, 1)) if message in pick else rng.integers(0, levels, size=(count, dim))
    data = model.encode(torch.from_numpy(msg))
    assert np.array_equal(model.decode(data, count, dim).numpy(), msg)


def test_bounded_fuzz_run_is_clean(seed):
    report = fuzz.run(fuzz_fta.FtaTarget(), 2000, 1, time_limit_s=2.0, memory_limit_mb=500.0, workdir=FAST_TMP)
    assert report.count == 2000
    assert (report.failures, report.over_time, report.over_memory) == ({}, 0, 0), report.examples[:3]
    assert report.passed_ok > 0 and report.passed_library_error > 0


def test_cli_refuses_the_crafted_file_in_one_line(seed, tmp_path, capsys):
    dos, out = tmp_path / "dos.fta", tmp_path / "y.png"
    dos.write_bytes(_crafted(seed, "histogram", (2**20, 2**11)))
    codec_dir = seed[1].parent / "codecs" / "histogram"
    lifted = ["--max-output-points", str(MAX_POINTS)]
    for extra, why in (([], "more than the limit of 33554432"), (lifted, "cannot hold")):
        capsys.readouterr()
        assert main(["decompress", str(dos), "-m", str(codec_dir), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"functa decompress: error: {dos}: ") and why in err, err
        assert not out.exists()
