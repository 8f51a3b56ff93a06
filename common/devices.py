"""Where and how a run computes, and its random state: the device, precision, loader workers, seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .data import as_float
from .errors import InputError, note


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
        if torch.cuda.is_available():
            return torch.device("cuda")
        note("CUDA is not available; running on the CPU")
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """Bit-for-bit repeatable runs on the same machine and software (slower on CUDA)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    # Both setters take CPU byte tensors only; a checkpoint read with map_location=cuda holds them on the GPU.
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
