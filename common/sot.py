"""The method of the paper, in one place: its losses, its optimisers and one training iteration.

    critic step        L_D = mean D(G(x)) - mean D(y)
    penalty step       GP  = 10 mean_b (||grad D(eps y + (1 - eps) G(x))||_2 - 1)^2
    generator step     L_G = -mean D(G(x)) + sigma R(G(x) - x)

``x`` degraded inputs (already as G takes them), ``y`` unpaired clean patches, ``R`` the transport
cost of the residual: the l0.5 or l1 norm of its 2-D spectrum (SOT) or its L2 norm (the OT
baseline). RMSprop for both networks, G at half the critic's learning rate, the rate divided by 10
every ``step_size`` epochs. docs/METHOD.md derives each term and names the authors' script it
follows. What this project adds for short runs (all off by default) is in ``common.recipe``; the run
around the iteration (data, files, devices, processes) is ``common.training.loop``.
"""
from __future__ import annotations

import torch

from .evaluation.inference import autocast
from .networks import Critic, Generator
from .training.devices import Local

TRANSPORT_COSTS = ("sot-l0.5", "sot-l1", "ot")
GP_WEIGHT = 10.0
_POWER_FLOOR = 1e-9  # added to |F|^2 as in the reference, so that the roots have finite gradients at 0


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


def wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


# ----------------------------------------------------------------------------- the losses
def transport_cost(residual: torch.Tensor, kind: str, batch_mean=_identity) -> torch.Tensor:
    """The paper's transport cost R(r) of a batch of residuals ``r = G(x) - x`` (B x C x H x W), a 0-dim tensor.

    With ``F = fft2(r)`` over the two spatial axes of every channel and ``P = |F|^2 + 1e-9``:

    - ``"sot-l0.5"``: ``(mean P^(1/4))^2``, the l0.5 quasi-norm of the spectrum (the reference default);
    - ``"sot-l1"``: ``mean P^(1/2)``, the l1 norm of the spectrum;
    - ``"ot"``: ``(mean P)^(1/2)``, the L2 cost of the plain OT baseline, as the reference scripts carry it
      (their commented-out line). By Parseval ``mean |F|^2 = H W mean r^2``, so it is computed in the
      pixel domain as ``sqrt(H W) * sqrt(mean r^2)``: the pixel RMSE times sqrt(H W) (x128 on 128x128
      patches). That scale is what lets one sigma list serve all three costs.

    Means run over batch, channels and frequencies (pixels). Always computed in float32, also under
    autocast: the FFT of a bf16 residual would lose the small coefficients the cost is about.
    ``batch_mean`` turns this process's mean into the mean over a batch split across processes,
    before the outer square or root (which do not commute with averaging).
    """
    r = wide(residual)
    if kind not in TRANSPORT_COSTS:
        raise ValueError(f"unknown transport cost {kind!r}; choose one of {', '.join(TRANSPORT_COSTS)}")
    if kind == "ot":
        # the spectral form without the FFT (Parseval); the floor is the reference's 1e-9 on each |F|^2
        pixels = r.shape[-2] * r.shape[-1]
        return (batch_mean(r.square().mean()) * pixels + _POWER_FLOOR).sqrt()
    spectrum = torch.fft.fft2(r, dim=(-2, -1))
    power = spectrum.real.square() + spectrum.imag.square() + _POWER_FLOOR
    if kind == "sot-l1":
        return batch_mean(power.sqrt().mean())
    return batch_mean(power.pow(0.25).mean()).square()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss ``mean D(G(x)) - mean D(y)``; its negative estimates the Wasserstein-1 distance."""
    return wide(fake_scores).mean() - wide(real_scores).mean()


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP term ``10 * mean_b (||grad_x D(x_hat_b)||_2 - 1)^2`` at ``x_hat = eps y + (1 - eps) G(x)``.

    ``eps`` is one U(0, 1) draw per sample (drawn here unless given). The norm of each sample's
    gradient runs over all its C*H*W entries (not per pixel), as in the reference. ``real`` and
    ``fake`` are unpaired; ``fake`` must come detached. The gradient is taken with
    ``create_graph=True`` so that the penalty can be back-propagated into the critic; the norm is
    taken in float32.
    """
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = wide(grad).flatten(1).norm(dim=1)
    return GP_WEIGHT * (norms - 1).square().mean()


def generator_loss(fake_scores: torch.Tensor, residual: torch.Tensor, sigma: float, kind: str,
                   batch_mean=_identity, extra_cost=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_G = -mean D(G(x)) + sigma * R(G(x) - x)``; returns ``(L_G, R)``.

    ``extra_cost(residual, batch_mean)``, if given, is charged beside R under the same sigma
    (``sigma * (R + extra)``): the hook for ``common.recipe``'s additions, which are not the paper's."""
    r = wide(residual)  # widened once: both charges back-propagate through one cast
    cost = transport_cost(r, kind, batch_mean)
    charged = cost if extra_cost is None else cost + extra_cost(r, batch_mean)
    return -wide(fake_scores).mean() + sigma * charged, cost


def supervised_loss(restored: torch.Tensor, clean: torch.Tensor, batch_mean=_identity) -> torch.Tensor:
    """Mean absolute error to the true clean image: the supervised upper bound's loss (paired data)."""
    return batch_mean((wide(restored) - wide(clean)).abs().mean())


# ----------------------------------------------------------------------------- the optimisers
def learning_rate(base_lr: float, epoch: int, step_size: int) -> float:
    """The critic's learning rate in ``epoch`` (1-based): ``base_lr * 0.1^floor((epoch - 1) / step_size)``."""
    return base_lr * 0.1 ** ((epoch - 1) // step_size)


class GuardedRMSprop(torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (its update, to the bit) whose :meth:`guarded_step` applies the update
    only where a device-side flag holds, without the host ever reading the flag.

    A non-finite loss or gradient must leave the weights and the optimiser's state exactly as they
    were. Deciding that on the host (``if loss.isfinite():``) waits for the GPU three times an
    iteration; here the update always runs and is undone on the device when the flag is false. For
    that the parameters and their running averages live in one flat buffer each (the parameters and
    the state tensors are views into them, in their own memory format), so the snapshot and the
    selection are two kernels per buffer whatever the number of tensors. On CUDA the step counters
    live on the device too (``capturable``), as a captured CUDA graph needs them.
    """

    def __init__(self, params, lr: float):
        params = list(params)
        capturable = bool(params) and params[0].is_cuda
        super().__init__(params, lr=lr, capturable=capturable)  # foreach as torch chooses: on CUDA
        self._flatten()

    ALIGN_BYTES = 256  # each tensor starts as aligned as a fresh allocation: kernels pick their path by alignment

    def _flatten(self) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        like = params[0]
        align = self.ALIGN_BYTES // like.element_size()
        starts, n = [], 0
        for p in params:
            starts.append(n)
            n += -(-p.numel() // align) * align
        self._params = torch.zeros(n, dtype=like.dtype, device=like.device)
        self._averages = torch.zeros(n, dtype=like.dtype, device=like.device)
        self._views = []  # (param, its average's view)
        for p, offset in zip(params, starts):
            if not (p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last)):
                raise ValueError("GuardedRMSprop takes dense parameters (contiguous or channels_last)")
            view = self._params.as_strided(p.shape, p.stride(), offset)
            view.copy_(p.detach())
            p.data = view
            self._views.append((p, self._averages.as_strided(p.shape, p.stride(), offset)))
        self._attach_state()
        self._snapshot = (torch.empty_like(self._params), torch.empty_like(self._averages))

    def _attach_state(self) -> None:
        """Point every parameter's state at the flat buffers (after a load, with the loaded values)."""
        capturable = self.defaults["capturable"]
        for p, average in self._views:
            state = self.state[p]
            if "square_avg" in state:
                average.copy_(state["square_avg"])
            else:
                average.zero_()
            step = state.get("step", 0.0)
            state["step"] = torch.as_tensor(step, dtype=torch.float32,
                                            device=p.device if capturable else "cpu").clone().reshape(())
            state["square_avg"] = average

    def load_state_dict(self, state_dict: dict) -> None:
        capturable = self.defaults["capturable"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint saved elsewhere carries that machine's settings
            group.update(capturable=capturable, foreach=None)
        self._attach_state()

    def guarded_step(self, ok: torch.Tensor) -> None:
        """``step()`` where ``ok`` (a 0-dim bool tensor, on the parameters' device) holds; elsewhere
        the parameters, running averages and step counters stay bit for bit as they were."""
        params, averages = self._params, self._averages
        self._snapshot[0].copy_(params)
        self._snapshot[1].copy_(averages)
        self.step()
        torch.where(ok, params, self._snapshot[0], out=params)
        torch.where(ok, averages, self._snapshot[1], out=averages)
        steps = [self.state[p]["step"] for p, _ in self._views if p.grad is not None]
        if steps:  # the counters step() advanced go back by one where nothing was applied
            torch._foreach_sub_(steps, (~ok).to(steps[0].dtype).to(steps[0].device))


def make_optimizers(generator: Generator, critic: Critic | None, lr: float):
    """RMSprop for both; the generator at half the critic's learning rate (as the reference)."""
    opt_g = GuardedRMSprop([p for p in generator.parameters() if p.requires_grad], lr=lr / 2)
    opt_d = GuardedRMSprop(critic.parameters(), lr=lr) if critic is not None else None
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


# ----------------------------------------------------------------------------- one iteration
def train_step(generator: Generator, critic: Critic, opt_g, opt_d, x: torch.Tensor, clean: torch.Tensor,
               sigma: float, cost: str, precision: str = "fp32", sync=None,
               extra_cost=None, update_generator: bool = True) -> tuple[dict, torch.Tensor]:
    """One SOT iteration on degraded inputs ``x`` (already as G takes them) and unpaired ``clean``.

    G(x) is computed once. The reference forwards G again for its generator step, but both critic
    steps come before G changes, so that second forward gives the same tensor. Real and fake
    patches go through the critic in one batch: it has no normalisation layers, so each sample's
    score is the same as in two passes.

    Each of the three updates is applied only if its loss and gradients, and those of the updates
    before it, are finite; otherwise it leaves the weights and optimiser states as they were
    (``stats["skipped"]``, a device tensor, is True). The decision stays on the device
    (:class:`GuardedRMSprop`): nothing in the iteration waits for the GPU. ``sync`` shares a batch
    split across processes (``common.training.devices.Distributed``); None for one. Not in the paper
    (``common.recipe``): ``extra_cost`` is charged beside R (``--dc-weight``), and
    ``update_generator=False`` makes it a critic-only iteration (``--critic-warmup``).
    Returns detached statistics and G(x).
    """
    sync = sync or Local()
    n = clean.shape[0]
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
    ok = sync.all_true(finite_update(loss_d, opt_d))
    opt_d.guarded_step(ok)

    # 2. gradient-penalty step, a second critic update
    opt_d.zero_grad(set_to_none=False)
    with autocast(x.device, precision):
        gp = gradient_penalty(critic, clean, fake.detach(), sync.uniform(n, x.device, clean.dtype))
    gp.backward()
    sync.average_grads(critic)
    ok = ok & sync.all_true(finite_update(gp, opt_d))
    opt_d.guarded_step(ok)
    stats = {"loss_d": loss_d.detach(), "w_distance": -loss_d.detach(), "gp": gp.detach()}
    if update_generator:
        # 3. generator step: L_G = -mean D(G(x)) + sigma R(G(x) - x); the critic's weights need no grads
        critic.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with autocast(x.device, precision):
            fake_scores = critic(fake)
        loss_g, transport = generator_loss(fake_scores, fake - x, sigma, cost, sync.global_mean, extra_cost)
        loss_g.backward()
        critic.requires_grad_(True)
        ok = ok & sync.all_true(finite_update(loss_g, opt_g))
        opt_g.guarded_step(ok)
        stats.update(loss_g=loss_g.detach(), transport=transport.detach())
    stats["skipped"] = ~ok
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
    ok = sync.all_true(finite_update(loss, opt_g))
    opt_g.guarded_step(ok)
    return {"l1": loss.detach(), "skipped": ~ok}, fake.detach()


def reference_iteration(generator, critic, opt_g, opt_d, x: torch.Tensor, clean: torch.Tensor, sigma: float,
                        cost: str) -> None:
    """The authors' iteration, written plainly: the yardstick that :func:`train_step` is timed and
    tested against (same math). It keeps their structure (docs/METHOD.md, "One iteration"): critic
    loss on real and fake in two critic passes and one optimiser step; a separate gradient-penalty
    pass and step; then a second generator forward for the generator step. Plain optimiser steps:
    no guard against non-finite updates, no autocast, one process."""
    n = clean.shape[0]
    # critic step
    critic.zero_grad()
    d_real_loss = -critic(clean).mean()
    fake = generator(x)
    d_fake_loss = critic(fake.detach()).mean()
    (d_real_loss + d_fake_loss).backward()
    opt_d.step()
    # gradient-penalty step
    critic.zero_grad()
    alpha = torch.rand(n, 1, 1, 1, device=x.device, dtype=clean.dtype).expand_as(clean)
    interpolated = (alpha * clean + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(interpolated)
    grad = torch.autograd.grad(out, interpolated, grad_outputs=torch.ones_like(out), retain_graph=True,
                               create_graph=True)[0]
    norm = torch.sqrt(torch.sum(grad.reshape(n, -1) ** 2, dim=1))
    (GP_WEIGHT * torch.mean((norm - 1) ** 2)).backward()
    opt_d.step()
    # generator step, with G forwarded again
    critic.zero_grad()
    generator.zero_grad()
    fake = generator(x)
    loss_g = -critic(fake).mean() + sigma * transport_cost(fake - x, cost)
    loss_g.backward()
    opt_g.step()
