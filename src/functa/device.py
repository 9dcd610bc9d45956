"""Choosing the device computations run on."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``): CUDA when available, else the CPU; otherwise the named device.

    Raises ``ValueError`` with a clear message when the device is not usable here. On CUDA,
    float32 matmuls are kept in full fp32 (no TF32), which the papers' PSNR levels need.
    """
    if name is None or str(name) == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"unknown device {name!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested, but this PyTorch build has no usable CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested, but MPS is not available")
    return dev
