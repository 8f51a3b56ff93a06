"""The CUDA path against the CPU: the training step (fp32, bf16, channels_last), inference (tiles, the
out-of-memory fallback), the uint8 loader, the task scripts and NCCL under torchrun.

Marked ``cuda`` and skipped where CUDA is not available, so the CPU suite only lists them. With
``SOT_CUDA_TEST_DEVICE=cpu`` they are rehearsed on the CPU instead (small networks, a simulated
out-of-memory error, gloo instead of NCCL): ``bench/gpu_check.sh --dry-run`` does that, so that the
tests themselves have run somewhere before their first GPU.

They are plain functions (at most a ``tmp_path`` argument) that import pytest only where it is
installed, so that ``bench/run_cuda_tests.py`` can run them on a machine without it. Each test
prints, and appends to ``$SOT_CUDA_TEST_REPORT`` (JSON lines), what it measured beside its tolerance.

Tolerances. A training iteration is compared by the gradients of its three updates (critic, gradient
penalty, generator), each as ||a - b|| / ||b||, by G(x) (largest absolute difference) and by its losses,
with the critic's convolutions He-initialised (see ``networks``: at the reference's init its first
update is pure cancellation, 1e-3 apart between fp32 and float64 on any device):
- CUDA float64 against CPU float64: gradients 1e-9 (the same math; only the summation order differs);
- CUDA fp32 without TF32 against CPU float64: G(x) 2e-4 (cuDNN's fp32 algorithms include Winograd
  transforms, less exact than a direct convolution; the CPU measured 1e-7), losses 1e-3 (the critic
  loss is a difference of two means), gradients 2e-2. The gradients' bound is loose because of the
  LeakyReLU kinks: a unit whose input lies within round-off of zero takes the other slope in fp32 and shifts every earlier layer's gradient coherently (seen in the
  CPU rehearsal at the real sizes: one unit of 262k, 0.5% in the first five critic layers, 1e-6 in
  the rest). A wrong kernel, layout or formula moves them by O(1);
- CUDA fp32 with PyTorch's defaults (cuDNN may use TF32, a 10-bit mantissa): G(x) 1e-2, losses 5e-2,
  gradients 5e-2;
- bf16 autocast against fp32, and bf16 in channels_last against contiguous: G(x) 2e-2, losses 0.1
  (the critic's scores come out of bf16 layers), gradients 0.25 (the CPU rehearsal measured
  0.05-0.10: every convolution's inputs are rounded to an 8-bit mantissa, through the penalty's
  double backward too);
- channels_last against contiguous in fp32: as fp32 against float64;
- inference (largest absolute pixel difference): tiled against untiled 2e-3 in fp32 and 3e-2 in bf16;
  the device against the CPU in fp32 1e-3; channels_last weights against contiguous as G(x) above.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import unittest
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.data.loader import UnpairedH5Dataset, UnpairedSampler  # noqa: E402
from common.training.devices import Local  # noqa: E402
from common.evaluation.inference import restore  # noqa: E402
from common.networks import Critic, Generator  # noqa: E402
from common.training.devices import to_device  # noqa: E402
from common.sot import make_optimizers, train_step  # noqa: E402

try:
    import pytest
except ImportError:  # bench/run_cuda_tests.py runs these functions without pytest
    pytest = None

DEVICE = os.environ.get("SOT_CUDA_TEST_DEVICE", "cuda")
REHEARSAL = DEVICE == "cpu"
ENABLED = REHEARSAL or torch.cuda.is_available()
SKIP_REASON = "needs CUDA (SOT_CUDA_TEST_DEVICE=cpu rehearses these tests on the CPU)"
# The paper's network widths on a GPU; small ones where the CPU rehearses (SOT_CUDA_TEST_SIZES overrides).
REAL_SIZES = os.environ.get("SOT_CUDA_TEST_SIZES", "small" if REHEARSAL else "real") == "real"

if pytest is not None:
    pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not ENABLED, reason=SKIP_REASON)]

if torch.cuda.is_available() and not REHEARSAL:
    # conftest.py keeps the CPU suite at 2 threads; the float64 CPU references here want the machine
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))

SIGMA, COST = 10.0, "sot-l0.5"   # the default cost: it goes through the FFT
BATCH = 2
PATCH = 64 if REAL_SIZES else 32  # the critic's input; real widths at 64x64 keep the float64 CPU reference quick

# name: (gradients, G(x) largest absolute difference, losses relative); see the module's docstring
FLOAT64_TOLERANCE = (1e-9, 1e-9, 1e-9)
FP32_TOLERANCE = (2e-2, 2e-4, 1e-3)
# gradients: measured on an H200 (2026-11-27) 0.031-0.044 with cuDNN's TF32 convolutions throughout, 0.069
# when the critic's first layer ran as an fp32 matmul beside them: TF32's 10-bit mantissa, amplified by the
# penalty's double backward
TF32_TOLERANCE = (8e-2, 1e-2, 5e-2)
BF16_TOLERANCE = (0.25, 2e-2, 0.1)
INFERENCE_FP32_TOLERANCE = 1e-3  # the largest of ~180k pixel differences, device against CPU
TILE_FP32_TOLERANCE = 2e-3
TILE_BF16_TOLERANCE = 3e-2


# ----------------------------------------------------------------------------- helpers
def skip(reason: str):
    # unittest.SkipTest is a skip for pytest and for bench/run_cuda_tests.py alike
    raise unittest.SkipTest(reason)


def record(test: str, **values) -> None:
    """Print what a test measured and append it to $SOT_CUDA_TEST_REPORT for the GPU check's summary."""
    line = json.dumps({"test": test, "device": device_name(), **values},
                      default=lambda v: float(v) if isinstance(v, (torch.Tensor, np.floating)) else str(v))
    print(line)
    path = os.environ.get("SOT_CUDA_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def device_name() -> str:
    return "CPU (rehearsal)" if REHEARSAL else torch.cuda.get_device_name()


def device() -> torch.device:
    if not ENABLED:
        skip(SKIP_REASON)
    return torch.device(DEVICE)


@contextmanager
def strict_fp32():
    """True float32 in cuDNN and cuBLAS: PyTorch lets cuDNN convolutions use TF32 by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def networks(seed: int = 0, well_conditioned: bool = True) -> tuple[Generator, Critic]:
    """G and D. ``well_conditioned`` re-draws the critic's convolutions to keep its signal's scale
    (He init for LeakyReLU 0.2): at the reference's N(0, 0.02) the signal shrinks ~1000x over ten
    layers, the critic's scores differ by ~1e-4 and its input gradient is ~0, so its first update is a
    difference of nearly equal numbers that fp32 round-off alone moves by 1e-3 (relative) and bf16 by
    1e-1, on any device. The device comparisons want to see the device, not that cancellation."""
    torch.manual_seed(seed)
    if REAL_SIZES:
        g, d = Generator(), Critic(hidden=640, input_size=PATCH)
    else:
        g, d = Generator(width=16, increment=8), Critic(hidden=16, input_size=PATCH, width=8)
    if well_conditioned:
        for m in d.features:
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, a=0.2)
    return g, d


def smooth_images(n: int, h: int, w: int, seed: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Photo-like test images: coarse noise upsampled, so that neighbouring pixels correlate."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 8 + 2, w // 8 + 2, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    fine = fine + 0.05 * torch.rand(n, 3, h, w, generator=g)
    return (lo + (hi - lo) * fine).clamp(0, 1)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark degraded inputs and bright clean patches, so that the two sides differ."""
    return smooth_images(BATCH, PATCH, PATCH, seed, 0.0, 0.4), smooth_images(BATCH, PATCH, PATCH, seed + 1, 0.5, 1.0)


class FixedDraws(Local):
    """One process, but the gradient penalty's U(0, 1) draws come from a CPU generator: the same numbers
    on every device (CUDA's generator draws other numbers than the CPU's from the same seed)."""

    def __init__(self, seed: int = 7):
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, n, device, dtype=torch.float32):
        return torch.rand(n, 1, 1, 1, generator=self.generator, dtype=torch.float64).to(device=device, dtype=dtype)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().cpu().flatten() for p in module.parameters()])


class GradientRecorder(torch.optim.SGD):
    """SGD that keeps a float64 CPU copy of the gradients of every update it applies.

    The comparisons look at these gradients (the critic step's, the penalty step's, the generator
    step's) rather than at weights after an update: RMSprop's first step is ~10 lr * sign(g) and
    would turn round-off in tiny gradients into full-size differences. The small learning rate keeps
    each later update a small perturbation of the same state on both sides."""

    def __init__(self, params, lr: float = 1e-4):
        super().__init__(params, lr=lr)
        self.seen: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.seen.append(torch.cat([p.grad.double().cpu().flatten() for group in self.param_groups
                                    for p in group["params"] if p.grad is not None]))
        return super().step(closure)

    def guarded_step(self, ok: torch.Tensor) -> None:  # train_step's interface; reading ok here is fine
        if bool(ok):
            self.step()


UPDATES = ("critic", "penalty", "generator")


def run_step(dev, dtype=torch.float32, precision="fp32", channels_last=False, steps=1, optimizer="record",
             reference_init=False):
    """``steps`` training iterations from the same start: the gradients of the first one's three
    updates (with ``optimizer="record"``), the statistics, G(x) and the weights' changes."""
    g, d = networks(well_conditioned=not reference_init)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g, d = g.to(device=dev, dtype=dtype, memory_format=fmt), d.to(device=dev, dtype=dtype, memory_format=fmt)
    x, clean = (t.to(device=dev, dtype=dtype).contiguous(memory_format=fmt) for t in batch())
    start_g, start_d = flat(g), flat(d)
    if optimizer == "record":
        opt_g = GradientRecorder([p for p in g.parameters() if p.requires_grad])
        opt_d = GradientRecorder(d.parameters())
    else:
        opt_g, opt_d = make_optimizers(g, d, 1e-4)
    draws, stats = FixedDraws(), []
    for _ in range(steps):
        s, fake = train_step(g, d, opt_g, opt_d, x, clean, SIGMA, COST, precision, draws)
        stats.append({k: (bool(v) if k == "skipped" else float(v)) for k, v in s.items()})
    out = {"stats": stats, "fake": fake.double().cpu(), "delta_g": flat(g) - start_g, "delta_d": flat(d) - start_d,
           "weights_finite": bool(all(torch.isfinite(p).all() for p in [*g.parameters(), *d.parameters()]))}
    if optimizer == "record":
        out.update(critic=opt_d.seen[0], penalty=opt_d.seen[1], generator=opt_g.seen[0])
    return out


def relative(a: dict, b: dict) -> dict:
    """||a - b|| / ||b|| for the gradients of each of the three updates, G(x)'s largest difference and
    the losses' relative differences."""
    out = {k: ((a[k] - b[k]).norm() / b[k].norm()).item() for k in UPDATES}
    out["fake_max_abs"] = (a["fake"] - b["fake"]).abs().max().item()
    for k in ("loss_d", "gp", "loss_g"):
        out[f"{k}_rel"] = abs(a["stats"][0][k] - b["stats"][0][k]) / abs(b["stats"][0][k])
    return out


def check(diff: dict, tolerance: tuple[float, float, float], what: str) -> None:
    gradients, forward, losses = tolerance
    assert max(diff[k] for k in UPDATES) < gradients, (what, "gradients", diff)
    assert diff["fake_max_abs"] < forward, (what, "G(x)", diff)
    assert max(diff[f"{k}_rel"] for k in ("loss_d", "gp", "loss_g")) < losses, (what, "losses", diff)


def run_command(args: list[str], timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group and kill the whole group if it overruns (torchrun and
    DataLoader workers must not outlive a test and hold the GPU)."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# ----------------------------------------------------------------------------- the training step
def test_step_on_the_device_matches_cpu_float64():
    """One iteration on the device (channels_last, as training runs there) against the same one on the
    CPU in float64: the same math in float64, round-off in strict fp32, more with PyTorch's default
    TF32 convolutions."""
    dev = device()
    ref = run_step("cpu", torch.float64)
    on64 = relative(run_step(dev, torch.float64, channels_last=True), ref)
    with strict_fp32():
        on32 = relative(run_step(dev, torch.float32, channels_last=True), ref)
    tf32 = relative(run_step(dev, torch.float32, channels_last=True), ref)
    record("step_vs_cpu_float64", float64=on64, fp32=on32, fp32_default_tf32=tf32,
           tolerance={"float64": FLOAT64_TOLERANCE, "fp32": FP32_TOLERANCE, "tf32": TF32_TOLERANCE},
           real_sizes=REAL_SIZES)
    assert not any(s["skipped"] for s in ref["stats"])
    check(on64, FLOAT64_TOLERANCE, "float64")
    check(on32, FP32_TOLERANCE, "fp32")
    check(tf32, TF32_TOLERANCE, "fp32 with TF32")


def test_bf16_step_is_close_to_fp32_and_trains():
    """bf16 autocast through the gradient penalty's double backward: close to fp32 in one iteration,
    and three iterations with the real optimisers stay finite and move the weights."""
    dev = device()
    with strict_fp32():
        fp32 = run_step(dev, precision="fp32", channels_last=True)
        bf16 = run_step(dev, precision="bf16", channels_last=True)
    diff = relative(bf16, fp32)
    runs = run_step(dev, precision="bf16", channels_last=True, steps=3, optimizer="rmsprop", reference_init=True)
    record("bf16_vs_fp32", **diff, tolerance=BF16_TOLERANCE, rmsprop_steps_finite=runs["weights_finite"],
           rmsprop_last_stats=runs["stats"][-1])
    check(diff, BF16_TOLERANCE, "bf16")
    assert runs["weights_finite"] and not any(s["skipped"] for s in runs["stats"]), runs["stats"]
    assert runs["delta_g"].abs().max() > 0 and runs["delta_d"].abs().max() > 0


def test_channels_last_on_and_off_agree():
    """channels_last is a layout, not a value change: the step and inference agree either way."""
    dev = device()
    with strict_fp32():
        fp32 = relative(run_step(dev, channels_last=True), run_step(dev, channels_last=False))
        g = networks()[0].to(dev).eval()
        x = smooth_images(1, 96, 136, seed=4).to(dev)
        plain = restore(g, x, "fp32")
        # restore() hands CUDA inputs over in channels_last; the weights' layout is what differs here
        layered = restore(g.to(memory_format=torch.channels_last), x, "fp32")
        inference = (plain - layered).abs().max().item()
    bf16 = relative(run_step(dev, precision="bf16", channels_last=True),
                    run_step(dev, precision="bf16", channels_last=False))
    record("channels_last", fp32=fp32, bf16=bf16, inference_fp32_max_abs=inference,
           tolerance={"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE})
    check(fp32, FP32_TOLERANCE, "fp32")
    check(bf16, BF16_TOLERANCE, "bf16")
    assert inference < FP32_TOLERANCE[1]


# ----------------------------------------------------------------------------- inference
def inference_generator() -> Generator:
    torch.manual_seed(5)
    return Generator() if REAL_SIZES else Generator(width=16, increment=8)


def test_tiled_inference_matches_untiled():
    """Tiles with shared attention statistics against the whole image, in fp32 and bf16, and the
    device's whole-image result against the CPU's."""
    dev = device()
    g = inference_generator().eval()
    x = smooth_images(1, 202, 298, seed=6)  # not a multiple of the tile or of 4
    with strict_fp32():
        cpu = restore(g, x, "fp32")
        g = g.to(dev)
        xd = x.to(dev)
        full32 = restore(g, xd, "fp32")
        tiled32 = restore(g, xd, "fp32", tile=96, overlap=32)
    full16 = restore(g, xd, "bf16")
    tiled16 = restore(g, xd, "bf16", tile=96, overlap=32)
    measured = {"fp32_tiled_vs_untiled": (tiled32 - full32).abs().max().item(),
                "bf16_tiled_vs_untiled": (tiled16 - full16).abs().max().item(),
                "bf16_vs_fp32": (full16 - full32).abs().max().item(),
                "device_vs_cpu_fp32": (full32.cpu() - cpu).abs().max().item()}
    record("tiled_inference", **measured, tolerance={"fp32": TILE_FP32_TOLERANCE, "bf16": TILE_BF16_TOLERANCE})
    assert tiled32.shape == full32.shape == x.shape
    assert measured["fp32_tiled_vs_untiled"] < TILE_FP32_TOLERANCE
    assert measured["bf16_tiled_vs_untiled"] < TILE_BF16_TOLERANCE
    assert measured["device_vs_cpu_fp32"] < INFERENCE_FP32_TOLERANCE


class _SimulatedMemory:
    """For the CPU rehearsal: a forward pre-hook that raises CUDA's out-of-memory error for inputs
    larger than ``pixels``, as a capped GPU would."""

    def __init__(self, module: torch.nn.Module, pixels: int):
        self.pixels = pixels
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        if inputs[0].shape[-2] * inputs[0].shape[-1] > self.pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated for the CPU rehearsal)")


def test_out_of_memory_falls_back_to_tiles():
    """Cap the process's GPU memory between what the first fallback tiles need and what the whole
    image needs: restore() must hit a real out-of-memory error, say so, and return the tiled result."""
    dev = device()
    g = inference_generator().to(dev).eval()
    side = 2048 if REAL_SIZES and not REHEARSAL else 256
    x = smooth_images(1, side, side, seed=8).to(dev)
    if REHEARSAL:
        expected_tile = 128  # 1024, 512 and 256 still hold the whole 256x256 image
        tiled = restore(g, x, "bf16", tile=expected_tile, overlap=32)
        full = restore(g, x, "bf16")
        hook = _SimulatedMemory(g, (expected_tile + 64) ** 2)
        cap = None
    else:
        expected_tile = 1024
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        tiled = restore(g, x, "bf16", tile=expected_tile, overlap=32)  # what the fallback's first try computes
        tiled_reserved = torch.cuda.max_memory_reserved()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        full = restore(g, x, "bf16")
        full_allocated = torch.cuda.max_memory_allocated()
        tiled, full = tiled.cpu(), full.cpu()  # nothing of theirs under the cap
        cap = int(1.5 * tiled_reserved)  # room for the allocator's rounding, far below the whole image's need
        if cap >= full_allocated:
            skip(f"cannot separate tiles ({tiled_reserved / 2**30:.2f} GiB) from the whole image "
                 f"({full_allocated / 2**30:.2f} GiB) with a memory cap")
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / total, torch.cuda.current_device())  # wants an index
        torch.cuda.reset_peak_memory_stats()
    messages = io.StringIO()
    try:
        with redirect_stderr(messages):
            out = restore(g, x, "bf16")
    finally:
        if REHEARSAL:
            hook.handle.remove()
        else:
            peak = torch.cuda.max_memory_reserved()
            torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
            torch.cuda.empty_cache()
    said = messages.getvalue()
    out, tiled, full = out.cpu(), tiled.cpu(), full.cpu()
    measured = {"side": side, "vs_tiled_max_abs": (out - tiled).abs().max().item(),
                "vs_untiled_max_abs": (out - full).abs().max().item(), "message": said.strip()[:300]}
    if cap is not None:
        measured.update(cap_gib=cap / 2**30, tiles_reserved_gib=tiled_reserved / 2**30,
                        whole_image_allocated_gib=full_allocated / 2**30, peak_reserved_under_cap_gib=peak / 2**30)
    record("out_of_memory_fallback", **measured)
    # the note names the GPU on CUDA; the CPU rehearsal raises CUDA's own error, so either wording
    assert ("out of GPU memory" if dev.type == "cuda" else "memory for a") in said, said
    assert f"{expected_tile}x{expected_tile} tiles" in said, said
    assert measured["vs_tiled_max_abs"] < TILE_BF16_TOLERANCE  # the same tiles, unless 1024 did not fit either
    assert measured["vs_untiled_max_abs"] < TILE_BF16_TOLERANCE
    if cap is not None:
        assert peak <= cap


# ----------------------------------------------------------------------------- data
def write_training_set(folder: Path, n: int, scale: int, patch: int, seed: int = 0) -> Path:
    """A uint8 training file: ``n`` degraded patches (x``scale`` smaller) and ``n`` clean ones."""
    import h5py

    clean = smooth_images(n, patch, patch, seed, 0.3, 1.0)
    degraded = torch.nn.functional.avg_pool2d(clean, scale) * 0.8 if scale > 1 else clean * 0.6
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "train.h5", "w") as f:
        f.create_dataset("data", data=(degraded * 255 + 0.5).to(torch.uint8).numpy())
        f.create_dataset("label", data=(clean * 255 + 0.5).to(torch.uint8).numpy())
        f.attrs["layout"] = "NCHW"
    return folder


def test_uint8_patches_from_workers_are_scaled_on_the_device(tmp_path):
    """DataLoader workers read HDF5 beside an initialised CUDA context; uint8 patches travel pinned and
    are scaled on the device, channels_last on CUDA, to exactly x / 255."""
    dev = device()
    torch.zeros(1, device=dev)  # the CUDA context exists before the workers fork, as in training
    dataset = UnpairedH5Dataset(write_training_set(tmp_path / "data", 32, 1, 32), raw_uint8=True)
    sampler = UnpairedSampler(len(dataset), dataset.num_labels, 8, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2,
                                         pin_memory=dev.type == "cuda", drop_last=True, prefetch_factor=2)
    batches = 0
    for degraded, clean in loader:
        assert degraded.dtype == clean.dtype == torch.uint8
        if dev.type == "cuda":
            assert degraded.is_pinned() and clean.is_pinned()
        moved = to_device(clean, dev)
        assert moved.device.type == dev.type and moved.dtype == torch.float32
        if dev.type == "cuda":
            assert moved.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(moved.cpu(), clean.float() / 255, rtol=0, atol=1e-7)  # x / 255, to an ulp
        batches += 1
    record("loader", batches=batches, pinned=dev.type == "cuda")
    assert batches == 4


# ----------------------------------------------------------------------------- the scripts
SMALL_FLAGS = ["--gen-width", "16", "--gen-increment", "8", "--critic-width", "8"]


def write_images(folder: Path, names: list[str], side: int, scale: int, seed: int) -> tuple[Path, Path]:
    """Held-out pairs for validation and test.py: clean ``side`` x ``side`` and degraded inputs."""
    import cv2

    for i, name in enumerate(names):
        clean = smooth_images(1, side, side, seed + i, 0.3, 1.0)
        degraded = torch.nn.functional.avg_pool2d(clean, scale) * 0.8 if scale > 1 else clean * 0.6
        for sub, img in (("gt", clean), ("input", degraded)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            pixels = (img[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255 + 0.5).astype(np.uint8)
            cv2.imwrite(str(folder / sub / f"{name}.png"), pixels)
    return folder / "input", folder / "gt"


def metrics_steps(run: Path, kind: str) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_train_with_workers_resume_and_test_on_the_device(tmp_path):
    """What a user does first: sr/train.py on the device with 4 loader workers, step checkpoints and
    validation; --resume auto to a later step; then sr/test.py on the checkpoint."""
    dev = device()
    trainset = write_training_set(tmp_path / "data", 48, 4, 128)
    val_in, val_gt = write_images(tmp_path / "val", ["a", "b"], 128, 4, seed=20)
    out = tmp_path / "runs"
    sizes = [] if REAL_SIZES else SMALL_FLAGS
    threads = "4" if dev.type == "cuda" else "2"
    first = run_command([sys.executable, "sr/train.py", "--trainset", str(trainset), "--out", str(out),
                         "--name", "gpu", "--device", dev.type, "--threads", threads, "--batchSize", "4",
                         "--sigma", "10", "--seed", "1", "--max-steps", "4", "--save-every", "2",
                         "--log-every", "1", "--val-input", str(val_in), "--val-gt", str(val_gt),
                         "--val-steps", "2", "--no-tensorboard", *sizes])
    assert first.returncode == 0, first.stderr[-3000:]
    run = out / "sr" / "gpu" / "sigma-10"
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == ("bf16" if dev.type == "cuda" else "fp32")
    assert metrics_steps(run, "train") == [1, 2, 3, 4] and metrics_steps(run, "val")
    assert (run / "step-00000002.pt").is_file() and json.loads((run / "state.json").read_text())["step"] == 4

    resumed = run_command([sys.executable, "sr/train.py", "--resume", "auto", "--name", "gpu", "--out", str(out),
                           "--max-steps", "6", "--device", dev.type, "--threads", threads])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert metrics_steps(run, "train") == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "state.json").read_text())["step"] == 6

    save = tmp_path / "restored"
    tested = run_command([sys.executable, "sr/test.py", "--checkpoint", str(run / "last.pt"), "--input", str(val_in),
                          "--gt", str(val_gt), "--save", str(save), "--device", dev.type, "--no-lpips"])
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert f"device {dev.type}" in tested.stdout
    rows = (save / "metrics.csv").read_text().splitlines()
    mean = dict(zip(rows[0].split(","), rows[-1].split(",")))
    record("train_resume_test", val_psnr=[r.get("psnr") for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                                                        .splitlines()) if r["kind"] == "val"],
           test_psnr=float(mean["psnr"]), test_input_psnr=float(mean["input_psnr"]), real_sizes=REAL_SIZES)
    assert sorted(p.name for p in save.glob("*.png")) == ["a.png", "b.png"]
    # six steps from the reference's random start restore nothing yet (the CPU rehearsal at the real
    # sizes: 7.5 dB against the input's 17): the pipeline is under test here, not the model
    assert np.isfinite(float(mean["psnr"])) and float(mean["psnr"]) > 0


def cuda_graphs_device() -> torch.device:
    dev = device()
    if dev.type != "cuda":
        skip("CUDA graphs need CUDA: the CPU rehearsal cannot capture")
    return dev


def test_captured_step_matches_eager_over_several_steps():
    """--cuda-graphs on: the iteration captured once and replayed against the same iterations run eagerly,
    over steps that cross the warm-up, a critic-only key and the generator's updates; weights and losses
    to the bf16 tolerance (the same kernels; only launch order and workspace may differ)."""
    from common.training.devices import CapturedStep

    dev = cuda_graphs_device()
    runs = {}
    for name in ("eager", "captured"):
        g, d = networks()
        g, d = (m.to(dev, memory_format=torch.channels_last) for m in (g, d))
        opt_g, opt_d = make_optimizers(g, d, 1e-4)
        torch.manual_seed(5)

        def step(key, x, clean):
            return train_step(g, d, opt_g, opt_d, x, clean, SIGMA, COST, "bf16", Local(), None, key[0])
        run = CapturedStep(step, warmup=2) if name == "captured" else step
        losses = []
        for i in range(8):
            x, clean = (t.to(dev).contiguous(memory_format=torch.channels_last) for t in batch(seed=10 + i))
            stats, fake = run((i >= 3, 1e-4), x, clean)
            losses.append(float(stats["loss_d"]))
            assert not bool(stats["skipped"])
        runs[name] = {"g": flat(g), "d": flat(d), "losses": losses, "fake": fake.double().cpu()}
    a, b = runs["captured"], runs["eager"]
    diff = {k: float((a[k] - b[k]).norm() / b[k].norm()) for k in ("g", "d")}
    diff["losses"] = max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a["losses"], b["losses"]))
    diff["fake"] = float((a["fake"] - b["fake"]).abs().max())
    record("cuda_graphs_vs_eager", **diff)
    assert diff["g"] < 1e-2 and diff["d"] < 1e-2 and diff["fake"] < BF16_TOLERANCE[1], diff
    assert diff["losses"] < BF16_TOLERANCE[2], diff


def test_a_captured_run_trains_resumes_and_tests(tmp_path):
    """sr/train.py --cuda-graphs on: trains, saves, resumes to a later step (the graph captured again
    over the loaded state) and its checkpoint tests."""
    dev = cuda_graphs_device()
    trainset = write_training_set(tmp_path / "data", 48, 4, 128)
    out = tmp_path / "runs"
    common = ["--device", dev.type, "--cuda-graphs", "on", "--threads", "2"]
    first = run_command([sys.executable, "sr/train.py", "--trainset", str(trainset), "--out", str(out), "--name", "g",
                         "--batchSize", "4", "--sigma", "10", "--seed", "1", "--max-steps", "8", "--save-every", "4",
                         "--log-every", "1", "--no-tensorboard", *common])
    assert first.returncode == 0, first.stderr[-3000:]
    run = out / "sr" / "g" / "sigma-10"
    resumed = run_command([sys.executable, "sr/train.py", "--resume", "auto", "--name", "g", "--out", str(out),
                           "--max-steps", "12", *common])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics_steps(run, "train") == list(range(1, 13))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_d"]) for r in records if r["kind"] == "train")
    assert json.loads((run / "config.json").read_text())["cuda_graphs"] == "on"
    record("cuda_graphs_run", w=[r.get("w_distance") for r in records if r["kind"] == "train"])


def test_torchrun_with_nccl_matches_one_process(tmp_path):
    """torchrun with NCCL on one GPU (gloo where the CPU rehearses): the process group, DDP around the
    generator, the critic's hand-made all-reduce and the loop's collectives give the gradients one
    plain process gives. (train.py under torchrun with one process runs without a process group;
    this worker builds one, as two or more processes would.)"""
    device()
    result = tmp_path / "nccl.json"
    proc = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                        str(Path(__file__).resolve()), "--nccl-worker", str(result)],
                       timeout=180)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    measured = json.loads(result.read_text())
    record("torchrun_nccl", **measured, tolerance=1e-5)
    assert measured["backend"] == ("gloo" if REHEARSAL else "nccl")
    assert max(measured[k] for k in UPDATES) < 1e-5, measured
    assert measured["collectives_ok"] and not measured["skipped"]


def _nccl_worker(out: str) -> None:
    """Runs under torchrun: two iterations through Distributed (DDP, NCCL), then through Local, from the
    same start; the first iteration's gradients compared. Deterministic cuDNN kernels, so that the two
    differ by nothing but the collectives (the bilinear resampling's backward still adds atomically)."""
    import torch.distributed as torch_dist

    from common.training.devices import Distributed

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    dist = Distributed(DEVICE)
    runs = {}
    with strict_fp32():
        for name, ddp in (("distributed", True), ("local", False)):
            g, d = networks()
            g, d = g.to(dist.device), d.to(dist.device)
            if ddp:
                dist.broadcast_module(d)
            model_g = dist.wrap_generator(g) if ddp else g
            opt_g = GradientRecorder([p for p in g.parameters() if p.requires_grad])
            opt_d = GradientRecorder(d.parameters())
            x, clean = (t.to(dist.device) for t in batch())
            torch.manual_seed(100)  # the same penalty draws (from the device's generator) on both sides
            for _ in range(2):
                stats, _ = train_step(model_g, d, opt_g, opt_d, x, clean, SIGMA, COST, "fp32",
                                      dist if ddp else Local())
            runs[name] = {"critic": opt_d.seen[0], "penalty": opt_d.seen[1], "generator": opt_g.seen[0],
                          "skipped": bool(stats["skipped"])}
    collectives = (bool(dist.all_true(torch.tensor(True, device=dist.device))) and not dist.any_true(False)
                   and abs(dist.average(2.5) - 2.5) < 1e-12 and dist.broadcast_object("x") == "x")
    dist.barrier()
    a, b = runs["distributed"], runs["local"]
    result = {k: ((a[k] - b[k]).norm() / b[k].norm()).item() for k in UPDATES}
    result.update(backend=torch_dist.get_backend(), world=dist.world, collectives_ok=bool(collectives),
                  skipped=bool(a["skipped"] or b["skipped"]))
    Path(out).write_text(json.dumps(result))
    dist.close()


if __name__ == "__main__" and "--nccl-worker" in sys.argv:
    _nccl_worker(sys.argv[sys.argv.index("--nccl-worker") + 1])
