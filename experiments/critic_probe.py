#!/usr/bin/env python
"""Does the critic learn to tell the two sides apart, and does its gradient point toward the answer?

Trains the critic alone (G held at the identity, so the fakes are the degraded inputs as G takes
them) on a paired training file, where ``data[i]`` is the degraded twin of ``label[i]`` (the demo's
file, or gdata's with both sides from the same images). Training draws random partners, as the
real game does. Every --every steps, on held-out pairs drawn before training, it prints:

  rank    the share of pairs whose clean patch scores above its own degraded one
  W       mean score of the clean patches minus that of the degraded ones
  cosine  the mean cosine between the critic's input gradient at a degraded patch and the true
          residual (clean - degraded): how well "what the critic wants" points toward restoration
  colour  the input gradient summed over each channel (mean over patches): a critic's pull toward a
          colour shift, which the spectral transport costs barely charge

examples:
  python sr/train.py --demo --max-steps 1          # builds checkpoints/sr/demo-data
  python experiments/critic_probe.py --task sr --trainset checkpoints/sr/demo-data/train --critic-init reference
  python experiments/critic_probe.py --task sr --trainset checkpoints/sr/demo-data/train --critic-init kaiming
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.data.loader import UnpairedH5Dataset  # noqa: E402
from common.networks import CRITIC_INITS, Critic, Generator  # noqa: E402
from common.recipe import start_as_identity  # noqa: E402
from common.sot import make_optimizers, train_step  # noqa: E402
from common.tasks import TASKS, model_input  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--trainset", required=True, help="a paired .h5 file or folder (data[i] degraded from label[i])")
    p.add_argument("--critic-init", choices=CRITIC_INITS, default="reference")
    p.add_argument("--critic-width", type=int, default=16, help="(default: %(default)s, the demo's)")
    p.add_argument("--lr", type=float, default=1e-4, help="critic learning rate, RMSprop (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="(default: %(default)s, the demo's)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--every", type=int, default=50, help="report every N steps (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=48, help="held-out pairs to measure on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def stack(dataset: UnpairedH5Dataset, task, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    degraded, clean = zip(*(dataset[(int(i), int(j))] for i, j in pairs))
    return model_input(task, torch.stack(degraded)), torch.stack(clean)


def probe(critic: Critic, x: torch.Tensor, y: torch.Tensor) -> dict:
    x = x.clone().requires_grad_(True)
    scores_fake = critic(x)
    grad, = torch.autograd.grad(scores_fake.sum(), x)
    with torch.no_grad():
        scores_real = critic(y)
        residual = (y - x).flatten(1)
        g = grad.flatten(1)
        cosine = (g * residual).sum(1) / (g.norm(dim=1) * residual.norm(dim=1)).clamp_min(1e-12)
    return {"rank": (scores_real > scores_fake.detach()).float().mean().item(),
            "W": (scores_real.mean() - scores_fake.detach().mean()).item(),
            "cosine": cosine.mean().item(), "colour": grad.sum(dim=(2, 3)).mean(0).tolist()}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    task = TASKS[args.task]
    torch.manual_seed(args.seed)
    dataset = UnpairedH5Dataset(args.trainset, scale=task.scale)
    n = min(len(dataset), dataset.num_labels)
    draw = torch.Generator().manual_seed(args.seed)
    held = torch.randperm(n, generator=draw)[:args.pairs]
    x_held, y_held = stack(dataset, task, [(i, i) for i in held])
    critic = Critic(hidden=task.critic_hidden, input_size=task.patch, width=args.critic_width, init=args.critic_init)
    # The training step itself, critic-only (as in --critic-warmup), against a G that is the identity.
    identity = start_as_identity(Generator(width=8, increment=8))
    opt_g, opt_d = make_optimizers(identity, critic, args.lr)
    reports = []
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(dataset), (args.batch,), generator=draw)
        jdx = torch.randint(dataset.num_labels, (args.batch,), generator=draw)
        x, y = stack(dataset, task, zip(idx, jdx))
        train_step(identity, critic, opt_g, opt_d, x, y, 0.0, "ot", update_generator=False)
        if step % args.every == 0 or step == args.steps:
            r = {"step": step, **probe(critic, x_held, y_held)}
            reports.append(r)
            print(f"step {step}: rank {r['rank']:.2f}  W {r['W']:+.3f}  cosine {r['cosine']:+.3f}  colour "
                  + " ".join(f"{c:+.1f}" for c in r["colour"]), flush=True)
    return reports


if __name__ == "__main__":
    main()
