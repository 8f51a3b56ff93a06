"""The command line of every task's ``test.py``: restore images with a checkpoint and measure them
(``common.evaluate``), or test the newest demo."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import OneLineParser, common_flags, non_negative_int, positive_int, run_guarded
from .errors import InputError
from .tasks import TASKS, UPSCALERS, Task


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
    common_flags(p)
    return p


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
    from .devices import resolve_device, resolve_precision

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
    if any(p.gt is not None for p in pairs):
        print(format_row({"name": "mean", **ev.means}, task.input_label))
        print(f"restored images and metrics.csv in {save_dir}")
    else:
        print(f"restored images in {save_dir}")
    if ev.examples:
        picture = side_by_side(save_dir / "side_by_side.png", [
            [(f"{task.input_label}" + (f" {row['input_psnr']:.2f} dB" if row.get("input_psnr") else ""), x),
             ("restored" + (f" {row['psnr']:.2f} dB" if row.get("psnr") else ""), restored)]
            + ([("clean", gt)] if gt is not None else [])
            for row, (_, x, restored, gt) in zip(ev.rows, ev.examples)])
        print(f"side by side (input | restored | clean): {picture}")


def test_main(task_name: str, argv: list[str] | None = None) -> None:
    run_guarded(lambda a: _test(TASKS[task_name], a), argv)
