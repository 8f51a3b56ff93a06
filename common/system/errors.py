"""The errors a script ends with, and the exit statuses they map to.

:class:`InputError` is bad input from the user: scripts catch it at the top, print its message as one
line that names the file and the problem, and exit with status 2 (no traceback unless ``--debug``).
Anything else that escapes is a bug and keeps its traceback. How a message is shown is
``common.system.text``; how the scripts turn these into exit statuses is ``common.cli.guard``.
"""
from __future__ import annotations

import signal

EXIT_BAD_INPUT = 2
# What a shell reports for a program whose reader went away (SIGPIPE): ``... | head -1``.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class InputError(Exception):
    """Bad input from the user: a file, folder, flag or checkpoint that cannot be used as given."""

    def __str__(self) -> str:
        text = super().__str__()
        # Raised in a DataLoader worker, it comes back with the worker's traceback in its message:
        # keep the original one line.
        marker = "InputError: "
        if text.startswith("Caught InputError") and marker in text:
            return text.rsplit(marker, 1)[1].strip()
        return text


class TrainingStopped(Exception):
    """A run stopped early on purpose (a signal, or too many non-finite steps); the message says what
    was saved and how to resume, in ``lines`` (a message of several is given as a tuple of them: a line
    break inside one is a path's, shown escaped). ``exit_code`` is what the script exits with."""

    def __init__(self, message: str | tuple[str, ...], exit_code: int):
        self.lines = (message,) if isinstance(message, str) else tuple(message)
        super().__init__("\n".join(self.lines))
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP in a script that writes files (``test.py``, ``gdata/``), raised where the
    signal lands so that each ``with`` block on the way out removes what it had half-written and
    says so in ``cleaned``. A BaseException, like KeyboardInterrupt: ``except Exception`` must not
    swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.cleaned: list[str] = []
        self.completed: list[str] = []  # what was finished whole before the stop (results moved into place)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
