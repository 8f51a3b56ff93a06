"""What tests share that is not a fixture: small training files, images and checkpoints made here,
the networks' small sizes, and running a script as a user would."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from common.networks import Generator
from common.tasks import TASKS
from common.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_h5(path: Path, data: np.ndarray | None, label: np.ndarray | None, **attrs) -> Path:
    """A training file in our layout; ``None`` leaves that dataset out (a damaged file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, values in (("data", data), ("label", label)):
            if values is not None:
                f.create_dataset(name, data=values)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def sr_trainset(path: Path, n: int = 2, seed: int = 0) -> Path:
    """An x4 SR training file of ``n`` random uint8 patches a side: degraded 32x32, clean 128x128."""
    rng = np.random.default_rng(seed)
    return write_h5(path, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8))


def small_nets(gen_width: int = 8) -> list[str]:
    """train.py flags for networks small enough that a CPU trains a step in well under a second."""
    return ["--gen-width", str(gen_width), "--gen-increment", "8", "--critic-width", "8", "--no-tensorboard"]


def tiny_generator():
    """A seeded 8-wide generator: the same weights in every test that asks for one."""
    torch.manual_seed(0)
    return Generator(width=8, increment=8)


def generator_checkpoint(path: Path, generator=None, **fields) -> Path:
    """``generator`` (default :func:`tiny_generator`) saved as one of our checkpoints, with ``fields``."""
    g = tiny_generator() if generator is None else generator
    save_checkpoint(path, {"arch": {"generator": g.arch}, "generator": g.state_dict(), **fields})
    return path


def write_photos(folder: Path, names=("a.png", "b.png", "c.png"), side: int = 16, seed: int = 0,
                 wider: int = 0) -> Path:
    """Random side x (side + wider) colour images, each encoded as its name's suffix says (a user's
    own files: tests that hand them to test.py check that they survive)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        ok, encoded = cv2.imencode(Path(name).suffix, rng.integers(0, 256, (side, side + wider, 3), dtype=np.uint8))
        (folder / name).write_bytes(encoded.tobytes())
    return folder


def write_images(folder: Path, images: np.ndarray) -> Path:
    """uint8 images (N x 3 x H x W, RGB) written as ``0.png``, ``1.png``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image.transpose(1, 2, 0)[..., ::-1])
    return folder


class ShellPayload:
    """Unpickled, it would run a shell command that leaves ``marker`` behind: whether it ran can be seen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the task scripts as a user would, from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def smooth_photos(n: int, seed: int, side: int = 32):
    """Smooth random colour fields in 26..178 (uint8, N x 3 x side x side): room to brighten by 51."""
    low = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    fields = torch.nn.functional.interpolate(low, size=side, mode="bicubic", align_corners=False).clamp(0, 1)
    return (26 + 152 * fields).round().to(torch.uint8).numpy()


def brightened_set(tmp_path, monkeypatch, paired: bool):
    """An easy, fast set at 32x32 (the deraining task with 32-pixel patches and a 16-wide critic): each
    degraded image is a clean one brightened by 51 levels. Unpaired, the brightened ones are of other
    photographs than the clean ones; ``paired``, data[i] is label[i] brightened. Returns the held-out
    photographs (16, clean), written brightened to ``in/`` and as they are to ``gt/``."""
    monkeypatch.setitem(TASKS, "deraining", dataclasses.replace(TASKS["deraining"], patch=32, critic_hidden=16))
    clean, other = smooth_photos(64, 1), smooth_photos(64, 2)
    write_h5(tmp_path / "train" / "t.h5", (clean if paired else other) + 51, clean)
    held_out = smooth_photos(16, 3)
    write_images(tmp_path / "in", held_out + 51)
    write_images(tmp_path / "gt", held_out)
    return held_out
