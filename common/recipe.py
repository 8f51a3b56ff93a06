"""What this project adds to the paper's training for short runs: each off by default, each a flag.

The paper trains 200 epochs at the networks' full sizes; a run of a few hundred steps (the demos, a
CPU, a first look) needs help the paper never did. None of it changes ``common.sot``'s terms; each
piece enters the run at one place, named here. docs/FIDELITY.md lists them beside the authors'
behaviour, and docs/RESULTS.md has what each was measured to do.

| flag | what | where it enters |
|---|---|---|
| ``--init identity`` | G starts as the identity map (:func:`start_as_identity`) | building G |
| ``--critic-init kaiming`` | He initialisation of the critic (``Critic(init=...)``) | building D |
| ``--critic-warmup N`` | critic-only iterations first (:func:`generator_trains`) | each iteration |
| ``--dc-weight W`` | the residual's mean charged beside R (:func:`mean_shift_cost`) | the generator loss |
| ``--ema DECAY`` | a moving average of G's weights (:class:`WeightAverage`) | after each G update |
| ``--null-space`` (SR) | G's residual off what the downsampler keeps (``Generator(null_space_scale=...)``) | G's forward |
"""
from __future__ import annotations

import copy
from functools import partial

import torch

from .networks import Generator
from .sot import wide

_DC_FLOOR = 1e-12  # on the scale of a squared mean (pixels, not |F|^2), as the costs' floor on |F|^2


def start_as_identity(generator: Generator) -> Generator:
    """Zero the residual head so that G starts as the identity map (its output is its input).

    Not the reference's initialisation (PyTorch's default, whose random head adds a residual of about
    0.15 RMS); a steadier start for short runs, offered as ``--init identity``.
    """
    with torch.no_grad():
        generator.sam12.conv2.weight.zero_()
    return generator


def generator_trains(step: int, critic_warmup: int) -> bool:
    """``--critic-warmup N``: the first N iterations train the critic alone, so that G starts by
    following a critic that already tells the sides apart."""
    return step >= critic_warmup


def mean_shift_cost(residual: torch.Tensor, batch_mean, weight: float) -> torch.Tensor:
    """``weight * sqrt(mean_{b,c} mean_{h,w}(r)^2)``: the RMS over images and channels of the
    residual's mean, its zero-frequency coefficient / (H W).

    The spectral costs charge that one coefficient among H*W almost nothing, which leaves the critic
    free to shift colours; this charges a colour shift as the pixel L2 cost would. Floored like the
    costs: at a zero residual (G starting as the identity) the root has no gradient.
    """
    return weight * (batch_mean(wide(residual).mean(dim=(-2, -1)).square().mean()) + _DC_FLOOR).sqrt()


def extra_generator_cost(dc_weight: float):
    """What ``common.sot.train_step`` charges beside R for ``--dc-weight`` (None: nothing)."""
    return partial(mean_shift_cost, weight=dc_weight) if dc_weight else None


class WeightAverage:
    """An exponential moving average of a network's weights, ``avg <- decay avg + (1 - decay) w`` after
    each update (``--ema``). A GAN's weights swing around where the game is heading, most of all in
    short runs; their average is steadier to validate and to keep."""

    def __init__(self, network: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module, applied: torch.Tensor | None = None) -> None:
        """One step of the average; ``applied`` (a 0-dim bool tensor) False leaves it as it was, on the
        device (the network's update was skipped as non-finite)."""
        averaged, current = list(self.model.parameters()), list(network.parameters())
        weight = 1.0 - self.decay
        if applied is not None:
            # one weight tensor per parameter: given a single tensor, foreach_lerp_ would read it on the
            # host (its Scalar overload), waiting for the GPU at every step
            weight = [applied.to(averaged[0].dtype) * weight] * len(averaged)
        torch._foreach_lerp_(averaged, current, weight)
        for a, b in zip(self.model.buffers(), network.buffers()):
            a.copy_(b)
