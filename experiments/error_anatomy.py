#!/usr/bin/env python
"""Where a model's error goes, image by image: what it does to the photographs it makes worse.

For each checkpoint and each image of a test folder (degraded inputs and their ground truth), the
restored image's squared error against the ground truth is set beside the degraded input's (for SR,
the bicubic upsampling G starts from), and the difference (restored minus input: positive where the
model added error) is split four ways:

- by spatial frequency: the error's power spectrum summed in radial bands, in cycles per pixel
  (low < 1/8, mid 1/8 to 1/4, high > 1/4; the image's own limit is 1/2, and 1/8 is that of its x4
  low-resolution version: in SR, "low" is what the input already holds and the rest is what G adds);
- by where it is: flat areas (the ground truth's gradient magnitude in its lowest third), edges (the
  top third) and the rest;
- colour: the squared error of each channel's mean (a global colour or brightness shift);
- in all: the PSNR gain over the input, dB.

It prints a Markdown table per checkpoint (one row per image, worst first, and the means) and writes
the same as JSON with --json.

example:
  python experiments/error_anatomy.py --task sr --input checkpoints/sr/demo-data/heldout/input \\
      --gt checkpoints/sr/demo-data/heldout/gt --checkpoint checkpoints/sr/demo-*/sigma-0.01/best.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.training.checkpoint import load_generator  # noqa: E402
from common.evaluation.evaluate import evaluate  # noqa: E402
from common.data.pairs import find_pairs  # noqa: E402
from common.tasks import TASKS  # noqa: E402

BANDS = (("low", 0.0, 1 / 8), ("mid", 1 / 8, 1 / 4), ("high", 1 / 4, 0.71))  # cycles per pixel, to the corner


def band_energy(error: np.ndarray) -> dict:
    """Mean squared error of an H x W x C error image, split by radial frequency band (Parseval: the
    bands sum to the whole)."""
    h, w = error.shape[:2]
    power = (np.abs(np.fft.fft2(error, axes=(0, 1))) ** 2).sum(axis=2) / (h * w) ** 2 / error.shape[2]
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(fx ** 2 + fy ** 2)
    return {name: float(power[(radius >= lo) & (radius < hi)].sum()) for name, lo, hi in BANDS}


def region_energy(error: np.ndarray, gt: np.ndarray) -> dict:
    """Mean squared error in the ground truth's flat areas, at its edges and in between (each area's
    share of the whole image's mean squared error)."""
    gray = gt.mean(axis=2)
    gy, gx = np.gradient(gray)
    magnitude = np.hypot(gx, gy)
    low, high = np.quantile(magnitude, [1 / 3, 2 / 3])
    sq = (error ** 2).mean(axis=2)
    n = sq.size
    return {"flat": float(sq[magnitude <= low].sum() / n), "edges": float(sq[magnitude >= high].sum() / n),
            "between": float(sq[(magnitude > low) & (magnitude < high)].sum() / n)}


def anatomy(restored: np.ndarray, baseline: np.ndarray, gt: np.ndarray) -> dict:
    """The restored image's error minus the baseline's, split by band, region and colour."""
    out = {}
    parts = {}
    for name, img in (("restored", restored), ("input", baseline)):
        error = img.astype(np.float64) / 255 - gt.astype(np.float64) / 255
        colour = float((error.mean(axis=(0, 1)) ** 2).mean())
        parts[name] = {**band_energy(error), **region_energy(error, gt.astype(np.float64) / 255), "colour": colour,
                       "mse": float((error ** 2).mean())}
    for key in parts["restored"]:
        out[key] = parts["restored"][key] - parts["input"][key]
    out["input_mse"] = parts["input"]["mse"]
    return out


def analyse(task, checkpoint: Path, pairs, device) -> list[dict]:
    ev = evaluate(load_generator(checkpoint, device), pairs, task, device, keep=len(pairs), progress=False)
    rows = []
    for row, (name, baseline, restored, gt) in zip(ev.rows, ev.examples):
        rows.append({"name": name, "gain_db": row["psnr"] - row["input_psnr"], "input_psnr": row["input_psnr"],
                     **anatomy(restored, baseline, gt)})
    return sorted(rows, key=lambda r: r["gain_db"])


def markdown(checkpoint: Path, rows: list[dict]) -> str:
    """One row per image: PSNR gain, then each part's change of the mean squared error (x 1e-4; positive:
    the model added error there) and that change as a share of the input's own error."""
    keys = [b[0] for b in BANDS] + ["flat", "between", "edges", "colour"]
    lines = [f"### {checkpoint}", "",
             "Change of the mean squared error against the input's, x 1e-4 (positive: the model added error); "
             "the frequency bands and the regions each sum to the whole change.", "",
             "| image | input PSNR | gain (dB) | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['input_psnr']:.2f} | {r['gain_db']:+.2f} | "
                     + " | ".join(f"{1e4 * r[k]:+.2f}" for k in keys) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ["gain_db", "input_psnr", *keys]}
    lines.append(f"| mean | {mean['input_psnr']:.2f} | {mean['gain_db']:+.2f} | "
                 + " | ".join(f"{1e4 * mean[k]:+.2f}" for k in keys) + " |")
    better = sum(r["gain_db"] > 0 for r in rows)
    lines += ["", f"better than the input on {better} of {len(rows)}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--input", required=True, metavar="DIR", help="degraded images (for SR: low-resolution)")
    p.add_argument("--gt", required=True, metavar="DIR", help="their ground truth, paired by file name")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    task, device = TASKS[args.task], torch.device(args.device)
    pairs = find_pairs(args.input, args.gt)
    result = {}
    for checkpoint in map(Path, args.checkpoint):
        result[str(checkpoint)] = rows = analyse(task, checkpoint, pairs, device)
        print(markdown(checkpoint, rows), "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
