"""Where and how a run computes: the device, precision, loader workers, random state, and the
other processes of a ``torchrun`` launch.

:class:`Local` is the single-process case: every collective is the identity. :class:`Distributed` is a
``torchrun`` launch: one process per GPU (NCCL), or per CPU process with ``--device cpu`` (gloo).
``--batchSize`` is global: each of N processes trains on batchSize / N patches per step, and
gradients are averaged, so the optimiser sees what one process with the whole batch would see.
The generator is wrapped in DistributedDataParallel. The critic is not: its gradient-penalty step
back-propagates through a gradient (a double backward), which DDP's gradient hooks do not support.
Its gradients are averaged by hand instead, in one flat all-reduce after each critic backward.
"""
from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from ..data.loader import as_float
from ..system.errors import InputError
from ..system.text import note


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


def expose_gpus(gpus: str | None) -> None:
    """--gpus: the GPUs this process may use, as CUDA_VISIBLE_DEVICES (e.g. '0' or '0,1'). Set by each
    script's entry point, before anything asks CUDA for a device; nothing when not given."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus


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


# ----------------------------------------------------------------------------- other processes
class Local:
    """One process: every collective is the identity."""

    rank, world, is_main = 0, 1, True

    def wrap_generator(self, generator: torch.nn.Module) -> torch.nn.Module:
        return generator

    def average_grads(self, module: torch.nn.Module) -> None:
        """Average a module's gradients over processes (here: nothing to do)."""

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """Whether the 0-dim bool tensor ``flag`` holds on every process, as a tensor on its device
        (nothing waits for it)."""
        return flag

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some process."""
        return bool(flag)

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-process batch mean over all processes (differentiable)."""
        return value

    def uniform(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One U(0, 1) draw per sample of this process's share of the batch, shape n x 1 x 1 x 1."""
        return torch.rand(n, 1, 1, 1, device=device, dtype=dtype)

    def average(self, value: float) -> float:
        """A logged number averaged over processes."""
        return value

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's weights."""

    def broadcast_object(self, obj):
        """Rank 0's value of a picklable object (a run name, a drawn seed), on every process."""
        return obj

    def barrier(self) -> None:
        """Wait for every process."""

    def close(self) -> None:
        """Leave the process group."""


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) that back-propagates: the gradient of a sum over processes is the sum of
    every process's gradient."""

    @staticmethod
    def forward(ctx, value):
        total = value.clone()
        torch_dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        torch_dist.all_reduce(total)
        return total


class Distributed(Local):
    """A process of a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous come from it)."""

    def __init__(self, device: str):
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.is_main = self.rank == 0
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        torch_dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))

    @classmethod
    def from_environment(cls, device: str) -> Local:
        """A Distributed under torchrun with several processes, else Local."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return cls(device)
        return Local()

    def wrap_generator(self, generator: torch.nn.Module) -> torch.nn.Module:
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(generator, device_ids=ids)

    def average_grads(self, module: torch.nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        torch_dist.all_reduce(flat)
        flat /= self.world
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        t = flag.to(self.device, torch.int32).reshape(1)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return t.reshape(()).bool()

    def any_true(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], device=self.device, dtype=torch.int32)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        return _SumOverProcesses.apply(value) / self.world

    def uniform(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # Every process draws the whole global batch's values from the same RNG state and keeps the
        # ones of its own samples (it holds every world-th one), so that the draws, and the RNG
        # states after them, are those of a single process training on the whole batch.
        return torch.rand(n * self.world, 1, 1, 1, device=device, dtype=dtype)[self.rank::self.world]

    def average(self, value: float) -> float:
        t = torch.tensor([float(value)], device=self.device, dtype=torch.float64)
        torch_dist.all_reduce(t)
        return float(t.item()) / self.world

    def broadcast_module(self, module: torch.nn.Module) -> None:
        for tensor in [*module.parameters(), *module.buffers()]:
            torch_dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj):
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        torch_dist.barrier()

    def close(self) -> None:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


# ----------------------------------------------------------------------------- a captured iteration
class CapturedStep:
    """A training iteration captured once as a CUDA graph and replayed for every later batch
    (``--cuda-graphs on``): its couple of thousand kernels start with one call, with no Python and no
    launch gaps between them.

    ``step(key, x, clean)`` is the iteration (``common.sot.train_step`` with the rest bound). Its
    first ``warmup`` calls run as they are, on a side stream, so that lazy initialisations (cuBLAS
    handles, autograd's buffers, the optimisers' state) happen outside the graph; the next call is
    captured and then replayed, so that it trains like every other. Inputs are copied into static
    buffers; the outputs (the statistics and G(x)) are static tensors that the next replay
    overwrites. Each ``key`` (whether G trains, the learning rate: anything Python decides) gets a
    graph of its own; a new key drops the old graphs.

    It needs what ``train_step`` provides: capturable optimisers, and nothing read back from the
    device inside the iteration (the non-finite guard decides on the device).
    """

    def __init__(self, step, warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.graphs: dict = {}
        self.calls = 0

    def __call__(self, key, x: torch.Tensor, clean: torch.Tensor):
        self.calls += 1
        if self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step(key, x, clean)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if key not in self.graphs:
            self.graphs.clear()  # the learning rate or the warm-up moved on: the old graphs are done
            static_x, static_clean = x.clone(), clean.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.step(key, static_x, static_clean)
            self.graphs[key] = (graph, static_x, static_clean, outputs)
        graph, static_x, static_clean, outputs = self.graphs[key]
        static_x.copy_(x, non_blocking=True)
        static_clean.copy_(clean, non_blocking=True)
        graph.replay()
        return outputs
