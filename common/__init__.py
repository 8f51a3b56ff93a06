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
"""
