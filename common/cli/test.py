"""The command line of every task's ``test.py``: restore images with a checkpoint and measure them
(``common.evaluation.evaluate``), or test the newest demo."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..data.loader import UnpairedH5Dataset
from ..data.pairs import find_pairs
from ..data.patch_file import LAYOUT_CHOICES
from ..demo import demo_paths, demo_root, newest_demo_checkpoint
from ..evaluation.evaluate import (check_before_writing, check_scored_apart, evaluate, format_row, gain_summary,
                                   score_summary)
from ..evaluation.figures import side_by_side
from ..evaluation.inference import MIN_TILE, TILE_CONTEXT, tiled_work
from ..evaluation.metrics import LPIPS
from ..evaluation.no_reference import (CleanReference, reference_from_folder, reference_from_training_data,
                                       score_reliability)
from ..evaluation.onnx_export import ExportedGenerator, check_export_path, describe, export_onnx
from ..evaluation.report import ASSETS as REPORT_FOLDER, ASSET_NAME, ResultsReport
from ..system.errors import InputError
from ..system.files import (FolderLock, StagedFolder, check_can_write, human_bytes, name_max, probe_file,
                            same_file)
from ..system.text import note, printable
from ..tasks import TASKS, Task, UPSCALERS
from ..training.checkpoint import build_generator, read_checkpoint, trained_align_corners, trained_task
from ..training.devices import expose_gpus, resolve_device, resolve_precision
from .flags import OneLineParser, common_flags, non_negative_int
from .guard import run_guarded


def tile_side(token: str) -> int:
    value = int(token)
    if value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TILE} pixels (a smaller tile spends most of its time "
                                         f"on the context around it), got {value}")
    return value


def add_upsampling_flags(p: argparse.ArgumentParser) -> None:
    """SR's own: how its low-resolution inputs are upsampled before G."""
    p.add_argument("--prescaled", action="store_true",
                   help="inputs are already upsampled to the output size (the authors' test setup)")
    p.add_argument("--align-corners", action="store_true", default=None,
                   help="upsample with align_corners=True (default: as the checkpoint was trained)")
    p.add_argument("--upscale", choices=UPSCALERS, default="pytorch",
                   help="bicubic kernel that upsamples the inputs: pytorch (a = -0.75, what training feeds G; "
                        "the default) or matlab (imresize, a = -0.5, how the paper's test inputs and its "
                        "'bicubic' row were made) (default: %(default)s)")


def test_parser(task: Task) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"{task.name}/test.py",
        description=f"Restore images with an SOT {task.title} checkpoint (ours or the authors') and, given "
                    "ground truth, report PSNR, SSIM and LPIPS per image and on average (also in metrics.csv).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  python {task.name}/test.py --demo\n"
               f"  python {task.name}/test.py --checkpoint CKPT --input DEGRADED/ --gt CLEAN/ --save results/\n"
               f"  python {task.name}/test.py --checkpoint CKPT --input MY_PHOTOS/\n"
               f"  python {task.name}/test.py --checkpoint CKPT --export-onnx G.onnx")
    p.add_argument("--checkpoint", "--model", default=None, metavar="CKPT", help="checkpoint file to test")
    p.add_argument("--input", default=None, metavar="DIR", help="folder of degraded images"
                   + (" (low-resolution; upsampled x4 bicubic before G)" if task.scale > 1 else
                      ", or a test set's folder in one of the known layouts (see the README)"))
    p.add_argument("--gt", default=None, metavar="DIR",
                   help="ground-truth folder with the same file names; without it only restored images are written")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="where restored PNGs and metrics.csv go (default: results/<task>/<checkpoint>, or "
                        "<that>-2, -3, ... where earlier results are); never the --input or --gt folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier results in the results folder that have the names this run writes "
                        "(default: refused with --save; without it, a new numbered folder is used); with "
                        "--export-onnx, the file of that name")
    p.add_argument("--any-task", action="store_true",
                   help=f"test a checkpoint trained for another task with {task.name}'s conventions (default: "
                        "refused, naming the checkpoint's task)")
    if task.scale > 1:
        add_upsampling_flags(p)
    p.add_argument("--y-channel", action="store_true",
                   help="PSNR/SSIM on the BT.601 Y channel (Y = 16 + 65.481 R + 128.553 G + 24.966 B) instead of RGB")
    p.add_argument("--transpose", action="store_true",
                   help="swap height and width around G: for models trained on MATLAB-layout .h5 files "
                        "read without --layout matlab (the authors' deraining models)")
    p.add_argument("--tile", type=tile_side, default=None, metavar="N",
                   help=f"restore in N x N tiles (N at least {MIN_TILE}), for images that do not fit in memory "
                        "(on CUDA, an out-of-memory error falls back to tiles by itself)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=TILE_CONTEXT, metavar="M",
                   help="context pixels around each tile; less than the default lets tile borders show "
                        "(default: %(default)s)")
    p.add_argument("--reference-metrics", action="store_true",
                   help=f"measure as the authors' test scripts: inputs cropped to a multiple of {task.reference_crop} "
                        "pixels and PSNR on the unclamped float output (default: no crop, every metric on the "
                        "8-bit image written); see docs/FIDELITY.md")
    p.add_argument("--side-by-side", type=non_negative_int, default=0, metavar="N",
                   help="also write side_by_side.png: input | restored | ground truth for the first N images "
                        "(--demo: all of them)")
    p.add_argument("--clean", default=None, metavar="DIR",
                   help="clean images, unpaired and ideally not trained on, that the no-reference score compares the "
                        "restored images with, to say without ground truth whether the model helped and on which "
                        "images (default: the clean side of the checkpoint's training set, where its files are still "
                        "where the checkpoint says; see docs/TESTING.md)")
    p.add_argument("--no-score", action="store_true", help="skip the no-reference score")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.html (a page to open in a browser, offline: the metrics per image, "
                        "sortable, and a slider between input, restored and ground truth; its pictures in "
                        "report_files/)")
    p.add_argument("--out", default="checkpoints", metavar="DIR", help="with --demo: where the demo runs are")
    p.add_argument("--demo", action="store_true",
                   help="test the newest demo checkpoint on the demo's held-out photographs (not its "
                        "validation ones, which chose the checkpoint)")
    p.add_argument("--export-onnx", default=None, metavar="FILE.onnx",
                   help="write the checkpoint's generator as ONNX instead (onnxruntime, OpenCV's dnn, chaiNNer: "
                        "any batch, height and width; RGB in [0, 1] in and out"
                        + (f"; it upsamples the low-resolution input x{task.scale} itself unless --prescaled"
                           if task.scale > 1 else "")
                        + "), checked against PyTorch with onnxruntime first; see docs/TESTING.md")
    common_flags(p)
    return p


def default_save_dir(task: Task, checkpoint: Path) -> Path:
    parent = checkpoint.parent
    name = f"{parent.parent.name}_{parent.name}_{checkpoint.stem}" if parent.name.startswith("sigma-") else checkpoint.stem
    return Path("results") / task.name / name


def check_task(ckpt: dict, task: Task, checkpoint: Path, any_task: bool) -> None:
    """A checkpoint records the task it was trained for; another task's test.py would feed it inputs
    prepared another way (an SR model expects bicubic-upsampled inputs) and score it misleadingly."""
    if ckpt.get("format") == "authors":
        note_authors_task(ckpt, task, checkpoint)
        return
    trained = trained_task(ckpt)
    if not isinstance(trained, str) or trained == task.name:
        return
    what = f"trained for {TASKS[trained].title if trained in TASKS else repr(trained)}"
    if not any_task:
        hint = f"test it with python {trained}/test.py, or " if trained in TASKS else ""
        raise InputError(f"{checkpoint}: {what}, not for {task.title}; {hint}give --any-task to test it "
                         f"here with {task.name}'s conventions anyway")
    note(f"{checkpoint}: {what}; tested as {task.title} as --any-task asks")


def note_authors_task(ckpt: dict, task: Task, checkpoint: Path) -> None:
    """The authors' files record no task, but their critic's hidden layer is 64 wide in their deraining
    models and 640 in their SR and dehazing ones (docs/METHOD.md, "Critic"): a file whose critic is not
    this task's width was trained for another task, most likely, and is tested here with a note."""
    hidden = ((ckpt.get("arch") or {}).get("critic") or {}).get("hidden")
    if hidden is None or hidden == task.critic_hidden:  # no critic in the file, or this task's: nothing to tell
        return
    others = [t for t in TASKS.values() if t.critic_hidden == hidden]
    whose = f"that of their {' and '.join(t.title for t in others)} models, not" if others else "not that"
    note(f"{checkpoint}: the authors' files record no task, but this one's critic (a {hidden}-wide hidden layer) is "
         f"{whose} of their {task.title} ones ({task.critic_hidden}): tested as {task.title} all the same"
         + (f"; {' or '.join(f'{t.name}/test.py' for t in others)} would test it as trained" if others else ""))


def check_roles(args, pairs: list, save_dir: Path) -> None:
    """--input, --gt and --save must each name a place of their own: restored images written into the
    input or ground-truth folder would replace the user's images (or be scored against themselves)."""
    check_scored_apart(args.input, args.gt, pairs)
    folders: dict[Path, str] = {}
    for pair in pairs:
        folders.setdefault(pair.input.parent, "input images")
        if pair.gt is not None:
            folders.setdefault(pair.gt.parent, "ground-truth images")
    for folder, role in folders.items():
        if same_file(save_dir, folder):
            raise InputError(f"--save {save_dir} is the folder of the {role} ({folder}): the restored images would be "
                             "written among them, and over those of the same names; give a results folder of its own")
    # inside it (its report_files/, say), or reached from it through links: a run writing there, or
    # replacing earlier results there with --overwrite, would replace them
    results = os.path.realpath(save_dir)
    for pair in pairs:
        for path, role in ((pair.input, "input images"), (pair.gt, "ground-truth images")):
            if path is not None and _within(os.path.realpath(path), results):
                how = "" if _within(os.path.abspath(path), os.path.abspath(save_dir)) else " (through a link)"
                raise InputError(f"{path.parent}: the {role} are inside the results folder --save {save_dir}{how}, "
                                 "where this run writes and replaces earlier results; give a results folder outside "
                                 "them")


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


FOLDER_OUTPUTS = {REPORT_FOLDER}  # the results that are folders; every other one is a file


def planned_outputs(pairs: list, side_by_side: bool, report: bool = False, scored: bool = False) -> dict[str, str]:
    """The files a run writes into its results folder, each with what it is; two results may never
    share a name (on a file system that ignores case, not even names that differ only by case).
    ``scored``: the no-reference score is measured (metrics.csv is written without ground truth too)."""
    outputs = {"metrics.csv": "the metrics"} if scored or any(p.gt is not None for p in pairs) else {}
    if side_by_side:
        outputs["side_by_side.png"] = "the side-by-side picture"
    if report:
        outputs.update({"report.html": "the report", REPORT_FOLDER: "the report's pictures (a folder)"})
    for pair in pairs:
        name = f"{pair.name}.png"
        if name in outputs:
            raise InputError(f"{pair.input}: its restored image would be written as {name}, the name of "
                             f"{outputs[name]}; rename the image"
                             + (" or leave out --side-by-side" if name == "side_by_side.png" else ""))
        outputs[name] = f"the restored {pair.input}"
    return outputs


def _check_names(outputs: dict[str, str], folder: Path) -> None:
    """Every result's name fits the results folder's file system, and no two land on one file there
    (names that differ only by case, where it ignores case)."""
    longest = name_max(folder)
    for name in outputs:
        if len(os.fsencode(name)) > longest:
            raise InputError(f"{folder}: {outputs[name]} would be written as {name}, a name of "
                             f"{len(os.fsencode(name))} bytes; its file system takes at most {longest}: rename the image")
    by_fold: dict[str, str] = {}
    clashes = []
    for name in outputs:
        if name.casefold() in by_fold:
            clashes.append((by_fold[name.casefold()], name))
        by_fold.setdefault(name.casefold(), name)
    if not clashes:
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with probe_file(existing, "Case-Test") as probe:
            folds = same_file(probe, probe.with_name(probe.name.lower()))
    except OSError:
        folds = True  # cannot tell: assume the worst
    if folds:
        a, b = clashes[0]
        raise InputError(f"{folder}: its file system ignores case, so {outputs[a]} and {outputs[b]} would both be "
                         f"written as {a}; rename one of them")


def earlier_results(folder: Path, outputs: dict[str, str]) -> list[str]:
    """The files of ``outputs`` that ``folder`` already holds (links included)."""
    return [name for name in outputs if os.path.lexists(folder / name)] if folder.is_dir() else []


def why_not_replace(path: Path, outputs: dict[str, str]) -> str | None:
    """Why this run may not replace ``path``, an earlier result in its results folder, with its own of
    that name; None where it may. Each result replaces an entry of its own kind only: a file a file,
    and the report's folder of pictures a folder that holds nothing but pictures named as the report
    names them (the folder is replaced whole)."""
    name = path.name
    is_folder = path.is_dir() and not path.is_symlink()
    if is_folder != (name in FOLDER_OUTPUTS):
        return f"is a {'folder' if is_folder else 'file'}, where this run would write {outputs[name]}"
    if is_folder:
        try:
            foreign = sorted(e.name for e in os.scandir(path)
                             if not (ASSET_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)))
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if foreign:
            return (f"holds {foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                    + ", which test.py's report did not write; this run would replace the folder whole: move "
                    "them, or give another --save")
    return None


def check_no_earlier_report(folder: Path, outputs: dict[str, str]) -> None:
    """--overwrite --no-report: an earlier report left beside the results this run replaces would
    describe the earlier run. It is refused rather than removed: --no-report asks that no report.html
    be written, and a file of that name in a folder of the user's may be the user's own."""
    for name in ("report.html", REPORT_FOLDER):
        if name not in outputs and os.path.lexists(folder / name):
            raise InputError(f"{folder / name}: an earlier run's report, which would describe the results this run "
                             "replaces (--overwrite), not this run's (--no-report writes none); remove it, or leave "
                             "out --no-report to replace it with this run's")


def replaceable(path: Path, outputs: dict[str, str], overwrite: bool) -> str | None:
    """At the commit: why ``path``, found where a result goes, may not be replaced (None: it may)."""
    if not overwrite:  # the folder held none of this run's names when it was chosen
        return "appeared while this run was writing; give --overwrite to replace it"
    return why_not_replace(path, outputs)


def lock_save_dir(base: Path, explicit: bool, overwrite: bool, outputs: dict[str, str]) -> FolderLock:
    """The results folder, made where missing and locked for this run (held on return): ``base``
    given as --save (``explicit``; refused where another run is writing into it, or where it holds
    files this run would replace, unless ``overwrite``), or the default one, numbered -2, -3, ...
    past folders that hold earlier results or that another run is writing into. Chosen under the
    lock, so that two runs started together never write into one folder."""
    _check_names(outputs, base)
    k, skipped = 1, None
    while True:
        folder = base if k == 1 else base.with_name(f"{base.name}-{k}")
        lock = FolderLock(folder)
        if not lock.try_acquire():
            if explicit:
                raise InputError(f"{folder}: another run is writing its results into this folder; wait for it to "
                                 "finish, or give another --save")
            skipped = skipped or "another run is writing its results there"
            k += 1
            continue
        try:
            earlier = earlier_results(folder, outputs)
            if earlier and (explicit or overwrite):
                for name in earlier:
                    why = why_not_replace(folder / name, outputs)
                    if why:
                        raise InputError(f"{folder / name}: {why}")
            if earlier and overwrite:
                check_no_earlier_report(folder, outputs)
            shown = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
            if earlier and explicit and not overwrite:
                raise InputError(f"{folder}: holds earlier results that this run would replace ({shown}); give "
                                 "another --save, or --overwrite to replace them")
        except BaseException:
            lock.release()
            raise
        if earlier and not overwrite:
            lock.release()
            skipped = skipped or "holds earlier results"
            k += 1
            continue
        if earlier:
            note(f"{folder}: replacing {len(earlier)} earlier result(s) ({shown}) as --overwrite asks")
        if skipped:
            note(f"{base} {skipped}; writing to {folder}" + (" (--overwrite replaces them instead)"
                                                             if skipped == "holds earlier results" else ""))
        return lock


def clean_reference(args, ckpt: dict, checkpoint: Path, task: Task, pairs: list) -> CleanReference | None:
    """What the no-reference score compares the restored images with: --clean, else the clean side of the
    training set the checkpoint records, where its files still are; None (with a note where there is no
    ground truth either) where there is neither, or with --no-score."""
    if args.no_score:
        return None
    if args.clean:
        return reference_from_folder(args.clean, "--clean", ((args.input, "--input"), (args.gt, "--gt")))
    config = ckpt.get("config") or {}
    trainset = config.get("trainset")
    try:
        if isinstance(trainset, str) and Path(trainset).is_dir():
            layout = config.get("layout") if config.get("layout") in LAYOUT_CHOICES else "auto"
            return reference_from_training_data(UnpairedH5Dataset(trainset, scale=task.scale, layout=layout))
    except InputError as exc:
        note(f"no no-reference score: the checkpoint's training set cannot be read ({exc}); give --clean DIR")
        return None
    if all(p.gt is None for p in pairs):
        where = f"not where the checkpoint says ({trainset})" if isinstance(trainset, str) else "not recorded in it"
        note(f"{checkpoint}: its training set is {where}, so nothing here says whether the model helped: give "
             "--clean DIR, clean photographs (unpaired, ideally not trained on), for the no-reference score")
    return None


def report_facts(checkpoint: Path, ckpt: dict, args, device, precision: str, n: int,
                 reference: CleanReference | None = None) -> list:
    """The report's header: what was tested, on what, where and when."""
    config = ckpt.get("config") or {}
    arch = (ckpt.get("arch") or {}).get("generator") or {}
    if ckpt.get("format") == "authors":
        model = f"the authors' checkpoint (epoch {ckpt.get('epoch')})"
    else:
        model = (f"{ckpt.get('task', '?')}, cost {ckpt.get('loss', '?')}, sigma {ckpt.get('sigma', '?')}, "
                 f"step {ckpt.get('step', '?')}" + (", the weights' moving average" if ckpt.get("generator_ema") else ""))
    widths = (f"generator {arch.get('width', '?')}/{arch.get('increment', '?')}, critic {config.get('critic_width', '?')}"
              if arch else "as in its weights")
    data = f"{n} image(s) from {args.input}" + (f", ground truth {args.gt}" if args.gt else "")
    facts = [("checkpoint", str(checkpoint)), ("model", model), ("network widths", widths), ("data", data),
             ("device", f"{device} ({precision})"), ("metrics", "RGB" if not args.y_channel else "BT.601 Y")]
    if reference is not None:
        facts.append(("no-reference score", f"against {reference.source}; lower is closer to clean; "
                                            + score_reliability(reference, trained_task(ckpt))))
    return facts + [("date", time.strftime("%Y-%m-%d %H:%M:%S"))]


# What --export-onnx reads of the flags, and the values it takes of the others it reads: any other flag
# given is refused rather than ignored
EXPORT_FLAGS = {"checkpoint", "export_onnx", "overwrite", "any_task", "prescaled", "align_corners", "transpose",
                "demo", "out", "debug", "help"}
EXPORT_VALUES = {
    "upscale": ("pytorch", "the ONNX file upsamples with PyTorch's bicubic kernel, which ONNX's Resize computes; "
                           "give --prescaled and upsample the inputs with MATLAB's imresize before the file"),
    "precision": ("fp32", "the ONNX file computes in float32"),
    "device": ("cpu", "the export runs on the CPU (onnxruntime runs the file on the devices it has)"),
}


def check_export_flags(parser: argparse.ArgumentParser, args) -> None:
    """Refuse, naming it, a flag --export-onnx would not use."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in EXPORT_FLAGS or value == action.default:
            continue
        allowed, why = EXPORT_VALUES.get(action.dest, (None, "--export-onnx writes the file and restores no image; "
                                                             "leave it out"))
        if value != allowed:
            shown = "" if isinstance(value, bool) else f" {value}"
            raise InputError(f"{action.option_strings[0]}{shown}: {why}")


def export(task: Task, args, parser: argparse.ArgumentParser) -> None:
    """--export-onnx: the checkpoint's generator as an ONNX file (common.evaluation.onnx_export)."""
    check_export_flags(parser, args)
    if args.demo:
        args.checkpoint = args.checkpoint or str(newest_demo_checkpoint(Path(args.out), task))
    if not args.checkpoint:
        raise InputError("give --checkpoint (or --demo): the checkpoint whose generator --export-onnx writes")
    checkpoint, path = Path(args.checkpoint), Path(args.export_onnx)
    check_export_path(path, args.overwrite, checkpoint)
    ckpt = read_checkpoint(checkpoint)
    check_task(ckpt, task, checkpoint, args.any_task)
    generator = build_generator(ckpt, checkpoint).eval()
    model = ExportedGenerator(generator, task, upsample=task.scale > 1 and not getattr(args, "prescaled", False),
                              align_corners=align_corners_of(args, ckpt), transpose=args.transpose)
    started = time.monotonic()
    check = export_onnx(model, path, args.overwrite)
    sizes = " and ".join(f"{n} x {w}x{h}" if n > 1 else f"{w}x{h}" for n, h, w in check.sizes)
    print(f"wrote {printable(path)} ({human_bytes(path.stat().st_size)}, {time.monotonic() - started:.0f} s): the "
          f"generator of {printable(checkpoint)} as ONNX, checked against PyTorch with {check.runtime} on {sizes} "
          f"inputs: largest difference {check.max_difference:.1e} (float32 round-off)")
    for line in describe(model):
        print(f"  {line}")


def _test(task: Task, argv: list[str]) -> None:
    parser = test_parser(task)
    args = parser.parse_args(argv)
    if args.export_onnx:
        return export(task, args, parser)
    if args.demo:
        args.checkpoint = args.checkpoint or str(newest_demo_checkpoint(Path(args.out), task))
        paths = demo_paths(demo_root(args.out, task))
        # the wider held-out photographs: never trained on, never used to choose best.pt
        args.input, args.gt = args.input or str(paths["wider_input"]), args.gt or str(paths["wider_gt"])
    if not args.checkpoint or not args.input:
        raise InputError("give --checkpoint and --input (or --demo)")
    expose_gpus(args.gpus)
    if args.tile_overlap < TILE_CONTEXT:
        note(f"--tile-overlap {args.tile_overlap}: tiles see less of their surroundings than the {TILE_CONTEXT} pixels "
             "that keep them seamless; where the image is restored in tiles, their borders may show")
    if args.tile:  # --tile 64 took 20 times as long as no tiles, without a word
        note(f"--tile {args.tile}: each tile is restored with {args.tile_overlap} pixels of context on every side, twice "
             "(a first pass gathers the channel attention's image-wide statistics): up to "
             f"{tiled_work(args.tile, args.tile_overlap):.1f}x the work of restoring an image whole; without --tile, "
             "an image is restored in tiles only where it does not fit in memory")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    checkpoint = Path(args.checkpoint)
    ckpt = read_checkpoint(checkpoint)
    check_task(ckpt, task, checkpoint, args.any_task)
    generator = build_generator(ckpt, checkpoint, device=device).to(device).eval()
    pairs = find_pairs(args.input, args.gt, verbose=True)
    reference = clean_reference(args, ckpt, checkpoint, task, pairs)
    keep = len(pairs) if args.demo else args.side_by_side
    outputs = planned_outputs(pairs, side_by_side=keep > 0, report=not args.no_report, scored=reference is not None)
    save_dir = Path(args.save) if args.save else default_save_dir(task, checkpoint)
    check_roles(args, pairs, save_dir)
    check_can_write(save_dir, "results folder")  # a file there or a read-only mount: refused before any work
    prescaled = getattr(args, "prescaled", False)
    with lock_save_dir(save_dir, args.save is not None, args.overwrite, outputs) as results:
        if results.folder != save_dir:  # the numbered folder chosen instead
            save_dir = results.folder
            check_roles(args, pairs, save_dir)
        # Everything that could stop the run part-way is checked now; the results are then written into a
        # staging folder and moved into place only once every image is done: a run that fails or is
        # stopped leaves the results folder as it was.
        check_before_writing(generator, pairs, task, device, prescaled=prescaled,
                             reference_metrics=args.reference_metrics, tile_overlap=args.tile_overlap)
        lpips = None if args.no_lpips or all(p.gt is None for p in pairs) else LPIPS(str(device))
        print(f"{printable(checkpoint)} ({ckpt['format']}) on {len(pairs)} image(s) from {printable(args.input)}; "
              f"device {device} ({precision})")
        with StagedFolder(results, lambda path: replaceable(path, outputs, args.overwrite)) as staged:
            report = None if args.no_report else ResultsReport(staged.path, f"{task.title}: {checkpoint}")
            ev = evaluate(generator, pairs, task, device, align_corners=align_corners_of(args, ckpt),
                          prescaled=prescaled, save_dir=staged.path, lpips=lpips, y_channel=args.y_channel,
                          precision=precision, transpose=args.transpose, tile=args.tile,
                          tile_overlap=args.tile_overlap, upscale=getattr(args, "upscale", "pytorch"),
                          reference_metrics=args.reference_metrics, keep=keep,
                          on_image=report.add if report is not None else None, model=str(checkpoint),
                          reference=reference)
            if report is not None:
                report.write(report_facts(checkpoint, ckpt, args, device, precision, len(pairs), reference), ev.means)
            if ev.examples:
                write_side_by_side(staged.path / "side_by_side.png", ev, task)
            staged.commit()
    print_results(ev, pairs, task, save_dir, report=not args.no_report, reference=reference)


def align_corners_of(args, ckpt: dict) -> bool:
    """--align-corners where given (SR), else as the checkpoint was trained."""
    align_corners = getattr(args, "align_corners", None)
    return trained_align_corners(ckpt) if align_corners is None else align_corners


def write_side_by_side(path: Path, ev, task: Task) -> None:
    """side_by_side.png: input | restored | clean, a row per image kept, each with its PSNR."""
    side_by_side(path, [
        [(f"{task.input_label}" + (f" {row['input_psnr']:.2f} dB" if row.get("input_psnr") else ""), x),
         ("restored" + (f" {row['psnr']:.2f} dB" if row.get("psnr") else ""), restored)]
        + ([("clean", gt)] if gt is not None else [])
        for row, (_, x, restored, gt) in zip(ev.rows, ev.examples)])


def print_results(ev, pairs: list, task: Task, save_dir: Path, report: bool,
                  reference: CleanReference | None = None) -> None:
    """The metrics per image and on average, and where the results went."""
    for row in ev.rows:
        print(format_row(row, task.input_label))
    with_gt = any(p.gt is not None for p in pairs)
    if with_gt or reference is not None:
        print(format_row({"name": "mean", **ev.means}, task.input_label))
    if with_gt:
        print(gain_summary(ev, task.input_label))
    if reference is not None:
        print(score_summary(ev, task.input_label))
        print(f"  (against {printable(reference.source)}; {score_reliability(reference, task.name)})")
    if with_gt or reference is not None:
        print(f"restored images and metrics.csv in {printable(save_dir)}")
    else:
        print(f"restored images in {printable(save_dir)}")
    if ev.examples:
        columns = f"{task.input_label} | restored" + (" | clean" if any(gt is not None for *_, gt in ev.examples) else "")
        print(f"side by side ({columns}): {printable(save_dir / 'side_by_side.png')}")
    if report:
        print(f"report (open it in a browser): {printable(save_dir / 'report.html')}")


def test_main(task_name: str, argv: list[str] | None = None) -> None:
    run_guarded(lambda a: _test(TASKS[task_name], a), argv, writes_files=True)
