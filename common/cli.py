"""Command lines of every task's ``train.py`` and ``test.py``: the flags, their task defaults, the demos."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import EXIT_BAD_INPUT, InputError, TrainingStopped, close_progress_bars, printable, tolerant_streams
from .losses import TRANSPORT_COSTS
from .demo import demo_defaults, demo_flags_text
from .tasks import TASKS, UPSCALERS, Task

def sigma_list(token: str) -> list[float]:
    """One ``--sigma`` token: ``100``, ``100,50`` or the reference's ``[100,50,30,10]``."""
    parts = token.strip().strip("[]()").replace(",", " ").split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or list of numbers: {token!r}") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"sigma must be finite and non-negative: {token!r}")
    return values


def positive_int(token: str) -> int:
    value = int(token)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(token: str) -> int:
    value = int(token)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed_int(token: str) -> int:
    """A seed: torch and NumPy take 0 to 2^32 - 1 alike (larger ones overflow the samplers' seeds)."""
    value = int(token)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^32), got {value}")
    return value


def _float(token: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {token!r}") from None


def finite_positive_float(token: str) -> float:
    value = _float(token)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {token!r}")
    return value


def finite_non_negative_float(token: str) -> float:
    value = _float(token)
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {token!r}")
    return value


def run_name(token: str) -> str:
    """``--name``: one folder inside ``--out``; a path that leaves it (``../x``, ``/x``) is refused."""
    if not token or token in (".", "..") or "/" in token or "\\" in token or "\0" in token:
        raise argparse.ArgumentTypeError(f"{printable(token)!r} must be a plain folder name inside --out "
                                         "(no '/', '..' or empty name)")
    return token


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <flag>: <problem>``, and exit status 2 like any
    other bad input (argparse's own would print the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {printable(message)} (see {self.prog} --help)\n")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to run; auto takes CUDA when available (default: %(default)s)")
    parser.add_argument("--gpus", default=None, metavar="IDS",
                        help="GPU ids to expose, as CUDA_VISIBLE_DEVICES (e.g. '0' or '0,1')")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="network arithmetic; auto is bf16 autocast on CUDA and fp32 on the CPU "
                             "(the transport cost and gradient-penalty norm are always fp32)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


def train_parser(task: Task) -> argparse.ArgumentParser:
    sigmas = " ".join(f"{s:g}" for s in task.sigmas)
    p = OneLineParser(
        prog=f"{task.name}/train.py",
        description=f"Train SOT for {task.title} from unpaired degraded and clean patches (HDF5). "
                    "One model is trained per value of --sigma, the weight of the transport cost.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  python {task.name}/train.py --demo\n"
               f"  python {task.name}/train.py --trainset data/{task.name}/ --sigma {sigmas} "
               f"--val-input VAL_IN/ --val-gt VAL_GT/\n"
               f"  python {task.name}/train.py --trainset data/{task.name}/ --loss ot --sigma=[{task.sigmas[0]:g}]")
    g = p.add_argument_group("the reference's flags")
    g.add_argument("--nEpochs", type=positive_int, default=200, help="epochs per sigma (default: %(default)s)")
    g.add_argument("--batchSize", type=positive_int, default=task.batch_size, help="patches per step (default: %(default)s)")
    g.add_argument("--lr", type=finite_positive_float, default=1e-4, help="critic learning rate; G gets half (default: %(default)s)")
    g.add_argument("--step", type=positive_int, default=50, help="divide the learning rate by 10 every STEP epochs "
                   "(default: %(default)s)")
    g.add_argument("--sigma", type=sigma_list, nargs="+", default=[list(task.sigmas)], metavar="S",
                   help=f"transport weights, one model each: '--sigma {sigmas}' or '--sigma=[{sigmas.replace(' ', ',')}]' "
                        f"(default: {sigmas})")
    g.add_argument("--trainset", default="./data/", metavar="DIR",
                   help="folder of .h5 files with 'data' (degraded) and 'label' (clean) patches (default: %(default)s)")
    g.add_argument("--resume", default="", metavar="auto|CKPT",
                   help="continue a run where it stopped: 'auto' takes the newest run of this task (of --name "
                        "if given), or name one of our checkpoints; finished sigmas of the sweep are skipped")
    g.add_argument("--resume-new-data", action="store_true",
                   help="with --resume: continue although the training files changed since the run started "
                        "(added, removed, resized or recounted; refused without this flag)")
    g.add_argument("--pretrained", default="", metavar="CKPT",
                   help="start from the weights of a checkpoint (ours or the authors')")
    g.add_argument("--threads", type=non_negative_int, default=None,
                   help="data-loader worker processes (default: 4 on CUDA, 0 on the CPU)")
    s = p.add_argument_group("SOT options")
    s.add_argument("--loss", choices=TRANSPORT_COSTS, default=task.default_loss,
                   help="transport cost: l0.5 or l1 of the residual's spectrum, or the plain OT pixel L2 "
                        "(default: %(default)s)")
    s.add_argument("--dc-weight", type=finite_non_negative_float, default=0.0, metavar="W",
                   help="also charge the residual's mean (its zero frequency, which the spectral costs barely "
                        "see) with weight W: against colour drift; not in the paper (default: %(default)s)")
    s.add_argument("--supervised", action="store_true",
                   help="the supervised upper bound: paired files ('data'[i] degraded from 'label'[i]), an L1 "
                        "loss to the true clean patch, no critic; --sigma is ignored")
    s.add_argument("--init", choices=("reference", "identity"), default="reference",
                   help="generator start: PyTorch's default initialisation as in the reference, or identity "
                        "(zeroed residual head: G(x) = x at step 0, steadier for short runs) (default: %(default)s)")
    s.add_argument("--seed", type=seed_int, default=None, help="base random seed; sigma i uses SEED + i "
                   "(default: a fresh one, recorded in config.json)")
    s.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                   help="stop each sigma's run after N steps, whatever --nEpochs says")
    s.add_argument("--val-input", default=None, metavar="DIR",
                   help="validation inputs (degraded images), or a test set's folder in a layout test.py knows")
    s.add_argument("--val-gt", default=None, metavar="DIR", help="validation ground truth, paired by file name")
    s.add_argument("--val-every", type=positive_int, default=10, metavar="EPOCHS",
                   help="validate every EPOCHS epochs and at the end; the best PSNR is kept as best.pt "
                        "(default: %(default)s)")
    s.add_argument("--val-steps", type=non_negative_int, default=0, metavar="N",
                   help="also validate every N steps (0: only every --val-every epochs)")
    s.add_argument("--out", default="checkpoints", metavar="DIR",
                   help="runs go to DIR/<task>/<name>/sigma-<s>/ (default: %(default)s)")
    s.add_argument("--name", type=run_name, default=None, help="run name (default: <loss>-<date>-<time>)")
    s.add_argument("--layout", choices=("auto", "ours", "matlab"), default="auto",
                   help="patch layout of the .h5 files: ours (N x C x H x W), matlab (N x C x W x H), or auto "
                        "(the files' 'layout' attribute, else ours)")
    if task.scale > 1:
        s.add_argument("--align-corners", action="store_true",
                       help="upsample inputs with align_corners=True, as the reference trained")
    s.add_argument("--log-every", type=positive_int, default=10, metavar="N", help="log every N steps")
    s.add_argument("--save-every", type=non_negative_int, default=1000, metavar="N",
                   help="also checkpoint every N steps, keeping the newest two (0: only each epoch) "
                        "(default: %(default)s)")
    s.add_argument("--max-nonfinite", type=positive_int, default=5, metavar="N",
                   help="stop after N steps in a row with a non-finite loss or gradient (each is skipped) "
                        "(default: %(default)s)")
    s.add_argument("--deterministic", action="store_true",
                   help="bit-for-bit repeatable runs (deterministic kernels, no cuDNN autotuning; slower on CUDA)")
    s.add_argument("--gen-width", type=positive_int, default=80, metavar="N",
                   help="generator width (the paper's: %(default)s); smaller for quick experiments and tests")
    s.add_argument("--gen-increment", type=positive_int, default=48, metavar="N",
                   help="generator U-Net width increment per level (the paper's: %(default)s)")
    s.add_argument("--critic-width", type=positive_int, default=64, metavar="N",
                   help="critic base width (the paper's: %(default)s)")
    s.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    s.add_argument("--demo", action="store_true",
                   help="build a small unpaired set from scikit-image's photographs and train a short run that two "
                        f"CPU cores finish in under 10 minutes ({demo_flags_text(task)}); any flag given as well "
                        "overrides these. See docs/TRAINING.md")
    _common_flags(p)
    return p


def test_parser(task: Task) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"{task.name}/test.py",
        description=f"Restore images with an SOT {task.title} checkpoint (ours or the authors') and, given "
                    "ground truth, report PSNR, SSIM and LPIPS per image and on average (also in metrics.csv).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  python {task.name}/test.py --demo\n"
               f"  python {task.name}/test.py --checkpoint CKPT --input DEGRADED/ --gt CLEAN/ --save results/\n"
               f"  python {task.name}/test.py --checkpoint CKPT --input MY_PHOTOS/")
    p.add_argument("--checkpoint", "--model", default=None, metavar="CKPT", help="checkpoint file to test")
    p.add_argument("--input", default=None, metavar="DIR", help="folder of degraded images"
                   + (" (low-resolution; upsampled x4 bicubic before G)" if task.scale > 1 else
                      ", or a test set's folder in one of the known layouts (see the README)"))
    p.add_argument("--gt", default=None, metavar="DIR",
                   help="ground-truth folder with the same file names; without it only restored images are written")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="where restored PNGs and metrics.csv go (default: results/<task>/<checkpoint>)")
    if task.scale > 1:
        p.add_argument("--prescaled", action="store_true",
                       help="inputs are already upsampled to the output size (the authors' test setup)")
        p.add_argument("--align-corners", action="store_true", default=None,
                       help="upsample with align_corners=True (default: as the checkpoint was trained)")
        p.add_argument("--upscale", choices=UPSCALERS, default="pytorch",
                       help="bicubic kernel that upsamples the inputs: pytorch (a = -0.75, what training feeds G; "
                            "the default) or matlab (imresize, a = -0.5, how the paper's test inputs and its "
                            "'bicubic' row were made) (default: %(default)s)")
    p.add_argument("--y-channel", action="store_true",
                   help="PSNR/SSIM on the BT.601 Y channel (Y = 16 + 65.481 R + 128.553 G + 24.966 B) instead of RGB")
    p.add_argument("--transpose", action="store_true",
                   help="swap height and width around G: for models trained on MATLAB-layout .h5 files "
                        "read without --layout matlab (the authors' deraining models)")
    p.add_argument("--tile", type=positive_int, default=None, metavar="N",
                   help="restore in N x N tiles, for images that do not fit in memory (on CUDA, an "
                        "out-of-memory error falls back to tiles by itself)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=32, metavar="M",
                   help="context pixels around each tile (default: %(default)s)")
    p.add_argument("--reference-metrics", action="store_true",
                   help=f"measure as the authors' test scripts: inputs cropped to a multiple of {task.reference_crop} "
                        "pixels and PSNR on the unclamped float output (default: no crop, every metric on the "
                        "8-bit image written); see docs/FIDELITY.md")
    p.add_argument("--side-by-side", type=non_negative_int, default=0, metavar="N",
                   help="also write side_by_side.png: input | restored | ground truth for the first N images "
                        "(--demo: all of them)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--out", default="checkpoints", metavar="DIR", help="with --demo: where the demo runs are")
    p.add_argument("--demo", action="store_true",
                   help="test the newest demo checkpoint on the demo's held-out photographs")
    _common_flags(p)
    return p


def run_guarded(main, argv, debug_flag: str = "--debug") -> None:
    """Run ``main(argv)``; an InputError becomes one line on stderr and exit status 2, a deliberate
    stop its message and its own status (128 + the signal, or 3 for a diverged run)."""
    argv = sys.argv[1:] if argv is None else argv
    tolerant_streams()  # a file name that is not UTF-8 is printed with \xff escapes, never a UnicodeEncodeError
    try:
        main(argv)
    except InputError as exc:
        if debug_flag in argv:
            raise
        close_progress_bars()
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingStopped as exc:
        close_progress_bars()
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)


# ----------------------------------------------------------------------------- train.py
def parse_train_args(task: Task, argv: list[str]) -> argparse.Namespace:
    """Parse train.py's flags; with --demo, the demo's defaults stand in for the task's."""
    parser = train_parser(task)
    if "--demo" in argv:
        parser.set_defaults(**demo_defaults(task))
    args = parser.parse_args(argv)
    args.sigma = [s for group in args.sigma for s in group]
    if not hasattr(args, "align_corners"):
        args.align_corners = False
    return args


# Flags that define a run: a resume may not change them (the others, e.g. --max-steps, it may).
RUN_DEFINING = ("sigma", "loss", "seed", "batchSize", "lr", "step", "gen_width", "gen_increment",
                "critic_width", "init", "trainset", "layout", "align_corners", "pretrained", "dc_weight",
                "supervised")


def explicit_flags(task: Task, argv: list[str]) -> dict:
    """The flags given on the command line, with their parsed values (no defaults)."""
    parser = train_parser(task)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    if "sigma" in given:
        given["sigma"] = [s for group in given["sigma"] for s in group]
    return given


def newest_run(task_dir: Path) -> Path:
    runs = [d for d in task_dir.iterdir() if (d / "run.json").is_file()] if task_dir.is_dir() else []
    if not runs:
        raise InputError(f"{task_dir}: no run to resume")

    def last_written(run: Path) -> float:
        return max(p.stat().st_mtime for p in [run / "run.json", *run.glob("sigma-*/state.json")])
    return max(runs, key=last_written)


def resume_plan(task: Task, args: argparse.Namespace, argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """The arguments of the run being resumed (its run.json, with this command's flags on top) and
    the checkpoint each sigma continues from (empty: each sigma's newest)."""
    from .checkpoint import read_checkpoint
    from .training import read_json

    given = explicit_flags(task, argv)
    resume_from: dict = {}
    if args.resume == "auto":
        task_dir = Path(args.out) / task.name
        run_root = task_dir / given["name"] if "name" in given else newest_run(task_dir)
        if not (run_root / "run.json").is_file():
            raise InputError(f"{run_root}: no run to resume (no run.json)")
    else:
        checkpoint = Path(args.resume)
        ckpt = read_checkpoint(checkpoint)
        if ckpt["format"] == "authors" or "sigma" not in ckpt:
            raise InputError(f"{checkpoint}: not one of our training checkpoints; use --pretrained to start from it")
        run_root = checkpoint.parent.parent
        sigma = ckpt["sigma"]
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise InputError(f"{checkpoint}: the checkpoint's sigma {sigma!r} is not a number; it is damaged")
        resume_from[float(sigma)] = checkpoint
        if not (run_root / "run.json").is_file():
            raise InputError(f"{run_root}: the checkpoint's run folder has no run.json")
    saved = read_json(run_root / "run.json")
    for key in RUN_DEFINING:
        if key in given and key in saved and given[key] != saved[key]:
            raise InputError(f"--{key} {given[key]} differs from the run being resumed ({saved[key]}); "
                             "start a new run (another --name) instead")
    merged = {**vars(parse_train_args(task, [])), **saved, **given}
    merged.update(resume=args.resume, name=run_root.name, out=str(run_root.parent.parent), demo=False)
    return argparse.Namespace(**merged), resume_from


def _train(task: Task, argv: list[str]) -> None:
    from .distributed import Distributed

    args = parse_train_args(task, argv)
    # Under torchrun with several processes this joins the process group; alone, it is a no-op.
    dist = Distributed.from_environment(args.device)
    try:
        _train_with(task, args, argv, dist)
    finally:
        dist.close()


def _train_with(task: Task, args: argparse.Namespace, argv: list[str], dist) -> None:
    from .demo import build_demo_data, demo_paths, demo_report
    from .training import train

    if args.resume:
        args, resume_from = resume_plan(task, args, argv)
        train(task, args, dist, resume_from=resume_from)
        return
    stamp = dist.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
    if args.demo:
        args.name = args.name or f"demo-{stamp}"
        root = Path(args.out) / task.name / "demo-data"
        if dist.is_main:
            build_demo_data(task, root)
        dist.barrier()
        paths = demo_paths(root)
        args.trainset, args.val_input, args.val_gt = (str(paths[k]) for k in ("trainset", "val_input", "val_gt"))
    args.name = args.name or f"{args.loss}-{stamp}"
    started = time.time()
    results = train(task, args, dist)
    if args.demo and dist.is_main:
        print("\n" + demo_report(task, args, results[-1], time.time() - started))


def train_main(task_name: str, argv: list[str] | None = None) -> None:
    run_guarded(lambda a: _train(TASKS[task_name], a), argv)


# ----------------------------------------------------------------------------- test.py
def newest_demo_checkpoint(out: Path, task: Task) -> Path:
    """The newest demo run's best checkpoint (its last one if it was never validated)."""
    runs = sorted((out / task.name).glob("demo-*/sigma-*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise InputError(f"{out / task.name}: no demo checkpoint; run python {task.name}/train.py --demo first")
    best = runs[-1].with_name("best.pt")
    return best if best.is_file() else runs[-1]


def default_save_dir(task: Task, checkpoint: Path) -> Path:
    parent = checkpoint.parent
    name = f"{parent.parent.name}_{parent.name}_{checkpoint.stem}" if parent.name.startswith("sigma-") else checkpoint.stem
    return Path("results") / task.name / name


def _test(task: Task, argv: list[str]) -> None:
    from .checkpoint import build_generator, read_checkpoint
    from .demo import demo_paths
    from .files import check_can_write
    from .evaluate import evaluate, format_row
    from .figures import side_by_side
    from .metrics import LPIPS
    from .pairs import find_pairs
    from .training import resolve_device, resolve_precision

    args = test_parser(task).parse_args(argv)
    if args.demo:
        args.checkpoint = args.checkpoint or str(newest_demo_checkpoint(Path(args.out), task))
        paths = demo_paths(Path(args.out) / task.name / "demo-data")
        args.input, args.gt = args.input or str(paths["val_input"]), args.gt or str(paths["val_gt"])
    if not args.checkpoint or not args.input:
        raise InputError("give --checkpoint and --input (or --demo)")
    if args.gpus:
        import os
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    checkpoint = Path(args.checkpoint)
    ckpt = read_checkpoint(checkpoint)
    generator = build_generator(ckpt, checkpoint).to(device).eval()
    trained = (ckpt.get("config") or {})
    align_corners = getattr(args, "align_corners", None)
    if align_corners is None:
        align_corners = bool(trained.get("align_corners", False))
    pairs = find_pairs(args.input, args.gt, verbose=True)
    save_dir = Path(args.save) if args.save else default_save_dir(task, checkpoint)
    check_can_write(save_dir, "results folder")  # a file there or a read-only mount: refused before any work
    lpips = None if args.no_lpips or all(p.gt is None for p in pairs) else LPIPS(str(device))
    print(f"{checkpoint} ({ckpt['format']}) on {len(pairs)} image(s) from {args.input}; device {device} ({precision})")
    ev = evaluate(generator, pairs, task, device, align_corners=align_corners,
                  prescaled=getattr(args, "prescaled", False), save_dir=save_dir, lpips=lpips,
                  y_channel=args.y_channel, precision=precision, transpose=args.transpose,
                  tile=args.tile, tile_overlap=args.tile_overlap, upscale=getattr(args, "upscale", "pytorch"),
                  reference_metrics=args.reference_metrics, keep=len(pairs) if args.demo else args.side_by_side)
    for row in ev.rows:
        print(format_row(row, task.input_label))
    if ev.examples:
        picture = side_by_side(save_dir / "side_by_side.png", [
            [(f"{task.input_label}" + (f" {row['input_psnr']:.2f} dB" if row.get("input_psnr") else ""), x),
             ("restored" + (f" {row['psnr']:.2f} dB" if row.get("psnr") else ""), restored)]
            + ([("clean", gt)] if gt is not None else [])
            for row, (_, x, restored, gt) in zip(ev.rows, ev.examples)])
        print(f"side by side (input | restored | clean): {picture}")
    if any(p.gt is not None for p in pairs):
        print(format_row({"name": "mean", **ev.means}, task.input_label))
        print(f"restored images and metrics.csv in {save_dir}")
    else:
        print(f"restored images in {save_dir}")


def test_main(task_name: str, argv: list[str] | None = None) -> None:
    run_guarded(lambda a: _test(TASKS[task_name], a), argv)
