"""The audio modality: coordinates, normalisation, bounded reading of WAV / FLAC / OGG / FSDD npz,
refusals naming the file, and fit / encode / eval / render / compress / decompress from the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from functa.cli import main
from functa.data import DataError, load_dataset
from functa.data.audio import read_audio
from functa.modalities import AudioModality, audio_coordinates, detect_modality, modality_from_config

FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=4", "--set", "field.w0=5",
        "--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.eval_every=5",
        "--set", "train.save_every=5", "--set", "train.warmup_steps=2"]


def tone(n, rate=8000, freq=220.0, amp=0.5, phase=0.0):
    t = np.arange(n) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def wav_folder(root, n=8, length=256, rate=8000):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(root / f"clip{i:02d}.wav", tone(length + 10 * i, rate, 150 + 40 * i, 0.3 + 0.05 * i), rate,
                 subtype="PCM_16")
    return root


def test_coordinates_values():
    c = audio_coordinates(5)[:, 0]  # default: COIN++ 10 c - 5 on linspace(0, 1, L)
    assert torch.allclose(c, torch.tensor([-5.0, -2.5, 0.0, 2.5, 5.0]))
    assert torch.allclose(audio_coordinates(5, "unit")[:, 0], torch.linspace(0, 1, 5))
    assert torch.allclose(audio_coordinates(5, "symmetric")[:, 0], torch.linspace(-1, 1, 5))
    assert torch.allclose(audio_coordinates(4, "unit", "centres")[:, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    m = AudioModality(length=5)
    assert m.coordinates().shape == (5, 1) and torch.allclose(m.coordinates(), audio_coordinates(5))
    with pytest.raises(Exception):
        AudioModality(coordinates_range="bogus")


def test_normalisation_round_trip_keeps_amplitude_and_rate(tmp_path):
    m = AudioModality(length=100, sample_rate=8000)
    a = tone(100, amp=0.9)[None]
    f = m.to_features(a)
    assert f.shape == (1, 100, 1) and float(f.min()) >= 0 and float(f.max()) <= 1
    assert torch.allclose(f[0, :, 0], torch.from_numpy((a[0] + 1) / 2))
    np.testing.assert_allclose(m.from_features(f), a, atol=1e-6)
    back = modality_from_config(json.loads(json.dumps(m.to_config())))
    assert back == m and back.sample_rate == 8000 and back.full_scale == 1.0
    p = m.write_item(a[0], tmp_path / "x.wav")
    assert sf.info(str(p)).samplerate == 8000
    np.testing.assert_allclose(m.read_item(p), a[0], atol=1 / 32768 + 1e-6)
    # float data over full scale: the peak (a power of two) becomes full_scale, stored in the config
    loud = AudioModality.from_dataset(type("D", (), {"data": np.array([[0.1, -3.0]], np.float32), "lazy": False,
                                                     "meta": {"sample_rate": 100, "kind": "audio"}})())
    assert loud.full_scale == 4.0 and float(loud.to_features(np.array([[-3.0, 0.1]], np.float32)).min()) >= 0


@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_reads_wav_flac_ogg(tmp_path, suffix, subtype):
    x = tone(4000, 16000, 440)
    p = tmp_path / f"a{suffix}"
    sf.write(p, x, 16000, subtype=subtype)
    clip, rate = read_audio(p)
    assert rate == 16000 and clip.dtype == np.float32
    tol = 0.05 if suffix == ".ogg" else 1e-4  # Vorbis is lossy (and may add frames)
    n = min(len(clip), len(x))
    assert abs(len(clip) - 4000) <= 64 and np.sqrt(np.mean((clip[:n] - x[:n]) ** 2)) < tol
    ds = load_dataset(tmp_path, "all")
    assert ds.meta["kind"] == "audio" and ds.meta["sample_rate"] == 16000 and ds.data.shape[0] == 1
    assert detect_modality(ds) is AudioModality


def test_refusals_name_the_file(tmp_path):
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([tone(200), tone(200, freq=300)], 1), 8000)
    with pytest.raises(DataError, match="stereo.wav.*2 channels"):
        read_audio(stereo)
    assert read_audio(stereo, channel=1)[0].shape == (200,)
    nan = tmp_path / "nan.wav"
    x = tone(200)
    x[50] = np.nan
    sf.write(nan, x, 8000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav.*NaN"):
        read_audio(nan)
    short = tmp_path / "short.wav"
    sf.write(short, tone(5), 8000)
    with pytest.raises(DataError, match="short.wav.*too short"):
        read_audio(short)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt \xff\xff\xff\xff" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad.wav"):
        read_audio(bad)
    # a declared size over the array limit is refused before decoding
    from functa.data import array_limit

    with array_limit(100), pytest.raises(DataError, match="stereo.wav.*limit"):
        read_audio(stereo, channel=0)
    # a folder mixing sample rates, and clips shorter than an explicit length
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    sf.write(mixed / "a.wav", tone(300), 8000)
    sf.write(mixed / "b.wav", tone(300), 16000)
    with pytest.raises(DataError, match=r"b\.wav.*16000 Hz differs from .*a\.wav"):
        load_dataset(mixed, "all")
    (mixed / "b.wav").unlink()
    sf.write(mixed / "c.wav", tone(400), 8000)
    with pytest.raises(DataError, match=r"a\.wav: 300 samples, too short for data.audio_length = 350"):
        load_dataset(mixed, "all", audio_length=350)
    ds = load_dataset(mixed, "all")
    assert ds.data.shape == (2, 300) and "cropped to the shortest" in ds.meta["notes"][0]
    # with audio_pad, short clips are padded with silence at their end (long ones still cropped)
    padded = load_dataset(mixed, "all", audio_length=350, audio_pad=True)
    a, c = sf.read(mixed / "a.wav", dtype="float32")[0], sf.read(mixed / "c.wav", dtype="float32")[0]
    assert padded.data.shape == (2, 350) and "1 of 2 clips padded" in padded.meta["notes"][0]
    np.testing.assert_array_equal(padded.data[0, :300], a)
    assert not padded.data[0, 300:].any()
    np.testing.assert_array_equal(padded.data[1], c[:350])
    with pytest.raises(DataError, match="audio_pad needs data.audio_length"):
        load_dataset(mixed, "all", audio_pad=True)
    m = AudioModality(length=300, sample_rate=16000)
    with pytest.raises(DataError, match=r"c\.wav: sample rate 8000 Hz, expected 16000"):
        m.read_item(mixed / "c.wav")


def test_fsdd_npz_layout_split_is_speaker_disjoint(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 200, 24)
    audio = (rng.normal(0, 3000, int(lengths.sum()))).astype(np.int16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    speaker = np.arange(24) % 6
    p = tmp_path / "fsdd.npz"
    np.savez(p, audio=audio, offsets=offsets, sample_rate=np.int32(8000), label=(np.arange(24) % 10).astype(np.uint8),
             speaker=speaker.astype(np.uint8), speaker_names=np.array(list("abcdef")),
             name=np.array([f"c{i}" for i in range(24)]))
    train, test = load_dataset(p, "train"), load_dataset(p, "test")
    assert train.data.shape[1] == test.data.shape[1] == int(lengths.min())
    assert len(train) + len(test) == 24 and len(test) == 4  # one speaker of six
    assert test.meta["test_groups"] == train.meta["test_groups"] and len(test.meta["test_groups"]) == 1
    np.testing.assert_allclose(load_dataset(p, "all").data[0], audio[:lengths.min()] / 32768.0)
    assert AudioModality.from_dataset(train).sample_rate == 8000


def test_cli_fit_encode_eval_render_compress(tmp_path, capsys):
    data = wav_folder(tmp_path / "clips", n=8, length=256)
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "10", "--set", "data.test_fraction=0.25",
                 *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["name"] == "audio" and cfg["modality"]["length"] == 256
    assert cfg["modality"]["sample_rate"] == 8000 and cfg["modality"]["coordinates_range"] == "coinpp"
    fs = tmp_path / "train.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs)]) == 0
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0
    res = json.loads(js.read_text())["results"]
    assert {"mean_psnr", "psnr_of_mean_mse", "snr_db"} <= set(res["per_step"][-1])
    assert json.loads(js.read_text())["headline"] == "mean_psnr"
    out = tmp_path / "renders"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:2", "--scale", "2",
                 "-o", str(out)]) == 0
    wavs = sorted(out.rglob("*.wav"))
    assert wavs, list(out.rglob("*"))
    info = sf.info(str(wavs[0]))
    assert info.frames == 512 and info.samplerate == 16000  # twice the samples, the same duration
    assert abs(info.duration - 256 / 8000) < 1e-9
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    long = tmp_path / "x.wav"
    sf.write(long, tone(600, freq=300), 8000)  # 600 samples: 3 patches of 256
    fta = tmp_path / "x.fta"
    capsys.readouterr()
    assert main(["compress", str(long), "-m", str(codec), "-o", str(fta)]) == 0
    out_text = capsys.readouterr().out
    assert "psnr_db" in out_text and "snr_db" in out_text
    assert fta.read_bytes()[13] == AudioModality.code
    back = tmp_path / "y.wav"
    assert main(["decompress", str(fta), "-m", str(codec), "-o", str(back)]) == 0
    info = sf.info(str(back))
    assert info.frames == 600 and info.samplerate == 8000
    # bad inputs: one line naming the file, exit code 2, nothing written
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(long.read_bytes()[:44] + b"\x00" * 3)  # a RIFF header whose data is cut short
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([tone(600), tone(600)], 1), 8000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(600, np.nan, np.float32), 8000, subtype="FLOAT")
    for bad, why in ((corrupt, "samples|audio"), (stereo, "2 channels"), (nan, "NaN")):
        capsys.readouterr()
        assert main(["compress", str(bad), "-m", str(codec), "-o", str(tmp_path / "bad.fta")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and re.search(why, err), err
        assert not (tmp_path / "bad.fta").exists()


def test_cli_fit_on_patches_evaluates_whole_clips(tmp_path):
    data = wav_folder(tmp_path / "long", n=4, length=1000)
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "6", "--set", "data.patch=[100]",
                 "--set", "data.test_fraction=0.25", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["length"] == 100 and cfg["data"]["patch"] == [100]
    final = cfg["training"]["final_eval"]
    assert "whole items" in final["protocol"] and np.isfinite(final["per_step"][-1]["snr_db"])


def test_modality_contract(tmp_path):
    """The checks tests/test_modalities.py makes of every modality."""
    from functa.modalities import available_modalities, get_modality, modality_by_code

    mod = AudioModality(length=12, sample_rate=8000)
    items = np.random.default_rng(0).uniform(-1, 1, (2, 12)).astype(np.float32)
    feats = mod.to_features(items)
    assert feats.shape == (2, 12, 1) and 0 <= float(feats.min()) and float(feats.max()) <= 1
    assert mod.coordinates((24,)).shape == (24, 1)
    np.testing.assert_allclose(mod.from_features(feats), items, rtol=1e-5, atol=1e-6)
    assert modality_from_config(json.loads(json.dumps(mod.to_config()))).to_config() == mod.to_config()
    paths = mod.save(mod.from_features(feats), tmp_path, ["a", "b"])
    assert all(p.is_file() and p.suffix == ".png" for p in paths) and (tmp_path / "a.wav").is_file()
    assert "audio" in available_modalities() and get_modality("audio") is AudioModality
    assert modality_by_code(AudioModality.code) is AudioModality
    np.testing.assert_allclose(mod.read_item(mod.write_item(items[0], tmp_path / "one.npz")), items[0])
    (tmp_path / "junk.png").write_bytes(b"not an image or array")
    with pytest.raises(DataError, match="junk.png"):
        mod.read_item(tmp_path / "junk.png")
    with pytest.raises(DataError, match="no such file"):
        mod.read_item(tmp_path / "missing.wav")
    assert mod.observation_mask("left-half", feats).shape == (1, 12)
    m = mod.reconstruction_metrics()
    vals = m.per_item(feats, feats)
    assert float(vals["snr_db"].min()) > 150  # exact reconstruction
    assert mod.compare(items[0], items[0])["psnr_db"] == float("inf")
    noisy = items[0] + 0.01
    c = mod.compare(noisy, items[0])
    assert c["snr_db"] == pytest.approx(10 * np.log10(np.sum(items[0].astype(np.float64) ** 2) / (12 * 1e-4)), rel=1e-3)
    assert c["psnr_db"] == pytest.approx(-10 * np.log10((0.01 / 2) ** 2), rel=1e-3)


# ---------------------------------------------------------------------------------- explicit resampling

def _sine(n, rate, freq=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


@pytest.mark.parametrize("rate", [44100, 8000])
def test_resampling_to_16k_gives_the_length_and_frequency_of_the_sine(tmp_path, rate):
    pytest.importorskip("soxr")
    from functa.data.audio import resample, resampled_length

    n = rate // 10  # 0.1 s
    p = tmp_path / f"sine{rate}.wav"
    sf.write(p, _sine(n, rate), rate, subtype="FLOAT")
    clip, got = read_audio(p, sample_rate=16000, resample_to_rate=True)
    assert got == 16000 and len(clip) == 1600 == resampled_length(n, rate, 16000)
    ref = _sine(1600, 16000)
    inner = slice(64, -64)  # away from the clip's edges (the filter's support)
    np.testing.assert_allclose(clip[inner], ref[inner], atol=2e-3)
    assert abs(_peak_hz(clip, 16000) - 440.0) <= 10.0  # one FFT bin (10 Hz)
    np.testing.assert_array_equal(resample(clip, 16000, 16000), clip)  # equal rates: untouched
    # a prefix read (frames at the target rate) matches the whole clip resampled
    head, _ = read_audio(p, sample_rate=16000, resample_to_rate=True, frames=1000)
    assert len(head) >= 1000
    np.testing.assert_allclose(head[:1000], clip[:1000], atol=1e-5)


def test_mixed_rates_refused_by_default_and_resampled_with_the_option(tmp_path):
    pytest.importorskip("soxr")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    sf.write(mixed / "a.wav", _sine(4410, 44100), 44100, subtype="FLOAT")
    sf.write(mixed / "b.wav", _sine(800, 8000), 8000, subtype="FLOAT")
    sf.write(mixed / "c.wav", _sine(2000, 16000), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"\.wav: sample rate .* differs from .*data\.audio_sample_rate"):
        load_dataset(mixed, "all")
    ds = load_dataset(mixed, "all", audio_sample_rate=16000)
    assert ds.data.shape == (3, 1600) and ds.meta["sample_rate"] == 16000 and ds.meta["resample"] is True
    assert ds.meta["source_sample_rates"] == [8000, 16000, 44100]
    assert any("8000 Hz, 44100 Hz resampled to 16000 Hz" in n for n in ds.meta["notes"])
    for row in ds.data:
        np.testing.assert_allclose(row[64:-64], _sine(1600, 16000)[64:-64], atol=2e-3)
    np.testing.assert_array_equal(ds.data[2], sf.read(mixed / "c.wav", dtype="float32")[0][:1600])  # 16 kHz untouched
    # audio_length counts samples at the target rate
    cropped = load_dataset(mixed, "all", audio_sample_rate=16000, audio_length=1000)
    assert cropped.data.shape == (3, 1000)
    np.testing.assert_allclose(cropped.data, ds.data[:, :1000], atol=1e-5)
    with pytest.raises(DataError, match="too short for data.audio_length = 1700"):
        load_dataset(mixed, "all", audio_sample_rate=16000, audio_length=1700)
    # the modality stores the rate and the choice; read_item resamples explicitly only then
    mod = AudioModality.from_dataset(ds)
    assert mod.sample_rate == 16000 and mod.resample is True
    back = modality_from_config(json.loads(json.dumps(mod.to_config())))
    assert back == mod and back.resample is True
    assert len(mod.read_item(mixed / "a.wav")) == 1600
    plain = AudioModality(length=1600, sample_rate=16000)
    assert plain.resample is False and modality_from_config({"name": "audio", "length": 1600}).resample is False
    with pytest.raises(DataError, match=r"a\.wav: sample rate 44100 Hz, expected 16000 Hz.*data\.audio_sample_rate=16000"):
        plain.read_item(mixed / "a.wav")
    # the FSDD npz layout is resampled too
    audio = (_sine(800, 8000) * 32767).astype(np.int16)
    npz = tmp_path / "fsdd.npz"
    np.savez(npz, audio=np.concatenate([audio, audio]), offsets=np.array([0, 800, 1600]), sample_rate=np.int32(8000))
    z = load_dataset(npz, "all", audio_sample_rate=16000)
    assert z.data.shape == (2, 1600) and z.meta["sample_rate"] == 16000
    np.testing.assert_allclose(z.data[0][64:-64], _sine(1600, 16000)[64:-64], atol=3e-3)
    assert load_dataset(npz, "all").data.shape == (2, 800)


def test_missing_soxr_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    sf.write(mixed / "a.wav", tone(400, 8000), 8000)
    sf.write(mixed / "b.wav", tone(800, 16000), 16000)
    monkeypatch.setitem(sys.modules, "soxr", None)  # import soxr raises ImportError
    with pytest.raises(DataError, match=r"needs the 'soxr' package: pip install soxr.*functa\[audio\]"):
        load_dataset(mixed, "all", audio_sample_rate=16000)
    with pytest.raises(DataError, match="pip install soxr"):
        AudioModality(length=400, sample_rate=16000, resample=True).read_item(mixed / "a.wav")
    # nothing to convert: no soxr needed
    assert AudioModality(length=800, sample_rate=16000, resample=True).read_item(mixed / "b.wav").shape == (800,)


def test_cli_fit_with_audio_sample_rate_stores_the_rate(tmp_path):
    pytest.importorskip("soxr")
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(6):
        rate = (8000, 16000)[i % 2]
        sf.write(data / f"clip{i}.wav", _sine(rate // 20, rate, 300 + 50 * i), rate, subtype="PCM_16")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", "--set", "data.test_fraction=0.25",
                 "--set", "data.audio_sample_rate=16000", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["sample_rate"] == 16000 and cfg["modality"]["resample"] is True
    assert cfg["modality"]["length"] == 800 and cfg["data"]["audio_sample_rate"] == 16000
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0


def test_patch_trained_model_encodes_and_renders_whole_clips(tmp_path):
    """A base network meta-learned on patches encodes each whole clip as one latent per patch
    (P, D), with the metrics of the stitched clip (the same as eval's), renders it stitched at any
    scale, and hands the vector tasks its flat latents."""
    from functa.downstream import load_latents
    from functa.errors import ArtefactError
    from functa.functaset import Functaset

    data = tmp_path / "clips"
    data.mkdir()
    for i in range(6):
        sf.write(data / f"{i}.wav", tone(1000 + 37 * i, 8000, 200 + 50 * i), 8000, subtype="PCM_16")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "3", "--set", "data.patch=[300]",
                 "--set", "data.test_fraction=0.34", *FAST]) == 0
    fs_dir = tmp_path / "fs"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs_dir), "--split", "all"]) == 0
    fs = Functaset(fs_dir)
    assert fs.header["latent_shape"] == [4, 4] and fs.header["latent_dim"] == 16  # 1000 samples: 4 patches of 300
    assert fs.header["patches"] == {"item_grid": [1000], "patch": [300], "num_patches": 4}
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--split", "all", "--json", str(js)]) == 0
    final = json.loads(js.read_text())["results"]["per_step"][-1]
    assert fs.manifest["summary"]["mean_psnr"] == pytest.approx(final["mean_psnr"], abs=1e-3)
    arrays, _ = load_latents(fs_dir)
    assert arrays["latents"].shape == (6, 16)
    out = tmp_path / "render"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs_dir), "--indices", "0:2", "--scale", "2",
                 "-o", str(out)]) == 0
    info = sf.info(out / "item000000_2000.wav")
    assert (info.frames, info.samplerate) == (2000, 16000)  # twice the samples over the same 1000 / 8000 s
    values = np.load(out / "renders.npz")["values"]
    from functa.pipeline import load_model, model_loss, stitched
    from functa.codec.patches import PatchGrid

    field, modality, cfg = load_model(run)
    z = fs.take(np.arange(2))["latents"]
    one = modality.with_shape((1000,)).from_features(stitched(field, model_loss(cfg), modality, z, PatchGrid((1000,), (300,))))
    np.testing.assert_allclose(values[:, ::2], one, atol=0.05)  # the 2x render passes near the 1x samples
    manifest = json.loads((fs_dir / "manifest.json").read_text())
    manifest["header"]["patches"]["num_patches"] = 5
    (fs_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="have 4 patches"):
        Functaset(fs_dir, verify=False)


def test_item_normalisation_divides_every_clip_by_its_peak(tmp_path):
    """``data.normalisation = "item"``: training clips are peak-normalised one by one, the modality
    records ``normalisation = "peak"``, and ``read_item`` (compress) normalises a file the same way."""
    from functa.pipeline import load_model, open_data

    data = tmp_path / "clips"
    data.mkdir()
    for i in range(6):  # peaks from 0.05 to 0.8
        sf.write(data / f"{i}.wav", tone(600, 8000, 200 + 50 * i, 0.05 + 0.15 * i), 8000, subtype="PCM_16")
    ds = open_data(data, "all", {"normalisation": "item"})
    peaks = np.abs(ds.data).max(axis=1)
    np.testing.assert_allclose(peaks, 1.0, rtol=1e-6)
    np.testing.assert_allclose(ds.meta["item_peaks"], [0.05 + 0.15 * i for i in range(6)], rtol=2e-3)
    assert AudioModality.from_dataset(ds).normalisation == "peak"
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", "--set", "data.normalisation=item",
                 "--set", "data.test_fraction=0.34", *FAST]) == 0
    modality = load_model(run)[1]
    assert modality.normalisation == "peak" and modality.to_config()["normalisation"] == "peak"
    clip = modality.read_item(data / "0.wav")
    assert float(np.abs(clip).max()) == pytest.approx(1.0)
    fixed = AudioModality(length=600, sample_rate=8000).read_item(data / "0.wav")
    np.testing.assert_allclose(clip * np.abs(fixed).max(), fixed, atol=1e-6)
