"""pytest's own setup: the threads each test computes on, and the fixtures. The plain helpers that
tests share are tests/helpers.py. Everything runs on the CPU with small data made here."""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from authors_module import SOURCE

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores, so each computes on one thread, and so do the scripts
    # they start (two threads per worker on two cores made the in-process training tests 7x slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def authors_module(tmp_path, monkeypatch):
    """The ``srresnet_unet2`` module of tests/authors_module.py, importable only inside the test."""
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
