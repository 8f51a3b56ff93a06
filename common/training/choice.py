"""After a sweep: each sigma's best.pt side by side, and the one the no-reference score recommends.

Read back from the sigmas' metrics.jsonl (each validation logs its PSNR where there is ground truth,
its no-reference score where there is a clean reference, and whether it kept best.pt), so that a
resumed sweep recommends over all its sigmas, not only those trained by the last invocation, and the
run's report.html can show the same table. How far the recommendation can be trusted is measured in
docs/RESULTS.md ("Choosing without ground truth") and said where it is printed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evaluation.no_reference import reliability
from ..system.errors import InputError
from ..system.text import printable
from .run_folder import read_json, read_metrics


@dataclass(frozen=True)
class SigmaChoice:
    """One sigma's best.pt and the validation that kept it."""
    sigma: float
    checkpoint: Path
    step: int
    score: float | None        # its no-reference score (lower is closer to clean)
    psnr: float | None         # its validation PSNR, where there was ground truth
    select_by: str | None      # what kept it
    reference_trained_on: bool  # whether the score's clean images were the training set's
    task: str | None = None     # as the sigma's config.json records it


def sigma_choices(run_root: Path, logs: dict[str, list[dict]] | None = None) -> list[SigmaChoice]:
    """Per sigma folder of ``run_root`` (in order of sigma), the validation that kept its best.pt;
    sigmas never validated, or whose best.pt is gone, are left out. ``logs``: each sigma folder's
    metrics.jsonl records by folder name, where the caller has read them already."""
    choices = []
    for folder in run_root.glob("sigma-*"):
        records = logs.get(folder.name, []) if logs is not None else read_metrics(folder / "metrics.jsonl")
        kept = [r for r in records if r.get("kind") == "val" and r.get("kept")]
        if not kept or not (folder / "best.pt").is_file():
            continue
        record = kept[-1]  # the newest that kept best.pt is the one best.pt holds
        try:
            sigma = float(folder.name.removeprefix("sigma-"))
        except ValueError:
            continue
        task = _recorded_task(folder)
        choices.append(SigmaChoice(sigma, folder / "best.pt", record.get("step", 0), _number(record.get("score")),
                                   _number(record.get("psnr")), record.get("select_by"),
                                   bool(record.get("reference_trained_on")), task))
    return sorted(choices, key=lambda c: c.sigma)


def _recorded_task(folder: Path) -> str | None:
    """The task the sigma's config.json records; None where it cannot say (what the study measured is
    then not quoted)."""
    try:
        task = read_json(folder / "config.json").get("task")
    except InputError:
        return None
    return task if isinstance(task, str) else None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def recommended(choices: list[SigmaChoice]) -> SigmaChoice | None:
    """The sigma whose best.pt the no-reference score puts closest to clean; None where none was scored."""
    scored = [c for c in choices if c.score is not None]
    return min(scored, key=lambda c: c.score) if scored else None


def recommendation_line(choices: list[SigmaChoice]) -> str | None:
    """``recommended: <best.pt> (sigma S, step N, no-reference score X; ...); by validation PSNR: ...``,
    for a sweep of two sigmas or more; None otherwise."""
    if len(choices) < 2:
        return None
    pick = recommended(choices)
    if pick is None:
        return None
    line = (f"recommended: {printable(pick.checkpoint)} (sigma {pick.sigma:g}, step {pick.step}, no-reference score "
            f"{pick.score:.3f}, the lowest of the {len(choices)} sigmas' best.pt; chosen without ground truth: "
            + reliability(pick.reference_trained_on, pick.task) + ")")
    with_psnr = [c for c in choices if c.psnr is not None]
    if with_psnr:
        best = max(with_psnr, key=lambda c: c.psnr)
        line += (f"; by validation PSNR: {printable(best.checkpoint)} (sigma {best.sigma:g}, {best.psnr:.2f} dB"
                 + (f", against {pick.psnr:.2f} dB for the recommended one" if pick.psnr is not None and best is not pick
                    else "") + ")")
    return line
