"""How every script ends: :func:`run_guarded` turns bad input into one line and exit status 2 (under
torchrun, one line for all its processes), a deliberate stop into its message and its own status, and a
reader that goes away into a quiet exit."""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import NoReturn

from ..system.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, InputError, Interrupted, TrainingStopped
from ..system.signals import RaiseOnStopSignals
from ..system.text import close_progress_bars, escaping_streams, lost_output, printable


def run_guarded(main, argv, debug_flag: str = "--debug", writes_files: bool = False) -> None:
    """Run ``main(argv)``; an InputError becomes one line on stderr and exit status 2, a deliberate
    stop its message and its own status (128 + the signal, or 3 for a diverged run).

    ``writes_files`` (test.py, gdata/): SIGINT, SIGTERM and SIGHUP stop the script where it is; what it
    had half-written is removed on the way out, one line says what, and the status is 130, 143 or 129.

    A reader that goes away (``test.py | head -1``) ends the script quietly, as SIGPIPE ends other
    command-line tools: no traceback, status 141; what it was writing is cleaned up on the way out.

    Output that cannot be written (stdout on a full disk, ``>/dev/full``) stops only the output: the
    script does its work, then says so in one line on stderr and exits with status 2. A stream closed
    before the start (``>&-``) is left closed, and what was meant for it is dropped."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        _run_guarded(main, argv, debug_flag, writes_files)
        _flush_stdout()  # what a pipe's buffer still holds is written now, where a closed pipe can be caught
    except BrokenPipeError:
        if not _silence_closed_output():
            raise  # not this process's own output: a bug, with its traceback
        sys.exit(EXIT_BROKEN_PIPE)
    except SystemExit as exc:
        try:  # the exit would flush stdout again, and print a closed pipe's error as "Exception ignored"
            _flush_stdout()
        except BrokenPipeError:
            _silence_closed_output()
        if exc.code not in (0, None) or not lost_output():
            raise
    lost = lost_output()
    if lost:
        print(f"error: {lost}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


def _silence_closed_output() -> bool:
    """Point stdout and stderr, where their reader has closed them, at /dev/null (so that the exit's
    own flush fails no more); whether either had been closed."""
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
        exit_bad_input(f"error: {printable(str(exc))}")
    except TrainingStopped as exc:
        close_progress_bars()
        print("\n".join(printable(line) for line in exc.lines), file=sys.stderr)
        sys.exit(exc.exit_code)


# Under torchrun every process reads the same flags and files, so each meets the same bad input: rank 0
# alone says so. Another rank waits this long for the launcher to stop it, which it does within its
# monitor interval (0.1 s by default) of rank 0's exit; a rank not stopped by then met bad input of its
# own (a file only its node lacks, a damaged patch only it read), and says so itself.
OTHER_RANKS_WAIT = 10.0


def launch_rank() -> int:
    """This process's rank in a torchrun launch of several processes (its RANK); 0 for any other process."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except (KeyError, ValueError):
        return 0


def exit_bad_input(line: str) -> NoReturn:
    """End the script on bad input: ``line`` (``error: ...``, printable) on stderr, exit status 2.

    Under torchrun, rank 0 prints it and exits. Another rank prints nothing and waits to be stopped by
    the launcher: torchrun stops the other processes as soon as one fails, and its report of the launch
    then shows them stopped by SIGTERM (whatever the processes do, torchrun prints its own report and
    exits with status 1 where any exits with another status than 0; a process that exits 0 after bad
    input would hide the failure from it). A rank that is not stopped prints its own line, with its rank."""
    close_progress_bars()
    rank = launch_rank()
    if rank:
        _flush_stdout()
        sys.stderr.flush()
        try:  # the launcher's SIGTERM ends this process at once: what it had made is cleaned up already
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the main thread: the script's own handler stays
            pass
        time.sleep(OTHER_RANKS_WAIT)
        line = f"{line} (rank {rank})"
    print(line, file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
