"""The HDF5 training-file format and every rule a patch file must follow, in one place: the loader
(``common.data.loader``), the writers (``common.data.building``, ``common.demo``) and the inspector
(``common.data.inspection``) all open and check files here.

A training file holds two datasets, ``data`` (degraded patches) and ``label`` (clean patches),
N x C x H x W, uint8 in [0, 255] or float in [0, 1] (the reference's float32); their counts may
differ. Files written by MATLAB hold every patch transposed, N x C x W x H. A file says which axis
order it has in its ``layout`` attribute (:data:`AXIS_ORDERS`); files without one are taken as ours
unless read with ``--layout matlab`` (:data:`LAYOUT_CHOICES`). Files are written here too
(:class:`H5PatchWriter`): ours, chunked, atomically.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..system.errors import InputError, Interrupted
from ..system.files import (folders_to_make, human_bytes, remove_made, remove_stale_temporaries, temporary_path,
                            unreadable_reason, write_failure)
from ..system.signals import check_interrupted, stop_signals_held
from ..system.text import printable

AXIS_ORDERS = {"NCHW": False, "NCWH": True}  # the 'layout' attribute -> patches stored transposed (C x W x H)
LAYOUT_CHOICES = ("auto", "ours", "matlab")  # --layout: the attribute, or either axis order whatever it says
DTYPES = ("uint8", "float32")                # what the writers store
RANGE_TOLERANCE = 1e-3  # float files may overshoot [0, 1] by rounding; clipped, not refused
MAX_PATCH_BYTES = 256 << 20   # one patch above this is no training patch (ours are 3x128x128, 48 KiB)
CHECK_BYTES = 64 << 20        # at most this much is read to check a file's first values


# ----------------------------------------------------------------------------- finding and opening files
def holders_of(path: str | os.PathLike) -> list[int]:
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
            holders = holders_of(path)
            who = f" (PID {', '.join(map(str, holders))})" if holders else ""
            raise InputError(f"{path}: another process{who} has the file open for writing (HDF5's file lock is "
                             "held); wait until it has finished writing, then try again") from None
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")  # a missing path named so was meant as a file, not a folder


def _named_as_file(path: str | os.PathLike) -> bool:
    """Whether a path that does not exist was given as an HDF5 file (``train.h5``) rather than a
    folder (``data/``, ``data/rain``): its error should not speak of a missing folder."""
    text = os.fspath(path)
    return not text.endswith(("/", os.sep)) and Path(text).suffix.lower() in H5_SUFFIXES


def find_h5_files(source: str | os.PathLike | list) -> list[Path]:
    """Every ``*.h5`` in a folder (sorted), one file, or the given list of files. A path that does
    not exist reads "no such file" when named as an .h5 file, "training folder not found" otherwise."""
    if isinstance(source, (list, tuple)):
        files = [Path(f) for f in source]
    else:
        folder = Path(source)
        if folder.is_file():
            files = [folder]
        elif not folder.is_dir():
            reason = unreadable_reason(folder, "a training folder")
            if reason == "no such file" and not _named_as_file(source):
                reason = "training folder not found"
            raise InputError(f"{folder}: {reason}")
        else:
            files = sorted(folder.glob("*.h5"))
            if not files:
                raise InputError(f"{folder}: no .h5 files in the training folder")
    for f in files:
        reason = unreadable_reason(f, "an .h5 file")
        if reason:
            raise InputError(f"{f}: {reason}")
    return files


# ----------------------------------------------------------------------------- the axis order
def stored_layout(path, f: h5py.File) -> str | None:
    """The file's ``layout`` attribute as a string, or None when it has none."""
    value = read_attr(path, f, "layout")
    if value is None:
        return None
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def read_attr(path, f: h5py.File, key: str, default=None):
    """One attribute of the file, or ``default`` without it; a damaged one is an :class:`InputError`."""
    try:
        return f.attrs[key] if key in f.attrs else default
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: the '{key}' attribute cannot be read ({exc})") from None


def is_transposed(path, f: h5py.File, layout: str = "auto") -> bool:
    """Whether the file's patches are stored C x W x H (MATLAB): ``layout`` overrides the attribute."""
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout must be one of {LAYOUT_CHOICES}")
    if layout != "auto":
        return layout == "matlab"
    stored = stored_layout(path, f)
    if stored is None:
        return False
    if stored not in AXIS_ORDERS:
        raise InputError(f"{path}: unknown layout attribute '{stored}'; expected one of {', '.join(AXIS_ORDERS)}")
    return AXIS_ORDERS[stored]


def patch_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, int, int]:
    """A stored 4-D shape's patch as C x H x W (undoing MATLAB's C x W x H)."""
    c, a, b = (int(n) for n in shape[1:])
    return (c, b, a) if transposed else (c, a, b)


def as_stored_in_ours(values: np.ndarray, transposed: bool) -> np.ndarray:
    """Patches read from a file (N x C x . x . or C x . x .) in our axis order."""
    return values.swapaxes(-1, -2) if transposed else values


# ----------------------------------------------------------------------------- names, links and storage
MAX_SOFT_LINKS = 16  # soft links followed for one name before it is taken for a loop (HDF5's own limit)


def follow(path, f: h5py.File, name: str) -> tuple[h5py.HLObject, str | None]:
    """The object that the top-level ``name`` of an open file stands for, and the soft link it was
    reached through (its target; None for an object stored under that name).

    Soft links are followed here, one path component at a time, so that nothing outside the file is
    ever opened: a name that leads to another file (an external link), to nothing (a dangling soft
    link) or round in a loop is an :class:`InputError` naming the file, the name and its target.
    """
    targets: list[str] = []   # the soft links' targets, in the order followed
    parts, real = [name], ""  # ``real``: the path so far, made of stored (hard) links only

    def through() -> str:
        return f"'{name}' is a soft link to " + " -> ".join(f"'{t}'" for t in targets)

    while parts:
        part = parts.pop(0)
        here = f"{real}/{part}"
        try:
            link = f.get(here, getlink=True)
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as exc:  # an unknown link type, damage
            raise InputError(f"{path}: '{name}' leads to '{here}', which cannot be followed ({exc})") from None
        if link is None:
            raise InputError(f"{path}: {through()}, which is not in the file" if targets else
                             f"{path}: '{name}' leads to '{here}', which is not in the file")
        if isinstance(link, h5py.ExternalLink):
            what = f"{through()}, an external link" if targets else f"'{name}' is an external link"
            raise InputError(f"{path}: {what} to '{link.path}' in {link.filename}; a training file must hold "
                             "its own patches (copy them into it, or give that file instead)")
        if isinstance(link, h5py.SoftLink):
            seen = link.path in targets
            targets.append(link.path)
            if seen or len(targets) > MAX_SOFT_LINKS:
                raise InputError(f"{path}: {through()}{'' if seen else ' ...'}: the links lead round in a loop")
            # an absolute target starts again at the root; a relative one in the link's own group
            real = "" if link.path.startswith("/") else real
            parts = [p for p in link.path.split("/") if p not in ("", ".")] + parts
            continue
        real = here
    try:
        return f[real or "/"], (targets[-1] if targets else None)  # '': a link to the root group
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # a damaged object header
        raise InputError(f"{path}: '{name}' cannot be read, the file may be damaged ({exc})") from None


def storage_problem(ds: h5py.Dataset) -> str | None:
    """Why a dataset's values cannot be read from this file alone, or None: HDF5 lets a dataset keep
    them in other files (external storage: any file, /dev/zero or /etc/passwd alike; a virtual dataset:
    other datasets, in this file or others), or compress them with a filter this HDF5 lacks (such a
    file would fail at its first read, or part way through training). Reads metadata only."""
    try:
        external = ds.external
        if external:
            where = ", ".join(os.fsdecode(entry[0]) for entry in external[:3]) + (" ..." if len(external) > 3 else "")
            return f"keeps its values outside the file, in {where} (HDF5 external storage)"
        if ds.is_virtual:
            sources = [f"{s.file_name}:{s.dset_name}" for s in ds.virtual_sources()]
            where = ", ".join(sorted(set(sources))[:3]) + (" ..." if len(set(sources)) > 3 else "")
            return (f"is a virtual dataset, whose values are those of {where or 'no dataset'} "
                    "('.' is this file)")
        plist = ds.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, label = plist.get_filter(i)
            if not h5py.h5z.filter_avail(code):
                named = f" ({label.decode(errors='replace')})" if label else ""
                return (f"is compressed with HDF5 filter {code}{named}, which this installation cannot decode; "
                        "point HDF5_PLUGIN_PATH at its plugin, or rewrite the file with gzip or no compression")
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        return f"cannot be read, the file may be damaged ({exc})"
    return None


def members(path, f: h5py.File) -> dict[str, h5py.HLObject]:
    """Every top-level object of an open file by name, soft links followed within the file; an
    :class:`InputError` at the first name that leads outside the file, to nothing or round in a loop,
    or at a dataset whose values are elsewhere (see :func:`storage_problem`)."""
    found = {}
    for name in f:
        obj, _ = follow(path, f, name)
        if isinstance(obj, h5py.Dataset):
            problem = storage_problem(obj)
            if problem:
                raise InputError(f"{path}: dataset '{name}' {problem}")
        found[name] = obj
    return found


def patch_dataset(path, f: h5py.File, name: str) -> h5py.Dataset:
    """The 4-D dataset ``name`` of an open file, or an error that says what is there instead."""
    if name not in f:
        raise InputError(f"{path}: no '{name}' dataset (has: {', '.join(f.keys()) or 'nothing'})")
    obj, target = follow(path, f, name)
    what = f"'{name}' (a soft link to '{target}')" if target else f"'{name}'"
    if isinstance(obj, h5py.Group):
        inside = ", ".join(obj.keys()) or "nothing"
        raise InputError(f"{path}: {what} is a group (a folder inside the file, holding: {inside}), not a "
                         "dataset of patches")
    if isinstance(obj, h5py.Datatype):
        raise InputError(f"{path}: {what} is a named datatype (a type stored in the file), not a dataset of patches")
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 4:
        raise InputError(f"{path}: {what} must be N x C x H x W, got shape {getattr(obj, 'shape', None)}")
    problem = storage_problem(obj) or empty_patch_problem(obj.shape)
    if problem:
        raise InputError(f"{path}: dataset '{name}' {problem}")
    return obj


def empty_patch_problem(shape: tuple[int, ...]) -> str | None:
    """Patches with a side of 0 hold no pixel (nothing to train on, nor to merge)."""
    if 0 in tuple(shape[1:]):
        return f"has empty patches ({'x'.join(map(str, shape[1:]))}: a side of 0 holds no values)"
    return None


def patch_datasets(path, f: h5py.File) -> list[str]:
    """Names of the file's top-level 4-D datasets (``data`` and ``label`` first)."""
    names = [n for n, obj in members(path, f).items() if isinstance(obj, h5py.Dataset) and obj.ndim == 4]
    return sorted(names, key=lambda n: (n not in ("data", "label"), n != "data", n))


def same_dataset(a: h5py.Dataset, b: h5py.Dataset) -> bool:
    """Whether two datasets are one, stored once under two names (a hard or soft link)."""
    try:
        return (os.path.samefile(a.file.filename, b.file.filename)
                and h5py.h5o.get_info(a.id).addr == h5py.h5o.get_info(b.id).addr)
    except (OSError, RuntimeError, ValueError):
        return False


def dtype_problem(dtype) -> str | None:
    """Patches are uint8 in [0, 255] or float in [0, 1]. Other integers (int16, uint16, bool) are
    refused rather than guessed at: their scale (255? 65535? 1?) is not in the file."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8 or np.issubdtype(dtype, np.floating):
        return None
    return (f"has dtype {dtype}; expected uint8 [0, 255] or float [0, 1] (the scale of other types is unknown: "
            "convert the values to one of these first)")


def check_patch_dtype(path, name: str, dtype) -> None:
    problem = dtype_problem(dtype)
    if problem:
        raise InputError(f"{path}: dataset '{name}' {problem}")


def rgb_problem(channels: int) -> str | None:
    """The networks take RGB patches; merging and converting take any channel count."""
    return None if channels == 3 else f"patches have {channels} channel(s); training takes RGB patches (3 channels)"


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
    if declared == 0 or not shape or ds.is_virtual or ds.external:  # a scalar; or refused by storage_problem
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


def check_values(path: str, what: str, values: np.ndarray) -> None:
    """Refuse non-finite or out-of-range float values; ``what`` names the dataset or patch."""
    if values.dtype == np.uint8:
        return
    if not np.isfinite(values).all():
        raise InputError(f"{path}: {what} holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{path}: {what} has values in [{lo:.4g}, {hi:.4g}]; "
                         "float files must hold [0, 1] (uint8 files [0, 255])")


# ----------------------------------------------------------------------------- a training file as a whole
@dataclass(frozen=True)
class PatchFile:
    """What training knows of one file, checked when the data set is built."""
    path: str
    n_data: int
    n_label: int
    data_shape: tuple[int, int, int]   # C x H x W in our axis order
    label_shape: tuple[int, int, int]
    transposed: bool
    uint8: bool                        # both datasets hold uint8


SAME_PATCHES = "the degraded and the clean side would be the same patches, with nothing to learn"
SAME_SIDES = f"'data' and 'label' are one dataset stored under two names (a link): {SAME_PATCHES}"


def check_sides_apart(path, data, label) -> None:
    """Refuse a file whose 'data' and 'label' are one dataset (either may be None: not there)."""
    if isinstance(data, h5py.Dataset) and isinstance(label, h5py.Dataset) and same_dataset(data, label):
        raise InputError(f"{path}: {SAME_SIDES}")


def check_training_file(path: str | os.PathLike, layout: str = "auto") -> PatchFile:
    """Open one training file and check its datasets' shapes, dtypes, declared sizes, axis order and
    a first block of values; what training knows of it."""
    path = str(path)
    with open_h5_file(path) as f:
        sides = {}
        for name in ("data", "label"):
            ds = sides[name] = patch_dataset(path, f, name)
            if ds.shape[0] == 0:
                raise InputError(f"{path}: dataset '{name}' is empty")
            check_patch_dtype(path, name, ds.dtype)
            check_declared_size(path, name, ds)
        data, label = sides["data"], sides["label"]
        check_sides_apart(path, data, label)
        for name, ds in sides.items():  # values only once both shapes are known to be sane
            try:
                check_values(path, f"dataset '{name}'", first_rows(ds))
            except OSError as exc:
                raise InputError(f"{path}: dataset '{name}' cannot be read, the file may be "
                                 f"truncated ({exc})") from None
        transposed = is_transposed(path, f, layout)
        part = PatchFile(path, int(data.shape[0]), int(label.shape[0]), patch_shape(data.shape, transposed),
                         patch_shape(label.shape, transposed), transposed,
                         data.dtype == np.uint8 and label.dtype == np.uint8)
    if part.data_shape[0] != part.label_shape[0]:
        raise InputError(f"{path}: 'data' has {part.data_shape[0]} channels but 'label' has "
                         f"{part.label_shape[0]}")
    return part


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


class _Abandoned(Exception):
    """The writer gave its file up: recorded as its failure so that nothing more is written to it."""


class _TemporaryFile:
    """The file being written, as HDF5 sees it (h5py's 'fileobj' driver): a write that fails (a full
    disk, a quota, a file size limit) is recorded in ``failure`` and every later write is dropped,
    instead of failing inside HDF5. HDF5 does not survive its own failed writes: closing such a file
    crashes the process (a segmentation fault, often at exit, after "Exception ignored" tracebacks).
    The writer raises what was recorded once HDF5 has returned."""

    def __init__(self, path: Path):
        self.raw = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self.failure: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def write(self, data) -> int:
        try:
            view = memoryview(data).cast("B")
            while self.failure is None and len(view):
                view = view[self.raw.write(view):]
        except OSError as exc:
            self.fail(exc)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        # what was dropped reads as zeros: HDF5 still sees a whole file while it closes
        return data + bytes(max(0, size - len(data))) if self.failure is not None else data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.raw.truncate(size)
        except OSError as exc:
            self.fail(exc)
            return self.raw.tell() if size is None else size

    def flush(self) -> None:  # unbuffered: nothing is held here
        pass

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError as exc:  # a network file system may report a failed write only now
            self.fail(exc)


class H5PatchWriter:
    """Stream patches into a training file: datasets grow in chunks, memory holds one batch at most.

    Patches arrive as N x C x H x W, float in [0, 1] or uint8; they are stored as ``dtype`` (uint8
    rounds to nearest). The file appears at ``path`` only when :meth:`close` succeeds (it is written
    under a temporary name and renamed), so an interrupted run leaves no half-written training file.
    A full disk is one :class:`InputError` that says how much the file needs at least (``plan``: for
    each dataset, how many patches it will hold and the bytes of one, or a function that estimates
    them, asked only then; see :meth:`bytes_needed`) and how much is free; the temporary is removed
    first.
    """

    def __init__(self, path: str | os.PathLike, dtype: str = "uint8", chunk: int = 64,
                 attrs: dict | None = None, plan=None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        self.path = Path(path)
        self.tmp = temporary_path(self.path)
        self.dtype = np.dtype(dtype)
        self.chunk = chunk
        self.plan = plan
        self.given: dict[str, tuple[int, int]] = {}  # per dataset: patches given so far, bytes of one
        self.file = self.disk = None
        self.datasets: dict[str, h5py.Dataset] = {}
        self.removed: list[Path] | None = None  # what abort() removed, once it has run
        # folders made for the file, removed again if it is never written
        self.made = folders_to_make(self.path.parent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # what an earlier writer of this file left when it was killed (space that a full disk needs)
            remove_stale_temporaries(self.path.parent, (self.path.name,))
            self.disk = _TemporaryFile(self.tmp)
        except OSError as exc:
            self.abort()
            raise InputError(write_failure(self.path, exc, None, "file")) from None
        with self._writing():
            self.file = h5py.File(self.disk, "w")
        self.set_attrs({"layout": "NCHW", **(attrs or {})})

    def set_attrs(self, attrs: dict) -> None:
        """Set attributes of the file (text is kept as UTF-8: file names that are not keep \\xff escapes)."""
        with self._writing():
            for key, value in attrs.items():
                self.file.attrs[key] = printable(value, one_line=False) if isinstance(value, str) else value

    @contextmanager
    def _writing(self):
        """Around every HDF5 call that may write: a failure recorded by the file (see
        :class:`_TemporaryFile`) removes the temporary and is raised here, a full disk as one line."""
        try:
            with stop_signals_held():
                yield
        except OSError as exc:  # h5py's own report of a failure (the disk's own come through self.disk)
            self.disk.fail(exc)
        except BaseException as exc:  # a stop signal, or a programming error: the temporary goes
            self.abort()
            self._say_removed(exc)
            raise
        failure = self.disk.failure
        if failure is None:
            return
        self.abort()
        if isinstance(failure, OSError):
            raise InputError(write_failure(self.path, failure, self.bytes_needed(), "file", at_least=True)) from None
        raise failure

    def bytes_needed(self) -> int | None:
        """At least the file's size: each dataset's patches, of the plan or given so far (the batch being
        written included), in whole chunks, as HDF5 allocates them (24 patches take a chunk of 64);
        HDF5's own records come on top."""
        plan = self.plan
        try:
            plan = plan() if callable(plan) else plan
        except InputError:  # an estimate that cannot be made now (an image gone since): no estimate
            plan = None
        sizes = dict(plan or {})
        for name, (count, patch_bytes) in self.given.items():
            sizes[name] = (max(count, sizes.get(name, (0, 0))[0]), patch_bytes)
        return sum(-(-count // self.chunk) * self.chunk * patch_bytes for count, patch_bytes in sizes.values()) or None

    def counts(self) -> dict[str, int]:
        return {name: int(ds.shape[0]) for name, ds in sorted(self.datasets.items())}

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
        count, _ = self.given.get(name, (0, 0))
        self.given[name] = (count + len(patches), patches[0].nbytes)
        with self._writing():
            if name not in self.datasets:
                # kept open until the file closes: HDF5 writes out a dataset's cached chunks when its
                # last handle closes, which must happen inside _writing, not wherever Python frees it
                self.datasets[name] = self.file.create_dataset(
                    name, shape=(0, *patches.shape[1:]), maxshape=(None, *patches.shape[1:]),
                    chunks=(self.chunk, *patches.shape[1:]), dtype=self.dtype)
            ds = self.datasets[name]
            if ds.shape[1:] != patches.shape[1:]:
                raise ValueError(f"{name}: patch shape {patches.shape[1:]} differs from {ds.shape[1:]}")
            n = ds.shape[0]
            ds.resize(n + len(patches), axis=0)
            ds[n:] = patches

    def close(self) -> None:
        with self._writing():
            self.file.close()
            self.disk.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise InputError(write_failure(self.path, exc, None, "file")) from None

    def abort(self) -> None:
        """Close and remove the temporary (and the folders made for it); once, whatever is called after."""
        if self.removed is not None:
            return
        self.removed = [f for f in self.made if f.exists()]
        try:
            if self.disk is not None:
                self.disk.fail(_Abandoned())  # what HDF5 writes while it closes goes nowhere: the file goes
            if self.file is not None:
                with stop_signals_held():
                    self.file.close()
        except Exception:  # noqa: BLE001 - a file being thrown away: nothing of it matters
            pass
        finally:
            if self.disk is not None:
                self.disk.close()
            self.tmp.unlink(missing_ok=True)
            remove_made(self.made)

    def __enter__(self):
        return self

    def _say_removed(self, exc: BaseException) -> None:
        """Add what was removed to the message of a stop signal (once)."""
        said = f"the unfinished {self.tmp.name}"
        if isinstance(exc, Interrupted) and not any(line.startswith(said) for line in exc.cleaned):
            made = self.removed
            exc.cleaned.append(said + (f" and the folder {made[-1]} made for it" if made else "")
                               + f" ({self.path} was not written)")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        self.abort()
        self._say_removed(exc)
