"""SOT's losses: the transport costs on the residual G(x) - x and the WGAN-GP critic terms (METHOD 2)."""
from __future__ import annotations

import torch

TRANSPORT_COSTS = ("sot-l0.5", "sot-l1", "ot")
GP_WEIGHT = 10.0
_POWER_FLOOR = 1e-9  # added to |F|^2 as in the reference, so that the roots have finite gradients at 0
_DC_FLOOR = 1e-12    # the same for the --dc-weight term, on the scale of a squared mean (pixels, not |F|^2)


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def transport_cost(residual: torch.Tensor, kind: str, batch_mean=_identity, dc_weight: float = 0.0) -> torch.Tensor:
    """Transport cost R(r) of a batch of residuals ``r = G(x) - x`` (B x C x H x W), a 0-dim tensor.

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

    ``dc_weight`` (not in the paper, 0 by default) adds ``dc_weight * sqrt(mean_{b,c} mean_{h,w}(r)^2)``,
    the RMS over images and channels of the residual's mean, its zero-frequency coefficient / (H W).
    The spectral costs charge that one coefficient among H*W almost nothing, which leaves the critic
    free to shift colours; this term charges a colour shift as the pixel L2 cost would.
    """
    r = _wide(residual)
    if kind not in TRANSPORT_COSTS:
        raise ValueError(f"unknown transport cost {kind!r}; choose one of {', '.join(TRANSPORT_COSTS)}")
    if kind == "ot":
        # the spectral form without the FFT (Parseval); the floor is the reference's 1e-9 on each |F|^2
        pixels = r.shape[-2] * r.shape[-1]
        cost = (batch_mean(r.square().mean()) * pixels + _POWER_FLOOR).sqrt()
    else:
        spectrum = torch.fft.fft2(r, dim=(-2, -1))
        power = spectrum.real.square() + spectrum.imag.square() + _POWER_FLOOR
        if kind == "sot-l1":
            cost = batch_mean(power.sqrt().mean())
        else:
            cost = batch_mean(power.pow(0.25).mean()).square()
    if dc_weight:
        # floored like the costs: at a zero residual (G starting as the identity) sqrt has no gradient
        cost = cost + dc_weight * (batch_mean(r.mean(dim=(-2, -1)).square().mean()) + _DC_FLOOR).sqrt()
    return cost


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss ``mean D(G(x)) - mean D(y)``; its negative estimates the Wasserstein-1 distance."""
    return _wide(fake_scores).mean() - _wide(real_scores).mean()


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
    norms = _wide(grad).flatten(1).norm(dim=1)
    return GP_WEIGHT * (norms - 1).square().mean()


def generator_loss(fake_scores: torch.Tensor, residual: torch.Tensor, sigma: float, kind: str,
                   batch_mean=_identity, dc_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_G = -mean D(G(x)) + sigma * R(G(x) - x)``; returns ``(L_G, R)``."""
    cost = transport_cost(residual, kind, batch_mean, dc_weight)
    return -_wide(fake_scores).mean() + sigma * cost, cost


def supervised_loss(restored: torch.Tensor, clean: torch.Tensor, batch_mean=_identity) -> torch.Tensor:
    """Mean absolute error to the true clean image: the supervised upper bound's loss (paired data)."""
    return batch_mean((_wide(restored) - _wide(clean)).abs().mean())
