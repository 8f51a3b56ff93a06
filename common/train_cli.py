"""The command line of every task's ``train.py``: its flags with the task's defaults, the demo's
defaults under ``--demo``, resuming a run, and the run itself (``common.runs``)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import (OneLineParser, common_flags, decay, finite_non_negative_float, finite_positive_float, non_negative_int,
                  positive_int, run_guarded, run_name, seed_int, sigma_list)
from .demo import demo_defaults, demo_flags_text
from .errors import InputError
from .sot import TRANSPORT_COSTS
from .networks import CRITIC_INITS
from .tasks import TASKS, Task


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
    s.add_argument("--ema", type=decay, default=0.0, metavar="DECAY",
                   help="also keep a moving average of the generator's weights, avg <- DECAY avg + (1 - DECAY) G "
                        "after each step (e.g. 0.995), and validate, keep and test that average: steadier outputs "
                        "where GAN training swings (short runs, small batches); not in the paper (default: off)")
    s.add_argument("--init", choices=("reference", "identity"), default="reference",
                   help="generator start: PyTorch's default initialisation as in the reference, or identity "
                        "(zeroed residual head: G(x) = x at step 0, steadier for short runs) (default: %(default)s)")
    s.add_argument("--critic-init", choices=CRITIC_INITS, default="reference",
                   help="critic start: reference (N(0, 0.02), as the authors) or kaiming (He initialisation: the "
                        "critic tells the sides apart from its first steps instead of after a few hundred; for short "
                        "runs; not in the paper) (default: %(default)s)")
    s.add_argument("--critic-warmup", type=non_negative_int, default=0, metavar="N",
                   help="train only the critic for the first N steps, so that G starts by following a critic that "
                        "already tells the sides apart; for short runs; not in the paper (default: %(default)s)")
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
        s.add_argument("--null-space", action=argparse.BooleanOptionalAction, default=False,
                       help=f"let G add only detail the low-resolution input does not fix: its residual loses what an "
                            f"x{task.scale} bicubic downsampler keeps of it, so colours and shading stay the input's "
                            "(the critic cannot pull them away); part of the model, test.py applies it too; not in "
                            "the paper (default: off; the demo's: on)")
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
    common_flags(p)
    return p


def parse_train_args(task: Task, argv: list[str]) -> argparse.Namespace:
    """Parse train.py's flags; with --demo, the demo's defaults stand in for the task's."""
    parser = train_parser(task)
    if "--demo" in argv:
        parser.set_defaults(**demo_defaults(task))
    args = parser.parse_args(argv)
    args.sigma = [s for group in args.sigma for s in group]
    for sr_only in ("align_corners", "null_space"):
        if not hasattr(args, sr_only):
            setattr(args, sr_only, False)
    return args


# Flags that define a run: a resume may not change them (the others, e.g. --max-steps, it may).
RUN_DEFINING = ("sigma", "loss", "seed", "batchSize", "lr", "step", "gen_width", "gen_increment",
                "critic_width", "init", "critic_init", "critic_warmup", "trainset", "layout", "align_corners",
                "null_space", "pretrained", "dc_weight", "supervised", "ema")


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
    from .runlog import read_json

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
    from .devices import Distributed

    args = parse_train_args(task, argv)
    # Under torchrun with several processes this joins the process group; alone, it is a no-op.
    dist = Distributed.from_environment(args.device)
    try:
        _train_with(task, args, argv, dist)
    finally:
        dist.close()


def _train_with(task: Task, args: argparse.Namespace, argv: list[str], dist) -> None:
    from .demo import build_demo_data, demo_paths, demo_report
    from .runs import train

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
