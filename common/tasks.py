"""The three restoration tasks, side by side: a task is its defaults and what its input needs before G.

Everything else (networks, losses, training loop, checkpoints, evaluation) is shared; what each
task's demo trains and asks of its model is ``common.demo.TASK_DEMOS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    scale: int                 # clean patch side / degraded patch side in the training files
    batch_size: int
    critic_hidden: int         # width of the critic's hidden linear layer (docs/METHOD.md, "Critic")
    sigmas: tuple[float, ...]  # transport weights; one model is trained per value (docs/METHOD.md)
    default_loss: str
    degradation: str           # the synthetic degradation its demo uses (common.data.degrade)
    input_label: str           # what the degraded input is called next to the result
    patch: int = 128           # clean-side training patch; the critic takes exactly this size
    reference_crop: int = 64   # the authors' test scripts crop inputs to multiples of this (docs/METHOD.md)


TASKS: dict[str, Task] = {
    "sr": Task("sr", "x4 super-resolution", scale=4, batch_size=32, critic_hidden=640,
               sigmas=(100, 50, 30, 10), default_loss="sot-l0.5", degradation="bicubic-x4",
               input_label="bicubic"),
    "deraining": Task("deraining", "deraining", scale=1, batch_size=48, critic_hidden=64,
                      sigmas=(0.1, 1, 10, 50, 100, 500), default_loss="sot-l1", degradation="rain-heavy",
                      input_label="rainy input", reference_crop=16),
    # The authors' dehazing/ folder ships sr/'s network file byte for byte: its critic is 640 wide too.
    "dehazing": Task("dehazing", "dehazing", scale=1, batch_size=48, critic_hidden=640,
                     sigmas=(0.1, 1, 10, 50, 100, 500), default_loss="sot-l1", degradation="haze",
                     input_label="hazy input"),
}


UPSCALERS = ("pytorch", "matlab")  # bicubic kernels test.py can upsample SR inputs with


def model_input(task: Task, degraded: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """What goes into G for a batch of degraded images: SR upsamples x4 bicubic, the others pass as is.

    ``align_corners=False`` keeps pixel centres aligned with the high-resolution grid (as MATLAB's
    ``imresize`` does, which makes the test inputs); the reference trained with ``True``, which
    stretches the image by up to 1.5 pixels at the borders (docs/METHOD.md). Values are not clamped, as in
    the reference.
    """
    if task.scale == 1:
        return degraded
    return F.interpolate(degraded, scale_factor=task.scale, mode="bicubic", align_corners=align_corners)
