"""What ``gdata/inspect_h5.py`` shows of an HDF5 training file, and what its ``--check`` refuses.

Scans stream through each dataset in blocks of at most ``SCAN_BYTES`` (parts of a row where a row is
larger), so a file of any size, or one declaring absurd sizes, is read in bounded memory. Each side's
per-channel colour statistics are shown next to each other: an SR file whose sides differ in mean
colour holds different kinds of scene.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm import tqdm

from ..system.errors import InputError
from ..system.text import printable
from .patch_file import (RANGE_TOLERANCE, SAME_SIDES, declared_size_problem, dtype_problem, empty_patch_problem,
                         is_transposed, members, open_h5_file, patch_shape, read_attr, rgb_problem, same_dataset,
                         stored_layout)

SCAN_BYTES = 64 << 20        # bytes read at a time when scanning a dataset's values


@dataclass
class DatasetInfo:
    name: str
    shape: tuple[int, ...]            # as stored
    dtype: str
    chunks: tuple[int, ...] | None
    compression: str | None
    patch: tuple[int, int, int] | None = None   # C x H x W in our layout (4-D datasets)
    low: float | None = None          # over finite values
    high: float | None = None
    nonfinite: int = 0
    unreadable: str | None = None
    dtype_problem: str | None = None  # why training cannot take its values (h5format.dtype_problem)
    channel_mean: list[float] | None = None   # per channel, over finite values, on [0, 1] (uint8 / 255)
    channel_std: list[float] | None = None


@dataclass
class H5Report:
    path: str
    size: int
    attrs: dict
    layout: str | None                # the attribute, None without one
    transposed: bool
    layout_problem: str | None = None
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)   # groups and other objects
    same_sides: bool = False          # 'data' and 'label' are one dataset under two names


def scan_blocks(shape: tuple[int, ...], itemsize: int, limit: int) -> Iterator[tuple[tuple[slice, ...], int]]:
    """Slices that cover an array of ``shape`` in order, each block at most ``limit`` bytes: whole rows
    where a row fits, else parts of a row (a channel, then lines of it), so that a huge declared patch
    is never read at once. Every axis is kept (length-1 slices). Yields (slices, rows completed)."""
    k = 0  # the axis blocks are cut along: the first whose trailing sub-array fits in ``limit``
    while k < len(shape) - 1 and int(np.prod(shape[k + 1:], dtype=np.float64)) * itemsize > limit:
        k += 1
    inner = int(np.prod(shape[k + 1:], dtype=np.int64)) * itemsize
    step = max(1, limit // max(1, inner))
    for lead in itertools.product(*(range(n) for n in shape[:k])):
        for start in range(0, shape[k], step):
            stop = min(start + step, shape[k])
            where = tuple(slice(i, i + 1) for i in lead) + (slice(start, stop),)
            if k == 0:
                yield where, stop - start
            else:  # a row is done with its last block
                last = stop == shape[k] and all(i == n - 1 for i, n in zip(lead[1:], shape[1:k]))
                yield where, int(last)


def scan_dataset(ds: h5py.Dataset, info: DatasetInfo, progress: bool = False) -> None:
    """Stream through a dataset: its finite value range, its count of NaN or infinite values and, for
    patch datasets (N x C x ...), each channel's mean and standard deviation on the [0, 1] scale."""
    if not (ds.dtype == np.uint8 or np.issubdtype(ds.dtype, np.number)) or ds.ndim == 0 or ds.size == 0:
        return
    low, high = np.inf, -np.inf
    per_channel = ds.ndim == 4
    channels = ds.shape[1] if per_channel else 0
    sums, squares, counts = np.zeros(channels), np.zeros(channels), np.zeros(channels)
    unit = 255.0 if ds.dtype == np.uint8 else 1.0
    with tqdm(total=ds.shape[0], desc=f"scan {info.name}", unit="patch", disable=not progress,
              file=sys.stderr, leave=False) as bar:
        for where, rows_done in scan_blocks(ds.shape, ds.dtype.itemsize, SCAN_BYTES):
            try:
                block = ds[where]
            except OSError as exc:
                info.unreadable = (f"rows from {where[0].start} cannot be read, the file may be truncated "
                                   f"({exc})")
                return
            if per_channel:
                first = where[1].start if len(where) > 1 else 0
                for i in range(block.shape[1]):
                    c = first + i
                    values = block[:, i].astype(np.float64).ravel() / unit
                    values = values[np.isfinite(values)]
                    sums[c] += values.sum()
                    squares[c] += np.square(values).sum()
                    counts[c] += values.size
            if np.issubdtype(block.dtype, np.floating):
                finite = np.isfinite(block)
                info.nonfinite += int(block.size - np.count_nonzero(finite))
                block = block[finite]
            if block.size:
                low, high = min(low, float(block.min())), max(high, float(block.max()))
            bar.update(rows_done)
    if low <= high:
        info.low, info.high = low, high
    if per_channel and counts.all():
        mean = sums / counts
        info.channel_mean = mean.tolist()
        info.channel_std = np.sqrt(np.maximum(squares / counts - mean ** 2, 0.0)).tolist()


def scan_h5(path: str | Path, layout: str = "auto", progress: bool = False) -> H5Report:
    """Everything :func:`format_report` shows and :func:`h5_problems` checks, values scanned in full."""
    with open_h5_file(path) as f:
        # first what every name stands for: a file that points elsewhere is refused, not read
        objects = members(path, f)
        try:
            transposed, problem = is_transposed(path, f, layout), None
        except InputError as exc:
            transposed, problem = False, str(exc).split(": ", 1)[1]
        attrs = {key: read_attr(path, f, key) for key in f.attrs}
        report = H5Report(str(path), Path(path).stat().st_size, attrs, stored_layout(path, f), transposed, problem)
        for name, obj in objects.items():
            if isinstance(obj, h5py.Group):
                report.others.append(f"{name}/ (group)")
                continue
            if not isinstance(obj, h5py.Dataset):
                report.others.append(f"{name} (named datatype)")
                continue
            info = DatasetInfo(name, tuple(obj.shape), str(obj.dtype), obj.chunks, obj.compression,
                               dtype_problem=dtype_problem(obj.dtype))
            if obj.ndim == 4:
                info.patch = patch_shape(obj.shape, transposed)
            # a file that declares more than it stores would be scanned through fill values for hours
            info.unreadable = declared_size_problem(obj)
            if info.unreadable is None:
                scan_dataset(obj, info, progress)
            report.datasets[name] = info
        data, label = objects.get("data"), objects.get("label")
        report.same_sides = (isinstance(data, h5py.Dataset) and isinstance(label, h5py.Dataset)
                             and same_dataset(data, label))
    return report


def h5_problems(report: H5Report, scale: int | None = None) -> list[str]:
    """What keeps the file from training, most basic first (empty when it is fine).

    ``scale``: how much larger clean patches must be than degraded ones; without it, the file's
    ``scale`` attribute, and without that, any whole factor shared by height and width.
    """
    problems = []
    ds = report.datasets
    missing = [n for n in ("data", "label") if n not in ds]
    for name in missing:
        hint = ("; a file of one side must be merged with a file of the other (gdata/merge_h5.py) before "
                "training" if len(missing) == 1 and patch_datasets_in(report) else "")
        if f"{name}/ (group)" in report.others:
            problems.append(f"'{name}' is a group (a folder inside the file), not a dataset of patches")
        elif f"{name} (named datatype)" in report.others:
            problems.append(f"'{name}' is a named datatype (a type stored in the file), not a dataset of patches")
        else:
            problems.append(f"no '{name}' dataset (has: {', '.join(ds) or 'nothing'}){hint}")
    for name in ("data", "label"):
        info = ds.get(name)
        if info is None:
            continue
        if len(info.shape) != 4:
            problems.append(f"'{name}' must be N x C x H x W, got shape {info.shape}")
            continue
        if info.dtype_problem:
            problems.append(f"dataset '{name}' {info.dtype_problem}")
        if empty_patch_problem(info.shape):
            problems.append(f"dataset '{name}' {empty_patch_problem(info.shape)}")
        if info.shape[0] == 0:
            problems.append(f"dataset '{name}' is empty")
        if info.unreadable:
            problems.append(f"dataset '{name}': {info.unreadable}")
        if info.nonfinite:
            problems.append(f"dataset '{name}' holds {info.nonfinite} NaN or infinite values")
        if (info.dtype != "uint8" and info.low is not None
                and (info.low < -RANGE_TOLERANCE or info.high > 1 + RANGE_TOLERANCE)):
            problems.append(f"dataset '{name}' has values in [{info.low:.4g}, {info.high:.4g}]; float files "
                            "must hold [0, 1] (uint8 files [0, 255])")
    if report.same_sides:
        problems.append(SAME_SIDES)
    if report.layout_problem:
        problems.append(report.layout_problem)
    data, label = ds.get("data"), ds.get("label")
    if data and label and data.patch and label.patch:
        (c, h, w), (lc, lh, lw) = data.patch, label.patch
        if c != lc:
            problems.append(f"'data' has {c} channels but 'label' has {lc}")
        elif rgb_problem(c):
            problems.append(rgb_problem(c))
        if scale is None and "scale" in report.attrs:
            scale = whole_number(report.attrs["scale"])
            if scale is None or scale < 1:
                problems.append(f"the 'scale' attribute {_show_attr(report.attrs['scale'])} is not a whole "
                                "number of at least 1")
                scale = None
        if scale is not None and (lh, lw) != (h * scale, w * scale):
            problems.append(f"clean patches {lh}x{lw} are not {scale}x the degraded patches {h}x{w}")
        elif scale is None and not (h and w and lh % h == 0 and lw % w == 0 and lh // h == lw // w):
            problems.append(f"clean patches {lh}x{lw} are not a whole multiple of the degraded patches {h}x{w}")
    return problems


def whole_number(value) -> int | None:
    """An attribute read as a whole number (4, 4.0, "4"), or None for anything else (2.5, [4, 4], "x4")."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return int(value.strip()) if value.strip().isdigit() else None
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def patch_datasets_in(report: H5Report) -> list[str]:
    return [n for n, info in report.datasets.items() if len(info.shape) == 4]


def check_h5(path: str | Path, layout: str = "auto", scale: int | None = None) -> H5Report:
    """Scan a file in full and raise an :class:`InputError` naming it at its first problem."""
    report = scan_h5(path, layout)
    problems = h5_problems(report, scale)
    if problems:
        raise InputError(f"{path}: {problems[0]}")
    return report


SR_MEAN_GAP = 0.05  # per-channel mean difference, on [0, 1], above which an SR file's sides look mismatched


def side_statistics(report: H5Report) -> list[str]:
    """The two sides' per-channel mean and standard deviation next to each other, and for SR files
    (clean patches larger than degraded ones: shrinking keeps the mean colour) a warning when the
    means differ by more than ``SR_MEAN_GAP``: the sides then come from different kinds of scene."""
    data, label = report.datasets.get("data"), report.datasets.get("label")
    if not (data and label and data.channel_mean and label.channel_mean
            and len(data.channel_mean) == len(label.channel_mean)):
        return []
    fmt = lambda values: " ".join(f"{v:.3f}" for v in values)
    lines = [f"  per-channel mean  data {fmt(data.channel_mean)}  |  label {fmt(label.channel_mean)}",
             f"  per-channel std   data {fmt(data.channel_std)}  |  label {fmt(label.channel_std)}"]
    gaps = [abs(a - b) for a, b in zip(data.channel_mean, label.channel_mean)]
    is_sr = data.patch and label.patch and label.patch[1] > data.patch[1]
    if is_sr and max(gaps) > SR_MEAN_GAP:
        c = int(np.argmax(gaps))
        lines.append(f"  warning: the sides' mean colours differ by {gaps[c]:.3f} in channel {c} (more than "
                     f"{SR_MEAN_GAP}); shrinking keeps the mean colour, so 'data' and 'label' look like different "
                     "kinds of scene, and a critic would reward repainting them (see docs/DATA.md)")
    return lines


def _show_attr(value) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and "\n" in value:
        lines = value.split("\n")
        return f"{len(lines)} entries: {lines[0]} ... {lines[-1]}"
    text = value if isinstance(value, str) else np.asarray(value).tolist()
    text = str(text)
    return text if len(text) <= 100 else text[:97] + "..."


def format_report(report: H5Report, layout: str = "auto") -> str:
    """A few lines per file: size and layout, then each dataset and attribute."""
    if layout != "auto":
        how = f"read as {'NCWH (MATLAB)' if report.transposed else 'NCHW (ours)'} by --layout {layout}"
    elif report.layout is None:
        how = "no layout attribute: taken as NCHW (ours); MATLAB's files need --layout matlab"
    else:
        how = {"NCHW": "NCHW (ours)", "NCWH": "NCWH (MATLAB: patches stored C x W x H)"}.get(report.layout,
                                                                                         report.layout)
    lines = [f"{report.path}  ({report.size / 2**20:.1f} MiB; layout {how})"]
    for info in report.datasets.values():
        shape = " x ".join(map(str, info.shape))
        line = f"  {info.name:<6} {shape:<22} {info.dtype:<8}"
        if info.patch:
            line += f" patches {info.patch[0]}x{info.patch[1]}x{info.patch[2]} (C x H x W)"
        if info.low is not None:
            line += f"  range [{info.low:.4g}, {info.high:.4g}]"
        if info.nonfinite:
            line += f"  {info.nonfinite} NaN/inf"
        if info.unreadable:
            line += f"  not scanned: {info.unreadable}"
        line += f"  chunks {'x'.join(map(str, info.chunks)) if info.chunks else 'none (contiguous)'}"
        if info.compression:
            line += f" {info.compression}"
        lines.append(line)
    lines += [f"  {name}" for name in report.others]
    lines += side_statistics(report)
    lines += [f"  @{key} = {_show_attr(value)}" for key, value in sorted(report.attrs.items())]
    return "\n".join(map(printable, lines))  # a name or attribute of the file is one line, its breaks escaped
