#!/usr/bin/env python
"""Time the SOT training step and inference, the fast path against the reference structure, in one run.

For the same networks and batch it times: the reference structure in fp32 (critic step, separate
gradient-penalty step, generator forwarded twice), the fast step in fp32 (one generator forward,
real and fake in one critic pass), the fast step in bf16 autocast with channels_last, the same with
the non-finite checks on the host (as before they moved onto the device), captured as a CUDA graph
(on CUDA), at twice the batch, and optionally with torch.compile of the generator or of each of its
attention blocks; then inference in fp32 and bf16 at two sizes (optionally with compiled blocks),
and the data loader alone. It prints a Markdown table (and writes JSON with --json).

examples:
  python bench/speed.py                 # real sizes on whatever device there is (CUDA if present)
  python bench/speed.py --quick         # small networks and patches, a smoke run on a CPU
  python bench/speed.py --compile --json perf.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from common.cli.flags import DEVICES  # noqa: E402
from common.data.loader import UnpairedH5Dataset  # noqa: E402
from common.data.patch_file import H5PatchWriter  # noqa: E402
from common.evaluation.inference import restore  # noqa: E402
from common.networks import Critic, Generator, compile_blocks  # noqa: E402
from common.tasks import TASKS, model_input  # noqa: E402
from common.training.devices import CapturedStep, Local, resolve_device, resolve_threads  # noqa: E402
from common.sot import make_optimizers, reference_iteration, train_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def networks(task, device, quick: bool, channels_last: bool, seed: int = 0, reference: bool = False):
    """G and D; ``reference``: the authors' plain layers (no Im2colConv2d), for the reference structure."""
    torch.manual_seed(seed)
    if quick:
        g, d = Generator(width=16, increment=8), Critic(hidden=16, input_size=32, width=8)
    else:
        g, d = Generator(), Critic(hidden=task.critic_hidden, input_size=task.patch)
    if reference:
        d.features[0].use_im2col = False
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return g.to(device, memory_format=fmt), d.to(device, memory_format=fmt)


def batch_for(task, size: int, patch: int, device, channels_last: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    side = patch // task.scale
    x = model_input(task, torch.rand(size, 3, side, side, generator=gen).to(device))
    clean = torch.rand(size, 3, patch, patch, generator=gen).to(device)
    if channels_last:
        x, clean = x.contiguous(memory_format=torch.channels_last), clean.contiguous(memory_format=torch.channels_last)
    return x, clean


def time_it(fn, device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Median milliseconds per call and peak GPU memory (GiB) of ``fn`` (of the timed calls: the warm-up's
    cuDNN autotuning tries workspaces the step itself never needs)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return 1000 * statistics.median(times), peak


class _FlopCount(TorchDispatchMode):
    """Counts the FLOPs of every op PyTorch's flop counter knows (convolutions, matmuls, their
    backward passes), without the module hooks of FlopCounterMode, which autograd.grad refuses."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


def count_flops(fn) -> int:
    with _FlopCount() as counter:
        fn()
    return counter.total


class HostChecks(Local):
    """One process whose "all true" reads the flag back to the host, as the step did before its guard
    moved onto the device: the step then waits for the GPU three times."""

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        return torch.tensor(bool(flag), device=flag.device)


def make_step(kind: str, g, d, opt_g, opt_d, x, clean, sigma: float, cost: str, precision: str):
    """The iteration a variant times, as a function of nothing."""
    if kind == "reference":
        return lambda: reference_iteration(g, d, opt_g, opt_d, x, clean, sigma, cost)
    if kind == "graph":
        captured = CapturedStep(lambda key, a, b: train_step(g, d, opt_g, opt_d, a, b, sigma, cost, precision))
        return lambda: captured((True,), x, clean)
    if kind == "compile":
        g = torch.compile(g)
    elif kind == "compile-blocks":
        compile_blocks(g)
    sync_ = HostChecks() if kind == "host-checks" else None
    return lambda: train_step(g, d, opt_g, opt_d, x, clean, sigma, cost, precision, sync_)


def training_rows(task, device, args) -> list[dict]:
    patch = 32 if args.quick else task.patch
    cuda = device.type == "cuda"
    sigma, cost = float(task.sigmas[0]), task.default_loss
    variants = [("reference structure, fp32", "reference", args.batch, "fp32", False),
                ("fast step, fp32", "fast", args.batch, "fp32", False),
                ("fast step, bf16 autocast + channels_last", "fast", args.batch, "bf16", cuda),
                ("the same, the non-finite checks on the host (as before the device-side guard)", "host-checks",
                 args.batch, "bf16", cuda),
                (f"the same at batch {2 * args.batch}", "fast", 2 * args.batch, "bf16", cuda)]
    if cuda:
        variants.insert(4, ("the same, captured as a CUDA graph", "graph", args.batch, "bf16", cuda))
    else:
        print("  (no CUDA: the CUDA-graph variant is not timed)", file=sys.stderr)
    if args.compile:
        variants.append(("fast bf16 + torch.compile(G)", "compile", args.batch, "bf16", cuda))
    if args.compile_blocks:
        variants.append(("fast bf16 + each attention block compiled", "compile-blocks", args.batch, "bf16", cuda))
    if args.only:
        variants = [v for v in variants if v[1] in args.only]
    rows, reference_ms, fast_flops = [], {}, {}
    for name, kind, size, precision, channels_last in variants:
        g, d = networks(task, device, args.quick, channels_last, reference=kind == "reference")
        opt_g, opt_d = make_optimizers(g, d, 1e-4)
        x, clean = batch_for(task, size, patch, device, channels_last)
        step = make_step(kind, g, d, opt_g, opt_d, x, clean, sigma, cost, precision)
        if size not in reference_ms and kind != "reference":
            # the reference at this batch, for the ratio
            rg, rd = networks(task, device, args.quick, False, reference=True)
            ropt_g, ropt_d = make_optimizers(rg, rd, 1e-4)
            rx, rclean = batch_for(task, size, patch, device, False)
            reference_ms[size], _ = time_it(
                lambda: reference_iteration(rg, rd, ropt_g, ropt_d, rx, rclean, sigma, cost),
                device, args.steps, args.warmup)
            del rg, rd, ropt_g, ropt_d
        ms, peak = time_it(step, device, args.steps, args.warmup)
        if kind == "reference":
            reference_ms[size] = ms
        if kind in ("reference", "fast"):
            flops = count_flops(step)
            if kind == "fast":
                fast_flops.setdefault(size, flops)
        else:  # the fast iteration's operators (host checks add none; a graph or compiled code hides them)
            flops = fast_flops.get(size) or count_flops(make_step("fast", g, d, opt_g, opt_d, x, clean, sigma,
                                                                  cost, precision))
        rows.append({"variant": name, "batch": size, "ms_per_step": ms, "patches_per_s": 1000 * size / ms,
                     "x_reference": reference_ms[size] / ms, "peak_gib": peak,
                     "tflop_per_step": flops / 1e12, "tflops": flops / 1e12 / (ms / 1000)})
        print(f"  {name}: {ms:.1f} ms/step", file=sys.stderr)
        del g, d, opt_g, opt_d, x, clean
    return rows


def inference_rows(task, device, args) -> list[dict]:
    sizes = args.sizes or ((128, 256) if args.quick else (1024, 2048))
    precisions = [("fp32", False), ("bf16", device.type == "cuda")]
    rows = []
    g, _ = networks(task, device, args.quick, False)
    g.eval()
    if args.compile_blocks:  # measured beside the plain generator: a fresh copy with its blocks compiled
        precisions.append(("bf16 blocks compiled", device.type == "cuda"))
    for size in sizes:
        x = torch.rand(1, 3, size, size, device=device)
        for precision, channels_last in precisions:
            net = g
            if precision.endswith("compiled"):
                net, precision = compile_blocks(copy.deepcopy(g)), "bf16"
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            ms, peak = time_it(lambda: restore(net, x, precision), device, max(1, args.steps // 4), 1)
            label = precision + (" + channels_last" if channels_last else "") + (" + blocks compiled" if net is not g
                                                                                  else "")
            rows.append({"size": size, "precision": label, "ms": ms, "mpix_per_s": size * size / 1e6 / (ms / 1000),
                         "peak_gib": peak})
            print(f"  inference {size}^2 {label}: {ms:.1f} ms", file=sys.stderr)
            g = g.to(memory_format=torch.contiguous_format)
    return rows


def loader_row(task, device, args) -> dict:
    """Patches/s of the training DataLoader alone (its default workers for this device), on the CPU."""
    patch = 32 if args.quick else task.patch
    n = 256 if args.quick else 4096
    workers = resolve_threads(None, device)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        with H5PatchWriter(Path(tmp) / "bench.h5") as writer:
            for start in range(0, n, 256):
                m = min(256, n - start)
                writer.append("data", rng.integers(0, 256, (m, 3, patch // task.scale, patch // task.scale), np.uint8))
                writer.append("label", rng.integers(0, 256, (m, 3, patch, patch), np.uint8))
        dataset = UnpairedH5Dataset(tmp, scale=task.scale, raw_uint8=True)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                            persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
        seen, started = 0, None
        for epoch in range(3 if args.quick else 2):
            for i, (degraded, _) in enumerate(loader):
                if started is None:  # start the clock once the workers are up
                    started = time.perf_counter()
                    continue
                seen += degraded.shape[0]
        elapsed = time.perf_counter() - started
    return {"workers": workers, "patches_per_s": seen / elapsed}


def markdown(result: dict) -> str:
    """The tables of whichever parts ran (--skip leaves the others out)."""
    lines = [f"device: {result['device']}; torch {result['torch']}; task {result['task']}; "
             f"{'quick (small networks, 32x32 patches)' if result['quick'] else 'real sizes, 128x128 patches'}"]
    if result["training"]:
        lines += ["", "| variant of the same training iteration | batch | ms / step | patches / s | x reference | "
                      "peak memory | TFLOP / step | TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for r in result["training"]:
            peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a"
            lines.append(f"| {r['variant']} | {r['batch']} | {r['ms_per_step']:.1f} | {r['patches_per_s']:.3g} | "
                         f"{r['x_reference']:.2f} | {peak} | {r['tflop_per_step']:.3g} | {r['tflops']:.3g} |")
    if result["inference"]:
        lines += ["", "| inference, no grad | ms | MPix / s | peak memory |", "|---|---|---|---|"]
        for r in result["inference"]:
            peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a"
            lines.append(f"| {r['size']}x{r['size']} {r['precision']} | {r['ms']:.1f} | {r['mpix_per_s']:.2f} | "
                         f"{peak} |")
    loader = result["loader"]
    if loader:
        line = f"loader alone ({loader['workers']} workers, uint8 patches): {loader['patches_per_s']:.0f} patches/s"
        if result["training"]:
            fast = max(r["patches_per_s"] for r in result["training"])
            line += f", {loader['patches_per_s'] / fast:.1f}x the fastest training step above"
        lines += ["", line]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--task", choices=sorted(TASKS), default="sr")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch", type=int, default=None, help="patches per step (default: 32, quick: 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 20, quick: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5, quick: 1)")
    p.add_argument("--quick", action="store_true", help="small networks and patches: a smoke run on a CPU")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the generator")
    p.add_argument("--compile-blocks", action="store_true",
                   help="also time the generator with each attention block compiled (regional torch.compile)")
    p.add_argument("--only", nargs="+", default=None, metavar="KIND",
                   choices=("reference", "fast", "host-checks", "graph", "compile", "compile-blocks"),
                   help="time only these training variants (the reference at their batch is timed anyway)")
    p.add_argument("--skip", nargs="*", default=[], choices=("training", "inference", "loader"))
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N",
                   help="inference image sides (default: 1024 2048, quick: 128 256)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    task, device = TASKS[args.task], resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    result = {"device": name, "torch": str(torch.__version__), "task": task.name, "quick": args.quick,
              "date": time.strftime("%Y-%m-%d"), "training": [], "inference": [], "loader": None}
    if "training" not in args.skip:
        result["training"] = training_rows(task, device, args)
    if "inference" not in args.skip:
        result["inference"] = inference_rows(task, device, args)
    if "loader" not in args.skip:
        result["loader"] = loader_row(task, device, args)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
