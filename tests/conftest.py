"""Shared test helpers. Everything runs on the CPU with small data made here."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores, so each computes on one thread, and so do the scripts
    # they start (two threads per worker on two cores made the in-process training tests 7x slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_configure(config):
    # python -m pytest -q -m "not slow" tests: the edit-test loop's tier, under a minute on two cores
    config.addinivalue_line("markers", "slow: takes a second or more (processes, training runs, scripts)")
    # tests/test_cuda.py: skipped without CUDA; bench/gpu_check.sh runs them on a GPU
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; "
                                       "SOT_CUDA_TEST_DEVICE=cpu rehearses them on the CPU)")


def write_h5(path: Path, data: np.ndarray | None, label: np.ndarray | None, **attrs) -> Path:
    """A training file in our layout; ``None`` leaves that dataset out (a damaged file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, values in (("data", data), ("label", label)):
            if values is not None:
                f.create_dataset(name, data=values)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def sr_trainset(path: Path, n: int = 2, seed: int = 0) -> Path:
    """An x4 SR training file of ``n`` random uint8 patches a side: degraded 32x32, clean 128x128."""
    rng = np.random.default_rng(seed)
    return write_h5(path, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8))


def small_nets(gen_width: int = 8) -> list[str]:
    """train.py flags for networks small enough that a CPU trains a step in well under a second."""
    return ["--gen-width", str(gen_width), "--gen-increment", "8", "--critic-width", "8", "--no-tensorboard"]


def tiny_generator():
    """A seeded 8-wide generator: the same weights in every test that asks for one."""
    from common.networks import Generator

    torch.manual_seed(0)
    return Generator(width=8, increment=8)


def generator_checkpoint(path: Path, generator=None, **fields) -> Path:
    """``generator`` (default :func:`tiny_generator`) saved as one of our checkpoints, with ``fields``."""
    from common.training.checkpoint import save_checkpoint

    g = tiny_generator() if generator is None else generator
    save_checkpoint(path, {"arch": {"generator": g.arch}, "generator": g.state_dict(), **fields})
    return path


def write_photos(folder: Path, names=("a.png", "b.png", "c.png"), side: int = 16, seed: int = 0,
                 wider: int = 0) -> Path:
    """Random side x (side + wider) colour images, each encoded as its name's suffix says (a user's
    own files: tests that hand them to test.py check that they survive)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        ok, encoded = cv2.imencode(Path(name).suffix, rng.integers(0, 256, (side, side + wider, 3), dtype=np.uint8))
        (folder / name).write_bytes(encoded.tobytes())
    return folder


class ShellPayload:
    """Unpickled, it would run a shell command that leaves ``marker`` behind: whether it ran can be seen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the task scripts as a user would, from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def authors_module(tmp_path, monkeypatch):
    """The ``srresnet_unet2`` module of tests/authors_module.py, importable only inside the test."""
    from authors_module import SOURCE

    folder = tmp_path / "authors_code"
    folder.mkdir()
    (folder / "srresnet_unet2.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("srresnet_unet2")
    yield module
    sys.modules.pop("srresnet_unet2", None)


@pytest.fixture
def authors_checkpoint(tmp_path, authors_module):
    """A file in the authors' format: whole pickled _NetG/_NetD modules under model/discr.

    Returns (path, netG, netD). The module is removed from sys.modules once written, so loading it
    cannot fall back on importing the authors' code.
    """
    torch.manual_seed(3)
    net_g, net_d = authors_module._NetG(in_c=3, out_c=3), authors_module._NetD(in_c=3)
    with torch.no_grad():  # non-trivial values everywhere, the shared PReLU slope included
        for p in net_g.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "model_pre_super4_200_50.pth"
    torch.save({"epoch": 200, "model": net_g, "discr": net_d}, path)
    sys.modules.pop("srresnet_unet2", None)
    return path, net_g, net_d
