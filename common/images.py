"""Reading and writing images, and moving them between NumPy (H x W x 3, RGB) and torch (1 x 3 x H x W)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import InputError, note

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 RGB in [0, 1], H x W x 3.

    Grayscale is replicated to three channels, an alpha channel is dropped and 16-bit images are
    scaled by 1/65535, each with a note on stderr; anything unreadable is an :class:`InputError`.
    """
    path = Path(path)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        problem = "no such file" if not path.exists() else "not a readable image"
        raise InputError(f"{path}: {problem}")
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        note(f"{path}: 16-bit image, scaled to [0, 1] by 1/65535")
        img = raw.astype(np.float32) / 65535.0
    elif raw.dtype == np.float32 and np.isfinite(raw).all():
        img = np.clip(raw, 0.0, 1.0)
    else:
        raise InputError(f"{path}: unsupported pixel type {raw.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        note(f"{path}: grayscale image, converted to RGB")
        return np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"{path}: expected 1, 3 or 4 channels, got shape {raw.shape}")
    if img.shape[2] == 4:
        note(f"{path}: RGBA image, alpha channel dropped")
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])  # OpenCV reads BGR


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to 8-bit, rounding to nearest (what a PNG of it holds)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a float RGB image in [0, 1] (or uint8) as an 8-bit file; the folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = img if img.dtype == np.uint8 else to_uint8(img)
    if data.ndim == 3:
        data = data[:, :, ::-1]
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise InputError(f"{path}: could not write the image (is the folder writable?)")


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 float array to a 1 x 3 x H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W (or 3 x H x W) tensor to an H x W x 3 float32 array, clipped to [0, 1]."""
    if t.dim() == 4:
        t = t[0]
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
