#!/usr/bin/env python
"""OT against SOT (l1, l0.5) and the supervised bound, trained and measured the same way on one task.

Every method gets the same training set, budget (steps, batch), seed and networks. For each cost
the sigma is chosen on a validation split (best validation PSNR over the run, as the reference keeps
its best checkpoint), never on the test images; the chosen checkpoints are then measured on the
held-out test split. Writes results.md and results.csv (PSNR, SSIM, LPIPS where its weights are
available, the degraded input as a row), crops.png (test crops side by side: input | OT | SOT-l1 |
SOT-l0.5 | supervised | clean, each with the image's PSNR) and curves.png (validation PSNR against
step, one curve per method at its chosen sigma).

Data: without folders of your own, a proxy set is built from photographs available offline
(scikit-image's, and those of Debian's opencv-doc package when installed, plus any --photos DIR),
with the task's synthetic degradation: disjoint photographs for the degraded and clean sides of the
unpaired training file, for the paired file of the supervised bound (the same training photographs,
degraded and clean), for validation and for testing. Point --train-unpaired (a folder of unpaired
.h5 files), --paired-train, --val-input/--val-gt and --test-input/--test-gt at a real data set's
folders and the same study runs on it.

examples:
  python experiments/compare_costs.py --task sr --quick                 # CPU smoke run, a minute
  python experiments/compare_costs.py --task sr --steps 1000 --batch 32 # a GPU, all methods in ~9 min
  python experiments/compare_costs.py --task deraining --sigma sot-l1=10,100 --dc-weight 0 1
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

from common.checkpoint import load_generator  # noqa: E402
from common.cli import parse_train_args  # noqa: E402
from common.data import H5PatchWriter, cut_patches  # noqa: E402
from common.degrade import DEGRADATIONS, degradation_scale  # noqa: E402
from common.demo import centre_crop, load_photo  # noqa: E402
from common.evaluate import evaluate  # noqa: E402
from common.images import list_images, read_image, to_uint8, write_image  # noqa: E402
from common.metrics import LPIPS  # noqa: E402
from common.pairs import find_pairs  # noqa: E402
from common.tasks import TASKS  # noqa: E402
from common.training import resolve_device, train  # noqa: E402

COSTS = ("ot", "sot-l1", "sot-l0.5")
DEFAULT_SIGMAS = {  # per task and cost: two values to choose from on the validation split
    "sr": {"ot": (1000, 5000), "sot-l1": (100, 1000), "sot-l0.5": (100, 1000)},
    "deraining": {"ot": (100, 1000), "sot-l1": (10, 100), "sot-l0.5": (10, 100)},
    "dehazing": {"ot": (100, 1000), "sot-l1": (10, 100), "sot-l0.5": (10, 100)},
}
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
    """Disjoint groups: degraded-side and clean-side training photos, validation, test."""
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n = len(order)
    n_test, n_val = max(2, round(0.3 * n)), max(1, round(0.15 * n))
    train = order[n_test + n_val:]
    half = len(train) // 2
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train_degraded": sorted(train[:half]), "train_clean": sorted(train[half:])}


def build_proxy_data(task, root: Path, photos: dict, groups: dict, seed: int, stride: int, side: int) -> dict:
    """Write the unpaired and paired training files and the validation and test folders."""
    degrade, scale = DEGRADATIONS[task.degradation], degradation_scale(task.degradation)
    rng = np.random.default_rng(seed)
    paths = {"unpaired": root / "unpaired", "paired": root / "paired"}
    for split in ("val", "test"):
        for name in groups[split]:
            clean = centre_crop(photos[name], side)
            write_image(root / split / "gt" / f"{name}.png", clean)
            write_image(root / split / "input" / f"{name}.png", degrade(clean, rng))
        paths[f"{split}_input"], paths[f"{split}_gt"] = root / split / "input", root / split / "gt"
    with H5PatchWriter(paths["unpaired"] / "train.h5", attrs={"seed": seed, "degradation": task.degradation,
                                                              "data_photos": ",".join(groups["train_degraded"]),
                                                              "label_photos": ",".join(groups["train_clean"])}) as w:
        for name in groups["train_degraded"]:
            w.append("data", cut_patches(degrade(photos[name], rng), task.patch // scale, stride // scale))
        for name in groups["train_clean"]:
            w.append("label", cut_patches(photos[name], task.patch, stride))
    with H5PatchWriter(paths["paired"] / "train.h5", attrs={"seed": seed, "paired": 1}) as w:
        for name in groups["train_degraded"] + groups["train_clean"]:
            clean = photos[name]
            h, wd = clean.shape[:2]
            clean = clean[: h - h % scale, : wd - wd % scale]  # keep the two grids aligned
            w.append("data", cut_patches(degrade(clean, rng), task.patch // scale, stride // scale))
            w.append("label", cut_patches(clean, task.patch, stride))
    (root / "split.json").write_text(json.dumps(groups, indent=2))
    return paths


# ----------------------------------------------------------------------------- training
def train_one(task, args, method: str, sigma: float, data: dict, out: Path) -> dict:
    """Train one method at one sigma; returns its run folder, best validation PSNR and curve."""
    name = f"{method}-sigma{sigma:g}" + (f"-dc{args.dc_weight:g}" if args.dc_weight and method != "supervised" else "")
    argv = ["--trainset", str(data["paired" if method == "supervised" else "unpaired"]),
            "--val-input", str(data["val_input"]), "--val-gt", str(data["val_gt"]),
            "--max-steps", str(args.steps), "--batchSize", str(args.batch), "--seed", str(args.seed),
            "--nEpochs", "100000", "--val-every", "100000", "--val-steps", str(args.val_steps),
            "--out", str(out / "runs"), "--name", name, "--device", args.device, "--save-every", "0",
            "--no-tensorboard", "--init", args.init, "--lr", str(args.lr), "--log-every", "50"]
    argv += ["--supervised"] if method == "supervised" else ["--loss", method, "--sigma", f"{sigma:g}",
                                                             "--dc-weight", str(args.dc_weight)]
    if args.quick or args.small:
        argv += ["--gen-width", "16", "--gen-increment", "8", "--critic-width", "8"]
    started = time.time()
    result = train(task, parse_train_args(task, argv))[0]
    curve = [(r["step"], r["psnr"]) for r in map(json.loads, (result.run_dir / "metrics.jsonl").open())
             if r["kind"] == "val"]
    dc = args.dc_weight if method != "supervised" else 0.0
    return {"method": method, "key": method + (f" dc{dc:g}" if dc else ""), "sigma": sigma,
            "run_dir": result.run_dir, "best_val": result.best_psnr, "curve": curve, "seconds": time.time() - started}


# ----------------------------------------------------------------------------- figures
def plot_curves(path: Path, curves: dict[str, list], title: str) -> None:
    """Validation PSNR against step, one coloured line per method, drawn with OpenCV."""
    w, h, margin = 900, 520, 70
    img = np.full((h, w, 3), 255, np.uint8)
    points = [p for c in curves.values() for p in c]
    if not points:
        return
    steps, values = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = 0, max(steps)
    y0, y1 = min(values) - 0.5, max(values) + 0.5
    sx = lambda s: int(margin + (s - x0) / max(x1 - x0, 1) * (w - 2 * margin))
    sy = lambda v: int(h - margin - (v - y0) / max(y1 - y0, 1e-6) * (h - 2 * margin))
    cv2.rectangle(img, (margin, margin), (w - margin, h - margin), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(5):
        v = y0 + k * (y1 - y0) / 4
        cv2.putText(img, f"{v:.1f}", (5, sy(v) + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        s = x0 + k * (x1 - x0) / 4
        cv2.putText(img, f"{s:.0f}", (sx(s) - 15, h - margin + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "step", (w // 2 - 20, h - 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{title}: validation PSNR (dB)", (margin, margin - 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    colours = [(200, 60, 40), (40, 140, 40), (40, 60, 200), (160, 60, 160), (0, 140, 200), (90, 90, 90),
               (0, 0, 0), (120, 80, 0)]
    for i, (label, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        pts = np.array([(sx(s), sy(v)) for s, v in curve], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 3, colour, -1, cv2.LINE_AA)
        cv2.putText(img, label, (margin + 10, margin + 20 + 20 * i), font, 0.5, colour, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def crops_figure(path: Path, names: list[str], columns: list[tuple[str, Path | None]], data: dict,
                 psnrs: dict, side: int = 160) -> None:
    """One row per test image: a centre crop of each column's image, labelled with the image's PSNR."""
    rows = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    for name in names:
        tiles = []
        gt = cv2.imread(str(data["test_gt"] / f"{name}.png"))
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="sr")
    p.add_argument("--quick", action="store_true", help="small networks, few photos and steps: a CPU smoke run")
    p.add_argument("--small", action="store_true",
                   help="small networks (generator width 16, critic width 8) with the full photo set: CPU studies")
    p.add_argument("--steps", type=int, default=None, help="training steps per method and sigma (default 1000; quick 4)")
    p.add_argument("--batch", type=int, default=None, help="patches per step (default 32; quick 2)")
    p.add_argument("--val-steps", type=int, default=None, help="validate every N steps (default steps/10)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--init", choices=("reference", "identity"), default="reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", nargs="*", default=[], metavar="COST=S1,S2",
                   help="sigma grid per cost, e.g. sot-l1=10,100 (defaults per task in DEFAULT_SIGMAS)")
    p.add_argument("--dc-weight", type=float, nargs="*", default=[0.0],
                   help="train the SOT costs with each of these --dc-weight values (0: the paper's cost; OT "
                        "runs without, its pixel cost charges the mean already)")
    p.add_argument("--methods", nargs="*", default=[*COSTS, "supervised"])
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
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--out", default=None, help="default: results/compare_costs/<task>")
    args = p.parse_args(argv)
    if args.copy_photos:
        import shutil
        Path(args.copy_photos).mkdir(parents=True, exist_ok=True)
        copied = [shutil.copy2(Path(args.opencv_doc) / n, args.copy_photos) for n in OPENCV_PHOTOS
                  if (Path(args.opencv_doc) / n).is_file()]
        print(f"copied {len(copied)} photographs to {args.copy_photos}")
        return
    task = TASKS[args.task]
    args.steps = args.steps or (4 if args.quick else 1000)
    args.batch = args.batch or (2 if args.quick else 32)
    args.val_steps = args.val_steps or max(1, args.steps // 10)
    side = args.side or (128 if args.quick else 512)
    out = Path(args.out or f"results/compare_costs/{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    sigmas = parse_sigmas(args.sigma, task.name)
    if args.quick:
        sigmas = {k: v[:1] for k, v in sigmas.items()}

    if args.train_unpaired:
        data = {"unpaired": Path(args.train_unpaired), "paired": Path(args.paired_train or args.train_unpaired),
                "val_input": Path(args.val_input), "val_gt": Path(args.val_gt),
                "test_input": Path(args.test_input), "test_gt": Path(args.test_gt)}
        groups = None
    else:
        photos = photo_pool(args.photos, args.quick, Path(args.opencv_doc))
        groups = split_photos(sorted(photos), args.seed)
        data = build_proxy_data(task, out / "data", photos, groups, args.seed, task.patch if args.quick else 64, side)
    device = resolve_device(args.device)

    started = time.time()
    runs = []
    for method in args.methods:
        if method == "supervised":
            runs.append(train_one(task, argparse.Namespace(**{**vars(args), "dc_weight": 0.0}), method, 0.0, data, out))
            continue
        for dc in (args.dc_weight if method != "ot" else [0.0]):  # the pixel cost already charges the mean
            for sigma in sigmas[method]:
                runs.append(train_one(task, argparse.Namespace(**{**vars(args), "dc_weight": dc}), method, sigma,
                                      data, out))
    chosen = {}
    for r in runs:  # per method (and dc weight), the sigma with the best validation PSNR
        key = r["key"]
        if key not in chosen or (r["best_val"] or -1) > (chosen[key]["best_val"] or -1):
            chosen[key] = r

    pairs = find_pairs(data["test_input"], data["test_gt"])
    lpips = LPIPS(str(device))
    table, psnrs, columns = [], {}, [("input", data["test_input"])]
    for key, r in chosen.items():
        best = r["run_dir"] / "best.pt"
        generator = load_generator(best if best.is_file() else r["run_dir"] / "last.pt", device)
        save = out / "test" / key.replace(" ", "-")
        ev = evaluate(generator, pairs, task, device, save_dir=save, lpips=lpips, progress=False)
        if not table:
            table.append({"method": f"degraded input ({task.input_label})", "sigma": "", **{
                m: ev.mean(f"input_{m}") for m in ("psnr", "ssim", "lpips")}})
            for row in ev.rows:
                psnrs[("input", row["name"])] = row["input_psnr"]
        table.append({"method": LABELS.get(r["method"], r["method"]) + key[len(r["method"]):],
                      "sigma": "" if r["method"] == "supervised" else f"{r['sigma']:g}",
                      **{m: ev.mean(m) for m in ("psnr", "ssim", "lpips")}, "best_val_psnr": r["best_val"]})
        for row in ev.rows:
            psnrs[(key, row["name"])] = row["psnr"]
        columns.append((key, save))
    columns.append(("clean", None))

    fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "sigma", "psnr", "ssim", "lpips", "best_val_psnr"])
        for row in table:
            writer.writerow([row["method"], row["sigma"], *(fmt(row.get(k)) for k in ("psnr", "ssim", "lpips",
                                                                                       "best_val_psnr"))])
    all_runs = "\n".join(f"| {LABELS.get(r['method'], r['method'])} | {r['run_dir'].parent.name} | "
                         f"{fmt(r['best_val'])} | {r['seconds']:.0f} s |" for r in runs)
    md = [f"# {task.title}: OT vs SOT vs supervised", "",
          f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}); torch "
          f"{torch.__version__}; {time.strftime('%Y-%m-%d')}; budget {args.steps} steps of {args.batch} patches per "
          f"run, seed {args.seed}, lr {args.lr:g}, init {args.init}"
          f"{', small networks (generator width 16, critic width 8)' if args.quick or args.small else ''}; "
          f"{len(pairs)} test images; total {time.time() - started:.0f} s", "",
          "| method | sigma (chosen on validation) | PSNR | SSIM | LPIPS |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['sigma']} | {fmt(r['psnr'])} | {fmt(r['ssim'])} | {fmt(r['lpips'])} |" for r in table]
    md += ["", "All runs (best validation PSNR, dB):", "", "| method | run | best val PSNR | time |", "|---|---|---|---|",
           all_runs, ""]
    if groups:
        md += [f"Proxy data: {', '.join(f'{k} = {len(v)} photos' for k, v in groups.items())} (split.json lists them)."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    plot_curves(out / "curves.png", {LABELS.get(r["method"], r["method"]) + k[len(r["method"]):]: r["curve"]
                                     for k, r in chosen.items()}, task.title)
    crops_figure(out / "crops.png", [p.name for p in pairs[:3]], columns, data, psnrs)
    print("\n".join(md))
    print(f"\nwritten: {out / 'results.md'}, results.csv, crops.png, curves.png")


if __name__ == "__main__":
    main()
