"""The command lines: each task's ``train.py`` (``train``) and ``test.py`` (``test``), what every
script's flags share (``flags``, the gdata scripts' too) and how every script ends (``guard``: one-line
errors, stop signals, closed pipes, exit statuses).
"""
