#!/usr/bin/env python
"""OT against SOT (l1, l0.5) and the supervised bound, trained and measured the same way on one task.

Every method gets the same training set, budget (steps, batch), networks and seeds; each seed is a
separate run (its own initialisation and data order), shared across methods, so that differences
between methods can be set against the spread between seeds. For each cost the sigma is chosen on a
validation split (the best mean over seeds of each run's best validation PSNR, as the reference keeps
its best checkpoint), never on the test images; every seed's checkpoints at that sigma (the best
validated and the last step) are then measured on the held-out test split.

Writes results.md (mean and standard deviation over seeds, differences to the input and to OT paired
by seed), results.csv (one row per method and seed), results.json, crops.png (test crops side by
side: input | each method | clean, seed 0, each with the image's PSNR) and curves.png (validation PSNR
against step, matplotlib: the mean over seeds as a line, their range as a band, each seed faint).

Data: without folders of your own, a proxy set is built from photographs available offline
(scikit-image's, and those of Debian's opencv-doc package when installed, plus any --photos DIR)
with the task's synthetic degradation. Photographs are split into test, validation and training
groups. The unpaired training file takes both sides from the same training photographs (--sides
same): the loader draws each degraded patch's clean partner at random, so training is unpaired, and
the two sides differ by the degradation alone. --sides disjoint also trains on halves of the training
photographs, one half degraded and the other clean, to measure what that costs. The supervised bound
trains on the same file with each degraded patch beside its own clean patch. Point --train-unpaired,
--paired-train, --val-input/--val-gt and --test-input/--test-gt at a real data set's folders and the
same study runs on it.

examples:
  python experiments/compare_costs.py --task sr --quick                   # CPU smoke run, a minute
  python experiments/compare_costs.py --task dehazing --small --steps 1500 --batch 4 --seeds 0 1 2 \\
      --sigma ot=1 sot-l1=10 sot-l0.5=10 --sides same disjoint --device cpu  # the CPU study
  python experiments/compare_costs.py --task sr --steps 1000 --batch 32   # a GPU, the paper's networks
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.cli.flags import DEVICES  # noqa: E402
from common.training.checkpoint import load_generator  # noqa: E402
from common.training.config import RunConfig, flag_of, plan_resume  # noqa: E402
from common.demo import load_photo, write_heldout, write_training_file  # noqa: E402
from common.evaluation.evaluate import evaluate  # noqa: E402
from common.evaluation.figures import study_curves  # noqa: E402
from common.data.images import list_images, read_image  # noqa: E402
from common.evaluation.metrics import LPIPS  # noqa: E402
from common.data.pairs import find_pairs  # noqa: E402
from common.tasks import TASKS  # noqa: E402
from common.training.devices import resolve_device  # noqa: E402
from common.training.loop import train  # noqa: E402
from common.training.run_folder import read_metrics, read_state, sigma_dir_name  # noqa: E402

COSTS = ("ot", "sot-l1", "sot-l0.5")
# Per task and cost, the sigmas to choose from on the validation split. The costs charge the same
# residual on different scales (a 128x128 haze residual: sot-l1 3.6, sot-l0.5 2.1, ot 39.5), so each
# cost's sigma is set to charge the true degradation of the proxy training set as the default cost
# does at its working sigma (measured on the demo sets: sot-l0.5 / ot = 1.3 / 0.64 x sot-l1's for SR,
# 2.0 / 0.23 for rain, 1.7 / 0.09 for haze). Pass --sigma COST=S1,S2 for a grid.
DEFAULT_SIGMAS = {
    "sr": {"ot": (0.6,), "sot-l1": (1,), "sot-l0.5": (1.3,)},
    "deraining": {"ot": (2.3,), "sot-l1": (10,), "sot-l0.5": (20,)},
    "dehazing": {"ot": (9,), "sot-l1": (100,), "sot-l0.5": (170,)},
}
SIDES = ("same", "disjoint")
# Besides train.py's resume check: validation a continued or reused run must share with the study.
VALIDATION_KEYS = ("val_every_steps", "val_input", "val_gt")
SMALL_NETWORKS = {"gen_width": 16, "gen_increment": 8, "critic_width": 16}
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
                  "immunohistochemistry", "camera", "brick", "grass", "gravel", "moon", "coins", "clock")
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
# Natural photographs among opencv-doc's; one per scene (stereo and sequence pairs would leak across splits).
OPENCV_PHOTOS = ("aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "building.jpg",
                 "butterfly.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg", "lena.jpg", "messi5.jpg", "orange.jpg",
                 "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "stuff.jpg", "graf1.png",
                 "box_in_scene.png", "ela_original.jpg", "Blender_Suzanne1.jpg", "starry_night.jpg", "board.jpg",
                 "pic1.png", "HappyFish.jpg")
LABELS = {"input": "input", "ot": "OT", "sot-l1": "SOT-l1", "sot-l0.5": "SOT-l0.5", "supervised": "supervised",
          "clean": "clean"}


# ----------------------------------------------------------------------------- data
def photo_pool(extra: list[str], quick: bool, opencv_doc: Path = OPENCV_DOC) -> dict[str, np.ndarray]:
    """Name -> float RGB photo: scikit-image's, opencv-doc's (if there), and --photos folders."""
    pool = {f"skimage-{n}": load_photo(n) for n in (SKIMAGE_PHOTOS[:8] if quick else SKIMAGE_PHOTOS)}
    if not quick and opencv_doc.is_dir():
        for name in OPENCV_PHOTOS:
            if (opencv_doc / name).is_file():
                pool[f"opencv-{Path(name).stem}"] = read_image(opencv_doc / name)
    for folder in extra:
        for path in list_images(folder):
            pool[f"{Path(folder).name}-{path.stem}"] = read_image(path)
    return pool


def split_photos(names: list[str], seed: int) -> dict[str, list[str]]:
    """Disjoint test, validation and training groups; the training group also in two halves, for
    the degraded and clean sides of the disjoint variant."""
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n = len(order)
    n_test, n_val = max(2, round(0.3 * n)), max(1, round(0.15 * n))
    train = order[n_test + n_val:]
    half = len(train) // 2
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]), "train": sorted(train),
            "train_degraded_half": sorted(train[:half]), "train_clean_half": sorted(train[half:])}


def build_proxy_data(task, root: Path, photos: dict, groups: dict, seed: int, stride: int, side: int,
                     sides: list[str]) -> dict:
    """Write the training files (one per --sides variant) and the validation and test folders."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split in ("val", "test"):
        paths[f"{split}_input"], paths[f"{split}_gt"] = write_heldout(
            root / split, [(name, photos[name]) for name in groups[split]], task.degradation, rng, side)
    train = [(name, photos[name]) for name in groups["train"]]
    # the same photographs on both sides; with the loader's random partners this is the unpaired
    # file, with each patch's own partner (--supervised) the paired one
    write_training_file(root / "same" / "train.h5", train, train, task.degradation, rng, task.patch, stride,
                        {"seed": seed, "sides": "same"})
    paths["same"] = paths["paired"] = root / "same"
    if "disjoint" in sides:
        write_training_file(root / "disjoint" / "train.h5",
                            [(name, photos[name]) for name in groups["train_degraded_half"]],
                            [(name, photos[name]) for name in groups["train_clean_half"]],
                            task.degradation, rng, task.patch, stride, {"seed": seed, "sides": "disjoint"})
        paths["disjoint"] = root / "disjoint"
    (root / "split.json").write_text(json.dumps(groups, indent=2))
    return paths


# ----------------------------------------------------------------------------- training
def run_key(method: str, sides: str, dc: float, null_space: bool = False) -> str:
    """What a row of the table is: the method, and its data, --dc-weight and --null-space where they are
    not the default."""
    return (method + (f" dc{dc:g}" if dc else "") + (" null-space" if null_space else "")
            + (" disjoint" if sides == "disjoint" else ""))


def train_one(task, args, method: str, sigma: float, seed: int, sides: str, dc: float, data: dict,
              out: Path, null_space: bool = False) -> dict:
    """Train one method at one sigma and seed; returns its run folder, best validation PSNR and curve."""
    key = run_key(method, sides, dc, null_space)
    name = f"{key.replace(' ', '-')}-sigma{sigma:g}-seed{seed}"
    asked = dict(trainset=str(data["paired" if method == "supervised" else sides]), val_input=str(data["val_input"]),
                 val_gt=str(data["val_gt"]), max_steps=args.steps, batch_size=args.batch, seed=seed, epochs=100000,
                 val_every_epochs=100000, val_every_steps=args.val_steps, out=str(out / "runs"), name=name,
                 device=args.device, save_every_steps=0, tensorboard=False, generator_init=args.init, lr=args.lr,
                 log_every_steps=50, ema_decay=args.ema)
    if method == "supervised":
        asked["supervised"] = True
    else:
        asked.update(cost=method, sigma=(sigma,), dc_weight=dc)
    if null_space:
        asked["null_space"] = True
    if args.quick or args.small:
        asked.update(SMALL_NETWORKS)
    run_dir = out / "runs" / task.name / name / sigma_dir_name(sigma)
    state = read_state(run_dir) if run_dir.is_dir() else None
    started = time.time()
    if state:
        # A study stopped part-way continues where it was: a resume refuses a run with other defining
        # settings; one that finished these steps is reused, one cut short continues.
        config, plan = plan_resume(task, "auto", asked)
        differ = [flag_of(k) for k in VALIDATION_KEYS if getattr(plan.saved, k) != asked[k]]
        if differ:  # resuming may change validation; a study's curves may not
            raise SystemExit(f"{run_dir.parent}: a run validated otherwise ({', '.join(differ)}); "
                             f"use another --out or delete it")
        if state.get("finished") and state.get("step") == args.steps:
            print(f"{name}: finished earlier, reused")
        else:
            train(task, config, resume=plan)
    else:
        train(task, RunConfig.for_task(task, **asked))
    records = read_metrics(run_dir / "metrics.jsonl")
    curve = [(r["step"], r["psnr"]) for r in records if r["kind"] == "val"]
    trained = max((r.get("time", 0.0) for r in records if r["kind"] == "train"), default=0.0)  # as logged
    best = max((v for _, v in curve), default=None)
    return {"method": method, "key": key, "sides": sides, "dc": dc, "null_space": null_space, "sigma": sigma,
            "seed": seed,
            "run_dir": run_dir, "best_val": best, "curve": curve, "seconds": max(trained, time.time() - started)}


def choose_sigmas(runs: list[dict]) -> dict[str, float]:
    """Per row key, the sigma whose runs have the best mean (over seeds) of their best validation PSNR."""
    scores: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        scores.setdefault((r["key"], r["sigma"]), []).append(r["best_val"] if r["best_val"] is not None else -1.0)
    chosen: dict[str, tuple[float, float]] = {}
    for (key, sigma), values in scores.items():
        if key not in chosen or np.mean(values) > chosen[key][1]:
            chosen[key] = (sigma, float(np.mean(values)))
    return {key: sigma for key, (sigma, _) in chosen.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pm(values: list[float], digits: int = 2) -> str:
    """``mean ± sd``; one value alone has no spread to show (not ± 0)."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    m, s = mean_sd(present)
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(present) > 1 else "")


# ----------------------------------------------------------------------------- figures
def crops_figure(path: Path, names: list[str], columns: list[tuple[str, Path | None]], gt_dir: Path,
                 psnrs: dict, side: int = 160) -> None:
    """One row per test image: a centre crop of each column's image, labelled with the image's PSNR."""
    rows = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    for name in names:
        tiles = []
        gt = cv2.imread(str(gt_dir / f"{name}.png"))
        for label, folder in columns:
            img = gt if label == "clean" else cv2.imread(str(folder / f"{name}.png"))
            if img.shape[:2] != gt.shape[:2]:  # an SR input: shown at the output's size
                img = cv2.resize(img, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
            hh, ww = img.shape[:2]
            t, l = (hh - side) // 2, (ww - side) // 2
            tile = cv2.resize(img[t:t + side, l:l + side], (2 * side, 2 * side), interpolation=cv2.INTER_NEAREST)
            tile = cv2.copyMakeBorder(tile, 28, 4, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            method, _, variant = label.partition(" ")
            text = " ".join(filter(None, [LABELS.get(method, method), variant])) + (
                f" {psnrs[(label, name)]:.2f} dB" if (label, name) in psnrs else "")
            cv2.putText(tile, text, (6, 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(path), np.concatenate(rows, axis=0))


# ----------------------------------------------------------------------------- the study
def parse_sigmas(tokens: list[str], task: str) -> dict:
    sigmas = {k: list(v) for k, v in DEFAULT_SIGMAS[task].items()}
    for token in tokens:
        cost, _, values = token.partition("=")
        if cost not in COSTS or not values:
            raise SystemExit(f"--sigma takes COST=S1,S2 with COST in {COSTS}, got {token!r}")
        sigmas[cost] = [float(v) for v in values.split(",")]
    return sigmas


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments/compare_costs.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--task", choices=sorted(TASKS), default="sr")
    p.add_argument("--quick", action="store_true", help="small networks, few photos and steps: a CPU smoke run")
    p.add_argument("--small", action="store_true",
                   help="small networks (generator width 16, increment 8, critic width 16) with the full photo "
                        "set: CPU studies")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000; quick 4)")
    p.add_argument("--batch", type=int, default=None, help="patches per step (default 32; quick 2)")
    p.add_argument("--val-steps", type=int, default=None, help="validate every N steps (default steps/10)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--init", choices=("reference", "identity"), default="identity")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="train with --ema DECAY (a moving average of G's weights is validated and tested; not in "
                        "the paper; steadier in short CPU runs) (default: off)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                   help="training seeds: each method is trained once per seed (default: 0)")
    p.add_argument("--bound-seeds", type=int, nargs="+", default=None, metavar="S",
                   help="seeds of the supervised bound, when it needs fewer runs than the methods compared "
                        "(default: --seeds)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the photo split and degradations (default 0)")
    p.add_argument("--sigma", nargs="*", default=[], metavar="COST=S1,S2",
                   help="sigma grid per cost, e.g. sot-l1=10,100 (defaults per task in DEFAULT_SIGMAS)")
    p.add_argument("--dc-weight", type=float, nargs="*", default=[0.0],
                   help="train the SOT costs with each of these --dc-weight values (0: the paper's cost)")
    p.add_argument("--methods", nargs="*", default=[*COSTS, "supervised"])
    p.add_argument("--null-space", action="store_true",
                   help="SR: also train each SOT cost with --null-space (its residual off what the downsampler "
                        "keeps; not in the paper), as rows of their own")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=["same"],
                   help="unpaired training data: both sides from the same photographs (same), and/or from "
                        "disjoint halves of them (disjoint) (default: same)")
    p.add_argument("--disjoint-methods", nargs="*", default=None, metavar="COST",
                   help="costs trained on the disjoint data (default: the task's default cost)")
    p.add_argument("--photos", nargs="*", default=[], metavar="DIR", help="more photographs for the proxy set")
    p.add_argument("--opencv-doc", default=str(OPENCV_DOC), metavar="DIR",
                   help="where opencv-doc's example photographs are (default: %(default)s); a copy of them "
                        "works too, e.g. on a machine without the package")
    p.add_argument("--side", type=int, default=None, help="validation/test crop side (default 512; quick 128)")
    p.add_argument("--copy-photos", default=None, metavar="DIR",
                   help="copy the opencv-doc photographs the study uses into DIR and stop (to take them to a "
                        "machine without the package, then pass --opencv-doc DIR there)")
    p.add_argument("--train-unpaired", dest="train_unpaired", default=None, metavar="DIR",
                   help="a real unpaired training folder of .h5 files (instead of the proxy set)")
    p.add_argument("--paired-train", default=None, metavar="DIR", help="a real paired .h5 folder for the supervised bound")
    p.add_argument("--val-input"), p.add_argument("--val-gt"), p.add_argument("--test-input"), p.add_argument("--test-gt")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--out", default=None, help="default: results/compare_costs/<task>")
    return p


def plan_runs(args, sigmas: dict) -> list[tuple[str, float, str, float, bool]]:
    """(method, sigma, sides, dc weight, null space) of every configuration, each trained once per seed."""
    plan = []
    for sides in args.sides:
        methods = args.methods if sides == "same" else args.disjoint_methods
        for method in methods:
            if method == "supervised":
                if sides == "same":
                    plan.append((method, 0.0, sides, 0.0, False))
                continue
            for dc in (args.dc_weight if method != "ot" else [0.0]):  # the pixel cost charges the mean already
                plan += [(method, sigma, sides, dc, False) for sigma in sigmas[method]]
                if args.null_space and method != "ot" and sides == "same":
                    plan += [(method, sigma, sides, dc, True) for sigma in sigmas[method]]
    return plan


def main(argv=None):
    args = parser().parse_args(argv)
    if args.copy_photos:
        import shutil
        source = Path(args.opencv_doc)
        found = [n for n in OPENCV_PHOTOS if (source / n).is_file()]
        if not found:  # without opencv-doc it copied none, and said only "copied 0 photographs"
            raise SystemExit(f"{source}: none of the {len(OPENCV_PHOTOS)} opencv-doc photographs the study uses is "
                             "there (Debian's opencv-doc package puts them there; --opencv-doc DIR names another "
                             "folder); nothing copied")
        Path(args.copy_photos).mkdir(parents=True, exist_ok=True)
        for name in found:
            shutil.copy2(source / name, args.copy_photos)
        missing = [n for n in OPENCV_PHOTOS if n not in found]
        print(f"copied {len(found)} of {len(OPENCV_PHOTOS)} photographs to {args.copy_photos}"
              + (f" (not in {source}: {', '.join(missing)})" if missing else ""))
        return
    task = TASKS[args.task]
    if args.null_space and task.scale == 1:
        raise SystemExit("--null-space is for SR only")
    args.steps = args.steps or (4 if args.quick else 1000)
    args.batch = args.batch or (2 if args.quick else 32)
    args.val_steps = args.val_steps or max(1, args.steps // 10)
    args.disjoint_methods = args.disjoint_methods if args.disjoint_methods is not None else [task.default_loss]
    side = args.side or (128 if args.quick else 512)
    out = Path(args.out or f"results/compare_costs/{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    sigmas = parse_sigmas(args.sigma, task.name)

    if args.train_unpaired:
        data = {"same": Path(args.train_unpaired), "paired": Path(args.paired_train or args.train_unpaired),
                "val_input": Path(args.val_input), "val_gt": Path(args.val_gt),
                "test_input": Path(args.test_input), "test_gt": Path(args.test_gt)}
        args.sides, groups = ["same"], None
    else:
        photos = photo_pool(args.photos, args.quick, Path(args.opencv_doc))
        groups = split_photos(sorted(photos), args.data_seed)
        data = build_proxy_data(task, out / "data", photos, groups, args.data_seed,
                                task.patch if args.quick else 64, side, args.sides)
    device = resolve_device(args.device)

    started = time.time()
    plan = plan_runs(args, sigmas)

    def seeds_of(method: str) -> list[int]:
        return args.bound_seeds if method == "supervised" and args.bound_seeds else args.seeds
    jobs = [(method, sigma, sides, dc, ns, seed) for method, sigma, sides, dc, ns in plan for seed in seeds_of(method)]
    print(f"{len(plan)} configurations, {len(jobs)} runs of {args.steps} steps")
    runs = [train_one(task, args, method, sigma, seed, sides, dc, data, out, ns)
            for method, sigma, sides, dc, ns, seed in jobs]
    chosen = choose_sigmas(runs)

    pairs = find_pairs(data["test_input"], data["test_gt"])
    lpips = LPIPS(str(device))
    measured: dict[str, list[dict]] = {}   # key -> one record per seed
    psnrs, columns, input_row = {}, [("input", data["test_input"])], None
    for key, sigma in chosen.items():
        for r in (r for r in runs if r["key"] == key and r["sigma"] == sigma):
            record = {"seed": r["seed"], "sigma": sigma, "method": r["method"], "best_val": r["best_val"]}
            for which in ("best", "last"):
                ckpt = r["run_dir"] / f"{which}.pt"
                ckpt = ckpt if ckpt.is_file() else r["run_dir"] / "last.pt"
                save = out / "test" / f"{key.replace(' ', '-')}-seed{r['seed']}-{which}"
                ev = evaluate(load_generator(ckpt, device), pairs, task, device, save_dir=save, lpips=lpips,
                              progress=False)
                record.update({f"{which}_{m}": ev.mean(m) for m in ("psnr", "ssim", "lpips")})
                if input_row is None:
                    input_row = {m: ev.mean(f"input_{m}") for m in ("psnr", "ssim", "lpips")}
                    psnrs.update({("input", row["name"]): row["input_psnr"] for row in ev.rows})
                if which == "best" and key not in (c[0] for c in columns):  # the first seed's crops
                    psnrs.update({(key, row["name"]): row["psnr"] for row in ev.rows})
                    columns.append((key, save))
            measured.setdefault(key, []).append(record)
    columns.append(("clean", None))
    write_results(out, task, args, device, runs, chosen, measured, input_row, groups, len(pairs), started)
    study_curves(out / "curves.png", {label_of(key): [r["curve"] for r in runs if r["key"] == key and
                                                      r["sigma"] == chosen[key]] for key in chosen}, task.title)
    crops_figure(out / "crops.png", [p.name for p in pairs[:3]], columns, data["test_gt"], psnrs)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, results.csv, results.json, crops.png, curves.png")


def label_of(key: str) -> str:
    method, _, variant = key.partition(" ")
    return " ".join(filter(None, [LABELS.get(method, method), variant]))


def write_results(out: Path, task, args, device, runs, chosen, measured, input_row, groups, n_test, started) -> None:
    """results.md (means over seeds, paired differences), results.csv (per seed) and results.json."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "sigma", "seed", "psnr", "ssim", "lpips", "last_psnr", "best_val_psnr"])
        writer.writerow([f"degraded input ({task.input_label})", "", "", *(fmt(input_row[m]) for m in
                                                                           ("psnr", "ssim", "lpips")), "", ""])
        for key, records in measured.items():
            for rec in records:
                writer.writerow([label_of(key), "" if rec["method"] == "supervised" else f"{rec['sigma']:g}",
                                 rec["seed"], *(fmt(rec[f"best_{m}"]) for m in ("psnr", "ssim", "lpips")),
                                 fmt(rec["last_psnr"]), fmt(rec["best_val"])])
    (out / "results.json").write_text(json.dumps({"input": input_row, "chosen_sigma": chosen, "measured": measured,
                                                  "runs": [{k: (str(v) if isinstance(v, Path) else v)
                                                            for k, v in r.items()} for r in runs]}, indent=1))
    ot = {rec["seed"]: rec["best_psnr"] for rec in measured.get("ot", [])}
    small = ", ".join(f"{flag_of(k)} {v}" for k, v in SMALL_NETWORKS.items())
    lines = [f"# {task.title}: OT vs SOT vs supervised", "",
             f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}); torch "
             f"{torch.__version__}; {time.strftime('%Y-%m-%d')}; {args.steps} steps of {args.batch} patches per run, "
             f"seeds {' '.join(map(str, args.seeds))}"
             f"{' (supervised: ' + ' '.join(map(str, args.bound_seeds)) + ')' if args.bound_seeds else ''}, lr {args.lr:g}, init {args.init}"
             f"{f', --ema {args.ema:g}' if args.ema else ''}"
             f"{', small networks (' + small + ')' if args.quick or args.small else ''}; "
             f"{n_test} test images; total {(time.time() - started) / 60:.0f} min", "",
             "PSNR, SSIM and LPIPS on the test images: mean ± standard deviation over seeds. \"best\" is each "
             "run's best validated checkpoint, \"last\" its last step. Differences are paired by seed (same "
             "initialisation and data order).", "",
             "| method | sigma | PSNR best | PSNR last | SSIM best | LPIPS best | best − input | best − OT |",
             "|---|---|---|---|---|---|---|---|",
             f"| degraded input ({task.input_label}) | | {fmt(input_row['psnr'])} | | {fmt(input_row['ssim'])} | "
             f"{fmt(input_row['lpips'])} | | |"]
    for key, records in measured.items():
        best = [r["best_psnr"] for r in records]
        vs_ot = [r["best_psnr"] - ot[r["seed"]] for r in records if r["seed"] in ot] if key != "ot" else []
        sigma = "" if records[0]["method"] == "supervised" else f"{records[0]['sigma']:g}"
        lines.append(f"| {label_of(key)} | {sigma} | {pm(best)} | {pm([r['last_psnr'] for r in records])} | "
                     f"{pm([r['best_ssim'] for r in records], 3)} | {pm([r['best_lpips'] for r in records], 3)} | "
                     f"{pm([b - input_row['psnr'] for b in best])} | {pm(vs_ot) if vs_ot else ''} |")
    lines += ["", "All runs (best validation PSNR, dB; minutes):", "", "| method | sigma | seed | best val | time |",
              "|---|---|---|---|---|"]
    lines += [f"| {label_of(r['key'])} | {r['sigma']:g} | {r['seed']} | {fmt(r['best_val'])} | {r['seconds'] / 60:.1f} |"
              for r in runs]
    if groups:
        lines += ["", "Proxy data: " + ", ".join(f"{k} = {len(v)} photos" for k, v in groups.items())
                  + " (data/split.json lists them)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":
    main()
