"""test.py --export-onnx: the generator as an ONNX file that onnxruntime runs as PyTorch does, written
only where the user asked for it."""
from __future__ import annotations

import re

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from common.cli.test import test_main as run_test_script
from common.tasks import TASKS, model_input
from helpers import ROOT, generator_checkpoint, tiny_generator


def export(capsys, task: str, *argv: str) -> tuple[int, str, str]:
    """test.py with ``argv`` in this process: (exit status, stdout, stderr)."""
    try:
        run_test_script(task, list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.slow
def test_export_runs_in_onnxruntime_as_in_pytorch(tmp_path, capsys):
    ckpt = generator_checkpoint(tmp_path / "g.pt", task="deraining")
    path = tmp_path / "out" / "g.onnx"
    code, out, err = export(capsys, "deraining", "--checkpoint", str(ckpt), "--export-onnx", str(path))
    assert code == 0, err
    assert "largest difference" in out and "RGB (not OpenCV's BGR) in [0, 1]" in out and "clamped" in out
    model = onnx.load(str(path))
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(model.graph.output[0]) == ["batch", 3, "height", "width"]
    generator = tiny_generator().eval()
    torch.manual_seed(1)
    # odd and not a multiple of the generator's 4 (padded inside the graph), then a batch of two
    for x in (torch.rand(1, 3, 37, 53), torch.rand(2, 3, 24, 18)):
        with torch.no_grad():
            expected = generator(x).clamp(0, 1).numpy()
        got = run_onnx(path, x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5
    if int(cv2.__version__.split(".")[0]) >= 5:  # OpenCV's dnn reads the file too (4.x's is not claimed)
        net = cv2.dnn.readNetFromONNX(str(path))
        net.setInput(x[:1].numpy())
        assert np.abs(net.forward() - expected[:1]).max() < 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.onnx"]  # no temporary left beside it


def documented_use() -> str:
    """docs/TESTING.md's example of the file's use from Python."""
    text = (ROOT / "docs" / "TESTING.md").read_text()
    return next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "InferenceSession" in block)


@pytest.mark.slow
def test_authors_checkpoint_exports_with_the_upsampling_inside(tmp_path, capsys, authors_checkpoint, monkeypatch):
    ckpt, net_g, _ = authors_checkpoint
    path = tmp_path / "sr_x4.onnx"
    path.write_bytes(b"an earlier export")
    code, out, err = export(capsys, "sr", "--checkpoint", str(ckpt), "--export-onnx", str(path), "--overwrite")
    assert code == 0, err
    assert "upsamples it x4" in out
    assert dims(onnx.load(str(path)).graph.output[0]) == ["batch", 3, "4*height", "4*width"]
    x = torch.rand(1, 3, 9, 13)  # the low-resolution image: odd sides
    with torch.no_grad():  # the authors' own network on PyTorch's bicubic upsampling
        expected = net_g.eval()(model_input(TASKS["sr"], x)).clamp(0, 1).numpy()
    got = run_onnx(path, x)
    assert got.shape == (1, 3, 36, 52)
    assert np.abs(got - expected).max() < 1e-5
    monkeypatch.chdir(tmp_path)  # the documented use restores photo.png into restored.png, 4x larger
    cv2.imwrite("photo.png", (x[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8))
    exec(documented_use(), {})
    assert cv2.imread("restored.png").shape == (36, 52, 3)


def refusal_case(tmp_path, case: str) -> tuple[list[str], str]:
    """(test.py's flags, a fragment of the one line that refuses them) for each way --export-onnx is refused
    before any work."""
    target = tmp_path / "g.onnx"
    if case == "an existing file":
        target.write_bytes(b"the user's own")
        return ["--export-onnx", str(target)], "already exists; give --overwrite"
    if case == "a name without .onnx":
        return ["--export-onnx", str(tmp_path / "g.pt")], "must end in .onnx"
    if case == "a folder":
        target.mkdir()
        return ["--export-onnx", str(target)], "a folder"
    if case == "under a file":
        (tmp_path / "file").write_bytes(b"")
        return ["--export-onnx", str(tmp_path / "file" / "g.onnx")], "cannot write the folder of the ONNX file"
    if case == "a flag it would not use":
        return ["--export-onnx", str(target), "--input", str(tmp_path)], "--input"
    assert case == "bf16"
    return ["--export-onnx", str(target), "--precision", "bf16"], "computes in float32"


@pytest.mark.parametrize("case", ["an existing file", "a name without .onnx", "a folder", "under a file",
                                  "a flag it would not use", "bf16"])
def test_export_refused_in_one_line_before_any_work(tmp_path, capsys, case):
    ckpt = generator_checkpoint(tmp_path / "ckpt.pt")
    argv, fragment = refusal_case(tmp_path, case)
    before = {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()}
    code, out, err = export(capsys, "deraining", "--checkpoint", str(ckpt), *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and fragment in err, err
    assert {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()} == before

