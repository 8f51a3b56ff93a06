"""User-facing errors: one line that names the file and the problem.

Scripts catch :class:`InputError` at the top, print its message and exit with status 2 (no traceback
unless ``--debug``). Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user: a file, folder, flag or checkpoint that cannot be used as given."""


def note(message: str) -> None:
    """A one-line notice on stderr that does not break tqdm progress bars."""
    try:
        from tqdm import tqdm
        tqdm.write(f"note: {message}", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a requirement
        print(f"note: {message}", file=sys.stderr)
