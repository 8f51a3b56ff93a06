"""The SOT training loop (METHOD 5): critic step, gradient-penalty step, generator step.

One model is trained per transport weight sigma. Each writes under ``<out>/<task>/<name>/sigma-<s>/``:
``config.json``, ``last.pt``, ``best.pt`` (best validation PSNR), ``metrics.jsonl`` (one JSON
object per logged step and per validation) and ``samples/epoch-NNNN.png`` (input | output | clean).
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import atomic_write, load_weights, read_checkpoint, save_checkpoint
from .data import UnpairedH5Dataset, as_float
from .errors import InputError
from .evaluate import evaluate
from .inference import autocast
from .losses import critic_loss, generator_loss, gradient_penalty
from .networks import Critic, Generator, start_as_identity
from .pairs import Pair
from .tasks import Task, model_input


# ----------------------------------------------------------------------------- the step
def learning_rate(base_lr: float, epoch: int, step_size: int) -> float:
    """The critic's learning rate in ``epoch`` (1-based): ``base_lr * 0.1^floor((epoch - 1) / step_size)``."""
    return base_lr * 0.1 ** ((epoch - 1) // step_size)


def make_optimizers(generator: Generator, critic: Critic, lr: float):
    """RMSprop for both; the generator at half the critic's learning rate (as the reference)."""
    opt_g = torch.optim.RMSprop([p for p in generator.parameters() if p.requires_grad], lr=lr / 2)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=lr)
    return opt_g, opt_d


def set_learning_rate(opt_g, opt_d, lr: float) -> None:
    for group in opt_d.param_groups:
        group["lr"] = lr
    for group in opt_g.param_groups:
        group["lr"] = lr / 2


def train_step(generator: Generator, critic: Critic, opt_g, opt_d, x: torch.Tensor, clean: torch.Tensor,
               sigma: float, cost: str, precision: str = "fp32") -> tuple[dict, torch.Tensor]:
    """One SOT iteration on degraded inputs ``x`` (already as G takes them) and unpaired ``clean``.

    G(x) is computed once. The reference forwards G again for its generator step, but both critic
    steps come before G changes, so that second forward gives the same tensor. Real and fake
    patches go through the critic in one batch: it has no normalisation layers, so each sample's
    score is the same as in two passes. Returns detached statistics and G(x).
    """
    n = clean.shape[0]
    with autocast(x.device, precision):
        fake = generator(x)

        # 1. critic step: L_D = mean D(G(x)) - mean D(y)
        # Critic grads are zeroed, not dropped, as in the reference: RMSprop then still decays its
        # running average for weights the penalty does not reach (the fc biases), as the reference does.
        critic.requires_grad_(True)
        opt_d.zero_grad(set_to_none=False)
        scores = critic(torch.cat([clean, fake.detach()]))
        loss_d = critic_loss(scores[:n], scores[n:])
    loss_d.backward()
    opt_d.step()

    # 2. gradient-penalty step, a second critic update
    opt_d.zero_grad(set_to_none=False)
    with autocast(x.device, precision):
        gp = gradient_penalty(critic, clean, fake.detach())
    gp.backward()
    opt_d.step()

    # 3. generator step: L_G = -mean D(G(x)) + sigma R(G(x) - x); the critic's weights need no grads
    critic.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    with autocast(x.device, precision):
        fake_scores = critic(fake)
    loss_g, transport = generator_loss(fake_scores, fake - x, sigma, cost)
    loss_g.backward()
    opt_g.step()
    critic.requires_grad_(True)

    stats = {"loss_d": loss_d.detach(), "w_distance": -loss_d.detach(), "gp": gp.detach(),
             "loss_g": loss_g.detach(), "transport": transport.detach()}
    return stats, fake.detach()


# ----------------------------------------------------------------------------- plumbing
def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch on the device as float32 in [0, 1]: uint8 travels as bytes and is scaled there;
    on CUDA, in channels_last, the layout the convolutions run fastest in."""
    batch = as_float(batch.to(device, non_blocking=True))
    return batch.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else batch


def resolve_threads(threads: int | None, device: torch.device) -> int:
    """Data-loader workers: as given, else 4 on CUDA (fewer on small machines) and 0 on the CPU,
    where workers would only compete with the training step for the same cores."""
    if threads is not None:
        return threads
    return min(4, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu or --device auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard if installed."""

    def __init__(self, path: Path, tensorboard: bool = True):
        self.path = path
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict) -> None:
        record = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("step", "epoch", "time"):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record.get("step", 0))

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_samples(path: Path, x: torch.Tensor, fake: torch.Tensor, clean: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """A grid with one row per sample: input | output | clean (unpaired) patch."""
    from torchvision.utils import make_grid

    from .images import write_image

    k = min(rows, x.shape[0], clean.shape[0])
    tiles = torch.stack([t for i in range(k) for t in (x[i], fake[i], clean[i])]).float().clamp(0, 1).cpu()
    grid = make_grid(tiles, nrow=3, padding=2, pad_value=1.0)
    write_image(path, grid.permute(1, 2, 0).numpy())
    return grid


def sigma_dir_name(sigma: float) -> str:
    return f"sigma-{sigma:g}"


def json_ready(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


@dataclass
class RunResult:
    sigma: float
    run_dir: Path
    step: int
    epoch: int
    best_psnr: float | None
    last_val: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- the loop
def validate(generator, val_pairs: list[Pair], task: Task, device, args) -> dict:
    ev = evaluate(generator, val_pairs, task, device, align_corners=args.align_corners,
                  precision=args.precision, progress=False)
    generator.train()
    return {"psnr": ev.mean("psnr"), "ssim": ev.mean("ssim"), "input_psnr": ev.mean("input_psnr")}


def build_networks(task: Task, args, device: torch.device) -> tuple[Generator, Critic]:
    generator = Generator()
    if args.init == "identity":
        start_as_identity(generator)
    critic = Critic(hidden=task.critic_hidden, input_size=task.patch)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    generator = generator.to(device, memory_format=memory_format)
    critic = critic.to(device, memory_format=memory_format)
    if args.pretrained:
        ckpt = read_checkpoint(args.pretrained)
        load_weights(generator, ckpt["generator"], args.pretrained, "generator")
        if ckpt.get("critic"):
            load_weights(critic, ckpt["critic"], args.pretrained, "critic")
        print(f"initialised from {args.pretrained}")
    return generator, critic


def train_sigma(task: Task, args, sigma: float, seed: int, run_dir: Path, device: torch.device,
                dataset: UnpairedH5Dataset, val_pairs: list[Pair] | None) -> RunResult:
    seed_everything(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    generator, critic = build_networks(task, args, device)
    opt_g, opt_d = make_optimizers(generator, critic, args.lr)
    epoch, step, best = 1, 0, None
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        if ckpt.get("format") == "authors":
            raise InputError(f"{args.resume}: the authors' checkpoints hold no optimiser state; "
                             "use --pretrained to start from their weights")
        load_weights(generator, ckpt["generator"], args.resume, "generator")
        load_weights(critic, ckpt["critic"], args.resume, "critic")
        opt_g.load_state_dict(ckpt["optim_g"])
        opt_d.load_state_dict(ckpt["optim_d"])
        epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt.get("best_psnr")
        print(f"resumed from {args.resume} (epoch {ckpt['epoch']}, step {step})")

    config = json_ready({**vars(args), "task": task.name, "sigma": sigma, "seed": seed, "device": str(device),
                         "torch": str(torch.__version__), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "data": dataset.describe()})
    atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))
    log = MetricsLog(run_dir / "metrics.jsonl", tensorboard=not args.no_tensorboard)

    loader = DataLoader(dataset, batch_size=args.batchSize, shuffle=True, num_workers=args.threads,
                        pin_memory=device.type == "cuda", drop_last=len(dataset) >= args.batchSize,
                        persistent_workers=args.threads > 0, prefetch_factor=4 if args.threads else None)
    generator.train()
    critic.train()
    last_val: dict = {}
    started = time.time()
    finished = False

    def checkpoint_state() -> dict:
        return {"task": task.name, "arch": {"generator": generator.arch, "critic": critic.arch},
                "generator": generator.state_dict(), "critic": critic.state_dict(),
                "optim_g": opt_g.state_dict(), "optim_d": opt_d.state_dict(), "epoch": epoch, "step": step,
                "sigma": float(sigma), "loss": args.loss, "best_psnr": best, "config": config}

    while epoch <= args.nEpochs and not finished:
        lr = learning_rate(args.lr, epoch, args.step)
        set_learning_rate(opt_g, opt_d, lr)
        bar = tqdm(loader, desc=f"sigma {sigma:g} epoch {epoch}/{args.nEpochs}", unit="it",
                   leave=False, dynamic_ncols=True)
        for degraded, clean in bar:
            x = model_input(task, to_device(degraded, device), args.align_corners)
            clean = to_device(clean, device)
            stats, fake = train_step(generator, critic, opt_g, opt_d, x, clean, sigma, args.loss, args.precision)
            step += 1
            finished = bool(args.max_steps and step >= args.max_steps)
            if step % args.log_every == 0 or step == 1 or finished:
                record = {"kind": "train", "step": step, "epoch": epoch, "lr": lr,
                          "time": round(time.time() - started, 2), **stats}
                log.write(record)
                bar.set_postfix(W=f"{float(stats['w_distance']):.3g}", R=f"{float(stats['transport']):.3g}")
            if finished:
                break
        bar.close()
        grid = save_samples(run_dir / "samples" / f"epoch-{epoch:04d}.png", x, fake, clean)
        log.image("samples", grid, step)
        finished = finished or epoch == args.nEpochs
        if val_pairs and (epoch % args.val_every == 0 or finished):
            last_val = validate(generator, val_pairs, task, device, args)
            is_best = best is None or last_val["psnr"] > best
            best = max(best, last_val["psnr"]) if best is not None else last_val["psnr"]
            log.write({"kind": "val", "step": step, "epoch": epoch, **last_val, "best_psnr": best})
            tqdm.write(f"sigma {sigma:g} epoch {epoch}: validation PSNR {last_val['psnr']:.2f} dB "
                       f"(input {last_val['input_psnr']:.2f} dB, best {best:.2f} dB)")
            if is_best:
                save_checkpoint(run_dir / "best.pt", checkpoint_state())
        save_checkpoint(run_dir / "last.pt", checkpoint_state())
        epoch += 1
    log.close()
    return RunResult(sigma, run_dir, step, epoch - 1, best, last_val)


def train(task: Task, args) -> list[RunResult]:
    """Train one model per sigma of ``args.sigma``; returns where each went and how it did."""
    if args.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus
    device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.threads = resolve_threads(args.threads, device)
    dataset = UnpairedH5Dataset(args.trainset, scale=task.scale, layout=args.layout, raw_uint8=True)
    side = dataset.label_shape[1:]
    if side != (task.patch, task.patch):
        raise InputError(f"{dataset.parts[0].path}: clean patches are {side[0]}x{side[1]} but the critic takes "
                         f"{task.patch}x{task.patch}")
    val_pairs = None
    if args.val_input or args.val_gt:
        if not (args.val_input and args.val_gt):
            raise InputError("--val-input and --val-gt go together")
        from .pairs import find_pairs
        val_pairs = find_pairs(args.val_input, args.val_gt)
    run_root = Path(args.out) / task.name / args.name
    print(f"{task.title}: {dataset.describe()}; device {device} ({args.precision}); "
          f"cost {args.loss}; sigma {', '.join(f'{s:g}' for s in args.sigma)}; writing to {run_root}")
    base_seed = args.seed if args.seed is not None else random.SystemRandom().randint(1, 10**6)
    results = []
    for i, sigma in enumerate(args.sigma):
        results.append(train_sigma(task, args, sigma, base_seed + i, run_root / sigma_dir_name(sigma), device,
                                   dataset, val_pairs))
        r = results[-1]
        val = f", validation PSNR {r.last_val['psnr']:.2f} dB" if r.last_val else ""
        print(f"sigma {sigma:g}: {r.step} steps, {r.epoch} epoch(s){val}; checkpoints in {r.run_dir}")
    return results
