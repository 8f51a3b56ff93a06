"""Training data and images: what goes into a run and what comes out of a test.

``images`` reads and writes images (every format, bit depth and frame count refused or noted in one
line); ``degrade`` makes the synthetic degradations; ``pairs`` pairs inputs with their ground truth by
name. The HDF5 patch files: ``patch_file`` is their format and its rules (opening, checking, the
writer), ``building`` makes, converts and merges them (``gdata/``), ``inspection`` is what
``gdata/inspect_h5.py`` shows and what its ``--check`` refuses, and ``loader`` feeds them to training,
unpaired.
"""
