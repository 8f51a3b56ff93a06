"""MATLAB-compatible bicubic resizing, as ``imresize(img, scale, 'bicubic')`` makes SR test inputs.

Keys' cubic kernel with a = -0.5; when shrinking, the kernel is stretched by 1/scale (antialiasing);
borders are extended symmetrically (mirror including the edge pixel); output pixel ``j`` (1-based)
samples the input at ``j / scale + 0.5 (1 - 1 / scale)``, which keeps pixel centres aligned.
Works on float arrays and returns float64 without rounding; MATLAB rounds when its input is uint8
(``images.to_uint8`` does the same rounding). Agreement with MATLAB is to floating-point round-off.
"""
from __future__ import annotations

import math

import numpy as np


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
