"""A training run: one model per transport weight sigma, each in ``<out>/<task>/<name>/sigma-<s>/``,
around the iteration of ``common.sot``.

Read top to bottom: :func:`train` has everything that can refuse the run checked
(``common.training.preflight``, before anything is written), locks the run folder and records the
run in ``run.json``, then trains each sigma (:class:`SigmaRun`: its networks, its position, and the
loop in :meth:`SigmaRun.train`). What a run folder holds and how its checkpoints are kept is
``common.training.run_folder``; the command line that starts all this is ``common.cli.train``.

Nothing is lost to a crash: checkpoints are written atomically, a run resumes exactly where its
newest checkpoint left it (weights, optimisers, RNG states, the position inside the epoch), Ctrl-C or
SIGTERM finishes the step and saves, and non-finite steps are skipped rather than trained on. A run
folder is locked (``.lock``) for the run's life, and a resume checks that the training files are
the ones ``run.json`` recorded. See docs/RELIABILITY.md.
"""
from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.loader import UnpairedSampler
from ..demo import is_demo_run
from ..evaluation.evaluate import NonFiniteOutput, evaluate
from ..evaluation.figures import save_samples
from ..evaluation.report import ReportRefresher
from ..networks import Critic, Generator
from ..recipe import WeightAverage, extra_generator_cost, generator_trains, start_as_identity
from ..sot import learning_rate, make_optimizers, set_learning_rate, supervised_step, train_step
from ..system.errors import InputError, TrainingStopped
from ..system.files import LOCK_NAME, RunLock, folders_to_make, remove_made
from ..system.signals import StopRequest
from ..system.text import note, printable
from ..tasks import Task, model_input
from .checkpoint import load_weights
from .choice import recommendation_line, sigma_choices
from .config import ResumePlan, RunConfig, run_record
from .devices import CapturedStep, Local, make_deterministic, rng_state, seed_everything, set_rng_state, to_device
from .preflight import Prepared, SigmaPlan, preflight, run_is_over
from .run_folder import json_ready, read_state, remove_stale_run_temporaries, write_json


# ----------------------------------------------------------------------------- the run
def train(task: Task, config: RunConfig, dist=None, resume: ResumePlan | None = None) -> list[RunResult]:
    """Train one model per sigma of ``config.sigma``; returns where each went and how it did.

    ``resume`` (``common.training.config.plan_resume``) continues a run: each sigma from its newest checkpoint
    (or the one named), finished sigmas skipped. Everything that can be checked is checked before the
    run folder is touched; the folder is then locked for the run's life.
    """
    dist = dist or Local()
    if config.supervised:
        config = replace(config, sigma=(0.0,))  # no transport cost: one model
    if config.deterministic:
        make_deterministic()
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
          f"sigma {', '.join(f'{s:g}' for s in p.config.sigma)}; writing to {printable(p.run_root)}")


def train_sigmas(p: Prepared) -> list[RunResult]:
    results = []
    with StopRequest() as stop:
        for plan in p.sigmas:
            sigma = plan.sigma
            if plan.done:
                if p.dist.is_main:
                    print(f"sigma {sigma:g}: finished earlier, skipped")
                continue
            r = SigmaRun(p, plan, stop).train()
            results.append(r)
            if p.dist.is_main:
                val = f", last validation: {BestSoFar.measures(r.last_val)}" if r.last_val else ""
                skipped = f" ({r.skipped_run} of this run's {r.steps_run} skipped as non-finite)" if r.skipped_run else ""
                print(f"sigma {sigma:g}: {r.step} step(s){skipped}, {r.epoch} full epoch(s){val}; "
                      f"checkpoints in {printable(r.run_dir)}")
                if r.skipped_run * 2 > r.steps_run:
                    note(f"sigma {sigma:g}: most steps were skipped as non-finite; the model trained on fewer than "
                         "half of them (see 'skipped' in metrics.jsonl)")
    line = recommendation_line(sigma_choices(p.run_root)) if p.dist.is_main else None
    if line:
        print(line)
    return results


def resume_command(task: Task, config: RunConfig, dist=None) -> str:
    launcher = f"torchrun --nproc_per_node={dist.world}" if dist is not None and dist.world > 1 else "python"
    demo = " --demo" if is_demo_run(task, config) else ""
    return f"{launcher} {task.name}/train.py --resume auto --name {config.name} --out {config.out}{demo}"


# ----------------------------------------------------------------------------- one sigma
@dataclass
class RunResult:
    sigma: float
    run_dir: Path
    step: int
    epoch: int
    best_psnr: float | None   # the best validation PSNR seen (whatever kept best.pt)
    last_val: dict = field(default_factory=dict)
    kept_val: dict = field(default_factory=dict)  # the validation of the checkpoint kept as best.pt
    steps_run: int = 0      # steps taken by this process now (a resume counts from where it started)
    skipped_run: int = 0    # of those, skipped as non-finite


@dataclass
class BestSoFar:
    """A sigma's best validation so far by each measure (PSNR: higher is better; the no-reference score:
    lower is), and the validation record of the checkpoint kept as best.pt."""
    psnr: float | None = None
    score: float | None = None
    kept: dict = field(default_factory=dict)

    def update(self, val: dict, select_by: str) -> bool:
        """Take a validation's measures; whether its checkpoint is the best by ``select_by``."""
        better_psnr = val["psnr"] is not None and (self.psnr is None or val["psnr"] > self.psnr)
        better_score = val["score"] is not None and (self.score is None or val["score"] < self.score)
        self.psnr = val["psnr"] if better_psnr else self.psnr
        self.score = val["score"] if better_score else self.score
        return better_psnr if select_by == "psnr" else better_score

    def describe(self, val: dict) -> str:
        """``PSNR 17.20 dB (input 11.69 dB, best 17.41 dB), no-reference score 0.495 (input 0.612, best 0.490)``."""
        parts = []
        if val["psnr"] is not None:
            parts.append(f"PSNR {val['psnr']:.2f} dB (input {val['input_psnr']:.2f} dB, best {self.psnr:.2f} dB)")
        if val["score"] is not None:
            parts.append(f"no-reference score {val['score']:.3f} (input {val['input_score']:.3f}, best "
                         f"{self.score:.3f})")
        return ", ".join(parts)

    @staticmethod
    def measures(val: dict) -> str:
        """``PSNR 17.20 dB, no-reference score 0.495``: what a validation measured."""
        parts = [f"PSNR {val['psnr']:.2f} dB"] if val.get("psnr") is not None else []
        if val.get("score") is not None:
            parts.append(f"no-reference score {val['score']:.3f}")
        return ", ".join(parts)


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
                print(f"initialised from {printable(config.pretrained)}")
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

    def __init__(self, p: Prepared, plan: SigmaPlan, stop: StopRequest):
        self.p, self.config, self.task, self.dist = p, p.config, p.task, p.dist
        self.plan, self.sigma, self.folder, self.stop = plan, plan.sigma, plan.folder, stop
        self.seed, self._timed_from = p.resolved.seed + plan.index, time.time()
        start = plan.start
        self.main = self.dist.is_main
        seed_everything(self.seed)
        self.nets = Networks(p)
        self.extra_cost = extra_generator_cost(self.config.dc_weight)
        self.captured = CapturedStep(self._sot_step) if p.resolved.cuda_graphs else None
        self.position, self.last_val = Position(), {}
        self.best = BestSoFar()
        self.steps_run, self.skipped_run = 0, 0  # since this process started, for the check that something trained
        skipped = 0
        if start is not None:
            skipped = self._resume(start)
        self.nonfinite = NonFiniteSteps(p.device, skipped)
        self.record = sigma_record(p, self.sigma, self.seed)
        self.log = self.folder.open_log(None if start is not None else self.record,
                                   self.position.step if start is not None else None,
                                   self.config.tensorboard) if self.main else None
        self.report = run_report(p, self.folder.path.parent)
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
        self.last_epoch = self.final_epoch()
        while not finished:
            lr = learning_rate(config.lr, pos.epoch, config.lr_step_epochs)
            set_learning_rate(self.nets.opt_g, self.nets.opt_d, lr)
            bar.set_postfix_str(f"epoch {pos.epoch}/{self.last_epoch}")
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
        return RunResult(self.sigma, self.folder.path, pos.step, pos.epoch - 1, self.best.psnr, self.last_val,
                         self.best.kept, self.steps_run, self.skipped_run)

    def total_steps(self) -> int:
        """The steps of this sigma's whole run: --nEpochs of full batches, or --max-steps if fewer."""
        total = self.config.epochs * self.sampler.batches_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def final_epoch(self) -> int:
        """The epoch this sigma's run ends in: --nEpochs, or the one --max-steps stops in where that comes
        first (the bar read 'epoch 2/1000' for a run of 1,000 steps, two epochs of 500 batches)."""
        if not self.config.max_steps:
            return self.config.epochs
        pos, per_epoch = self.position, self.sampler.batches_per_epoch
        after_this_epoch = self.config.max_steps - pos.step - (per_epoch - pos.batch_in_epoch)
        return min(self.config.epochs, pos.epoch + max(0, -(-after_this_epoch // per_epoch)))

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
        later = sum(1 for s in self.p.sigmas if s.index > self.plan.index and not s.done)
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
        self.nonfinite.count(stats["skipped"])
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
        raise TrainingStopped((f"stopped by {name} at step {self.position.step} (sigma {self.sigma:g}); saved {path}.",
                               f"Resume with: {resume_command(self.task, self.config, self.dist)}"), 128 + signum)

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
            # checked by read_checkpoint
            self.best = BestSoFar(ckpt.get("best_psnr"), ckpt.get("best_score"), ckpt.get("best_kept") or {})
            skipped = ckpt.get("skipped_steps", 0)
            set_rng_state(ckpt["rng"], self.p.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise InputError(f"{path}: cannot resume from this checkpoint, it is damaged ({type(exc).__name__}: "
                             f"{reason}){self.folder.intact_alternative(self.task.name, path)}") from None
        self.folder.last_good = path
        if self.main:
            print(f"sigma {self.sigma:g}: resuming from {printable(path)} (epoch {self.position.epoch}, "
                  f"step {self.position.step})")
            newest = read_state(self.folder.path) or {}
            if isinstance(newest.get("step"), int) and newest["step"] > self.position.step:
                note(f"sigma {self.sigma:g}: {path.name} is at step {self.position.step}, behind this sigma's newest "
                     f"checkpoint ({newest.get('checkpoint')}, step {newest['step']}); training goes on from step "
                     f"{self.position.step} and replaces the later checkpoints as it reaches their steps")
        return skipped

    def _state(self) -> dict:
        pos = self.position
        return {"task": self.task.name, **self.nets.state(), "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch, "step": pos.step,
                "sigma": float(self.sigma), "loss": self.config.cost, "best_psnr": self.best.psnr,
                "best_score": self.best.score, "best_kept": self.best.kept,
                "skipped_steps": self.nonfinite.read_total, "rng": rng_state(self.p.device), "config": self.record}

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
                          align_corners=self.config.align_corners, precision=self.p.resolved.precision, progress=False,
                          reference=self.p.reference)
        except NonFiniteOutput as exc:  # finite weights, non-finite output: not a model to keep or score
            raise TrainingStopped(f"sigma {self.sigma:g} step {self.position.step}: the generator's output on the "
                                  f"validation image {printable(exc.image)} holds NaN or infinite values: training "
                                  f"diverged. Last good checkpoint: {self.folder.last_good or 'none yet'}. Try a "
                                  "lower --lr or a larger --sigma.", 3) from None
        self.nets.generator.train()
        means = ev.means
        val = {k: means.get(k) for k in ("psnr", "ssim", "input_psnr", "input_ssim", "score", "input_score")}
        step = self.position.step
        kept = self.best.update(val, self.p.select_by)
        record = {"kind": "val", "step": step, "epoch": self.position.epoch, **val, "best_psnr": self.best.psnr,
                  "best_score": self.best.score, "select_by": self.p.select_by, "kept": kept,
                  "reference_trained_on": self.p.reference.trained_on if self.p.reference is not None else None}
        self.log.write(record)
        tqdm.write(f"sigma {self.sigma:g} step {step}: validation {self.best.describe(val)}")
        if kept:
            self.best.kept = {k: v for k, v in record.items() if k not in ("kind", "kept")}
            self.save("best.pt")
        self.last_val = val
        self.report.request()

    def _check_something_trained(self) -> None:
        """A run whose every step was skipped trained nothing: it must not end like one that did (its
        last.pt would hold the starting weights, marked finished)."""
        if not self.steps_run or self.skipped_run < self.steps_run:
            return
        raise TrainingStopped(f"sigma {self.sigma:g}: every one of the {self.steps_run} steps was skipped (a non-finite "
                              "loss or gradient each time), so nothing was trained and the run is not marked "
                              "finished. Check the training data and lower --sigma, --lr or --dc-weight. Last good "
                              f"checkpoint: {self.folder.last_good or 'none'}", 3)

    def _read_nonfinite(self) -> None:
        """Read the device's counts: log the steps skipped since the last read, and stop a run with
        --max-nonfinite of them in a row (the weights were kept, so the last checkpoint is good)."""
        new, worst = self.nonfinite.read()
        self.skipped_run += new
        step = self.position.step
        if new and self.main:
            self.log.write({"kind": "skipped", "step": step, "epoch": self.position.epoch,
                            "reason": "non-finite loss or gradient", "skipped": new,
                            "skipped_total": self.nonfinite.read_total})
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
                        "time": round(time.time() - self.started, 2), **values,
                        "skipped_total": self.nonfinite.read_total})
        epoch = f"epoch {self.position.epoch}/{self.last_epoch}"
        if "w_distance" in values:  # R only once G trains (not during --critic-warmup)
            bar.set_postfix_str(f"{epoch}, W={values['w_distance']:.3g}"
                                + (f", R={values['transport']:.3g}" if "transport" in values else ""))
        elif "l1" in values:
            bar.set_postfix_str(f"{epoch}, L1={values['l1']:.3g}")


class NonFiniteSteps:
    """The steps skipped for a non-finite loss or gradient, counted on the device (reading a flag each
    step would wait for the GPU) and read when the log, a checkpoint or the end of an epoch needs them."""

    def __init__(self, device: torch.device, skipped_before: int):
        counter = lambda value=0: torch.tensor(value, dtype=torch.int64, device=device)
        self.total, self.streak, self.worst_streak = counter(skipped_before), counter(), counter()
        self.read_total = skipped_before  # the count at the last read: what the log and checkpoints record

    def count(self, skipped: torch.Tensor) -> None:
        """Count a skipped step, and the longest streak of them, on the device (nothing waits)."""
        s = skipped.to(torch.int64)
        self.total += s
        self.streak = (self.streak + 1) * s
        torch.maximum(self.worst_streak, self.streak, out=self.worst_streak)

    def read(self) -> tuple[int, int]:
        """The steps skipped since the last read, and the longest streak of them in a row since then."""
        total, worst = int(self.total), int(self.worst_streak)
        self.worst_streak.copy_(self.streak)
        new, self.read_total = total - self.read_total, total
        return new, worst


def sigma_record(p: Prepared, sigma: float, seed: int) -> dict:
    """config.json and each checkpoint's 'config': what a sigma's model was trained with, the
    machine's resolved values included."""
    r = p.resolved
    return json_ready({**dataclasses.asdict(p.config), "task": p.task.name, "sigma": sigma,
                       "seed": seed, "device": r.device, "precision": r.precision,
                       "loader_workers": r.loader_workers, "world_size": r.world_size,
                       "torch": str(torch.__version__), "data": p.dataset.describe(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def run_report(p: Prepared, run_dir: Path) -> ReportRefresher:
    """The run folder's report.html, redrawn from every sigma's metrics beside the training."""
    config, r = p.config, p.resolved
    facts = [("task", p.task.title), ("run", str(run_dir)),
             ("method", "supervised L1" if config.supervised else f"cost {config.cost}, sigma "
              + " ".join(f"{s:g}" for s in config.sigma)),
             ("schedule", f"batch {config.batch_size}, lr {config.lr:g}, {config.epochs} epochs"
              + (f", at most {config.max_steps} steps" if config.max_steps else "")),
             ("networks", f"generator {config.gen_width}/{config.gen_increment}, critic {config.critic_width}"),
             ("data", p.dataset.describe()), ("device", f"{r.device} ({r.precision})")]
    return ReportRefresher(run_dir, f"{p.task.title} training: {config.name}", facts)


# ----------------------------------------------------------------------------- how long it takes
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
