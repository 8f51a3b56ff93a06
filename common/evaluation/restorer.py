"""Restoring an image from any script: a checkpoint's generator, loaded once, run on one image at a time
exactly as ``test.py`` runs it on each of a folder's (the same code: ``evaluate.restore_degraded``).

    import common
    restored = common.restore_image("best.pt", "photo.png")  # H x W x 3 uint8; an SR model's is 4x larger
    restore = common.Restorer("best.pt", tile=512)           # loaded once, for many images
    outputs = [restore(image) for image in images]           # RGB arrays: uint8, or float in [0, 1]
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..cli.flags import PRECISIONS
from ..data.images import read_image, tensor_to_image, to_uint8
from ..system.errors import InputError
from ..tasks import TASKS, Task, UPSCALERS
from ..training.checkpoint import build_generator, read_checkpoint, trained_align_corners, trained_task
from ..training.devices import resolve_device, resolve_precision
from .evaluate import restore_degraded
from .inference import MIN_TILE, TILE_CONTEXT

ARRAY = "the image array"  # what names an image given as an array, where one is refused


class Restorer:
    """A checkpoint's generator (ours or the authors'), loaded once; ``restorer(image)`` restores an image.

    ``checkpoint``: the file. ``task`` ("sr", "deraining" or "dehazing"): the checkpoint's own by default;
    the authors' files record none, so name it for theirs. ``device``: "cpu", "cuda", "cuda:1"...
    (default: CUDA where available, else the CPU). ``precision``: "auto" (bf16 on CUDA, fp32 on the
    CPU, as test.py), "bf16" or "fp32". ``tile``: restore in tiles of that side (at least 32 pixels) with
    ``tile_overlap`` pixels of context, for images too large for memory; without it, an image too
    large for the CPU's memory, or a GPU's, is restored in tiles by itself.

    SR only: the input is low-resolution and is upsampled x4 (bicubic, ``upscale`` "pytorch" as in
    training or "matlab" as the paper's test inputs were made, with the checkpoint's ``align_corners``
    unless given) before G, so the result is 4x larger; ``prescaled=True`` for an input already at the
    output's size (the authors' test setup). ``transpose=True`` swaps height and width around G, for
    the authors' deraining models (docs/TESTING.md).

    Bad input raises :class:`common.system.errors.InputError` with one line that names the checkpoint
    or image and what is wrong; arguments of the wrong kind raise ``ValueError`` or ``TypeError``.
    """

    def __init__(self, checkpoint: str | os.PathLike, *, task: str | None = None, device: str | None = None,
                 precision: str = "auto", tile: int | None = None, tile_overlap: int = TILE_CONTEXT,
                 prescaled: bool = False, upscale: str = "pytorch", align_corners: bool | None = None,
                 transpose: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if upscale not in UPSCALERS:
            raise ValueError(f"upscale must be one of {', '.join(UPSCALERS)}, not {upscale!r}")
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
            raise ValueError(f"tile must be a whole number of at least {MIN_TILE} pixels (a smaller tile spends "
                             f"most of its time on the context around it), not {tile!r}")
        if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
            raise ValueError(f"tile_overlap must be a whole number of pixels, 0 or more, not {tile_overlap!r}")
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(str(device) if device is not None else
                                     "cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(precision, self.device)
        ckpt = read_checkpoint(self.checkpoint)
        self.task = checkpoint_task(ckpt, self.checkpoint, task)
        self.generator = build_generator(ckpt, self.checkpoint, device=self.device).to(self.device).eval()
        self.align_corners = trained_align_corners(ckpt) if align_corners is None else bool(align_corners)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.prescaled, self.upscale, self.transpose = prescaled, upscale, transpose

    def __call__(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        """The restored image, H' x W' x 3 RGB: H x W for deraining and dehazing, 4H x 4W for SR (H x W
        with ``prescaled``). ``image``: an image file (read as test.py reads it: as viewers show it), or an
        RGB array H x W x 3 of uint8 or of floats in [0, 1] (OpenCV's ``imread`` gives BGR: pass
        ``img[..., ::-1]``). Returned as uint8 for a file or a uint8 array (the 8-bit image test.py
        writes), as float32 in [0, 1] for a float array."""
        img, source, as_uint8 = _read(image)
        _, restored = restore_degraded(
            self.generator, img, self.task, self.device, source, align_corners=self.align_corners,
            prescaled=self.prescaled, upscale=self.upscale, precision=self.precision, tile=self.tile,
            tile_overlap=self.tile_overlap, transpose=self.transpose, model=str(self.checkpoint))
        restored = tensor_to_image(restored)
        return to_uint8(restored) if as_uint8 else restored


def restore_image(checkpoint: str | os.PathLike, image: str | os.PathLike | np.ndarray, **options) -> np.ndarray:
    """``image`` (a file, or an RGB array of uint8 or of floats in [0, 1]) restored with ``checkpoint``:
    ``Restorer(checkpoint, **options)(image)`` (see :class:`Restorer` for the options and what comes
    back). To restore several images, make one :class:`Restorer`: this loads the checkpoint each call."""
    return Restorer(checkpoint, **options)(image)


def checkpoint_task(ckpt: dict, path: Path, task: str | Task | None) -> Task:
    """The task to restore as: the one given, else the one the checkpoint records. A task given that is
    not the checkpoint's own is refused, as test.py refuses another task's checkpoint: its inputs would be
    prepared another way (an SR model expects its input upsampled)."""
    recorded = trained_task(ckpt)
    if task is None:
        if isinstance(recorded, str) and recorded in TASKS:
            return TASKS[recorded]
        what = ("the authors' checkpoints record no task" if ckpt["format"] == "authors" else
                f"it records the task {recorded!r}, which this code does not know" if recorded else
                "it records no task")
        raise InputError(f"{path}: {what}; give task= one of {', '.join(map(repr, TASKS))}")
    name = task.name if isinstance(task, Task) else task
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, not {task!r}")
    if isinstance(recorded, str) and recorded != name:
        trained = TASKS[recorded].title if recorded in TASKS else repr(recorded)
        raise InputError(f"{path}: trained for {trained}, not for {TASKS[name].title}; leave out task= to restore "
                         "as it was trained")
    return TASKS[name]


def _read(image) -> tuple[np.ndarray, object, bool]:
    """(the image as H x W x 3 float32 in [0, 1], what names it, whether to return uint8)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image), Path(image), True
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image is a file's path or a NumPy array, not {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"an image array is H x W x 3 (RGB), not of shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255), ARRAY, True
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"an image array holds uint8 or floats in [0, 1], not {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError("the image array holds NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise ValueError(f"a float image array holds values in [0, 1], and this one's are {low:g} to {high:g}"
                         + ("; divide 8-bit values by 255" if high > 1 else ""))
    return image.astype(np.float32), ARRAY, False
