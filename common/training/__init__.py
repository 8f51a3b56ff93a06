"""A training run, in the order it happens.

``config`` is what a run is asked for (:class:`RunConfig`, one typed field per flag), what the machine
made of it, ``run.json`` and resume planning; ``preflight`` checks everything that can refuse the run
before anything is written; ``loop`` trains each sigma; ``checkpoint`` reads and writes checkpoints
(ours and the authors'), ``run_folder`` is what a run folder holds, and ``devices`` the device,
precision, processes and random states a run uses.
"""
