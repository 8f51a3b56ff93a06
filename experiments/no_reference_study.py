#!/usr/bin/env python
"""How far can a checkpoint and a sigma be chosen without ground truth? Candidate no-reference scores
against PSNR, on sigma sweeps of each task's demo.

For each task, the demo's data and settings (its built-in photographs, networks, schedule and recipe)
are trained at several sigmas, from one that leaves the input as it is to one that over-restores,
with two seeds or more, keeping a checkpoint every 50 steps. Every 100th-step checkpoint restores the
demo's 3 validation photographs and its 10 wider held-out ones, and is measured with PSNR (against
their ground truth) and with each candidate score (without it):

- ``swd-train``: the shipped score (``common.evaluation.no_reference``: sliced Wasserstein distance
  between Laplacian-pyramid neighbourhoods) against the clean side of the training set, what a user
  has by default;
- ``swd-heldout``: the same score against clean photographs the model never trained on (to score the
  validation photographs, the wider set's clean images; to score the wider set, the validation
  photographs' clean images: each set against clean images of other scenes, never its own);
- ``nss``: a NIQE-style natural-scene-statistics model (36 MSCN features per 32x32 block at two scales,
  a Gaussian fitted on the training set's clean patches; distance of each image's blocks to it);
- ``critic``: the checkpoint's own critic, how much more clean-looking it finds the restored image
  than its input (the mean of its scores on 128x128 tiles);
- ``swd-train, least change``: among the checkpoints whose swd-train lies within a tenth of the
  improvement it saw (input to best) of its best, the one that moved its input least (transport cost).

The report gives, per task, score and set: the rank correlation with PSNR over all checkpoints and
within each run, the regret (the best PSNR available minus the PSNR of the checkpoint the score
picks) within each run and across sigmas (per seed), the same for validation PSNR's own choice
judged on the wider set, and how often a score's change from input to restored has the sign of the
PSNR change, image by image.

Writes, under --out: data/ and runs/ (the sweeps), measure/ (one JSON per checkpoint, reused when the
study is run again), and results.md, results.json, scatter.png.

examples:
  python experiments/no_reference_study.py --out study/                     # all three tasks, seeds 0 and 1
  python experiments/no_reference_study.py --out study/ --tasks dehazing --seeds 0 --quick   # a smoke run
  python experiments/no_reference_study.py --out study/ --stage report      # tables from what is measured
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402
from scipy.special import gamma  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from common.data.loader import UnpairedH5Dataset  # noqa: E402
from common.data.pairs import find_pairs  # noqa: E402
from common.demo import build_demo_data, demo_paths, demo_settings  # noqa: E402
from common.evaluation.evaluate import evaluate  # noqa: E402
from common.evaluation.figures import selection_scatter  # noqa: E402
from common.evaluation.no_reference import (SetScore, reference_from_folder,  # noqa: E402
                                            reference_from_training_data, spaced_indices)
from common.sot import transport_cost  # noqa: E402
from common.tasks import TASKS  # noqa: E402
from common.training.checkpoint import build_critic, build_generator, read_checkpoint  # noqa: E402
from common.training.config import RunConfig, plan_resume  # noqa: E402
from common.training.loop import train  # noqa: E402
from common.training.run_folder import read_state, sigma_dir_name  # noqa: E402

# From a sigma that leaves the input as it is to one that over-restores, around each demo's own.
SWEEPS = {"dehazing": ((1000, 300, 100, 30, 10), 1000), "deraining": ((100, 10, 3, 1), 1000),
          "sr": ((3, 1, 0.1, 0.01), 600)}
EVERY = 50          # steps between kept checkpoints
MEASURE_EVERY = 100 # steps between measured ones: half the measuring, and 10 or more points a run
MEASURE_VERSION = 2
CANDIDATES = ("swd-train", "swd-heldout", "nss", "critic", "swd-train, least change")
TOLERANCE = 0.1     # "least change": within this fraction of the improvement seen


# ----------------------------------------------------------------------------- the sweeps
def train_sweeps(task, out: Path, seeds: list[int], quick: bool) -> None:
    sigmas, steps = SWEEPS[task.name]
    if quick:
        sigmas, steps = sigmas[::len(sigmas) - 1], 2 * EVERY
    paths = build_demo_data(task, out / "data" / task.name)
    for seed in seeds:
        name = f"seed-{seed}"
        asked = {**demo_settings(task), "sigma": tuple(float(s) for s in sigmas), "seed": seed, "max_steps": steps,
                 "save_every_steps": EVERY, "val_every_steps": EVERY, "keep_step_checkpoints": 0,
                 "out": str(out / "runs"), "name": name, "trainset": str(paths["trainset"]),
                 "val_input": str(paths["val_input"]), "val_gt": str(paths["val_gt"]), "tensorboard": False}
        run = out / "runs" / task.name / name
        states = [read_state(run / sigma_dir_name(s)) for s in sigmas]
        if all(st and st.get("finished") for st in states):
            print(f"{task.name} {name}: trained earlier")
            continue
        started = time.time()
        if (run / "run.json").is_file():
            config, plan = plan_resume(task, "auto", {"out": asked["out"], "name": name})
            train(task, config, resume=plan)
        else:
            train(task, RunConfig.for_task(task, **asked))
        print(f"{task.name} {name}: trained in {(time.time() - started) / 60:.1f} min")


# ----------------------------------------------------------------------------- candidate (a): NSS
_ALPHAS = np.arange(0.2, 10.0, 0.001)
_GGD_RATIO = gamma(1 / _ALPHAS) * gamma(3 / _ALPHAS) / gamma(2 / _ALPHAS) ** 2       # falls with alpha
_AGGD_RATIO = gamma(2 / _ALPHAS) ** 2 / (gamma(1 / _ALPHAS) * gamma(3 / _ALPHAS))    # rises with alpha


def _shape(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The shape parameter whose moment ratio in ``table`` (monotone in alpha) is nearest ``values``."""
    order = np.argsort(table)
    idx = np.clip(np.searchsorted(table[order], values), 1, len(table) - 1)
    left, right = table[order][idx - 1], table[order][idx]
    return _ALPHAS[order][np.where(np.abs(values - left) < np.abs(values - right), idx - 1, idx)]


def _blocks(x: np.ndarray, p: int) -> np.ndarray:
    h, w = x.shape[0] // p * p, x.shape[1] // p * p
    return x[:h, :w].reshape(h // p, p, w // p, p).transpose(0, 2, 1, 3).reshape(-1, p * p)


def nss_features(img: np.ndarray, block: int = 32) -> np.ndarray:
    """NIQE's 36 features of each ``block`` x ``block`` block: the fitted generalised Gaussian of the
    MSCN coefficients and the asymmetric ones of their four neighbour products, at two scales."""
    gray = (img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) * 255.0
    features = []
    for scale in (1, 2):
        if scale == 2:
            gray = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
        mu = gaussian_filter(gray, 7 / 6, truncate=2.6, mode="nearest")
        sd = np.sqrt(np.abs(gaussian_filter(gray * gray, 7 / 6, truncate=2.6, mode="nearest") - mu * mu))
        m = (gray - mu) / (sd + 1.0)
        b = _blocks(m, block // scale)
        sigma2 = (b * b).mean(1)
        parts = [np.stack([_shape(_GGD_RATIO, sigma2 / np.maximum(np.abs(b).mean(1) ** 2, 1e-12)), sigma2], 1)]
        for a, c in ((m[:, :-1], m[:, 1:]), (m[:-1], m[1:]), (m[:-1, :-1], m[1:, 1:]), (m[:-1, 1:], m[1:, :-1])):
            prod = np.zeros_like(m)
            prod[:a.shape[0], :a.shape[1]] = a * c
            q = _blocks(prod, block // scale)
            neg, pos = q < 0, q > 0
            sl = np.sqrt((q * q * neg).sum(1) / np.maximum(neg.sum(1), 1))
            sr = np.sqrt((q * q * pos).sum(1) / np.maximum(pos.sum(1), 1))
            g = sl / np.maximum(sr, 1e-12)
            r = np.abs(q).mean(1) ** 2 / np.maximum((q * q).mean(1), 1e-12)
            alpha = _shape(_AGGD_RATIO, r * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2)
            eta = (sr - sl) * gamma(2 / alpha) / gamma(1 / alpha) * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
            parts.append(np.stack([alpha, eta, sl ** 2, sr ** 2], 1))
        features.append(np.concatenate(parts, 1))
    return np.concatenate(features, 1)


class NSSModel:
    """A multivariate Gaussian of clean blocks' features; an image's score is NIQE's distance of its own."""

    def __init__(self, clean_images):
        f = np.concatenate([nss_features(img) for img in clean_images])
        self.mean, self.cov = f.mean(0), np.cov(f, rowvar=False)

    def distance(self, f: np.ndarray) -> float:
        """NIQE's distance between the clean blocks' Gaussian and that of the blocks' features ``f``."""
        d = self.mean - f.mean(0)
        return float(np.sqrt(max(d @ np.linalg.pinv((self.cov + np.cov(f, rowvar=False)) / 2) @ d, 0.0)))


# ----------------------------------------------------------------------------- measuring checkpoints
def scorers(task, out: Path) -> dict:
    """What each checkpoint is measured with: the pairs of both sets and each candidate's reference."""
    root = out / "data" / task.name
    paths = demo_paths(root)
    dataset = UnpairedH5Dataset(paths["trainset"], scale=task.scale)
    clean = [dataset.clean_patch(int(j)).permute(1, 2, 0).numpy() for j in spaced_indices(dataset.num_labels, 256)]
    return {"pairs": {"val": find_pairs(paths["val_input"], paths["val_gt"]),
                      "wider": find_pairs(paths["wider_input"], paths["wider_gt"])},
            "swd-train": reference_from_training_data(dataset),
            # each set against the clean images of the other: clean scenes the model never saw, never its own
            "swd-heldout": {"val": reference_from_folder(paths["wider_gt"]), "wider": reference_from_folder(paths["val_gt"])},
            "nss": NSSModel(clean)}


def _tiles(img: np.ndarray, side: int = 128) -> np.ndarray:
    h, w = img.shape[:2]
    tiles = [img[y:y + side, x:x + side] for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)]
    return np.stack(tiles)


def measure_checkpoint(task, path: Path, s: dict) -> dict:
    """Every image of both sets restored by the checkpoint at ``path``: PSNR and each candidate, of the
    restored image and of its input, image by image and for each set of images together."""
    ckpt = read_checkpoint(path)
    generator, critic = build_generator(ckpt, path).eval(), build_critic(ckpt, path).eval()

    def critic_scores(img):  # lower is better, as the other candidates: the negated critic score per tile
        with torch.no_grad():
            return (-critic(torch.from_numpy(_tiles(img)).permute(0, 3, 1, 2).float())).tolist()
    result = {"version": MEASURE_VERSION, "step": ckpt["step"], "sigma": ckpt["sigma"]}
    for name, pairs in s["pairs"].items():
        images = []
        sets = {side: {"swd-train": SetScore(s["swd-train"], len(pairs)),
                       "swd-heldout": SetScore(s["swd-heldout"][name], len(pairs)), "nss": [], "critic": []}
                for side in ("", "input_")}

        def measure_image(row, baseline, restored, gt):
            entry = {"name": row["name"], "psnr": row["psnr"], "input_psnr": row["input_psnr"]}
            for prefix, img in (("", restored.astype(np.float32) / 255), ("input_", baseline.astype(np.float32) / 255)):
                pooled = sets[prefix]
                entry[prefix + "swd-train"] = pooled["swd-train"].add(img)
                entry[prefix + "swd-heldout"] = pooled["swd-heldout"].add(img)
                features = nss_features(img)
                pooled["nss"].append(features)
                entry[prefix + "nss"] = s["nss"].distance(features)
                tiles = critic_scores(img)
                pooled["critic"] += tiles
                entry[prefix + "critic"] = float(np.mean(tiles))
            residual = torch.from_numpy((restored.astype(np.float32) - baseline) / 255).permute(2, 0, 1)[None]
            entry["transport"] = float(transport_cost(residual, "sot-l1"))
            images.append(entry)
        evaluate(generator, pairs, task, torch.device("cpu"), progress=False, on_image=measure_image)
        together = {}
        for prefix, pooled in sets.items():
            together[prefix + "swd-train"] = pooled["swd-train"].total()
            together[prefix + "swd-heldout"] = pooled["swd-heldout"].total()
            together[prefix + "nss"] = s["nss"].distance(np.concatenate(pooled["nss"]))
            together[prefix + "critic"] = float(np.mean(pooled["critic"]))
        result[name] = {"images": images, "together": together}
    return result


def kept_checkpoints(task, out: Path) -> list[tuple[Path, int]]:
    """Every checkpoint of the sweeps at a multiple of :data:`MEASURE_EVERY` steps, with its step: the step
    checkpoints, and a finished run's last.pt (its last step has no step checkpoint)."""
    found = []
    for folder in sorted((out / "runs" / task.name).glob("seed-*/sigma-*")):
        for path in sorted(folder.glob("step-*.pt")):
            found.append((path, int(path.stem.split("-")[1])))
        state = read_state(folder) or {}
        if state.get("finished") and state.get("checkpoint") == "last.pt":
            found.append((folder / "last.pt", state["step"]))
    # not one saved when a run was stopped
    return [(path, step) for path, step in found if step % MEASURE_EVERY == 0]


def measure_all(task, out: Path) -> None:
    s = None
    for path, step in kept_checkpoints(task, out):
        dest = out / "measure" / task.name / path.parent.parent.name / path.parent.name / f"step-{step:08d}.json"
        if dest.is_file() and json.loads(dest.read_text()).get("version") == MEASURE_VERSION:
            continue
        s = s or scorers(task, out)
        started = time.time()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(measure_checkpoint(task, path, s)))
        print(f"{path} measured in {time.time() - started:.1f} s", flush=True)


# ----------------------------------------------------------------------------- the analysis
def load(task, out: Path) -> list[dict]:
    """The measured checkpoints of the runs that finished (a run cut short would bias its regrets)."""
    points = []
    for f in sorted((out / "measure" / task.name).glob("seed-*/sigma-*/step-*.json")):
        state = read_state(out / "runs" / task.name / f.parent.parent.name / f.parent.name) or {}
        if not state.get("finished"):
            continue
        r = json.loads(f.read_text())
        if r["step"] % MEASURE_EVERY or r.get("version") != MEASURE_VERSION:
            continue
        point = {"seed": f.parent.parent.name, "sigma": r["sigma"], "step": r["step"]}
        for name in ("val", "wider"):
            images = r[name]["images"]
            point[name] = {"psnr": np.mean([i["psnr"] for i in images]),
                           "input_psnr": np.mean([i["input_psnr"] for i in images]),
                           "transport": np.mean([i["transport"] for i in images]), "images": images,
                           **r[name]["together"]}  # each candidate's score of the set, and of its inputs
        points.append(point)
    return points


def choose(points: list[dict], on: str, candidate: str) -> dict:
    """The checkpoint a candidate picks among ``points`` by its score on set ``on`` (lower is better)."""
    if candidate == "psnr":
        return max(points, key=lambda p: p[on]["psnr"])
    if candidate == "swd-train, least change":
        key = "swd-train"
        best = min(p[on][key] for p in points)
        seen = max(p[on]["input_" + key] for p in points) - best
        near = [p for p in points if p[on][key] <= best + TOLERANCE * seen]
        return min(near, key=lambda p: p[on]["transport"])
    return min(points, key=lambda p: p[on][candidate])


def analyse(points: list[dict]) -> dict:
    """Per candidate and scored set: rank correlations, regrets within runs and across sigmas, and the
    per-image agreement of its changes with PSNR's."""
    runs, seeds = defaultdict(list), defaultdict(list)
    for p in points:
        runs[(p["seed"], p["sigma"])].append(p)
        seeds[p["seed"]].append(p)
    table = {}
    for candidate in ("psnr",) + CANDIDATES:
        for scored in ("val", "wider"):
            if candidate == "psnr" and scored == "wider":
                continue  # ground truth on the set judged: no choice to measure
            row = {}
            key = candidate if candidate in CANDIDATES[:4] else ("swd-train" if candidate != "psnr" else None)
            if key:
                sign = 1 if candidate == "psnr" else -1
                row["rho"] = spearmanr([sign * p[scored][key] for p in points], [p[scored]["psnr"] for p in points]).correlation
                within = [spearmanr([-p[scored][key] for p in r], [p[scored]["psnr"] for p in r]).correlation
                          for r in runs.values() if np.ptp([p[scored]["psnr"] for p in r]) > 1e-3]
                row["rho_within"] = float(np.nanmean(within)) if within else None
            for judged in ("val", "wider") if scored == "val" else ("wider",):
                regrets = [max(p[judged]["psnr"] for p in r) - choose(r, scored, candidate)[judged]["psnr"]
                           for r in runs.values()]
                row[f"within_{judged}"] = (float(np.mean(regrets)), float(np.max(regrets)))
                row[f"across_{judged}"] = {}
                for seed, sp in sorted(seeds.items()):
                    pick = choose(sp, scored, candidate)
                    row[f"across_{judged}"][seed] = (max(p[judged]["psnr"] for p in sp) - pick[judged]["psnr"],
                                                     pick["sigma"], pick["step"])
            # the yardstick: how far behind validation PSNR's own choice, judged on the wider photographs
            gaps = [choose(r, "val", "psnr")["wider"]["psnr"] - choose(r, scored, candidate)["wider"]["psnr"]
                    for r in runs.values()]
            row["behind_within"] = (float(np.mean(gaps)), float(np.max(gaps)))
            row["behind_across"] = {seed: choose(sp, "val", "psnr")["wider"]["psnr"]
                                    - choose(sp, scored, candidate)["wider"]["psnr"] for seed, sp in sorted(seeds.items())}
            if candidate in CANDIDATES[:4]:
                agree = total = 0
                for p in points:
                    for i in p[scored]["images"]:
                        dp = i["psnr"] - i["input_psnr"]
                        if abs(dp) >= 0.05:
                            total += 1
                            agree += (i[candidate] < i["input_" + candidate]) == (dp > 0)
                row["agreement"] = (agree / total if total else None, total)
            table[f"{candidate} | {scored}"] = row
    return table


def report(out: Path, tasks: list[str]) -> None:
    lines = ["# Choosing without ground truth: the study's tables", "",
             "Written by `python experiments/no_reference_study.py`; see docs/RESULTS.md for what they mean.", ""]
    results, scatter = {}, {}
    for name in tasks:
        points = load(TASKS[name], out)
        if not points:
            continue
        table = analyse(points)
        results[name] = table
        scatter[name] = points
        seeds = sorted({p["seed"] for p in points})
        swept = "; ".join(f"{seed}: sigma " + ", ".join(f"{s:g}" for s in sorted({p["sigma"] for p in points
                                                                                   if p["seed"] == seed}, reverse=True))
                          for seed in seeds)
        lines += [f"## {name}", "",
                  f"{len(points)} checkpoints of finished runs ({swept}); "
                  f"input PSNR: validation {points[0]['val']['input_psnr']:.2f} dB, wider {points[0]['wider']['input_psnr']:.2f} dB.",
                  "", "| choice by | scored on | rank corr. all / within runs | within-run regret val (mean, max) | "
                  "within-run regret wider (mean, max) | across sigmas, regret val / wider (sigma, step) per seed | "
                  "behind PSNR's choice on wider: within runs (mean, max) / across sigmas per seed | "
                  "per-image agreement |", "|---|---|---|---|---|---|---|---|"]
        for label, row in table.items():
            candidate, scored = label.split(" | ")
            rho = (f"{row['rho']:.2f} / {row['rho_within']:.2f}" if row.get("rho") is not None and
                   row.get("rho_within") is not None else "")
            within_val = "{:.2f}, {:.2f}".format(*row["within_val"]) if "within_val" in row else ""
            within_wider = "{:.2f}, {:.2f}".format(*row["within_wider"])
            across = []
            for seed, (rw, sigma, step) in row["across_wider"].items():
                rv = f"{row['across_val'][seed][0]:.2f} / " if "across_val" in row else ""
                across.append(f"{rv}{rw:.2f} ({sigma:g}, {step})")
            agree = (f"{row['agreement'][0]:.2f} of {row['agreement'][1]}" if row.get("agreement")
                     and row["agreement"][0] is not None else "")
            behind = ("{:.2f}, {:.2f} / ".format(*row["behind_within"])
                      + "; ".join(f"{v:.2f}" for v in row["behind_across"].values()))
            lines.append(f"| {candidate} | {scored} | {rho} | {within_val} | {within_wider} | {'; '.join(across)} | "
                         f"{behind} | {agree} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    selection_scatter(out / "scatter.png", {name: [(p["val"]["swd-train"], p["val"]["swd-heldout"], p["val"]["psnr"],
                                                    p["sigma"]) for p in pts] for name, pts in scatter.items()})
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'scatter.png'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", required=True, metavar="DIR", help="where the study's data, runs and results go")
    p.add_argument("--tasks", nargs="+", choices=sorted(SWEEPS), default=["dehazing", "deraining", "sr"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--stage", choices=("all", "train", "measure", "report"), default="all")
    p.add_argument("--quick", action="store_true", help="two sigmas, 100 steps: a smoke run")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    for name in args.tasks:
        if args.stage in ("all", "train"):
            train_sweeps(TASKS[name], out, args.seeds, args.quick)
        if args.stage in ("all", "measure"):
            measure_all(TASKS[name], out)
    if args.stage in ("all", "report"):
        report(out, args.tasks)


if __name__ == "__main__":
    main()
