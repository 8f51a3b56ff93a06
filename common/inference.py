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

from .errors import note
from .networks import GENERATOR_MULTIPLE, pad_to_multiple

MIN_AUTO_TILE = 128


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the networks where asked; fp32 runs as written."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
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


@torch.no_grad()
def restore(generator: nn.Module, x: torch.Tensor, precision: str = "fp32", tile: int | None = None,
            overlap: int = 32) -> torch.Tensor:
    """G(x) in float32 for a 1 x 3 x H x W input of any size.

    ``tile`` restores in tiles (see :func:`restore_tiled`). Without it, an image that does not fit in
    GPU memory is retried in tiles by itself: 1024 pixels, halved on each further failure.
    """
    if tile:
        return restore_tiled(generator, x, precision, tile, overlap)
    try:
        return _forward(generator, x, precision)
    except torch.cuda.OutOfMemoryError:
        pass
    tile = 1024
    while True:
        torch.cuda.empty_cache()
        note(f"out of GPU memory for a {x.shape[-1]}x{x.shape[-2]} image; restoring it in {tile}x{tile} tiles")
        try:
            return restore_tiled(generator, x, precision, tile, overlap)
        except torch.cuda.OutOfMemoryError:
            if tile <= MIN_AUTO_TILE:
                raise
            tile //= 2
