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
from common.errors import InputError
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
    raise ValueError(case)


H5_CASES = {
    # case: (train, inspect_h5 --check, merge_h5, make_h5 --convert)
    "1 channel": ("1 channel(s)", "1 channel(s)", None, None),
    "4 channels": ("4 channel(s)", "4 channel(s)", None, None),
    # refused from its header: a scan of its 3 TB (of fill values) would not end, so no clock is needed
    "declares 10^9 patches": ("declares 1000000000 rows",) * 4,
    "declares 60000x60000 patches": ("far larger than a training patch",) * 4,
    "never filled": ("never filled",) * 4,
    "int16": ("dtype int16",) * 4,
    "bool": ("dtype bool",) * 4,
    "NaN": ("NaN",) * 4,
    "not HDF5": ("not a readable HDF5 file",) * 4,
    "truncated": ("x.h5",) * 4,
    "layout attribute of raw bytes": ("unknown layout attribute '\\xff\\xfe'",) * 3 + (None,),
    "a folder named .h5": ("x.h5: a folder, not an .h5 file",) * 4,
}
H5_ENTRIES = ("train", "inspect_h5", "merge_h5", "convert")


@pytest.mark.parametrize("case", H5_CASES)
def test_bad_h5_files_at_every_entry_point(tmp_path, capsys, case):
    path = bad_h5(case, tmp_path / "x.h5")
    out = tmp_path / "out"
    # train and inspect get the folder, as users give them: its *.h5 files are x.h5
    argvs = {"train": ["--trainset", str(tmp_path), "--out", str(out), "--max-steps", "1", "--batchSize", "2",
                       "--device", "cpu", *SMALL],
             "inspect_h5": [str(tmp_path), "--check", "--quiet"],
             "merge_h5": ["--data", str(path), "--label", str(path), "--out", str(out / "m.h5"), "--quiet"],
             "convert": ["--convert", str(path), "--out", str(out / "c.h5"), "--layout", "ours", "--quiet"]}
    for entry, fragment in zip(H5_ENTRIES, H5_CASES[case]):
        if fragment is None:
            continue
        line = refused(capsys, tmp_path, "make_h5" if entry == "convert" else entry, argvs[entry], fragment)
        assert "x.h5" in line, line


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
        if pathlib.Path(path).name.startswith(".sot-tmp-") and str(path).endswith(".pt"):
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
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".pt") or "tmp" in p.name) == ["step-00000001.pt"]
    assert json.loads((folder / "state.json").read_text())["checkpoint"] == "step-00000001.pt"


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
    "the report's folder holds a file of the user's, with --overwrite"]


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
                      when=lambda: any(save.glob(".sot-tmp-*-staging/*.png")))
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
