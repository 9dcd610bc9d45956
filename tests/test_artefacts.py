import json

import numpy as np
import pytest
import torch

from functa.fields import LatentModulatedSiren, SirenConfig
from functa.fitting import PsnrMetrics
from functa.functaset import Functaset, FunctasetWriter
from functa.io import ArtefactError, load_base_network, save_base_network


def test_base_network_round_trip(tmp_path):
    torch.manual_seed(0)
    f = LatentModulatedSiren(SirenConfig(width=16, depth=3, latent_dim=4, modulate_scale=True))
    sha = save_base_network(tmp_path / "run", f, modality={"name": "image"})
    g, cfg = load_base_network(tmp_path / "run")
    assert cfg["sha256"] == sha and cfg["modality"] == {"name": "image"}
    x, z = torch.rand(1, 9, 2), torch.randn(3, 4)
    assert torch.equal(f(x, z), g(x, z))
    assert g.config == f.config and cfg["field"]["name"] == "latent_modulated_siren"
    # configs written before fields were registered have no name: they are SIRENs
    del cfg["field"]["name"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    assert load_base_network(tmp_path / "run")[0].config == f.config


def test_tampered_or_mismatched_checkpoint_is_rejected(tmp_path):
    f = LatentModulatedSiren(SirenConfig(width=16, depth=3, latent_dim=4))
    save_base_network(tmp_path / "run", f)
    model = tmp_path / "run" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="SHA-256"):
        load_base_network(tmp_path / "run")
    # a config claiming another architecture
    save_base_network(tmp_path / "run2", f)
    cfg = json.loads((tmp_path / "run2" / "config.json").read_text())
    cfg["field"]["width"] = 32
    (tmp_path / "run2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtefactError, match="shape"):
        load_base_network(tmp_path / "run2")
    (tmp_path / "run3").mkdir()
    (tmp_path / "run3" / "config.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="not valid JSON"):
        load_base_network(tmp_path / "run3")
    with pytest.raises(ArtefactError, match="not a base-network directory"):
        load_base_network(tmp_path / "missing")


def _write(path, n=10, chunk=4, header=None):
    header = header or {"base_network": {"sha256": "abc"}, "latent_dim": 3}
    w = FunctasetWriter(path, header, total=n, chunk_size=chunk)
    lat = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    for s in range(w.count, n, 3):
        e = min(s + 3, n)
        w.append(lat[s:e], np.arange(s, e) % 2, np.arange(s, e),
                 {"loss": torch.full((e - s,), 0.01), "psnr": torch.full((e - s,), 20.0)})
    w.close(PsnrMetrics().summary({"mse": w.sums["loss"], "psnr": w.sums["psnr"]}, w.count))
    return lat


def test_functaset_round_trip_chunks(tmp_path):
    lat = _write(tmp_path / "a.functaset")
    fs = Functaset(tmp_path / "a.functaset", verify=True)
    assert len(fs) == 10 and fs.complete
    assert [c["count"] for c in fs.manifest["chunks"]] == [4, 4, 2]
    arr = fs.arrays()
    assert torch.equal(arr["latents"], lat)
    assert torch.equal(arr["index"], torch.arange(10))
    assert torch.allclose(arr["psnr"], torch.full((10,), 20.0))
    z, label = fs[7]
    assert torch.equal(z, lat[7]) and label == 1
    assert torch.equal(fs[-1][0], lat[9])
    fs.check_base_network("abc")
    with pytest.raises(ArtefactError, match="encoded with base network"):
        fs.check_base_network("def")
    rows = fs.take([9, 0, 5, 5])  # across chunks, any order, repeats
    assert torch.equal(rows["latents"], lat[[9, 0, 5, 5]]) and rows["labels"].tolist() == [1, 0, 1, 1]
    with pytest.raises(IndexError):
        fs.take([10])
    assert fs.columns == ("latents", "labels", "index", "loss", "psnr") and fs.latent_shape == (3,)
    assert fs.manifest["sums"]["loss"] == pytest.approx(0.1)  # running sums kept as chunks are written
    summary = fs.manifest["summary"]
    assert summary["psnr_of_mean_mse"] == pytest.approx(20.0) and summary["mean_psnr"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="differ from the stored"):
        w = FunctasetWriter(tmp_path / "d.functaset", {"latent_dim": 3}, total=4)
        w.append(lat[:2], np.zeros(2), np.arange(2), {"loss": torch.ones(2)})
        w.append(lat[2:4], np.zeros(2), np.arange(2, 4), {"mse": torch.ones(2)})


def test_functaset_resume_and_header_mismatch(tmp_path):
    path = tmp_path / "b.functaset"
    header = {"base_network": {"sha256": "abc"}, "latent_dim": 3}
    w = FunctasetWriter(path, header, total=10, chunk_size=4)
    w.append(torch.zeros(5, 3), np.zeros(5), np.arange(5), {"loss": torch.ones(5)})  # 1 chunk flushed, 1 item buffered
    del w  # "crash": the buffered item is lost, the chunk is kept
    w2 = FunctasetWriter(path, header, total=10, chunk_size=4)
    assert w2.count == 4
    with pytest.raises(ArtefactError, match="other data or another base network"):
        FunctasetWriter(path, {"base_network": {"sha256": "zzz"}, "latent_dim": 3}, total=10)


def test_functaset_corruption_detected(tmp_path):
    _write(tmp_path / "c.functaset")
    chunk = tmp_path / "c.functaset" / "chunk-000001.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(ArtefactError, match="checksum"):
        Functaset(tmp_path / "c.functaset", verify=True)
    with pytest.raises(ArtefactError, match="checksum"):  # verified by default
        Functaset(tmp_path / "c.functaset")[5]
    with pytest.raises(ArtefactError, match="unreadable chunk"):
        Functaset(tmp_path / "c.functaset", verify=False)[5]
    chunk.unlink()
    with pytest.raises(ArtefactError, match="missing"):
        Functaset(tmp_path / "c.functaset")
    with pytest.raises(ArtefactError, match="not a functaset"):
        Functaset(tmp_path)
