"""SOT, shared by the three tasks (sr/, deraining/, dehazing/): the map of this package.

Start with the method: ``networks`` (the generator G and the WGAN critic) and ``sot`` (the losses,
the optimisers and one training iteration, beside the paper's equations); ``recipe`` holds this
project's short-run additions to it, each off by default, and ``tasks`` what each task is (its
defaults and what its input needs before G).

- ``data/``: images, the synthetic degradations, pairing inputs with ground truth, and the HDF5
  patch files (their format, building them, inspecting them, loading them for training).
- ``training/``: a training run, in the order it happens: its configuration, the checks before
  anything is written, the loop, checkpoints, the run folder, devices.
- ``evaluation/``: restoring images and measuring them (inference, metrics, figures, reports), and the
  generator as an ONNX file.
- ``cli/``: the command lines (train.py, test.py, the shared flags, how a script ends).
- ``system/``: the operating system as the scripts meet it (errors, the terminal, signals, files).
- ``demo``: the demo, in one place (what it trains, its data, its verdict).

From any script (after ``pip install -e .``, or with the repository on ``sys.path``): ``common.restore_image``
restores an image with a checkpoint, and ``common.Restorer`` holds one loaded for many images
(``evaluation/restorer.py``).
"""

__version__ = "1.0.0"  # the one place: pyproject.toml reads it, checkpoints and run.json record it

__all__ = ["Restorer", "restore_image", "__version__"]


def __getattr__(name: str):
    # loaded when first asked for: they bring torch, which the scripts' light modules (the errors, the
    # command line's guard) do without
    if name in ("Restorer", "restore_image"):
        from .evaluation import restorer
        return getattr(restorer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
