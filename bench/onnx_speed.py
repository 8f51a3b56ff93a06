#!/usr/bin/env python
"""Time the generator on the CPU as PyTorch runs it and as onnxruntime runs its ONNX export, side by side.

For each generator width (the paper's and the demo's) and thread count, the same network (what
``test.py --export-onnx`` writes: G and the clamp, float32, no gradients) restores one image in
PyTorch and in onnxruntime, the two alternating repeat by repeat so that other work on the machine
weighs on both alike; the median of each is reported, with onnxruntime's speed as a multiple of
PyTorch's. It prints a Markdown table (and writes JSON with --json).

examples:
  python bench/onnx_speed.py --json onnx_speed.json   # paper and demo widths, 256x256, 1 and 2 threads
  python bench/onnx_speed.py --quick                  # a smoke run: small widths, 64x64, one repeat
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.demo import DEMO_TRAINING  # noqa: E402
from common.evaluation.onnx_export import ExportedGenerator, import_exporter, to_onnx  # noqa: E402
from common.networks import PAPER_WIDTHS, Generator  # noqa: E402
from common.tasks import TASKS  # noqa: E402


def widths(quick: bool) -> dict[str, tuple[int, int]]:
    """The generator widths timed, by name: (base width, increment)."""
    if quick:
        return {"8/8": (8, 8)}
    return {"paper": (PAPER_WIDTHS.generator, PAPER_WIDTHS.increment),
            "demo": (DEMO_TRAINING["gen_width"], DEMO_TRAINING["gen_increment"])}


def time_pair(model: ExportedGenerator, session, x: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median ms of PyTorch and of onnxruntime on ``x`` (after one untimed run of each), alternating,
    and the largest difference between their outputs."""
    feed = {"input": x.numpy()}
    with torch.inference_mode():
        expected = model(x).numpy()
    difference = float(abs(session.run(None, feed)[0] - expected).max())
    torch_ms, onnx_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        torch_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        session.run(None, feed)
        onnx_ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(torch_ms), statistics.median(onnx_ms), difference


def rows(args, onnxruntime) -> list[dict]:
    out = []
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for name, (width, increment) in widths(args.quick).items():
        torch.manual_seed(0)
        model = ExportedGenerator(Generator(width=width, increment=increment).eval(), TASKS["deraining"],
                                  upsample=False, align_corners=False, transpose=False)
        start, cpu_start = time.perf_counter(), time.process_time()
        onnx_bytes = to_onnx(model)
        export_s, export_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        for threads in args.threads:
            torch.set_num_threads(threads)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
            torch_ms, onnx_ms, difference = time_pair(model, session, x, args.repeats)
            out.append({"width": name, "generator": f"{width}/{increment}", "threads": threads, "size": args.size,
                        "torch_ms": torch_ms, "onnxruntime_ms": onnx_ms, "onnxruntime_speedup": torch_ms / onnx_ms,
                        "max_difference": difference, "export_s": export_s,
                        "export_cpu_s": export_cpu_s})
    return out


def markdown(result: dict) -> str:
    load = ", ".join(f"{a:.1f}" for a in result["load_average"])
    lines = [f"CPU ({result['cpu_count']} logical cores, load average {load} before the run); torch {result['torch']}, "
             f"onnxruntime {result['onnxruntime']}; {result['date']}; median of {result['repeats']}",
             "", "| generator | threads | image | PyTorch ms | onnxruntime ms | onnxruntime speed vs PyTorch | "
                 "largest difference | export s (CPU s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['width']} ({r['generator']}) | {r['threads']} | {r['size']}x{r['size']} | "
                     f"{r['torch_ms']:.1f} | {r['onnxruntime_ms']:.1f} | {r['onnxruntime_speedup']:.2f}x | "
                     f"{r['max_difference']:.1e} | {r['export_s']:.1f} ({r['export_cpu_s']:.1f}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--size", type=int, default=None, help="image side (default: 256, quick: 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each (default: 5, quick: 1)")
    p.add_argument("--quick", action="store_true", help="a small generator and image: a smoke run")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 5)
    onnxruntime = import_exporter()
    result = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "load_average": os.getloadavg(),
              "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__,
              "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "rows": rows(args, onnxruntime)}
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
