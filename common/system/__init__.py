"""The operating system as the scripts meet it: the errors they end with (``errors``), how names and
messages are shown (``text``), the stop signals (``signals``) and the file system (``files``).

Light on purpose: nothing here imports torch, so that a lock can be taken and a folder checked before
anything heavy loads.
"""
