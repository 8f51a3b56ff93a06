"""What the training step needs to know about other processes: nothing, when there are none.

:class:`Local` is the single-process case. The torchrun case, with the same methods, comes with the
multi-GPU support.
"""
from __future__ import annotations

import torch


class Local:
    """One process: every collective is the identity."""

    rank, world, is_main = 0, 1, True

    def average_grads(self, module: torch.nn.Module) -> None:
        """Average a module's gradients over processes (here: nothing to do)."""

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` holds on every process."""
        return bool(flag)

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-process batch mean over all processes (differentiable)."""
        return value

    def average(self, value: float) -> float:
        """A logged number averaged over processes."""
        return value

    def barrier(self) -> None:
        """Wait for every process."""

    def close(self) -> None:
        """Leave the process group."""
