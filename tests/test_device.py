import pytest
import torch

from functa.cli import main
from functa.device import resolve_device


def test_auto_and_explicit_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_early_and_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="no usable CUDA device"):
        resolve_device("cuda")
    assert main(["--device", "cuda", "eval", str(tmp_path), "-m", str(tmp_path)]) == 2
    assert "no usable CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_latents_on_cuda_matches_cpu():  # pragma: no cover - runs where a GPU is lent
    from functa.fields import LatentModulatedSiren, SirenConfig
    from functa.fitting import fit_latents

    torch.manual_seed(0)
    field = LatentModulatedSiren(SirenConfig(width=32, depth=4, latent_dim=8))
    x, y = torch.rand(1, 64, 2), torch.rand(5, 64, 1)
    cpu = fit_latents(field, x, y, 3).latents
    gpu = fit_latents(field.to("cuda"), x, y, 3).latents
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_gpu_check_says_there_is_no_gpu_and_exits_2(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    assert script.stat().st_mode & 0o111  # executable
    r = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU here" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_batch_sizes_follow_free_device_memory_on_cuda(monkeypatch):
    from functa.fields import LatentModulatedSiren, SirenConfig
    from functa.fitting import encode

    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, width=512, depth=15, latent_dim=64))
    n = 64 * 64
    per_item = n * 512 * 4
    assert encode.auto_batch_size(field, n) == max(1, encode.ACTIVATION_BUDGET_BYTES // per_item)  # CPU: 24 MiB
    monkeypatch.setattr(encode, "field_device", lambda f: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * 2**30, 141 * 2**30))
    budget = 139 * 2**30 // (2 * 15 * encode.GRAPH_PASSES)
    assert encode.activation_budget(field) == budget
    assert encode.auto_batch_size(field, n) == budget // per_item  # 84 CelebA-sized items (64x64, width 512) on an H200
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**20, 141 * 2**30))
    assert encode.auto_batch_size(field, n) == max(1, encode.ACTIVATION_BUDGET_BYTES // per_item)  # never below
    small = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=16, depth=3, latent_dim=4))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * 2**30, 141 * 2**30))
    assert encode.auto_batch_size(small, 784) == encode.CUDA_ITEMS_CAP
