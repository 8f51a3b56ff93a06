"""A training run (METHOD 5): one model per transport weight sigma, each in
``<out>/<task>/<name>/sigma-<s>/``, around the method of ``common.sot``.

Each sigma's folder holds ``config.json``, ``last.pt`` (each epoch and at the end), ``step-NNNNNNNN.pt``
(every ``--save-every`` steps, the newest two kept), ``best.pt`` (best validation PSNR), ``state.json``
(which checkpoint is newest and whether the run finished), ``metrics.jsonl`` (one JSON object per
logged step and per validation) and ``samples/epoch-NNNN.png`` (input | output | clean). The sweep's
own flags and its training files are in ``<out>/<task>/<name>/run.json``.

Nothing is lost to a crash: checkpoints are written atomically, a run resumes exactly where its
newest checkpoint left it (weights, optimisers, RNG states, the position inside the epoch), Ctrl-C or
SIGTERM finishes the step and saves, and non-finite steps are skipped rather than trained on. A run
folder is locked (``.lock``) for the run's life, and a resume checks that the training files are
the ones ``run.json`` recorded. See docs/RELIABILITY.md.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_weights, read_checkpoint, save_checkpoint, state_bytes
from .data import UnpairedH5Dataset, UnpairedSampler
from .h5format import rgb_problem
from .devices import (Local, make_deterministic, resolve_device, resolve_precision, resolve_threads, rng_state,
                      seed_everything, set_rng_state, to_device)
from .errors import InputError, TrainingStopped, note, on_stop_signals, restore_signal_handlers
from .evaluate import evaluate
from .files import RunLock, check_can_write, remove_stale_temporaries, write_failure
from .networks import Critic, Generator
from .pairs import Pair
from .runlog import MetricsLog, json_ready, read_state, save_samples, sigma_dir_name, write_json
from .recipe import WeightAverage, extra_generator_cost, start_as_identity
from .sot import learning_rate, make_optimizers, set_learning_rate, supervised_step, train_step
from .tasks import Task, model_input

KEEP_STEP_CHECKPOINTS = 2


def all_finite(state_dict: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


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


class StopRequest:
    """Turns SIGINT/SIGTERM into a request that the loop honours after the current step; a second
    Ctrl-C stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        self._previous = on_stop_signals(self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        tqdm.write(f"{name} received: finishing this step and saving (Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        restore_signal_handlers(self._previous)


# ----------------------------------------------------------------------------- one sigma
class SigmaRun:
    """Training of one model (one sigma): builds or resumes its state, runs the loop, saves."""

    def __init__(self, task: Task, args, sigma: float, seed: int, run_dir: Path, device: torch.device,
                 dataset: UnpairedH5Dataset, val_pairs: list[Pair] | None, stop: StopRequest, dist=None,
                 resume_from: Path | None = None, pretrained: dict | None = None):
        self.task, self.args, self.sigma, self.seed = task, args, sigma, seed
        self.pretrained = pretrained  # the --pretrained checkpoint, read (and checked) once by train()
        self.run_dir, self.device, self.dataset, self.val_pairs = run_dir, device, dataset, val_pairs
        self.stop, self.dist = stop, dist or Local()
        self.main = self.dist.is_main
        seed_everything(seed)
        self.generator, self.critic = self._networks()
        if self.critic is not None:
            self.dist.broadcast_module(self.critic)  # the generator's DDP wrapper does this for G
        self.trained_generator = self.dist.wrap_generator(self.generator)
        self.opt_g, self.opt_d = make_optimizers(self.generator, self.critic, args.lr)
        # --ema: the generator's weight average is what is validated, kept as best.pt and tested
        self.average = WeightAverage(self.generator, args.ema) if args.ema else None
        self.epoch, self.batch_in_epoch, self.step, self.best = 1, 0, 0, None
        self.skipped, self.nonfinite_streak, self.last_good = 0, 0, None
        self.steps_run, self.skipped_run = 0, 0  # this session's, for the check that something trained
        self.last_val: dict = {}
        if resume_from is not None:
            self._resume(resume_from)
        self.config = json_ready({**vars(args), "task": task.name, "sigma": sigma, "seed": seed,
                                  "device": str(device), "world_size": self.dist.world,
                                  "torch": str(torch.__version__), "data": dataset.describe()})
        self.log = self._open_log(resumed=resume_from is not None) if self.main else None
        self.sampler = self._sampler()

    # -- building
    def _networks(self) -> tuple[Generator, Critic]:
        args, device = self.args, self.device
        generator = Generator(width=args.gen_width, increment=args.gen_increment,
                              null_space_scale=self.task.scale if args.null_space else 1)
        if args.init == "identity":
            start_as_identity(generator)
        critic = None if args.supervised else Critic(hidden=self.task.critic_hidden, input_size=self.task.patch,
                                                     width=args.critic_width, init=args.critic_init)
        if args.pretrained:
            ckpt = self.pretrained if self.pretrained is not None else read_checkpoint(args.pretrained)
            load_weights(generator, ckpt["generator"], args.pretrained, "generator")
            if ckpt.get("critic") and critic is not None:
                load_weights(critic, ckpt["critic"], args.pretrained, "critic")
            if self.dist.is_main:
                print(f"initialised from {args.pretrained}")
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        generator = generator.to(device, memory_format=memory_format)
        return generator, critic.to(device, memory_format=memory_format) if critic is not None else None

    def _open_log(self, resumed: bool) -> MetricsLog:
        """The run folder's config.json (a new run) and its metrics log, cut back to the step resumed."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_json(self.run_dir / "config.json", {**self.config, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        # A new run in a folder that held one (with no checkpoints: train() refuses the others) starts
        # its log afresh (step 0 keeps nothing): old lines would read as this run's.
        return MetricsLog(self.run_dir / "metrics.jsonl", tensorboard=not self.args.no_tensorboard,
                          resume_step=self.step if resumed else 0)

    def _sampler(self) -> UnpairedSampler:
        sampler = UnpairedSampler(len(self.dataset), self.dataset.num_labels, self.args.batchSize, self.seed,
                                  self.dist.rank, self.dist.world, paired=self.args.supervised)
        if self.batch_in_epoch > sampler.batches_per_epoch:
            # resumed on fewer patches (--resume-new-data): the saved position is past the new epoch's end
            self.batch_in_epoch = sampler.batches_per_epoch
        return sampler

    def _resume(self, path: Path) -> None:
        ckpt = read_resume_checkpoint(self.task, path, self.device)
        try:
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
            position = [ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position) or position[0] < 1:
                raise ValueError(f"epoch, batch and step {position} are not a position in a run")
            self.epoch, self.batch_in_epoch, self.step = position
            self.best, self.skipped = ckpt.get("best_psnr"), ckpt.get("skipped_steps", 0)
            set_rng_state(ckpt["rng"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise InputError(f"{path}: cannot resume from this checkpoint, it is damaged "
                             f"({type(exc).__name__}: {reason}){intact_alternative(self.task, path)}") from None
        self.last_good = path
        if self.main:
            print(f"sigma {self.sigma:g}: resuming from {path} (epoch {self.epoch}, step {self.step})")

    # -- saving
    def _state(self) -> dict:
        critic = self.critic
        return {"task": self.task.name,
                "arch": {"generator": self.generator.arch, "critic": critic.arch if critic is not None else None},
                "generator": self.generator.state_dict(), "critic": critic.state_dict() if critic is not None else None,
                "generator_ema": self.average.model.state_dict() if self.average is not None else None,
                "optim_g": self.opt_g.state_dict(), "optim_d": self.opt_d.state_dict() if critic is not None else None,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "sigma": float(self.sigma), "loss": self.args.loss, "best_psnr": self.best,
                "skipped_steps": self.skipped, "rng": rng_state(self.device), "config": self.config}

    def save(self, name: str, finished: bool = False) -> Path:
        """Write a checkpoint and point state.json at it; never a non-finite one."""
        path = self.run_dir / name
        if not self.main:
            return path
        state = self._state()
        if not all(all_finite(state[k] or {}) for k in ("generator", "critic", "generator_ema")):
            raise TrainingStopped(f"refusing to save non-finite weights at step {self.step}; "
                                  f"last good checkpoint: {self.last_good}", 3)
        previous = self.last_good
        try:
            save_checkpoint(path, state)
        except OSError as exc:  # a full disk (torch.save's own error is turned back into this one)
            kept = (f"; the previous checkpoint {previous} is intact" if previous
                    else "; no checkpoint of this sigma was saved before")
            raise InputError(write_failure(path, exc, state_bytes(state), "checkpoint") + kept) from None
        if name != "best.pt":
            write_json(self.run_dir / "state.json", {"checkpoint": name, "step": self.step, "epoch": self.epoch,
                                                     "sigma": self.sigma, "finished": finished})
            self.last_good = path
        if name.startswith("step-"):
            for old in sorted(self.run_dir.glob("step-*.pt"))[:-KEEP_STEP_CHECKPOINTS]:
                old.unlink(missing_ok=True)
        return path

    # -- the loop: epochs of iterations
    def train(self) -> RunResult:
        self.generator.train()
        self.started = time.time()
        self.batch = None  # the latest (input, output, clean), for the epoch's sample picture
        finished = _done(self.args, self.step, self.epoch)
        while not finished:
            finished = self._epoch()
        if self.log is not None:
            self.log.close()
        return RunResult(self.sigma, self.run_dir, self.step, self.epoch - 1, self.best, self.last_val,
                         self.steps_run, self.skipped_run)

    def _epoch(self) -> bool:
        """Train the rest of the current epoch; returns whether the run is finished."""
        lr = learning_rate(self.args.lr, self.epoch, self.args.step)
        set_learning_rate(self.opt_g, self.opt_d, lr)
        bar = tqdm(self._loader(), desc=f"sigma {self.sigma:g} epoch {self.epoch}/{self.args.nEpochs}", unit="it",
                   leave=False, dynamic_ncols=True, disable=not self.main,
                   initial=self.batch_in_epoch, total=self.sampler.batches_per_epoch)
        finished = False
        for degraded, clean in bar:
            finished = self._iteration(degraded, clean, lr, bar)
            if finished:
                break
            self._check_stop(f"step-{self.step:08d}.pt")
        bar.close()
        return self._end_epoch(finished)

    def _loader(self) -> DataLoader:
        threads = self.args.threads
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        # The workers' seeds come from this generator, not the global RNG, so that starting a loader
        # mid-epoch on resume draws nothing the uninterrupted run would not have drawn.
        return DataLoader(self.dataset, batch_size=self.args.batchSize // self.dist.world, sampler=self.sampler,
                          num_workers=threads, pin_memory=self.device.type == "cuda", drop_last=True,
                          prefetch_factor=4 if threads else None,
                          generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def _iteration(self, degraded: torch.Tensor, clean: torch.Tensor, lr: float, bar) -> bool:
        """One training step and what is due after it (log, step checkpoint, validation); returns
        whether --max-steps is reached."""
        args = self.args
        x = model_input(self.task, to_device(degraded, self.device), args.align_corners)
        clean = to_device(clean, self.device)
        update_generator = args.supervised or self.step >= args.critic_warmup
        if args.supervised:
            stats, fake = supervised_step(self.trained_generator, self.opt_g, x, clean, args.precision, self.dist)
        else:
            stats, fake = train_step(self.trained_generator, self.critic, self.opt_g, self.opt_d, x, clean,
                                     self.sigma, args.loss, args.precision, self.dist, extra_generator_cost(args.dc_weight),
                                     update_generator=update_generator)
        if self.average is not None and update_generator and not stats["skipped"]:
            self.average.update(self.generator)
        self.batch = (x, fake, clean)
        self.step += 1
        self.batch_in_epoch += 1
        self.steps_run += 1
        self._count_nonfinite(stats)
        finished = bool(args.max_steps and self.step >= args.max_steps)
        if self.step % args.log_every == 0 or self.step == 1 or finished:
            self._log_step(stats, lr, bar)
        if args.save_every and self.step % args.save_every == 0 and not finished:
            self.save(f"step-{self.step:08d}.pt")
        if self.val_pairs and args.val_steps and self.step % args.val_steps == 0 and not finished:
            if self.main:
                self._validate_and_keep_best()
            self.dist.barrier()
        return finished

    def _end_epoch(self, finished: bool) -> bool:
        """After an epoch (or the run's last step): the sample picture, the next epoch, validation when
        due, and last.pt; returns whether the run is finished."""
        args = self.args
        epoch_done = self.batch_in_epoch >= self.sampler.batches_per_epoch
        if (epoch_done or finished) and self.main and self.batch is not None:
            picture = self.run_dir / "samples" / f"epoch-{self.epoch:04d}.png"
            self.log.image("samples", save_samples(picture, *self.batch), self.step)
        if epoch_done:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finished = finished or self.epoch > args.nEpochs
        if finished:
            self._check_something_trained()
        if self.val_pairs and self.main and ((epoch_done and (self.epoch - 1) % args.val_every == 0) or finished):
            self._validate_and_keep_best()
        self.dist.barrier()
        self.save("last.pt", finished=finished)
        if not finished:
            self._check_stop("last.pt")
        return finished

    def _check_stop(self, ckpt_name: str) -> None:
        # Every process must stop after the same step, whichever of them got the signal.
        if not self.dist.any_true(self.stop.signum is not None):
            return
        signum = self.stop.signum or signal.SIGTERM
        path = self.save(ckpt_name)
        name = signal.Signals(signum).name
        raise TrainingStopped(f"stopped by {name} at step {self.step} (sigma {self.sigma:g}); saved {path}.\n"
                              f"Resume with: {resume_command(self.task, self.args, self.dist)}", 128 + signum)

    # -- validation and logs
    def _validate_and_keep_best(self) -> None:
        generator = self.average.model if self.average is not None else self.generator
        ev = evaluate(generator, self.val_pairs, self.task, self.device, align_corners=self.args.align_corners,
                      precision=self.args.precision, progress=False)
        self.generator.train()
        val = {"psnr": ev.mean("psnr"), "ssim": ev.mean("ssim"), "input_psnr": ev.mean("input_psnr")}
        is_best = self.best is None or val["psnr"] > self.best
        self.best = val["psnr"] if is_best else self.best
        self.log.write({"kind": "val", "step": self.step, "epoch": self.epoch, **val, "best_psnr": self.best})
        tqdm.write(f"sigma {self.sigma:g} step {self.step}: validation PSNR {val['psnr']:.2f} dB "
                   f"(input {val['input_psnr']:.2f} dB, best {self.best:.2f} dB)")
        if is_best:
            self.save("best.pt")
        self.last_val = val

    def _check_something_trained(self) -> None:
        """A run whose every step was skipped trained nothing: it must not end like one that did (its
        last.pt would hold the starting weights, marked finished)."""
        if not self.steps_run or self.skipped_run < self.steps_run:
            return
        raise TrainingStopped(f"sigma {self.sigma:g}: every one of the {self.steps_run} steps was skipped (a non-finite "
                              "loss or gradient each time), so nothing was trained and the run is not marked "
                              "finished. Check the training data and lower --sigma, --lr or --dc-weight. Last good "
                              f"checkpoint: {self.last_good or 'none'}", 3)

    def _count_nonfinite(self, stats: dict) -> None:
        if not stats["skipped"]:
            self.nonfinite_streak = 0
            return
        self.skipped += 1
        self.skipped_run += 1
        self.nonfinite_streak += 1
        if self.main:
            self.log.write({"kind": "skipped", "step": self.step, "epoch": self.epoch,
                            "reason": "non-finite loss or gradient", "skipped_total": self.skipped})
        if self.nonfinite_streak >= self.args.max_nonfinite:
            raise TrainingStopped(f"{self.nonfinite_streak} non-finite steps in a row at step {self.step} "
                                  f"(sigma {self.sigma:g}): training diverged. Last good checkpoint: "
                                  f"{self.last_good or 'none yet'}. Try a lower --lr or a larger --sigma.", 3)

    def _log_step(self, stats: dict, lr: float, bar) -> None:
        values = {k: self.dist.average(float(v)) for k, v in stats.items() if k != "skipped"}
        if not self.main:
            return
        self.log.write({"kind": "train", "step": self.step, "epoch": self.epoch, "lr": lr,
                        "time": round(time.time() - self.started, 2), **values, "skipped_total": self.skipped})
        if "w_distance" in values:  # R only once G trains (not during --critic-warmup)
            bar.set_postfix(W=f"{values['w_distance']:.3g}",
                            **({"R": f"{values['transport']:.3g}"} if "transport" in values else {}))
        elif "l1" in values:
            bar.set_postfix(L1=f"{values['l1']:.3g}")


# ----------------------------------------------------------------------------- the sweep
def _done(args, step: int, next_epoch: int) -> bool:
    """Whether a run at ``step``, about to start ``next_epoch``, has nothing left to do (a resume may
    have raised --max-steps or --nEpochs since it finished)."""
    return bool(args.max_steps and step >= args.max_steps) or next_epoch > args.nEpochs

def read_resume_checkpoint(task: Task, path: Path, map_location="cpu") -> dict:
    """A checkpoint that can resume a run (weights, optimisers and RNG states), or an error that
    names, for a damaged one, the newest intact checkpoint beside it and how to resume from that."""
    try:
        ckpt = read_checkpoint(path, map_location=map_location)
    except InputError as exc:
        raise InputError(f"{exc}{intact_alternative(task, path)}") from None
    if ckpt.get("format") == "authors":
        raise InputError(f"{path}: the authors' checkpoints hold no optimiser state; "
                         "use --pretrained to start from their weights")
    if "optim_g" not in ckpt or "rng" not in ckpt:
        raise InputError(f"{path}: this checkpoint cannot resume a run (no optimiser or RNG state)")
    return ckpt


def intact_alternative(task: Task, damaged: Path) -> str:
    """For the error about a damaged checkpoint: the newest other checkpoint of its folder that can
    resume the run, and the command that resumes from it (empty when there is none)."""
    candidates = [p for p in damaged.parent.glob("*.pt") if p.name != "best.pt" and p != damaged]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            ckpt = read_checkpoint(path)
        except InputError:
            continue
        if "optim_g" in ckpt and isinstance(ckpt.get("step"), int):
            return (f". {path.name} (step {ckpt['step']}) is intact: resume from it with python {task.name}/train.py "
                    f"--resume {path}")
    return ". No other checkpoint of this sigma is intact"


def resume_command(task: Task, args, dist=None) -> str:
    launcher = f"torchrun --nproc_per_node={dist.world}" if dist is not None and dist.world > 1 else "python"
    return f"{launcher} {task.name}/train.py --resume auto --name {args.name} --out {args.out}"


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the output folder ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- checks before a run starts
def check_sigma_folders(sigmas: list[float]) -> None:
    """Two sigmas that print alike (10 and 10.0000001) would share one folder and mix their files."""
    seen: dict[str, float] = {}
    for sigma in sigmas:
        name = sigma_dir_name(sigma)
        if name in seen:
            same = "is given twice" if seen[name] == sigma else f"and {seen[name]!r} both map to"
            raise InputError(f"--sigma {sigma!r} {same} the folder {name}; give distinct values")
        seen[name] = sigma


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


def check_resumed_data(args, dataset: UnpairedH5Dataset) -> None:
    """A resume continues the epoch's sample order where it stopped: on other files, or the same files
    with other contents, that order means something else. Refused unless --resume-new-data."""
    saved = getattr(args, "trainset_files", None)
    if not isinstance(saved, list) or not all(isinstance(e, dict) for e in saved):
        note(f"{args.trainset}: the run predates the record of its training files; they cannot be compared")
        return
    changes = data_changes(saved, data_files(dataset))
    if not changes:
        return
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    if getattr(args, "resume_new_data", False):
        note(f"{args.trainset}: the training data changed since the run started ({shown}); continuing on the new "
             "data as --resume-new-data asks (this epoch's remaining order is drawn over the new files)")
        return
    raise InputError(f"{args.trainset}: the training data changed since the run started ({shown}); restore the "
                     "files, start a new run (another --name), or give --resume-new-data to continue on them")


def check_validation_images(task: Task, pairs: list[Pair]) -> None:
    """Read every validation image now: one that is unreadable or of the wrong size stops the run
    before it writes anything, not at its first validation."""
    from .evaluate import match_gt
    from .images import read_image

    for pair in pairs:
        h, w = read_image(pair.input).shape[:2]
        match_gt(read_image(pair.gt), (h * task.scale, w * task.scale), pair, task.scale)


def check_network_sizes(task: Task, args, device: torch.device) -> None:
    """Refuse network widths whose weights alone cannot be held (a --gen-width of 200000 would ask the
    allocator for terabytes and die with its traceback): counted on the meta device, nothing allocated."""
    from .files import available_memory, human_bytes

    with torch.device("meta"):
        networks = {"generator": Generator(width=args.gen_width, increment=args.gen_increment)}
        if not args.supervised:
            networks["critic"] = Critic(hidden=task.critic_hidden, input_size=task.patch, width=args.critic_width)
    # float32 weights, their gradients and RMSprop's running average, and a copy (--ema, checkpoints)
    needed = sum(4 * 4 * sum(p.numel() for p in net.parameters()) for net in networks.values())
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    else:
        available = available_memory()
    if available is not None and needed > available:
        counts = ", ".join(f"{name} {sum(p.numel() for p in net.parameters()):,} parameters"
                           for name, net in networks.items())
        raise InputError(f"--gen-width {args.gen_width} --gen-increment {args.gen_increment} --critic-width "
                         f"{args.critic_width}: the networks ({counts}) need about {human_bytes(needed)} for their "
                         f"weights and optimiser state alone; {human_bytes(available)} is available on {device}")


def check_pretrained(task: Task, args) -> dict:
    """Read the --pretrained checkpoint once and make sure its weights fit these networks."""
    from .checkpoint import build_generator

    ckpt = read_checkpoint(args.pretrained)
    build_generator(ckpt, args.pretrained)  # a damaged or crafted checkpoint is refused as test.py refuses it
    trained = ckpt.get("task")
    if isinstance(trained, str) and trained != task.name:
        note(f"{args.pretrained}: trained for {trained}; fine-tuning it for {task.title}")
    load_weights(Generator(width=args.gen_width, increment=args.gen_increment), ckpt["generator"],
                 args.pretrained, "generator")
    if ckpt.get("critic") and not args.supervised:
        load_weights(Critic(hidden=task.critic_hidden, input_size=task.patch, width=args.critic_width),
                     ckpt["critic"], args.pretrained, "critic")
    return ckpt


def train(task: Task, args, dist=None, resume_from: dict | None = None) -> list[RunResult]:
    """Train one model per sigma of ``args.sigma``; returns where each went and how it did.

    ``resume_from`` maps a sigma to the checkpoint it continues from; sigmas whose runs finished are
    skipped when resuming.

    Everything that can be checked is checked before the run folder is touched (data, validation
    images, --pretrained, batch size); the run folder is then locked for the run's life.
    """
    dist = dist or Local()
    if args.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus
    if args.deterministic:
        make_deterministic()
    if args.supervised:
        args.sigma = [0.0]  # no transport cost: one model
    check_sigma_folders(args.sigma)
    run_root = Path(args.out) / task.name / args.name
    if dist.is_main:
        check_can_write(run_root)  # creates nothing: a bad --out fails before the data are read
    device = dist.device if hasattr(dist, "device") else resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    args.threads = resolve_threads(args.threads, device)
    most = 4 * (os.cpu_count() or 1)
    if args.threads > max(16, most):
        raise InputError(f"--threads {args.threads}: more data-loader processes than this machine's "
                         f"{os.cpu_count()} cores can use; give at most {max(16, most)}")
    if device.type == "cuda" and not args.deterministic:
        torch.backends.cudnn.benchmark = True
    dataset = UnpairedH5Dataset(args.trainset, scale=task.scale, layout=args.layout, raw_uint8=True)
    if rgb_problem(dataset.data_shape[0]):
        raise InputError(f"{dataset.parts[0].path}: {rgb_problem(dataset.data_shape[0])}")
    side = dataset.label_shape[1:]
    if side != (task.patch, task.patch) and not args.supervised:
        raise InputError(f"{dataset.parts[0].path}: clean patches are {side[0]}x{side[1]} but the critic takes "
                         f"{task.patch}x{task.patch}")
    if args.batchSize % dist.world:
        raise InputError(f"--batchSize {args.batchSize} must divide among {dist.world} processes "
                         "(it is the global batch)")
    if args.supervised and len(dataset) != dataset.num_labels:
        raise InputError(f"{args.trainset}: --supervised needs paired files ('data'[i] degraded from 'label'[i]), "
                         f"but they hold {len(dataset)} and {dataset.num_labels} patches")
    if len(dataset) < args.batchSize:
        raise InputError(f"{args.trainset}: only {len(dataset)} degraded patches, fewer than one batch "
                         f"(--batchSize {args.batchSize})")
    val_pairs = None
    if args.val_gt and not args.val_input:
        raise InputError("--val-gt needs --val-input")
    if args.val_input:
        from .pairs import find_pairs
        val_pairs = find_pairs(args.val_input, args.val_gt)
        unpaired = [p.input.name for p in val_pairs if p.gt is None]
        if unpaired:
            raise InputError(f"{args.val_input}: validation needs ground truth; give --val-gt or a test set's "
                             f"folder in a known layout (no ground truth for {', '.join(unpaired[:5])})")
        check_validation_images(task, val_pairs)
    check_network_sizes(task, args, device)
    pretrained = check_pretrained(task, args) if args.pretrained else None
    if resume_from is not None:
        check_resumed_data(args, dataset)
    args.trainset_files = data_files(dataset)
    plan = sigma_plan(args, run_root, resume_from)  # reads the state files now: a damaged one stops us here
    if resume_from is None:  # a new run: never over an earlier run's checkpoints (its rotation would mix them)
        for _, _, run_dir, _, _ in plan:
            if any(run_dir.glob("*.pt")):
                raise InputError(f"{run_dir}: holds an earlier run's checkpoints; continue it with --resume auto "
                                 f"--name {args.name}, or give another --name")
    for _, _, _, start, done in plan:  # a damaged checkpoint is refused before run.json is rewritten
        if start is not None and not done:
            read_resume_checkpoint(task, start)
    if args.seed is None:
        args.seed = dist.broadcast_object(random.SystemRandom().randint(1, 10**6))
    lock = None
    if dist.is_main:
        check_writable(run_root)
        lock = RunLock(run_root).acquire()  # held until the run ends; the OS drops it if the process dies
    try:
        if dist.is_main:
            remove_stale_temporaries(run_root, locked=True)
            # --resume-new-data allows one resume on changed data, not every later one
            write_json(run_root / "run.json", {k: v for k, v in vars(args).items() if k != "resume_new_data"})
            method = "supervised L1 (paired)" if args.supervised else f"cost {args.loss}"
            print(f"{task.title}: {dataset.describe()}; device {device} ({args.precision}"
                  f"{f', {dist.world} processes' if dist.world > 1 else ''}); {method}; "
                  f"sigma {', '.join(f'{s:g}' for s in args.sigma)}; writing to {run_root}")
        return _train_sigmas(task, args, dist, plan, device, dataset, val_pairs, pretrained)
    finally:
        if lock is not None:
            lock.release()


def sigma_plan(args, run_root: Path, resume_from: dict | None) -> list[tuple]:
    """Per sigma: (index, sigma, its folder, the checkpoint it resumes from or None, whether it is done)."""
    plan = []
    for i, sigma in enumerate(args.sigma):
        run_dir = run_root / sigma_dir_name(sigma)
        start, done = (resume_from or {}).get(sigma), False
        if resume_from is not None and start is None:
            state = read_state(run_dir)
            done = bool(state and state.get("finished") and _done(args, state.get("step", 0), state.get("epoch", 0)))
            start = run_dir / state["checkpoint"] if state else None
        plan.append((i, sigma, run_dir, start, done))
    return plan


def _train_sigmas(task: Task, args, dist, plan: list[tuple], device, dataset, val_pairs,
                  pretrained) -> list[RunResult]:
    results = []
    with StopRequest() as stop:
        for i, sigma, run_dir, start, done in plan:
            if done:
                if dist.is_main:
                    print(f"sigma {sigma:g}: finished earlier, skipped")
                continue
            run = SigmaRun(task, args, sigma, args.seed + i, run_dir, device, dataset, val_pairs, stop, dist, start,
                           pretrained)
            results.append(run.train())
            r = results[-1]
            if dist.is_main:
                val = f", validation PSNR {r.last_val['psnr']:.2f} dB" if r.last_val else ""
                skipped = f" ({r.skipped_run} of this run's {r.steps_run} skipped as non-finite)" if r.skipped_run else ""
                print(f"sigma {sigma:g}: {r.step} steps{skipped}, {r.epoch} epoch(s){val}; checkpoints in {r.run_dir}")
                if r.skipped_run * 2 > r.steps_run:
                    note(f"sigma {sigma:g}: most steps were skipped as non-finite; the model trained on fewer than "
                         "half of them (see 'skipped' in metrics.jsonl)")
    return results
