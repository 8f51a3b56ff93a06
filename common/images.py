"""Reading and writing images, and moving them between NumPy (H x W x 3, RGB) and torch (1 x 3 x H x W)."""
from __future__ import annotations

import io
import os
import warnings
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
    # Read as bytes and decode in memory: no path reaches OpenCV's file functions, which crash on
    # names that are not valid UTF-8.
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the image ({exc.strerror or exc})") from None
    _check_decoded_size(path, buffer)
    try:
        raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    except cv2.error as exc:
        reason = "larger than OpenCV decodes" if "MAX_IMAGE_PIXELS" in str(exc) else "OpenCV cannot decode it"
        raise InputError(f"{path}: not a readable image ({reason})") from None
    if raw is None:
        raise InputError(f"{path}: not a readable image" + (" (an empty file)" if not buffer.size else ""))
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


def _header_size(buffer: np.ndarray) -> tuple[int, int] | None:
    """Width and height as the file's header declares them (Pillow reads only the header), or None."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        return None
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the size is what we want to know; nothing is decoded here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(buffer.tobytes())) as im:
                return im.size
    except Exception:  # not a format Pillow knows: OpenCV has the last word
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


# Bytes per pixel while an image is read: the decoded pixels (up to 16-bit RGBA), the float32 copy
# and the RGB copy of it.
READ_BYTES_PER_PIXEL = 8 + 12 + 12


def _check_decoded_size(path: Path, buffer: np.ndarray) -> None:
    """Refuse an image whose header declares more pixels than memory holds, before decoding it."""
    from .files import available_memory, human_bytes

    size = _header_size(buffer)
    available = available_memory()
    if size is None or available is None:
        return
    w, h = size
    needed = w * h * READ_BYTES_PER_PIXEL
    if needed > available:
        raise InputError(f"{path}: a {w}x{h} image needs about {human_bytes(needed)} of memory to read; "
                         f"{human_bytes(available)} is available")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to 8-bit, rounding to nearest (what a PNG of it holds)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a float RGB image in [0, 1] (or uint8) as an 8-bit file; the folder is created.

    Encoded in memory and written under a temporary name, then renamed: no path reaches OpenCV (see
    :func:`read_image`), and an interrupted write leaves no half image."""
    from .files import write_failure

    path = Path(path)
    data = img if img.dtype == np.uint8 else to_uint8(img)
    if data.ndim == 3:
        data = data[:, :, ::-1]
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(data))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"{path}: could not encode the image as {path.suffix or '.png'}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(encoded.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(write_failure(path, exc, encoded.size, "image")) from None


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 float array to a 1 x 3 x H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W (or 3 x H x W) tensor to an H x W x 3 float32 array, clipped to [0, 1]."""
    if t.dim() == 4:
        t = t[0]
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
