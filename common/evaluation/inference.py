"""Running the generator on whole images: precision, memory layout, and tiles for images too large.

Tiled inference has one subtlety: every channel-attention block pools its features over the whole
image, so a tile that pooled only itself would compute different attention weights than the whole
image does and leave seams. Tiles therefore share those statistics: a first pass over the tiles
records each pooling layer's sum over the tiles' interiors (which partition the image), and a
second pass runs every tile with the image-wide means in place of its own. The only difference left
from an untiled run is that the first pass's means were taken on features that had seen tile-local
attention upstream, a second-order effect well below 8-bit precision.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn

from ..networks import GENERATOR_MULTIPLE, pad_to_multiple
from ..system.errors import InputError
from ..system.files import available_memory, human_bytes
from ..system.text import note

MIN_AUTO_TILE = 128
MIN_TILE = 32      # a smaller tile would spend most of its time on its context (--tile 4: 300x the work)
TILE_CONTEXT = 32  # context pixels around a tile: enough that no pixel of a trained model's output changes
CPU_TILES = (1024, 512, 256, 128)
# Peak memory of the generator's forward pass without gradients, per pixel and per channel of its
# width: measured 31-51 bytes on the CPU (about ten feature maps alive at once); taken with margin.
ACTIVATION_BYTES_PER_WIDTH = 56
IMAGE_COPIES = 4          # float32 copies of the whole image around the network (input, padded, output, result)
MEMORY_SHARE = 0.8        # of the available memory, what one image may take


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the networks where asked; fp32 runs as written. While a CUDA graph is being
    captured, without autocast's cache of cast weights: a cast cached then would be served stale to
    code that runs outside the graph."""
    if precision == "bf16":
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=not capturing)
    return nullcontext()


def _forward(generator: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        return generator(x).float()


class SharedPooling:
    """Forward hooks on a network's global-average-pooling layers that record (``mode="record"``)
    each layer's feature sums over a region, or replace (``mode="apply"``) its output with the means
    recorded so far."""

    def __init__(self, network: nn.Module):
        self.layers = [m for m in network.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.mode = "record"
        self.region = (0, 0, 1, 1)   # the tile's interior as fractions (top, left, bottom, right)
        self._handles = []

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _hook(self, module, inputs, output):
        key = id(module)
        if self.mode == "apply":
            return (self.sums[key] / self.counts[key]).to(output.dtype).view_as(output)
        feats = inputs[0]
        h, w = feats.shape[-2:]
        t, l, b, r = self.region
        part = feats[..., round(t * h):round(b * h), round(l * w):round(r * w)]
        total = part.float().sum(dim=(-2, -1), keepdim=True)
        self.sums[key] = self.sums.get(key, 0) + total
        self.counts[key] = self.counts.get(key, 0) + part.shape[-2] * part.shape[-1]
        return None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@torch.no_grad()
def restore_tiled(generator: nn.Module, x: torch.Tensor, precision: str, tile: int, overlap: int) -> torch.Tensor:
    """G(x) computed tile by tile (``tile`` x ``tile`` interiors, each seen with ``overlap`` pixels of
    context on every side), with image-wide channel-attention statistics; memory grows with the tile,
    not the image."""
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, GENERATOR_MULTIPLE)
    hp, wp = padded.shape[-2:]
    tile = max(GENERATOR_MULTIPLE, _round_up(tile, GENERATOR_MULTIPLE))
    overlap = _round_up(max(overlap, 0), GENERATOR_MULTIPLE)
    boxes = [(t, l, min(t + tile, hp), min(l + tile, wp)) for t in range(0, hp, tile) for l in range(0, wp, tile)]
    out = torch.empty(x.shape[0], x.shape[1], hp, wp, device=x.device, dtype=torch.float32)
    with SharedPooling(generator) as pooling:
        for mode in ("record", "apply"):
            pooling.mode = mode
            for t, l, b, r in boxes:
                t0, l0, b0, r0 = max(t - overlap, 0), max(l - overlap, 0), min(b + overlap, hp), min(r + overlap, wp)
                rh, rw = b0 - t0, r0 - l0
                pooling.region = ((t - t0) / rh, (l - l0) / rw, (b - t0) / rh, (r - l0) / rw)
                result = _forward(generator, padded[..., t0:b0, l0:r0], precision)
                if mode == "apply":
                    out[..., t:b, l:r] = result[..., t - t0:b - t0, l - l0:r - l0]
    return out[..., :h, :w]


def tiled_work(tile: int, overlap: int) -> float:
    """How many times the work of restoring an image whole ``tile`` tiles take at most (away from the
    image's borders, where tiles have less context): each tile is computed with ``overlap`` pixels of
    context on every side, and twice (:func:`restore_tiled`'s two passes)."""
    tile = max(GENERATOR_MULTIPLE, _round_up(tile, GENERATOR_MULTIPLE))
    return 2 * ((tile + 2 * _round_up(max(overlap, 0), GENERATOR_MULTIPLE)) / tile) ** 2


def forward_bytes(generator: nn.Module, h: int, w: int) -> int:
    """About the memory the generator's forward pass takes on an h x w input (no gradients)."""
    width = int(getattr(generator, "arch", {}).get("width", 80))
    return _round_up(h, GENERATOR_MULTIPLE) * _round_up(w, GENERATOR_MULTIPLE) * (ACTIVATION_BYTES_PER_WIDTH * width + 64)


def _cpu_plan(generator: nn.Module, h: int, w: int, overlap: int) -> tuple[int | None, int, int]:
    """(the tile an h x w RGB image needs on the CPU, None for none; what it needs whole; available).
    Raises an InputError that says how much memory it needs when not even the smallest tile fits."""
    available = available_memory()
    if available is None:
        return None, 0, 0
    budget = available * MEMORY_SHARE
    image = IMAGE_COPIES * 3 * _round_up(h, GENERATOR_MULTIPLE) * _round_up(w, GENERATOR_MULTIPLE) * 4
    whole = image + forward_bytes(generator, h, w)
    if whole <= budget:
        return None, whole, available
    context = 2 * _round_up(max(overlap, 0), GENERATOR_MULTIPLE)
    for tile in CPU_TILES:
        if tile < max(h, w) and image + forward_bytes(generator, tile + context, tile + context) <= budget:
            return tile, whole, available
    least = image + forward_bytes(generator, CPU_TILES[-1] + context, CPU_TILES[-1] + context)
    raise InputError(f"a {w}x{h} image needs about {human_bytes(least)} of memory even in {CPU_TILES[-1]}x"
                     f"{CPU_TILES[-1]} tiles, and {human_bytes(available)} is available")


def check_cpu_memory(generator: nn.Module, name, h: int, w: int, overlap: int = 32) -> None:
    """Refuse, naming it, an image whose restored size (h x w) does not fit in memory even in tiles:
    before it is upsampled, which would take that memory already."""
    try:
        _cpu_plan(generator, h, w, overlap)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def cpu_tile(generator: nn.Module, x: torch.Tensor, overlap: int) -> int | None:
    """On the CPU, where running out of memory kills the process rather than raising: None when the
    whole image fits in the available memory, else the largest tile that does (with a note). An
    image whose own copies do not fit is an InputError that says how much it needs."""
    h, w = x.shape[-2:]
    tile, whole, available = _cpu_plan(generator, h, w, overlap)
    if tile:
        note(f"a {w}x{h} image needs about {human_bytes(whole)} of memory at once, {human_bytes(available)} "
             f"is available; restoring it in {tile}x{tile} tiles")
    return tile


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's own error, or the CPU allocator's (a RuntimeError) or Python's."""
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


@torch.no_grad()
def restore(generator: nn.Module, x: torch.Tensor, precision: str = "fp32", tile: int | None = None,
            overlap: int = TILE_CONTEXT) -> torch.Tensor:
    """G(x) in float32 for a 1 x 3 x H x W input of any size.

    ``tile`` restores in tiles (see :func:`restore_tiled`). Without it, an image too large for the
    CPU's available memory is restored in tiles by itself (see :func:`cpu_tile`), and one that does
    not fit in GPU memory is retried in tiles: 1024 pixels, halved on each further failure.
    """
    if tile:
        return restore_tiled(generator, x, precision, tile, overlap)
    if x.device.type == "cpu":
        tile = cpu_tile(generator, x, overlap)
        if tile:
            return restore_tiled(generator, x, precision, tile, overlap)
    try:
        return _forward(generator, x, precision)
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        on_gpu = x.device.type == "cuda" or isinstance(exc, torch.cuda.OutOfMemoryError)
    where = "GPU " if on_gpu else ""
    tile = 1024
    while True:
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        note(f"out of {where}memory for a {x.shape[-1]}x{x.shape[-2]} image; restoring it in {tile}x{tile} tiles")
        try:
            return restore_tiled(generator, x, precision, tile, overlap)
        except (RuntimeError, MemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            if tile <= MIN_AUTO_TILE:
                raise InputError(f"a {x.shape[-1]}x{x.shape[-2]} image does not fit in {where}memory, even in "
                                 f"{tile}x{tile} tiles") from None
            tile //= 2
