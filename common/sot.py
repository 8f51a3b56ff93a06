"""The method: one SOT training iteration and its optimisers (METHOD 2 and 5), beside the paper.

    critic step        L_D = mean D(G(x)) - mean D(y)
    penalty step       GP  = 10 mean_b (||grad D(eps y + (1 - eps) G(x))||_2 - 1)^2
    generator step     L_G = -mean D(G(x)) + sigma R(G(x) - x)

with ``R`` the transport cost of the residual (``common.losses.transport_cost``: l0.5 or l1 of its
2-D spectrum, or the OT baseline's L2), RMSprop for both networks, G at half the critic's learning
rate, and the rate divided by 10 every ``step_size`` epochs. The run around it (data, files,
devices, processes) is ``common.runs``.
"""
from __future__ import annotations

import copy

import torch

from .distributed import Local
from .inference import autocast
from .losses import critic_loss, generator_loss, gradient_penalty, supervised_loss
from .networks import Critic, Generator


def learning_rate(base_lr: float, epoch: int, step_size: int) -> float:
    """The critic's learning rate in ``epoch`` (1-based): ``base_lr * 0.1^floor((epoch - 1) / step_size)``."""
    return base_lr * 0.1 ** ((epoch - 1) // step_size)


def make_optimizers(generator: Generator, critic: Critic | None, lr: float):
    """RMSprop for both; the generator at half the critic's learning rate (as the reference)."""
    opt_g = torch.optim.RMSprop([p for p in generator.parameters() if p.requires_grad], lr=lr / 2)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=lr) if critic is not None else None
    return opt_g, opt_d


def set_learning_rate(opt_g, opt_d, lr: float) -> None:
    for group in opt_d.param_groups if opt_d is not None else ():
        group["lr"] = lr
    for group in opt_g.param_groups:
        group["lr"] = lr / 2


def finite_update(loss: torch.Tensor, optimizer) -> torch.Tensor:
    """Whether a loss and all of an optimiser's gradients are finite, as a device tensor."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.isfinite(loss) & torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


def train_step(generator: Generator, critic: Critic, opt_g, opt_d, x: torch.Tensor, clean: torch.Tensor,
               sigma: float, cost: str, precision: str = "fp32", sync=None,
               dc_weight: float = 0.0, update_generator: bool = True) -> tuple[dict, torch.Tensor]:
    """One SOT iteration on degraded inputs ``x`` (already as G takes them) and unpaired ``clean``.

    G(x) is computed once. The reference forwards G again for its generator step, but both critic
    steps come before G changes, so that second forward gives the same tensor. Real and fake
    patches go through the critic in one batch: it has no normalisation layers, so each sample's
    score is the same as in two passes.

    Each of the three updates is applied only if its loss and gradients are finite; otherwise the
    rest of the iteration is skipped (``stats["skipped"]`` is True) and the weights stay as they
    were. ``update_generator=False`` (--critic-warmup) makes it a critic-only iteration. ``sync``
    shares a batch split across processes (``common.distributed``); None for one.
    Returns detached statistics and G(x).
    """
    sync = sync or Local()
    n = clean.shape[0]
    stats: dict = {"skipped": True}
    with autocast(x.device, precision), torch.set_grad_enabled(update_generator):
        fake = generator(x)
    with autocast(x.device, precision):
        # 1. critic step: L_D = mean D(G(x)) - mean D(y)
        # Critic grads are zeroed, not dropped, as in the reference: RMSprop then still decays its
        # running average for weights the penalty does not reach (the fc biases), as the reference does.
        critic.requires_grad_(True)
        opt_d.zero_grad(set_to_none=False)
        scores = critic(torch.cat([clean, fake.detach()]))
        loss_d = critic_loss(scores[:n], scores[n:])
    loss_d.backward()
    sync.average_grads(critic)
    stats.update(loss_d=loss_d.detach(), w_distance=-loss_d.detach())
    if not sync.all_true(finite_update(loss_d, opt_d)):
        return stats, fake.detach()
    opt_d.step()

    # 2. gradient-penalty step, a second critic update
    opt_d.zero_grad(set_to_none=False)
    with autocast(x.device, precision):
        gp = gradient_penalty(critic, clean, fake.detach(), sync.uniform(n, x.device, clean.dtype))
    gp.backward()
    sync.average_grads(critic)
    stats["gp"] = gp.detach()
    if not sync.all_true(finite_update(gp, opt_d)):
        return stats, fake.detach()
    opt_d.step()
    if not update_generator:
        stats["skipped"] = False
        return stats, fake.detach()

    # 3. generator step: L_G = -mean D(G(x)) + sigma R(G(x) - x); the critic's weights need no grads
    critic.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    with autocast(x.device, precision):
        fake_scores = critic(fake)
    loss_g, transport = generator_loss(fake_scores, fake - x, sigma, cost, sync.global_mean, dc_weight)
    loss_g.backward()
    critic.requires_grad_(True)
    stats.update(loss_g=loss_g.detach(), transport=transport.detach())
    if not sync.all_true(finite_update(loss_g, opt_g)):
        return stats, fake.detach()
    opt_g.step()
    stats["skipped"] = False
    return stats, fake.detach()


def supervised_step(generator: Generator, opt_g, x: torch.Tensor, clean: torch.Tensor, precision: str = "fp32",
                    sync=None) -> tuple[dict, torch.Tensor]:
    """One step of the supervised upper bound: L1 to the true clean image (paired data), no critic."""
    sync = sync or Local()
    opt_g.zero_grad(set_to_none=True)
    with autocast(x.device, precision):
        fake = generator(x)
    loss = supervised_loss(fake, clean, sync.global_mean)
    loss.backward()
    stats = {"l1": loss.detach(), "skipped": True}
    if sync.all_true(finite_update(loss, opt_g)):
        opt_g.step()
        stats["skipped"] = False
    return stats, fake.detach()


class WeightAverage:
    """An exponential moving average of a network's weights, ``avg <- decay avg + (1 - decay) w`` after
    each update. Not in the paper (off by default, ``--ema``): a GAN's weights swing around where the
    game is heading, most of all in short runs; their average is steadier to validate and to keep."""

    def __init__(self, network: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        averaged, current = list(self.model.parameters()), list(network.parameters())
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for a, b in zip(self.model.buffers(), network.buffers()):
            a.copy_(b)
