"""Pictures to look at: labelled images side by side (input | output | clean) and the training
samples' grid, drawn with OpenCV; curves, drawn with matplotlib (its Agg canvas: no display needed)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.images import write_image
from ..system.files import atomic_write

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


# ----------------------------------------------------------------------------- curves (matplotlib)
def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A matplotlib figure on the Agg canvas, without pyplot's global state (safe beside training)."""
    # here, not at the top: matplotlib takes half a second to import, which test.py and every
    # train.py would pay before their first picture
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    def write(f):
        fig.savefig(f, format="png")
    atomic_write(path, write)
    return path


TRAINING_PANELS = (("val", "psnr", "validation PSNR (dB)"), ("val", "ssim", "validation SSIM"),
                   ("val", "score", "no-reference score (lower: closer to clean)"),
                   ("train", "w_distance", "critic's Wasserstein estimate"),
                   ("train", "transport", "transport cost R"), ("train", "gp", "gradient penalty"),
                   ("train", "l1", "L1 to the clean patch (supervised)"))


def measured_panels(logs: dict[str, list[dict]]) -> tuple:
    """The :data:`TRAINING_PANELS` whose quantity some record holds (without ground truth, validation
    logs PSNR and SSIM as null: no empty panels for them); at least the first."""
    panels = tuple(p for p in TRAINING_PANELS
                   if any(r.get("kind") == p[0] and r.get(p[1]) is not None for rs in logs.values() for r in rs))
    return panels or TRAINING_PANELS[:1]


def training_curves(path: Path, logs: dict[str, list[dict]]) -> Path:
    """One panel per quantity over steps, one colour per sigma (``logs``: folder name -> the records of
    its metrics.jsonl); validation PSNR and SSIM with the degraded input's as a dashed grey line."""
    panels = measured_panels(logs)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _figure(rows, cols, (4.2 * cols, 2.9 * rows))
    for ax, (kind, key, title) in zip(axes.flat, panels):
        for i, (name, records) in enumerate(sorted(logs.items())):
            points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), color=f"C{i % 10}", lw=1.4 if kind == "val" else 0.9,
                        marker="o" if kind == "val" and len(points) < 40 else None, ms=3, label=name)
        if kind == "val":  # every sigma validates on the same images: one line for their degraded input
            inputs = {r["step"]: r[f"input_{key}"] for records in logs.values() for r in records
                      if r.get("kind") == "val" and r.get(f"input_{key}") is not None}
            if inputs:
                steps = sorted(inputs)
                ax.plot(steps, [inputs[s] for s in steps], color="0.3", ls="--", lw=1.2, label="degraded input")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)


def study_curves(path: Path, curves: dict[str, list[list]], title: str) -> Path:
    """Validation PSNR against step, one colour per method: the mean over seeds as a line, the seeds'
    spread (their lowest to their highest) as a band, each seed faint."""
    fig, axes = _figure(1, 1, (9, 5.2))
    ax = axes[0, 0]
    for i, (label, seeds) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        seeds = [c for c in seeds if c]
        for curve in seeds:
            ax.plot(*zip(*curve), color=colour, lw=0.7, alpha=0.35)
        common = sorted(set.intersection(*(set(s for s, _ in c) for c in seeds))) if seeds else []
        if not common:
            continue
        values = np.array([[dict(c)[s] for s in common] for c in seeds])
        ax.plot(common, values.mean(axis=0), color=colour, lw=2.2, label=f"{label} (mean of {len(seeds)})")
        if len(seeds) > 1:
            ax.fill_between(common, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15, lw=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"{title}: validation PSNR; line: mean over seeds, band: their range")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def selection_scatter(path: Path, tasks: dict[str, list[tuple]]) -> Path:
    """The no-reference study's picture: per task (a column), validation PSNR against the score of every
    checkpoint, against the training set's clean patches (top) and against clean photographs of other
    scenes the model never saw (bottom), a colour per sigma. ``tasks``: name -> (score vs training set, score vs unseen
    clean, PSNR, sigma) per checkpoint."""
    fig, axes = _figure(2, max(1, len(tasks)), (4.4 * max(1, len(tasks)), 7.2))
    for col, (name, points) in enumerate(tasks.items()):
        sigmas = sorted({p[3] for p in points}, reverse=True)
        for row, title in enumerate(("against the training set's clean patches", "against clean photographs not trained on")):
            ax = axes[row, col]
            for i, sigma in enumerate(sigmas):
                xy = [(p[row], p[2]) for p in points if p[3] == sigma]
                ax.scatter(*zip(*xy), s=10, color=f"C{i % 10}", label=f"sigma {sigma:g}")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.ticklabel_format(useOffset=False)  # scores that differ in the fourth digit: no "+0.305" offset
            ax.locator_params(axis="x", nbins=5)
            ax.set_xlabel("no-reference score (lower: closer to clean)")
            ax.set_ylabel("validation PSNR (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)
