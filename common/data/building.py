"""Build, convert and merge HDF5 training files: the functions behind ``gdata/make_h5.py`` and
``gdata/merge_h5.py`` (what ``gdata/inspect_h5.py`` shows and checks is ``common.data.inspection``; the
format's rules are ``common.data.patch_file``).

Everything streams: images are read one at a time and cut into patches row by row, patches reach the
file in batches of at most ``batch``, and merging, converting and scanning read a batch of patches at
a time. Memory stays bounded by one image plus one batch, whatever the size of the folder or file.

Files are written with :class:`common.data.patch_file.H5PatchWriter` (``N x C x H x W``, uint8 or float32,
chunked, written under a temporary name and renamed on success, ``layout`` attribute ``"NCHW"``).
Files written by MATLAB hold patches transposed (``N x C x W x H``, ``layout`` ``"NCWH"`` or no
attribute at all); they are read through ``layout`` (``"auto"``, ``"ours"`` or ``"matlab"``).
"""
from __future__ import annotations

import os
import sys
import time
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
from tqdm import tqdm

from ..system.errors import InputError
from ..system.files import check_can_write, same_file
from ..system.text import note, printable
from .degrade import DEGRADATIONS, degradation_scale
from .images import IMAGE_KINDS, describe_contents, folder_contents, image_size, list_images, note_skipped, read_image
from .patch_file import (DTYPES, H5PatchWriter, SAME_PATCHES, as_stored_in_ours, check_declared_size, check_patch_dtype,
                         check_sides_apart, check_values, cut_patches, is_transposed, open_h5_file, patch_dataset,
                         patch_datasets, patch_shape, read_attr, same_dataset, stored_layout)

DEFAULT_BATCH = 256          # patches per write (and per read when merging or converting)
BATCH_BYTES = 64 << 20       # at most this many bytes of float32 patches read at a time when merging


# ----------------------------------------------------------------------------- small helpers
def output_dtype(dtypes: Iterable[np.dtype], requested: str | None) -> str:
    """``requested``, or uint8 when every source is uint8 and float32 otherwise."""
    if requested:
        return requested
    return "uint8" if all(np.dtype(d) == np.uint8 for d in dtypes) else "float32"


def check_out_path(out: str | Path, sources: Iterable[str | Path] = ()) -> Path:
    """The output file of a gdata/ script, refused now if it cannot be written or is one of the files
    the script reads (it would replace the user's file with one made from it)."""
    out = Path(out)
    for source in sources:
        if same_file(out, source):
            raise InputError(f"{out}: is also a file this command reads ({source}); write the result to another "
                             "file (replacing the source with it would lose the original)")
    if out.suffix != ".h5":
        raise InputError(f"{out}: the output must end in .h5 (training reads the *.h5 files of a folder)")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name ending in .h5")
    check_can_write(out.parent)  # before any image is read: a read-only mount fails now, not at the end
    return out


def text_attr(values: Iterable) -> str:
    """A list as one newline-separated string: HDF5 keeps long variable-length strings, not long arrays."""
    return "\n".join(printable(str(v)) for v in values)  # a newline inside a name cannot split it


def rebatch(arrays: Iterable[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Regroup arrays along their first axis into arrays of exactly ``batch`` rows (the last may be shorter)."""
    pending, count = [], 0
    for array in arrays:
        while len(array):
            take = min(batch - count, len(array))
            pending.append(array[:take])
            count += take
            array = array[take:]
            if count == batch:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


# ----------------------------------------------------------------------------- images -> patches
@dataclass
class PatchJob:
    """One dataset to fill from a list of images: ``name`` gets ``patch`` x ``patch`` patches."""
    name: str                        # "data" or "label"
    images: list[Path]
    patch: int                       # side of the patches cut (from the degraded image, if degraded)
    stride: int
    degradation: str | None = None   # a name of common.data.degrade.DEGRADATIONS, applied before cutting
    source: str = ""                 # the folder, for messages and attributes


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The random generator that degrades one image: fixed by the seed and the file's name alone."""
    return np.random.default_rng([seed, zlib.crc32(os.fsencode(name))])  # any file name, UTF-8 or not


def patch_rows(img: np.ndarray, patch: int, stride: int) -> Iterator[np.ndarray]:
    """:func:`common.data.patch_file.cut_patches`'s patches, one grid row at a time (N x C x p x p each)."""
    for top in range(0, img.shape[0] - patch + 1, stride):
        yield cut_patches(img[top:top + patch], patch, stride)


def job_batches(job: PatchJob, seed: int = 0, batch: int = DEFAULT_BATCH, progress: bool = False,
                too_small: dict | None = None) -> Iterator[np.ndarray]:
    """The job's patches (float32 in [0, 1]) in batches of at most ``batch``, one image in memory at a time.

    An image smaller than one patch gives none: it is noted, or, given ``too_small``, recorded there
    (path -> [(side, its size, the patch side, its degradation), ...]) for the caller to say once
    for every side."""
    degrade = DEGRADATIONS[job.degradation] if job.degradation else None

    def rows():
        what = f"{job.name} ({job.degradation})" if job.degradation else job.name
        for path in tqdm(job.images, desc=what, unit="img", disable=not progress, file=sys.stderr):
            img = read_image(path)
            if degrade is not None:
                img = degrade(img, image_rng(seed, path.name))
            if img.shape[0] < job.patch or img.shape[1] < job.patch:
                size = f"{img.shape[1]}x{img.shape[0]}"
                if too_small is None:
                    note(f"{path}: {size} is smaller than one {job.patch}x{job.patch} patch; skipped")
                else:
                    too_small.setdefault(path, []).append((job.name, size, job.patch, job.degradation))
                continue
            yield from patch_rows(img, job.patch, job.stride)

    yield from rebatch(rows(), batch)


def note_too_small(too_small: dict) -> None:
    """One note per image that gave a side no patch, naming every side it gave none (see :func:`job_batches`)."""
    for path, sides in too_small.items():
        sizes: dict[tuple, set] = {}  # (size, patch) -> degradations: sides alike are said once
        for _, size, patch, degradation in sides:
            sizes.setdefault((size, patch), set()).add(degradation)
        said = []
        for i, ((size, patch), how) in enumerate(sizes.items()):
            degraded = f" once degraded ({next(iter(how))})" if None not in how else ""
            said.append(f"{size}{degraded} " + (f"is smaller than one {patch}x{patch} patch" if i == 0
                                                else f"than one {patch}x{patch}"))
        names = " or ".join(f"'{name}'" for name, *_ in sides)
        note(f"{path}: {', '.join(said)}; it gave no {names} patches")


SPLIT_BOTH = ("both", "none")  # every image on both sides ('none': no split, the older spelling)


def parse_split(token: str | float | None) -> float | None:
    """``--split``: ``both`` (None: every image on both sides, the default), or ``half`` (0.5) or a
    fraction in (0, 1) of the images (sorted by name) whose degraded patches give ``data``, the rest
    giving ``label``: disjoint sides."""
    if token is None or str(token).lower() in SPLIT_BOTH:
        return None
    if str(token).lower() == "half":
        return 0.5
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"--split {token}: expected both, half or a fraction such as 0.5") from None
    if not 0 < value < 1:
        raise InputError(f"--split {token}: the fraction must lie strictly between 0 and 1")
    return value


def split_images(images: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Split a list of images sorted by name: the first ``fraction`` (at least one) to degrade, the rest clean."""
    images = sorted(images, key=lambda p: p.name)
    if len(images) < 2:
        raise InputError(f"{images[0].parent if images else 'input'}: {len(images)} image(s); splitting into "
                         "degraded and clean sides needs at least 2")
    k = min(max(int(round(fraction * len(images))), 1), len(images) - 1)
    return images[:k], images[k:]


def folder_images(folder: str | Path) -> list[Path]:
    images = list_images(folder, notes=False)
    if not images:
        raise InputError(f"{folder}: no images (looked for {IMAGE_KINDS}); "
                         f"{describe_contents(folder_contents(folder))}")
    note_skipped(folder)
    return images


def check_make_flags(input_dir, patch: int, stride: int, degradation: str | None, degraded_dir, split,
                     as_name: str | None, scale: int | None, two_sides: bool) -> tuple[int, float | None]:
    """:func:`plan_make`'s arguments that contradict each other, or a patch grid the scale cannot
    align, refused before any image is read; the scale and the split's fraction (None: both sides)."""
    if patch < 1 or stride < 1:
        raise InputError(f"--patch {patch} --stride {stride}: both must be at least 1")
    if degradation is not None and degradation not in DEGRADATIONS:
        raise InputError(f"--degrade {degradation}: unknown; choose from {', '.join(DEGRADATIONS)}")
    if as_name not in (None, "data", "label"):
        raise InputError(f"--as {as_name}: expected data or label")
    if as_name == "label" and degradation:
        raise InputError(f"--as label --degrade {degradation}: clean patches are not degraded; use --as data")
    if degraded_dir is not None and as_name is not None:
        raise InputError("--as makes one dataset from one folder; it does not go with --degraded-input")
    if split is not None and not two_sides:
        raise InputError("--split chooses the images of the degraded and the clean side; it needs --degrade "
                         "or --degraded-input (and no --as)")
    if degradation and scale and scale != degradation_scale(degradation):
        raise InputError(f"--scale {scale} contradicts --degrade {degradation} "
                         f"(which makes x{degradation_scale(degradation)} smaller images)")
    s = degradation_scale(degradation) if degradation else (scale or 1)
    if patch % s or stride % s:
        raise InputError(f"--patch {patch} and --stride {stride} must be multiples of the scale {s}, so that "
                         "degraded and clean patch grids align")
    fraction = parse_split(split)
    if degraded_dir is not None and degradation is None and same_file(degraded_dir, input_dir):
        raise InputError(f"--degraded-input {degraded_dir} is the --input folder: 'data' and 'label' would hold "
                         "the same clean patches, with nothing to learn; give the degraded photographs' folder, "
                         "or --degrade to degrade these")
    return s, fraction


def plan_make(input_dir: str | Path, patch: int, stride: int, *, degradation: str | None = None,
              degraded_dir: str | Path | None = None, split: str | float | None = None,
              as_name: str | None = None, scale: int | None = None) -> tuple[list[PatchJob], dict]:
    """What ``make_h5.py`` writes: the jobs (datasets to fill) and the attributes that describe them.

    - ``degradation`` alone: by default every image of ``input_dir`` on both sides, degraded into
      ``data`` and clean into ``label``. Training stays unpaired (the loader draws each degraded patch's
      clean partner at random) and the two sides differ by the degradation alone, which is what makes
      unpaired data learnable. ``split`` can put them on disjoint sides instead.
    - ``degraded_dir``: ``data`` from its images (degraded here if ``degradation`` is given), ``label``
      from ``input_dir``'s; every image of both by default.
    - ``as_name``: one dataset of that name from ``input_dir`` (degraded if ``degradation`` is given).
    - nothing: one ``label`` dataset of ``input_dir``'s patches.

    ``split``: ``both`` (every image on both sides, the default), or ``half`` or a fraction (of each
    folder, sorted by name: the first part gives ``data``, the rest ``label``; with two folders, for
    ones that hold the same scenes in the same order), so that no scene is on both sides. ``patch`` and ``stride`` are the clean side's; degraded patches are
    ``patch / scale`` on a ``stride / scale`` grid, ``scale`` being the degradation's (4 for
    bicubic-x4) or ``scale``.
    """
    two_sides = degraded_dir is not None or (degradation is not None and as_name is None)
    s, fraction = check_make_flags(input_dir, patch, stride, degradation, degraded_dir, split, as_name, scale,
                                   two_sides)
    images = folder_images(input_dir)
    degraded_images = folder_images(degraded_dir) if degraded_dir is not None else images
    if not two_sides:
        name = as_name or "label"
        how = "one dataset"
        jobs = [PatchJob(name, images, patch // s, stride // s, degradation, str(input_dir)) if name == "data"
                else PatchJob(name, images, patch, stride, source=str(input_dir))]
    else:
        if fraction is None:
            how = "folders" if degraded_dir is not None else "both"
        else:
            how = f"{fraction:g} by name"
            degraded_images = split_images(degraded_images, fraction)[0]
            images = split_images(images, fraction)[1]
        source = str(degraded_dir if degraded_dir is not None else input_dir)
        jobs = [PatchJob("data", degraded_images, patch // s, stride // s, degradation, source),
                PatchJob("label", images, patch, stride, source=str(input_dir))]
    attrs = {"source": str(input_dir), "patch": patch, "stride": stride, "scale": s,
             "degradation": degradation or "none", "split": how}
    if degraded_dir is not None:
        attrs["degraded_source"] = str(degraded_dir)
    for job in jobs:  # the images planned; make_h5 keeps those that gave the side patches
        attrs[f"{job.name}_files"] = text_attr(p.name for p in job.images)
    return jobs, attrs


def planned_patches(jobs: list[PatchJob], dtype: str) -> dict[str, tuple[int, int]]:
    """For each dataset the jobs fill, how many patches it will hold and the bytes of one, from the
    images' sizes (their headers): what a full disk is said to lack (``H5PatchWriter``'s plan).
    Degraded images are taken as the degradation's scale smaller."""
    plan: dict[str, tuple[int, int]] = {}
    for job in jobs:
        s = degradation_scale(job.degradation) if job.degradation else 1
        count = 0
        for path in job.images:
            w, h = (side // s for side in image_size(path))
            if h >= job.patch and w >= job.patch:
                count += ((h - job.patch) // job.stride + 1) * ((w - job.patch) // job.stride + 1)
        plan[job.name] = (plan.get(job.name, (0, 0))[0] + count, 3 * job.patch ** 2 * np.dtype(dtype).itemsize)
    return plan


def make_h5(out: str | Path, jobs: list[PatchJob], *, dtype: str = "uint8", seed: int = 0,
            batch: int = DEFAULT_BATCH, attrs: dict | None = None, progress: bool = False) -> dict[str, int]:
    """Write the jobs' patches to ``out`` (streamed, atomic) and return the patch count of each dataset."""
    out = check_out_path(out)
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    attrs = {**(attrs or {}), "dtype": dtype, "seed": seed, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
             "tool": "gdata/make_h5.py"}
    too_small: dict[Path, list] = {}
    with H5PatchWriter(out, dtype=dtype, attrs=attrs, plan=lambda: planned_patches(jobs, dtype)) as writer:
        for job in jobs:
            n = 0
            for patches in job_batches(job, seed, batch, progress, too_small):
                writer.append(job.name, patches)
                n += len(patches)
            if n == 0:
                raise InputError(f"{job.source}: no {job.patch}x{job.patch} patch fits in any of its "
                                 f"{len(job.images)} image(s) for '{job.name}'")
            # '<side>_files' names the images whose patches the side holds: one too small for a patch
            # gave none and is left out (and noted below), so the list never claims a scene it lacks
            gave_none = {path for path, sides in too_small.items() if any(name == job.name for name, *_ in sides)}
            writer.set_attrs({f"{job.name}_files": text_attr(p.name for p in job.images if p not in gave_none)})
        note_too_small(too_small)
        return writer.counts()


# ----------------------------------------------------------------------------- reading patches back
class PatchSet:
    """The patches of one or more (file, dataset) parts, read as one sequence in our C x H x W layout.

    Use as a context manager: the files stay open while it is.
    """

    def __init__(self, parts: list[tuple[str | Path, str]], layout: str = "auto"):
        self.parts = [(str(p), name) for p, name in parts]
        self.layout = layout
        self._stack = ExitStack()
        self.datasets: list[h5py.Dataset] = []
        self.transposed: list[bool] = []

    def __enter__(self) -> "PatchSet":
        try:
            for path, name in self.parts:
                f = self._stack.enter_context(open_h5_file(path))
                ds = patch_dataset(path, f, name)
                check_patch_dtype(path, name, ds.dtype)
                check_declared_size(path, name, ds)
                self.datasets.append(ds)
                self.transposed.append(is_transposed(path, f, self.layout))
            # uint8 and float parts together are read as float32 in [0, 1]
            self.mixed = len({ds.dtype for ds in self.datasets}) > 1
            shapes = [self._chw(k) for k in range(len(self.parts))]
            for (path, name), shape in zip(self.parts, shapes):
                if shape != shapes[0]:
                    raise InputError(f"{path}: '{name}' patches are {'x'.join(map(str, shape))} but "
                                     f"{self.parts[0][0]}'s are {'x'.join(map(str, shapes[0]))}")
        except BaseException:
            self._stack.close()
            raise
        self.ends = np.cumsum([len(ds) for ds in self.datasets])
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def _chw(self, k: int) -> tuple[int, int, int]:
        return patch_shape(self.datasets[k].shape, self.transposed[k])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._chw(0)

    @property
    def dtypes(self) -> list[np.dtype]:
        return [ds.dtype for ds in self.datasets]

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.datasets) else 0

    def nbytes(self, count: int, dtype: str) -> int:
        """The bytes of ``count`` of these patches stored as ``dtype``."""
        return count * int(np.prod(self.shape)) * np.dtype(dtype).itemsize

    def rows_per_batch(self, batch: int) -> int:
        """``batch``, or fewer so that a batch read as float32 stays under ``BATCH_BYTES``."""
        patch_bytes = int(np.prod(self.shape)) * 4
        return max(1, min(batch, BATCH_BYTES // max(1, patch_bytes)))

    def _ours(self, k: int, values: np.ndarray) -> np.ndarray:
        if self.mixed:
            values = values.astype(np.float32) / 255.0 if values.dtype == np.uint8 else values.astype(np.float32)
        return as_stored_in_ours(values, self.transposed[k])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Patches at the given global indices, in the order given (each file read in increasing order)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = None
        starts = np.concatenate([[0], self.ends[:-1]])
        for k, (start, end) in enumerate(zip(starts, self.ends)):
            where = np.nonzero((indices >= start) & (indices < end))[0]
            if not len(where):
                continue
            local = indices[where] - start
            order = np.argsort(local, kind="stable")
            unique, inverse = np.unique(local[order], return_inverse=True)
            values = self._ours(k, self._read_rows(k, unique))
            if out is None:
                out = np.empty((len(indices), *self.shape), dtype=values.dtype)
            out[where[order]] = values[inverse]
        if out is None:
            return np.empty((0, *self.shape), dtype=self.dtypes[0])
        return out

    def _read_rows(self, k: int, rows: np.ndarray) -> np.ndarray:
        ds = self.datasets[k]
        try:
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run: one slice
                values = ds[int(rows[0]):int(rows[-1]) + 1]
            else:
                values = ds[rows]
        except OSError as exc:
            raise InputError(f"{self.parts[k][0]}: '{self.parts[k][1]}' cannot be read, the file may be "
                             f"truncated ({exc})") from None
        # NaN or out-of-range floats would be written on (or rounded into garbage uint8): refused
        check_values(self.parts[k][0], f"dataset '{self.parts[k][1]}' (rows {int(rows[0])} to {int(rows[-1])})",
                      values)
        return values

    def batches(self, batch: int = DEFAULT_BATCH, count: int | None = None) -> Iterator[np.ndarray]:
        """The first ``count`` patches (all by default) in order, ``batch`` at a time (fewer for large
        patches: a batch holds at most ``SCAN_BYTES``)."""
        count = len(self) if count is None else count
        batch = self.rows_per_batch(batch)
        for start in range(0, count, batch):
            yield self.read(np.arange(start, min(start + batch, count)))


def pick_dataset(path: str | Path, preferred: str) -> str:
    """``preferred`` if the file has it, else its only 4-D dataset."""
    with open_h5_file(path) as f:
        if preferred in f:
            return preferred
        names = patch_datasets(path, f)
    if len(names) == 1:
        return names[0]
    raise InputError(f"{path}: no '{preferred}' dataset and {len(names)} other patch datasets "
                     f"({', '.join(names) or 'none'}) to choose from")


def _copy(writer: H5PatchWriter, name: str, batches: Iterable[np.ndarray], total: int, progress: bool) -> None:
    with tqdm(total=total, desc=name, unit="patch", disable=not progress, file=sys.stderr) as bar:
        for values in batches:
            writer.append(name, values)
            bar.update(len(values))


def _write_sets(out: Path, sets: dict[str, PatchSet], dtype: str, attrs: dict, batch: int,
                progress: bool) -> dict[str, int]:
    """Every patch of each set into the dataset of its name (concatenating and converting)."""
    plan = {name: (len(source), source.nbytes(1, dtype)) for name, source in sets.items()}  # what a full disk lacks
    with H5PatchWriter(out, dtype=dtype, attrs=attrs, plan=plan) as writer:
        for name, source in sets.items():
            _copy(writer, name, source.batches(batch), len(source), progress)
        return writer.counts()


def _scale_attr(data_shape, label_shape) -> dict:
    h, w = data_shape[1:]
    lh, lw = label_shape[1:]
    if lh % h == 0 and lw % w == 0 and lh // h == lw // w:
        return {"scale": lh // h}
    return {}


def merge_h5(data_files: list[str | Path], label_files: list[str | Path], out: str | Path, *, seed: int = 0,
             shuffle: bool = True, dtype: str | None = None, layout: str = "auto", batch: int = DEFAULT_BATCH,
             progress: bool = False) -> dict[str, int]:
    """A training file from the patches of ``data_files`` (as ``data``) and ``label_files`` (as ``label``).

    Each file gives its ``data`` (resp. ``label``) dataset, or its only patch dataset; several files
    on one side are concatenated. Both sides are trimmed to the smaller count, then (``shuffle``)
    reordered by one permutation drawn from ``seed``: ``data[i]`` and ``label[i]`` are the
    sources' patches ``perm[i]``. Written in batches; the output is in our layout.
    """
    out = check_out_path(out, [*data_files, *label_files])
    data_parts = [(f, pick_dataset(f, "data")) for f in data_files]
    label_parts = [(f, pick_dataset(f, "label")) for f in label_files]
    with PatchSet(data_parts, layout) as data, PatchSet(label_parts, layout) as label:
        for (data_path, data_name), data_ds in zip(data_parts, data.datasets):
            for (label_path, label_name), label_ds in zip(label_parts, label.datasets):
                if same_dataset(data_ds, label_ds):
                    raise InputError(f"{label_path}: '{label_name}' is the dataset given as 'data' ({data_path}: "
                                     f"'{data_name}'): {SAME_PATCHES}")
        n = min(len(data), len(label))
        if n == 0:
            empty = data_parts if len(data) == 0 else label_parts
            raise InputError(f"{empty[0][0]}: no patches to merge")
        if len(data) != len(label):
            note(f"trimmed to {n} patches a side ('data' had {len(data)}, 'label' {len(label)})")
        if data.shape[0] != label.shape[0]:
            raise InputError(f"{label_parts[0][0]}: clean patches have {label.shape[0]} channels but the "
                             f"degraded ones in {data_parts[0][0]} have {data.shape[0]}")
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        attrs = {"data_sources": text_attr(f"{p}:{d}" for p, d in data_parts),
                 "label_sources": text_attr(f"{p}:{d}" for p, d in label_parts),
                 "count": n, "shuffled": bool(shuffle), "seed": seed, "tool": "gdata/merge_h5.py",
                 "created": time.strftime("%Y-%m-%d %H:%M:%S"), **_scale_attr(data.shape, label.shape)}
        out_dtype = output_dtype(data.dtypes + label.dtypes, dtype)
        plan = {"data": (n, data.nbytes(1, out_dtype)), "label": (n, label.nbytes(1, out_dtype))}
        with H5PatchWriter(out, dtype=out_dtype, attrs=attrs, plan=plan) as writer:
            for name, source in (("data", data), ("label", label)):
                step = source.rows_per_batch(batch)
                _copy(writer, name, (source.read(order[i:i + step]) for i in range(0, n, step)), n, progress)
            return writer.counts()


def concat_h5(files: list[str | Path], out: str | Path, *, dtype: str | None = None, layout: str = "auto",
              batch: int = DEFAULT_BATCH, progress: bool = False) -> dict[str, int]:
    """One file with every patch dataset of ``files``, each concatenated in the order given."""
    out = check_out_path(out, files)
    present: dict[str, list[str]] = {}
    for path in files:
        with open_h5_file(path) as f:
            names = patch_datasets(path, f)
            check_sides_apart(path, f.get("data"), f.get("label"))  # copied apart, the link would be lost
            for name in names:
                present.setdefault(name, []).append(str(path))
    if not present:
        raise InputError(f"{files[0]}: no patch datasets (N x C x H x W) to concatenate")
    for name, holders in present.items():
        if len(holders) < len(files):
            note(f"'{name}' is in {len(holders)} of the {len(files)} files")
    attrs = {"sources": text_attr(files), "tool": "gdata/merge_h5.py --concat",
             "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    with ExitStack() as stack:
        sets = {name: stack.enter_context(PatchSet([(p, name) for p in holders], layout))
                for name, holders in present.items()}
        if "data" in sets and "label" in sets:
            attrs.update(_scale_attr(sets["data"].shape, sets["label"].shape))
        out_dtype = output_dtype([d for s in sets.values() for d in s.dtypes], dtype)
        return _write_sets(out, sets, out_dtype, attrs, batch, progress)


def holds_references(value) -> bool:
    """Whether an attribute's value is or holds HDF5 object or region references."""
    if isinstance(value, (h5py.Reference, h5py.RegionReference)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and h5py.check_dtype(ref=dtype) is not None


def convert_layout(src: str | Path, out: str | Path, *, layout: str = "auto", dtype: str | None = None,
                   batch: int = DEFAULT_BATCH, progress: bool = False) -> dict[str, int]:
    """Rewrite a file's patch datasets in our layout (N x C x H x W), streamed; other attributes are kept.

    ``layout`` says how ``src`` is stored; ``auto`` reads its ``layout`` attribute and refuses a file
    without one (MATLAB's files carry none: say ``matlab``).
    """
    out = check_out_path(out, [src])
    with open_h5_file(src) as f:
        stored = stored_layout(src, f)
        if layout == "auto" and stored is None:
            raise InputError(f"{src}: no 'layout' attribute, so its layout is unknown; give --layout matlab "
                             "(N x C x W x H, as MATLAB writes) or --layout ours")
        transposed = is_transposed(src, f, layout)
        names = patch_datasets(src, f)
        check_sides_apart(src, f.get("data"), f.get("label"))  # copied apart, the link would be lost
        if not names:
            raise InputError(f"{src}: no patch datasets (N x C x H x W) to convert")
        skipped = [n for n in f if n not in names]
        if skipped:
            note(f"{src}: not copied (not 4-D patch datasets): {', '.join(skipped)}")
        if not transposed:
            note(f"{src}: already in our layout (N x C x H x W); copied as is")
        attrs = {k: read_attr(src, f, k) for k in f.attrs if k != "layout"}
        # a reference names an object of this file: in another file it would name whatever is there
        references = [k for k, v in attrs.items() if holds_references(v)]
        if references:
            note(f"{src}: not copied (object references, which mean nothing in another file): attribute(s) "
                 f"{', '.join(references)}")
        attrs = {k: v for k, v in attrs.items() if k not in references}
        attrs.update(converted_from=str(src), converted_layout=stored or layout)
        out_dtype = output_dtype([f[n].dtype for n in names], dtype)
    with ExitStack() as stack:
        sets = {n: stack.enter_context(PatchSet([(src, n)], "matlab" if transposed else "ours")) for n in names}
        return _write_sets(out, sets, out_dtype, attrs, batch, progress)
