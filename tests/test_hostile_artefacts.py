"""Hostile functasets, base networks and configs are refused with one-line errors naming the file
(issue 11, defects 5 and 8), and bounded fuzz runs of the ``functaset`` and ``model`` targets of
``bench/fuzz.py`` find nothing."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from functa.cli import main
from functa.config import load_config
from functa.errors import ArtefactError, ConfigError, FunctaError
from functa.fields import LatentModulatedSiren, SirenConfig
from functa.functaset import Functaset, FunctasetWriter
from functa.io import ALLOW_UNVERIFIED_ENV, load_base_network, save_base_network
from functa.tasks.checkpoint import load_task_model, save_task_model
from functa.tasks.classify import MLPClassifier, MLPConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHA = "ab" * 32


def _one_line(error: Exception, *names: str) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 400, text
    for name in names:
        assert name in text, (name, text)
    return text


# ---------------------------------------------------------------------------- functasets


def _functaset(path: Path, n: int = 12, chunk: int = 5, dim: int = 4) -> torch.Tensor:
    header = {"base_network": {"sha256": SHA, "path": "base"}, "latent_shape": [dim], "latent_dim": dim}
    w = FunctasetWriter(path, header, total=n, chunk_size=chunk)
    lat = torch.randn(n, dim)
    w.append(lat, np.arange(n) % 3, np.arange(n), {"loss": torch.full((n,), 0.01)})
    w.close({})
    return lat


def _edit_json(file: Path, edit) -> None:
    obj = json.loads(file.read_text())
    edit(obj)
    file.write_text(json.dumps(obj))


def _edit_manifest(path: Path, edit) -> None:
    _edit_json(path / "manifest.json", edit)


def _set_chunk_file(name):
    return lambda m: m["chunks"][0].__setitem__("file", name)


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "sub/chunk.safetensors", "..", ".hidden", "", 7])
def test_chunk_paths_are_confined_to_the_functaset(tmp_path, name):
    fs = tmp_path / "a.functaset"
    _functaset(fs)
    (tmp_path / "x").write_bytes(b"outside")
    _edit_manifest(fs, _set_chunk_file(name))
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "manifest.json", "chunks[0].file", "plain file name")


def test_chunk_link_leaving_the_functaset_is_refused(tmp_path):
    fs = tmp_path / "a.functaset"
    _functaset(fs)
    outside = tmp_path / "elsewhere.safetensors"
    (fs / "chunk-000000.safetensors").rename(outside)
    (fs / "chunk-000000.safetensors").symlink_to(outside)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "chunk-000000.safetensors", "outside the functaset")


def test_counts_must_match_the_chunks(tmp_path):
    fs = tmp_path / "a.functaset"
    _functaset(fs)

    def more(m):
        m["count"] = m["total"] = 13  # the manifest claims more rows than its chunks list
    _edit_manifest(fs, more)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "manifest.json", "hold 12 rows", "count = 13")

    def chunk_claims_more(m):
        m["chunks"][0]["count"] = 6  # and the chunk itself holds 5
    _edit_manifest(fs, chunk_claims_more)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "chunk-000000.safetensors", "(5, 4)", "(6, 4)")


def test_latent_shape_must_match_the_chunks(tmp_path):
    fs = tmp_path / "a.functaset"
    _functaset(fs)

    def wider(m):
        m["header"]["latent_shape"], m["header"]["latent_dim"] = [8], 8
    _edit_manifest(fs, wider)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "chunk-000000.safetensors", "latents", "(5, 8)")
    _edit_manifest(fs, lambda m: m["header"].__setitem__("latent_shape", [3, 3]))
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "manifest.json", "latent_shape")


def test_corrupt_chunk_is_caught_by_default(tmp_path):
    fs = tmp_path / "a.functaset"
    lat = _functaset(fs)
    chunk = fs / "chunk-000001.safetensors"
    data = bytearray(chunk.read_bytes())
    at = bytes(data).index(lat[5].numpy().tobytes())  # a latent bit in the data section: the header still parses
    data[at + 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    opened = Functaset(fs)  # headers are fine; the hash is checked when the chunk is read
    with pytest.raises(ArtefactError) as e:
        opened.arrays()
    _one_line(e.value, "chunk-000001.safetensors", "checksum mismatch")
    with pytest.raises(ArtefactError, match="checksum"):
        Functaset(fs).take([7])
    assert torch.equal(Functaset(fs)[0][0], lat[0])  # intact chunks stay readable
    fast = Functaset(fs, verify=False).arrays()["latents"]  # the explicit opt-out reads the bytes as they are
    assert not torch.equal(fast, lat) and torch.equal(fast[:5], lat[:5])


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.__setitem__("chunks", "chunk-000000.safetensors"), ["chunks", "not a list"]),
    (lambda m: m.__setitem__("count", "12"), ["count", "not an integer"]),
    (lambda m: m.__setitem__("count", 2**63), ["count", "out of range"]),
    (lambda m: m.__setitem__("header", []), ["header"]),
    (lambda m: m["header"].pop("latent_dim"), ["header.latent_dim"]),
    (lambda m: m["header"].__setitem__("base_network", None), ["header.base_network"]),
    (lambda m: m.__setitem__("format_version", "2"), ["format_version"]),
    (lambda m: m.__setitem__("columns", [1]), ["columns[0]"]),
    (lambda m: m.__setitem__("columns", ["latents"]), ["columns[0]"]),
    (lambda m: m["chunks"].append(m["chunks"][0]), ["listed twice"]),
    (lambda m: m["chunks"][0].__setitem__("count", 2.5), ["chunks[0].count"]),
    (lambda m: m["chunks"][0].pop("sha256"), ["chunks[0].sha256"]),
    (lambda m: m.__setitem__("complete", "yes"), ["complete"]),
])
def test_malformed_manifests_are_refused(tmp_path, edit, words):
    fs = tmp_path / "a.functaset"
    _functaset(fs)
    _edit_manifest(fs, edit)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "manifest.json", *words)


def test_manifest_that_is_not_an_object(tmp_path):
    fs = tmp_path / "a.functaset"
    _functaset(fs)
    (fs / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, "manifest.json", "found a JSON array")


# ---------------------------------------------------------------------------- base networks


def _base(path: Path, **extra) -> Path:
    field = LatentModulatedSiren(SirenConfig(width=8, depth=3, latent_dim=4))
    save_base_network(path, field, modality={"name": "image", "height": 4, "width": 4, "channels": 1},
                      run={"train": {"inner_steps": 2}}, **extra)
    return path


def _edit_config(path: Path, edit) -> None:
    _edit_json(path / "config.json", edit)


def test_bare_number_config_is_refused(tmp_path):
    base = _base(tmp_path / "run")
    (base / "config.json").write_text("42")
    with pytest.raises(ArtefactError) as e:
        load_base_network(base)
    _one_line(e.value, "config.json", "found a JSON number")
    assert main(["eval", str(tmp_path / "data"), "-m", str(base)]) == 2


def test_directory_named_model_safetensors_is_refused(tmp_path):
    base = _base(tmp_path / "run")
    (base / "model.safetensors").unlink()
    (base / "model.safetensors").mkdir()
    with pytest.raises(ArtefactError) as e:
        load_base_network(base)
    _one_line(e.value, "model.safetensors", "not a regular file")


def test_missing_sha256_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    base = _base(tmp_path / "run")
    _edit_config(base, lambda c: c.pop("sha256"))
    with pytest.raises(ArtefactError) as e:
        load_base_network(base)
    _one_line(e.value, "config.json", "no 'sha256'", ALLOW_UNVERIFIED_ENV, "allow_unverified=True")
    with pytest.warns(UserWarning, match="without verification"):
        field, _ = load_base_network(base, allow_unverified=True)
    assert field.config.width == 8
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")
    with pytest.warns(UserWarning, match="without verification"):
        load_base_network(base)
    # a hash that is present is always checked, and must be one
    _edit_config(base, lambda c: c.__setitem__("sha256", ""))
    with pytest.raises(ArtefactError, match="not a SHA-256 digest"):
        load_base_network(base)


def test_missing_sha256_of_a_downstream_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    d = tmp_path / "clf"
    save_task_model(d, "mlp-classifier", MLPClassifier(MLPConfig(in_dim=4, num_classes=3, width=8, depth=1)))
    _edit_config(d, lambda c: c.pop("sha256"))
    with pytest.raises(ArtefactError) as e:
        load_task_model(d)
    _one_line(e.value, "config.json", "no 'sha256'")
    with pytest.warns(UserWarning):
        assert load_task_model(d, allow_unverified=True)[0].config.width == 8
    _edit_config(d, lambda c: c.__setitem__("model", {**c["model"], "width": 10**6}))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_task_model(d, allow_unverified=True)
    assert time.perf_counter() - t0 < 1.0
    _one_line(e.value, "config.json", "model.width", "1000000", "65,536")


@pytest.mark.parametrize("key, value, words", [
    ("width", 1e6, ["field.width", "1000000.0", "[1, 8192]"]),
    ("depth", 1e5, ["field.depth", "100000.0", "[2, 64]"]),
    ("latent_dim", 2**40, ["field.latent_dim"]),
    ("w0", "nan", ["field.w0"]),
    ("width", True, ["field.width"]),
])
def test_hostile_field_config_is_refused_before_allocating(tmp_path, key, value, words):
    base = _base(tmp_path / "run")
    _edit_config(base, lambda c: c["field"].__setitem__(key, value))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_base_network(base)
    assert time.perf_counter() - t0 < 1.0
    _one_line(e.value, "config.json", *words)


def test_parameter_count_is_bounded(tmp_path, fuzz):
    base = _base(tmp_path / "run")
    _edit_config(base, lambda c: c["field"].update(width=8192, depth=64))  # each within range, together 4e9
    with pytest.raises(ConfigError) as e:
        load_base_network(base)
    _one_line(e.value, "config.json", "width 8192, depth 64", "parameters")
    # within every bound (1e8 parameters, 400 MB) but not the stored weights: refused from the file
    # header before anything is allocated
    base = _base(tmp_path / "run2")
    _edit_config(base, lambda c: c["field"].update(width=4096, depth=8))
    sampler = fuzz._RssSampler()
    try:
        start = sampler.mark()
        with pytest.raises(ArtefactError, match="weights do not match the config"):
            load_base_network(base)
        growth = sampler.peak - start
    finally:
        sampler.stop()
    assert growth < 100 * 2**20, growth


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("setting, words", [("field.width=1e6", ["field.width", "1000000.0", "8192"]),
                                            ("field.depth=1e5", ["field.depth", "100000.0", "64"]),
                                            ("train.outer_lr=-1", ["train.outer_lr"]),
                                            ("train.batch_size=0", ["train.batch_size"]),
                                            ("data.test_fraction=2", ["data.test_fraction"]),
                                            ("modality.x=1", ["modality.x is not a setting of any modality"]),
                                            ("train=3", ["train = 3", "not a section"])])
def test_cli_refuses_absurd_settings_fast(tmp_path, capsys, setting, words):
    argv = ["fit", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--set", setting]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 5.0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("functa fit: error:"), err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run").exists()


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "fit.toml"
    path.write_text("[field]\nwidth = 1000000\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    _one_line(e.value, "fit.toml", "field.width")
    path.write_text("42")
    json_path = path.with_suffix(".json")
    json_path.write_text("42")
    with pytest.raises(ConfigError) as e:
        load_config(json_path)
    _one_line(e.value, "fit.json", "table of sections")
    json_path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(json_path)
    assert load_config(None, ["field.width=64.0"]).field["width"] == 64.0  # kept as given; the field makes it 64
    assert SirenConfig(width=64.0).width == 64 and isinstance(SirenConfig(width=64.0).width, int)


# ---------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz():
    sys.path.insert(0, str(BENCH))
    try:
        import fuzz as module
        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("target", ["functaset", "model"])
def test_fuzz_readers(fuzz, target, tmp_path):
    shm = Path("/dev/shm")  # a memory file system where there is one: the inputs are copied and deleted 1,500 times
    workdir = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    report = fuzz.run(fuzz.load_target(target), 1500, seed=11, time_limit_s=2.0, memory_limit_mb=500.0,
                      workdir=workdir)
    summary = {k: v for k, v in report.as_dict().items() if k != "examples"}
    assert report.count == 1500, summary
    assert not report.failures and report.over_time == 0 and report.over_memory == 0, (summary, report.examples[:3])
    assert report.passed_ok > 0 and report.passed_library_error > 0, summary  # both outcomes are exercised
    assert issubclass(ConfigError, FunctaError)


@pytest.mark.parametrize("manifest", ["42", '{"header": {}, "total": 3}'])
def test_resuming_a_writer_on_a_malformed_manifest_is_refused(tmp_path, manifest):
    path = tmp_path / "x.functaset"
    _functaset(path)
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(ArtefactError) as info:
        FunctasetWriter(path, {"latent_dim": 4}, total=12)
    assert str(path / "manifest.json") in _one_line(info.value)


def test_fit_resuming_on_a_config_that_is_not_an_object(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("[1]")
    data = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(data / split / f"{i}.png")
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "1", "--set", "field.width=8",
                 "--set", "field.depth=2", "--set", "field.latent_dim=4", "--set", "train.batch_size=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{run / 'config.json'}: expected a base network config" in err
