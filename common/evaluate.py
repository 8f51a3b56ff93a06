"""Restoring images with a generator and measuring them against ground truth (METHOD 7).

Shared by every task's ``test.py`` and by validation during training. The restored image is
quantised to 8 bits, written as PNG, and the metrics are taken on exactly what was written.
The degraded input (bicubic-upsampled for SR) is measured the same way, as the baseline.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .errors import InputError
from .images import image_to_tensor, read_image, tensor_to_image, to_uint8, write_image
from .inference import restore
from .metrics import LPIPS, psnr, rgb_to_y, ssim
from .pairs import Pair
from .tasks import Task, model_input



def measure(restored: np.ndarray, gt: np.ndarray, lpips: LPIPS | None, y_channel: bool) -> dict:
    """PSNR, SSIM (RGB, or BT.601 Y with ``y_channel``) and LPIPS (always RGB) of two uint8 images."""
    a, b = restored.astype(np.float64) / 255.0, gt.astype(np.float64) / 255.0
    if y_channel:
        ya, yb = rgb_to_y(a), rgb_to_y(b)
        row = {"psnr": psnr(ya, yb, data_range=255.0), "ssim": ssim(ya, yb, data_range=255.0)}
    else:
        row = {"psnr": psnr(a, b), "ssim": ssim(restored, gt)}
    row["lpips"] = lpips(a, b) if lpips is not None else None
    return row


def match_gt(gt: np.ndarray, shape: tuple[int, int], pair: Pair, scale: int) -> np.ndarray:
    """The ground truth at the restored image's size. A ground truth larger by less than the SR scale
    (LR sides are floor(HR / scale)) is cropped at the bottom/right; any other difference is an error."""
    h, w = shape
    gh, gw = gt.shape[:2]
    if (gh, gw) == (h, w):
        return gt
    if 0 <= gh - h < scale and 0 <= gw - w < scale:
        return gt[:h, :w]
    raise InputError(f"{pair.gt}: ground truth is {gw}x{gh} but the restored {pair.input.name} is {w}x{h}"
                     + (f" (input x{scale})" if scale > 1 else ""))


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    @property
    def means(self) -> dict:
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "name"]
        return {k: self.mean(k) for k in keys}


def evaluate(generator: torch.nn.Module, pairs: list[Pair], task: Task, device: torch.device, *,
             align_corners: bool = False, prescaled: bool = False, save_dir: str | os.PathLike | None = None,
             lpips: LPIPS | None = None, y_channel: bool = False, precision: str = "fp32",
             transpose: bool = False, tile: int | None = None, tile_overlap: int = 32,
             progress: bool = True) -> Evaluation:
    """Restore every pair's input, write it under ``save_dir`` (if given) and measure it (if it has a
    ground truth). Returns one row per image with the restored and the input's metrics.

    ``transpose`` swaps height and width around G, for models trained on MATLAB-layout files read
    as they are (their patches were stored W x H), as the reference's deraining test does.
    ``tile`` restores in tiles with ``tile_overlap`` pixels of context (see ``common.inference``).
    """
    generator.eval()
    result = Evaluation()
    save_dir = Path(save_dir) if save_dir is not None else None
    for pair in tqdm(pairs, desc="restoring", unit="img", disable=not progress, leave=False):
        x = image_to_tensor(read_image(pair.input)).to(device)
        if not prescaled:
            x = model_input(task, x, align_corners)
        if transpose:
            restored = restore(generator, x.transpose(-1, -2), precision, tile, tile_overlap).transpose(-1, -2)
        else:
            restored = restore(generator, x, precision, tile, tile_overlap)
        restored = to_uint8(tensor_to_image(restored))
        if save_dir is not None:
            write_image(save_dir / f"{pair.name}.png", restored)
        row: dict = {"name": pair.name}
        if pair.gt is not None:
            gt = to_uint8(match_gt(read_image(pair.gt), restored.shape[:2], pair, task.scale))
            baseline = to_uint8(tensor_to_image(x))
            row.update(measure(restored, gt, lpips, y_channel))
            row.update({f"input_{k}": v for k, v in measure(baseline, gt, lpips, y_channel).items()})
        result.rows.append(row)
    if save_dir is not None and any(len(r) > 1 for r in result.rows):
        write_metrics_csv(save_dir / "metrics.csv", result)
    return result


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) and not math.isinf(v) else str(v)


def write_metrics_csv(path: Path, result: Evaluation) -> None:
    keys = [k for k in result.rows[0] if k != "name"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", *keys])
        for row in result.rows:
            writer.writerow([row["name"], *(_fmt(row.get(k)) for k in keys)])
        writer.writerow(["mean", *(_fmt(result.mean(k)) for k in keys)])


def format_row(row: dict, input_label: str = "input") -> str:
    """``name  PSNR 28.31 dB  SSIM 0.8012  LPIPS 0.0612  (bicubic: 26.77 dB ...)``."""
    def part(prefix: str) -> str:
        return (f"PSNR {_fmt(row.get(prefix + 'psnr'))} dB  SSIM {_fmt(row.get(prefix + 'ssim'))}  "
                f"LPIPS {_fmt(row.get(prefix + 'lpips'))}")
    if row.get("psnr") is None:
        return f"{row['name']}: restored"
    return f"{row['name']}: {part('')}   ({input_label}: {part('input_')})"
