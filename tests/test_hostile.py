"""Hostile and careless input against every entry point (train.py, test.py, gdata/*): each failure is
one line ``error: <file or flag>: <problem>`` with exit status 2, no traceback, and nothing written
or overwritten. Then the run-folder lock, the resume data check, a full disk, undecodable file
names and images too large for memory.

Table-driven: a small corpus of bad inputs is made in each test's folder, and every entry point is
called in-process through the same ``run_guarded`` as its script (subprocesses only where a real
process matters: a crash in C code, a lock held by another process).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import pathlib
import pickle
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import warnings
import zlib

import cv2
import h5py
import numpy as np
import pytest
import torch

import common.system.files as files_module
from common.cli.guard import run_guarded
from common.cli.test import test_main as run_test_script
from common.cli.train import train_main
from common.evaluation.evaluate import format_row
from common.networks import Generator
from common.system.errors import InputError
from common.system.files import RunLock
from common.training.checkpoint import FORMAT, save_checkpoint
from helpers import (ROOT, ShellPayload, generator_checkpoint, small_nets, sr_trainset, tiny_generator,
                      write_photos)

SMALL = small_nets()

NON_UTF8 = os.fsdecode(b"\xff\xfe")  # a file name that is not valid UTF-8, as Python holds it


def _script(name):
    spec = importlib.util.spec_from_file_location(f"gdata_{name}", ROOT / "gdata" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GDATA = {name: _script(name) for name in ("make_h5", "merge_h5", "inspect_h5")}
ENTRY = {
    "train": lambda argv: train_main("sr", argv),
    "test": lambda argv: run_test_script("sr", argv),
    "test deraining": lambda argv: run_test_script("deraining", argv),
    "make_h5": lambda argv: run_guarded(GDATA["make_h5"].main, argv),
    "merge_h5": lambda argv: run_guarded(GDATA["merge_h5"].main, argv),
    "inspect_h5": lambda argv: run_guarded(GDATA["inspect_h5"].main, argv),
}


# ----------------------------------------------------------------------------- the assertion
def snapshot(root) -> dict:
    """Every file, folder and link under ``root``: a file's size, modification time and content hash
    (a rewrite with the same bytes still changes the time), a link's target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[path] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):  # its own time changes when a staging folder comes and goes
                out[path] = "dir"
            elif stat.S_ISREG(st.st_mode) and st.st_size < 1 << 30:  # not the sparse 1 TB file
                with open(path, "rb") as f:
                    out[path] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
            else:
                out[path] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def refused(capsys, root, entry: str, argv: list[str], fragments) -> str:
    """Run an entry point that must refuse its input; returns the error line."""
    before = snapshot(root)
    with pytest.raises(SystemExit) as exit_info:
        ENTRY[entry](argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    line = errors[0]
    fragments = (fragments,) if isinstance(fragments, str) else fragments
    assert any(f in line for f in fragments), (fragments, line)
    assert snapshot(root) == before, "something was written or changed"
    return line


# ----------------------------------------------------------------------------- a corpus
def u8(*shape, value=0):
    return np.full(shape, value, np.uint8)


def h5_file(path, **datasets):
    """An .h5 file; each keyword is an array, or a dict of create_dataset arguments (shape, dtype, ...)."""
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if name == "attrs":
                f.attrs.update(value)
            elif isinstance(value, dict):
                f.create_dataset(name, **value)
            elif isinstance(value, np.dtype):  # a named datatype
                f[name] = value
            else:
                f.create_dataset(name, data=value)
    return path


def png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with (almost) no pixel data behind it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


# Bad training files, and what each entry point that reads .h5 files says of them. None: not an
# error for that entry point (merging 1-channel files is fine; only training needs RGB).
def bad_h5(case: str, path):
    data, label = u8(2, 3, 32, 32), u8(2, 3, 128, 128)
    if case == "1 channel":
        return h5_file(path, data=u8(2, 1, 32, 32), label=u8(2, 1, 128, 128))
    if case == "4 channels":
        return h5_file(path, data=u8(2, 4, 32, 32), label=u8(2, 4, 128, 128))
    if case == "declares 10^9 patches":
        return h5_file(path, data=dict(shape=(10**9, 3, 32, 32), dtype=np.uint8, chunks=(64, 3, 32, 32)), label=label)
    if case == "declares 60000x60000 patches":
        return h5_file(path, data=data, label=dict(shape=(2, 3, 60000, 60000), dtype=np.uint8, chunks=(1, 1, 256, 256)))
    if case == "never filled":
        return h5_file(path, data=dict(shape=(2, 3, 32, 32), dtype=np.uint8), label=label)
    if case == "int16":
        return h5_file(path, data=data.astype(np.int16), label=label.astype(np.int16))
    if case == "bool":
        return h5_file(path, data=data.astype(bool), label=label.astype(bool))
    if case == "NaN":
        values = np.zeros((2, 3, 32, 32), np.float32)
        values[1, 2, 3, 4] = np.nan
        return h5_file(path, data=values, label=label.astype(np.float32))
    if case == "not HDF5":
        path.write_text("just text")
        return path
    if case == "truncated":
        h5_file(path, data=u8(64, 3, 32, 32, value=1), label=u8(64, 3, 128, 128, value=1))
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
        return path
    if case == "a folder named .h5":
        path.mkdir()
        return path
    if case == "layout attribute of raw bytes":
        return h5_file(path, data=data, label=label, attrs={"layout": np.bytes_(b"\xff\xfe")})
    # files that point elsewhere: what they point at is beside them, never named *.h5 in their folder
    elsewhere = path.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    if case == "external storage":  # the values of 'data' are the bytes of another file, any file
        (elsewhere / "secret.txt").write_bytes(b"a user's secret\n" * 1000)
        return h5_file(path, data=dict(shape=data.shape, dtype=np.uint8,
                                       external=[(str(elsewhere / "secret.txt"), 0, data.nbytes)]), label=label)
    if case == "external storage of 491 GB on /dev/zero":
        return h5_file(path, data=dict(shape=(10**7, 3, 128, 128), dtype=np.uint8,
                                       external=[("/dev/zero", 0, h5py.h5f.UNLIMITED)]), label=label)
    if case in ("virtual dataset", "external link"):
        h5_file(elsewhere / "other.h5", data=data, label=label)
        with h5py.File(path, "w") as f:
            if case == "external link":
                f["data"] = h5py.ExternalLink(str(elsewhere / "other.h5"), "/data")
            else:
                layout = h5py.VirtualLayout(shape=data.shape, dtype=np.uint8)
                layout[:] = h5py.VirtualSource(str(elsewhere / "other.h5"), "data", shape=data.shape)
                f.create_virtual_dataset("data", layout)
            f["label"] = label
        return path
    links = {"dangling soft link": {"data": h5py.SoftLink("/nowhere")},
             "soft links in a loop": {"data": h5py.SoftLink("/a"), "a": h5py.SoftLink("/data")},
             "soft link to a group": {"data": h5py.SoftLink("/g")},
             "dangling external link": {"data": h5py.ExternalLink(str(elsewhere / "gone.h5"), "/data")}}
    if case in links:
        with h5py.File(path, "w") as f:
            f.create_group("g")["x"] = data
            f.update(links[case])
            f["label"] = label
        return path
    if case == "'data' and 'label' one dataset":  # a hard link: both names lead to the same values
        with h5py.File(path, "w") as f:
            f["data"] = data
            f["label"] = f["data"]
        return path
    if case == "compound dtype":
        return h5_file(path, data=np.zeros(data.shape, dtype=[("a", "u1"), ("b", "f4")]), label=label)
    if case == "patches of 3x0x0":
        return h5_file(path, data=u8(2, 3, 0, 0), label=u8(2, 3, 0, 0))
    if case == "compressed by a filter HDF5 lacks":  # written as a plugin would: its chunks need it
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=data.shape, dtype=np.uint8, chunks=(1, 3, 32, 32), compression=32001,
                                  allow_unknown_filter=True)
            for i in range(len(data)):
                ds.id.write_direct_chunk((i, 0, 0, 0), b"compressed bytes", filter_mask=0)
            f["label"] = label
        return path
    if case == "'data' a named datatype":
        return h5_file(path, data=np.dtype("u1"), label=label)
    if case == "'data' a scalar":
        return h5_file(path, data=np.uint8(5), label=label)
    if case == "scale attribute 2.5":
        return h5_file(path, data=data, label=label, attrs={"scale": 2.5})
    raise ValueError(case)


ELSEWHERE = "a training file must hold its own patches"
SAME_SIDES = "'data' and 'label' are one dataset stored under two names"
H5_CASES = {
    # case: (train, inspect_h5, inspect_h5 --check, merge_h5 --data/--label, merge_h5 --concat, make_h5 --convert)
    "1 channel": ("1 channel(s)", None, "1 channel(s)", None, None, None),
    "4 channels": ("4 channel(s)", None, "4 channel(s)", None, None, None),
    # refused from its header: a scan of its 3 TB (of fill values) would not end, so no clock is needed
    "declares 10^9 patches": ("declares 1000000000 rows", None) + ("declares 1000000000 rows",) * 4,
    "declares 60000x60000 patches": ("far larger than a training patch", None) + ("far larger than",) * 4,
    "never filled": ("never filled", None) + ("never filled",) * 4,
    "int16": ("dtype int16", None) + ("dtype int16",) * 4,
    "bool": ("dtype bool", None) + ("dtype bool",) * 4,
    "NaN": ("NaN", None) + ("NaN",) * 4,
    "not HDF5": ("not a readable HDF5 file",) * 6,
    "truncated": ("x.h5",) * 6,
    "layout attribute of raw bytes": ("unknown layout attribute '\\xff\\xfe'", None) + ("unknown layout",) * 3 + (None,),
    "a folder named .h5": ("x.h5: a folder, not an .h5 file",) * 6,
    # files that point elsewhere: refused by every entry point before a value is read (a scan of
    # /dev/zero would not end either)
    "external storage": (os.path.join("elsewhere", "secret.txt") + " (HDF5 external storage)",) * 6,
    "external storage of 491 GB on /dev/zero": ("keeps its values outside the file, in /dev/zero",) * 6,
    "virtual dataset": ("is a virtual dataset, whose values are those of",) * 6,
    "external link": (f"{os.path.join('elsewhere', 'other.h5')}; {ELSEWHERE}",) * 6,  # names the file it points at
    "dangling external link": (f"{os.path.join('elsewhere', 'gone.h5')}; {ELSEWHERE}",) * 6,
    # links inside the file: a name whose link leads nowhere or round in a loop, a link to a group
    "dangling soft link": ("'data' is a soft link to '/nowhere', which is not in the file",) * 6,
    "soft links in a loop": ("the links lead round in a loop",) * 6,
    "soft link to a group": ("'data' (a soft link to '/g') is a group", None, "'data' is a group",
                             "'data' (a soft link to '/g') is a group", None, None),
    "'data' and 'label' one dataset": (SAME_SIDES, None, SAME_SIDES, "'label' is the dataset given as 'data'",
                                       SAME_SIDES, SAME_SIDES),
    # what the values are: no number, no pixel, or not decodable here
    "compound dtype": ("has dtype [('a', 'u1'), ('b', '<f4')]", None) + ("has dtype [('a', 'u1')",) * 4,
    "patches of 3x0x0": ("has empty patches (3x0x0", None) + ("has empty patches (3x0x0",) * 4,
    "compressed by a filter HDF5 lacks": ("is compressed with HDF5 filter 32001, which this installation cannot "
                                          "decode",) * 6,
    "'data' a named datatype": ("'data' is a named datatype", None, "'data' is a named datatype",
                                "'data' is a named datatype", None, None),
    "'data' a scalar": ("'data' must be N x C x H x W, got shape ()", None,
                        "'data' must be N x C x H x W, got shape ()", "got shape ()", None, None),
    # attributes the checks read: the 'scale' inspect_h5 --check compares with
    "scale attribute 2.5": (None, None, "the 'scale' attribute 2.5 is not a whole number", None, None, None),
}
H5_ENTRIES = ("train", "inspect_h5", "inspect_h5 --check", "merge_h5", "merge_h5 --concat", "make_h5 --convert")


@pytest.mark.parametrize("case", H5_CASES)
def test_bad_h5_files_at_every_entry_point(tmp_path, capsys, case):
    """Each entry point that reads .h5 files refuses the file in one line, or (None) reads it without
    a traceback: merging and converting take 1-channel patches, only training needs RGB."""
    path = bad_h5(case, tmp_path / "x.h5")
    out = tmp_path / "out"
    # train and inspect get the folder, as users give them: its *.h5 files are x.h5
    argvs = {"train": ["--trainset", str(tmp_path), "--out", str(out), "--max-steps", "1", "--batchSize", "2",
                       "--device", "cpu", *SMALL],
             "inspect_h5": [str(tmp_path), "--quiet"],
             "inspect_h5 --check": [str(tmp_path), "--check", "--quiet"],
             "merge_h5": ["--data", str(path), "--label", str(path), "--out", str(out / "m.h5"), "--quiet"],
             "merge_h5 --concat": ["--concat", str(path), "--out", str(out / "m.h5"), "--quiet"],
             "make_h5 --convert": ["--convert", str(path), "--out", str(out / "c.h5"), "--layout", "ours", "--quiet"]}
    for entry, fragment in zip(H5_ENTRIES, H5_CASES[case]):
        script = entry.split()[0]
        if fragment is not None:
            line = refused(capsys, tmp_path, script, argvs[entry], fragment)
            assert "x.h5" in line, line
            if "external link" in case:  # the link's own target too
                assert "'data' is an external link to '/data' in " in line, line
        elif entry != "train":  # (a training run takes seconds: train's acceptance is tested elsewhere)
            ENTRY[script](argvs[entry])
            assert "Traceback" not in capsys.readouterr().err, entry
            shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------- flag values
def flag_case(tmp_path, entry: str, extra: list[str]) -> list[str]:
    data = tmp_path / "d.h5"
    if not data.exists():
        sr_trainset(data)
        generator_checkpoint(tmp_path / "g.pt")
        (tmp_path / "imgs").mkdir()
        cv2.imwrite(str(tmp_path / "imgs" / "a.png"), u8(8, 8, 3))
    base = {"train": ["--trainset", str(data), "--out", str(tmp_path / "out"), "--max-steps", "1", "--batchSize",
                      "2", "--device", "cpu", *SMALL],
            "test": ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "imgs"), "--device", "cpu",
                     "--no-lpips", "--save", str(tmp_path / "res")],
            "make_h5": ["--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"), "--quiet"],
            "merge_h5": ["--data", str(data), "--label", str(data), "--out", str(tmp_path / "o.h5"), "--quiet"],
            "inspect_h5": [str(data), "--check", "--quiet"]}[entry]
    return base + extra


FLAG_CASES = [
    ("train", ["--lr", "nan"], "--lr"), ("train", ["--lr", "-1"], "--lr"), ("train", ["--lr", "inf"], "--lr"),
    ("train", ["--lr", "abc"], "--lr"), ("train", ["--threads", "-1"], "--threads"),
    ("train", ["--save-every", "-1"], "--save-every"), ("train", ["--dc-weight", "nan"], "--dc-weight"),
    ("train", ["--seed", "-3"], "--seed"), ("train", ["--seed", str(2**70)], "--seed"),
    ("train", ["--batchSize", "0"], "--batchSize"), ("train", ["--val-steps", "-1"], "--val-steps"),
    ("train", ["--name", "../../x"], "--name"), ("train", ["--name", "a/b"], "--name"),
    ("train", ["--name", ".."], "--name"), ("train", ["--sigma", "10", "10.0000001"], "sigma-10"),
    ("train", ["--sigma", "10", "10"], "given twice"), ("train", ["--sigma", "nan"], "--sigma"),
    ("train", ["--loss", "l3"], "--loss"), ("train", ["--batchSize", "4"], "fewer than one batch"),
    ("train", ["--no-such-flag"], "--no-such-flag"),
    # a generator narrower than its channel attention's reduction fails in its first forward pass
    ("train", ["--gen-width", "3"], "--gen-width: must be at least 4, got 3: the generator's channel attention"),
    ("train", ["--gen-width", "1"], "--gen-width: must be at least 4"),
    # values that float32, in which training computes, holds as 0 or as a subnormal number
    ("train", ["--lr", "1e-320"], "--lr: the value 1e-320 is too small for float32 training arithmetic (float32 "
                                  "holds it as 0); give at least 1.175e-38"),
    ("train", ["--lr", "1e-39"], "holds it as a subnormal number"),
    ("train", ["--sigma", "1e-40"], "--sigma: sigma 1e-40 is too small for float32"),
    ("train", ["--dc-weight", "1e-45"], "give 0 or at least 1.175e-38"),
    ("train", ["--ema", "1e-320"], "--ema: the decay 1e-320 is too small for float32"),
    ("test", ["--tile-overlap", "-40"], "--tile-overlap"), ("test", ["--tile", "0"], "--tile"),
    ("test", ["--tile", "3"], "must be at least 32 pixels"),
    ("test", ["--side-by-side", "-1"], "--side-by-side"),
    ("make_h5", ["--seed", "-1"], "--seed"), ("make_h5", ["--patch", "0"], "--patch"),
    ("merge_h5", ["--batch", "0"], "--batch"), ("inspect_h5", ["--scale", "-2"], "--scale"),
]


@pytest.mark.parametrize("entry,extra,fragment", FLAG_CASES, ids=[" ".join([e, *x]) for e, x, _ in FLAG_CASES])
def test_bad_flag_values(tmp_path, capsys, entry, extra, fragment):
    refused(capsys, tmp_path, entry, flag_case(tmp_path, entry, extra), fragment)


# ----------------------------------------------------------------------------- images
def bad_image(case: str, folder):
    folder.mkdir()
    if case == "undecodable name, corrupt content":
        path = folder / f"{NON_UTF8}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        return "\\xff\\xfe.png: not a readable image"
    if case == "empty file":
        (folder / "a.png").write_bytes(b"")
        return "a.png: not a readable image (an empty file)"
    if case == "header declares 60000x60000":
        (folder / "big.png").write_bytes(png(60000, 60000))
        return ("big.png: a 60000x60000 image needs about", "big.png: not a readable image")
    if case == "truncated PNG":
        ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        (folder / "cut.png").write_bytes(encoded.tobytes()[:200])
        return "cut.png: not a readable image (it ends early, after 200 bytes: cut off while it was copied or written?)"
    if case == "float TIFF with NaN":
        ok, encoded = cv2.imencode(".tiff", np.full((8, 8, 3), np.nan, np.float32))
        (folder / "nan.tiff").write_bytes(encoded.tobytes())
        return "nan.tiff: 192 of its 192 float values are NaN or infinite"
    raise ValueError(case)


IMAGE_CASES = ["undecodable name, corrupt content", "empty file", "header declares 60000x60000", "truncated PNG",
               "float TIFF with NaN"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_images_in_test_and_make_h5(tmp_path, capsys, case):
    fragment = bad_image(case, tmp_path / "imgs")
    generator_checkpoint(tmp_path / "g.pt")
    refused(capsys, tmp_path, "test", ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "imgs"),
                                       "--device", "cpu", "--no-lpips", "--save", str(tmp_path / "res")], fragment)
    refused(capsys, tmp_path, "make_h5", ["--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"),
                                          "--patch", "8", "--stride", "8", "--quiet"], fragment)


# ----------------------------------------------------------------------------- checkpoints
def bad_checkpoint(case: str, path):
    g = tiny_generator()
    arch, state = dict(g.arch), g.state_dict()
    if case == "no generator key":
        torch.save({"format": FORMAT, "version": 1, "arch": {"generator": arch}}, path)
        return "no generator weights"
    if case == "unknown architecture setting":
        generator_checkpoint(path, arch={"generator": {**arch, "depth": 3}})
        return "unknown setting 'depth'"
    if case == "negative architecture value":
        generator_checkpoint(path, arch={"generator": {**arch, "width": -8}})
        return "width = -8"
    if case == "architecture value as text":
        generator_checkpoint(path, arch={"generator": {**arch, "width": "8"}})
        return "width = '8'"
    if case == "architecture against its weights":
        generator_checkpoint(path, arch={"generator": {**arch, "width": 4096}})
        return "shape mismatch between its recorded arch and its weights (width 4096 vs 8)"
    if case == "string version":
        torch.save({"format": FORMAT, "version": "2", "arch": {"generator": arch}, "generator": state}, path)
        return "version '2' is not a whole number"
    if case == "truncated":
        generator_checkpoint(path)
        path.write_bytes(path.read_bytes()[:3000])
        return "not a checkpoint, or a damaged one"
    if case == "NaN weights":
        state = {k: v.clone() for k, v in state.items()}
        state["shallow_feat1.0.weight"][0, 0, 0, 0] = float("nan")
        save_checkpoint(path, {"arch": {"generator": arch}, "generator": state})
        return "NaN or infinite values"
    if case == "a list":
        torch.save([1, 2, 3], path)
        return "not an SOT checkpoint"
    if case == "config of the wrong type":
        generator_checkpoint(path, config=[1, 2])
        return "'config' is list"
    if case == "even kernel":
        even = Generator(width=8, increment=8, kernel_size=4)
        save_checkpoint(path, {"generator": even.state_dict()})
        return "shapes no SOT generator has"
    if case == "a folder":
        path.mkdir()
        return "a folder, not a checkpoint file"
    # tensors the networks cannot take as they are: refused by name, not a NotImplementedError traceback
    layouts = {"sparse weights": lambda t: t.to_sparse(), "sparse CSR weights": lambda t: t.flatten(1).to_sparse_csr(),
               "meta weights": lambda t: torch.empty_like(t, device="meta"),
               "quantised weights": lambda t: torch.quantize_per_tensor(t, 0.01, 0, torch.qint8),
               "complex weights": lambda t: t.to(torch.complex64),
               "int64 weights": lambda t: (t * 1000).to(torch.int64)}  # cast to float without a word, before
    if case in layouts:
        state = {k: v.clone() for k, v in state.items()}
        with warnings.catch_warnings():  # torch's remarks on sparse CSR (beta) and quantisation (deprecated)
            warnings.simplefilter("ignore")
            state["shallow_feat1.0.weight"] = layouts[case](state["shallow_feat1.0.weight"])
        save_checkpoint(path, {"arch": {"generator": arch}, "generator": state})
        return ("the checkpoint's tensor generator.shallow_feat1.0.weight is "
                + {"sparse weights": "a sparse_coo tensor, not a dense one",
                   "sparse CSR weights": "a sparse_csr tensor, not a dense one",
                   "meta weights": "a meta tensor", "quantised weights": "a quantised tensor (qint8)",
                   "complex weights": "of dtype complex64, not floating-point",
                   "int64 weights": "of dtype int64, not floating-point"}[case])
    if case == "expanded weights":  # each tensor one stored value: a 322 KB file asked for a 38 GiB generator
        one_value = {k: v.flatten()[:1].clone().reshape((1,) * v.dim()).expand(v.shape) for k, v in state.items()}
        save_checkpoint(path, {"arch": {"generator": arch}, "generator": one_value})
        return ("the checkpoint's tensor generator.shallow_feat1.0.weight is of shape (8, 3, 3, 3) over a storage of "
                "4 bytes (one value repeated")
    if case == "a sparse tensor beside the weights":
        generator_checkpoint(path, rng={"torch": torch.eye(3).to_sparse()})
        return "the checkpoint's tensor rng.torch is a sparse_coo tensor"
    if case == "float64 weights beyond float32":
        state = {k: v.double() for k, v in state.items()}
        state["shallow_feat1.0.weight"][0, 0, 0, 0] = 1e300  # finite as float64, infinite once loaded
        save_checkpoint(path, {"arch": {"generator": arch}, "generator": state})
        return "the generator's weights hold NaN or infinite values as float32 (1 tensor(s), e.g. shallow_feat1.0.weight)"
    # the checkpoint's own fields, which test.py's report, --resume and --pretrained read
    fields = {"task that is not text": ({"task": 3}, "the checkpoint's 'task' is 3, not text"),
              "NaN sigma": ({"sigma": float("nan")}, "the checkpoint's 'sigma' is nan, not a finite number"),
              "negative step": ({"step": -1}, "the checkpoint's 'step' is -1, not a whole number, 0 or more"),
              "step as text": ({"step": "7"}, "the checkpoint's 'step' is '7'"),
              "best PSNR as text": ({"best_psnr": "{{DATA}}"}, "the checkpoint's 'best_psnr' is '{{DATA}}'"),
              "align_corners as text": ({"config": {"align_corners": "no"}},
                                        "the checkpoint's config's 'align_corners' is 'no', not true or false"),
              "generator average that is not weights": ({"generator_ema": [1]}, "'generator_ema' is list, not weights")}
    if case in fields:
        generator_checkpoint(path, **fields[case][0])
        return fields[case][1]
    if case in ("code in the pickle", "code in a protocol-2 pickle"):
        protocol = 2 if "protocol-2" in case else pickle.DEFAULT_PROTOCOL
        payload = ShellPayload(path.parent / "payload-ran")
        path.write_bytes(pickle.dumps({"format": FORMAT, "generator": payload}, protocol=protocol))
        # protocol 2 shows the code's name to torch's safe loader; later protocols stop it earlier
        return ("it pickles code that is not ours; nothing in it was run" if protocol == 2 else
                "torch's safe loader refuses its pickle: Unsupported operand")
    raise ValueError(case)


CHECKPOINT_CASES = ["no generator key", "unknown architecture setting", "negative architecture value",
                    "architecture value as text", "architecture against its weights", "string version", "truncated",
                    "NaN weights", "a list", "config of the wrong type", "even kernel", "a folder",
                    "code in the pickle", "code in a protocol-2 pickle", "sparse weights", "sparse CSR weights",
                    "meta weights", "quantised weights", "complex weights", "int64 weights", "expanded weights",
                    "a sparse tensor beside the weights", "float64 weights beyond float32", "task that is not text",
                    "NaN sigma", "negative step", "step as text", "best PSNR as text", "align_corners as text",
                    "generator average that is not weights"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_damaged_and_crafted_checkpoints(tmp_path, capsys, case):
    ckpt = tmp_path / "c.pt"
    fragment = bad_checkpoint(case, ckpt)
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), u8(8, 8, 3))
    sr_trainset(tmp_path / "d.h5")
    refused(capsys, tmp_path, "test", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "imgs"), "--device",
                                       "cpu", "--no-lpips", "--save", str(tmp_path / "res")], fragment)
    if case not in ("architecture against its weights", "config of the wrong type"):  # --pretrained takes weights only
        refused(capsys, tmp_path, "train", ["--trainset", str(tmp_path / "d.h5"), "--pretrained", str(ckpt), "--out",
                                            str(tmp_path / "out"), "--max-steps", "1", "--batchSize", "2",
                                            "--device", "cpu", "--gen-width", "8", "--gen-increment", "8",
                                            "--critic-width", "8", "--no-tensorboard"], fragment)
    assert not (tmp_path / "payload-ran").exists()


def test_a_checkpoints_network_must_fit_in_memory_before_it_is_built(tmp_path, capsys, monkeypatch):
    """A checkpoint's widths are checked against memory as training checks its own, before the network is
    allocated: a wide one was built whatever the memory, and under a memory limit the system killed
    test.py without a word. Here 3 MiB are available and the 64-wide generator's weights take 5.5 MiB."""
    import common.training.checkpoint as checkpoint_module

    torch.manual_seed(0)
    ckpt = generator_checkpoint(tmp_path / "wide.pt", Generator(width=64, increment=8))
    write_photos(tmp_path / "imgs", ("a.png",))
    sr_trainset(tmp_path / "d.h5")
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda: 3 << 20, raising=False)
    fragment = (f"wide.pt: the checkpoint's generator is 64 wide (increment 8): the networks (generator 1,434,721 "
                "parameters) need about 5.5 MiB for their float32 weights alone; 3.0 MiB is available on cpu")
    refused(capsys, tmp_path, "test", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "imgs"), "--device", "cpu",
                                       "--no-lpips", "--save", str(tmp_path / "res")], fragment)
    # --pretrained too (--supervised: no critic, so that training's own 8-wide networks fit in the 3 MiB)
    refused(capsys, tmp_path, "train", ["--trainset", str(tmp_path / "d.h5"), "--pretrained", str(ckpt), "--supervised",
                                        "--out", str(tmp_path / "out"), "--max-steps", "1", "--batchSize", "2",
                                        "--device", "cpu", *SMALL], fragment)


# ----------------------------------------------------------------------------- where results go
def read_only(monkeypatch):
    """A read-only mount, as the probe file that checks an output folder meets it."""
    import tempfile

    mkstemp = tempfile.mkstemp

    def refuse(*args, prefix=None, **kwargs):
        if prefix and "write-test" in prefix:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*args, prefix=prefix, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


OUTPUT_CASES = ["test --save at a file", "test --save below a file", "test --save on a read-only mount",
                "make_h5 --out on a read-only mount", "make_h5 --out at a folder", "make_h5 --out below a file",
                "train --out on a read-only mount", "train --out below a file"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_that_cannot_be_written(tmp_path, capsys, monkeypatch, case):
    generator_checkpoint(tmp_path / "g.pt")
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), u8(16, 16, 3))
    sr_trainset(tmp_path / "d.h5")
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "folder.h5").mkdir()
    entry, flag, where = case.split(" ", 2)
    target = {"at a file": tmp_path / "a-file", "below a file": tmp_path / "a-file" / "sub",
              "at a folder": tmp_path / "folder.h5", "on a read-only mount": tmp_path / "ro"}[where]
    if where == "on a read-only mount":
        read_only(monkeypatch)
    if entry == "make_h5" and where != "at a folder":
        target = target / "o.h5"
    argv = {"test": ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "imgs"), "--device", "cpu",
                     "--no-lpips", "--save", str(target)],
            "make_h5": ["--input", str(tmp_path / "imgs"), "--out", str(target), "--patch", "8", "--quiet"],
            "train": ["--trainset", str(tmp_path / "d.h5"), "--out", str(target), "--max-steps", "1",
                      "--batchSize", "2", "--device", "cpu", *SMALL]}[entry]
    fragment = {"at a file": "is a file", "below a file": "is a file", "at a folder": "is a folder",
                "on a read-only mount": "Read-only file system"}[where]
    refused(capsys, tmp_path, entry, argv, fragment)
    assert (tmp_path / "a-file").read_text() == "keep me"


# ----------------------------------------------------------------------------- gdata sources
@pytest.mark.parametrize("dtype", ["int16", "bool", "float NaN", "float out of range"])
def test_merge_and_convert_refuse_sources_they_cannot_scale(tmp_path, capsys, dtype):
    """int16 or bool patches have no known scale (255? 65535? 1?): refused, not guessed."""
    label = u8(4, 3, 16, 16, value=7)
    if dtype in ("int16", "bool"):
        data = u8(4, 3, 16, 16, value=1).astype(dtype)
        fragment = f"dtype {dtype}"
    else:
        data = np.full((4, 3, 16, 16), np.nan if dtype == "float NaN" else 3.0, np.float32)
        fragment = "NaN" if dtype == "float NaN" else "values in [3, 3]"
    h5_file(tmp_path / "data.h5", data=data)
    h5_file(tmp_path / "label.h5", label=label)
    h5_file(tmp_path / "both.h5", data=data, label=label, attrs={"layout": "NCHW"})
    out = str(tmp_path / "out.h5")
    refused(capsys, tmp_path, "merge_h5", ["--data", str(tmp_path / "data.h5"), "--label", str(tmp_path / "label.h5"),
                                           "--out", out, "--quiet"], fragment)
    refused(capsys, tmp_path, "merge_h5", ["--concat", str(tmp_path / "both.h5"), str(tmp_path / "both.h5"),
                                           "--out", out, "--quiet"], fragment)
    refused(capsys, tmp_path, "make_h5", ["--convert", str(tmp_path / "both.h5"), "--out", out, "--quiet"], fragment)


# ----------------------------------------------------------------------------- run folders
def test_damaged_run_files_are_refused_before_anything_is_written(tmp_path, capsys):
    sr_trainset(tmp_path / "d.h5")
    run = tmp_path / "out" / "sr" / "r"
    (run / "sigma-10").mkdir(parents=True)
    (run / "run.json").write_text("{not json")
    resume = ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "out"), "--device", "cpu"]
    refused(capsys, tmp_path, "train", resume, "run.json: cannot be read as JSON")
    (run / "run.json").write_text(json.dumps({"trainset": str(tmp_path / "d.h5"), "sigma": [10], "batchSize": 2,
                                              "gen_width": 8, "gen_increment": 8, "critic_width": 8,
                                              "no_tensorboard": True}))
    (run / "sigma-10" / "state.json").write_text(json.dumps({"checkpoint": "../../../../etc/passwd", "step": 1}))
    refused(capsys, tmp_path, "train", resume, "state.json: names no checkpoint of this folder")
    (run / "sigma-10" / "state.json").write_text(json.dumps({"checkpoint": "last.pt", "step": "many"}))
    refused(capsys, tmp_path, "train", resume, "state.json: its step or epoch is not a whole number")
    (run / "sigma-10" / "state.json").write_text(json.dumps({"checkpoint": "last.pt", "step": -1}))
    refused(capsys, tmp_path, "train", resume, "state.json: its step or epoch is not a whole number (0 or more)")
    # "no" is true to Python: the sigma would be skipped as finished
    (run / "sigma-10" / "state.json").write_text(json.dumps({"checkpoint": "last.pt", "step": 1, "finished": "no"}))
    refused(capsys, tmp_path, "train", resume, "state.json: its 'finished' is 'no', not true or false")


def test_lines_of_a_metrics_log_that_are_not_records_are_dropped_with_a_note(tmp_path, capsys):
    """On resume the log is cut back to the checkpoint's step: a line that decodes to something other than
    a record (a list, a step that is text) was a TypeError traceback there; it is dropped, and said so."""
    from common.training.run_folder import MetricsLog, read_metrics

    log = tmp_path / "metrics.jsonl"
    lines = ['{"kind": "train", "step": 1}', "[1, 2]", '{"kind": "train", "step": "x"}', '"text"',
             '{"kind": "train", "step": 2}', '{"kind": "train", "step": 3}', '{"kind": "tr']  # the last: cut short
    log.write_text("\n".join(lines) + "\n")
    assert [r["step"] for r in read_metrics(log)] == [1, 2, 3]  # what the training report draws
    MetricsLog(log, tensorboard=False, resume_step=2).close()
    assert log.read_text().splitlines() == [lines[0], lines[4]]
    assert "metrics.jsonl: dropped 3 line(s) that are not metrics records" in capsys.readouterr().err


# ----------------------------------------------------------------------------- run.json, field by field
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One run for every case that edits its run.json or resumes from an edited checkpoint: a refused
    resume writes nothing (``refused`` asserts it), and each case puts back what it changed."""
    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    sr_trainset(root / "data" / "a.h5", n=4)
    with _no_exit():
        train_main("sr", tiny_run(root, "r"))
    return root, root / "out" / "sr" / "r"


def _wrong_kinds(value) -> list:
    """Values of another JSON kind than a field's valid ``value``: text for a number, a number for text,
    true where a number belongs (Python's bool is an int), tables and lists where one value belongs."""
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, int):
        return [str(value), 1.5, True, {"n": value}]
    if isinstance(value, float):
        return [str(value), True, [value]]
    if isinstance(value, str):
        return [123, [value], False]
    if isinstance(value, list):
        return [str(value[0]), [], [True], {"10": 1}]
    return [[1], {"a": 1}]  # null: a field that may be absent takes one value of its kind, never these


def _run_json_cases() -> list:
    from common.training.config import Resolved, RunConfig, run_record
    from common.tasks import TASKS

    config = RunConfig.for_task(TASKS["sr"], **dict(zip(("seed", "max_steps", "name"), (1, 1, "r"))))
    record = json.loads(json.dumps(run_record(config, Resolved(seed=1, device="cpu", precision="fp32",
                                                                loader_workers=0))))  # as run.json holds it
    cases = [("config", key, bad) for key, value in record["config"].items() for bad in _wrong_kinds(value)]
    return cases + [
        # out of range, not in choices, not finite, null where a value belongs: as the command line refuses them
        ("config", "batch_size", 0), ("config", "epochs", -3), ("config", "lr", -1), ("config", "lr", 0),
        ("config", "lr", float("nan")), ("config", "lr", float("inf")), ("config", "lr", 1e-320), ("config", "lr", 1e31),
        ("config", "sigma", [float("nan")]), ("config", "sigma", [-1]), ("config", "sigma", [1e-40]),
        ("config", "sigma", None), ("config", "cost", "sot-l7"), ("config", "cost", None), ("config", "layout", "nchw"),
        ("config", "gen_width", 3), ("config", "gen_increment", 0), ("config", "critic_width", 0),
        ("config", "seed", 2**32), ("config", "seed", -1), ("config", "ema_decay", 1.0), ("config", "ema_decay", -0.5),
        ("config", "dc_weight", -1), ("config", "dc_weight", float("inf")), ("config", "critic_warmup_steps", -1),
        ("config", "generator_init", "zero"), ("config", "critic_init", "xavier"), ("config", "val_every_epochs", 0),
        ("config", "val_every_steps", -1), ("config", "save_every_steps", -1), ("config", "log_every_steps", 0),
        ("config", "max_nonfinite", 0), ("config", "loader_workers", -1), ("config", "name", "../x"),
        ("config", "name", ""), ("config", "trainset", None), ("config", "tensorboard", None),
        ("config", "cuda_graphs", "maybe"), ("config", "device", "tpu"), ("config", "precision", "fp16"),
        ("resolved", "seed", "abc"), ("resolved", "seed", -1), ("resolved", "seed", True), ("resolved", "seed", 2.5),
        ("resolved", "trainset_files", "a.h5"), ("resolved", "trainset_files", [{"file": [1]}]),
        ("resolved", "trainset_files", [{"file": "a.h5", "bytes": -1, "data": 4, "label": 4}]),
        ("resolved", "trainset_files", [{"file": "a.h5", "bytes": 10, "data": "4", "label": 4}]),
        # run.json before version 2: train.py's flat namespace, its own names
        ("legacy", "nEpochs", "200"), ("legacy", "batchSize", 0), ("legacy", "loss", "sot-l7"),
        ("legacy", "no_tensorboard", "yes"), ("legacy", "seed", "abc"), ("legacy", "trainset_files", [3])]


RUN_JSON_CASES = _run_json_cases()


@pytest.mark.parametrize("block,key,value", RUN_JSON_CASES,
                         ids=[f"{b}.{k}={json.dumps(v)}" for b, k, v in RUN_JSON_CASES])
def test_a_damaged_or_edited_run_json_is_refused_field_by_field(trained_run, capsys, block, key, value):
    """Every field, with the command line's rules (one validator for both): a value of the wrong kind,
    out of range, not among the choices or not finite was a TypeError, ZeroDivisionError or ValueError
    traceback, several after run.json had been rewritten, or a run that went on with it."""
    root, run = trained_run
    original = (run / "run.json").read_text()
    record = json.loads(original)
    if block == "legacy":  # as test_config's legacy case: the flat namespace with the run's values
        record = {"trainset": record["config"]["trainset"], "sigma": [10.0], "batchSize": 2, "nEpochs": 200,
                  "loss": "sot-l0.5", "gen_width": 8, "gen_increment": 8, "critic_width": 8, "no_tensorboard": True,
                  "seed": 1, "trainset_files": record["resolved"]["trainset_files"], key: value}
        where = key
    else:
        record[block][key] = value
        where = f"{block}.{key}"
    (run / "run.json").write_text(json.dumps(record))
    try:
        line = refused(capsys, root, "train", ["--resume", "auto", "--name", "r", "--out", str(root / "out"),
                                               "--max-steps", "2"], f"run.json: {where}")
    finally:
        (run / "run.json").write_text(original)
    entry = value[0] if key == "trainset_files" and isinstance(value, list) else value  # the entry is named
    assert json.dumps(entry)[:40] in line and "the run folder is damaged or was edited" in line, line


RUN_JSON_FORMATS = {  # an edit of run.json's own tags, and what the one line says
    "no format": (lambda r: {k: v for k, v in r.items() if k != "format"}, "it has no format, not \"sot-run\""),
    "another format": (lambda r: {**r, "format": "xyz"}, 'its format is "xyz", not "sot-run"'),
    "no tags, no settings": (lambda r: {}, "it has no format"),
    "a newer version": (lambda r: {**r, "version": 99}, "its version 99 is newer than the run records this code reads"),
    "version as text": (lambda r: {**r, "version": "2"}, 'version is "2", not 2'),
    "no version": (lambda r: {k: v for k, v in r.items() if k != "version"}, "version is null, not 2")}


@pytest.mark.parametrize("case", RUN_JSON_FORMATS)
def test_a_run_json_of_no_known_format_or_a_newer_version_is_refused(trained_run, capsys, case):
    """A run.json without "format" (or another one) was read as an old-style file whose every setting
    is the default: a new sigma-100, width-80 model started inside the run and run.json was rewritten,
    or a false error about --trainset or --batchSize. A newer version was accepted and rewritten as 2."""
    root, run = trained_run
    original = (run / "run.json").read_text()
    edit, fragment = RUN_JSON_FORMATS[case]
    (run / "run.json").write_text(json.dumps(edit(json.loads(original))))
    try:
        line = refused(capsys, root, "train", ["--resume", "auto", "--name", "r", "--out", str(root / "out"),
                                               "--max-steps", "2"], "run.json: ")
    finally:
        (run / "run.json").write_text(original)
    assert fragment in line, line


# ----------------------------------------------------------------------------- what a resume reads from a checkpoint
def _edited(ckpt: dict, case: str) -> tuple[dict, str]:
    """A training checkpoint edited as ``case`` says, and what the one error line must hold."""
    if case == "NaN best PSNR":
        return {**ckpt, "best_psnr": float("nan")}, "the checkpoint's 'best_psnr' is nan, not a finite number"
    if case == "skipped steps as text":
        return {**ckpt, "skipped_steps": "2"}, "the checkpoint's 'skipped_steps' is '2'"
    if case == "no step":
        return {k: v for k, v in ckpt.items() if k != "step"}, "this checkpoint cannot resume a run (no step)"
    if case == "NaN in the optimiser's running averages":
        optim = {**ckpt["optim_g"], "state": {i: {k: (v * float("nan") if k == "square_avg" else v)
                                                  for k, v in st.items()} for i, st in ckpt["optim_g"]["state"].items()}}
        return {**ckpt, "optim_g": optim}, "the checkpoint's optim_g holds NaN or infinite values; it is damaged"
    if case == "int64 optimiser state":  # RMSprop's step would fail on it mid-training
        optim = {**ckpt["optim_d"], "state": {i: {k: (v.to(torch.int64) if k == "square_avg" else v)
                                                  for k, v in st.items()} for i, st in ckpt["optim_d"]["state"].items()}}
        return {**ckpt, "optim_d": optim}, ("the checkpoint's tensor optim_d.state.0.square_avg is of dtype int64, not "
                                            "floating-point")
    if case == "another sigma than its folder's":  # the sweep would pass it over and resume from the newest
        return {**ckpt, "sigma": 30.0}, "its sigma 30 is not its folder's (sigma-10)"
    # a position no run can reach (the run: 2 batches an epoch, 200 epochs; the checkpoint at epoch 1, batch 1, step 1)
    if case == "epoch and step of 1e30":  # the run counted as finished: "999...9 full epoch(s)"
        big = 10**30
        return {**ckpt, "epoch": big, "step": big}, _unreached(big, 1, big, f"epoch {big} is past the run's 200 epochs")
    if case == "step of 1e30":
        return {**ckpt, "step": 10**30}, _unreached(1, 1, 10**30, f"step {10**30} is more than 0 epoch(s) of 2 batches")
    if case == "batch past the epoch's end":  # skipped silently to the next epoch
        return {**ckpt, "batch_in_epoch": 10**9}, _unreached(1, 10**9, 1, "1000000000 batches of its epoch done, "
                                                                       "where an epoch has 2")
    if case == "fewer steps than its batches":
        return {**ckpt, "epoch": 3}, _unreached(3, 1, 1, "step 1 is fewer than its 2 epoch(s) before")
    raise ValueError(case)


def _unreached(epoch, batch, step, why: str) -> str:
    return (f"the checkpoint's position (epoch {epoch}, batch {batch}, step {step}) is not one its run can have "
            f"reached: {why}")


RESUME_CASES = ["NaN best PSNR", "skipped steps as text", "no step", "NaN in the optimiser's running averages",
                "int64 optimiser state", "another sigma than its folder's", "epoch and step of 1e30", "step of 1e30",
                "batch past the epoch's end", "fewer steps than its batches"]


@pytest.mark.parametrize("case", RESUME_CASES)
def test_a_resume_refuses_a_checkpoint_whose_fields_are_not_what_training_wrote(trained_run, capsys, case):
    root, run = trained_run
    edited = run / "sigma-10" / "edited.pt"
    ckpt, fragment = _edited(torch.load(run / "sigma-10" / "last.pt", weights_only=True), case)
    torch.save(ckpt, edited)
    try:
        refused(capsys, root, "train", ["--resume", str(edited), "--max-steps", "2"], f"edited.pt: {fragment}")
    finally:
        edited.unlink()


@pytest.mark.parametrize("flag", ["--name", "--out"])
def test_resume_from_a_checkpoint_refuses_a_name_or_out_of_another_run(trained_run, capsys, flag):
    """--resume CKPT continues the checkpoint's own run: another --name (or --out) was ignored without a word."""
    root, run = trained_run
    ckpt = run / "sigma-10" / "last.pt"
    other = "other" if flag == "--name" else str(root / "other")
    refused(capsys, root, "train", ["--resume", str(ckpt), flag, other, "--max-steps", "2"],
            f"{flag} {other}: --resume {ckpt} continues that checkpoint's own run, {run}; leave out {flag}")


# ----------------------------------------------------------------------------- a run that fails in its first step
@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """Whatever stops it (here the first training step fails), a new run leaves nothing of itself: no
    run folder with a run.json that --resume auto would take for the newest run, no out/sr/ made for it.
    A run that saved a checkpoint keeps its folder."""
    import common.training.loop as loop

    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    real_step, calls = loop.train_step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise InputError("the training file went away")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", failing_step)
    fail_at = 1
    refused(capsys, tmp_path, "train", tiny_run(tmp_path, "first"), "the training file went away")
    assert not (tmp_path / "out").exists()
    # with a checkpoint saved (--save-every 1), the folder stays: it holds a run to resume
    calls.clear()
    fail_at = 2
    with pytest.raises(SystemExit):
        train_main("sr", tiny_run(tmp_path, "second", steps=3))
    assert (tmp_path / "out" / "sr" / "second" / "sigma-10" / "step-00000001.pt").is_file()


# ----------------------------------------------------------------------------- outputs that are not finite
def overflowing_checkpoint(path, task="deraining"):
    """Finite weights (1e30 each, float32 holds them) whose arithmetic overflows: the output is NaN/inf."""
    g = tiny_generator()
    with torch.no_grad():
        for p in g.parameters():
            p.fill_(1e30)
    return generator_checkpoint(path, g, task=task, config={"task": task})


def test_an_output_that_is_not_finite_stops_test_py(tmp_path, capsys):
    """Written as black PNGs and scored at 6 dB, exit 0, before: one line names the checkpoint and the
    image, and nothing is written."""
    write_photos(tmp_path / "photos")
    write_photos(tmp_path / "gt")
    ckpt = overflowing_checkpoint(tmp_path / "big.pt")
    refused(capsys, tmp_path, "test deraining", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"),
                                                 "--gt", str(tmp_path / "gt"), "--device", "cpu", "--no-lpips",
                                                 "--save", str(tmp_path / "res")],
            f"{ckpt}: its output on {tmp_path / 'photos' / 'a.png'} holds NaN or infinite values")


def test_an_output_that_is_not_finite_stops_the_demos_scoring(tmp_path):
    from common.demo import demo_paths, score_wider
    from common.evaluation.evaluate import NonFiniteOutput
    from common.tasks import TASKS

    paths = demo_paths(tmp_path / "demo-data")
    write_photos(paths["wider_input"])
    write_photos(paths["wider_gt"])
    ckpt = overflowing_checkpoint(tmp_path / "best.pt")
    with pytest.raises(NonFiniteOutput, match=f"{ckpt}: its output on .*a.png holds NaN or infinite values"):
        score_wider(TASKS["deraining"], ckpt, tmp_path / "demo-data", torch.device("cpu"))


@pytest.mark.slow
def test_an_output_that_is_not_finite_stops_validation(tmp_path, capsys):
    """A generator started from finite weights that overflow: validation stops the run (status 3, as a
    diverged one) instead of keeping a black best.pt."""
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    write_photos(tmp_path / "val" / "in", side=8)
    write_photos(tmp_path / "val" / "gt", side=32)
    ckpt = overflowing_checkpoint(tmp_path / "big.pt", task="sr")
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", [*tiny_run(tmp_path, "v", steps=2), "--pretrained", str(ckpt), "--val-input",
                          str(tmp_path / "val" / "in"), "--val-gt", str(tmp_path / "val" / "gt"), "--val-steps", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err
    assert "sigma 10 step 1: the generator's output on the validation image " in err
    assert "holds NaN or infinite values: training diverged" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "sr" / "v" / "sigma-10" / "best.pt").exists()


def tiny_run(tmp_path, name, *extra, steps=1):
    return ["--trainset", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--name", name, "--sigma", "10",
            "--batchSize", "2", "--max-steps", str(steps), "--seed", "1", "--save-every", "1", "--device", "cpu",
            *SMALL, *extra]


def test_a_run_folder_is_locked_for_the_life_of_its_run(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5")
    run = tmp_path / "out" / "sr" / "locked"
    # another process holds the folder, as a training run would
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from common.system.files import RunLock; RunLock(sys.argv[2]).acquire(); "
                               "print('held', flush=True); time.sleep(120)", str(ROOT), str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused(capsys, tmp_path, "train", tiny_run(tmp_path, "locked"), f"PID {holder.pid}")
        assert "another run is using this run folder" in line
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS drops the lock with the process: nothing stale
        holder.wait()
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "locked"))
    assert json.loads((run / "sigma-10" / "state.json").read_text())["step"] == 1
    # the same process, twice: flock locks are per open file, so a second open conflicts as well
    with RunLock(run):
        refused(capsys, tmp_path, "train", tiny_run(tmp_path, "locked", "--resume", "auto"), f"PID {os.getpid()}")


class _no_exit:
    """Run code that must not exit: SystemExit fails the test with its status."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is SystemExit:
            raise AssertionError(f"exited with status {exc.code}")
        return False


def test_resume_refuses_changed_training_data_unless_told(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    sr_trainset(data / "a.h5", n=4)
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "r"))
    saved = json.loads((tmp_path / "out" / "sr" / "r" / "run.json").read_text())["resolved"]["trainset_files"]
    assert saved == [{"file": "a.h5", "bytes": os.path.getsize(data / "a.h5"), "data": 4, "label": 4}]
    resume = ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "out"), "--max-steps", "2"]
    sr_trainset(data / "b.h5", n=2)  # a file added
    refused(capsys, tmp_path, "train", resume, ("the training data changed", "b.h5 added"))
    (data / "b.h5").unlink()
    sr_trainset(data / "a.h5", n=2)  # fewer patches than the run saw
    line = refused(capsys, tmp_path, "train", resume, "a.h5: ")
    assert "data 4 -> 2" in line and "--resume-new-data" in line
    with _no_exit():
        train_main("sr", [*resume, "--resume-new-data"])
    err = capsys.readouterr().err
    assert "continuing on the new data" in err
    run = json.loads((tmp_path / "out" / "sr" / "r" / "run.json").read_text())
    assert run["resolved"]["trainset_files"][0]["data"] == 2  # the next resume compares with the new files
    assert "resume_new_data" not in run["config"]  # and checks again
    assert json.loads((tmp_path / "out" / "sr" / "r" / "sigma-10" / "state.json").read_text())["step"] == 2


# ----------------------------------------------------------------------------- a full disk
def test_a_full_disk_at_a_checkpoint_is_one_line_with_the_space_needed(tmp_path, capsys, monkeypatch):
    """The disk fills inside torch.save, which then raises RuntimeError('unexpected pos'): the line
    still says that the disk is full, how much the checkpoint needs, and which checkpoint is intact."""
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    real_open = open
    calls = {"checkpoints": 0}

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def filling_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if pathlib.Path(path).name.startswith(".sot-tmp-") and str(path).endswith(".pt"):
            calls["checkpoints"] += 1
            if calls["checkpoints"] > 1:  # the first checkpoint fits, the second does not
                return FullDisk(f)
        return f

    monkeypatch.setattr(files_module, "open", filling_open, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", tiny_run(tmp_path, "full", steps=3))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and not any("Traceback" in line for line in err)
    assert "No space left on device" in err[-1] and "it needs about" in err[-1] and "is free there" in err[-1]
    assert "step-00000001.pt is intact" in err[-1]
    folder = tmp_path / "out" / "sr" / "full" / "sigma-10"
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".pt") or "tmp" in p.name) == ["step-00000001.pt"]
    assert json.loads((folder / "state.json").read_text())["checkpoint"] == "step-00000001.pt"


# Runs gdata's scripts one after another in one process whose disk fills (as ENTRY does, in-process:
# one interpreter start for all four); prints, as JSON, each one's exit status, stderr and what is
# left in the output folder. A real process: HDF5 used to crash (SIGSEGV) on a full disk.
FULL_DISK_RUNS = r"""
import contextlib, importlib.util, io, json, os, resource, signal, sys
root, out, how, runs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, root)
from common.cli.guard import run_guarded
if how == "file size limit":  # past the limit a write fails (EFBIG) instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
results = []
for script, argv in runs:
    spec = importlib.util.spec_from_file_location(script, os.path.join(root, "gdata", script + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_guarded(module.main, argv, writes_files=True)
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue(), sorted(os.listdir(out))])
print(json.dumps(results))
"""


def size_in_bytes(text: str) -> float:
    """'4.8 MiB' (common.system.files.human_bytes) as bytes."""
    number, unit = text.split()
    return float(number) * 1024 ** ("bytes KiB MiB GiB TiB".split().index(unit))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["a 2 MiB file system", "file size limit"])
def test_gdata_on_a_full_disk_is_one_line_with_the_space_needed(tmp_path, how):
    """Each gdata writer whose disk fills says so in one line (with the space it needs, where the disk
    is full) and removes its temporary: no traceback, no crash. The 2 MiB file system is a tmpfs
    mounted in a user namespace of the test's own (skipped where the system allows none); the file
    size limit (RLIMIT_FSIZE) works for any user."""
    write_photos(tmp_path / "imgs", [f"{i}.png" for i in range(8)], side=64)
    rng = np.random.default_rng(0)
    h5_file(tmp_path / "both.h5", data=rng.integers(0, 256, (1000, 3, 16, 16), dtype=np.uint8),
            label=rng.integers(0, 256, (1000, 3, 32, 32), dtype=np.uint8), attrs={"layout": "NCHW"})
    # 24 patches, 1.2 MiB of them, in a chunk of 64 (3.2 MiB): it was said to need 1.2 MiB, with 2 MiB free
    h5_file(tmp_path / "few.h5", data=rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8),
            label=rng.integers(0, 256, (24, 3, 128, 128), dtype=np.uint8), attrs={"layout": "NCHW"})
    out = tmp_path / "out"
    out.mkdir()
    source = str(tmp_path / "both.h5")
    runs = [["merge_h5", ["--data", str(tmp_path / "few.h5"), "--label", str(tmp_path / "few.h5"), "--out",
                          str(out / "o.h5"), "--quiet"]],
            ["make_h5", ["--input", str(tmp_path / "imgs"), "--out", str(out / "o.h5"), "--patch", "8", "--stride",
                         "1", "--quiet"]],
            ["merge_h5", ["--data", source, "--label", source, "--out", str(out / "o.h5"), "--quiet"]],
            ["merge_h5", ["--concat", source, "--out", str(out / "o.h5"), "--quiet"]],
            ["make_h5", ["--convert", source, "--out", str(out / "o.h5"), "--quiet"]]]
    command = [sys.executable, "-c", FULL_DISK_RUNS, str(ROOT), str(out), how, json.dumps(runs)]
    if how == "a 2 MiB file system":
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                   'mount -t tmpfs -o size=2m tmpfs "$0" || exit 77; exec "$@"', str(out), *command]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare command to mount a small file system with")
    if proc.returncode == 77 or proc.stderr.startswith("unshare:"):
        pytest.skip(f"this system lets no user namespace mount a file system: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (script, argv), (code, err, left) in zip(runs, json.loads(proc.stdout.splitlines()[-1])):
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in err and "Exception ignored" not in err, (argv, err)
        assert lines[-1].startswith(f"error: {out / 'o.h5'}: could not write the file ("), (argv, lines)
        assert sum(line.startswith("error: ") for line in lines) == 1, (argv, lines)
        assert left == [], (argv, left)  # the temporary is gone
        if how == "a 2 MiB file system":
            assert "(No space left on device): it needs at least " in lines[-1], lines[-1]
            needed = size_in_bytes(lines[-1].split("it needs at least ")[1].split(",")[0])
            assert needed > 3 << 20, lines[-1]  # the whole file (3.2 MiB and more), not the batch that failed
            free = size_in_bytes(lines[-1].split(", ")[-1].split(" is free there")[0])
            assert needed > free and lines[-1].endswith(" is free there"), lines[-1]
        else:
            assert "(File too large)" in lines[-1], lines[-1]
    assert snapshot(out) == {}


def pid_no_process_can_have() -> int:
    """A killed writer's PID that the system cannot give to another process while the test runs: one
    above the kernel's limit (a real dead process's PID may be reused by the time it is checked)."""
    try:
        return int(pathlib.Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 4_194_305  # above Linux's largest limit (2^22); macOS's is 99,998


def test_temporaries_of_killed_writers_are_removed_at_start(tmp_path, capsys):
    """Only what a killed writer of this program left, by the exact name it gives its temporaries, at the
    top of the folders it writes: a user's files of similar names, in the run folder or beside the
    .h5 file, stay."""
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "t"))
    dead = pid_no_process_can_have()
    run = tmp_path / "out" / "sr" / "t"
    folder = run / "sigma-10"
    stale = [folder / f".sot-tmp-{dead}-step-00000002.pt", folder / f".sot-tmp-{dead}-state.json",
             run / f".sot-tmp-{dead}-run.json", folder / "samples" / f".sot-tmp-{dead}-epoch-0001.png",
             folder / f".last.pt.tmp{dead}"]  # an earlier version's name, of a file runs write there
    kept = [folder / f".notes.txt.tmp{dead}", folder / f".sot-tmp-{dead}-notes.txt", folder / "mine" / f".a.pt.tmp{dead}",
            run / f".sot-tmp-{dead}-staging", folder / "step-(mine).pt"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    with _no_exit():
        train_main("sr", ["--resume", "auto", "--name", "t", "--out", str(tmp_path / "out"), "--max-steps", "3"])
    assert not [p for p in stale if p.exists()]
    assert [p for p in kept if p.exists()] == kept  # step-(mine).pt too: only step-NNNNNNNN.pt are rotated
    assert "removed 3 temporary file(s)" in capsys.readouterr().err  # the sigma folder's; the others by a note each
    # and the same for a training file whose writer was killed
    orphan, users = tmp_path / f".sot-tmp-{dead}-o.h5", [tmp_path / f".o.h5.tmp{dead}", tmp_path / f".p.h5.tmp{dead}"]
    for path in [orphan, *users]:
        path.write_bytes(b"half a file")
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), u8(16, 16, 3))
    with _no_exit():
        ENTRY["make_h5"](["--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"), "--patch", "8", "--quiet"])
    assert not orphan.exists() and (tmp_path / "o.h5").is_file()
    assert all(path.exists() for path in users)


# ----------------------------------------------------------------------------- names and sizes
@pytest.mark.slow
def test_file_names_that_are_not_utf8_work_end_to_end(tmp_path):
    """OpenCV's file functions crash (SIGSEGV) on such names: no path may reach them. A real process,
    so that a crash is a failed test, not a dead test run."""
    folder = tmp_path / "nu"
    folder.mkdir()
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (folder / f"{NON_UTF8}.png").write_bytes(encoded.tobytes())
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / f"{NON_UTF8}.png").write_bytes(encoded.tobytes())
    generator_checkpoint(tmp_path / "g.pt")
    result = subprocess.run([sys.executable, "deraining/test.py", "--checkpoint", str(tmp_path / "g.pt"), "--input",
                             str(folder), "--gt", str(tmp_path / "gt"), "--no-lpips", "--save", str(tmp_path / "res"),
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\\xff\\xfe: PSNR" in result.stdout
    assert (tmp_path / "res" / f"{NON_UTF8}.png").is_file()
    assert "\\xff\\xfe," in (tmp_path / "res" / "metrics.csv").read_text()
    with _no_exit():
        ENTRY["make_h5"](["--input", str(folder), "--out", str(tmp_path / "o.h5"), "--patch", "8", "--stride", "8",
                          "--quiet"])
    with h5py.File(tmp_path / "o.h5") as f:
        assert f.attrs["label_files"] == "\\xff\\xfe.png" and f["label"].shape[0] == 25


class _EachTileAlone:
    """SharedPooling's stand-in for the fault it prevents: every tile pools only its own features."""

    def __init__(self, network):
        self.mode, self.region = "record", None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_an_image_too_large_for_cpu_memory_is_tiled_or_refused(tmp_path, capsys, monkeypatch):
    """Tiled inference must not show its tiles: on an image whose colours change across it, with a
    generator whose channel attention matters (its weights x10), the tiles share the image-wide
    statistics and land within one level of the whole image, where tiles that each pool only
    themselves are several levels off (the same run with the sharing taken out shows it)."""
    import common.evaluation.inference as inference
    from common.networks import ChannelAttention

    (tmp_path / "imgs").mkdir()
    rows, cols = np.mgrid[0:320, 0:288]
    ramp = np.stack([cols / 288, rows / 320, 1 - cols / 288], axis=-1) * 204
    noise = np.random.default_rng(0).integers(0, 52, (320, 288, 3))
    cv2.imwrite(str(tmp_path / "imgs" / "big.png"), (ramp + noise).astype(np.uint8))
    g = tiny_generator()
    with torch.no_grad():
        for attention in (m for m in g.modules() if isinstance(m, ChannelAttention)):
            for p in attention.conv_du.parameters():
                p.mul_(10)
    generator_checkpoint(tmp_path / "g.pt", g)
    argv = ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "imgs"), "--device", "cpu",
            "--no-lpips", "--no-report", "--tile-overlap", "32"]
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", str(tmp_path / "whole")])
    whole_needs = inference.forward_bytes(g, 320, 288) + inference.IMAGE_COPIES * 3 * 320 * 288 * 4
    # memory for the image's copies and a 128-pixel tile, not for the whole forward pass
    monkeypatch.setattr(inference, "available_memory", lambda: int(whole_needs * 0.9))
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", str(tmp_path / "tiled")])
    assert "restoring it in 128x128 tiles" in capsys.readouterr().err
    monkeypatch.setattr(inference, "SharedPooling", _EachTileAlone)
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", str(tmp_path / "alone")])
    monkeypatch.undo()
    whole, tiled, alone = (cv2.imread(str(tmp_path / name / "big.png")).astype(int)
                           for name in ("whole", "tiled", "alone"))
    assert np.abs(whole - tiled).max() <= 1 and np.abs(whole - tiled).mean() < 0.1
    assert np.abs(whole - alone).max() >= 5 and np.abs(whole - alone).mean() > 0.5
    monkeypatch.setattr(inference, "available_memory", lambda: 1 << 20)
    refused(capsys, tmp_path, "test deraining", [*argv, "--save", str(tmp_path / "none")],
            "big.png: a 288x320 image needs about")


def test_images_smaller_than_the_metrics_windows_are_measured_without_them(tmp_path, capsys):
    for side in ("in", "gt"):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / "dot.png"), u8(1, 1, 3, value=100))
    generator_checkpoint(tmp_path / "g.pt")
    with _no_exit():
        run_test_script("deraining", ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "in"), "--gt",
                                str(tmp_path / "gt"), "--device", "cpu", "--no-lpips", "--save", str(tmp_path / "r")])
    assert "SSIM n/a" in capsys.readouterr().out


# ----------------------------------------------------------------------------- test.py never destroys or misleads
def task_checkpoint(path, task):
    return generator_checkpoint(path, task=task, config={"task": task})


def user_files_case(case: str, d) -> tuple[str, list[str], str]:
    """One careless test.py run in ``d``: (entry, argv, a fragment of its one error line). The user's
    photographs are ``d/photos``, their ground truth ``d/gt``, earlier results ``d/res``."""
    write_photos(d / "photos")
    write_photos(d / "gt")
    ckpt = task_checkpoint(d / "g.pt", "deraining")
    run = lambda *extra, save="new-results": ("test deraining", [
        "--checkpoint", str(ckpt), "--input", str(d / "photos"), "--gt", str(d / "gt"), "--device", "cpu",
        "--no-lpips", *(["--save", str(d / save)] if save else []), *extra])
    # flags that point two roles at one place
    if case == "--save is the --input folder":
        return run(save="photos")[0], run(save="photos")[1], "is the folder of the input images"
    if case == "--save is the --gt folder":
        return (*run(save="gt"), "is the folder of the ground-truth images")
    if case == "--save is a link to the --input folder":
        (d / "link").symlink_to(d / "photos")
        return (*run(save="link"), "is the folder of the input images")
    if case == "--gt is the --input folder":
        entry, argv = run()
        argv[argv.index("--gt") + 1] = str(d / "photos")
        return entry, argv, "is the --input folder: every image would be scored against itself"
    if case == "--gt is a link to the --input folder":
        entry, argv = run()
        (d / "gt-link").symlink_to(d / "photos")
        argv[argv.index("--gt") + 1] = str(d / "gt-link")
        return entry, argv, "is the --input folder"
    # earlier results
    if case == "--save holds another model's results":
        write_photos(d / "res", ("a.png", "b.png"), seed=5)
        (d / "res" / "metrics.csv").write_text("name,psnr\nmean,30.0\n")
        return (*run(save="res"), "holds earlier results that this run would replace (metrics.csv, a.png, b.png)")
    if case == "a folder where a result goes, with --overwrite":
        (d / "res" / "b.png").mkdir(parents=True)
        return (*run("--overwrite", save="res"), "b.png: is a folder, where this run would write")
    if case == "a file where the report's folder goes, with --overwrite":
        (d / "res").mkdir()
        (d / "res" / "report_files").write_text("not a folder")
        return (*run("--overwrite", save="res"), "report_files: is a file, where this run would write the report's "
                                                 "pictures (a folder)")
    # what this run would replace is not what an earlier run wrote
    if case == "--gt inside --save, with --overwrite":
        write_photos(d / "res" / "report_files")  # the user keeps the ground truth there
        entry, argv = run("--overwrite", save="res")
        argv[argv.index("--gt") + 1] = str(d / "res" / "report_files")
        return entry, argv, "report_files: the ground-truth images are inside the results folder --save"
    if case == "--input a link into --save, with --overwrite":
        write_photos(d / "res" / "mine")
        (d / "input-link").symlink_to(d / "res" / "mine")
        entry, argv = run("--overwrite", save="res")
        argv[argv.index("--input") + 1] = str(d / "input-link")
        return entry, argv, "the input images are inside the results folder --save " + str(d / "res") + " (through a link)"
    if case == "an earlier report beside results replaced with --overwrite --no-report":  # it described two runs
        write_photos(d / "res", ("a.png",))
        (d / "res" / "report.html").write_text("<!doctype html><title>an earlier run</title>")
        return (*run("--overwrite", "--no-report", save="res"), "res/report.html: an earlier run's report, which "
                "would describe the results this run replaces (--overwrite), not this run's")
    if case == "the report's folder holds a file of the user's, with --overwrite":
        write_photos(d / "res" / "report_files", ("00000-input.png", "holiday.jpg"))
        return (*run("--overwrite", save="res"), "report_files: holds holiday.jpg, which test.py's report did not write")
    # found only part-way, yet nothing may be written
    if case == "the last ground truth has the wrong size":
        write_photos(d / "gt", ("c.png",), side=20)
        return (*run(), "c.png: ground truth is 20x20 but the restored c.png is 16x16")
    if case == "the last input is cut short":
        encoded = (d / "photos" / "c.png").read_bytes()
        (d / "photos" / "c.png").write_bytes(encoded[: len(encoded) // 2])  # a header that reads, pixels that do not
        return (*run(), "c.png: not a readable image")
    if case == "the last input is cut short, into earlier results with --overwrite":
        write_photos(d / "res", ("a.png", "b.png"), seed=5)
        encoded = (d / "photos" / "c.png").read_bytes()
        (d / "photos" / "c.png").write_bytes(encoded[: len(encoded) // 2])
        return (*run("--overwrite", save="res"), "c.png: not a readable image")
    if case == "an input too small for --reference-metrics":
        write_photos(d / "photos", ("c.png",), side=8)
        write_photos(d / "gt", ("c.png",), side=8)
        return (*run("--reference-metrics"), "c.png: 8x8 is smaller than the 16-pixel multiple")
    # two results on one name
    if case == "two inputs with one name":
        write_photos(d / "photos", ("a.jpg",))
        return (*run(), "two inputs share the name 'a' (a.jpg and a.png): their restored images would both be "
                        "written as a.png")
    if case == "two ground truths with one name":
        write_photos(d / "gt", ("b.bmp",))
        return (*run(), "two ground truths share the name 'b'")
    if case == "an input named like test.py's own picture":
        write_photos(d / "photos", ("side_by_side.png",))
        write_photos(d / "gt", ("side_by_side.png",))
        return (*run("--side-by-side", "1"), "would be written as side_by_side.png, the name of the side-by-side")
    # a checkpoint of another task
    if case == "a dehazing checkpoint through deraining/test.py":
        task_checkpoint(ckpt, "dehazing")
        return (*run(), "g.pt: trained for dehazing, not for deraining; test it with python dehazing/test.py, "
                        "or give --any-task")
    if case == "a deraining checkpoint through sr/test.py":
        entry, argv = run()
        return "test", argv, "trained for deraining, not for x4 super-resolution"
    # inputs that are not what their names say
    if case == "a link loop named like an image":
        os.symlink("loop.png", d / "photos" / "loop.png")
        return (*run(save="res"), "loop.png: a symbolic-link loop")
    if case == "a broken link named like an image":
        os.symlink("gone.png", d / "photos" / "d.png")
        return (*run(), "d.png: a broken symbolic link (to gone.png")
    if case == "a FIFO named like an image":
        os.mkfifo(d / "photos" / "d.png")
        return (*run(), "d.png: a FIFO, not a regular file")
    if case == "a sparse 1 TB file named like an image":
        with open(d / "photos" / "c.png", "wb") as f:
            f.truncate(1 << 40)
        return (*run(), "c.png: the file is 1.0 TiB, more than")
    if case == "an input folder that is a link loop":
        entry, argv = run()
        os.symlink("input-loop", d / "input-loop")
        argv[argv.index("--input") + 1] = str(d / "input-loop")
        return entry, argv, "input-loop: not a folder (a symbolic-link loop"
    raise ValueError(case)


USER_FILE_CASES = [
    "--save is the --input folder", "--save is the --gt folder", "--save is a link to the --input folder",
    "--gt is the --input folder", "--gt is a link to the --input folder", "--save holds another model's results",
    "a folder where a result goes, with --overwrite", "a file where the report's folder goes, with --overwrite",
    "the last ground truth has the wrong size", "the last input is cut short", "the last input is cut short, into earlier results with --overwrite",
    "an input too small for --reference-metrics", "two inputs with one name", "two ground truths with one name",
    "an input named like test.py's own picture", "a dehazing checkpoint through deraining/test.py",
    "a deraining checkpoint through sr/test.py", "a link loop named like an image", "a broken link named like an image",
    "a FIFO named like an image", "a sparse 1 TB file named like an image", "an input folder that is a link loop",
    "--gt inside --save, with --overwrite", "--input a link into --save, with --overwrite",
    "the report's folder holds a file of the user's, with --overwrite",
    "an earlier report beside results replaced with --overwrite --no-report"]


@pytest.mark.parametrize("case", USER_FILE_CASES)
def test_test_py_refuses_before_changing_any_file(tmp_path, capsys, case):
    """Every file under the test's folder (input photographs, ground truth, earlier results) is hashed
    before and after: a refused run changes nothing and leaves no results folder behind."""
    entry, argv, fragment = user_files_case(case, tmp_path)
    refused(capsys, tmp_path, entry, argv, fragment)
    assert not (tmp_path / "new-results").exists()


def test_test_py_writes_results_only_where_asked(tmp_path, capsys, monkeypatch):
    """Without --save a second run goes to a new numbered folder; --overwrite replaces exactly the files
    this run writes and says that others stay; --any-task runs another task's checkpoint with a note."""
    write_photos(tmp_path / "photos")
    write_photos(tmp_path / "gt")
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(ckpt), "--input", "photos", "--gt", "gt", "--device", "cpu", "--no-lpips"]
    with _no_exit():
        run_test_script("deraining", argv)
    first = snapshot(tmp_path / "results")
    written = ["a.png", "b.png", "c.png", "metrics.csv", "report.html", "report_files"]
    assert sorted(os.listdir(tmp_path / "results" / "deraining" / "g")) == written
    with _no_exit():
        run_test_script("deraining", argv)
    assert "holds earlier results; writing to results/deraining/g-2" in capsys.readouterr().err
    assert {k: v for k, v in snapshot(tmp_path / "results").items() if "g-2" not in k} == first
    assert sorted(os.listdir(tmp_path / "results" / "deraining" / "g-2")) == written
    # without the report: the images and the metrics alone
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", "plain", "--no-report"])
    assert sorted(os.listdir(tmp_path / "plain")) == written[:4]
    # --overwrite into a folder with another model's results and a file of the user's
    write_photos(tmp_path / "res", ("a.png", "z.png"), seed=9)
    (tmp_path / "res" / "notes.txt").write_text("mine")
    kept = {k: v for k, v in snapshot(tmp_path / "res").items() if k.endswith(("z.png", "notes.txt"))}
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", "res", "--overwrite"])
    assert "res: replacing 1 earlier result(s) (a.png)" in capsys.readouterr().err
    assert (tmp_path / "res" / "a.png").read_bytes() == (tmp_path / "results" / "deraining" / "g" / "a.png").read_bytes()
    assert {k: v for k, v in snapshot(tmp_path / "res").items() if k.endswith(("z.png", "notes.txt"))} == kept
    assert not [p for p in os.listdir(tmp_path / "res") if p.startswith(".")]  # no staging folder left
    # another task's checkpoint, asked for
    task_checkpoint(ckpt, "dehazing")
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", "cross", "--any-task"])
    assert "trained for dehazing; tested as deraining as --any-task asks" in capsys.readouterr().err


def test_without_ground_truth_the_picture_and_its_line_show_two_columns(tmp_path, capsys):
    """The side-by-side picture is input | restored where nothing is there to compare with, and its line
    says so; a --tile-overlap under the seamless one gets a note."""
    from common.data.images import read_image

    write_photos(tmp_path / "photos", side=64)
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    with _no_exit():
        run_test_script("deraining", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--device",
                                      "cpu", "--save", str(tmp_path / "res"), "--side-by-side", "2", "--tile", "32",
                                      "--tile-overlap", "8"])
    captured = capsys.readouterr()
    assert f"side by side (rainy input | restored): {tmp_path / 'res' / 'side_by_side.png'}" in captured.out
    assert read_image(tmp_path / "res" / "side_by_side.png").shape[1] < 3 * 64  # two columns, not three
    assert "--tile-overlap 8: tiles see less of their surroundings than the 32 pixels" in captured.err


def stopped_by(sig, argv: list[str], when, then: float = 0.0) -> str:
    """Run a script, send it ``sig`` once ``when()`` holds (and ``then`` seconds more); the last line
    it printed. It must exit with 128 + the signal and no traceback."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not when() and proc.poll() is None:
            assert time.monotonic() < deadline, "timed out waiting"
            time.sleep(0.01)
        time.sleep(then)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err
    return err.replace("\r", "\n").strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_mid_test_py_leaves_no_results_folder(tmp_path, sig):
    """Stopped while its restored images are half written: the staged ones go, the results folder it
    made goes, one line says so, and the exit status is 128 + the signal. SIGHUP (an ssh connection
    dropped) killed test.py where it was, its staging folder left in the results folder it made."""
    write_photos(tmp_path / "photos", [f"{i:02d}.png" for i in range(60)], side=96)
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    before = snapshot(tmp_path)
    save = tmp_path / "out" / "res"
    last = stopped_by(sig, ["deraining/test.py", "--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"),
                            "--save", str(save), "--device", "cpu"],
                      when=lambda: any(save.glob(".sot-tmp-*-staging/*.png")))
    assert last.startswith(f"stopped by {signal.Signals(sig).name}: removed the ") and "unfinished result file(s)" in last
    assert snapshot(tmp_path) == before  # no out/, no out/res/, the photographs untouched


def test_a_hangup_stops_a_script_unless_it_was_started_to_ignore_it():
    """SIGHUP is routed with SIGINT and SIGTERM (to training's stop request, and to the clean-up of the
    scripts that write files), except where the script was started with it ignored (nohup)."""
    from common.system.signals import RaiseOnStopSignals, StopRequest

    for stop in (RaiseOnStopSignals, StopRequest):
        previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            with stop() as handler:
                assert signal.getsignal(signal.SIGHUP) == handler._handle
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
            with stop():
                assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        finally:
            signal.signal(signal.SIGHUP, previous)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_make_h5_removes_its_temporary_and_folders(tmp_path, sig):
    write_photos(tmp_path / "imgs", [f"{i:02d}.png" for i in range(40)], side=256)
    before = snapshot(tmp_path)
    out = tmp_path / "new" / "deeper" / "o.h5"
    last = stopped_by(sig, ["gdata/make_h5.py", "--input", str(tmp_path / "imgs"), "--out", str(out), "--patch", "16",
                            "--stride", "4", "--degrade", "rain-light", "--batch", "64"],
                      when=lambda: any(out.parent.glob(".sot-tmp-*-o.h5")), then=0.2)  # well inside the writing
    assert last.startswith(f"stopped by {signal.Signals(sig).name}: removed the unfinished .sot-tmp-"), last
    assert f"and the folder {tmp_path / 'new'} made for it" in last
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- test.py removes only what it made
def test_test_py_removes_only_its_own_temporaries(tmp_path, capsys):
    """A results folder that holds a user's files named like temporaries (an editor's, git's) in its
    subfolders and at its top: they stay; only the staging folder a killed test.py left, by the name
    it gives it, goes."""
    write_photos(tmp_path / "photos")
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    dead, res = pid_no_process_can_have(), tmp_path / "res"
    users = [res / "photos" / f".holiday.jpg.tmp{dead}", res / "docs" / "deep" / f".thesis.tex.tmp{dead - 1}",
             res / ".git" / "objects" / f".pack.tmp{dead}", res / f".notes.txt.tmp{dead}",
             res / f".staging.tmp{dead}" / "mine.txt", res / "photos" / f".sot-tmp-{dead}-staging" / "a.png",
             res / f".sot-tmp-{dead}-notes.txt"]
    for path in users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    killed = res / f".sot-tmp-{dead}-staging"
    write_photos(killed, ("a.png",))
    before = snapshot(res)
    with _no_exit():
        run_test_script("deraining", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--device", "cpu",
                                      "--save", str(res), "--no-report"])
    assert f"removed 1 temporary file(s) left by an interrupted write, e.g. {killed.name}" in capsys.readouterr().err
    assert not killed.exists()
    after = snapshot(res)
    assert {k: v for k, v in before.items() if str(killed) not in k} == {k: after[k] for k in before if str(killed) not in k}


def test_the_demo_replaces_only_its_own_data(tmp_path):
    """An older demo's data are removed file by file, by the names the demo gives them; a folder that
    holds anything else is refused, naming it, before the first file goes."""
    from common.demo import build_demo_data, remove_demo_data
    from common.tasks import TASKS

    root, dead = tmp_path / "sr" / "demo-data", pid_no_process_can_have()
    ours = [root / "train" / "demo.h5", root / "train" / f".demo.h5.tmp{dead}", root / "val" / "input" / "a.png",
            root / "val" / "gt" / "a.png", root / "heldout" / "input" / f".sot-tmp-{dead}-b.png"]
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the demo's")
    (root / "val" / "gt" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="gt/notes.txt: not part of the demo's data"):
        build_demo_data(TASKS["sr"], root)  # its demo.h5 is not of this version: the data would be rebuilt
    assert snapshot(tmp_path) == before
    (root / "val" / "gt" / "notes.txt").unlink()
    remove_demo_data(root)
    assert os.listdir(root) == []


# ----------------------------------------------------------------------------- two runs, one results folder
@contextlib.contextmanager
def folder_locked_by_another_run(folder):
    """Another process holds ``folder``'s lock, as a test.py run writing its results there does."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_results_folder_is_locked_for_its_run(tmp_path, capsys, monkeypatch):
    """Two runs never write into one results folder: a --save that another run is writing into is
    refused, and the default folder is numbered past the folders other runs are writing into (two
    runs started together took the same -2 before)."""
    write_photos(tmp_path / "photos")
    write_photos(tmp_path / "gt")
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(ckpt), "--input", "photos", "--gt", "gt", "--device", "cpu", "--no-lpips", "--no-report"]
    with folder_locked_by_another_run(tmp_path / "res"):
        refused(capsys, tmp_path, "test deraining", [*argv, "--save", "res", "--overwrite"],
                "res: another run is writing its results into this folder")
    write_photos(tmp_path / "results" / "deraining" / "g", ("a.png",), seed=7)  # an earlier run's
    with folder_locked_by_another_run(tmp_path / "results" / "deraining" / "g-2"):  # a run that chose -2 just now
        with _no_exit():
            run_test_script("deraining", argv)
    assert "results/deraining/g holds earlier results; writing to results/deraining/g-3" in capsys.readouterr().err
    assert os.listdir(tmp_path / "results" / "deraining" / "g-2") == []
    assert sorted(os.listdir(tmp_path / "results" / "deraining" / "g-3")) == ["a.png", "b.png", "c.png", "metrics.csv"]


def test_the_results_move_into_place_all_or_nothing(tmp_path, capsys, monkeypatch):
    """A SIGTERM between two of the final moves waits for the last of them, and the line says that the
    results are complete; a move that fails puts back what the moves before it replaced, and the line
    says that the folder is as it was. Either way the folder never holds some new results and some old."""
    write_photos(tmp_path / "photos")
    write_photos(tmp_path / "gt")
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    res = tmp_path / "res"
    write_photos(res, ("a.png", "b.png", "c.png"), seed=5)  # an earlier model's results, to be replaced
    (res / "metrics.csv").write_text("name,psnr\nmean,30.0\n")
    argv = ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--gt", str(tmp_path / "gt"), "--device",
            "cpu", "--no-lpips", "--no-report", "--save", str(res), "--overwrite"]
    earlier = snapshot(res)
    moves = []

    def move_with(then):
        def wrapper(real):
            def move(src, dst, *args, **kwargs):
                real(src, dst, *args, **kwargs)
                if "staging" in pathlib.Path(src).parent.name and pathlib.Path(dst).parent == res:  # into place
                    moves.append(dst)
                    then(len(moves))
            return move
        monkeypatch.setattr(os, "rename", wrapper(os.rename))
        monkeypatch.setattr(os, "replace", wrapper(os.replace))

    def no_space(n):
        if n == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
    move_with(no_space)
    line = refused(capsys, tmp_path, "test deraining", argv, "could not move the result into place (No space left")
    assert line.endswith(f"; {res} is as it was")
    monkeypatch.undo()

    def sigterm(n):
        if n == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    moves.clear()
    move_with(sigterm)
    with pytest.raises(SystemExit) as exit_info:
        run_test_script("deraining", argv)
    monkeypatch.undo()
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"stopped by SIGTERM once the results were complete, in {res}"
    assert len(moves) == 4 and sorted(os.listdir(res)) == ["a.png", "b.png", "c.png", "metrics.csv"]
    assert all(snapshot(res)[path] != earlier[path] for path in earlier)  # every one of them new


# ----------------------------------------------------------------------------- names as long as the file system takes
def test_an_image_name_as_long_as_the_file_system_takes(tmp_path, capsys, monkeypatch):
    """A 251-character image name is restored (its temporary's name would be too long: it gets a short
    one) and so is an .h5 file of such a name; where the results folder's file system takes shorter
    names, the run is refused before the first image, naming it."""
    long = "x" * 247 + ".png"
    write_photos(tmp_path / "photos", ("a.png", long))
    write_photos(tmp_path / "gt", ("a.png", long))
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    argv = ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--gt", str(tmp_path / "gt"), "--device",
            "cpu", "--no-lpips"]
    with _no_exit():
        run_test_script("deraining", [*argv, "--save", str(tmp_path / "res")])
    assert (tmp_path / "res" / long).is_file() and long[:-4] in (tmp_path / "res" / "metrics.csv").read_text()
    h5 = tmp_path / ("o" * 248 + ".h5")
    with _no_exit():
        ENTRY["make_h5"](["--input", str(tmp_path / "photos"), "--out", str(h5), "--patch", "8", "--quiet"])
    assert h5.is_file()
    pathconf = os.pathconf
    monkeypatch.setattr(os, "pathconf", lambda path, name: 200 if name == "PC_NAME_MAX" else pathconf(path, name))
    line = refused(capsys, tmp_path, "test deraining", [*argv, "--save", str(tmp_path / "res2")],
                   f"the restored {tmp_path / 'photos' / long} would be written as {long}, a name of 251 bytes; its file "
                   "system takes at most 200")
    assert line.startswith(f"error: {tmp_path / 'res2'}: ")


# ----------------------------------------------------------------------------- a reader that goes away
PIPE_CASES = ["sr/test.py", "sr/test.py | head -1", "sr/train.py", "gdata/make_h5.py", "gdata/inspect_h5.py"]


@pytest.mark.slow
@pytest.mark.parametrize("case", PIPE_CASES)
def test_a_reader_that_goes_away_ends_a_script_quietly(tmp_path, case):
    """``script | head -1``, or a pipe whose reader is gone before the script writes: no traceback and no
    "Exception ignored", status 141 (128 + SIGPIPE, what a shell reports for other tools), and what was
    being written is cleaned up as after any stop."""
    write_photos(tmp_path / "photos")
    sr_trainset(tmp_path / "d.h5")
    ckpt = generator_checkpoint(tmp_path / "g.pt")
    script = case.split()[0]
    argv = {"sr/test.py": ["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--device", "cpu",
                           "--save", str(tmp_path / "res")],
            "sr/train.py": ["--trainset", str(tmp_path / "d.h5"), "--out", str(tmp_path / "runs"), "--max-steps", "2",
                            "--batchSize", "2", "--device", "cpu", *SMALL],
            "gdata/make_h5.py": ["--input", str(tmp_path / "photos"), "--out", str(tmp_path / "o.h5"), "--patch", "8"],
            "gdata/inspect_h5.py": [str(tmp_path / "d.h5")]}[script]
    if "| head -1" in case:
        command = " ".join(map(shlex.quote, [sys.executable, script, *argv])) + ' | head -1; exit "${PIPESTATUS[0]}"'
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.stdout.startswith(f"{ckpt} (sot-checkpoint) on 3 image(s)") and result.stdout.count("\n") == 1
        assert result.returncode in (0, 141), result.stderr  # 0 only where every line was out before head left
        assert sorted(os.listdir(tmp_path / "res")) == ["a.png", "b.png", "c.png", "report.html", "report_files"]
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([sys.executable, script, *argv], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE,
                                    text=True, timeout=300)
        finally:
            os.close(write_end)
        assert result.returncode == 141, result.stderr
        if script == "sr/test.py":
            assert not (tmp_path / "res").exists()  # stopped while restoring: nothing half-written is left
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------- output that cannot be written
OUTPUT_CASES = {"stdout closed (>&-)": ("stdout", None), "stderr closed (2>&-)": ("stderr", None),
                "stdout on a full disk (>/dev/full)": ("stdout", "/dev/full"),
                "stderr on a full disk (2>/dev/full)": ("stderr", "/dev/full")}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_output_that_cannot_be_written_loses_no_results(tmp_path, capsys, monkeypatch, case):
    """A closed stdout or stderr (Python's is None) was an AttributeError traceback at the first line or
    progress bar, and the results were lost; stdout on a full disk an OSError traceback, exit 1, the
    results lost too. The results are written either way; a closed stream is what was asked for (exit
    0), a full one is one line on stderr (if stderr works) and status 2."""
    write_photos(tmp_path / "photos", ("a.png",), side=8)
    write_photos(tmp_path / "clean", ("a.png",), side=32)
    ckpt = generator_checkpoint(tmp_path / "g.pt")
    name, target = OUTPUT_CASES[case]
    stream = None if target is None else open(target, "w")
    monkeypatch.setattr(sys, name, stream)
    try:
        with pytest.raises(SystemExit) as exit_info:
            ENTRY["test"](["--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--gt", str(tmp_path / "clean"),
                           "--device", "cpu", "--no-lpips", "--no-report", "--save", str(tmp_path / "res")])
            raise SystemExit(0)
    finally:
        monkeypatch.undo()
        if stream is not None:
            stream.close()
    err = capsys.readouterr().err
    assert exit_info.value.code == (0 if target is None else 2), err
    assert sorted(os.listdir(tmp_path / "res")) == ["a.png", "metrics.csv"]
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if case.startswith("stdout on a full disk"):
        assert err.splitlines()[-1] == ("error: standard output: could not be written (No space left on device), and "
                                        "what the script printed there after that was lost"), err


@pytest.mark.slow
def test_a_script_started_with_its_output_closed_writes_nothing_into_its_files(tmp_path):
    """A descriptor closed at the start (``>&- 2>&-``) is the first one a file opened by the script gets:
    it is held on /dev/null, so that nothing printed lands in a result (inspect_h5 was a traceback)."""
    write_photos(tmp_path / "photos", side=8)
    sr_trainset(tmp_path / "d.h5")
    ckpt = generator_checkpoint(tmp_path / "g.pt")
    for argv in (["sr/test.py", "--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"), "--device", "cpu",
                  "--save", str(tmp_path / "res")], ["gdata/inspect_h5.py", str(tmp_path / "d.h5")]):
        command = " ".join(map(shlex.quote, [sys.executable, *argv])) + " >&- 2>&-"
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, timeout=300)
        assert result.returncode == 0, argv
    assert sorted(os.listdir(tmp_path / "res")) == ["a.png", "b.png", "c.png", "report.html", "report_files"]
    assert (tmp_path / "res" / "report.html").read_text().rstrip().endswith("</html>")  # nothing printed into it
    assert all(cv2.imread(str(tmp_path / "res" / name)) is not None for name in ("a.png", "b.png", "c.png"))


# ----------------------------------------------------------------------------- gdata: one file, one role
def test_gdata_never_writes_over_what_it_reads(tmp_path, capsys):
    sr_trainset(tmp_path / "d.h5")
    write_photos(tmp_path / "imgs")
    same = str(tmp_path / "d.h5")
    refused(capsys, tmp_path, "merge_h5", ["--data", same, "--label", same, "--out", same, "--quiet"],
            "d.h5: is also a file this command reads")
    refused(capsys, tmp_path, "merge_h5", ["--concat", same, "--out", same, "--quiet"], "is also a file this command")
    (tmp_path / "alias.h5").symlink_to(tmp_path / "d.h5")
    refused(capsys, tmp_path, "make_h5", ["--convert", same, "--out", str(tmp_path / "alias.h5"), "--layout", "ours",
                                          "--quiet"], "alias.h5: is also a file this command reads")
    refused(capsys, tmp_path, "make_h5", ["--input", str(tmp_path / "imgs"), "--degraded-input", str(tmp_path / "imgs"),
                                          "--out", str(tmp_path / "o.h5"), "--patch", "8", "--quiet"],
            "is the --input folder: 'data' and 'label' would hold the same clean patches")


# ----------------------------------------------------------------------------- images as viewers show them
def exif_image(path, pixels: np.ndarray, orientation: int):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    fmt = {".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".webp": "WEBP"}[path.suffix]
    extra = {"JPEG": {"quality": 100}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.fromarray(pixels).save(path, fmt, exif=exif.tobytes(), **extra)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_images_are_read_as_viewers_show_them(tmp_path, capsys, suffix):
    """All eight EXIF orientations, against Pillow's own exif_transpose as the oracle."""
    from PIL import Image, ImageOps
    from common.data.images import image_size, read_image

    yy, xx = np.mgrid[0:12, 0:20]
    pixels = np.stack([xx * 12, yy * 20, (xx * 7 + yy * 5) % 256], -1).astype(np.uint8)  # no symmetry
    for orientation in range(1, 9):
        path = exif_image(tmp_path / f"o{orientation}{suffix}", pixels, orientation)
        with Image.open(path) as im:
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
        ours = np.rint(read_image(path) * 255).astype(int)
        assert ours.shape == shown.shape, orientation
        assert np.abs(ours - shown).max() <= (3 if suffix == ".jpg" else 0), orientation
        assert image_size(path) == (shown.shape[1], shown.shape[0])
        if orientation in (6, 8) and suffix != ".jpg":  # the note's words below, against the geometry
            assert np.array_equal(np.rot90(shown, k=1 if orientation == 6 else -1), pixels)  # k=1: anticlockwise
    err = capsys.readouterr().err
    if suffix != ".tif":  # OpenCV turns TIFFs itself: nothing to say
        assert "o6" + suffix + ": EXIF orientation 6 applied (the stored pixels are turned 90 degrees anticlockwise" in err
        assert "o8" + suffix + ": EXIF orientation 8 applied (the stored pixels are turned 90 degrees clockwise" in err


def test_a_phone_photograph_is_restored_upright_in_test_and_make_h5(tmp_path, capsys):
    """An Orientation=6 JPEG, stored 20x12 and shown 12x20, with its ground truth saved upright."""
    yy, xx = np.mgrid[0:12, 0:20]
    stored = np.stack([xx * 12, yy * 20, xx * 3], -1).astype(np.uint8)
    (tmp_path / "in").mkdir()
    exif_image(tmp_path / "in" / "phone.jpg", stored, 6)
    write_photos(tmp_path / "gt", ("phone.png",), side=12)
    upright = np.rot90(stored, k=-1)
    cv2.imwrite(str(tmp_path / "gt" / "phone.png"), upright[:, :, ::-1])
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    with _no_exit():
        run_test_script("deraining", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--gt",
                                      str(tmp_path / "gt"), "--device", "cpu", "--no-lpips", "--save",
                                      str(tmp_path / "res")])
    assert "phone.jpg: EXIF orientation 6 applied" in capsys.readouterr().err
    assert cv2.imread(str(tmp_path / "res" / "phone.png")).shape == (20, 12, 3)
    with _no_exit():
        ENTRY["make_h5"](["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o.h5"), "--patch", "12",
                          "--stride", "8", "--quiet"])
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["label"].shape == (2, 3, 12, 12)  # 12 wide, 20 high: two patches down, not across
    # a ground truth stored sideways, beside an upright input: the error says what to suspect
    exif_image(tmp_path / "gt" / "phone.png", stored, 1)
    line = refused(capsys, tmp_path, "test deraining", [
        "--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--gt", str(tmp_path / "gt"), "--device", "cpu",
        "--no-lpips", "--save", str(tmp_path / "res2")], "ground truth is 20x12 but the restored phone.jpg is 12x20")
    assert "EXIF orientation" in line


# ----------------------------------------------------------------------------- training that trained nothing
def test_a_run_whose_every_step_was_skipped_does_not_end_as_trained(tmp_path, capsys):
    """sigma 1e29 passes the flag check but overflows every generator update: exit 3, a line that
    says nothing was trained, and state.json not marked finished."""
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", [*tiny_run(tmp_path, "big", steps=3)[:-len(SMALL) - 2], "--device", "cpu", *SMALL,
                          "--sigma", "1e29"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err
    assert "every one of the 3 steps was skipped" in err and "nothing was trained" in err
    state = json.loads((tmp_path / "out" / "sr" / "big" / "sigma-1e+29" / "state.json").read_text())
    assert state["finished"] is False


OVERFLOW_CASES = [(["--sigma", "1e300"], "sigma 1e+300 is too large for float32"),
                  (["--lr", "1e35"], "too large for float32"), (["--dc-weight", "1e300"], "too large for float32"),
                  (["--gen-width", "200000"], "need about"), (["--threads", "100000"], "--threads 100000: more")]


@pytest.mark.parametrize("extra,fragment", OVERFLOW_CASES, ids=[" ".join(e) for e, _ in OVERFLOW_CASES])
def test_values_that_overflow_are_refused_before_training(tmp_path, capsys, extra, fragment):
    refused(capsys, tmp_path, "train", flag_case(tmp_path, "train", extra), fragment)


def test_pretrained_from_another_task_is_named(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    task_checkpoint(tmp_path / "g.pt", "dehazing")
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "p", "--pretrained", str(tmp_path / "g.pt")))
    assert "g.pt: trained for dehazing; fine-tuning it for x4 super-resolution" in capsys.readouterr().err


# ----------------------------------------------------------------------------- messages that say what is wrong
def test_unclear_cases_get_messages_that_say_what_is_wrong(tmp_path, capsys):
    # an HDF5 'label' that is a group
    (tmp_path / "grp").mkdir()
    with h5py.File(tmp_path / "grp" / "a.h5", "w") as f:
        f["data"] = u8(2, 3, 32, 32)
        f.create_group("label").create_dataset("x", data=u8(2, 3, 128, 128))
    argv = ["--trainset", str(tmp_path / "grp"), "--out", str(tmp_path / "out"), "--max-steps", "1", "--batchSize", "2",
            "--device", "cpu", *SMALL]
    refused(capsys, tmp_path, "train", argv, "'label' is a group (a folder inside the file, holding: x)")
    refused(capsys, tmp_path, "inspect_h5", [str(tmp_path / "grp"), "--check", "--quiet"], "'label' is a group")
    # a link loop where a training file or a checkpoint should be
    os.symlink("loop.h5", tmp_path / "loop.h5")
    refused(capsys, tmp_path, "inspect_h5", [str(tmp_path / "loop.h5"), "--check", "--quiet"], "a symbolic-link loop")
    os.symlink("loop.pt", tmp_path / "loop.pt")
    write_photos(tmp_path / "imgs")
    refused(capsys, tmp_path, "test", ["--checkpoint", str(tmp_path / "loop.pt"), "--input", str(tmp_path / "imgs"),
                                       "--device", "cpu"], "loop.pt: a symbolic-link loop")


def test_a_training_file_held_by_a_writer_says_so(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5")
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time, h5py; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(120)", str(tmp_path / "data" / "a.h5")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        argv = ["--trainset", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--max-steps", "1",
                "--batchSize", "2", "--device", "cpu", *SMALL]
        line = refused(capsys, tmp_path, "train", argv, f"another process (PID {writer.pid}) has the file open for "
                                                         "writing")
        assert "a.h5" in line
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_names_the_intact_one_and_how_to_resume(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "d", steps=3))
    folder = tmp_path / "out" / "sr" / "d" / "sigma-10"
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:3000])
    line = refused(capsys, tmp_path, "train", ["--resume", "auto", "--name", "d", "--out", str(tmp_path / "out"),
                                               "--max-steps", "5"], "last.pt: not a checkpoint, or a damaged one")
    assert "step-00000002.pt (step 2) is intact: resume from it with python sr/train.py --resume " in line
    with _no_exit():
        train_main("sr", ["--resume", str(folder / "step-00000002.pt"), "--max-steps", "5"])
    assert json.loads((folder / "state.json").read_text())["step"] == 5


# ----------------------------------------------------------------------------- names on the terminal
# What a terminal acts on instead of showing: a title set by OSC, a line erased by CSI (in 7 bits and as
# the one-character C1 CSI), text shown backwards by a bidi override.
HOSTILE = {"title\x1b]0;owned\x07": "title\\x1b]0;owned\\x07", "erase\x1b[1A\x1b[2K": "erase\\x1b[1A\\x1b[2K",
           "csi\x9b2J": "csi\\x9b2J", "bidi\u202egnp.exe": "bidi\\u202egnp.exe"}


def terminal_controls(text: str) -> set:
    """The control characters in ``text`` other than line ends (tqdm's bars begin with a carriage return)."""
    return {c for c in text if c not in "\r\n" and (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or 0x202a <= ord(c) <= 0x202e
                                                 or 0x2066 <= ord(c) <= 0x2069)}


@pytest.mark.slow
def test_names_and_paths_reach_the_terminal_as_escapes(tmp_path, capsys):
    """Every line test.py and make_h5 write (summary rows, notes, progress bars, errors) shows a name's
    control characters as escapes."""
    names = [f"{name}.png" for name in HOSTILE]
    write_photos(tmp_path / "in", names)
    write_photos(tmp_path / "gt", names)
    ckpt = generator_checkpoint(tmp_path / "g\x1b]0;ckpt\x07.pt")
    with _no_exit():
        run_test_script("deraining", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--gt",
                                      str(tmp_path / "gt"), "--device", "cpu", "--no-lpips", "--save",
                                      str(tmp_path / "res"), "--no-report"])
    captured = capsys.readouterr()
    assert not terminal_controls(captured.out + captured.err), captured
    for shown in HOSTILE.values():
        assert f"\n{shown}: PSNR " in captured.out
    assert "g\\x1b]0;ckpt\\x07.pt (sot-checkpoint) on 4 image(s)" in captured.out
    # an error and a note that name a file
    line = refused(capsys, tmp_path, "test", ["--checkpoint", str(tmp_path / "gone\x1b[2K.pt"), "--input",
                                              str(tmp_path / "in"), "--device", "cpu"], "gone\\x1b[2K.pt")
    assert not terminal_controls(line)
    (tmp_path / "in" / "notes\x1b]0;x\x07.txt").write_text("")
    (tmp_path / "in" / "bad\x9b2K.png").write_bytes(b"")
    line = refused(capsys, tmp_path, "make_h5", ["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o.h5"),
                                                 "--patch", "8"], "bad\\x9b2K.png: not a readable image")
    err = capsys.readouterr().err
    assert not terminal_controls(line + err)


def test_line_breaks_and_tabs_in_names_stay_on_their_line(tmp_path, capsys):
    """The escaping stream keeps line breaks and tabs (its callers' own): a name's reached the terminal
    raw. An input named 'line\\nfake note.png' printed a line of its own, 'fake note: restored'; a
    leading tab printed a tab; with --gt such a name could not be paired (and the error named none);
    inspect_h5 printed a 'layout' attribute 'weird\\nfake: ok' as a second line of its header."""
    names = ["line\nfake note.png", "\tlead.png"]
    write_photos(tmp_path / "in", names, side=8)
    write_photos(tmp_path / "gt", names, side=32)
    ckpt = generator_checkpoint(tmp_path / "g.pt")
    with _no_exit():
        run_test_script("sr", ["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--gt", str(tmp_path / "gt"),
                               "--device", "cpu", "--no-lpips", "--no-report", "--save", str(tmp_path / "res")])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(": PSNR ")[0] for line in lines if ": PSNR " in line]
    assert sorted(rows) == ["\\tlead", "line\\nfake note", "mean"], lines
    assert not any(line.startswith(("fake note", "\t")) for line in lines), lines
    assert format_row({"name": "line\nfake note"}) == "line\\nfake note: restored"  # the line without --gt
    sr_trainset(tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f.attrs["layout"] = "weird\nfake: ok"
    with pytest.raises(SystemExit):  # an unknown layout: refused with --check, shown without
        ENTRY["inspect_h5"]([str(tmp_path / "d.h5")])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert "weird\\nfake: ok" in out.splitlines()[0] and not any(line.startswith("fake") for line in out.splitlines())


def test_progress_bars_still_draw_through_the_escaping_stream():
    """tqdm's own carriage returns and cursor moves between nested bars pass; a description's do not."""
    import io
    from tqdm import tqdm
    from common.system.text import EscapingStream, note

    screen = io.StringIO()
    stream = EscapingStream(screen)
    for _ in tqdm(range(2), desc="outer\x1b]0;t\x07", file=stream, mininterval=0, ncols=80):
        for _ in tqdm(range(2), desc="inner", file=stream, leave=False, mininterval=0, ncols=80):
            pass
    out = screen.getvalue()
    assert "\router\\x1b]0;t\\x07: 100%" in out and "\rinner:  50%" in out
    assert "\x1b[A" in out and not terminal_controls(out.replace("\x1b[A", ""))


# ----------------------------------------------------------------------------- names in metrics.csv
@pytest.mark.slow
def test_metrics_csv_holds_names_as_text_and_one_row_of_means(tmp_path, capsys):
    """A name a spreadsheet would take for a formula is written with a leading quote (OWASP's rule);
    numbers stay numbers. An image named 'mean' would give metrics.csv two rows of means: refused."""
    import csv

    names = ["=1+2", "@SUM(A1)", "+cmd", "-2", "tab\there", "plain"]
    write_photos(tmp_path / "in", [f"{n}.png" for n in names])
    write_photos(tmp_path / "gt", [f"{n}.png" for n in names])
    ckpt = generator_checkpoint(tmp_path / "g.pt")
    argv = ["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--gt", str(tmp_path / "gt"), "--device",
            "cpu", "--no-lpips", "--no-report"]
    with _no_exit():
        run_test_script("deraining", argv + ["--save", str(tmp_path / "res")])
    with open(tmp_path / "res" / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    written = {row[0] for row in rows[1:-1]}
    assert written == {"'=1+2", "'@SUM(A1)", "'+cmd", "'-2", "tab\\there", "plain"}, written
    assert rows[-1][0] == "mean" and all(float(cell) == float(cell) for row in rows[1:] for cell in row[1:3])
    write_photos(tmp_path / "in", ("mean.png",))
    write_photos(tmp_path / "gt", ("mean.png",))
    refused(capsys, tmp_path, "test deraining", argv + ["--save", str(tmp_path / "res2")],
            "mean.png: its row in metrics.csv would be named 'mean', as the row of the means is; rename the image")


# ----------------------------------------------------------------------------- images read as they are
def test_pages_frames_scales_and_clipped_values_are_named(tmp_path, capsys):
    """Of a 2-page TIFF, an animated WebP and an animated PNG the first frame is read, with a note; a
    float TIFF's values outside [0, 1] are clipped with a note that gives their count and range; a
    PGM/PPM is scaled by its declared largest value. Formats read right without a word stay so."""
    from PIL import Image
    from common.data.images import read_image

    first, second = (Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200))
    for name in ("pages.tif", "anim.webp", "anim.png"):
        first.save(tmp_path / name, save_all=True, append_images=[second], duration=100, lossless=True)
        assert np.allclose(read_image(tmp_path / name), 10 / 255), name
    floats = np.linspace(-1, 3, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(floats, mode="F").save(tmp_path / "hdr.tif")
    assert np.array_equal(read_image(tmp_path / "hdr.tif")[..., 0], np.clip(floats, 0, 1))
    (tmp_path / "ten.pgm").write_bytes(b"P5 2 1 1023\n" + np.array([1023, 512], ">u2").tobytes())
    (tmp_path / "low.ppm").write_bytes(b"P6\n# a comment\n1 1\n100\n" + bytes([100, 50, 0]))
    assert np.allclose(read_image(tmp_path / "ten.pgm")[0, :, 0], [1.0, 512 / 1023])
    assert np.allclose(read_image(tmp_path / "low.ppm")[0, 0], [1.0, 0.5, 0.0])
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4], rgb[4:] = (200, 30, 30), (20, 160, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    for name in ("cmyk.jpg", "palette.png"):
        with Image.open(tmp_path / name) as im:
            shown = np.asarray(im.convert("RGB")).astype(int)
        assert np.abs(np.rint(read_image(tmp_path / name) * 255) - shown).max() <= 1, name
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'pages.tif'}: holds 2 pages; only the first is read" in err
    for name in ("anim.webp", "anim.png"):
        assert f"note: {tmp_path / name}: holds 2 frames (an animation); only the first is read" in err
    assert (f"note: {tmp_path / 'hdr.tif'}: 48 of its 64 float values lie outside [0, 1] (the range seen is -1 to 3) "
            "and were clipped to [0, 1]") in err
    assert f"note: {tmp_path / 'ten.pgm'}: largest value 1023 (as its header declares), scaled to [0, 1] by 1/1023" in err
    assert "cmyk.jpg" not in err and "palette.png" not in err
