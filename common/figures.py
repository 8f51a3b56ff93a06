"""Pictures to look at: labelled images side by side (input | output | clean), drawn with OpenCV, and
the training samples' grid."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .images import write_image

LABEL_HEIGHT = 26


def labelled(img: np.ndarray, text: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit RGB image resized (nearest) to ``size`` = (h, w) if given, under a white bar with ``text``."""
    if size is not None and img.shape[:2] != size:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    tile = cv2.copyMakeBorder(np.ascontiguousarray(img), LABEL_HEIGHT, 2, 2, 2, cv2.BORDER_CONSTANT,
                              value=(255, 255, 255))
    scale = min(0.55, max(0.3, img.shape[1] / 600))
    cv2.putText(tile, text, (5, LABEL_HEIGHT - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def side_by_side(path: str | os.PathLike, rows: list[list[tuple[str, np.ndarray]]]) -> Path:
    """Write a grid with one row per image: each cell ``(label, 8-bit RGB image)``, shown at the size of
    the row's last cell (an SR input is enlarged, nearest neighbour, so that pixels stay visible)."""
    lines = []
    for cells in rows:
        size = cells[-1][1].shape[:2]
        lines.append(np.concatenate([labelled(img, text, size) for text, img in cells], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [cv2.copyMakeBorder(line, 0, 0, 0, width - line.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
             for line in lines]
    write_image(path, np.concatenate(lines, axis=0))
    return Path(path)


def centre(img: np.ndarray, side: int) -> np.ndarray:
    """A centre crop of at most ``side`` x ``side``."""
    h, w = img.shape[:2]
    t, l = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[t:t + side, l:l + side]


def save_samples(path: Path, x: torch.Tensor, fake: torch.Tensor, clean: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """A grid with one row per sample: input | output | clean (unpaired) patch, 2 white pixels apart.
    Returns the grid (C x H x W) for TensorBoard."""
    k = min(rows, x.shape[0], clean.shape[0])
    tiles = [t.float().clamp(0, 1).cpu() for i in range(k) for t in (x[i], fake[i], clean[i])]
    c, h, w = tiles[0].shape
    gap = 2
    grid = torch.ones(c, k * (h + gap) + gap, 3 * (w + gap) + gap)
    for n, tile in enumerate(tiles):
        top, left = gap + (n // 3) * (h + gap), gap + (n % 3) * (w + gap)
        grid[:, top:top + h, left:left + w] = tile
    write_image(path, grid.permute(1, 2, 0).numpy())
    return grid
