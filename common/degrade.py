"""Synthetic degradations of clean float images in [0, 1], for demos and for users without paired data.

Each is a function ``f(img, rng) -> degraded`` of an H x W x 3 float image and a NumPy random
generator, deterministic given the generator's seed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .resize import imresize


def bicubic_down(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """MATLAB-style antialiased bicubic downscaling by ``scale`` (the DIV2K x4 "bicubic" track).

    The image is first cropped at the bottom/right to a multiple of ``scale`` so that the
    high-resolution and low-resolution grids stay aligned.
    """
    h, w = img.shape[:2]
    img = img[: h - h % scale, : w - w % scale]
    return np.clip(imresize(img, 1.0 / scale), 0.0, 1.0).astype(np.float32)


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "bicubic-x4": lambda img, rng: bicubic_down(img, 4),
}


def degradation_scale(name: str) -> int:
    """How much smaller a degradation makes the image (4 for bicubic-x4, 1 otherwise)."""
    return 4 if name == "bicubic-x4" else 1
