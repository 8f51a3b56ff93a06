#!/usr/bin/env python
"""Helpers of bench/gpu_check.sh: the machine's description, the quality run's step count, the summary.

  env            the device, driver, versions, packages and (on a GPU) two measured ceilings
  quality-steps  how many steps per method fit the time left, from the measured step time
  summary        summary.md and summary.json from what the parts wrote (missing parts included)

`summary` and `quality-steps` import no torch, so that they cost a fraction of a second after each part.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("env", "cuda_tests", "speed", "compile", "inference", "profile", "quality")
TARGET_STEP_RATIO = 3.0        # the target: the training step at least 3x the reference structure
TARGET_INFERENCE_MPIX = 120.0  # the target for inference at 2048x2048
FAST_BF16 = "fast step, bf16 autocast + channels_last"
REFERENCE = "reference structure, fp32"
FAST_FP32 = "fast step, fp32"
GRAPH = "the same, captured as a CUDA graph"
HOST_CHECKS = "the same, the non-finite checks on the host (as before the device-side guard)"
COMPILED_BLOCKS = "fast bf16 + each attention block compiled"


# ----------------------------------------------------------------------------- env
def package_versions() -> dict:
    out = {}
    for name, module in (("numpy", "numpy"), ("h5py", "h5py"), ("scikit-image", "skimage"), ("opencv", "cv2"),
                         ("tqdm", "tqdm"), ("torchvision", "torchvision"), ("tensorboard", "tensorboard"),
                         ("pytest", "pytest"), ("lpips", "lpips")):
        try:
            out[name] = str(getattr(importlib.import_module(module), "__version__", "present"))
        except Exception:  # noqa: BLE001 - missing or broken: both mean "not usable here"
            out[name] = None
    return out


def measure_ceilings(torch) -> dict:
    """A large bf16 matrix product and a device-to-device copy: the chip's two ceilings as found."""
    def timed(fn, repeats=10):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return sorted(times)[len(times) // 2]

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    matmul = 2 * n**3 / timed(lambda: a @ b) / 1e12
    src = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / timed(lambda: dst.copy_(src)) / 1e12
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": round(matmul, 1), "copy_tb_per_s": round(copy, 2)}


def env(args) -> int:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "python": platform.python_version(),
            "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "cpu_count": __import__("os").cpu_count(),
            "packages": package_versions(), "dry_run": args.dry_run}
    photos = ROOT / "data" / "opencv-doc"
    info["photos"] = (f"data/opencv-doc ({len(list(photos.iterdir()))} files) and scikit-image's"
                      if photos.is_dir() else "scikit-image's only (no data/opencv-doc)")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    else:
        info["device"] = "CPU"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            text = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
            (out / "nvidia-smi.txt").write_text(text)
            query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
            info["nvidia_smi"] = query
            info["driver"] = query.split(",")[1].strip() if query.count(",") >= 1 else None
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    if torch.cuda.is_available() and not args.dry_run:
        info["ceilings"] = measure_ceilings(torch)
    (out / "env.json").write_text(json.dumps(info, indent=1))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items() if k != "packages"]
    lines += [f"| package {k} | {v or 'missing'} |" for k, v in info["packages"].items()]
    (out / "env.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.dry_run and not torch.cuda.is_available():
        print("CUDA is not available: the GPU check needs a GPU (use --dry-run on a CPU)", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- quality steps
def quality_steps(args) -> int:
    """Steps per run that fit ``seconds``: per-step time from the speed part's bf16 step (x1.3 for
    the training loop's loader, logging and validation), less each task's fixed cost (its proxy data,
    the test evaluation) and each run's own (workers, cuDNN autotuning, validations, ~190 MB
    checkpoints): on an H200 a run of 550 steps took 70 s where 550 bf16 steps of the speed part take
    33 s, so about 30 s of each run is its own."""
    ms = None
    speed = Path(args.speed)
    if speed.is_file():
        rows = json.loads(speed.read_text()).get("training", [])
        ms = next((r["ms_per_step"] for r in rows if r["variant"] == FAST_BF16 and r["batch"] == args.batch), None)
    per_step = (ms * 1.3 if ms else 80.0) / 1000 + 0.004
    usable = 0.9 * args.seconds - 30 * args.tasks - 30 * args.methods
    steps = int(usable / (args.methods * per_step)) // 50 * 50
    steps = min(args.requested, steps)
    print(steps if steps >= 50 else 0)
    print(f"{args.seconds:.0f} s left, {per_step * 1000:.0f} ms per training step "
          f"({'from the speed part' if ms else 'assumed'}): {steps} steps per method", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- summary
def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def fmt(value, digits=1, unit="") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def cuda_test_results(work: Path) -> dict | None:
    folder = work / "cuda_tests"
    report = read_json(folder / "cuda_tests.json")
    if report is None and ((folder / "junit.xml").is_file() or (folder / "cuda_tests.log").is_file()):
        from bench.run_cuda_tests import from_junit  # the part was cut short: what it had written
        tests = from_junit(folder / "junit.xml", folder / "cuda_tests.log")
        report = {"runner": "partial, read from the log", "tests": tests,
                  **{k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}}
    if report is not None:
        report["measurements"] = read_jsonl(folder / "measurements.jsonl")
    return report


def quality_results(work: Path) -> dict:
    """Per task of the quality part (quality/<task>/): its meta, results table and each run's curve."""
    out = {}
    for folder in sorted(p for p in (work / "quality").glob("*") if p.is_dir()):
        meta = read_json(folder / "quality_meta.json") or {}
        rows = []
        if (folder / "results.csv").is_file():
            with open(folder / "results.csv", newline="") as f:
                rows = list(csv.DictReader(f))
        runs = {}
        for path in sorted(folder.glob("metrics-*.jsonl")):
            vals = [r for r in read_jsonl(path) if r.get("kind") == "val"]
            train = [r for r in read_jsonl(path) if r.get("kind") == "train"]
            runs[path.stem[len("metrics-"):]] = {"best_val_psnr": max((r["psnr"] for r in vals), default=None),
                                                 "last_step": max((r["step"] for r in train), default=0),
                                                 "val_curve": [(r["step"], round(r["psnr"], 3)) for r in vals]}
        if rows or runs or meta:
            out[folder.name] = {"meta": meta, "rows": rows, "runs": runs}
    return out


def speed_figure(path: Path, rows: list[dict], title: str) -> None:
    """Horizontal bars of ms per step for each training variant, labelled with the ratio to the reference."""
    import cv2
    import numpy as np

    if not rows:
        return
    w, bar, margin = 900, 34, 20
    h = margin * 3 + bar * len(rows) + 20
    img = np.full((h, w, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (margin, margin + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    longest = max(r["ms_per_step"] for r in rows) or 1.0
    left, right = 380, w - 150
    for i, r in enumerate(rows):
        y = margin * 2 + i * bar
        length = int((right - left) * r["ms_per_step"] / longest)
        colour = (90, 90, 90) if r["variant"].startswith("reference") else (200, 120, 40)
        cv2.rectangle(img, (left, y), (left + max(length, 1), y + bar - 8), colour, -1)
        cv2.putText(img, f"{r['variant'][:44]} (b{r['batch']})", (margin, y + bar - 14), font, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(img, f"{r['ms_per_step']:.1f} ms  {r['x_reference']:.2f}x", (left + length + 6, y + bar - 14),
                    font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def part_figures(work: Path, mode: str) -> tuple[dict, dict, dict]:
    """Per part: its key figures (JSON), one line for the table, and the details' Markdown."""
    figures, lines, details = {}, {}, {}
    env_info = read_json(work / "env" / "env.json")
    if env_info:
        figures["env"] = env_info
        ceil = env_info.get("ceilings") or {}
        line = f"{env_info.get('device')}; torch {env_info.get('torch')} (CUDA {env_info.get('torch_cuda')}, " \
               f"cuDNN {env_info.get('cudnn')}); driver {env_info.get('driver', 'n/a')}"
        if env_info.get("memory_gib"):
            line += f"; {env_info['memory_gib']} GiB, {env_info.get('multiprocessors')} SMs"
        if ceil:
            line += f"; measured: bf16 matmul {ceil['bf16_matmul_tflops']} TFLOP/s, copy {ceil['copy_tb_per_s']} TB/s"
        lines["env"] = line
        details["env"] = (work / "env" / "env.md").read_text() if (work / "env" / "env.md").is_file() else ""

    tests = cuda_test_results(work)
    if tests:
        figures["cuda_tests"] = {k: tests.get(k) for k in ("runner", "passed", "failed", "skipped")}
        figures["cuda_tests"]["failed_tests"] = [t["name"] for t in tests["tests"] if t["outcome"] == "failed"]
        lines["cuda_tests"] = (f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped "
                               f"({tests['runner']})" + (f"; failed: {', '.join(figures['cuda_tests']['failed_tests'])}"
                                                         if tests["failed"] else ""))
        md = ["| test | outcome | seconds |", "|---|---|---|"]
        md += [f"| {t['name']} | {t['outcome']} | {fmt(t['seconds'])} |" for t in tests["tests"]]
        if tests["measurements"]:
            md += ["", "What each test measured (JSON lines from the tests, tolerances beside):", "", "```"]
            md += [json.dumps(m) for m in tests["measurements"]] + ["```"]
        for t in tests["tests"]:
            if t["outcome"] == "failed":
                md += ["", f"{t['name']} failed:", "", "```", t["message"][-1500:], "```"]
        details["cuda_tests"] = "\n".join(md)

    speed = read_json(work / "speed" / "speed.json")
    if speed and speed.get("training"):
        rows = speed["training"]
        by_name = {(r["variant"], r["batch"]): r for r in rows}
        batch = rows[0]["batch"]
        fast, fp32 = by_name.get((FAST_BF16, batch)), by_name.get((FAST_FP32, batch))
        ref = by_name.get((REFERENCE, batch))
        f = {"batch": batch, "reference_ms": ref and ref["ms_per_step"],
             "reference_peak_gib": ref and ref["peak_gib"],
             "fast_bf16_ms": fast and fast["ms_per_step"], "fast_bf16_x_reference": fast and fast["x_reference"],
             "fast_bf16_patches_per_s": fast and fast["patches_per_s"], "fast_bf16_peak_gib": fast and fast["peak_gib"],
             "fast_fp32_ms": fp32 and fp32["ms_per_step"], "fast_fp32_x_reference": fp32 and fp32["x_reference"],
             # the target is at the reference's batch; the double batch's ratio is against its own reference
             "best_x_reference": max(r["x_reference"] for r in rows if r["batch"] == batch),
             "loader_patches_per_s": (speed.get("loader") or {}).get("patches_per_s")}
        graph, host = by_name.get((GRAPH, batch)), by_name.get((HOST_CHECKS, batch))
        f.update(graph_ms=graph and graph["ms_per_step"], graph_x_reference=graph and graph["x_reference"],
                 host_checks_ms=host and host["ms_per_step"])
        figures["speed"] = f
        peak = f" , peak {fmt(f['fast_bf16_peak_gib'])} GiB" if f["fast_bf16_peak_gib"] is not None else ""
        lines["speed"] = (f"batch {batch}: reference {fmt(f['reference_ms'])} ms; fast bf16+CL "
                          f"{fmt(f['fast_bf16_ms'])} ms = {fmt(f['fast_bf16_x_reference'], 2)}x, "
                          f"{fmt(f['fast_bf16_patches_per_s'], 0)} patches/s{peak}; fast fp32 "
                          f"{fmt(f['fast_fp32_x_reference'], 2)}x; host-side checks {fmt(f['host_checks_ms'])} ms; "
                          f"CUDA graph {fmt(f['graph_ms'])} ms = {fmt(f['graph_x_reference'], 2)}x").replace(" ,", ",")
        details["speed"] = (work / "speed" / "speed.md").read_text() if (work / "speed" / "speed.md").is_file() else ""
        try:
            speed_figure(work / "speed" / "speed.png", rows, f"training step, ms (lower is better): {speed['device']}")
        except Exception as exc:  # noqa: BLE001 - a figure must not cost the summary
            details["speed"] += f"\n\n(figure not drawn: {exc})"

    compiled = read_json(work / "compile" / "compile.json")
    if compiled:
        train = next((r for r in compiled.get("training", []) if r["variant"] == COMPILED_BLOCKS), None)
        infer = {r["precision"]: r for r in compiled.get("inference", [])}
        blocks = next((r for k, r in infer.items() if k.endswith("blocks compiled")), None)
        plain = next((r for k, r in infer.items() if k.startswith("bf16") and not k.endswith("compiled")), None)
        figures["compile"] = {"step_ms": train and train["ms_per_step"], "step_x_reference": train and train["x_reference"],
                              "inference_mpix_per_s": blocks and blocks["mpix_per_s"],
                              "plain_inference_mpix_per_s": plain and plain["mpix_per_s"]}
        c = figures["compile"]
        lines["compile"] = (f"step with compiled blocks {fmt(c['step_ms'])} ms = {fmt(c['step_x_reference'], 2)}x; "
                            f"inference {fmt(c['inference_mpix_per_s'], 2)} MPix/s against "
                            f"{fmt(c['plain_inference_mpix_per_s'], 2)} uncompiled")
        details["compile"] = (work / "compile" / "compile.md").read_text() if (work / "compile" / "compile.md").is_file() else ""

    inference = read_json(work / "inference" / "inference.json")
    if inference and inference.get("inference"):
        rows = inference["inference"]
        bf16 = {r["size"]: r for r in rows if r["precision"].startswith("bf16")}
        largest = max(bf16) if bf16 else None
        figures["inference"] = {f"bf16_{s}_mpix_per_s": r["mpix_per_s"] for s, r in bf16.items()}
        figures["inference"].update({f"bf16_{s}_peak_gib": r["peak_gib"] for s, r in bf16.items()})
        figures["inference"]["largest"] = largest
        lines["inference"] = "; ".join(f"{s}x{s} {r['precision']}: {fmt(r['mpix_per_s'], 2)} MPix/s"
                                       for s, r in sorted(bf16.items()))
        details["inference"] = (work / "inference" / "inference.md").read_text() \
            if (work / "inference" / "inference.md").is_file() else ""

    prof = read_json(work / "profile" / "profile.json")
    if prof and prof.get("variants"):
        figures["profile"] = [{k: v.get(k) for k in ("variant", "wall_ms", "kernels", "kernel_ms", "busy", "peak_gib")}
                              | {"top": [t["name"] for t in v["top"][:5]]} for v in prof["variants"]]
        parts = []
        for v in prof["variants"]:
            text = f"{v['variant']} {fmt(v['wall_ms'])} ms"
            if v.get("kernels") is not None:
                text += f", {v['kernels']} kernels, GPU busy {fmt(100 * v['busy'], 0)}%"
            text += f", top: {v['top'][0]['name'][:40]}" if v["top"] else ""
            parts.append(text)
        lines["profile"] = "; ".join(parts)
        md = (work / "profile" / "profile.md").read_text() if (work / "profile" / "profile.md").is_file() else ""
        details["profile"] = md

    quality = quality_results(work)
    if quality:
        figures["quality"], texts, md = {}, [], []
        for task, q in quality.items():
            meta, rows = q["meta"], q["rows"]
            figures["quality"][task] = q
            head = f"{task}, {meta.get('steps', '?')} steps x {meta.get('batch', '?')} per run"
            if rows:
                cells = [f"{r['method']} {r['psnr']}" + (f" (sigma {r['sigma']})" if r.get("sigma") else "")
                         for r in rows]
                texts.append(f"{head}; test PSNR (dB, best validated checkpoint): " + "; ".join(cells))
            else:
                texts.append(f"{head}; no results table (cut short); best validation PSNR so far: " + "; ".join(
                    f"{k} {fmt(v['best_val_psnr'], 2)} at step {v['last_step']}" for k, v in q["runs"].items()))
            md += [f"### {task}", "", f"Methods {meta.get('methods')}"
                   + (", SOT also with --null-space" if meta.get("null_space") else "")
                   + f", {meta.get('steps')} steps of {meta.get('batch')} patches each, sigma {meta.get('sigma')}, "
                   f"seeds {meta.get('seeds')}, networks {meta.get('networks', '?')}; photographs: {meta.get('photos')}. "
                   f"Figures: quality/{task}/crops.png, quality/{task}/curves.png.", ""]
            if (work / "quality" / task / "results.md").is_file():
                md.append((work / "quality" / task / "results.md").read_text())
            if q["runs"]:
                md += ["", "Validation PSNR per run (step, dB):", ""]
                md += [f"- {k}: {v['val_curve']}" for k, v in q["runs"].items()]
            md.append("")
        lines["quality"] = " || ".join(texts)
        details["quality"] = "\n".join(md)
    return figures, lines, details


def targets(figures: dict, statuses: dict, mode: str) -> list[dict]:
    speed, inference = figures.get("speed") or {}, figures.get("inference") or {}
    tests = figures.get("cuda_tests") or {}
    largest = inference.get("largest")
    mpix = inference.get(f"bf16_{largest}_mpix_per_s") if largest else None
    compiled = (figures.get("compile") or {}).get("inference_mpix_per_s")
    if mpix is not None and compiled is not None and largest == 2048:  # the compile part restores 2048x2048
        mpix = max(mpix, compiled)
    rows = [
        {"target": f"training step >= {TARGET_STEP_RATIO:g}x the reference structure (batch {speed.get('batch', '?')})",
         "measured": f"{fmt(speed.get('best_x_reference'), 2)}x (bf16 + channels_last: "
                     f"{fmt(speed.get('fast_bf16_x_reference'), 2)}x)",
         "met": None if speed.get("best_x_reference") is None else speed["best_x_reference"] >= TARGET_STEP_RATIO},
        {"target": f"inference >= {TARGET_INFERENCE_MPIX:g} MPix/s at 2048x2048",
         "measured": f"{fmt(mpix, 1)} MPix/s at {largest}x{largest}" if largest else "n/a",
         "met": None if mpix is None or largest != 2048 else mpix >= TARGET_INFERENCE_MPIX},
        {"target": "no CUDA test fails",
         "measured": f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, {tests.get('skipped', 0)} skipped"
                     if tests else f"no results ({statuses.get('cuda_tests', 'not run')})",
         "met": None if not tests else (tests.get("failed") == 0 and statuses.get("cuda_tests") == "pass")},
        {"target": "peak memory of the step reported",
         "measured": f"{fmt(speed.get('fast_bf16_peak_gib'))} GiB (bf16 + channels_last), reference "
                     f"{fmt(speed.get('reference_peak_gib'))} GiB",
         "met": None if speed.get("fast_bf16_peak_gib") is None else True},
    ]
    if mode != "gpu":
        for r in rows:
            r["met"] = None
    return rows


def summary(args) -> int:
    work = Path(args.work)
    statuses = {}
    records = {}
    for r in read_jsonl(work / "status.jsonl"):
        statuses[r["part"]] = r["status"]
        records[r["part"]] = r
    figures, lines, details = part_figures(work, args.mode)
    env_info = figures.get("env") or {}
    elapsed = time.time() - args.started
    selected = [p for p in args.parts.split(",") if p]
    header = [f"# GPU check: {env_info.get('device', '?')}, {time.strftime('%Y-%m-%d')}", ""]
    if args.mode == "dry":
        header += ["**Dry run on the CPU at tiny sizes:** these figures say only that each part runs; the CUDA "
                   "tests were rehearsed on the CPU (SOT_CUDA_TEST_DEVICE=cpu).", ""]
    header += [f"torch {env_info.get('torch', '?')} (CUDA {env_info.get('torch_cuda')}, cuDNN {env_info.get('cudnn')}); "
               f"driver {env_info.get('driver', 'n/a')}; started {time.strftime('%H:%M:%S', time.localtime(args.started))}; "
               f"{elapsed:.0f} s of a {args.budget:.0f} s budget", ""]
    table = ["| part | status | seconds (limit) | key figures |", "|---|---|---|---|"]
    parts_json = []
    for part in selected:
        rec = records.get(part, {})
        status = rec.get("status", "running" if part == args.current else "not run")
        seconds = f"{rec['seconds']} ({rec.get('timeout_s')})" if "seconds" in rec else ""
        line = lines.get(part, "")
        table.append(f"| {part} | {status} | {seconds} | {line.replace('|', '/')} |")
        parts_json.append({"part": part, **rec, "status": status, "figures": figures.get(part), "line": line})
    goal = targets(figures, statuses, args.mode)
    target_md = ["## Targets (H100 or H200, batch 32, ratios from the same run)", "",
                 "| target | measured | met |", "|---|---|---|"]
    target_md += [f"| {t['target']} | {t['measured']} | "
                  f"{'n/a' if t['met'] is None else ('yes' if t['met'] else 'NO')} |" for t in goal]
    titles = {"env": "Machine", "cuda_tests": "CUDA tests (tests/test_cuda.py)",
              "speed": "Training step (bench/speed.py, same batch and run)",
              "compile": "Attention blocks compiled (bench/speed.py --compile-blocks)",
              "inference": "Inference (bench/speed.py, no grad)", "profile": "Profile of one step (bench/profile_step.py)",
              "quality": "Quality at the paper's sizes, a fixed budget (experiments/compare_costs.py)"}
    body = []
    for part in selected:
        if details.get(part):
            body += ["", f"## {titles[part]}", "", details[part].strip()]
    text = "\n".join(header + table + [""] + target_md + body) + "\n"
    (work / "summary.md").write_text(text)
    result = {"mode": args.mode, "device": env_info.get("device"), "torch": env_info.get("torch"),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget, "elapsed_s": round(elapsed, 1),
              "parts": parts_json, "targets": goal, "env": env_info}
    (work / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    if args.print:  # the table and the targets, for a console that keeps only an output's tail
        print("\n".join(header + table + [""] + target_md))
        print("\n(details, per part: summary.md; everything measured: gpu_check.tar.gz)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("env")
    e.add_argument("--out", required=True)
    e.add_argument("--dry-run", action="store_true")
    q = sub.add_parser("quality-steps")
    q.add_argument("--requested", type=int, required=True)
    q.add_argument("--seconds", type=float, required=True)
    q.add_argument("--speed", required=True, help="the speed part's JSON")
    q.add_argument("--methods", type=int, default=3, help="training runs in all")
    q.add_argument("--tasks", type=int, default=1, help="tasks they belong to (each builds its data)")
    q.add_argument("--batch", type=int, default=32)
    s = sub.add_parser("summary")
    s.add_argument("--work", required=True)
    s.add_argument("--mode", choices=("gpu", "dry"), required=True)
    s.add_argument("--parts", default=",".join(PARTS))
    s.add_argument("--started", type=float, required=True, help="the check's start, seconds since the epoch")
    s.add_argument("--budget", type=float, required=True)
    s.add_argument("--current", default="", help="the part running now, if any")
    s.add_argument("--print", action="store_true", help="print the status table and the targets")
    args = p.parse_args(argv)
    return {"env": env, "quality-steps": quality_steps, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
