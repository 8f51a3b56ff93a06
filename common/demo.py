"""A small built-in unpaired data set from the photographs that scikit-image ships.

Degraded patches come from some photographs, clean patches from others, and validation uses a third,
held-out group: no photograph is on two sides, so the training set is truly unpaired.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import H5PatchWriter, cut_patches
from .degrade import DEGRADATIONS, degradation_scale
from .images import write_image
from .tasks import Task

CLEAN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry")
DEGRADED_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "coffee")
HELDOUT_PHOTOS = ("chelsea", "camera", "brick")
HELDOUT_SIDE = 256  # centre crops keep CPU validation quick
DEMO_SEED = 2024


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float32 RGB in [0, 1] (grayscale ones are replicated)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3]


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(side, h, w) // 16 * 16
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def demo_paths(root: Path) -> dict[str, Path]:
    return {"trainset": root / "train", "val_input": root / "val" / "input", "val_gt": root / "val" / "gt"}


def build_demo_data(task: Task, root: str | Path, degradation: str, stride: int = 128) -> dict[str, Path]:
    """Write (once) the demo's training file and held-out validation folders under ``root``.

    Non-overlapping patches by default: a small set, so that epochs (and validations) come often.
    """
    root = Path(root)
    paths = demo_paths(root)
    train_file = paths["trainset"] / "demo.h5"
    if train_file.is_file():
        return paths
    rng = np.random.default_rng(DEMO_SEED)
    degrade = DEGRADATIONS[degradation]
    scale = degradation_scale(degradation)
    for name in HELDOUT_PHOTOS:
        clean = centre_crop(load_photo(name), HELDOUT_SIDE)
        write_image(paths["val_gt"] / f"{name}.png", clean)
        write_image(paths["val_input"] / f"{name}.png", degrade(clean, rng))
    attrs = {"source": "scikit-image sample photographs", "degradation": degradation, "seed": DEMO_SEED,
             "patch": task.patch, "stride": stride, "scale": scale,
             "clean_photos": ",".join(CLEAN_PHOTOS), "degraded_photos": ",".join(DEGRADED_PHOTOS)}
    with H5PatchWriter(train_file, attrs=attrs) as writer:
        for name in DEGRADED_PHOTOS:
            degraded = degrade(load_photo(name), rng)
            writer.append("data", cut_patches(degraded, task.patch // scale, stride // scale))
        for name in CLEAN_PHOTOS:
            writer.append("label", cut_patches(load_photo(name), task.patch, stride))
    return paths
