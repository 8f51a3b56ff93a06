"""What a run keeps in its folder and reads back: each sigma's checkpoints (saved atomically, the
newest two step checkpoints kept, ``state.json`` pointing at the newest complete one), its
``config.json`` and metrics log, and the JSON files beside them. A damaged checkpoint found on
resume is named together with the newest intact one and the command that resumes from it.

    <out>/<task>/<name>/run.json           the sweep's configuration (common.training.config)
    <out>/<task>/<name>/sigma-<s>/          one model per sigma: config.json, last.pt, step-NNNNNNNN.pt,
                                            best.pt, state.json, metrics.jsonl, samples/
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import torch

from ..system.errors import InputError, TrainingStopped
from ..system.files import atomic_write, remove_stale_temporaries, write_failure
from ..system.text import note
from .checkpoint import named_tensors, read_checkpoint, save_checkpoint, state_bytes

STEP_CHECKPOINT = re.compile(r"step-(\d{8,})\.pt")  # f"step-{step:08d}.pt"

# The files a run writes, folder by folder: the only names whose temporaries are removed there
RUN_FILES = {".": re.compile(r"run\.json|report\.html"), "report_files": re.compile(r"curves\.png")}
SIGMA_FILES = {".": re.compile(rf"config\.json|state\.json|metrics\.jsonl|last\.pt|best\.pt|{STEP_CHECKPOINT.pattern}"),
               "samples": re.compile(r"epoch-\d{4,}\.png")}


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed and fsynced, so a crash loses at
    most the line being written); mirrors scalars to TensorBoard if the package is installed."""

    def __init__(self, path: Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            self._truncate_after(resume_step)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter  # only where installed and asked for
            self.writer = SummaryWriter(str(path.parent / "tensorboard"), purge_step=resume_step or None)

    def _truncate_after(self, step: int) -> None:
        """Drop what came after the checkpoint being resumed (it will be done again) and any line a
        crash cut short; rewritten atomically."""
        kept, foreign = [], 0
        for line, record in decoded_lines(self.path):
            if not is_metrics_record(record):
                foreign += 1
            elif record.get("step", 0) <= step:
                kept.append(line)
        if foreign:
            note(f"{self.path}: dropped {foreign} line(s) that are not metrics records (each a JSON object with a "
                 "whole-number step)")
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


def decoded_lines(path: Path):
    """(line, its JSON value) for each line of a metrics.jsonl that decodes (a line a crash cut short
    does not)."""
    for line in path.read_text(errors="replace").splitlines():
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue


def is_metrics_record(value) -> bool:
    """Whether a decoded line of a metrics.jsonl is a record: a JSON object whose step (if any) is a
    whole number. Anything else comes from a damaged or edited log."""
    step = value.get("step", 0) if isinstance(value, dict) else None
    return isinstance(step, int) and not isinstance(step, bool)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (a line cut short by a crash, or one that is not a record, is
    left out)."""
    try:
        return [record for _, record in decoded_lines(path) if is_metrics_record(record)]
    except OSError:
        return []


def sigma_dir_name(sigma: float) -> str:
    return f"sigma-{sigma:g}"


def remove_stale_run_temporaries(run_root: Path) -> list[Path]:
    """Delete what writers killed in an earlier run of this folder left half-written: the temporaries of
    the files a run writes (by those files' exact names; earlier versions' names included), at the top
    of the run folder, of each sigma's folder and of their report_files/ and samples/, and nowhere
    else. Only while holding the run folder's lock: no writer of another run can be at work there."""
    folders = [(run_root / sub, names) for sub, names in RUN_FILES.items()]
    for entry in sorted(run_root.iterdir()):
        if entry.name.startswith("sigma-") and entry.is_dir() and not entry.is_symlink():
            folders += [(entry / sub, names) for sub, names in SIGMA_FILES.items()]
    return [path for folder, names in folders if folder.is_dir() and not folder.is_symlink()
            for path in remove_stale_temporaries(folder, names, locked=True, earlier_names=True)]


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
        if any(isinstance(state.get(k, 0), bool) or not isinstance(state.get(k, 0), int) or state.get(k, 0) < 0
               for k in ("step", "epoch")):
            raise InputError(f"{path}: its step or epoch is not a whole number (0 or more); the run folder is damaged")
        if not isinstance(state.get("finished", False), bool):  # "no" would read as true: the sigma skipped
            raise InputError(f"{path}: its 'finished' is {state['finished']!r}, not true or false; the run folder "
                             "is damaged")
        return state
    if (run_dir / "last.pt").is_file():  # a run from before state.json: its last.pt is the newest
        return {"checkpoint": "last.pt", "finished": False}
    return None


def all_finite(state_dict: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


class SigmaFolder:
    """One sigma's folder and the checkpoints in it. Only the main process writes (``main``)."""

    def __init__(self, path: Path, main: bool = True, keep_steps: int = 2):
        self.path, self.main = Path(path), main
        self.keep_steps = keep_steps  # step checkpoints kept, the newest (0: all of them)
        self.last_good: Path | None = None  # the newest checkpoint known to be complete

    def start_point(self, resumed: bool, given: Path | None, over) -> tuple[Path | None, bool]:
        """Where this sigma starts: ``given`` (--resume CKPT), else on a resume the checkpoint its
        state.json names; and whether it is done already (finished, and ``over(step, next_epoch)``
        says nothing is left: a resume may have raised --max-steps or --nEpochs since)."""
        if given is not None or not resumed:
            return given, False
        state = read_state(self.path)
        if not state:
            return None, False
        done = bool(state.get("finished") and over(state.get("step", 0), state.get("epoch", 0)))
        return self.path / state["checkpoint"], done

    def read_for_resume(self, task_name: str, path: Path, map_location="cpu") -> dict:
        """A checkpoint that can resume a run (weights, optimisers and RNG states), or an error that
        names, for a damaged one, the newest intact checkpoint beside it and how to resume from it."""
        try:
            ckpt = read_checkpoint(path, map_location=map_location)
        except InputError as exc:
            raise InputError(f"{exc}{self.intact_alternative(task_name, path)}") from None
        if ckpt.get("format") == "authors":
            raise InputError(f"{path}: the authors' checkpoints hold no optimiser state; "
                             "use --pretrained to start from their weights")
        if "optim_g" not in ckpt or "rng" not in ckpt:
            raise InputError(f"{path}: this checkpoint cannot resume a run (no optimiser or RNG state)")
        missing = [key for key in ("epoch", "batch_in_epoch", "step") if key not in ckpt]
        if missing:
            raise InputError(f"{path}: this checkpoint cannot resume a run (no {', '.join(missing)})")
        # read before the run writes anything: a NaN in an optimiser's running averages would make every step
        # non-finite, and the run would stop as diverged
        broken = [key for key in ("generator", "critic", "generator_ema", "optim_g", "optim_d")
                  if not all(torch.isfinite(t).all() for _, t in named_tensors(ckpt.get(key)) if t.is_floating_point())]
        if broken:
            raise InputError(f"{path}: the checkpoint's {broken[0]} holds NaN or infinite values; it is damaged"
                             f"{self.intact_alternative(task_name, path)}")
        return ckpt

    def intact_alternative(self, task_name: str, damaged: Path) -> str:
        """For the error about a damaged checkpoint: the newest other checkpoint of the folder that can
        resume the run, and the command that resumes from it."""
        candidates = [p for p in damaged.parent.glob("*.pt") if p.name != "best.pt" and p != damaged]
        for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                ckpt = read_checkpoint(path)
            except InputError:
                continue
            if "optim_g" in ckpt and isinstance(ckpt.get("step"), int):
                return (f". {path.name} (step {ckpt['step']}) is intact: resume from it with python "
                        f"{task_name}/train.py --resume {path}")
        return ". No other checkpoint of this sigma is intact"

    def save(self, name: str, state: dict, finished: bool = False) -> Path:
        """Write checkpoint ``name`` and, unless it is best.pt, point state.json at it; never a
        non-finite one. Step checkpoints beyond the newest ``keep_steps`` are removed."""
        path = self.path / name
        if not self.main:
            return path
        if not all(all_finite(state[k] or {}) for k in ("generator", "critic", "generator_ema")):
            raise TrainingStopped(f"refusing to save non-finite weights at step {state['step']}; "
                                  f"last good checkpoint: {self.last_good}", 3)
        try:
            save_checkpoint(path, state)
        except OSError as exc:  # a full disk (torch.save's own error is turned back into this one)
            kept = (f"; the previous checkpoint {self.last_good} is intact" if self.last_good
                    else "; no checkpoint of this sigma was saved before")
            raise InputError(write_failure(path, exc, state_bytes(state), "checkpoint") + kept) from None
        if name != "best.pt":
            write_json(self.path / "state.json", {"checkpoint": name, "step": state["step"], "epoch": state["epoch"],
                                                  "sigma": state["sigma"], "finished": finished})
            self.last_good = path
        if STEP_CHECKPOINT.fullmatch(name) and self.keep_steps:  # the older ones of the names it gives, nothing else
            steps = sorted((int(m.group(1)), m.group(0)) for m in map(STEP_CHECKPOINT.fullmatch, os.listdir(self.path)) if m)
            for _, old in steps[:-self.keep_steps]:
                (self.path / old).unlink(missing_ok=True)
        return path

    def open_log(self, record: dict | None, resume_step: int | None, tensorboard: bool) -> MetricsLog:
        """The metrics log, cut back to ``resume_step``; a new run (``record``) writes config.json and
        starts the log afresh (step 0 keeps nothing: old lines would read as this run's)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if record is not None:
            write_json(self.path / "config.json", record)
        return MetricsLog(self.path / "metrics.jsonl", tensorboard=tensorboard,
                          resume_step=0 if resume_step is None else resume_step)

    def samples_picture(self, epoch: int) -> Path:
        return self.path / "samples" / f"epoch-{epoch:04d}.png"
