"""What every script's command line shares: typed flag values, one-line argparse errors, the device
flags, and ``run_guarded``, which turns bad input into one line and exit status 2. The task scripts'
own command lines are ``common.training.config`` (train.py, built from the run configuration) and
``common.test_cli``."""
from __future__ import annotations

import argparse
import signal
import sys
import textwrap

from .data.patch_file import LAYOUT_CHOICES
from .system.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, InputError, Interrupted, TrainingStopped
from .system.signals import RaiseOnStopSignals
from .system.text import close_progress_bars, escaping_streams, printable


# Training runs in float32 (bf16 under autocast), whose largest number is 3.4e38: a weight or rate
# near it makes every loss it multiplies overflow, and each step would be skipped as non-finite.
# 1e30 is far beyond any sensible value and leaves a product with a loss of up to 1e8 finite.
TRAINING_LIMIT = 1e30
# float32's smallest normal number: below it a rate or weight is a subnormal (precision lost, and
# slow on CPUs) or, up to 7e-46, 0 itself (--lr 1e-320 would train nothing without a word).
FLOAT32_TINY = 2.0 ** -126


def _in_training_range(value: float, token: str, what: str, zero: bool = True) -> float:
    """``value`` where float32 training arithmetic holds it (``zero``: 0 is a value of its own, off)."""
    if value > TRAINING_LIMIT:
        raise argparse.ArgumentTypeError(f"{what} {token} is too large for float32 training arithmetic (every loss "
                                         f"it multiplies would overflow); give at most {TRAINING_LIMIT:g}")
    if 0 < value < FLOAT32_TINY:
        held = "0" if value <= 2.0 ** -150 else "a subnormal number"
        raise argparse.ArgumentTypeError(f"{what} {token} is too small for float32 training arithmetic (float32 holds "
                                         f"it as {held}); give {'0 or ' if zero else ''}at least {FLOAT32_TINY:.4g}")
    return value


def sigma_list(token: str) -> list[float]:
    """One ``--sigma`` token: ``100``, ``100,50`` or the reference's ``[100,50,30,10]``."""
    parts = token.strip().strip("[]()").replace(",", " ").split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or list of numbers: {token!r}") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"sigma must be finite and non-negative: {token!r}")
    for v in values:
        _in_training_range(v, f"{v:g}", "sigma")
    return values


def positive_int(token: str) -> int:
    value = int(token)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(token: str) -> int:
    value = int(token)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed_int(token: str) -> int:
    """A seed: torch and NumPy take 0 to 2^32 - 1 alike (larger ones overflow the samplers' seeds)."""
    value = int(token)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^32), got {value}")
    return value


def _float(token: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {token!r}") from None


def finite_positive_float(token: str) -> float:
    value = _float(token)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {token!r}")
    return _in_training_range(value, token, "the value", zero=False)


def finite_non_negative_float(token: str) -> float:
    value = _float(token)
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {token!r}")
    return _in_training_range(value, token, "the value")


def decay(token: str) -> float:
    """A moving average's decay per step: 0 (off) or a number in (0, 1)."""
    value = _float(token)
    if not (0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), e.g. 0.995; got {token!r}")
    return _in_training_range(value, token, "the decay")


def run_name(token: str) -> str:
    """``--name``: one folder inside ``--out``; a path that leaves it (``../x``, ``/x``) is refused."""
    if not token or token in (".", "..") or "/" in token or "\\" in token or "\0" in token:
        raise argparse.ArgumentTypeError(f"{printable(token)!r} must be a plain folder name inside --out "
                                         "(no '/', '..' or empty name)")
    return token


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <flag>: <problem>``, and exit status 2 like any
    other bad input (argparse's own would print the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {printable(message)} (see {self.prog} --help)\n")


DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp32")


def common_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--gpus``, ``--precision`` and ``--debug``."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to run; auto takes CUDA when available (default: %(default)s)")
    parser.add_argument("--gpus", default=None, metavar="IDS",
                        help="GPU ids to expose, as CUDA_VISIBLE_DEVICES (e.g. '0' or '0,1')")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="network arithmetic; auto is bf16 autocast on CUDA and fp32 on the CPU "
                             "(the transport cost and gradient-penalty norm are always fp32)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


# ----------------------------------------------------------------------------- the scripts' shared flags
def script_parser(prog: str, description: str, examples: str):
    """An argparse parser for a gdata/ script, its examples shown verbatim after the flags."""
    return OneLineParser(prog=prog, description=textwrap.fill(description, 100), epilog=examples,
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def add_script_flags(parser, layout_help: str, layout_group=None) -> None:
    """``--layout``, ``--quiet`` and ``--debug``, which every gdata/ script takes."""
    (layout_group or parser).add_argument("--layout", choices=LAYOUT_CHOICES, default="auto", help=layout_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


def run_guarded(main, argv, debug_flag: str = "--debug", writes_files: bool = False) -> None:
    """Run ``main(argv)``; an InputError becomes one line on stderr and exit status 2, a deliberate
    stop its message and its own status (128 + the signal, or 3 for a diverged run).

    ``writes_files`` (test.py, gdata/): SIGINT and SIGTERM stop the script where it is; what it had
    half-written is removed on the way out, one line says what, and the status is 130 or 143.

    A reader that goes away (``test.py | head -1``) ends the script quietly, as SIGPIPE ends other
    command-line tools: no traceback, status 141; what it was writing is cleaned up on the way out."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        _run_guarded(main, argv, debug_flag, writes_files)
        sys.stdout.flush()  # what a pipe's buffer still holds is written now, where a closed pipe can be caught
    except BrokenPipeError:
        if not _silence_closed_output():
            raise  # not this process's own output: a bug, with its traceback
        sys.exit(EXIT_BROKEN_PIPE)
    except SystemExit:
        try:  # the exit would flush stdout again, and print a closed pipe's error as "Exception ignored"
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_closed_output()
        raise


def _silence_closed_output() -> bool:
    """Point stdout and stderr, where their reader has closed them, at /dev/null (so that the exit's
    own flush fails no more); whether either had been closed."""
    import os
    import select

    closed = []
    for fd in (1, 2):
        try:
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            if any(events & select.POLLERR for _, events in poll.poll(0)):  # a pipe without a reader
                closed.append(fd)
        except (AttributeError, OSError, ValueError):  # no poll(), or no such descriptor
            continue
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in closed:
            os.dup2(devnull, fd)
        os.close(devnull)
    return bool(closed)


def _run_guarded(main, argv, debug_flag: str, writes_files: bool) -> None:
    # a name is printed with escapes for control characters and bytes that are not UTF-8: it can
    # neither drive the terminal nor raise a UnicodeEncodeError
    escaping_streams()
    try:
        if writes_files:
            with RaiseOnStopSignals():
                main(argv)
        else:
            main(argv)
    except Interrupted as exc:
        close_progress_bars()
        name = signal.Signals(exc.signum).name
        if exc.completed:
            done = f" once {', '.join(exc.completed)}"
        else:
            done = f": removed {', '.join(exc.cleaned)}" if exc.cleaned else "; nothing was left half-written"
        print(f"stopped by {name}{printable(done)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except InputError as exc:
        if debug_flag in argv:
            raise
        close_progress_bars()
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingStopped as exc:
        close_progress_bars()
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
