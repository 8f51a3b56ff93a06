"""User-facing errors: one line that names the file and the problem.

Scripts catch :class:`InputError` at the top, print its message and exit with status 2 (no traceback
unless ``--debug``). Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


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
    was saved and how to resume. ``exit_code`` is what the script exits with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def note(message: str) -> None:
    """A one-line notice on stderr that does not break tqdm progress bars."""
    try:
        from tqdm import tqdm
        tqdm.write(f"note: {message}", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a requirement
        print(f"note: {message}", file=sys.stderr)
