"""Restoring images with a generator and measuring them against ground truth (docs/METHOD.md, "Testing").

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

from ..data.degrade import imresize
from ..data.images import image_size, image_to_tensor, read_image, tensor_to_image, to_uint8, write_image
from ..data.pairs import Pair
from ..system.errors import InputError
from ..system.files import same_file
from ..system.signals import check_interrupted
from ..system.text import printable, spreadsheet_text
from ..tasks import Task, UPSCALERS, model_input
from .inference import TILE_CONTEXT, check_cpu_memory, restore
from .metrics import LPIPS, psnr, rgb_to_y, ssim
from .no_reference import CleanReference, SetScore


def measure(restored: np.ndarray, gt: np.ndarray, lpips: LPIPS | None, y_channel: bool,
            unclamped: np.ndarray | None = None) -> dict:
    """PSNR, SSIM (RGB, or BT.601 Y with ``y_channel``) and LPIPS (always RGB) of two uint8 images.

    ``unclamped`` (the float output before clamping and rounding): PSNR is taken on it instead, as the
    reference's test scripts do."""
    a, b = restored.astype(np.float64) / 255.0, gt.astype(np.float64) / 255.0
    if y_channel:
        ya, yb = rgb_to_y(a), rgb_to_y(b)
        row = {"psnr": psnr(ya, yb, data_range=255.0), "ssim": ssim(ya, yb, data_range=255.0)}
        if unclamped is not None:
            row["psnr"] = psnr(rgb_to_y(unclamped.astype(np.float64)), yb, data_range=255.0)
    else:
        row = {"psnr": psnr(a, b) if unclamped is None else psnr(unclamped.astype(np.float64), b),
               "ssim": ssim(restored, gt)}
    row["lpips"] = lpips(a, b) if lpips is not None else None
    return row


def check_scored_apart(input_dir, gt_dir, pairs: list[Pair], flags: tuple[str, str] = ("--input", "--gt")) -> None:
    """Refuse ground truth that is the input itself: every image would be scored against itself (and
    a validation that chooses best.pt on it would choose by nothing)."""
    if gt_dir and same_file(input_dir, gt_dir):
        raise InputError(f"{flags[1]} {gt_dir} is the {flags[0]} folder: every image would be scored against itself; "
                         "give the ground truth's own folder (a folder holding both sides in a known layout, "
                         f"such as rain-*/norain-*, goes to {flags[0]} alone)")
    for pair in pairs:
        if pair.gt is not None and same_file(pair.input, pair.gt):
            raise InputError(f"{pair.input}: is its own ground truth ({pair.gt}); give the ground truth's own folder")


def check_gt_size(gt_shape: tuple[int, int], shape: tuple[int, int], pair: Pair, scale: int, slack: int = 0) -> None:
    """A ground truth (``gt_shape`` = h, w) fits a restored image of ``shape`` when it is as large, or
    larger by less than the SR scale (LR sides are floor(HR / scale)) or than ``slack`` (inputs
    cropped to a multiple of it): it is then cropped at the bottom/right. Anything else is an error."""
    (gh, gw), (h, w) = gt_shape, shape
    allowed = max(scale, slack, 1)
    if 0 <= gh - h < allowed and 0 <= gw - w < allowed:
        return
    hint = ""
    if (gw, gh) == (h, w) and gw != gh:
        hint = ("; it is the restored image turned by a quarter: is one of the two a photograph whose EXIF "
                "orientation says it is stored sideways? (images are read as viewers show them)")
    raise InputError(f"{pair.gt}: ground truth is {gw}x{gh} but the restored {pair.input.name} is {w}x{h}"
                     + (f" (input x{scale})" if scale > 1 else "") + hint)


def match_gt(gt: np.ndarray, shape: tuple[int, int], pair: Pair, scale: int, slack: int = 0) -> np.ndarray:
    """The ground truth at the restored image's size (see :func:`check_gt_size`)."""
    check_gt_size(gt.shape[:2], shape, pair, scale, slack)
    return gt[:shape[0], :shape[1]]


def restored_size(input_size: tuple[int, int], task: Task, prescaled: bool = False,
                  reference_metrics: bool = False) -> tuple[int, int]:
    """(h, w) of the restored image of an input of ``input_size`` (h, w): upsampled by the task's
    scale unless ``prescaled``, then cropped to a multiple of ``task.reference_crop`` if
    ``reference_metrics``."""
    factor = 1 if prescaled else task.scale
    h, w = input_size[0] * factor, input_size[1] * factor
    if reference_metrics:
        h, w = h - h % task.reference_crop, w - w % task.reference_crop
    return h, w


# metrics.csv's last row, the means: an image of this name would give two rows of it, and
# ``pandas.read_csv(..., index_col="name").loc["mean"]`` would no longer be the means.
MEANS_ROW = "mean"


def check_before_writing(generator: torch.nn.Module, pairs: list[Pair], task: Task, device: torch.device, *,
                         prescaled: bool = False, reference_metrics: bool = False, tile_overlap: int = TILE_CONTEXT) -> None:
    """Every check :func:`evaluate` would meet on its way, from the images' headers alone (no pixel
    is decoded where Pillow reads the format): an input too small for the reference's crop or too
    large for memory, a ground truth of the wrong size. So a run that would stop at its 400th
    image stops before its first, having written nothing."""
    factor = 1 if prescaled else task.scale
    for pair in pairs:
        if pair.gt is not None and pair.name == MEANS_ROW:
            raise InputError(f"{pair.input}: its row in metrics.csv would be named '{MEANS_ROW}', as the row of the means "
                             "is; rename the image")
    for pair in tqdm(pairs, desc="checking", unit="img", leave=False, disable=len(pairs) < 50):
        w, h = image_size(pair.input)
        if device.type == "cpu":  # as evaluate() checks it, at the upsampled size before any crop
            check_cpu_memory(generator, pair.input, h * factor, w * factor, tile_overlap)
        if reference_metrics:
            check_croppable(h * factor, w * factor, task.reference_crop, pair.input)
        shape = restored_size((h, w), task, prescaled, reference_metrics)
        if pair.gt is not None:
            gw, gh = image_size(pair.gt)
            check_gt_size((gh, gw), shape, pair, task.scale, task.reference_crop if reference_metrics else 0)


def upsampled_input(img: np.ndarray, task: Task, device: torch.device, align_corners: bool = False,
                    prescaled: bool = False, upscale: str = "pytorch") -> torch.Tensor:
    """A degraded image as G takes it (1 x 3 x H x W on ``device``): SR inputs upsampled by the task's
    scale with PyTorch's bicubic, as in training, or with MATLAB's (``upscale="matlab"``)."""
    if upscale not in UPSCALERS:
        raise ValueError(f"upscale must be one of {UPSCALERS}")
    if prescaled or task.scale == 1:
        return image_to_tensor(img).to(device)
    if upscale == "matlab":
        return image_to_tensor(imresize(img, task.scale).astype(np.float32)).to(device)
    return model_input(task, image_to_tensor(img).to(device), align_corners)


def check_croppable(h: int, w: int, multiple: int, source) -> None:
    if h < multiple or w < multiple:
        raise InputError(f"{source}: {w}x{h} is smaller than the {multiple}-pixel multiple the reference's "
                         "metrics crop to; drop --reference-metrics for this image")


def crop_to_multiple(x: torch.Tensor, multiple: int, source) -> torch.Tensor:
    """Crop a 1 x C x H x W input at the bottom/right to sides that are multiples of ``multiple``
    (``source``, the image's file, names it where it is smaller)."""
    h, w = x.shape[-2:]
    check_croppable(h, w, multiple, source)
    return x[..., : h - h % multiple, : w - w % multiple]


class NonFiniteOutput(InputError):
    """A generator whose output on an image holds NaN or infinite values: finite weights whose
    arithmetic overflows float32 (a damaged checkpoint, or training that diverged)."""

    def __init__(self, model: str, image):
        self.model, self.image = model, image
        super().__init__(f"{model}: its output on {image} holds NaN or infinite values (finite weights whose "
                         "arithmetic overflows float32); the checkpoint is damaged")


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)
    # (name, G's input, restored, ground truth or None) as 8-bit RGB, for the first ``keep`` images
    examples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    def gains(self) -> list[tuple[str, float]]:
        """(name, PSNR of the restored image minus the degraded input's), for each image with both."""
        return [(row["name"], row["psnr"] - row["input_psnr"]) for row in self.rows
                if row.get("psnr") is not None and row.get("input_psnr") is not None]

    # the no-reference score of the images together (``score`` restored, ``input_score`` their inputs): not
    # the mean of each image's, which also measures how unlike the clean images each scene is
    together: dict = field(default_factory=dict)

    @property
    def means(self) -> dict:
        """The mean of each metric over the images; for the no-reference score, the images' together."""
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "name"]
        return {k: self.together.get(k, self.mean(k)) for k in keys}


def evaluate(generator: torch.nn.Module, pairs: list[Pair], task: Task, device: torch.device, *,
             align_corners: bool = False, prescaled: bool = False, save_dir: str | os.PathLike | None = None,
             lpips: LPIPS | None = None, y_channel: bool = False, precision: str = "fp32",
             transpose: bool = False, tile: int | None = None, tile_overlap: int = TILE_CONTEXT,
             upscale: str = "pytorch", reference_metrics: bool = False, keep: int = 0,
             progress: bool = True, on_image=None, model: str = "the generator",
             reference: CleanReference | None = None) -> Evaluation:
    """Restore every pair's input, write it under ``save_dir`` (if given) and measure it (if it has a
    ground truth). Returns one row per image with the restored and the input's metrics.

    ``transpose`` swaps height and width around G, for models trained on MATLAB-layout files read
    as they are (their patches were stored W x H), as the reference's deraining test does.
    ``tile`` restores in tiles with ``tile_overlap`` pixels of context (see ``common.evaluation.inference``).
    ``upscale`` (SR): ``"pytorch"`` upsamples inputs as training does (PyTorch's bicubic, a = -0.75);
    ``"matlab"`` with MATLAB's ``imresize`` (a = -0.5), as the paper's test inputs were made.
    ``reference_metrics`` measures as the authors' test scripts do: G's input cropped at the
    bottom/right to a multiple of ``task.reference_crop`` (16 or 64 pixels) and PSNR on the unclamped
    float output; by default nothing is cropped and every metric is taken on the 8-bit image written.
    ``keep``: how many images to keep in ``examples`` (input | restored | ground truth), for pictures.
    ``on_image(row, input, restored, ground truth or None)``, if given, sees each image as 8-bit RGB
    when it is done (test.py's report writes its previews there: nothing is kept in memory).
    ``model`` names the generator (its checkpoint) in the error that stops the run where its output
    holds NaN or infinite values (:class:`NonFiniteOutput`): such an image would be written black and
    scored as if restored.
    ``reference`` (clean images, ``common.evaluation.no_reference``): each row also gets the no-reference
    score of the restored image and of the input (``score``, ``input_score``; lower is closer to clean),
    with or without ground truth.
    """
    generator.eval()
    result = Evaluation()
    scores = {k: SetScore(reference, len(pairs)) for k in ("score", "input_score")} if reference is not None else {}
    save_dir = Path(save_dir) if save_dir is not None else None
    for pair in tqdm(pairs, desc="restoring", unit="img", disable=not progress, leave=False):
        check_interrupted()  # test.py: a stop signal whose exception was lost stops here
        x, restored = restore_degraded(generator, read_image(pair.input), task, device, pair.input,
                                       align_corners=align_corners, prescaled=prescaled, upscale=upscale,
                                       crop=task.reference_crop if reference_metrics else 0, precision=precision,
                                       tile=tile, tile_overlap=tile_overlap, transpose=transpose, model=model)
        unclamped = restored[0].permute(1, 2, 0).float().cpu().numpy() if reference_metrics else None
        restored = to_uint8(tensor_to_image(restored))
        if save_dir is not None:
            write_image(save_dir / f"{pair.name}.png", restored)
        row: dict = {"name": pair.name}
        baseline = to_uint8(tensor_to_image(x))
        gt = None
        if pair.gt is not None:
            slack = task.reference_crop if reference_metrics else 0
            gt = to_uint8(match_gt(read_image(pair.gt), restored.shape[:2], pair, task.scale, slack))
            baseline_unclamped = x[0].permute(1, 2, 0).float().cpu().numpy() if reference_metrics else None
            row.update(measure(restored, gt, lpips, y_channel, unclamped))
            row.update({f"input_{k}": v for k, v in measure(baseline, gt, lpips, y_channel, baseline_unclamped).items()})
        if scores:  # on the 8-bit images as every metric here; last, so that the columns of metrics.csv stay put
            row.update(score=scores["score"].add(restored / np.float32(255)),
                       input_score=scores["input_score"].add(baseline / np.float32(255)))
        result.rows.append(row)
        if on_image is not None:
            on_image(row, baseline, restored, gt)
        if len(result.examples) < keep:
            result.examples.append((pair.name, baseline, restored, gt))
    result.together = {k: pooled.total() for k, pooled in scores.items()}
    if save_dir is not None and any(len(r) > 1 for r in result.rows):
        write_metrics_csv(save_dir / "metrics.csv", result)
    return result


def restore_degraded(generator: torch.nn.Module, img: np.ndarray, task: Task, device: torch.device, source, *,
                     align_corners: bool = False, prescaled: bool = False, upscale: str = "pytorch", crop: int = 0,
                     precision: str = "fp32", tile: int | None = None, tile_overlap: int = TILE_CONTEXT,
                     transpose: bool = False, model: str = "the generator") -> tuple[torch.Tensor, torch.Tensor]:
    """G's input for one degraded image (H x W x 3 float in [0, 1]) and G's output on it, float32 and
    unclamped, both 1 x 3 x H' x W' on ``device``: the input upsampled as :func:`upsampled_input` says, then
    cropped at the bottom/right to a multiple of ``crop`` where given. ``source`` (the image's file) names
    the image where it is refused: too large for the CPU's memory even in tiles (before it is upsampled,
    which would take that memory already), or where G's output holds NaN or infinite values. The other
    arguments are :func:`evaluate`'s. What test.py does to each image, and ``common.Restorer`` to one."""
    if device.type == "cpu":
        factor = 1 if prescaled else task.scale
        check_cpu_memory(generator, source, img.shape[0] * factor, img.shape[1] * factor, tile_overlap)
    x = upsampled_input(img, task, device, align_corners, prescaled, upscale)
    if crop:
        x = crop_to_multiple(x, crop, source)
    return x, restored_image(generator, x, source, precision, tile, tile_overlap, transpose, model)


def restored_image(generator: torch.nn.Module, x: torch.Tensor, source, precision: str, tile: int | None,
                   tile_overlap: int, transpose: bool, model: str) -> torch.Tensor:
    """G's output for one input (see :func:`evaluate`), refused where it holds NaN or infinite values."""
    try:
        if transpose:
            restored = restore(generator, x.transpose(-1, -2), precision, tile, tile_overlap).transpose(-1, -2)
        else:
            restored = restore(generator, x, precision, tile, tile_overlap)
    except InputError as exc:  # the image is too large for memory: name it
        raise InputError(f"{source}: {exc}") from None
    if not torch.isfinite(restored).all():  # on the device, before anything is written or scored
        raise NonFiniteOutput(model, source)
    return restored


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) and not math.isinf(v) else str(v)


def write_metrics_csv(path: Path, result: Evaluation) -> None:
    """One row per image, then the means in the row named :data:`MEANS_ROW`. A name is text: written
    with escapes and never as a formula (see common.system.text.spreadsheet_text)."""
    keys = [k for k in result.rows[0] if k != "name"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["name", *keys])
        for row in result.rows:
            writer.writerow([spreadsheet_text(row["name"]), *(_fmt(row.get(k)) for k in keys)])
        means = result.means
        writer.writerow([MEANS_ROW, *(_fmt(means[k]) for k in keys)])


def gain_summary(ev: Evaluation, input_label: str = "input") -> str | None:
    """``better than the bicubic on 9 of 12 images, worse on 3; the worst: moon (-1.20 dB)``: what the
    means hide. None without ground truth."""
    gains = ev.gains()
    if not gains:
        return None
    better, worse = sum(g > 0 for _, g in gains), sum(g < 0 for _, g in gains)
    name, gain = min(gains, key=lambda item: item[1])
    return (f"better than the {input_label} on {better} of {len(gains)} image(s), worse on {worse}; "
            f"the {'worst' if gain < 0 else 'least gain'}: {printable(name)} ({gain:+.2f} dB)")


def score_summary(ev: Evaluation, input_label: str = "input") -> str | None:
    """``no-reference score of the images together (lower is closer to clean): hazy input 0.612, restored 0.495;
    each image's own score fell on 9 of 10, rose on 1; the most: moon (+0.031)``. None where nothing was scored."""
    changes = [(row["name"], row["score"] - row["input_score"]) for row in ev.rows if row.get("score") is not None]
    if not changes:
        return None
    closer, further = sum(c < 0 for _, c in changes), sum(c > 0 for _, c in changes)
    name, change = max(changes, key=lambda item: item[1])
    return (f"no-reference score of the images together (lower is closer to clean): {input_label} "
            f"{ev.means['input_score']:.3f}, restored {ev.means['score']:.3f}; each image's own score fell on {closer} "
            f"of {len(changes)}, rose on {further}; the {'most risen' if change > 0 else 'least fallen'}: {printable(name)} "
            f"({change:+.3f})")


def format_row(row: dict, input_label: str = "input") -> str:
    """``name  PSNR 28.31 dB  SSIM 0.8012  LPIPS 0.0612  (bicubic: 26.77 dB ...)``, with the no-reference
    score where there is one."""
    def part(prefix: str) -> str:
        return (f"PSNR {_fmt(row.get(prefix + 'psnr'))} dB  SSIM {_fmt(row.get(prefix + 'ssim'))}  "
                f"LPIPS {_fmt(row.get(prefix + 'lpips'))}" + score(prefix))

    def score(prefix: str) -> str:
        return f"  score {row[prefix + 'score']:.3f}" if row.get(prefix + "score") is not None else ""
    name = printable(row["name"])  # one line, whatever the image is called
    if row.get("psnr") is None:
        if row.get("score") is None:
            return f"{name}: restored"
        return f"{name}: restored, no-reference score {row['score']:.3f}   ({input_label}: {row['input_score']:.3f})"
    return f"{name}: {part('')}   ({input_label}: {part('input_')})"
