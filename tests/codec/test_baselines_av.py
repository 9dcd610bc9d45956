"""Audio and volume baselines (MP3, Opus, per-slice JPEG 2000 / WebP, SPERR) at a target rate, the
modalities' rate units, and ``functa codec-bench`` on audio and on NIfTI volumes."""

from __future__ import annotations

import io
import json
import struct

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from functa.cli import main
from functa.codec.baselines import STANDARD_CODECS, at_rate, available_codecs
from functa.codec.baselines.audio import align
from functa.codec.rd import standard_point
from functa.modalities import AudioModality, VolumeModality

RATE = 16000


def speech_like(n=RATE, seed=0):
    """Harmonics of a gliding pitch under a syllable envelope, plus a little noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.3 * x / np.abs(x).max() + 0.005 * rng.standard_normal(n)).astype(np.float32)


def volume(size=(24, 20, 16), seed=0):
    rng = np.random.default_rng(seed)
    g = [np.linspace(0, 1, s) for s in size]
    x, y, z = np.meshgrid(*g, indexing="ij")
    v = 200 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2 + (z - 0.5) ** 2) / 0.08) + 30 * np.sin(9 * x) * np.cos(7 * z)
    return (v + rng.normal(0, 2, v.shape) + 40).astype(np.float32)


def test_rate_units_hand_computed():
    audio = AudioModality(length=400, sample_rate=RATE)
    assert audio.rate_unit == "kbps"
    assert audio.rate(16000, (RATE,)) == pytest.approx(128.0)  # 16 kB in one second
    assert audio.rate(1000, (8000,)) == pytest.approx(16.0)  # 8 kbit in half a second
    vol = VolumeModality(size_x=8, size_y=8, size_z=8)
    assert vol.rate_unit == "bits per voxel" and vol.rate(100, (10, 20, 5)) == pytest.approx(0.8)


def test_align_undoes_a_known_delay():
    x = speech_like(4000)
    delayed = np.concatenate([np.zeros(1105, np.float32), x, np.zeros(300, np.float32)])
    np.testing.assert_array_equal(align(delayed, x), x)
    np.testing.assert_array_equal(align(x, x), x)
    short = align(delayed[:3000], x)  # a decoded clip shorter than the original is zero-padded
    assert short.shape == x.shape and not short[-200:].any()


@pytest.mark.parametrize("codec", ["mp3", "opus"])
def test_audio_baselines_meet_the_budget_and_improve_with_rate(codec):
    assert codec in available_codecs("audio")
    mod = AudioModality(length=400, sample_rate=RATE)
    clip = speech_like()
    pts = [at_rate(clip, codec, t, mod) for t in (16.0, 32.0, 64.0)]
    for t, p in zip((16.0, 32.0, 64.0), pts):
        assert p.rate <= t and p.rate == pytest.approx(8 * p.bytes * RATE / 1000 / len(clip))
        data, decoded = STANDARD_CODECS[codec].encode(clip, p.knob, mod)
        assert len(data) == p.bytes and decoded.shape == clip.shape
        assert p.psnr == pytest.approx(mod.compare(decoded, clip)["psnr_db"]) and "snr_db" in p.quality
    assert pts[2].psnr > pts[1].psnr > pts[0].psnr > 25.0
    assert pts[0].rate > 8.0  # the search uses the budget, not the lowest quality


def test_mp3_file_is_real_mp3_and_aligned():
    mod = AudioModality(length=400, sample_rate=RATE)
    clip = speech_like()
    data, decoded = STANDARD_CODECS["mp3"].encode(clip, 0.9, mod)
    assert sf.info(io.BytesIO(data)).format == "MP3"
    assert mod.compare(decoded, clip)["snr_db"] > 10.0  # misaligned by the encoder delay it would be ~0 dB


def test_volume_slice_baselines():
    mod = VolumeModality(size_x=8, size_y=8, size_z=8, lo=0.0, hi=300.0)
    vol = volume((64, 64, 8))
    for codec in ("jpeg2000-slices", "webp-slices"):
        assert codec in available_codecs("volume")
        data, decoded = STANDARD_CODECS[codec].encode(vol, 50 if codec == "webp-slices" else 20.0, mod)
        assert decoded.shape == vol.shape
        # the file is one length-prefixed image per slice along the last axis
        offset, slices = 0, 0
        while offset < len(data):
            (n,) = struct.unpack_from("<I", data, offset)
            offset, slices = offset + 4 + n, slices + 1
        assert offset == len(data) and slices == vol.shape[2]
        pts = [at_rate(vol, codec, t, mod) for t in (1.0, 4.0)]
        assert all(t / 2 < p.rate <= t for p, t in zip(pts, (1.0, 4.0)))
        assert pts[1].psnr > pts[0].psnr > 20.0
    with pytest.raises(ValueError, match="codes audio, not volume"):
        at_rate(vol, "mp3", 1.0, mod)


def test_sperr_meets_the_rate_exactly():
    pytest.importorskip("imagecodecs")
    if "sperr" not in available_codecs("volume"):
        pytest.skip("imagecodecs without SPERR")
    mod = VolumeModality(size_x=8, size_y=8, size_z=8, lo=0.0, hi=300.0)
    vol = volume((32, 32, 32))
    pts = [at_rate(vol, "sperr", t, mod) for t in (0.25, 1.0, 4.0)]
    for t, p in zip((0.25, 1.0, 4.0), pts):
        assert p.rate == pytest.approx(t, rel=0.05)
    assert pts[2].psnr > pts[1].psnr > pts[0].psnr


FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=4", "--set", "field.w0=5",
        "--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.warmup_steps=1"]


def test_codec_bench_on_audio_files(tmp_path, capsys):
    data = tmp_path / "speech"
    data.mkdir()
    for i, spk in enumerate(["19-198-0001", "19-198-0002", "26-495-0000", "40-222-0003"]):
        sf.write(data / f"{spk}.flac", speech_like(RATE // 2 + 800 * i, seed=i), RATE, subtype="PCM_16")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", "--set", "data.patch=[200]",
                 "--set", "data.test_fraction=0.34", *FAST]) == 0
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--data", str(data), "-o", str(codec)]) == 0
    out = tmp_path / "rd"
    assert main(["--quiet", "codec-bench", str(data), "-m", str(codec), "-o", str(out), "--standard", "mp3",
                 "opus", "--targets", "32", "64"]) == 0
    table = json.loads((out / "rd.json").read_text())
    from functa.data import item_files

    test_files = item_files(data, "test")
    lengths = [sf.info(f).frames for f in test_files]
    assert table["modality"] == "audio" and table["rate_unit"] == "kbps" and table["items"] == len(test_files)
    assert table["seconds_of_audio"] == pytest.approx(sum(lengths) / RATE)  # whole clips, not cropped
    assert set(table["results"]) == {"functa (per-dim quantiser, per_dimension entropy)", "mp3", "opus"}
    (point,) = table["results"]["functa (per-dim quantiser, per_dimension entropy)"]
    assert "snr_db" in point["quality"] and point["rate"] > point["payload_rate"] > 0
    assert all(p["rate"] <= t for p, t in zip(table["results"]["opus"], (32, 64)))
    assert "kbps" in capsys.readouterr().out


def test_codec_bench_on_a_nifti_folder(tmp_path, capsys):
    data = tmp_path / "scans"
    data.mkdir()
    for i in range(5):
        nib.save(nib.Nifti1Image(volume((16, 16, 12), seed=i), np.eye(4)), str(data / f"s{i}.nii.gz"))
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", "--set", "data.patch=[8,8,8]",
                 *FAST]) == 0
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--data", str(data), "-o", str(codec)]) == 0
    out = tmp_path / "rd"
    assert main(["--quiet", "codec-bench", str(data / "s4.nii.gz"), "-m", str(codec), "-o", str(out),
                 "--standard", "webp-slices", "--targets", "3", "6"]) == 0
    table = json.loads((out / "rd.json").read_text())
    assert table["rate_unit"] == "bits per voxel" and table["items"] == 1 and table["item_shape"] == [16, 16, 12]
    assert [p["rate"] <= t for p, t in zip(table["results"]["webp-slices"], (3.0, 6.0))] == [True, True]
    # codecs of another modality are refused with the ones that exist
    assert main(["--quiet", "codec-bench", str(data / "s4.nii.gz"), "-m", str(codec), "-o", str(out),
                 "--standard", "jpeg"]) == 2
    assert "not available for volume data" in capsys.readouterr().err
