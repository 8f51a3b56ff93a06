"""Resampling and synthetic degradations of clean float images in [0, 1], for demos and for users
without paired data.

Each degradation is a function ``f(img, rng) -> degraded`` of an H x W x 3 float image and a NumPy
random generator, deterministic given the generator's seed (:data:`DEGRADATIONS`).

:func:`imresize` is MATLAB-compatible bicubic resizing, as ``imresize(img, scale, 'bicubic')`` makes
SR test inputs: Keys' cubic kernel with a = -0.5; when shrinking, the kernel is stretched by 1/scale
(antialiasing); borders are extended symmetrically (mirror including the edge pixel); output pixel
``j`` (1-based) samples the input at ``j / scale + 0.5 (1 - 1 / scale)``, which keeps pixel centres
aligned. It works on float arrays and returns float64 without rounding; MATLAB rounds when its input
is uint8 (``images.to_uint8`` does the same rounding). Agreement with MATLAB is to floating-point
round-off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np


# ----------------------------------------------------------------------------- MATLAB's bicubic resize
def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The ``out_len x in_len`` matrix that resizes one axis (rows of weights summing to 1)."""
    kernel_width = 4.0
    stretch = scale < 1 and antialias
    if stretch:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(x - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]            # 1-based input positions
    dist = x[:, None] - idx
    weights = scale * cubic(scale * dist) if stretch else cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # symmetric borders
    cols = mirror[(idx.astype(np.int64) - 1) % (2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), cols.ravel()), weights.ravel())
    return matrix


def imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             antialias: bool = True) -> np.ndarray:
    """Resize an H x W (x C) float image by ``scale`` (output side ``ceil(side * scale)``) or to
    ``output_shape``, like MATLAB's ``imresize(..., 'bicubic')``."""
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape[:2]
    if output_shape is None:
        if scale is None:
            raise ValueError("give scale or output_shape")
        output_shape = (int(math.ceil(h * scale)), int(math.ceil(w * scale)))
        scales = (scale, scale)
    else:
        scales = (output_shape[0] / h, output_shape[1] / w)
    # MATLAB resizes the axis that shrinks most first; rows first on a tie.
    order = sorted(range(2), key=lambda a: scales[a])
    out = img
    for axis in order:
        m = resize_matrix(out.shape[axis], output_shape[axis], scales[axis], antialias)
        out = np.moveaxis(np.tensordot(m, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


# ----------------------------------------------------------------------------- the degradations
def bicubic_down(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """MATLAB-style antialiased bicubic downscaling by ``scale`` (the DIV2K x4 "bicubic" track).

    The image is first cropped at the bottom/right to a multiple of ``scale`` so that the
    high-resolution and low-resolution grids stay aligned.
    """
    h, w = img.shape[:2]
    img = img[: h - h % scale, : w - w % scale]
    return np.clip(imresize(img, 1.0 / scale), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- rain
@dataclass(frozen=True)
class RainSetting:
    density: tuple[float, float]    # fraction of pixels that seed a streak
    length: tuple[int, int]         # streak length in pixels
    strength: tuple[float, float]   # peak opacity of a streak
    width_sigma: float              # Gaussian blur that gives streaks their width
    max_angle: float = 25.0         # degrees from vertical, one angle per image
    jitter: float = 3.0             # degrees of per-streak-group spread around it


RAIN_SETTINGS = {
    # Rain100L-like: sparse, thin, mostly parallel streaks
    "light": RainSetting(density=(0.0008, 0.0016), length=(12, 24), strength=(0.45, 0.7), width_sigma=0.6),
    # Rain100H-like: dense, longer, brighter and wider streaks
    "heavy": RainSetting(density=(0.004, 0.008), length=(20, 40), strength=(0.6, 0.9), width_sigma=1.0,
                         jitter=6.0),
}


def line_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised anti-aliased line of ``length`` pixels, ``angle`` degrees from vertical."""
    size = length + 2 + (length + 1) % 2  # odd, so the line is centred
    c = size // 2
    dx, dy = np.sin(np.radians(angle)) * length / 2, np.cos(np.radians(angle)) * length / 2
    canvas = np.zeros((size * 4, size * 4), np.float32)  # draw at 4x, then shrink: sub-pixel lines
    p0 = (int(round((c - dx) * 4 + 2)), int(round((c - dy) * 4 + 2)))
    p1 = (int(round((c + dx) * 4 + 2)), int(round((c + dy) * 4 + 2)))
    cv2.line(canvas, p0, p1, 1.0, thickness=4, lineType=cv2.LINE_AA)
    kernel = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.max()


def rain_streaks(shape: tuple[int, int], rng: np.random.Generator, setting: str = "light",
                 groups: int = 4) -> tuple[np.ndarray, float]:
    """A rain layer in [0, 1] (H x W) and its angle in degrees from vertical.

    Sparse random seeds are smeared by a line kernel of random length; the seeds fall into a few
    groups, each with the image's angle plus a small jitter, and a slight blur gives streaks width.
    """
    cfg = RAIN_SETTINGS[setting]
    h, w = shape
    angle = float(rng.uniform(-cfg.max_angle, cfg.max_angle))
    density = rng.uniform(*cfg.density)
    layer = np.zeros((h, w), np.float32)
    for _ in range(groups):
        seeds = (rng.random((h, w)) < density / groups).astype(np.float32) * rng.uniform(0.6, 1.0, (h, w)).astype(np.float32)
        kernel = line_kernel(int(rng.integers(cfg.length[0], cfg.length[1] + 1)),
                             angle + float(rng.normal(0, cfg.jitter)))
        layer = np.maximum(layer, cv2.filter2D(seeds, -1, kernel, borderType=cv2.BORDER_CONSTANT))
    layer = cv2.GaussianBlur(layer, (0, 0), cfg.width_sigma)
    layer *= rng.uniform(*cfg.strength) / max(float(layer.max()), 1e-6)
    return np.clip(layer, 0.0, 1.0), angle


def add_rain(img: np.ndarray, rng: np.random.Generator, setting: str = "light") -> np.ndarray:
    """Rain streaks screen-blended over a clean image: ``1 - (1 - J)(1 - R)``, which stays in [0, 1]."""
    layer, _ = rain_streaks(img.shape[:2], rng, setting)
    return (1.0 - (1.0 - img) * (1.0 - layer[:, :, None])).astype(np.float32)


# ----------------------------------------------------------------------------- haze
def depth_proxy(shape: tuple[int, int], rng: np.random.Generator | None = None) -> np.ndarray:
    """A smooth scene-depth stand-in in [0, 1] that needs no depth network.

    Outdoor photographs are mostly far at the top (sky, horizon) and near at the bottom, and far
    toward a vanishing point near the centre. The proxy mixes the two: ``0.7 * (1 - y / H) +
    0.3 * (1 - r / r_max)`` with ``r`` the distance to a point near the centre (jittered with
    ``rng``), blurred with a Gaussian of a tenth of the image's shorter side, and rescaled to [0, 1].
    """
    h, w = shape
    cy, cx = h / 2, w / 2
    if rng is not None:
        cy += rng.uniform(-0.1, 0.1) * h
        cx += rng.uniform(-0.1, 0.1) * w
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    vertical = 1.0 - y / max(h - 1, 1)
    r = np.hypot(y - cy, x - cx)
    radial = 1.0 - r / r.max()
    d = cv2.GaussianBlur(0.7 * vertical + 0.3 * radial, (0, 0), max(1.0, min(h, w) / 10))
    return (d - d.min()) / max(float(d.max() - d.min()), 1e-6)


HAZE_BETA = (0.5, 2.5)       # light (t >= 0.6 near, 0.3 far) to dense (t ~ 0.08 far)
HAZE_AIRLIGHT = (0.7, 1.0)
HAZE_DEPTH = (0.2, 1.0)      # the proxy's [0, 1] mapped to this range of optical depth per unit beta


def add_haze(img: np.ndarray, rng: np.random.Generator, beta: float | None = None,
             airlight: float | None = None) -> np.ndarray:
    """The atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``d`` is :func:`depth_proxy` mapped to [0.2, 1]; ``beta`` is drawn from [0.5, 2.5] and the grey
    airlight ``A`` from [0.7, 1.0] unless given.
    """
    beta = float(rng.uniform(*HAZE_BETA)) if beta is None else beta
    airlight = float(rng.uniform(*HAZE_AIRLIGHT)) if airlight is None else airlight
    d = HAZE_DEPTH[0] + (HAZE_DEPTH[1] - HAZE_DEPTH[0]) * depth_proxy(img.shape[:2], rng)
    t = np.exp(-beta * d)[:, :, None]
    return np.clip(img * t + airlight * (1.0 - t), 0.0, 1.0).astype(np.float32)


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "bicubic-x4": lambda img, rng: bicubic_down(img, 4),
    "rain-light": lambda img, rng: add_rain(img, rng, "light"),
    "rain-heavy": lambda img, rng: add_rain(img, rng, "heavy"),
    "haze": add_haze,
}


def degradation_scale(name: str) -> int:
    """How much smaller a degradation makes the image (4 for bicubic-x4, 1 otherwise)."""
    return 4 if name == "bicubic-x4" else 1
