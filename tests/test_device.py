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
