"""A training run's configuration: one frozen, typed :class:`RunConfig`, the command line built from
it, and what a resume takes back from a run's ``run.json``.

Each field of :class:`RunConfig` carries its flag, its help, its group in ``--help`` and whether it
*defines* the run: a resume may not change a defining field (the sigmas, the cost, the seed, the
batch, the networks, the data...), and may change the others (``--max-steps``, the device...).
The fields hold what the user asked for (``--precision auto``, ``--seed`` not given); what the
machine made of it (bf16, a drawn seed, four loader workers) is :class:`Resolved`, and ``run.json``
keeps the two apart, so that a run started on a GPU and resumed on a CPU resolves again there.

The reference's flag spellings are kept (``--nEpochs``, ``--batchSize``, ``--lr``, ``--step``,
``--sigma``, ``--trainset``, ``--resume``, ``--pretrained``, ``--threads``); the fields have names
that say what they hold (``epochs``, ``batch_size``, ``lr_step_epochs``, ``loader_workers``).
Code that trains builds a :class:`RunConfig` (``RunConfig.for_task``) and calls
``common.training.loop.train`` with it; argv is only the command line's business.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .. import __version__
from ..cli.flags import (SHARED_FLAGS, decay, finite_non_negative_float, finite_positive_float, non_negative_int,
                         positive_int, run_name, seed_int, sigma_list)
from ..networks import CHANNEL_REDUCTION, CRITIC_INITS, PAPER_WIDTHS
from ..sot import TRANSPORT_COSTS
from ..system.errors import InputError
from ..system.files import same_file
from ..system.text import note, printable
from ..tasks import TASKS, Task
from .checkpoint import read_checkpoint
from .run_folder import read_json, sigma_dir_name

SELECTIONS = ("psnr", "no-reference")  # --select-by: what keeps best.pt
RUN_FORMAT = "sot-run"
RUN_VERSION = 2  # run.json: {"config": what was asked, "resolved": what the machine made of it}

GROUPS = {  # --help's groups, in order
    "data": "training data",
    "method": "the method",
    "schedule": "schedule (the reference's --nEpochs, --batchSize, --lr, --step)",
    "networks": "networks",
    "recipe": "short-run recipe: not in the paper, each off by default (see common/recipe.py)",
    "validation": "validation",
    "output": "checkpoints and logs",
    "machine": "machine",
}


def option(default, *flags: str, group: str, help: str, defines: bool = False, sr_only: bool = False, **argparse_kw):
    """A :class:`RunConfig` field: its default, its command-line flags and what argparse needs."""
    return field(default=default, metadata=dict(flags=flags, group=group, help=help, defines=defines,
                                                sr_only=sr_only, argparse=argparse_kw))


def shared_option(name: str):
    """A field for one of the flags every script shares (``common.cli.flags.SHARED_FLAGS``): the command
    line adds the flag itself (``common_flags``); the field takes its default and choices from there."""
    flags, keywords = SHARED_FLAGS[name]
    rules = {"choices": keywords["choices"]} if "choices" in keywords else {}
    return option(keywords["default"], group="machine", help=flags[0], **rules)


TASK_DEFAULT = None  # for fields whose default is the task's (filled by RunConfig.for_task)


def generator_width(token: str) -> int:
    """``--gen-width``: the narrowest generator that runs has as many channels as its attention's reduction."""
    value = positive_int(token)
    if value < CHANNEL_REDUCTION:
        raise argparse.ArgumentTypeError(f"must be at least {CHANNEL_REDUCTION}, got {value}: the generator's channel "
                                         f"attention squeezes its width by {CHANNEL_REDUCTION}, and a narrower one "
                                         "would keep no channel")
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run (a sweep over sigmas) was asked for."""

    # training data
    trainset: str = option("./data/", "--trainset", group="data", defines=True, metavar="DIR",
                           help="folder of .h5 files with 'data' (degraded) and 'label' (clean) patches "
                                "(default: %(default)s)")
    layout: str = option("auto", "--layout", group="data", defines=True, choices=("auto", "ours", "matlab"),
                         help="patch layout of the .h5 files: ours (N x C x H x W), matlab (N x C x W x H), or auto "
                              "(the files' 'layout' attribute, else ours)")
    align_corners: bool = option(False, "--align-corners", group="data", defines=True, sr_only=True,
                                 action="store_true",
                                 help="upsample inputs with align_corners=True, as the reference trained")
    # the method
    cost: str = option(TASK_DEFAULT, "--loss", "--cost", group="method", defines=True, choices=TRANSPORT_COSTS,
                       help="transport cost: l0.5 or l1 of the residual's spectrum, or the plain OT pixel L2 "
                            "(default: %(default)s)")
    sigma: tuple = option(TASK_DEFAULT, "--sigma", group="method", defines=True, type=sigma_list, nargs="+",
                          metavar="S", help="transport weights, one model each: '--sigma {sigmas}' or "
                                            "'--sigma=[{commas}]' (default: {sigmas})")
    supervised: bool = option(False, "--supervised", group="method", defines=True, action="store_true",
                              help="the supervised upper bound: paired files ('data'[i] degraded from 'label'[i]), "
                                   "an L1 loss to the true clean patch, no critic; --sigma is ignored")
    seed: int | None = option(None, "--seed", group="method", defines=True, type=seed_int,
                              help="base random seed; sigma i uses SEED + i (default: a fresh one, recorded in "
                                   "run.json and config.json)")
    # schedule
    epochs: int = option(200, "--nEpochs", "--epochs", group="schedule", type=positive_int,
                         help="epochs per sigma (default: %(default)s)")
    batch_size: int = option(TASK_DEFAULT, "--batchSize", "--batch-size", group="schedule", defines=True,
                             type=positive_int, metavar="N", help="patches per step, over all processes (default: %(default)s)")
    lr: float = option(1e-4, "--lr", group="schedule", defines=True, type=finite_positive_float,
                       help="critic learning rate; G gets half (default: %(default)s)")
    lr_step_epochs: int = option(50, "--step", "--lr-step-epochs", group="schedule", defines=True,
                                 type=positive_int, metavar="EPOCHS",
                                 help="divide the learning rate by 10 every EPOCHS epochs (default: %(default)s)")
    max_steps: int | None = option(None, "--max-steps", group="schedule", type=positive_int, metavar="N",
                                   help="stop each sigma's run after N steps, whatever --nEpochs says")
    # networks
    gen_width: int = option(PAPER_WIDTHS.generator, "--gen-width", group="networks", defines=True, type=generator_width, metavar="N",
                            help="generator width (the paper's: %(default)s); smaller for quick experiments and tests")
    gen_increment: int = option(PAPER_WIDTHS.increment, "--gen-increment", group="networks", defines=True, type=positive_int,
                                metavar="N", help="generator U-Net width increment per level (the paper's: "
                                                  "%(default)s)")
    critic_width: int = option(PAPER_WIDTHS.critic, "--critic-width", group="networks", defines=True, type=positive_int,
                               metavar="N", help="critic base width (the paper's: %(default)s)")
    pretrained: str = option("", "--pretrained", group="networks", defines=True, metavar="CKPT",
                             help="start from the weights of a checkpoint (ours or the authors')")
    # the short-run recipe (common.recipe)
    generator_init: str = option("reference", "--init", group="recipe", defines=True,
                                 choices=("reference", "identity"),
                                 help="generator start: PyTorch's default initialisation as in the reference, or "
                                      "identity (zeroed residual head: G(x) = x at step 0, steadier for short runs) "
                                      "(default: %(default)s)")
    critic_init: str = option("reference", "--critic-init", group="recipe", defines=True, choices=CRITIC_INITS,
                              help="critic start: reference (N(0, 0.02), as the authors) or kaiming (He "
                                   "initialisation: the critic tells the sides apart from its first steps instead "
                                   "of after a few hundred) (default: %(default)s)")
    critic_warmup_steps: int = option(0, "--critic-warmup", group="recipe", defines=True, type=non_negative_int,
                                      metavar="N", help="train only the critic for the first N steps, so that G "
                                                        "starts by following a critic that already tells the sides "
                                                        "apart (default: %(default)s)")
    dc_weight: float = option(0.0, "--dc-weight", group="recipe", defines=True, type=finite_non_negative_float,
                              metavar="W", help="also charge the residual's mean (its zero frequency, which the "
                                                "spectral costs barely see) with weight W: against colour drift "
                                                "(default: %(default)s)")
    ema_decay: float = option(0.0, "--ema", group="recipe", defines=True, type=decay, metavar="DECAY",
                              help="also keep a moving average of the generator's weights, avg <- DECAY avg + "
                                   "(1 - DECAY) G after each step (e.g. 0.995), and validate, keep and test that "
                                   "average: steadier outputs where GAN training swings (default: off)")
    null_space: bool = option(False, "--null-space", group="recipe", defines=True, sr_only=True,
                              action=argparse.BooleanOptionalAction,
                              help="let G add only detail the low-resolution input does not fix: its residual loses "
                                   "what an x4 bicubic downsampler keeps of it, so colours and shading stay the "
                                   "input's (the critic cannot pull them away); part of the model, test.py applies "
                                   "it too (default: off; the demo's: on)")
    # validation
    val_input: str | None = option(None, "--val-input", group="validation", metavar="DIR",
                                   help="validation inputs (degraded images), or a test set's folder in a layout "
                                        "test.py knows")
    val_gt: str | None = option(None, "--val-gt", group="validation", metavar="DIR",
                                help="validation ground truth, paired by file name; without it, validation measures "
                                     "the no-reference score only (see --select-by)")
    val_clean: str | None = option(None, "--val-clean", group="validation", metavar="DIR",
                                   help="clean images the model is NOT trained on, unpaired, that the no-reference "
                                        "score compares the restored validation images with (default: the clean side "
                                        "of the training set, against which the score prefers over-restored "
                                        "checkpoints: a model trained to imitate those images keeps looking closer to "
                                        "them; docs/TRAINING.md, \"Choosing without ground truth\")")
    select_by: str | None = option(None, "--select-by", group="validation", choices=SELECTIONS,
                                   help="what keeps best.pt: validation PSNR (needs --val-gt) or the no-reference "
                                        "score, lower is closer to clean (default: psnr with --val-gt, no-reference "
                                        "without); both are logged whenever they can be measured")
    val_every_epochs: int = option(10, "--val-every", group="validation", type=positive_int, metavar="EPOCHS",
                                   help="validate every EPOCHS epochs and at the end; the best checkpoint (see "
                                        "--select-by) is kept as best.pt (default: %(default)s)")
    val_every_steps: int = option(0, "--val-steps", group="validation", type=non_negative_int, metavar="N",
                                  help="also validate every N steps (0: only every --val-every epochs)")
    # checkpoints and logs
    out: str = option("checkpoints", "--out", group="output", metavar="DIR",
                      help="runs go to DIR/<task>/<name>/sigma-<s>/ (default: %(default)s)")
    name: str | None = option(None, "--name", group="output", type=run_name,
                              help="run name (default: <loss>-<date>-<time>)")
    save_every_steps: int = option(1000, "--save-every", group="output", type=non_negative_int, metavar="N",
                                   help="also checkpoint every N steps, keeping the newest (see --keep-steps; 0: only "
                                        "each epoch) (default: %(default)s)")
    keep_step_checkpoints: int = option(2, "--keep-steps", group="output", type=non_negative_int, metavar="N",
                                        help="how many of the newest step checkpoints to keep (0: every one, to choose "
                                             "among them later) (default: %(default)s)")
    log_every_steps: int = option(10, "--log-every", group="output", type=positive_int, metavar="N",
                                  help="log every N steps (default: %(default)s)")
    tensorboard: bool = option(True, "--no-tensorboard", group="output", action="store_false",
                               help="do not write TensorBoard logs")
    max_nonfinite: int = option(5, "--max-nonfinite", group="output", type=positive_int, metavar="N",
                                help="stop after N steps in a row with a non-finite loss or gradient (each is "
                                     "skipped) (default: %(default)s)")
    # machine (--device, --gpus, --precision: shared_option)
    loader_workers: int | None = option(None, "--threads", group="machine", type=non_negative_int, metavar="N",
                                        help="data-loader worker processes (default: 4 on CUDA, 0 on the CPU)")
    cuda_graphs: str = option("auto", "--cuda-graphs", group="machine", choices=("auto", "on", "off"),
                              help="capture the training iteration as a CUDA graph and replay it (one process on "
                                   "CUDA; not for --supervised); auto is off until a GPU measurement shows it faster "
                                   "and equal (default: %(default)s)")
    deterministic: bool = option(False, "--deterministic", group="machine", action="store_true",
                                 help="bit-for-bit repeatable runs (deterministic kernels, no cuDNN autotuning; "
                                      "slower on CUDA)")
    # the flags every script shares (common.cli.flags.SHARED_FLAGS), which add them; their rules are the same
    device: str = shared_option("device")
    gpus: str | None = shared_option("gpus")
    precision: str = shared_option("precision")

    @classmethod
    def for_task(cls, task: Task, **values) -> "RunConfig":
        """The task's defaults (its sigmas, batch size and cost) with ``values`` on top."""
        config = cls(**{**task_defaults(task), **values})
        return config.checked(task)

    def checked(self, task: Task) -> "RunConfig":
        """This configuration with every field held to its flag's rules (:func:`field_value`), refused
        where the task cannot take it (SR-only settings elsewhere). Every configuration passes here:
        the command line's, run.json's (:func:`read_run`) and a resume's (:func:`plan_resume`)."""
        config = replace(self, **{f.name: field_value(f.name, getattr(self, f.name)) for f in fields(self)})
        if task.scale == 1:
            for f in fields(config):
                if f.metadata.get("sr_only") and getattr(config, f.name) != f.default:
                    raise InputError(f"{flag_of(f.name)}: only super-resolution takes it, not {task.title}")
        return config

    def defining(self) -> dict:
        """The fields that define the run, with their values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("defines")}


class FieldError(InputError):
    """A value that a :class:`RunConfig` field cannot hold: its name, the value and what is wrong."""

    def __init__(self, name: str, value, problem: str):
        self.name, self.value, self.problem = name, value, problem
        super().__init__(f"{flag_of(name)} {shown(value)}: {problem}")


def shown(value, limit: int = 60) -> str:
    """A value as JSON writes it (text in quotes, ``null``, ``NaN``), cut short: a field's value in a message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON: a value given in code
        text = repr(value)
    return printable(text if len(text) <= limit else text[:limit] + "...")


_HINTS = typing.get_type_hints(RunConfig)
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", tuple: "a list of numbers"}


def _of_kind(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (list, tuple)) and bool(value)
    return isinstance(value, kind)


def field_value(name: str, value):
    """``value`` as field ``name`` holds it, by the rules its flag has on the command line: the field's
    type, and its flag's ``type`` function, ``choices`` and ``nargs`` (what ``train_parser`` gives
    argparse). One set of rules for every source: argparse has applied them to the command line
    already, and run.json's values (JSON: text where a number belongs, NaN, nested tables...) meet
    them here. Raises :class:`FieldError` saying what is wrong."""
    meta = next(f for f in fields(RunConfig) if f.name == name).metadata
    options = typing.get_args(_HINTS[name]) or (_HINTS[name],)  # int | None: (int, NoneType)
    kind = next(k for k in options if k is not type(None))
    if value is None:
        if type(None) in options:  # not given
            return None
        raise FieldError(name, value, f"must be {_KINDS[kind]}, not null")
    if not _of_kind(value, kind):
        raise FieldError(name, value, f"must be {_KINDS[kind]}" + (" (not true or false)" if isinstance(value, bool)
                                                                    else ""))
    rules = meta.get("argparse", {})
    convert, choices = rules.get("type"), rules.get("choices")
    try:
        if kind is tuple:  # --sigma: each number by the flag's rule (which parses a token into a list)
            if not all(_of_kind(v, float) for v in value):
                raise argparse.ArgumentTypeError(f"must be {_KINDS[kind]}")
            return tuple(float(x) for v in value for x in convert(repr(v)))
        if convert is not None:  # the flag's own check, on the value as the command line would spell it
            value = convert(repr(value) if kind is float else str(value))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise FieldError(name, value, str(exc)) from None
    if choices is not None and value not in choices:
        raise FieldError(name, value, f"must be one of {', '.join(map(str, choices))}")
    return float(value) if kind is float else value


def task_defaults(task: Task) -> dict:
    return {"cost": task.default_loss, "sigma": tuple(float(s) for s in task.sigmas), "batch_size": task.batch_size}


def flag_of(name: str) -> str:
    """The command-line flag of a field (its first spelling)."""
    for f in fields(RunConfig):
        if f.name == name:
            return f.metadata["flags"][0] if f.metadata.get("flags") else f"--{name.replace('_', '-')}"
    raise KeyError(name)


@dataclass(frozen=True)
class Resolved:
    """What the machine made of a :class:`RunConfig`: recorded in run.json beside it, never taken for
    what was asked. ``seed`` (drawn when none was given) and ``trainset_files`` belong to the run and
    come back on resume; the others are resolved again on the machine that resumes."""
    seed: int
    device: str
    precision: str
    loader_workers: int
    world_size: int = 1
    trainset_files: tuple = ()
    cuda_graphs: bool = False


# ----------------------------------------------------------------------------- run.json
# run.json before version 2 was train.py's flat argparse namespace, resolved values and all.
LEGACY_NAMES = {"nEpochs": "epochs", "batchSize": "batch_size", "step": "lr_step_epochs", "loss": "cost",
                "init": "generator_init", "critic_warmup": "critic_warmup_steps", "ema": "ema_decay",
                "val_every": "val_every_epochs", "val_steps": "val_every_steps", "save_every": "save_every_steps",
                "log_every": "log_every_steps", "threads": "loader_workers"}
LEGACY_RESOLVED = ("precision", "threads", "device")  # stored resolved in old files: asked for again instead
# What every old file held (argparse wrote every flag), in its own spellings: a file without them is not
# one, and is refused rather than read as one whose every setting is the default
LEGACY_KEYS = ("trainset", "sigma", "batchSize")


def run_record(config: RunConfig, resolved: Resolved) -> dict:
    """run.json: the format, the version of this code that wrote it (a resume writes it again), what was asked
    and what the machine made of it."""
    return {"format": RUN_FORMAT, "version": RUN_VERSION, "code_version": __version__,
            "config": dataclasses.asdict(config), "resolved": dataclasses.asdict(resolved)}


def read_run(path: Path, task: Task) -> tuple[RunConfig, dict]:
    """A run.json as (the configuration asked for, what was resolved: the run's ``seed`` and
    ``trainset_files``, the values a resume takes back); older files converted. Every value is held
    to the rules of its flag before anything is written: a damaged or hand-edited field is refused
    in one line that names it."""
    saved = read_json(path)
    if "format" in saved or not all(key in saved for key in LEGACY_KEYS):
        check_run_format(path, saved)
        asked, resolved = saved.get("config"), saved.get("resolved")
        if not isinstance(asked, dict) or not isinstance(resolved, dict):
            raise InputError(f"{path}: its 'config' or 'resolved' is not a table; the run folder is damaged")
        where, stored = {k: f"config.{k}" for k in asked}, "resolved."
        unknown = [k for k in asked if k not in {f.name for f in fields(RunConfig)}]
        if unknown:
            note(f"{path}: ignoring setting(s) this code does not know: {', '.join(map(shown, unknown[:5]))}")
    else:
        where, stored = {LEGACY_NAMES.get(k, k): k for k in saved}, ""
        asked = {LEGACY_NAMES.get(k, k): v for k, v in saved.items() if k not in LEGACY_RESOLVED}
        if "no_tensorboard" in asked:
            where["tensorboard"] = "no_tensorboard"
            value = asked.pop("no_tensorboard")
            asked["tensorboard"] = not value if isinstance(value, bool) else value
        resolved = {k: saved[k] for k in ("seed", "trainset_files") if k in saved}
    known = {f.name for f in fields(RunConfig)}
    try:
        config = RunConfig.for_task(task, **{k: v for k, v in asked.items() if k in known})
    except FieldError as exc:
        raise _damaged(path, where.get(exc.name, exc.name), exc) from None
    try:
        seed = field_value("seed", resolved.get("seed"))
    except FieldError as exc:
        raise _damaged(path, f"{stored}seed", exc) from None
    files = resolved.get("trainset_files")
    return config, {"seed": seed, "trainset_files": None if files is None else
                    _trainset_files(files, f"{path}: {stored}trainset_files")}


def check_run_format(path: Path, saved: dict) -> None:
    """A run.json of this format and version, or one line that says which it is not."""
    damaged = "the run folder is damaged or was edited"
    if saved.get("format") != RUN_FORMAT:
        what = f"its format is {shown(saved['format'])}" if "format" in saved else "it has no format"
        raise InputError(f"{path}: not a run record this code reads ({what}, not {shown(RUN_FORMAT)}, and it is not "
                         f"an older one, which holds {', '.join(LEGACY_KEYS)}); {damaged}")
    version = saved.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > RUN_VERSION:
        raise InputError(f"{path}: its version {version} is newer than the run records this code reads "
                         f"({RUN_VERSION}); resume the run with the later version of this code that wrote it")
    if version != RUN_VERSION or isinstance(version, bool):
        raise InputError(f"{path}: version is {shown(version)}, not {RUN_VERSION}; {damaged}")


def _damaged(path: Path, key: str, exc: FieldError) -> InputError:
    return InputError(f"{path}: {key} is {shown(exc.value)}: {exc.problem} (as {flag_of(exc.name)} on the command "
                      "line); the run folder is damaged or was edited")


TRAINSET_FILE = {"file": str, "bytes": int, "data": int, "label": int}  # run.json's record of one training file


def _trainset_files(files, where: str) -> list:
    """run.json's record of the training files, each entry checked (``where``: the file and key, for the error)."""
    damaged = "the run folder is damaged or was edited"
    if not isinstance(files, list):
        raise InputError(f"{where} is {shown(files)}, not a list of training files; {damaged}")
    for i, entry in enumerate(files):
        if not (isinstance(entry, dict) and all(_of_kind(entry.get(key), kind) and (kind is str or entry[key] >= 0)
                                                for key, kind in TRAINSET_FILE.items())):
            raise InputError(f"{where}[{i}] is {shown(entry)}, not a record of a training file ({', '.join(TRAINSET_FILE)}:"
                             f" a file name and whole numbers); {damaged}")
    return files


# ----------------------------------------------------------------------------- resuming
@dataclass(frozen=True)
class ResumePlan:
    """Where a resumed run continues: its folder, the checkpoint each sigma starts from (empty: each
    sigma's newest), and what run.json recorded of the run itself."""
    run_root: Path
    checkpoints: dict           # sigma -> checkpoint path, for --resume CKPT
    saved: RunConfig            # the configuration recorded in run.json
    seed: int | None            # the run's seed as resolved when it started
    trainset_files: list | None
    new_data: bool = False      # --resume-new-data: continue on changed training files (this resume only)


def newest_run(task_dir: Path) -> Path:
    runs = [d for d in task_dir.iterdir() if (d / "run.json").is_file()] if task_dir.is_dir() else []
    if not runs:
        raise InputError(f"{task_dir}: no run to resume")

    def last_written(run: Path) -> float:
        return max(p.stat().st_mtime for p in [run / "run.json", *run.glob("sigma-*/state.json")])
    return max(runs, key=last_written)


def _resumed_root(task: Task, resume: str, given: dict) -> tuple[Path, dict]:
    """The folder of the run to resume and, for --resume CKPT, the checkpoint its sigma starts from."""
    if resume == "auto":
        task_dir = Path(given.get("out", RunConfig.out)) / task.name
        run_root = task_dir / given["name"] if given.get("name") else newest_run(task_dir)
        if not (run_root / "run.json").is_file():
            raise InputError(f"{run_root}: no run to resume (no run.json)")
        return run_root, {}
    checkpoint = Path(resume)
    ckpt = read_checkpoint(checkpoint)
    if ckpt["format"] == "authors" or "sigma" not in ckpt:
        raise InputError(f"{checkpoint}: not one of our training checkpoints; use --pretrained to start from it")
    trained = ckpt.get("task")
    if isinstance(trained, str) and trained != task.name:
        what = TASKS[trained].title if trained in TASKS else repr(trained)
        hint = f"; resume it with python {trained}/train.py" if trained in TASKS else ""
        raise InputError(f"{checkpoint}: trained for {what}, not {task.title}{hint}")
    sigma = float(ckpt["sigma"])  # a number: read_checkpoint checked it
    run_root = checkpoint.parent.parent
    if not (run_root / "run.json").is_file():
        raise InputError(f"{run_root}: the checkpoint's run folder has no run.json")
    # --resume CKPT continues the checkpoint's own run: a --name or --out naming another would be ignored
    for key, own in (("name", lambda v: v == run_root.name), ("out", lambda v: same_file(v, run_root.parent.parent))):
        if given.get(key) is not None and not own(given[key]):
            raise InputError(f"{flag_of(key)} {given[key]}: --resume {checkpoint} continues that checkpoint's own "
                             f"run, {run_root}; leave out {flag_of(key)}, or give --resume auto --name NAME to resume "
                             "a run by its name")
    return run_root, {sigma: checkpoint}


def plan_resume(task: Task, resume: str, given: dict, new_data: bool = False) -> tuple[RunConfig, ResumePlan]:
    """The configuration of the run being resumed (its run.json, with ``given`` on top) and where it
    continues. A defining field that ``given`` changes is refused: the run would not be itself."""
    run_root, checkpoints = _resumed_root(task, resume, given)
    saved, resolved = read_run(run_root / "run.json", task)
    for sigma, checkpoint in checkpoints.items():  # else the sweep would pass it over and resume from the newest
        if sigma not in saved.sigma or checkpoint.parent.name != sigma_dir_name(sigma):
            raise InputError(f"{checkpoint}: its sigma {sigma:g} is not its folder's ({checkpoint.parent.name}) in the "
                             f"run {run_root}, whose sigmas are {_show(saved.sigma)}; the checkpoint was moved or "
                             "is damaged")
    seed = resolved["seed"] if resolved["seed"] is not None else saved.seed
    recorded = {**saved.defining(), "seed": seed}
    for key, value in given.items():
        if key in recorded and recorded[key] is not None and not _same(value, recorded[key]):
            raise InputError(f"{flag_of(key)} {_show(value)} differs from the run being resumed "
                             f"({_show(recorded[key])}); start a new run (another --name) instead")
    config = replace(saved, **{k: v for k, v in given.items() if k not in ("out", "name")},
                     out=str(run_root.parent.parent), name=run_root.name).checked(task)
    return config, ResumePlan(run_root, checkpoints, saved, seed, resolved["trainset_files"], new_data)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [float(x) for x in a] == [float(x) for x in b]
    return a == b


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:g}" for v in value)
    return str(value)
