"""A training run: one model per transport weight sigma, each in ``<out>/<task>/<name>/sigma-<s>/``,
around the iteration of ``common.sot``.

Read top to bottom: :func:`train` checks everything that can refuse the run (:func:`preflight`,
before anything is written), locks the run folder and records the run in ``run.json``, then trains
each sigma (:class:`SigmaRun`: its networks, its position, and the loop in :meth:`SigmaRun.train`).
What a run folder holds and how its checkpoints are kept is ``common.run_folder``; the command line
that starts all this is :func:`train_main`.

Nothing is lost to a crash: checkpoints are written atomically, a run resumes exactly where its
newest checkpoint left it (weights, optimisers, RNG states, the position inside the epoch), Ctrl-C or
SIGTERM finishes the step and saves, and non-finite steps are skipped rather than trained on. A run
folder is locked (``.lock``) for the run's life, and a resume checks that the training files are
the ones ``run.json`` recorded. See docs/RELIABILITY.md.
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_weights, read_checkpoint
from .cli import run_guarded
from .config import Resolved, ResumePlan, RunConfig, flag_of, parse_train_command, plan_resume, run_record
from .data.loader import UnpairedH5Dataset, UnpairedSampler
from .data.pairs import Pair
from .data.patch_file import rgb_problem
from .devices import (CapturedStep, Distributed, Local, make_deterministic, resolve_device, resolve_precision,
                      resolve_threads, rng_state, seed_everything, set_rng_state, to_device)
from .evaluation.evaluate import NonFiniteOutput, evaluate
from .evaluation.figures import save_samples
from .evaluation.report import ReportRefresher
from .networks import Critic, Generator
from .recipe import WeightAverage, extra_generator_cost, generator_trains, start_as_identity
from .run_folder import SigmaFolder, json_ready, read_state, remove_stale_run_temporaries, sigma_dir_name, write_json
from .sot import learning_rate, make_optimizers, set_learning_rate, supervised_step, train_step
from .system.errors import InputError, TrainingStopped
from .system.files import LOCK_NAME, RunLock, check_can_write, folders_to_make, remove_made
from .system.signals import StopRequest
from .system.text import note, printable
from .tasks import TASKS, Task, model_input


@dataclass
class RunResult:
    sigma: float
    run_dir: Path
    step: int
    epoch: int
    best_psnr: float | None
    last_val: dict = field(default_factory=dict)
    steps_run: int = 0      # steps taken by this process now (a resume counts from where it started)
    skipped_run: int = 0    # of those, skipped as non-finite


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def time_estimate(sigma: float, per_step: float, left: int, later: int, steps_each: int, device: str) -> str:
    """One line: how long this sigma's ``left`` steps and the ``later`` sigmas of the sweep (each
    ``steps_each``) take at ``per_step`` seconds a step; where that is days on a CPU, what to do."""
    seconds = per_step * (left + later * steps_each)
    text = (f"sigma {sigma:g}: {per_step:.2f} s a step on {device}; this sigma's {left} remaining steps take about "
            f"{_duration(per_step * left)}"
            + (f", the sweep's {later} other sigma(s) {_duration(per_step * later * steps_each)} more" if later else "")
            + f": about {_duration(seconds)} in all")
    if seconds > 86400 and device == "cpu":
        text += (". That is days on a CPU: --demo trains a small run in minutes, and a GPU trains the paper's sizes "
                 "some hundred times faster")
    return text


def run_is_over(config: RunConfig, step: int, next_epoch: int) -> bool:
    """Whether a run at ``step``, about to start ``next_epoch``, has nothing left to do."""
    return bool(config.max_steps and step >= config.max_steps) or next_epoch > config.epochs


# ----------------------------------------------------------------------------- before anything is written
@dataclass
class Prepared:
    """What every sigma of a run shares, checked before the run folder is touched."""
    task: Task
    config: RunConfig
    resolved: Resolved
    device: torch.device
    dist: object
    dataset: UnpairedH5Dataset
    val_pairs: list[Pair] | None
    pretrained: dict | None       # the --pretrained checkpoint, read and checked once
    sigmas: list[tuple]           # (index, sigma, SigmaFolder, checkpoint to start from or None, done)
    run_root: Path


def preflight(task: Task, config: RunConfig, dist, resume: ResumePlan | None) -> Prepared:
    """Every check that can refuse the run, in the order a user should hear of them. Nothing is
    written: a refused run leaves no run folder, no run.json, no lock."""
    if config.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus
    if config.deterministic:
        make_deterministic()
    check_sigma_folders(config.sigma)
    run_root = Path(config.out) / task.name / config.name
    if dist.is_main:
        check_can_write(run_root)  # creates nothing: a bad --out fails before the data are read
    device = dist.device if hasattr(dist, "device") else resolve_device(config.device)
    workers = check_loader_workers(resolve_threads(config.loader_workers, device))
    dataset = check_training_data(task, config, dist)
    val_pairs = check_validation(task, config)
    check_network_sizes(task, config, device)
    pretrained = check_pretrained(task, config) if config.pretrained else None
    files = data_files(dataset)
    if resume is not None:
        check_resumed_data(config, resume, files)
    sigmas = plan_sigmas(task, config, run_root, resume, dist.is_main)
    seed = resume.seed if resume is not None and resume.seed is not None else config.seed
    if seed is None:
        seed = dist.broadcast_object(random.SystemRandom().randint(1, 10**6))
    resolved = Resolved(seed=seed, device=str(device), precision=resolve_precision(config.precision, device),
                        loader_workers=workers, world_size=dist.world, trainset_files=tuple(files),
                        cuda_graphs=resolve_cuda_graphs(config, device, dist))
    return Prepared(task, config, resolved, device, dist, dataset, val_pairs, pretrained, sigmas, run_root)


def resolve_cuda_graphs(config: RunConfig, device: torch.device, dist) -> bool:
    """--cuda-graphs: ``auto`` stays off until a GPU measurement shows the captured step faster and
    equal; ``on`` needs one process on CUDA and the SOT iteration."""
    if config.cuda_graphs != "on":
        return False
    why = ("there is no CUDA device" if device.type != "cuda" else
           "several processes share the batch (DDP's hooks are not captured)" if dist.world > 1 else
           "--supervised has no critic iteration to capture" if config.supervised else None)
    if why:
        note(f"--cuda-graphs on: not used, {why}")
        return False
    return True


def check_sigma_folders(sigmas) -> None:
    """Two sigmas that print alike (10 and 10.0000001) would share one folder and mix their files."""
    seen: dict[str, float] = {}
    for sigma in sigmas:
        name = sigma_dir_name(sigma)
        if name in seen:
            same = "is given twice" if seen[name] == sigma else f"and {seen[name]!r} both map to"
            raise InputError(f"--sigma {sigma!r} {same} the folder {name}; give distinct values")
        seen[name] = sigma


def check_loader_workers(workers: int) -> int:
    most = max(16, 4 * (os.cpu_count() or 1))
    if workers > most:
        raise InputError(f"--threads {workers}: more data-loader processes than this machine's "
                         f"{os.cpu_count()} cores can use; give at most {most}")
    return workers


def check_training_data(task: Task, config: RunConfig, dist) -> UnpairedH5Dataset:
    """The training files, opened and checked, and the batch they must hold."""
    dataset = UnpairedH5Dataset(config.trainset, scale=task.scale, layout=config.layout, raw_uint8=True)
    first = dataset.parts[0].path
    if rgb_problem(dataset.data_shape[0]):
        raise InputError(f"{first}: {rgb_problem(dataset.data_shape[0])}")
    side = dataset.label_shape[1:]
    if side != (task.patch, task.patch) and not config.supervised:
        raise InputError(f"{first}: clean patches are {side[0]}x{side[1]} but the critic takes "
                         f"{task.patch}x{task.patch}")
    if config.batch_size % dist.world:
        raise InputError(f"--batchSize {config.batch_size} must divide among {dist.world} processes "
                         "(it is the global batch)")
    if config.supervised and len(dataset) != dataset.num_labels:
        raise InputError(f"{config.trainset}: --supervised needs paired files ('data'[i] degraded from 'label'[i]), "
                         f"but they hold {len(dataset)} and {dataset.num_labels} patches")
    if len(dataset) < config.batch_size:
        raise InputError(f"{config.trainset}: only {len(dataset)} degraded patches, fewer than one batch "
                         f"(--batchSize {config.batch_size})")
    return dataset


def check_validation(task: Task, config: RunConfig) -> list[Pair] | None:
    """The validation pairs, every image read now: one that is unreadable or of the wrong size stops
    the run before it writes anything, not at its first validation."""
    from .evaluation.evaluate import check_scored_apart, match_gt
    from .data.images import read_image
    from .data.pairs import find_pairs

    if config.val_gt and not config.val_input:
        raise InputError("--val-gt needs --val-input")
    if not config.val_input:
        return None
    pairs = find_pairs(config.val_input, config.val_gt)
    check_scored_apart(config.val_input, config.val_gt, pairs, ("--val-input", "--val-gt"))
    unpaired = [p.input.name for p in pairs if p.gt is None]
    if unpaired:
        raise InputError(f"{config.val_input}: validation needs ground truth; give --val-gt or a test set's "
                         f"folder in a known layout (no ground truth for {', '.join(unpaired[:5])})")
    for pair in pairs:
        h, w = read_image(pair.input).shape[:2]
        match_gt(read_image(pair.gt), (h * task.scale, w * task.scale), pair, task.scale)
    return pairs


def check_network_sizes(task: Task, config: RunConfig, device: torch.device) -> None:
    """Refuse network widths whose weights alone cannot be held (a --gen-width of 200000 would ask the
    allocator for terabytes and die with its traceback): counted on the meta device, nothing allocated."""
    from .system.files import available_memory, human_bytes

    with torch.device("meta"):
        networks = {"generator": Generator(width=config.gen_width, increment=config.gen_increment)}
        if not config.supervised:
            networks["critic"] = Critic(hidden=task.critic_hidden, input_size=task.patch, width=config.critic_width)
    # float32 weights, their gradients and RMSprop's running average, and a copy (--ema, checkpoints)
    needed = sum(4 * 4 * sum(p.numel() for p in net.parameters()) for net in networks.values())
    available = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else available_memory()
    if available is not None and needed > available:
        counts = ", ".join(f"{name} {sum(p.numel() for p in net.parameters()):,} parameters"
                           for name, net in networks.items())
        raise InputError(f"--gen-width {config.gen_width} --gen-increment {config.gen_increment} --critic-width "
                         f"{config.critic_width}: the networks ({counts}) need about {human_bytes(needed)} for their "
                         f"weights and optimiser state alone; {human_bytes(available)} is available on {device}")


def check_pretrained(task: Task, config: RunConfig) -> dict:
    """Read the --pretrained checkpoint once and make sure its weights fit these networks."""
    from .checkpoint import build_generator

    ckpt = read_checkpoint(config.pretrained)
    build_generator(ckpt, config.pretrained)  # a damaged or crafted checkpoint is refused as test.py refuses it
    trained = ckpt.get("task")
    if isinstance(trained, str) and trained != task.name:
        note(f"{config.pretrained}: trained for {trained}; fine-tuning it for {task.title}")
    load_weights(Generator(width=config.gen_width, increment=config.gen_increment), ckpt["generator"],
                 config.pretrained, "generator")
    if ckpt.get("critic") and not config.supervised:
        load_weights(Critic(hidden=task.critic_hidden, input_size=task.patch, width=config.critic_width),
                     ckpt["critic"], config.pretrained, "critic")
    return ckpt


def data_files(dataset: UnpairedH5Dataset) -> list[dict]:
    """What run.json records of the training files, for a resume to compare: name, size, patch counts."""
    return [{"file": Path(p.path).name, "bytes": os.path.getsize(p.path), "data": p.n_data, "label": p.n_label}
            for p in dataset.parts]


def data_changes(saved: list[dict], current: list[dict]) -> list[str]:
    """How the training files differ from those a run recorded (empty: the same)."""
    old, new = {e.get("file"): e for e in saved}, {e["file"]: e for e in current}
    changes = [f"{name} added" for name in new if name not in old]
    changes += [f"{name} gone" for name in old if name not in new]
    for name in (n for n in new if n in old):
        a, b = old[name], new[name]
        what = [f"{key} {a.get(key)} -> {b[key]}" for key in ("bytes", "data", "label") if a.get(key) != b[key]]
        if what:
            changes.append(f"{name}: {', '.join(what)}")
    return changes


def check_resumed_data(config: RunConfig, resume: ResumePlan, files: list[dict]) -> None:
    """A resume continues the epoch's sample order where it stopped: on other files, or the same files
    with other contents, that order means something else. Refused unless --resume-new-data."""
    saved = resume.trainset_files
    if not isinstance(saved, list) or not all(isinstance(e, dict) for e in saved):
        note(f"{config.trainset}: the run predates the record of its training files; they cannot be compared")
        return
    changes = data_changes(saved, files)
    if not changes:
        return
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    if resume.new_data:
        note(f"{config.trainset}: the training data changed since the run started ({shown}); continuing on the new "
             "data as --resume-new-data asks (this epoch's remaining order is drawn over the new files)")
        return
    raise InputError(f"{config.trainset}: the training data changed since the run started ({shown}); restore the "
                     "files, start a new run (another --name), or give --resume-new-data to continue on them")


def plan_sigmas(task: Task, config: RunConfig, run_root: Path, resume: ResumePlan | None, main: bool) -> list[tuple]:
    """Per sigma: (index, sigma, its folder, the checkpoint it starts from or None, whether it is done).
    The state files and the checkpoints to resume from are read now: a damaged one stops the run here."""
    plan = []
    for i, sigma in enumerate(config.sigma):
        folder = SigmaFolder(run_root / sigma_dir_name(sigma), main)
        given = resume.checkpoints.get(sigma) if resume is not None else None
        start, done = folder.start_point(resume is not None, given, lambda s, e: run_is_over(config, s, e))
        if resume is None and any(folder.path.glob("*.pt")):  # a new run would rotate an earlier one's
            raise InputError(f"{folder.path}: holds an earlier run's checkpoints; continue it with --resume auto "
                             f"--name {config.name}, or give another --name")
        if start is not None and not done:
            folder.read_for_resume(task.name, start)
        plan.append((i, sigma, folder, start, done))
    return plan


# ----------------------------------------------------------------------------- the run
def train(task: Task, config: RunConfig, dist=None, resume: ResumePlan | None = None) -> list[RunResult]:
    """Train one model per sigma of ``config.sigma``; returns where each went and how it did.

    ``resume`` (``common.config.plan_resume``) continues a run: each sigma from its newest checkpoint
    (or the one named), finished sigmas skipped. Everything that can be checked is checked before the
    run folder is touched; the folder is then locked for the run's life.
    """
    dist = dist or Local()
    if config.supervised:
        config = replace(config, sigma=(0.0,))  # no transport cost: one model
    prepared = preflight(task, config, dist, resume)
    if prepared.device.type == "cuda" and not config.deterministic:
        torch.backends.cudnn.benchmark = True
    made = folders_to_make(prepared.run_root) if dist.is_main else []
    lock = RunLock(prepared.run_root).acquire() if dist.is_main else None  # the OS drops it if we die
    try:
        if dist.is_main:
            remove_stale_run_temporaries(prepared.run_root)
            write_json(prepared.run_root / "run.json", run_record(config, prepared.resolved))
            announce(prepared)
        return train_sigmas(prepared)
    except BaseException:
        if made and prepared.run_root in made:
            remove_unsaved_run(prepared.run_root, made)
        raise
    finally:
        if lock is not None:
            lock.release()


def remove_unsaved_run(run_root: Path, made: list[Path]) -> None:
    """A run that made its folder and stopped before its first checkpoint (it failed in its first step)
    leaves nothing: the folder would hold a run.json and logs of a run that does not exist, which
    ``--resume auto`` would take for the newest run. Called with the folder's lock held; the lock file
    goes last, and a folder that another run has entered meanwhile (not empty then) stays."""
    if any(run_root.glob("sigma-*/*.pt")):
        return
    for entry in run_root.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (run_root / LOCK_NAME).unlink(missing_ok=True)
    remove_made(made)  # innermost first: the run folder, then the folders made for it
    note(f"{run_root}: removed the run folder this run had made; it stopped before saving a checkpoint")


def announce(p: Prepared) -> None:
    method = "supervised L1 (paired)" if p.config.supervised else f"cost {p.config.cost}"
    world = f", {p.dist.world} processes" if p.dist.world > 1 else ""
    print(f"{p.task.title}: {p.dataset.describe()}; device {p.device} ({p.resolved.precision}{world}); {method}; "
          f"sigma {', '.join(f'{s:g}' for s in p.config.sigma)}; writing to {p.run_root}")


def train_sigmas(p: Prepared) -> list[RunResult]:
    results = []
    with StopRequest() as stop:
        for i, sigma, folder, start, done in p.sigmas:
            if done:
                if p.dist.is_main:
                    print(f"sigma {sigma:g}: finished earlier, skipped")
                continue
            r = SigmaRun(p, i, sigma, folder, start, stop).train()
            results.append(r)
            if p.dist.is_main:
                val = f", validation PSNR {r.last_val['psnr']:.2f} dB" if r.last_val else ""
                skipped = f" ({r.skipped_run} of this run's {r.steps_run} skipped as non-finite)" if r.skipped_run else ""
                print(f"sigma {sigma:g}: {r.step} step(s){skipped}, {r.epoch} full epoch(s){val}; "
                      f"checkpoints in {r.run_dir}")
                if r.skipped_run * 2 > r.steps_run:
                    note(f"sigma {sigma:g}: most steps were skipped as non-finite; the model trained on fewer than "
                         "half of them (see 'skipped' in metrics.jsonl)")
    return results


def resume_command(task: Task, config: RunConfig, dist=None) -> str:
    launcher = f"torchrun --nproc_per_node={dist.world}" if dist is not None and dist.world > 1 else "python"
    demo = " --demo" if is_demo_run(task, config) else ""
    return f"{launcher} {task.name}/train.py --resume auto --name {config.name} --out {config.out}{demo}"


# ----------------------------------------------------------------------------- one sigma
@dataclass
class Position:
    """Where a sigma's run is: the epoch under way (1-based), the batches of it done, the steps done."""
    epoch: int = 1
    batch_in_epoch: int = 0
    step: int = 0


class Networks:
    """A sigma's networks and what trains them: G (wrapped for several processes), the critic, both
    optimisers and, with --ema, G's weight average; built from the run's configuration and loaded
    from a checkpoint's state."""

    def __init__(self, p: Prepared):
        config, task, dist = p.config, p.task, p.dist
        generator = Generator(width=config.gen_width, increment=config.gen_increment,
                              null_space_scale=task.scale if config.null_space else 1)
        if config.generator_init == "identity":
            start_as_identity(generator)
        critic = None if config.supervised else Critic(hidden=task.critic_hidden, input_size=task.patch,
                                                       width=config.critic_width, init=config.critic_init)
        if p.pretrained is not None:
            load_weights(generator, p.pretrained["generator"], config.pretrained, "generator")
            if p.pretrained.get("critic") and critic is not None:
                load_weights(critic, p.pretrained["critic"], config.pretrained, "critic")
            if dist.is_main:
                print(f"initialised from {config.pretrained}")
        memory_format = torch.channels_last if p.device.type == "cuda" else torch.contiguous_format
        self.generator = generator.to(p.device, memory_format=memory_format)
        self.critic = critic.to(p.device, memory_format=memory_format) if critic is not None else None
        if self.critic is not None:
            dist.broadcast_module(self.critic)  # the generator's DDP wrapper does this for G
        self.trained_generator = dist.wrap_generator(self.generator)
        self.opt_g, self.opt_d = make_optimizers(self.generator, self.critic, config.lr)
        # --ema: the generator's weight average is what is validated, kept as best.pt and tested
        self.average = WeightAverage(self.generator, config.ema_decay) if config.ema_decay else None

    @property
    def validated(self) -> Generator:
        """The generator that validation measures and best.pt keeps: the average with --ema."""
        return self.average.model if self.average is not None else self.generator

    def state(self) -> dict:
        """What a checkpoint holds of them."""
        critic = self.critic
        return {"arch": {"generator": self.generator.arch, "critic": critic.arch if critic is not None else None},
                "generator": self.generator.state_dict(), "critic": critic.state_dict() if critic is not None else None,
                "generator_ema": self.average.model.state_dict() if self.average is not None else None,
                "optim_g": self.opt_g.state_dict(), "optim_d": self.opt_d.state_dict() if critic is not None else None}

    def load(self, ckpt: dict, path: Path) -> None:
        """Weights and optimiser states from a checkpoint, refused where it lacks what these need."""
        load_weights(self.generator, ckpt["generator"], path, "generator")
        if self.average is not None:
            if not ckpt.get("generator_ema"):
                raise InputError(f"{path}: this checkpoint holds no weight average to resume --ema from")
            load_weights(self.average.model, ckpt["generator_ema"], path, "generator average")
        self.opt_g.load_state_dict(ckpt["optim_g"])
        if self.critic is not None:
            if not ckpt.get("critic") or not ckpt.get("optim_d"):
                raise InputError(f"{path}: this checkpoint holds no critic to resume (a --supervised run?)")
            load_weights(self.critic, ckpt["critic"], path, "critic")
            self.opt_d.load_state_dict(ckpt["optim_d"])


class SigmaRun:
    """Training of one model (one sigma): its networks and optimisers, its position, and the loop."""

    def __init__(self, p: Prepared, index: int, sigma: float, folder: SigmaFolder, start: Path | None,
                 stop: StopRequest):
        self.p, self.config, self.task, self.dist = p, p.config, p.task, p.dist
        self.sigma, self.seed, self.folder, self.stop = sigma, p.resolved.seed + index, folder, stop
        self._index, self._timed_from = index, time.time()
        self.main = self.dist.is_main
        seed_everything(self.seed)
        self.nets = Networks(p)
        self.extra_cost = extra_generator_cost(self.config.dc_weight)
        self.captured = CapturedStep(self._sot_step) if p.resolved.cuda_graphs else None
        self.position, self.best, self.last_val = Position(), None, {}
        self.steps_run, self.skipped_run = 0, 0  # since this process started, for the check that something trained
        skipped = 0
        if start is not None:
            skipped = self._resume(start)
        # Non-finite steps are counted on the device (reading a flag each step would wait for the GPU),
        # and read when the log, a checkpoint or the end of an epoch needs them (_read_nonfinite).
        counter = lambda value=0: torch.tensor(value, dtype=torch.int64, device=p.device)
        self.skipped_total, self.streak, self.worst_streak = counter(skipped), counter(), counter()
        self.skipped_read = skipped
        self.record = self._record()
        self.log = folder.open_log(None if start is not None else self.record,
                                   self.position.step if start is not None else None,
                                   self.config.tensorboard) if self.main else None
        self.report = self._report()
        self.sampler = UnpairedSampler(len(p.dataset), p.dataset.num_labels, self.config.batch_size, self.seed,
                                       self.dist.rank, self.dist.world, paired=self.config.supervised)
        if self.position.batch_in_epoch > self.sampler.batches_per_epoch:
            # resumed on fewer patches (--resume-new-data): the saved position is past the new epoch's end
            self.position.batch_in_epoch = self.sampler.batches_per_epoch

    # -- the loop
    def train(self) -> RunResult:
        """Epochs of iterations until --max-steps or --nEpochs; after each iteration, what is due."""
        config, pos = self.config, self.position
        self.nets.generator.train()
        self.started, self.batch = time.time(), None  # batch: the latest (input, output, clean), for pictures
        finished = run_is_over(config, pos.step, pos.epoch)
        # one bar for the whole run, against its real end: --max-steps where that comes before --nEpochs
        bar = tqdm(desc=f"sigma {self.sigma:g}", unit="step", total=self.total_steps(), initial=pos.step, leave=False,
                   dynamic_ncols=True, disable=not self.main)
        while not finished:
            lr = learning_rate(config.lr, pos.epoch, config.lr_step_epochs)
            set_learning_rate(self.nets.opt_g, self.nets.opt_d, lr)
            bar.set_postfix_str(f"epoch {pos.epoch}/{config.epochs}")
            for degraded, clean in self._loader():
                stats = self._iteration(degraded, clean)
                bar.update(1)
                self._estimate_time()
                finished = bool(config.max_steps and pos.step >= config.max_steps)
                if self._due(config.log_every_steps) or pos.step == 1 or finished:
                    self._log_step(stats, lr, bar)
                if finished:
                    break
                if self._due(config.save_every_steps):
                    self.save(f"step-{pos.step:08d}.pt")
                if self._due(config.val_every_steps) and self.p.val_pairs:
                    self._validate_on_main()
                self._check_stop(f"step-{pos.step:08d}.pt")
            finished = self._end_epoch(finished)
        bar.close()
        if self.log is not None:
            self.log.close()
        if self.main:
            self.report.final()
        return RunResult(self.sigma, self.folder.path, pos.step, pos.epoch - 1, self.best, self.last_val,
                         self.steps_run, self.skipped_run)

    def total_steps(self) -> int:
        """The steps of this sigma's whole run: --nEpochs of full batches, or --max-steps if fewer."""
        total = self.config.epochs * self.sampler.batches_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    ESTIMATE_AFTER = 10  # steps of this session before the run's remaining time is estimated, once

    def _estimate_time(self) -> None:
        """After the first steps: how long this sigma and the rest of the sweep will take, on this
        machine; where that is days on a CPU, say so (and what to do instead)."""
        if not self.main or self.steps_run not in (2, self.ESTIMATE_AFTER):
            return
        if self.steps_run == 2:  # the first step pays for warm-ups: time from the second on
            self._timed_from = time.time()
            return
        per_step = (time.time() - self._timed_from) / (self.ESTIMATE_AFTER - 2)
        later = sum(1 for i, _, _, _, done in self.p.sigmas if i > self._index and not done)
        tqdm.write(time_estimate(self.sigma, per_step, self.total_steps() - self.position.step, later,
                                 self.total_steps(), self.p.device.type))

    def _due(self, every: int) -> bool:
        return bool(every) and self.position.step % every == 0

    def _iteration(self, degraded: torch.Tensor, clean: torch.Tensor) -> dict:
        """One training step (and the weight average's update); the position moves on by one."""
        config = self.config
        x = model_input(self.task, to_device(degraded, self.p.device), config.align_corners)
        clean = to_device(clean, self.p.device)
        precision = self.p.resolved.precision
        update_generator = config.supervised or generator_trains(self.position.step, config.critic_warmup_steps)
        nets = self.nets
        if config.supervised:
            stats, fake = supervised_step(nets.trained_generator, nets.opt_g, x, clean, precision, self.dist)
        else:  # captured: a graph per (whether G trains, the learning rate), the values Python decides
            key = (update_generator, nets.opt_d.param_groups[0]["lr"])
            stats, fake = (self.captured or self._sot_step)(key, x, clean)
        if nets.average is not None and update_generator:
            nets.average.update(nets.generator, applied=~stats["skipped"])
        self.batch = (x, fake, clean)
        self.position.step += 1
        self.position.batch_in_epoch += 1
        self.steps_run += 1
        self._count_nonfinite(stats["skipped"])
        return stats

    def _sot_step(self, key: tuple, x: torch.Tensor, clean: torch.Tensor) -> tuple[dict, torch.Tensor]:
        nets, update_generator = self.nets, key[0]
        return train_step(nets.trained_generator, nets.critic, nets.opt_g, nets.opt_d, x, clean, self.sigma,
                          self.config.cost, self.p.resolved.precision, self.dist, self.extra_cost, update_generator)

    def _end_epoch(self, finished: bool) -> bool:
        """After an epoch (or the run's last step): the sample picture, the next epoch, validation when
        due, and last.pt; returns whether the run is finished."""
        config, pos = self.config, self.position
        epoch_done = pos.batch_in_epoch >= self.sampler.batches_per_epoch
        if (epoch_done or finished) and self.main and self.batch is not None:
            self.log.image("samples", save_samples(self.folder.samples_picture(pos.epoch), *self.batch), pos.step)
        if epoch_done:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        finished = finished or pos.epoch > config.epochs
        self._read_nonfinite()
        if finished:
            self._check_something_trained()
        if self.p.val_pairs and ((epoch_done and (pos.epoch - 1) % config.val_every_epochs == 0) or finished):
            self._validate_on_main()
        else:
            self.dist.barrier()
        self.save("last.pt", finished=finished)
        if not finished:
            self._check_stop("last.pt")
        return finished

    def _loader(self) -> DataLoader:
        workers = self.p.resolved.loader_workers
        self.sampler.set_epoch(self.position.epoch, self.position.batch_in_epoch)
        # The workers' seeds come from this generator, not the global RNG, so that starting a loader
        # mid-epoch on resume draws nothing the uninterrupted run would not have drawn.
        return DataLoader(self.p.dataset, batch_size=self.config.batch_size // self.dist.world, sampler=self.sampler,
                          num_workers=workers, pin_memory=self.p.device.type == "cuda", drop_last=True,
                          prefetch_factor=4 if workers else None,
                          generator=torch.Generator().manual_seed(self.seed + self.position.epoch))

    def _check_stop(self, ckpt_name: str) -> None:
        # Every process must stop after the same step, whichever of them got the signal.
        if not self.dist.any_true(self.stop.signum is not None):
            return
        signum = self.stop.signum or signal.SIGTERM
        path = self.save(ckpt_name)
        name = signal.Signals(signum).name
        raise TrainingStopped(f"stopped by {name} at step {self.position.step} (sigma {self.sigma:g}); saved {path}.\n"
                              f"Resume with: {resume_command(self.task, self.config, self.dist)}", 128 + signum)

    # -- building, resuming, saving
    def _resume(self, path: Path) -> int:
        """Weights, optimisers, position and RNG states from a checkpoint; its count of skipped steps."""
        ckpt = self.folder.read_for_resume(self.task.name, path, self.p.device)
        try:
            self.nets.load(ckpt, path)
            position = [ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position) or position[0] < 1:
                raise ValueError(f"epoch, batch and step {position} are not a position in a run")
            self.position = Position(*position)
            self.best, skipped = ckpt.get("best_psnr"), ckpt.get("skipped_steps", 0)  # checked by read_checkpoint
            set_rng_state(ckpt["rng"], self.p.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise InputError(f"{path}: cannot resume from this checkpoint, it is damaged ({type(exc).__name__}: "
                             f"{reason}){self.folder.intact_alternative(self.task.name, path)}") from None
        self.folder.last_good = path
        if self.main:
            print(f"sigma {self.sigma:g}: resuming from {path} (epoch {self.position.epoch}, step {self.position.step})")
            newest = read_state(self.folder.path) or {}
            if isinstance(newest.get("step"), int) and newest["step"] > self.position.step:
                note(f"sigma {self.sigma:g}: {path.name} is at step {self.position.step}, behind this sigma's newest "
                     f"checkpoint ({newest.get('checkpoint')}, step {newest['step']}); training goes on from step "
                     f"{self.position.step} and replaces the later checkpoints as it reaches their steps")
        return skipped

    def _record(self) -> dict:
        """config.json and each checkpoint's 'config': what this sigma's model was trained with, the
        machine's resolved values included."""
        r = self.p.resolved
        return json_ready({**dataclasses.asdict(self.config), "task": self.task.name, "sigma": self.sigma,
                           "seed": self.seed, "device": r.device, "precision": r.precision,
                           "loader_workers": r.loader_workers, "world_size": r.world_size,
                           "torch": str(torch.__version__), "data": self.p.dataset.describe(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _state(self) -> dict:
        pos = self.position
        return {"task": self.task.name, **self.nets.state(), "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch, "step": pos.step,
                "sigma": float(self.sigma), "loss": self.config.cost, "best_psnr": self.best,
                "skipped_steps": self.skipped_read, "rng": rng_state(self.p.device), "config": self.record}

    def save(self, name: str, finished: bool = False) -> Path:
        self._read_nonfinite()
        return self.folder.save(name, self._state(), finished) if self.main else self.folder.path / name

    # -- validation and logs
    def _validate_on_main(self) -> None:
        if self.main:
            self._validate_and_keep_best()
        self.dist.barrier()

    def _validate_and_keep_best(self) -> None:
        try:
            ev = evaluate(self.nets.validated, self.p.val_pairs, self.task, self.p.device,
                          align_corners=self.config.align_corners, precision=self.p.resolved.precision, progress=False)
        except NonFiniteOutput as exc:  # finite weights, non-finite output: not a model to keep or score
            raise TrainingStopped(f"sigma {self.sigma:g} step {self.position.step}: the generator's output on the "
                                  f"validation image {printable(exc.image)} holds NaN or infinite values: training "
                                  f"diverged. Last good checkpoint: {self.folder.last_good or 'none yet'}. Try a "
                                  "lower --lr or a larger --sigma.", 3) from None
        self.nets.generator.train()
        val = {"psnr": ev.mean("psnr"), "ssim": ev.mean("ssim"), "input_psnr": ev.mean("input_psnr"),
               "input_ssim": ev.mean("input_ssim")}
        is_best = self.best is None or val["psnr"] > self.best
        self.best = val["psnr"] if is_best else self.best
        step = self.position.step
        self.log.write({"kind": "val", "step": step, "epoch": self.position.epoch, **val, "best_psnr": self.best})
        tqdm.write(f"sigma {self.sigma:g} step {step}: validation PSNR {val['psnr']:.2f} dB "
                   f"(input {val['input_psnr']:.2f} dB, best {self.best:.2f} dB)")
        if is_best:
            self.save("best.pt")
        self.last_val = val
        self.report.request()

    def _report(self) -> ReportRefresher:
        """The run folder's report.html, redrawn from every sigma's metrics beside the training."""
        config, r = self.config, self.p.resolved
        facts = [("task", self.task.title), ("run", str(self.folder.path.parent)),
                 ("method", "supervised L1" if config.supervised else f"cost {config.cost}, sigma "
                  + " ".join(f"{s:g}" for s in config.sigma)),
                 ("schedule", f"batch {config.batch_size}, lr {config.lr:g}, {config.epochs} epochs"
                  + (f", at most {config.max_steps} steps" if config.max_steps else "")),
                 ("networks", f"generator {config.gen_width}/{config.gen_increment}, critic {config.critic_width}"),
                 ("data", self.p.dataset.describe()), ("device", f"{r.device} ({r.precision})")]
        return ReportRefresher(self.folder.path.parent, f"{self.task.title} training: {config.name}", facts)

    def _check_something_trained(self) -> None:
        """A run whose every step was skipped trained nothing: it must not end like one that did (its
        last.pt would hold the starting weights, marked finished)."""
        if not self.steps_run or self.skipped_run < self.steps_run:
            return
        raise TrainingStopped(f"sigma {self.sigma:g}: every one of the {self.steps_run} steps was skipped (a non-finite "
                              "loss or gradient each time), so nothing was trained and the run is not marked "
                              "finished. Check the training data and lower --sigma, --lr or --dc-weight. Last good "
                              f"checkpoint: {self.folder.last_good or 'none'}", 3)

    def _count_nonfinite(self, skipped: torch.Tensor) -> None:
        """Count a skipped step, and the longest streak of them, on the device (nothing waits)."""
        s = skipped.to(torch.int64)
        self.skipped_total += s
        self.streak = (self.streak + 1) * s
        torch.maximum(self.worst_streak, self.streak, out=self.worst_streak)

    def _read_nonfinite(self) -> None:
        """Read the device's counts: log the steps skipped since the last read, and stop a run with
        --max-nonfinite of them in a row (the weights were kept, so the last checkpoint is good)."""
        total, worst = int(self.skipped_total), int(self.worst_streak)
        self.worst_streak.copy_(self.streak)
        new, self.skipped_read = total - self.skipped_read, total
        self.skipped_run += new
        step = self.position.step
        if new and self.main:
            self.log.write({"kind": "skipped", "step": step, "epoch": self.position.epoch,
                            "reason": "non-finite loss or gradient", "skipped": new, "skipped_total": total})
        if worst >= self.config.max_nonfinite:
            raise TrainingStopped(f"{worst} non-finite steps in a row by step {step} (sigma {self.sigma:g}): training "
                                  f"diverged. Last good checkpoint: {self.folder.last_good or 'none yet'}. Try a lower "
                                  "--lr or a larger --sigma.", 3)

    def _log_step(self, stats: dict, lr: float, bar) -> None:
        self._read_nonfinite()
        values = {k: self.dist.average(float(v)) for k, v in stats.items() if k != "skipped"}
        if not self.main:
            return
        self.log.write({"kind": "train", "step": self.position.step, "epoch": self.position.epoch, "lr": lr,
                        "time": round(time.time() - self.started, 2), **values, "skipped_total": self.skipped_read})
        epoch = f"epoch {self.position.epoch}/{self.config.epochs}"
        if "w_distance" in values:  # R only once G trains (not during --critic-warmup)
            bar.set_postfix_str(f"{epoch}, W={values['w_distance']:.3g}"
                                + (f", R={values['transport']:.3g}" if "transport" in values else ""))
        elif "l1" in values:
            bar.set_postfix_str(f"{epoch}, L1={values['l1']:.3g}")


# ----------------------------------------------------------------------------- train.py
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
            results = train(task, config, dist, resume=plan)
        else:
            config = command.config
            stamp = dist.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            if command.demo:
                config = demo_config(task, config, command.given, stamp, dist)
            config = replace(config, name=config.name or f"{config.cost}-{stamp}")
            results = train(task, config, dist)
        if command.demo and dist.is_main and results:
            from .demo import demo_report, score_wider
            result = results[-1]
            best = result.run_dir / ("best.pt" if (result.run_dir / "best.pt").is_file() else "last.pt")
            wider = score_wider(task, best, demo_root(task, config), resolve_device(config.device))
            print("\n" + demo_report(task, config, result, time.time() - started, wider, bool(command.resume)))
    finally:
        dist.close()


DEMO_DATA_FLAGS = ("trainset", "val_input", "val_gt")  # the demo's own: it chooses and scores on its photographs


def demo_root(task: Task, config: RunConfig) -> Path:
    """Where the demo keeps its built-in data: beside its runs."""
    return Path(config.out) / task.name / "demo-data"


def is_demo_run(task: Task, config: RunConfig) -> bool:
    """Whether a run trains on the demo's built-in data (a resumed demo gives its verdict again)."""
    from .demo import demo_paths
    from .system.files import same_file

    trainset = demo_paths(demo_root(task, config))["trainset"]
    return trainset.is_dir() and same_file(config.trainset, trainset)


def demo_config(task: Task, config: RunConfig, given: dict, stamp: str, dist) -> RunConfig:
    """The demo's run: its built-in data (made once) and a fresh name."""
    from .demo import build_demo_data, demo_paths

    mixed = [flag_of(name) for name in DEMO_DATA_FLAGS if name in given]
    if mixed:
        raise InputError(f"{', '.join(mixed)}: --demo trains and validates on its own built-in photographs; "
                         f"without --demo, the same flags train on your data")
    root = demo_root(task, config)
    if dist.is_main:
        build_demo_data(task, root)
    dist.barrier()
    paths = demo_paths(root)
    return replace(config, name=config.name or f"demo-{stamp}", trainset=str(paths["trainset"]),
                   val_input=str(paths["val_input"]), val_gt=str(paths["val_gt"]))
