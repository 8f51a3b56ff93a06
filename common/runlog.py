"""What a run writes and reads back beside its checkpoints: the metrics log, sample pictures,
JSON files (``run.json``, ``config.json``, ``state.json``) and sigma folder names."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from .checkpoint import atomic_write
from .errors import InputError
from .files import write_failure


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed and fsynced, so a crash loses at
    most the line being written); mirrors scalars to TensorBoard if the package is installed."""

    def __init__(self, path: Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            self._truncate_after(resume_step)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(path.parent / "tensorboard"), purge_step=resume_step or None)

    def _truncate_after(self, step: int) -> None:
        """Drop what came after the checkpoint being resumed (it will be done again) and any line a
        crash cut short; rewritten atomically."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write(self.path, lambda f: f.write("".join(k + "\n" for k in kept).encode()))

    def write(self, record: dict) -> None:
        record = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: at most this line is lost, or cut short (dropped on resume)
            raise InputError(write_failure(self.path, exc, None, "metrics log")) from None
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("step", "epoch", "time"):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record.get("step", 0))

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_samples(path: Path, x: torch.Tensor, fake: torch.Tensor, clean: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """A grid with one row per sample: input | output | clean (unpaired) patch, 2 white pixels apart.
    Returns the grid (C x H x W) for TensorBoard."""
    from .images import write_image

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


def sigma_dir_name(sigma: float) -> str:
    return f"sigma-{sigma:g}"


def json_ready(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def write_json(path: Path, data: dict) -> None:
    try:
        atomic_write(path, lambda f: f.write(json.dumps(json_ready(data), indent=2).encode()))
    except OSError as exc:  # the previous file is intact (atomic write)
        raise InputError(write_failure(path, exc, None, "file")) from None


def read_json(path: Path) -> dict:
    """A JSON file of a run folder; a damaged one is an InputError naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as JSON ({exc}); the run folder is damaged") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a {type(data).__name__}, not a JSON object; the run folder is damaged")
    return data


def read_state(run_dir: Path) -> dict | None:
    """The run's ``state.json`` (newest checkpoint, step, finished), or None for a run never saved."""
    path = run_dir / "state.json"
    if path.is_file():
        state = read_json(path)
        name = state.get("checkpoint")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise InputError(f"{path}: names no checkpoint of this folder ({name!r}); the run folder is damaged")
        if any(isinstance(state.get(k, 0), bool) or not isinstance(state.get(k, 0), int) for k in ("step", "epoch")):
            raise InputError(f"{path}: its step or epoch is not a whole number; the run folder is damaged")
        return state
    if (run_dir / "last.pt").is_file():  # a run from before state.json: its last.pt is the newest
        return {"checkpoint": "last.pt", "finished": False}
    return None
