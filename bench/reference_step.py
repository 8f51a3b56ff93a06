"""The reference's training iteration, written plainly, as the yardstick for the fast step.

It keeps the authors' structure (docs/METHOD.md, "One iteration"): critic loss on real and fake in two critic passes and
one optimiser step; a separate gradient-penalty pass and step; then a second generator forward for
the generator step. Same math as ``common.sot.train_step``, which a test checks; the benchmark
times the two side by side.
"""
from __future__ import annotations

import torch

from common.sot import GP_WEIGHT, transport_cost


def reference_step(generator, critic, opt_g, opt_d, x: torch.Tensor, clean: torch.Tensor, sigma: float,
                   cost: str) -> None:
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
