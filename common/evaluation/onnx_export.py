"""The generator as an ONNX file, for restoring images outside Python (onnxruntime, OpenCV's dnn,
chaiNNer): what test.py's ``--export-onnx`` writes.

The file takes what a user has, an 8-bit photograph scaled to [0, 1], and gives the restored image:
SR's x4 bicubic upsampling (``tasks.model_input``, PyTorch's kernel, which ONNX's Resize computes to
float32 round-off) and the clamp to [0, 1] that test.py applies before writing are in the graph.
Batch, height and width are dynamic; the generator pads to a multiple of 4 and crops back inside
the graph as in PyTorch. Before the file is written, onnxruntime runs it on a few sizes (an odd one,
one of a multiple of 4, a batch of two) against PyTorch, and a file that differs is refused.
"""
from __future__ import annotations

import importlib.util
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..networks import GENERATOR_MULTIPLE
from ..system.errors import InputError
from ..system.files import atomic_write, check_can_write, remove_stale_temporaries, same_file, write_failure
from ..tasks import Task, model_input

# What onnxruntime may differ from PyTorch by, at most, on images in [0, 1]: fp32 round-off through
# the network (measured up to 5.5e-6, with SR's align_corners=True upsampling; 3.6e-7 without), far
# below an 8-bit level (3.9e-3).
TOLERANCE = 1e-4
# The sizes of the generator's input that the file is checked on: odd and not a multiple of the
# generator's 4 (padded inside the graph), then a multiple of 4 (nothing padded) in a batch of two.
CHECK_SIZES = ((1, 37, 53), (2, 32, 20))
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportedGenerator(nn.Module):
    """What the ONNX file computes: the task's input preparation, G (with its height and width swapped
    around it where ``transpose``), and the clamp to [0, 1]."""

    def __init__(self, generator: nn.Module, task: Task, upsample: bool, align_corners: bool, transpose: bool):
        super().__init__()
        self.generator, self.task = generator, task
        self.upsample, self.align_corners, self.transpose = upsample, align_corners, transpose

    @property
    def scale(self) -> int:
        return self.task.scale if self.upsample else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = model_input(self.task, x, self.align_corners)
        if self.transpose:
            return self.generator(x.transpose(-1, -2)).transpose(-1, -2).clamp(0, 1)
        return self.generator(x).clamp(0, 1)


@dataclass
class ExportCheck:
    """How the file compared with PyTorch: its input sizes (N, H, W) and the largest difference."""
    sizes: list[tuple[int, int, int]]
    max_difference: float
    runtime: str


def check_export_path(path: Path, overwrite: bool, checkpoint: Path) -> None:
    """Refuse, before any work, a path the ONNX file may not be written to: a name without .onnx, the
    checkpoint itself, a folder, a link, an existing file (unless ``overwrite``), a folder that cannot
    be written."""
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: the ONNX file's name must end in .onnx (onnxruntime, OpenCV and chaiNNer "
                         "know the format by it)")
    if same_file(path, checkpoint):
        raise InputError(f"{path}: is the checkpoint it would be exported from; give the ONNX file another name")
    if path.is_symlink():
        raise InputError(f"{path}: a symbolic link; give the path of the file itself")
    if path.is_dir():
        raise InputError(f"{path}: a folder; give a file name ending in .onnx")
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file; give another name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; give --overwrite to replace it, or another name")
    check_can_write(path.parent, "folder of the ONNX file")


def import_exporter():
    """onnxruntime, once the packages the export needs are known to be there (one line where not)."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"--export-onnx needs the Python package(s) {', '.join(missing)}: "
                         "pip install -r requirements.txt")
    if "dynamic_shapes" not in inspect.signature(torch.onnx.export).parameters or not hasattr(torch.export.Dim,
                                                                                                 "DYNAMIC"):
        raise InputError(f"--export-onnx needs torch's torch.export-based ONNX exporter with dynamic shapes, which "
                         f"torch {torch.__version__} lacks; it was tested with torch 2.14")
    # imported here, not at the top: onnxruntime is needed only by --export-onnx
    import onnxruntime
    return onnxruntime


def to_onnx(model: ExportedGenerator) -> bytes:
    """The model as an ONNX file's bytes: input ``input`` and output ``output``, N x 3 x H x W float32,
    their batch, height and width dynamic and named."""
    dynamic = torch.export.Dim.DYNAMIC
    # a batch of two: torch.export would take a batch of one for a constant
    example = torch.rand(2, 3, 37, 53)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(model.eval(), (example,), None, dynamo=True, verbose=False,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},))
    proto = program.model_proto
    scaled = f"{model.scale}*" if model.scale > 1 else ""
    for value, names in ((proto.graph.input[0], ("batch", "height", "width")),
                         (proto.graph.output[0], ("batch", f"{scaled}height", f"{scaled}width"))):
        dims = value.type.tensor_type.shape.dim
        for axis, name in zip((0, 2, 3), names):
            dims[axis].Clear()
            dims[axis].dim_param = name
    proto.doc_string = "\n".join(describe(model))
    return proto.SerializeToString()


@torch.no_grad()
def check_against_pytorch(model: ExportedGenerator, onnx_bytes: bytes, onnxruntime) -> ExportCheck:
    """Run the file with onnxruntime on :data:`CHECK_SIZES` (of G's input) and compare with ``model``;
    an InputError where they differ by more than :data:`TOLERANCE`."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    sizes, worst = [], 0.0
    for n, h, w in CHECK_SIZES:
        size = (n, h // model.scale, w // model.scale)
        x = torch.rand(n, 3, *size[1:], generator=generator)
        expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if got.shape != expected.shape:
            raise InputError(f"the exported file gives a {got.shape} output for a {tuple(x.shape)} input where "
                             f"PyTorch gives {expected.shape}; nothing was written")
        difference = float(np.abs(got - expected).max())
        if not difference <= TOLERANCE:
            raise InputError(f"the exported file differs from PyTorch by {difference:.2g} on a {size[2]}x{size[1]} "
                             f"input (more than float32 round-off, {TOLERANCE:g}); nothing was written")
        sizes.append(size)
        worst = max(worst, difference)
    return ExportCheck(sizes, worst, f"onnxruntime {onnxruntime.__version__}")


def describe(model: ExportedGenerator) -> list[str]:
    """What the file expects and gives, for its user."""
    s = model.scale
    if model.upsample:
        given = (f"the low-resolution image itself: the file upsamples it x{s} (bicubic, PyTorch's kernel, "
                 f"align_corners={model.align_corners}) before the generator, as test.py does")
    elif model.task.scale > 1:
        given = (f"the low-resolution image already upsampled x{model.task.scale} to the output size (--prescaled): "
                 "the file holds the generator alone")
    else:
        given = "the degraded image"
    out = f"N x 3 x {s}H x {s}W" if s > 1 else "N x 3 x H x W"
    least = 1 if model.upsample else GENERATOR_MULTIPLE - 1  # reflection pads G's input by up to 3
    return [f"input 'input': N x 3 x H x W float32, RGB (not OpenCV's BGR) in [0, 1] (8-bit values / 255), any "
            f"N and any H and W of {least} pixel{'s' if least > 1 else ''} or more; {given}",
            f"output 'output': {out} float32, RGB, already clamped to [0, 1]: multiply by 255 and round for 8-bit"
            + (" (height and width swapped around the generator inside the file, as --transpose asks)"
               if model.transpose else "")]


def export_onnx(model: ExportedGenerator, path: Path, overwrite: bool) -> ExportCheck:
    """Write ``model`` to ``path`` as ONNX, checked against PyTorch first; atomically, and never over a
    file that appeared at ``path`` meanwhile unless ``overwrite``."""
    onnxruntime = import_exporter()
    onnx_bytes = to_onnx(model)
    check = check_against_pytorch(model, onnx_bytes, onnxruntime)
    remove_stale_temporaries(path.parent, [path.name])  # a killed export's, beside the file
    try:
        atomic_write(path, lambda f: f.write(onnx_bytes), replace=overwrite)
    except FileExistsError:
        raise InputError(f"{path}: appeared while the file was exported; give --overwrite to replace it, or "
                         "another name") from None
    except OSError as exc:
        raise InputError(write_failure(path, exc, len(onnx_bytes), "ONNX file")) from None
    return check
