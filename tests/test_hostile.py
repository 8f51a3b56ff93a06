"""Hostile and careless input against every entry point (train.py, test.py, gdata/*): each failure is
one line ``error: <file or flag>: <problem>`` with exit status 2, no traceback, and nothing written
or overwritten. Then the run-folder lock, the resume data check, a full disk, undecodable file
names and images too large for memory.

Table-driven: a small corpus of bad inputs is made in each test's folder, and every entry point is
called in-process through the same ``run_guarded`` as its script (subprocesses only where a real
process matters: a crash in C code, a lock held by another process).
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib

import cv2
import h5py
import numpy as np
import pytest
import torch

import common.checkpoint as checkpoint_module
from common.checkpoint import FORMAT, save_checkpoint
from common.cli import run_guarded
from common.test_cli import test_main as run_test_script
from common.runs import train_main
from common.files import RunLock
from common.networks import Generator
from conftest import (ROOT, ShellPayload, generator_checkpoint, small_nets, sr_trainset, tiny_generator,
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
        return "nan.tiff: unsupported pixel type float32"
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
                    "code in the pickle", "code in a protocol-2 pickle"]


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


# ----------------------------------------------------------------------------- where results go
def read_only(monkeypatch):
    """A read-only mount, as the probe write that checks an output folder meets it."""
    write_bytes = pathlib.Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".write-test"):
            raise OSError(errno.EROFS, "Read-only file system")
        return write_bytes(self, data)
    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)


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
                               "from common.files import RunLock; RunLock(sys.argv[2]).acquire(); "
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
        if ".pt.tmp" in str(path):
            calls["checkpoints"] += 1
            if calls["checkpoints"] > 1:  # the first checkpoint fits, the second does not
                return FullDisk(f)
        return f

    monkeypatch.setattr(checkpoint_module, "open", filling_open, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", tiny_run(tmp_path, "full", steps=3))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and not any("Traceback" in line for line in err)
    assert "No space left on device" in err[-1] and "it needs about" in err[-1] and "is free there" in err[-1]
    assert "step-00000001.pt is intact" in err[-1]
    folder = tmp_path / "out" / "sr" / "full" / "sigma-10"
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".pt") or ".tmp" in p.name) == ["step-00000001.pt"]
    assert json.loads((folder / "state.json").read_text())["checkpoint"] == "step-00000001.pt"


# Runs gdata's scripts one after another in one process whose disk fills (as ENTRY does, in-process:
# one interpreter start for all four); prints, as JSON, each one's exit status, stderr and what is
# left in the output folder. A real process: HDF5 used to crash (SIGSEGV) on a full disk.
FULL_DISK_RUNS = r"""
import contextlib, importlib.util, io, json, os, resource, signal, sys
root, out, how, runs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, root)
from common.cli import run_guarded
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
    """'4.8 MiB' (common.files.human_bytes) as bytes."""
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
    out = tmp_path / "out"
    out.mkdir()
    source = str(tmp_path / "both.h5")
    runs = [["make_h5", ["--input", str(tmp_path / "imgs"), "--out", str(out / "o.h5"), "--patch", "8", "--stride",
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
            assert "(No space left on device): it needs about " in lines[-1], lines[-1]
            needed = size_in_bytes(lines[-1].split("it needs about ")[1].split(",")[0])
            assert needed > 3 << 20, lines[-1]  # the whole file (3.7 MiB and more), not the batch that failed
            assert lines[-1].endswith(" is free there")
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
    (tmp_path / "data").mkdir()
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    with _no_exit():
        train_main("sr", tiny_run(tmp_path, "t"))
    dead = pid_no_process_can_have()
    folder = tmp_path / "out" / "sr" / "t" / "sigma-10"
    stale = [folder / f".step-00000002.pt.tmp{dead}", folder / f".state.json.tmp{dead}"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    with _no_exit():
        train_main("sr", ["--resume", "auto", "--name", "t", "--out", str(tmp_path / "out"), "--max-steps", "2"])
    assert not any(p.exists() for p in stale)
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    # and the same for a training file whose writer was killed
    orphan = tmp_path / f".o.h5.tmp{dead}"
    orphan.write_bytes(b"half a file")
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), u8(16, 16, 3))
    with _no_exit():
        ENTRY["make_h5"](["--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"), "--patch", "8", "--quiet"])
    assert not orphan.exists() and (tmp_path / "o.h5").is_file()


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
    import common.inference as inference
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
    "a FIFO named like an image", "a sparse 1 TB file named like an image", "an input folder that is a link loop"]


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
    from common.images import read_image

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
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_test_py_leaves_no_results_folder(tmp_path, sig):
    """Stopped while its restored images are half written: the staged ones go, the results folder it
    made goes, one line says so, and the exit status is 128 + the signal."""
    write_photos(tmp_path / "photos", [f"{i:02d}.png" for i in range(60)], side=96)
    ckpt = task_checkpoint(tmp_path / "g.pt", "deraining")
    before = snapshot(tmp_path)
    save = tmp_path / "out" / "res"
    last = stopped_by(sig, ["deraining/test.py", "--checkpoint", str(ckpt), "--input", str(tmp_path / "photos"),
                            "--save", str(save), "--device", "cpu"],
                      when=lambda: any(save.glob(".staging.tmp*/*.png")))
    assert last.startswith(f"stopped by {signal.Signals(sig).name}: removed the ") and "unfinished result file(s)" in last
    assert snapshot(tmp_path) == before  # no out/, no out/res/, the photographs untouched


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_make_h5_removes_its_temporary_and_folders(tmp_path, sig):
    write_photos(tmp_path / "imgs", [f"{i:02d}.png" for i in range(40)], side=256)
    before = snapshot(tmp_path)
    out = tmp_path / "new" / "deeper" / "o.h5"
    last = stopped_by(sig, ["gdata/make_h5.py", "--input", str(tmp_path / "imgs"), "--out", str(out), "--patch", "16",
                            "--stride", "4", "--degrade", "rain-light", "--batch", "64"],
                      when=lambda: any(out.parent.glob(".o.h5.tmp*")), then=0.2)  # well inside the writing
    assert last.startswith(f"stopped by {signal.Signals(sig).name}: removed the unfinished .o.h5.tmp"), last
    assert f"and the folder {tmp_path / 'new'} made for it" in last
    assert snapshot(tmp_path) == before


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
    from common.images import image_size, read_image

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
