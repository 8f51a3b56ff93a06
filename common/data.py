"""Unpaired training data from HDF5 files (METHOD 6).

A training folder holds one or more ``*.h5`` files, each with two datasets: ``data`` (degraded
patches) and ``label`` (clean patches), N x C x H x W, either float in [0, 1] (the reference's
float32) or uint8 in [0, 255]. The two may hold different counts. Sample ``i`` is degraded patch
``i`` with a clean patch drawn afresh at random from all files: nothing pairs them.

Files written by MATLAB hold every patch transposed (N x C x W x H). A file says which layout it has
in its ``layout`` attribute (``"NCHW"`` or ``"NCWH"``); files without it are taken as ``NCHW``
unless the data set is built with ``layout="matlab"``.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError, Interrupted, check_interrupted, printable
from .files import folders_to_make, human_bytes, remove_if_stale, remove_made, unreadable_reason, write_failure

LAYOUTS = {"NCHW": False, "NCWH": True}  # layout name -> patches stored transposed
LAYOUT_CHOICES = ("auto", "ours", "matlab")
RANGE_TOLERANCE = 1e-3  # float files may overshoot [0, 1] by rounding; clipped, not refused
MAX_PATCH_BYTES = 256 << 20   # one patch above this is no training patch (ours are 3x128x128, 48 KiB)
CHECK_BYTES = 64 << 20        # at most this much is read to check a file's first values


@dataclass(frozen=True)
class H5Part:
    """What the data set knows of one file, checked when the data set is built."""
    path: str
    n_data: int
    n_label: int
    data_shape: tuple[int, int, int]   # C x H x W after undoing the layout
    label_shape: tuple[int, int, int]
    transposed: bool
    uint8: bool                        # both datasets hold uint8


def find_h5_files(source: str | os.PathLike | list) -> list[Path]:
    """Every ``*.h5`` in a folder (sorted), or the given list of files."""
    if isinstance(source, (list, tuple)):
        files = [Path(f) for f in source]
    else:
        folder = Path(source)
        if folder.is_file():
            files = [folder]
        elif not folder.is_dir():
            reason = unreadable_reason(folder, "a training folder")
            raise InputError(f"{folder}: " + ("training folder not found" if reason == "no such file" else reason))
        else:
            files = sorted(folder.glob("*.h5"))
            if not files:
                raise InputError(f"{folder}: no .h5 files in the training folder")
    for f in files:
        reason = unreadable_reason(f, "an .h5 file")
        if reason:
            raise InputError(f"{f}: {reason}")
    return files


def _check_values(path: str, what: str, values: np.ndarray) -> None:
    """Refuse non-finite or out-of-range float values; ``what`` names the dataset or patch."""
    if values.dtype == np.uint8:
        return
    if not np.isfinite(values).all():
        raise InputError(f"{path}: {what} holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{path}: {what} has values in [{lo:.4g}, {hi:.4g}]; "
                         "float files must hold [0, 1] (uint8 files [0, 255])")


def declared_size_problem(ds: h5py.Dataset) -> str | None:
    """Why a dataset's declared shape cannot be taken at its word, or None: a patch far larger than
    any training patch, or more data declared than the file stores (a crafted or never-filled file,
    whose missing values HDF5 would happily return as zeros). Reads metadata only, no values."""
    shape = tuple(int(n) for n in ds.shape)
    itemsize = ds.dtype.itemsize
    if len(shape) >= 2:
        row = int(np.prod(shape[1:], dtype=np.float64)) * itemsize
        if row > MAX_PATCH_BYTES:
            return (f"patches of {'x'.join(map(str, shape[1:]))} ({human_bytes(row)} each) are far larger "
                    f"than a training patch (at most {human_bytes(MAX_PATCH_BYTES)})")
    declared = float(np.prod(shape, dtype=np.float64)) * itemsize
    if declared == 0 or ds.is_virtual or ds.external:
        return None
    what = f"declares {shape[0]} rows of {ds.dtype} ({human_bytes(declared)})"
    try:
        if ds.chunks is None:
            stored = ds.id.get_storage_size()
            file_size = os.path.getsize(ds.file.filename)
            if stored < declared or declared > file_size:
                return (f"{what} but the file stores {human_bytes(min(stored, file_size))} of it: it is damaged "
                        "or was never filled")
        else:
            needed = int(np.prod([-(-n // c) for n, c in zip(shape, ds.chunks)], dtype=np.float64))
            allocated = ds.id.get_num_chunks()
            if allocated < needed:
                return (f"{what} but the file stores {allocated} of its {needed} chunks: it is damaged or "
                        "was never filled")
    except (AttributeError, OSError, RuntimeError, ValueError):  # an old HDF5 or an odd layout: no verdict
        return None
    return None


def check_declared_size(path: str, name: str, ds: h5py.Dataset) -> None:
    problem = declared_size_problem(ds)
    if problem:
        raise InputError(f"{path}: dataset '{name}' {problem}")


def first_rows(ds: h5py.Dataset, limit: int = 64) -> np.ndarray:
    """Up to ``limit`` leading rows, but never more than ``CHECK_BYTES``."""
    row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    return ds[: max(1, min(limit, ds.shape[0], CHECK_BYTES // row))]


def _holders(path: str | os.PathLike) -> list[int]:
    """PIDs of the other processes that have ``path`` open (Linux's /proc; empty elsewhere)."""
    try:
        target = os.stat(path)
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    found.append(pid)
                    break
        except OSError:  # gone, or not ours to look at
            continue
    return found


def open_h5_file(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading; anything unreadable is an :class:`InputError` that says why
    (missing, a folder, a link loop, not HDF5, damaged, or held by a writer)."""
    reason = unreadable_reason(path, "an .h5 file")
    if reason:
        raise InputError(f"{path}: {reason}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "unable to lock file" in str(exc):
            holders = _holders(path)
            who = f" (PID {', '.join(map(str, holders))})" if holders else ""
            raise InputError(f"{path}: another process{who} has the file open for writing (HDF5's file lock is "
                             "held); wait until it has finished writing, then try again") from None
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


def patch_dataset(path, f: h5py.File, name: str) -> h5py.Dataset:
    """The 4-D dataset ``name`` of an open file, or an error that says what is there instead."""
    if name not in f:
        raise InputError(f"{path}: no '{name}' dataset (has: {', '.join(f.keys()) or 'nothing'})")
    obj = f[name]
    if isinstance(obj, h5py.Group):
        inside = ", ".join(obj.keys()) or "nothing"
        raise InputError(f"{path}: '{name}' is a group (a folder inside the file, holding: {inside}), not a "
                         "dataset of patches")
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 4:
        raise InputError(f"{path}: '{name}' must be N x C x H x W, got shape {getattr(obj, 'shape', None)}")
    return obj


def inspect_h5(path: str | os.PathLike, layout: str = "auto") -> H5Part:
    """Open one training file, check its keys, shapes, dtypes and a first block of values."""
    path = str(path)
    with open_h5_file(path) as f:
        shapes, dtypes = {}, {}
        for name in ("data", "label"):
            ds = patch_dataset(path, f, name)
            if ds.shape[0] == 0:
                raise InputError(f"{path}: dataset '{name}' is empty")
            if not (ds.dtype == np.uint8 or np.issubdtype(ds.dtype, np.floating)):
                raise InputError(f"{path}: dataset '{name}' has dtype {ds.dtype}; expected uint8 or float")
            check_declared_size(path, name, ds)
        for name in ("data", "label"):  # values only once both shapes are known to be sane
            ds = f[name]
            try:
                _check_values(path, f"dataset '{name}'", first_rows(ds))
            except OSError as exc:
                raise InputError(f"{path}: dataset '{name}' cannot be read, the file may be "
                                 f"truncated ({exc})") from None
            shapes[name] = tuple(int(s) for s in ds.shape)
            dtypes[name] = ds.dtype
        stored = f.attrs.get("layout", "NCHW")
        stored = stored.decode(errors="backslashreplace") if isinstance(stored, bytes) else str(stored)
    if layout == "matlab":
        transposed = True
    elif layout == "ours":
        transposed = False
    elif stored in LAYOUTS:
        transposed = LAYOUTS[stored]
    else:
        raise InputError(f"{path}: unknown layout attribute '{stored}'; expected one of {', '.join(LAYOUTS)}")

    def chw(shape):
        c, a, b = shape[1:]
        return (c, b, a) if transposed else (c, a, b)

    part = H5Part(path, shapes["data"][0], shapes["label"][0], chw(shapes["data"]), chw(shapes["label"]),
                  transposed, all(d == np.uint8 for d in dtypes.values()))
    if part.data_shape[0] != part.label_shape[0]:
        raise InputError(f"{path}: 'data' has {part.data_shape[0]} channels but 'label' has "
                         f"{part.label_shape[0]}")
    return part


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """A batch from the data set as float32 in [0, 1], whether it travelled as uint8 or float."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


class UnpairedH5Dataset(Dataset):
    """Degraded patch ``i`` with a freshly drawn random clean patch, as float32 tensors in [0, 1].

    ``scale`` is how much larger clean patches are than degraded ones (4 for x4 SR, 1 otherwise); it
    is checked for every file. Files are opened lazily, once per process, so that each DataLoader
    worker holds its own handles.
    """

    def __init__(self, source, scale: int = 1, layout: str = "auto", raw_uint8: bool = False):
        if layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {LAYOUT_CHOICES}")
        self.parts = [inspect_h5(p, layout) for p in find_h5_files(source)]
        first = self.parts[0]
        for part in self.parts:
            c, h, w = part.data_shape
            if part.label_shape != (c, h * scale, w * scale):
                raise InputError(f"{part.path}: clean patches {part.label_shape[1:]} are not {scale}x the "
                                 f"degraded patches {part.data_shape[1:]}")
            if (part.data_shape, part.label_shape) != (first.data_shape, first.label_shape):
                raise InputError(f"{part.path}: patch shapes {part.data_shape}/{part.label_shape} differ from "
                                 f"{first.path}'s {first.data_shape}/{first.label_shape}")
        self.scale = scale
        # Training moves uint8 patches as they are and scales them on the device: 4x fewer bytes to
        # copy and no per-patch float conversion in the workers. Only when every file is uint8.
        self.raw_uint8 = raw_uint8 and all(p.uint8 for p in self.parts)
        self._data_ends = np.cumsum([p.n_data for p in self.parts]).tolist()
        self._label_ends = np.cumsum([p.n_label for p in self.parts]).tolist()
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._pid = None

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return self.parts[0].data_shape

    @property
    def label_shape(self) -> tuple[int, int, int]:
        return self.parts[0].label_shape

    @property
    def num_labels(self) -> int:
        return self._label_ends[-1]

    def __len__(self) -> int:
        return self._data_ends[-1]

    def describe(self) -> str:
        c, h, w = self.data_shape
        _, lh, lw = self.label_shape
        return (f"{len(self.parts)} file(s), {len(self)} degraded {c}x{h}x{w} and {self.num_labels} clean "
                f"{c}x{lh}x{lw} patches")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_datasets"], state["_pid"] = {}, {}, None  # h5py handles never cross processes
        return state

    def _dataset(self, k: int, name: str) -> h5py.Dataset:
        """File ``k``'s dataset ``name``, opened once per process (h5py handles do not survive fork)."""
        if self._pid != os.getpid():
            self._files, self._datasets, self._pid = {}, {}, os.getpid()
        if (k, name) not in self._datasets:
            if k not in self._files:
                self._files[k] = h5py.File(self.parts[k].path, "r")
            self._datasets[(k, name)] = self._files[k][name]
        return self._datasets[(k, name)]

    def _read(self, ends: list[int], name: str, index: int) -> torch.Tensor:
        k = bisect.bisect_right(ends, index)
        local = index - (ends[k - 1] if k else 0)
        part = self.parts[k]
        try:
            values = self._dataset(k, name)[local]
        except OSError as exc:
            raise InputError(f"{part.path}: '{name}'[{local}] cannot be read ({exc})") from None
        if part.transposed:
            values = values.transpose(0, 2, 1)
        if values.dtype == np.uint8:
            patch = torch.from_numpy(np.ascontiguousarray(values))
            return patch if self.raw_uint8 else patch.float().div_(255.0)
        _check_values(part.path, f"patch '{name}'[{local}]", values)
        return torch.from_numpy(np.clip(values, 0.0, 1.0).astype(np.float32, copy=False))

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """(degraded patch ``index``, a random clean patch), float32 in [0, 1] (uint8 if ``raw_uint8``).

        ``index`` may also be a pair ``(i, j)``: degraded patch ``i`` with clean patch ``j``, as
        :class:`UnpairedSampler` draws them (reproducibly, whatever the number of workers).
        """
        if isinstance(index, (tuple, list)):
            index, label = int(index[0]), int(index[1])
        else:
            label = int(torch.randint(self.num_labels, ()))
        return self._read(self._data_ends, "data", index), self._read(self._label_ends, "label", label)


class UnpairedSampler(torch.utils.data.Sampler):
    """The order of one epoch: a permutation of the degraded patches, each with a fresh random clean
    index (or, ``paired``, its own), both drawn from ``(seed, epoch)`` alone.

    So an epoch can be replayed from any batch (``set_epoch(epoch, start_batch)``) for an exact
    resume, and split across ``world`` processes: rank ``r`` takes every ``world``-th sample, so that
    the union of the ranks' k-th batches is the single-process k-th batch of ``world`` times the
    size. Batches are full: the remainder of an epoch smaller than a global batch is dropped.
    """

    def __init__(self, n_data: int, n_labels: int, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 paired: bool = False):
        if global_batch % world:
            raise ValueError(f"the batch size {global_batch} must divide among {world} processes")
        self.n_data, self.n_labels, self.global_batch = n_data, n_labels, global_batch
        self.seed, self.rank, self.world, self.paired = seed, rank, world, paired
        self.epoch, self.start_batch = 1, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n_data // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * (self.global_batch // self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_data, generator=g)
        # paired (supervised training): patch i's clean partner is label i, its true clean image
        labels = order if self.paired else torch.randint(self.n_labels, (self.n_data,), generator=g)
        used = self.batches_per_epoch * self.global_batch
        first = self.start_batch * self.global_batch
        for k in range(first + self.rank, used, self.world):
            yield int(order[k]), int(labels[k])


# ----------------------------------------------------------------------------- writing
def cut_patches(img: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Square ``patch`` x ``patch`` patches of an H x W x C image on a ``stride`` grid, as N x C x p x p.

    Positions run from the top-left corner; a remainder narrower than a stride at the right or
    bottom is not covered (as in the reference's MATLAB scripts). An image smaller than one patch
    gives none.
    """
    h, w = img.shape[:2]
    if h < patch or w < patch:
        return np.zeros((0, img.shape[2], patch, patch), dtype=img.dtype)
    tops = range(0, h - patch + 1, stride)
    lefts = range(0, w - patch + 1, stride)
    out = np.stack([img[t:t + patch, l:l + patch] for t in tops for l in lefts])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


class H5PatchWriter:
    """Stream patches into a training file: datasets grow in chunks, memory holds one batch at most.

    Patches arrive as N x C x H x W, float in [0, 1] or uint8; they are stored as ``dtype`` (uint8
    rounds to nearest). The file appears at ``path`` only when :meth:`close` succeeds (it is written
    under a temporary name and renamed), so an interrupted run leaves no half-written training file.
    """

    def __init__(self, path: str | os.PathLike, dtype: str = "uint8", chunk: int = 64,
                 attrs: dict | None = None):
        if dtype not in ("uint8", "float32"):
            raise ValueError("dtype must be uint8 or float32")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.dtype = np.dtype(dtype)
        self.chunk = chunk
        # folders made for the file, removed again if it is never written
        self.made = folders_to_make(self.path.parent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = h5py.File(self.tmp, "w")
        except OSError as exc:
            remove_made(self.made)
            raise InputError(write_failure(self.path, exc, None, "file")) from None
        # what an earlier writer of this file left when it was killed
        for stale in self.path.parent.glob(f".{self.path.name}.tmp*"):
            remove_if_stale(stale)
        self.file.attrs["layout"] = "NCHW"
        for key, value in (attrs or {}).items():
            # HDF5 stores text as UTF-8: file names that are not are kept with \xff escapes
            self.file.attrs[key] = printable(value, one_line=False) if isinstance(value, str) else value

    def counts(self) -> dict[str, int]:
        return {name: int(ds.shape[0]) for name, ds in self.file.items()}

    def append(self, name: str, patches: np.ndarray) -> None:
        check_interrupted()  # a stop signal whose exception was lost stops the file here
        if len(patches) == 0:
            return
        if patches.ndim != 4:
            raise ValueError(f"patches must be N x C x H x W, got {patches.shape}")
        if self.dtype == np.uint8 and patches.dtype != np.uint8:
            patches = (np.clip(patches, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        elif self.dtype == np.float32:
            patches = (patches.astype(np.float32) / 255.0 if patches.dtype == np.uint8
                       else patches.astype(np.float32))
        if name not in self.file:
            self.file.create_dataset(name, shape=(0, *patches.shape[1:]), maxshape=(None, *patches.shape[1:]),
                                     chunks=(self.chunk, *patches.shape[1:]), dtype=self.dtype)
        ds = self.file[name]
        if ds.shape[1:] != patches.shape[1:]:
            raise ValueError(f"{name}: patch shape {patches.shape[1:]} differs from {ds.shape[1:]}")
        n = ds.shape[0]
        try:
            ds.resize(n + len(patches), axis=0)
            ds[n:] = patches
        except OSError as exc:  # a full disk: the temporary goes, the target is untouched
            raise InputError(write_failure(self.path, exc, patches.nbytes, "file")) from None

    def close(self) -> None:
        try:
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise InputError(write_failure(self.path, exc, None, "file")) from None

    def abort(self) -> None:
        try:
            self.file.close()
        except (OSError, ValueError):  # closing a file whose writes failed may fail as well
            pass
        finally:
            self.tmp.unlink(missing_ok=True)
            remove_made(self.made)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        made = [f for f in self.made if f.exists()]
        self.abort()
        if isinstance(exc, Interrupted):
            exc.cleaned.append(f"the unfinished {self.tmp.name}" + (f" and the folder {made[-1]} made for it"
                                                                    if made else "")
                               + f" ({self.path} was not written)")
