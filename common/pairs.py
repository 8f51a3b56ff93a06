"""Which degraded image goes with which ground truth, for validation and testing."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .images import list_images


@dataclass(frozen=True)
class Pair:
    name: str            # the name results are written under (no extension)
    input: Path
    gt: Path | None      # None: restore only, no metrics


def pair_folders(input_dir: str | os.PathLike, gt_dir: str | os.PathLike | None = None) -> list[Pair]:
    """Pair the images of two folders by file name (extensions may differ: ``a.png`` with ``a.jpg``).

    Without ``gt_dir`` every input image is listed alone. Names found on one side only are an error
    that lists them, so that nothing is silently skipped.
    """
    inputs = list_images(input_dir)
    if not inputs:
        raise InputError(f"{input_dir}: no images in the input folder")
    if gt_dir is None:
        return [Pair(p.stem, p, None) for p in inputs]
    gts = list_images(gt_dir)
    by_stem = {p.stem: p for p in gts}
    missing = [p.name for p in inputs if p.stem not in by_stem]
    extra = sorted({p.stem for p in gts} - {p.stem for p in inputs})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no ground truth in {gt_dir} for {len(missing)} input(s): {', '.join(missing[:10])}")
        if extra:
            parts.append(f"no input in {input_dir} for {len(extra)} ground truth(s): {', '.join(extra[:10])}")
        raise InputError("; ".join(parts))
    return [Pair(p.stem, p, by_stem[p.stem]) for p in inputs]
