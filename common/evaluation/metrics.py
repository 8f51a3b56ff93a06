"""Image quality metrics: PSNR, MATLAB-matched SSIM and LPIPS (docs/METHOD.md, "Testing").

All functions take H x W x 3 RGB arrays. The evaluation measures the 8-bit images it writes, so it
passes images quantised to 8 bits (``images.to_uint8``); the functions themselves accept any values
on the stated scale.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..system.text import note

PSNR_CAP = 100.0  # the reference reports 100 dB for identical images instead of infinity


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """``20 log10(data_range / rmse)`` over all pixels and channels (RGB, no border shaved).

    Identical images give 100 dB, as in the reference, so that means stay finite.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rmse = math.sqrt(float(np.mean(diff * diff)))
    return PSNR_CAP if rmse == 0 else min(PSNR_CAP, 20.0 * math.log10(data_range / rmse))


SSIM_WINDOW = 11  # the Gaussian window's side (sigma 1.5, truncated at 3.5 sigma)
LPIPS_MIN_SIDE = 16  # AlexNet's first layers leave nothing of a smaller image


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float | None:
    """SSIM as MATLAB's ``ssim`` and Wang et al.'s reference code compute it.

    Gaussian window of sigma 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, population (not sample)
    covariances, on values in [0, ``data_range``] (8-bit images: 255). A colour image is measured per
    channel and the channels are averaged; a 2-D array (a Y channel) is measured as it is. An image
    smaller than the window has no SSIM: ``None`` (shown as n/a, left out of means).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if min(a.shape[:2]) < SSIM_WINDOW:
        return None
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=data_range,
                                       channel_axis=2 if a.ndim == 3 else None))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image in [0, 1], on the 8-bit studio scale [16, 235] (as MATLAB's rgb2ycbcr).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B``; the result is float64, not rounded.
    """
    img = np.asarray(img, dtype=np.float64)
    return 16.0 + img[..., 0] * 65.481 + img[..., 1] * 128.553 + img[..., 2] * 24.966


class LPIPS:
    """LPIPS distance with the ``lpips`` package: AlexNet trunk, linear layers v0.1, inputs in [-1, 1].

    The AlexNet trunk's ImageNet weights come from torchvision's download cache. Where they cannot be
    had (no network and no cached file), the metric says so once and returns ``None`` for every pair,
    so that an evaluation goes on without it. ``pretrained_trunk=False`` gives a random trunk: only
    for testing the plumbing.
    """

    def __init__(self, device: str = "cpu", pretrained_trunk: bool = True):
        self.device = device
        self.pretrained_trunk = pretrained_trunk
        self._model = None
        self.unavailable: str | None = None

    def _load(self):
        if self._model is None and self.unavailable is None:
            try:
                import lpips  # here: it loads torchvision (two seconds), which only LPIPS needs
                with warnings.catch_warnings():  # lpips still calls torchvision's deprecated `pretrained=`
                    warnings.simplefilter("ignore", UserWarning)
                    model = lpips.LPIPS(net="alex", version="0.1", verbose=False,
                                        pnet_rand=not self.pretrained_trunk)
                self._model = model.eval().to(self.device)
            except Exception as exc:  # no network, no cache, no package: all mean "not available"
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.unavailable = reason
                note("LPIPS unavailable: the AlexNet weights could not be loaded "
                     f"({reason}); place alexnet-owt-7be5be79.pth in ~/.cache/torch/hub/checkpoints/ "
                     "to enable it. The other metrics go on.")
        return self._model

    @property
    def available(self) -> bool:
        return self._load() is not None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """LPIPS between two RGB images in [0, 1] (H x W x 3), or ``None`` when unavailable."""
        model = self._load()
        if model is None or min(np.shape(a)[:2]) < LPIPS_MIN_SIDE:
            return None
        def prep(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(2, 0, 1)))
            return (t.unsqueeze(0) * 2 - 1).to(self.device)

        with torch.no_grad():
            return float(model(prep(a), prep(b)).item())
