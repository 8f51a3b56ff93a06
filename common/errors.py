"""User-facing errors: one line that names the file and the problem.

Scripts catch :class:`InputError` at the top, print its message and exit with status 2 (no traceback
unless ``--debug``). Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

import codecs
import contextlib
import sys

EXIT_BAD_INPUT = 2


def printable(text: str, one_line: bool = True) -> str:
    """``text`` safe to print or store as UTF-8, on one line (unless not ``one_line``).

    File names that are not valid UTF-8 reach Python as surrogate escapes (PEP 383); printed as they
    are they raise UnicodeEncodeError. Their bytes are shown as ``\\xff`` escapes instead, and line
    breaks as ``\\n``, so that an error stays one line whatever a file is called.
    """
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n") if one_line else text


def _escape_unencodable(exc: UnicodeError):
    """Codec error handler ``sot-printable``: what a stream cannot encode, as escapes (see :func:`printable`)."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    escaped = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                      else c.encode("ascii", "backslashreplace").decode("ascii") for c in bad)
    return escaped, exc.end


codecs.register_error("sot-printable", _escape_unencodable)


def tolerant_streams() -> None:
    """Let stdout and stderr print any file name (undecodable bytes as ``\\xff``) instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="sot-printable")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture, a pipe wrapper)
            pass


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


class Interrupted(BaseException):
    """SIGINT or SIGTERM in a script that writes files (``test.py``, ``gdata/``), raised where the
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


# The stop signal received and not yet acted on. A signal handler's exception can be lost: raised
# while Python runs a __del__ or a C extension's callback, it is printed as "ignored" and the code
# goes on. So the loops that write also look here, between two writes (check_interrupted).
_pending_stop: list[int] = []


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a stop signal came and its exception was lost on the way."""
    if _pending_stop:
        raise Interrupted(_pending_stop[0])


_deferring = 0  # inside stop_signals_deferred: a stop signal waits for the end of the block


@contextlib.contextmanager
def stop_signals_deferred():
    """A stop signal that arrives inside the block is raised at its end instead (by
    :func:`check_interrupted`): a few renames that belong together are never cut in two."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        check_interrupted()


def on_stop_signals(handler) -> dict:
    """Route SIGINT and SIGTERM to ``handler``; returns the previous handlers for
    :func:`restore_signal_handlers`. Outside the main thread signals are left alone."""
    import signal

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore_signal_handlers(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)


def close_progress_bars() -> None:
    """Close the progress bars an error interrupted, so that its line starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down already: nothing to clear
            pass


def note(message: str) -> None:
    """A one-line notice on stderr that does not break tqdm progress bars."""
    try:
        from tqdm import tqdm
        tqdm.write(f"note: {printable(message)}", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a requirement
        print(f"note: {printable(message)}", file=sys.stderr)
