"""SIGINT, SIGTERM and SIGHUP, as the scripts take them: the one place that installs handlers for them.

SIGHUP (the terminal gone: an ssh connection dropped) stops a script as SIGTERM does, with the same
clean-up and status (129), unless the script was started with it ignored (``nohup``): then it stays
ignored, as asked.

Two ways to stop, chosen by what a script does when a stop comes:

- :class:`StopRequest` (training): the signal is a request that the loop honours after the current
  step, saving a checkpoint first; a second Ctrl-C stops at once.
- :class:`RaiseOnStopSignals` (``test.py``, ``gdata/``): the signal raises :class:`Interrupted`
  where it lands, so that each ``with`` block on the way out removes what it had half-written.

And one way to hold a stop back: :func:`stop_signals_held`, around what must not be cut in two (the
renames of a commit, a call into HDF5).
"""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

from tqdm import tqdm

from .errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# The stop signal received and not yet acted on. A signal handler's exception can be lost: raised
# while Python runs a __del__ or a C extension's callback, it is printed as "ignored" and the code
# goes on. So the loops that write also look here, between two writes (check_interrupted).
_pending_stop: list[int] = []


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a stop signal came and its exception was lost on the way."""
    if _pending_stop:
        raise Interrupted(_pending_stop[0])


def on_stop_signals(handler) -> dict:
    """Route the stop signals to ``handler``; returns the previous handlers for
    :func:`restore_signal_handlers`. Outside the main thread signals are left alone, and so is a
    SIGHUP that the script was started to ignore (``nohup``)."""
    previous = {}
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def stop_signals_held():
    """Stop signals that arrive inside the block reach their handlers as it ends, not inside
    it: a few renames that belong together are never cut in two, and a handler's exception never
    lands inside HDF5, which calls back into Python to write (a failed write there). Whatever the
    handler is (:class:`RaiseOnStopSignals`, :class:`StopRequest`, Python's own); blocks nest."""
    held: list[int] = []
    previous = {}
    try:
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: set outside Python, left alone
                previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread, whose handlers these are
        pass
    try:
        yield
    finally:
        restore_signal_handlers(previous)
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(held[0])


class RaiseOnStopSignals:
    """The stop signals raise :class:`Interrupted` (once: a second signal during the clean-up is
    ignored, the clean-up takes milliseconds); the previous handlers come back on exit."""

    def __enter__(self):
        self.raised = False
        self.previous = on_stop_signals(self._handle)
        # A raise that lands in a __del__ or weakref callback is lost ("Exception ignored in ...", with a
        # traceback): say nothing of it, check_interrupted raises it again at the next write.
        self.unraisable = sys.unraisablehook
        sys.unraisablehook = lambda info: None if isinstance(info.exc_value, Interrupted) else self.unraisable(info)
        return self

    def _handle(self, signum, frame):
        if self.raised:
            return
        self.raised = True
        _pending_stop.append(signum)  # for check_interrupted, should this exception be lost
        raise Interrupted(signum)

    def __exit__(self, *exc):
        restore_signal_handlers(self.previous)
        sys.unraisablehook = self.unraisable
        _pending_stop.clear()


class StopRequest:
    """Turns a stop signal (SIGINT, SIGTERM, SIGHUP) into a request that the loop honours after the
    current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        self._previous = on_stop_signals(self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        tqdm.write(f"{name} received: finishing this step and saving (Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        restore_signal_handlers(self._previous)
