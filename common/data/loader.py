"""Unpaired training data: the data set over a folder of HDF5 patch files, and its sampler.

Sample ``i`` is degraded patch ``i`` with a clean patch drawn afresh at random from all files:
nothing pairs them. The files' format and rules are ``common.data.patch_file``'s (docs/METHOD.md, "Training
data", says why unpaired sides must come from the same kind of scene).
"""
from __future__ import annotations

import bisect
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..system.errors import InputError
from .patch_file import (LAYOUT_CHOICES, as_stored_in_ours, check_training_file, check_values, find_h5_files,
                         open_h5_file, patch_dataset)


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
        self.parts = [check_training_file(p, layout) for p in find_h5_files(source)]
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
                self._files[k] = open_h5_file(self.parts[k].path)
            # links and storage checked again (metadata only): the file may have changed since
            self._datasets[(k, name)] = patch_dataset(self.parts[k].path, self._files[k], name)
        return self._datasets[(k, name)]

    def _read(self, ends: list[int], name: str, index: int) -> torch.Tensor:
        k = bisect.bisect_right(ends, index)
        local = index - (ends[k - 1] if k else 0)
        part = self.parts[k]
        try:
            values = self._dataset(k, name)[local]
        except OSError as exc:
            raise InputError(f"{part.path}: '{name}'[{local}] cannot be read ({exc})") from None
        values = as_stored_in_ours(values, part.transposed)
        if values.dtype == np.uint8:
            patch = torch.from_numpy(np.ascontiguousarray(values))
            return patch if self.raw_uint8 else patch.float().div_(255.0)
        check_values(part.path, f"patch '{name}'[{local}]", values)
        return torch.from_numpy(np.clip(values, 0.0, 1.0).astype(np.float32, copy=False))

    def clean_patch(self, index: int) -> torch.Tensor:
        """Clean patch ``index`` (counted over all files), float32 in [0, 1]."""
        return as_float(self._read(self._label_ends, "label", index))

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


