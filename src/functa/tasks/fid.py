"""Fréchet Inception Distance (FID) for rendered samples.

``FID = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})`` between Gaussians fitted to
feature vectors of two image sets (Heusel et al., 2017). The features are the 2048-d pool3
activations of the FID-specific Inception-v3 (the TensorFlow FID graph as ported by pytorch-fid),
rebuilt here in plain torch as :class:`InceptionFeatures`. Its state-dict keys match pytorch-fid's
weights file ``pt_inception-2015-12-05-6726825d.pth``, which the user supplies:
:meth:`InceptionFeatures.from_file` reads it (``torch.load(..., weights_only=True)``, or a
``.safetensors`` copy) and **nothing is downloaded**.

:func:`feature_statistics` and :func:`fid` take any feature extractor (a module or callable that
maps float images ``(B, 3, H, W)`` in ``[0, 1]`` to features ``(B, F)``), so the statistics code is
testable with a tiny stand-in network. The matrix square root is done in float64 torch through an
eigendecomposition of the symmetric PSD matrix ``sqrt(S_a) S_b sqrt(S_a)`` (same eigenvalues as
``S_a S_b``), with tiny negative eigenvalues clamped to zero: no scipy and no complex parts.

Caveat (functa paper, App. A.8): FID heavily penalises blur, so samples decoded from functa score
poorly even when they look right; the functaset itself (reconstructions of the training data)
scores 28.4 / 17.2 on CelebA-HQ 64×64 with 256 / 512 latent dimensions. Report the FID of the
functaset's own reconstructions next to that of generated samples as the attainable floor.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FID_WEIGHTS_FILENAME", "FID_WEIGHTS_URL", "InceptionFeatures", "feature_statistics", "fid",
           "frechet_distance"]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# Documentation only: this module never fetches anything.
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILENAME)

ArrayLike = Tensor | np.ndarray


# --------------------------------------------------------------------------------------------
# Fréchet distance between Gaussians
# --------------------------------------------------------------------------------------------


def _as_f64(x: ArrayLike) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.detach().to(device="cpu", dtype=torch.float64)


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues → 0)."""
    evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, computed in float64.

    ``tr((S1 S2)^{1/2})`` is the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S1^{1/2} S2 S1^{1/2}``; singular (rank-deficient) covariances are fine.
    """
    m1, m2 = _as_f64(mu1), _as_f64(mu2)
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be vectors of the same length, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {tuple(s1.shape)} and {tuple(s2.shape)}")
    for name, t in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains non-finite values")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    diff = m1 - m2
    value = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean
    return max(float(value), 0.0)  # tiny negative values are round-off


# --------------------------------------------------------------------------------------------
# Feature statistics
# --------------------------------------------------------------------------------------------


def _num_images(images: ArrayLike) -> int:
    return int(images.shape[0])


def _image_batch(images: ArrayLike, start: int, stop: int) -> Tensor:
    """Slice ``[start, stop)`` of the image set as float32 ``(B, 3, H, W)`` in ``[0, 1]``."""
    if isinstance(images, np.ndarray):
        arr = images[start:stop]
        if arr.ndim == 3:
            arr = arr[..., None]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = images[start:stop]
        if x.ndim == 3:
            x = x[:, None]
        x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _check_images(images: ArrayLike) -> None:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 (N, H, W, C) in [0, 255], got dtype {images.dtype}; "
                            "pass float images as a torch tensor (N, C, H, W) in [0, 1]")
        ok = (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3)))
        if not ok:
            raise ValueError(f"numpy images must be uint8 (N, H, W, C) with C in {{1, 3}} (or (N, H, W)), "
                             f"got shape {images.shape}")
    elif isinstance(images, Tensor):
        if not images.is_floating_point():
            raise TypeError(f"tensor images must be float (N, C, H, W) in [0, 1], got dtype {images.dtype}; "
                            "pass uint8 images as a numpy array (N, H, W, C)")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[1] in (1, 3))):
            raise ValueError(f"tensor images must be (N, C, H, W) with C in {{1, 3}} (or (N, H, W)), "
                             f"got {tuple(images.shape)}")
    else:
        raise TypeError(f"images must be a numpy uint8 array or a float torch tensor, got {type(images).__name__}")
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {images.shape[0]}")


def _extractor_device(extractor: Callable) -> torch.device:
    if isinstance(extractor, nn.Module):
        for t in extractor.parameters():
            return t.device
        for t in extractor.buffers():
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def feature_statistics(images: ArrayLike, extractor: Callable[[Tensor], Tensor], batch_size: int = 64,
                       progress: bool = False) -> tuple[Tensor, Tensor]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (float64, unbiased like ``np.cov``) of the features.

    ``images``: uint8 numpy ``(N, H, W, C)`` with ``C`` in {1, 3}, or a float tensor ``(N, C, H, W)``
    in ``[0, 1]``; grayscale is repeated to 3 channels. Batches are converted one at a time and sent
    to the extractor's device; an ``nn.Module`` extractor runs in eval mode (its mode is restored).
    Moments are accumulated around the first batch's mean, so no ``(N, F)`` array is kept and the
    covariance does not suffer from cancellation.
    """
    _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = _num_images(images)
    device = _extractor_device(extractor)
    was_training = isinstance(extractor, nn.Module) and extractor.training
    if isinstance(extractor, nn.Module):
        extractor.eval()
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="FID features", unit="batch")
    shift = s1 = s2 = None
    try:
        for start in starts:
            x = _image_batch(images, start, min(start + batch_size, n)).to(device)
            feats = extractor(x)
            if not isinstance(feats, Tensor) or feats.shape[0] != x.shape[0]:
                raise ValueError(f"extractor must return a tensor (B, F) with B = {x.shape[0]}, "
                                 f"got {getattr(feats, 'shape', type(feats))}")
            feats = feats.reshape(feats.shape[0], -1).to(device="cpu", dtype=torch.float64)
            if not torch.isfinite(feats).all():
                raise ValueError(f"extractor returned non-finite features for images {start}..{start + len(x) - 1}")
            if shift is None:
                shift = feats.mean(0)
                s1 = torch.zeros_like(shift)
                s2 = torch.zeros(shift.shape[0], shift.shape[0], dtype=torch.float64)
            centred = feats - shift
            s1 += centred.sum(0)
            s2 += centred.T @ centred
    finally:
        if was_training:
            extractor.train()
    mean_c = s1 / n
    sigma = (s2 - n * torch.outer(mean_c, mean_c)) / (n - 1)
    return shift + mean_c, 0.5 * (sigma + sigma.T)


def fid(images_a: ArrayLike, images_b: ArrayLike, extractor: Callable[[Tensor], Tensor],
        batch_size: int = 64) -> float:
    """FID between two image sets under ``extractor`` (e.g. ``InceptionFeatures.from_file(path)``)."""
    mu_a, sigma_a = feature_statistics(images_a, extractor, batch_size)
    mu_b, sigma_b = feature_statistics(images_b, extractor, batch_size)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


# --------------------------------------------------------------------------------------------
# FID Inception-v3 (pytorch-fid / TF FID graph), written out in plain torch
# --------------------------------------------------------------------------------------------


class _ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3) → ReLU; children named ``conv`` and ``bn``."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TF's average pool ignores the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b/5c/5d → 224 + pool_features channels
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class _BlockB(nn.Module):  # Mixed_6a: 288 → 768, stride 2
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class _BlockC(nn.Module):  # Mixed_6b..6e: 768 → 768, factorised 7x7
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):  # Mixed_7a: 768 → 1280, stride 2
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b (avg pool) / Mixed_7c (max pool, as in the TF FID graph) → 2048
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


class InceptionFeatures(nn.Module):
    """FID Inception-v3: images ``(B, 3, H, W)`` in ``[0, 1]`` → pool3 features ``(B, 2048)``.

    Preprocessing as pytorch-fid: bilinear resize to 299×299 (``align_corners=False``), then
    ``2x - 1``. Module names follow torchvision's ``Inception3`` without the auxiliary head and
    with the 1008-class ``fc`` of the TF graph (``Conv2d_1a_3x3.conv.weight``, ...,
    ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``), i.e. exactly the keys of
    ``pt_inception-2015-12-05-6726825d.pth``. ``fc`` is kept only so that the file loads strictly;
    it is never evaluated. The module is frozen: no gradients, and always in eval mode.

    A freshly constructed module is randomly initialised (useful for tests only); real FIDs need
    :meth:`from_file`.
    """

    FEATURE_DIM = 2048
    NUM_CLASSES = 1008  # the TF 2015-12-05 graph's classifier (1000 ImageNet classes + 8 unused)

    def __init__(self, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(self.FEATURE_DIM, self.NUM_CLASSES)
        # He init keeps activations O(1) through the 94 conv layers, so that a randomly initialised
        # network (tests only) still gives informative features; real weights replace all of it.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        """Always stays in eval mode (BatchNorm must use the stored statistics)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        x = x.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        elif min(x.shape[-2:]) < 75:
            raise ValueError(f"Inception-v3 needs inputs of at least 75×75 without resizing, got {tuple(x.shape)}")
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, resize_input: bool = True) -> "InceptionFeatures":
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a ``.safetensors`` copy).

        ``.pth`` files are read with ``torch.load(..., weights_only=True)`` only (never a full
        unpickle). Keys and shapes are checked strictly: a missing or unexpected key, or a shape
        mismatch, raises ``ValueError`` naming the file and the first offending keys. Two
        omissions are tolerated because they do not affect the features: BatchNorm
        ``num_batches_tracked`` counters and the unused classifier ``fc.*``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file not found: {path}. Download {FID_WEIGHTS_FILENAME} yourself from "
                f"{FID_WEIGHTS_URL} (functa never downloads it) and pass its path.")
        state = _read_state_dict(path)
        model = cls(resize_input=resize_input)
        model.load_checked_state_dict(state, source=str(path))
        return model

    def load_checked_state_dict(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Strict key/shape check (see :meth:`from_file`), then load."""
        if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
            raise ValueError(f"{source} is not a state dict (mapping of names to tensors), "
                             f"got {type(state).__name__}")
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
        if bad:
            raise ValueError(f"{source} is not a state dict of tensors: non-tensor values at {bad[:5]}")
        own = self.state_dict()
        optional = {k for k in own if k.endswith(".num_batches_tracked") or k.startswith("fc.")}
        missing = [k for k in own if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"{source} is not an FID Inception-v3 state dict (expected pytorch-fid's {FID_WEIGHTS_FILENAME}): "
                f"{len(missing)} missing keys (first: {missing[:5]}), {len(unexpected)} unexpected keys "
                f"(first: {unexpected[:5]})")
        shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                  if tuple(v.shape) != tuple(own[k].shape)]
        if shapes:
            raise ValueError(f"{source} does not match the FID Inception-v3 shapes ({len(shapes)} mismatches, "
                             f"first: {shapes[:3]})")
        if "fc.weight" in state and "fc.bias" not in state or "fc.bias" in state and "fc.weight" not in state:
            raise ValueError(f"{source} has only one of fc.weight / fc.bias")
        result = self.load_state_dict(dict(state), strict=False)
        assert not result.unexpected_keys


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} could not be read as a safetensors file: {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{path} could not be loaded as a weights-only torch state dict (arbitrary pickles "
                         f"are refused): {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return state
