"""Everything that can refuse a training run, checked before anything is written.

:func:`preflight` runs every check in the order a user should hear of them (the sigmas' folders, the
output folder, the data-loader processes, the training files, the validation images, the network
sizes, the --pretrained checkpoint, and on a resume the training files and each sigma's checkpoint),
and returns what the run's sigmas share (:class:`Prepared`), with where each sigma starts
(:class:`SigmaPlan`). It writes nothing and changes nothing of the process: no file, no folder, no
lock, no environment variable, no torch setting. A refused run leaves everything as it was; what
the run then does is ``common.training.loop``.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import read_image
from ..data.loader import UnpairedH5Dataset
from ..data.pairs import Pair, find_pairs
from ..data.patch_file import rgb_problem
from ..evaluation.evaluate import check_scored_apart, match_gt
from ..evaluation.no_reference import CleanReference, reference_from_folder, reference_from_training_data
from ..networks import Critic, Generator
from ..system.errors import InputError
from ..system.files import check_can_write
from ..system.text import note
from ..tasks import Task
from .checkpoint import build_generator, check_network_memory, load_weights, read_checkpoint
from .config import Resolved, ResumePlan, RunConfig
from .devices import resolve_device, resolve_precision, resolve_threads
from .run_folder import SigmaFolder, sigma_dir_name


@dataclass(frozen=True)
class SigmaPlan:
    """One sigma of the sweep: its place in it, its folder, the checkpoint it starts from (None: from
    the start) and whether it finished earlier (a resume skips it)."""
    index: int
    sigma: float
    folder: SigmaFolder
    start: Path | None
    done: bool


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
    sigmas: list[SigmaPlan]       # in the order of --sigma
    run_root: Path
    reference: CleanReference | None = None  # what validation's no-reference score compares with
    select_by: str | None = None  # what keeps best.pt: "psnr" or "no-reference" (None: no validation)


def preflight(task: Task, config: RunConfig, dist, resume: ResumePlan | None) -> Prepared:
    """Every check that can refuse the run, in the order a user should hear of them. Nothing is
    written and nothing of the process changes: a refused run leaves no run folder, no run.json, no
    lock. ``--gpus`` and ``--deterministic``, which change the process, are applied before it (by the
    entry point and by ``train``)."""
    check_sigma_folders(config.sigma)
    run_root = Path(config.out) / task.name / config.name
    if dist.is_main:
        check_can_write(run_root)  # creates nothing: a bad --out fails before the data are read
    device = dist.device if hasattr(dist, "device") else resolve_device(config.device)
    workers = check_loader_workers(resolve_threads(config.loader_workers, device))
    dataset = check_training_data(task, config, dist)
    val_pairs = check_validation(task, config)
    reference = check_clean_reference(config, dataset, val_pairs)
    check_network_sizes(task, config, device)
    pretrained = check_pretrained(task, config) if config.pretrained else None
    files = data_files(dataset)
    if resume is not None:
        check_resumed_data(config, resume, files)
    sigmas = plan_sigmas(task, config, run_root, resume, dist.is_main, len(dataset) // config.batch_size)
    seed = resume.seed if resume is not None and resume.seed is not None else config.seed
    if seed is None:
        seed = dist.broadcast_object(random.SystemRandom().randint(1, 10**6))
    resolved = Resolved(seed=seed, device=str(device), precision=resolve_precision(config.precision, device),
                        loader_workers=workers, world_size=dist.world, trainset_files=tuple(files),
                        cuda_graphs=resolve_cuda_graphs(config, device, dist))
    return Prepared(task, config, resolved, device, dist, dataset, val_pairs, pretrained, sigmas, run_root,
                    reference, selection(config, val_pairs))


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
    the run before it writes anything, not at its first validation. Without --val-gt the inputs alone
    are validated, by the no-reference score."""
    if config.val_gt and not config.val_input:
        raise InputError("--val-gt needs --val-input")
    if config.val_clean and not config.val_input:
        raise InputError("--val-clean is what validation's no-reference score compares with: it needs --val-input")
    if not config.val_input:
        return None
    pairs = find_pairs(config.val_input, config.val_gt)
    check_scored_apart(config.val_input, config.val_gt, pairs, ("--val-input", "--val-gt"))
    unpaired = [p.input.name for p in pairs if p.gt is None]
    if config.val_gt and unpaired:
        raise InputError(f"{config.val_input}: no ground truth in {config.val_gt} for {', '.join(unpaired[:5])}"
                         + (f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""))
    for pair in pairs:
        h, w = read_image(pair.input).shape[:2]
        if pair.gt is not None:
            match_gt(read_image(pair.gt), (h * task.scale, w * task.scale), pair, task.scale)
    return pairs


def selection(config: RunConfig, pairs: list[Pair] | None) -> str | None:
    """What keeps best.pt: --select-by, or by default PSNR where every validation image has ground truth
    (from --val-gt or a test set's layout) and the no-reference score where none has; None without
    validation."""
    if pairs is None:
        return None
    with_gt = all(p.gt is not None for p in pairs)
    if config.select_by == "psnr" and not with_gt:
        raise InputError(f"--select-by psnr keeps best.pt by validation PSNR: {config.val_input} needs ground truth "
                         "for every image (--val-gt; without it, --select-by no-reference)")
    return config.select_by or ("psnr" if with_gt else "no-reference")


def check_clean_reference(config: RunConfig, dataset: UnpairedH5Dataset, pairs: list[Pair] | None) -> CleanReference | None:
    """The clean images validation's no-reference score compares with: --val-clean, else the clean side
    of the training set. Never the validation images or their ground truth (that would be scoring
    against the answer)."""
    if pairs is None:
        return None
    if not config.val_clean:
        return reference_from_training_data(dataset)
    return reference_from_folder(config.val_clean, "--val-clean",
                                 ((config.val_input, "--val-input"), (config.val_gt, "--val-gt")))


def check_network_sizes(task: Task, config: RunConfig, device: torch.device) -> None:
    """Refuse network widths whose weights alone cannot be held (a --gen-width of 200000 would ask the
    allocator for terabytes and die with its traceback): counted on the meta device, nothing allocated."""
    networks = {"generator": lambda: Generator(width=config.gen_width, increment=config.gen_increment)}
    if not config.supervised:
        networks["critic"] = lambda: Critic(hidden=task.critic_hidden, input_size=task.patch, width=config.critic_width)
    # float32 weights, their gradients and RMSprop's running average, and a copy (--ema, checkpoints)
    check_network_memory(networks, 4 * 4, device, f"--gen-width {config.gen_width} --gen-increment "
                         f"{config.gen_increment} --critic-width {config.critic_width}",
                         "their weights and optimiser state alone")


def check_pretrained(task: Task, config: RunConfig) -> dict:
    """Read the --pretrained checkpoint once and make sure its weights fit these networks."""
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


def plan_sigmas(task: Task, config: RunConfig, run_root: Path, resume: ResumePlan | None,
                main: bool, batches: int) -> list[SigmaPlan]:
    """Where each sigma starts, and whether it is done. The state files and the checkpoints to resume
    from are read now (``batches``: an epoch's, on this data): a damaged one stops the run here."""
    plan = []
    for i, sigma in enumerate(config.sigma):
        folder = SigmaFolder(run_root / sigma_dir_name(sigma), main, config.keep_step_checkpoints)
        given = resume.checkpoints.get(sigma) if resume is not None else None
        start, done = folder.start_point(resume is not None, given, lambda s, e: run_is_over(config, s, e))
        if resume is None and any(folder.path.glob("*.pt")):  # a new run would rotate an earlier one's
            raise InputError(f"{folder.path}: holds an earlier run's checkpoints; continue it with --resume auto "
                             f"--name {config.name}, or give another --name")
        if start is not None and not done:
            check_position(folder.read_for_resume(task.name, start), start, config, batches, resume.new_data)
        plan.append(SigmaPlan(i, sigma, folder, start, done))
    return plan


def check_position(ckpt: dict, path: Path, config: RunConfig, batches: int, new_data: bool) -> None:
    """A checkpoint's place in its run (its epoch, the batches of it done, its step: whole numbers, as
    read_checkpoint checked) must be one that the run can have reached: an epoch at most one past its
    --nEpochs (this resume's or the one it was saved under), no more batches than an epoch of
    ``batches`` has, and as many steps as the epochs before and the batches of this one make. An edited
    epoch or step of 1e30 would count the run as finished; a batch of 1e9 would skip to the next epoch.
    On changed data (``new_data``) epochs had other lengths: only what holds whatever their length."""
    epoch, batch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
    saved_epochs = (ckpt.get("config") or {}).get("epochs")
    epochs = max(config.epochs, saved_epochs if isinstance(saved_epochs, int) and not isinstance(saved_epochs, bool)
                 else 0)
    change = "; if the training data changed while the run trained, give --resume-new-data"
    if epoch > epochs + 1:
        why = f"epoch {epoch} is past the run's {epochs} epochs (--nEpochs)"
    elif not new_data and batch > batches:
        why = (f"{batch} batches of its epoch done, where an epoch has {batches} (--batchSize {config.batch_size} "
               f"over the training data's patches){change}")
    elif step < epoch - 1 + batch:
        why = f"step {step} is fewer than its {epoch - 1} epoch(s) before and {batch} batches of this one took"
    elif not new_data and step > (epoch - 1) * batches + batch:
        why = (f"step {step} is more than {epoch - 1} epoch(s) of {batches} batches and {batch} batches of this one "
               f"make{change}")
    else:
        return
    raise InputError(f"{path}: the checkpoint's position (epoch {epoch}, batch {batch}, step {step}) is not one its "
                     f"run can have reached: {why}; the file is damaged or was edited")


def run_is_over(config: RunConfig, step: int, next_epoch: int) -> bool:
    """Whether a run at ``step``, about to start ``next_epoch``, has nothing left to do."""
    return bool(config.max_steps and step >= config.max_steps) or next_epoch > config.epochs
