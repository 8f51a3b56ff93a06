#!/usr/bin/env python
"""Profile one training iteration with torch.profiler: where the step's time goes.

For each variant (default: our step in bf16 + channels_last, and the reference structure in fp32;
``inference`` profiles restoring one --size x --size image, as test.py does) it
runs a few untimed steps, times a few more without the profiler, then profiles one. It writes
profile.md (per variant: wall time, the kernels launched and their summed time, how busy that keeps
the GPU, and the top operators by self CUDA time; by self CPU time on the CPU), profile.json, and
one Chrome trace per variant (trace-VARIANT.json.gz, for chrome://tracing or Perfetto).

examples:
  python bench/profile_step.py --out prof/                 # real sizes, batch 32, on CUDA if present
  python bench/profile_step.py --quick --device cpu --out prof/
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.speed import batch_for, networks, sync  # noqa: E402
from common.cli.flags import DEVICES  # noqa: E402
from common.evaluation.inference import restore  # noqa: E402
from common.tasks import TASKS  # noqa: E402
from common.training.devices import resolve_device  # noqa: E402
from common.sot import make_optimizers, reference_iteration, train_step  # noqa: E402

VARIANTS = {
    "fast-bf16": ("our step, bf16 autocast + channels_last", "fast", "bf16"),
    "fast-fp32": ("our step, fp32", "fast", "fp32"),
    "reference": ("reference structure, fp32", "reference", "fp32"),
    "inference": ("inference, bf16 autocast + channels_last, no grad", "inference", "bf16"),
}


def self_time(event, cuda: bool) -> float:
    """An averaged event's self time in microseconds: on the device (CUDA) or on the CPU."""
    if not cuda:
        return float(event.self_cpu_time_total)
    for name in ("self_device_time_total", "self_cuda_time_total"):  # renamed in torch 2.4
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def kernel_totals(prof) -> tuple[int, float]:
    """How many kernels (and copies) ran on the GPU, and their summed duration in microseconds."""
    from torch.autograd import DeviceType

    count, total = 0, 0.0
    for event in prof.events():
        if getattr(event, "device_type", None) == DeviceType.CUDA:
            count += 1
            total += event.time_range.elapsed_us()
    return count, total


def profile_variant(key: str, task, device, args, out: Path) -> dict:
    label, kind, precision = VARIANTS[key]
    cuda = device.type == "cuda"
    channels_last = cuda and kind in ("fast", "inference") and precision == "bf16"
    g, d = networks(task, device, args.quick, channels_last, reference=kind == "reference")
    if kind == "inference":  # G alone: a critic, optimisers and a batch held beside it would count in its peak
        d = opt_g = opt_d = x = clean = None
    else:
        opt_g, opt_d = make_optimizers(g, d, 1e-4)
        x, clean = batch_for(task, args.batch, 32 if args.quick else task.patch, device, channels_last)
    sigma, cost = float(task.sigmas[0]), task.default_loss
    if kind == "inference":  # one image of --size x --size, as test.py restores it
        label = f"{label}, {args.size}x{args.size}"
        g.eval()
        image = torch.rand(1, 3, args.size, args.size, device=device)

    def step():
        if kind == "reference":
            reference_iteration(g, d, opt_g, opt_d, x, clean, sigma, cost)
        elif kind == "inference":
            restore(g, image, precision)
        else:
            train_step(g, d, opt_g, opt_d, x, clean, sigma, cost, precision)

    for _ in range(args.warmup):
        step()
    sync(device)
    if cuda:  # the step's own peak, not the warm-up's cuDNN autotuning
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    averages = sorted(prof.key_averages(), key=lambda e: self_time(e, cuda), reverse=True)
    total = sum(self_time(e, cuda) for e in averages) or 1.0
    top = [{"name": e.key, "calls": int(e.count), "self_ms": self_time(e, cuda) / 1000,
            "share": self_time(e, cuda) / total, "self_cpu_ms": float(e.self_cpu_time_total) / 1000}
           for e in averages[:args.rows]]
    wall_ms = statistics.median(times)
    result = {"variant": key, "label": label, "batch": 1 if kind == "inference" else args.batch, "precision": precision,
              "channels_last": channels_last, "wall_ms": wall_ms, "timed_steps": len(times),
              "time_basis": "self CUDA time" if cuda else "self CPU time", "top": top}
    if cuda:
        kernels, kernel_us = kernel_totals(prof)
        result.update(kernels=kernels, kernel_ms=kernel_us / 1000, busy=kernel_us / 1000 / wall_ms if wall_ms else None,
                      peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as src, gzip.open(out / f"trace-{key}.json.gz", "wb") as dst:
            dst.write(src.read())
    print(f"  {label}: {wall_ms:.1f} ms/step", file=sys.stderr)
    del g, d, opt_g, opt_d, x, clean
    if cuda:
        torch.cuda.empty_cache()
    return result


def markdown(result: dict) -> str:
    lines = [f"device: {result['device']}; torch {result['torch']}; task {result['task']}; "
             f"{'quick (small networks, 32x32 patches)' if result['quick'] else 'real sizes, 128x128 patches'}; "
             f"{result['date']}"]
    for v in result["variants"]:
        lines += ["", f"### {v['label']}" + (f", batch {v['batch']}" if v["variant"] != "inference" else ""), ""]
        line = f"wall time {v['wall_ms']:.1f} ms/step (median of {v['timed_steps']}, without the profiler)"
        if "kernels" in v:
            line += (f"; {v['kernels']} kernels and copies in one step, together {v['kernel_ms']:.1f} ms "
                     f"(the GPU busy {100 * v['busy']:.0f}% of the step); peak memory {v['peak_gib']:.1f} GiB")
        cuda = "kernels" in v  # on the CPU the sort key is the CPU time already: no second column
        lines += [line, "", f"| operator or kernel | calls | {v['time_basis']} (ms) | share |"
                  + (" self CPU (ms) |" if cuda else ""), "|---|---|---|---|" + ("---|" if cuda else "")]
        for row in v["top"]:
            name = row["name"].replace("|", "\\|")
            name = name if len(name) <= 90 else name[:87] + "..."
            lines.append(f"| `{name}` | {row['calls']} | {row['self_ms']:.2f} | {100 * row['share']:.1f}% |"
                         + (f" {row['self_cpu_ms']:.2f} |" if cuda else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--task", choices=sorted(TASKS), default="sr")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch", type=int, default=None, help="patches per step (default: 32, quick: 2)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["fast-bf16", "reference"])
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3, quick: 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps without the profiler (default: 5, quick: 1)")
    p.add_argument("--rows", type=int, default=25, help="operators in each table (default: %(default)s)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="the image side of the inference variant (default: 2048, quick: 128)")
    p.add_argument("--quick", action="store_true", help="small networks and patches: a smoke run on a CPU")
    p.add_argument("--out", required=True, metavar="DIR", help="where profile.md, profile.json and the traces go")
    args = p.parse_args(argv)
    args.size = args.size or (128 if args.quick else 2048)
    args.batch = args.batch or (2 if args.quick else 32)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps or (1 if args.quick else 5)
    task, device = TASKS[args.task], resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
              "torch": str(torch.__version__), "task": task.name, "quick": args.quick,
              "date": time.strftime("%Y-%m-%d"), "variants": []}
    for key in args.variants:
        result["variants"].append(profile_variant(key, task, device, args, out))
        (out / "profile.json").write_text(json.dumps(result, indent=1))  # what there is so far
    text = markdown(result)
    (out / "profile.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
