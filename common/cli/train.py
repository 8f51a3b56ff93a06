"""The command line of every task's ``train.py``: its parser, built from the run configuration's fields
(``common.training.config.RunConfig``), and its main, which starts, resumes or demos a run
(``common.training.loop.train``; the demo's part is ``common.demo``)."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields, replace

from ..demo import demo_config, demo_flags_text, demo_outcome, demo_settings, is_demo_run
from ..system.errors import InputError
from ..tasks import TASKS, Task
from ..training.config import GROUPS, RunConfig, plan_resume, task_defaults
from ..training.devices import Distributed, expose_gpus
from ..training.loop import train
from .flags import OneLineParser, common_flags
from .guard import run_guarded


@dataclass(frozen=True)
class TrainCommand:
    """One ``train.py`` command: the configuration it asks for, which fields it gave explicitly, and
    what this invocation does with them (start a demo, resume a run)."""
    config: RunConfig
    given: dict                 # field -> value, the flags on the command line (not the defaults)
    resume: str = ""            # "", "auto" or a checkpoint
    resume_new_data: bool = False
    demo: bool = False


def train_parser(task: Task, defaults: dict | None = None, given_only: bool = False) -> OneLineParser:
    """train.py's parser, built from :class:`RunConfig`'s fields. ``defaults`` (field -> value)
    replaces the task's, e.g. the demo's; ``given_only``: no defaults at all, so that the parsed
    namespace holds just the flags on the command line."""
    sigmas = " ".join(f"{s:g}" for s in task.sigmas)
    p = OneLineParser(
        prog=f"{task.name}/train.py",
        description=f"Train SOT for {task.title} from unpaired degraded and clean patches (HDF5). One model is "
                    "trained per value of --sigma, the weight of the transport cost. The reference's flag "
                    "spellings work as in the authors' scripts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  python {task.name}/train.py --demo\n"
               f"  python {task.name}/train.py --trainset data/{task.name}/ --sigma {sigmas} "
               f"--val-input VAL_IN/ --val-gt VAL_GT/\n"
               f"  python {task.name}/train.py --trainset data/{task.name}/ --loss ot --sigma=[{task.sigmas[0]:g}]")
    defaults = {**task_defaults(task), **(defaults or {})}
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(RunConfig):
        meta = f.metadata
        if not meta.get("flags") or (meta["sr_only"] and task.scale == 1):
            continue
        default = defaults.get(f.name, f.default)
        if f.name == "sigma":
            default = [list(default)]  # as --sigma parses: a list of lists
        text = meta["help"].format(sigmas=sigmas, commas=sigmas.replace(" ", ","))
        groups[meta["group"]].add_argument(*meta["flags"], dest=f.name, default=default, help=text, **meta["argparse"])
    r = p.add_argument_group("resuming")
    r.add_argument("--resume", default="", metavar="auto|CKPT",
                   help="continue a run where it stopped: 'auto' takes the newest run of this task (of --name if "
                        "given), or name one of our checkpoints (its sigma continues from it, the sweep's other "
                        "sigmas from their newest); finished sigmas of the sweep are skipped")
    r.add_argument("--resume-new-data", action="store_true",
                   help="with --resume: continue although the training files changed since the run started "
                        "(added, removed, resized or recounted; refused without this flag)")
    p.add_argument("--demo", action="store_true",
                   help="build a small unpaired set from scikit-image's photographs and train a short run that two "
                        f"CPU cores finish in under 10 minutes ({demo_flags_text(task)}); any flag given as well "
                        "overrides these, but its data are its own (--trainset, --val-input and --val-gt are "
                        "refused with it); --demo --resume auto continues a stopped demo. See docs/TRAINING.md")
    common_flags(p)
    if given_only:  # every flag, ours and the shared ones: absent from the namespace unless given
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


def _config_values(namespace: argparse.Namespace) -> dict:
    """The RunConfig fields of a parsed namespace (--sigma's groups flattened)."""
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    if "sigma" in values:
        values["sigma"] = tuple(s for group in values["sigma"] for s in group)
    return values


def parse_train_command(task: Task, argv: list[str]) -> TrainCommand:
    """Parse train.py's flags; with --demo, the demo's settings stand in for the task's defaults."""
    demo = "--demo" in argv
    args = train_parser(task, demo_settings(task) if demo else None).parse_args(argv)
    given = _config_values(train_parser(task, given_only=True).parse_args(argv))
    if args.resume_new_data and not args.resume:
        raise InputError("--resume-new-data continues a run on changed training files: it needs --resume")
    config = RunConfig.for_task(task, **_config_values(args))
    return TrainCommand(config, given, args.resume, args.resume_new_data, args.demo)


def parse_train_args(task: Task, argv: list[str]) -> RunConfig:
    """The configuration a train.py command line asks for."""
    return parse_train_command(task, argv).config


# ----------------------------------------------------------------------------- train.py's main
def train_main(task_name: str, argv: list[str] | None = None) -> None:
    """Every task's train.py: parse, then start, resume or demo a run."""
    run_guarded(lambda a: _train_command(TASKS[task_name], a), argv)


def _train_command(task: Task, argv: list[str]) -> None:
    command = parse_train_command(task, argv)
    # Under torchrun with several processes this joins the process group; alone, it is a no-op.
    dist = Distributed.from_environment(command.config.device)
    started = time.time()
    try:
        if command.resume:
            config, plan = plan_resume(task, command.resume, command.given, command.resume_new_data)
            if command.demo and not is_demo_run(task, config):
                raise InputError(f"{plan.run_root}: --demo resumes only a demo run, and this run trains on "
                                 f"{config.trainset}; resume it without --demo")
            expose_gpus(config.gpus)
            results = train(task, config, dist, resume=plan)
        else:
            config = command.config
            stamp = dist.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            if command.demo:
                config = demo_config(task, config, command.given, stamp, dist)
            config = replace(config, name=config.name or f"{config.cost}-{stamp}")
            expose_gpus(config.gpus)
            results = train(task, config, dist)
        if command.demo and dist.is_main and results:
            print("\n" + demo_outcome(task, config, results[-1], started, bool(command.resume)))
    finally:
        dist.close()
