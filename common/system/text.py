"""How names and messages are shown: on the terminal, in one-line errors and notes, in CSV cells.

A file name is data: it may hold control characters that drive the terminal, bytes that are not UTF-8,
or text a spreadsheet takes for a formula. Everything a script writes goes through :func:`printable`
(or the escaping streams that apply it), so that an error stays one line whatever a file is called.
"""
from __future__ import annotations

import codecs
import os
import re
import sys

from tqdm import tqdm


# Characters a terminal acts on instead of showing: C0 controls (ESC starts the sequences that set the
# window title or erase a line), DEL, C1 controls (U+009B is a one-character CSI), the Unicode line
# and paragraph separators, and the bidirectional overrides and isolates, which show text in another
# order than it has ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    """One character as Python writes it in a string literal: ``\\x1b``, ``\\u202e``, ``\\n``."""
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text: str, one_line: bool = True) -> str:
    """``text`` safe to print or store as UTF-8, on one line (unless not ``one_line``).

    File names that are not valid UTF-8 reach Python as surrogate escapes (PEP 383); printed as they
    are they raise UnicodeEncodeError. Their bytes are shown as ``\\xff`` escapes instead, and control
    characters as ``\\x1b``, ``\\u202e`` or ``\\n``, so that an error stays one line whatever a file
    is called, and no name can move the cursor, set the terminal's title or reorder what is shown.
    ``one_line=False`` keeps line breaks and tabs (a list of names, one a line).
    """
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    if one_line:
        return _CONTROL.sub(lambda m: _escaped(m.group()), text)
    return _CONTROL.sub(lambda m: m.group() if m.group() in "\n\t" else _escaped(m.group()), text)


def spreadsheet_text(text: str) -> str:
    """A text cell of a CSV file: :func:`printable` (so a tab or carriage return is already ``\\t``,
    ``\\r``), and a cell that a spreadsheet would take for a formula, one starting with ``=``, ``+``,
    ``-`` or ``@`` (OWASP's rule), gets a leading ``'``, which spreadsheets show as text. For text
    only: a number stays a number."""
    text = printable(text)
    return "'" + text if text.startswith(("=", "+", "-", "@")) else text


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


# What tqdm writes to move between its bars: line feeds, then "cursor up" sequences, as one write.
_TQDM_MOVES = re.compile(r"\n*(?:\x1b\[A)*")


def terminal_text(text: str) -> str:
    """What a script writes, as it may reach the terminal: every control character of
    :func:`printable` shown as an escape, except line breaks and tabs, a carriage return that begins a
    write (tqdm redraws its bar with one) and tqdm's moves between bars."""
    if _TQDM_MOVES.fullmatch(text):
        return text
    start = 1 if text.startswith("\r") else 0
    return text[:start] + printable(text[start:], one_line=False)


class EscapingStream:
    """A script's stdout or stderr with :func:`terminal_text` applied to everything written to it:
    a name in any message, progress bar or summary shows as escapes, whoever prints it.

    A write that fails (stdout on a full disk, a terminal gone with its ssh connection) must not stop
    the work half-way, its results lost, for want of a place to say so: the error is kept in ``lost``,
    the rest of what is written here is dropped, and the script says so at its end (``run_guarded``).
    A reader that went away (BrokenPipeError) still ends the script, as SIGPIPE ends other tools."""

    def __init__(self, stream):
        self.stream = stream
        self.lost: OSError | None = None  # the error that stopped this stream's output

    def write(self, text: str) -> int:
        self._guarded(lambda: self.stream.write(terminal_text(text)))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, act) -> None:
        if self.lost is not None:
            return
        try:
            act()
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.lost = exc
            discard_output(self.stream)

    def __getattr__(self, name):  # fileno, isatty, encoding, buffer...: the stream's own
        return getattr(self.stream, name)


def discard_output(stream) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that what its buffer still holds, flushed at the
    process's exit, fails no more ("Exception ignored ... OSError")."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no descriptor of its own (a test's capture)
        return
    os.dup2(devnull, fd)
    os.close(devnull)


def escaping_streams() -> None:
    """From here on, sys.stdout and sys.stderr are :class:`EscapingStream` (and tolerant, see
    :func:`tolerant_streams`), to the end of the process: a traceback that follows is escaped too.

    A stream that was closed when the script started (``>&-``; Python's is None, and a progress bar or
    note written to it was an AttributeError traceback, the results lost) is what was asked for: a
    stream that keeps nothing, on /dev/null, which also holds its descriptor, so that no file the
    script opens gets it (nor what C code prints there)."""
    tolerant_streams()
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:
            stream = _discarding_stream(fd)
        if not isinstance(stream, EscapingStream):
            setattr(sys, name, EscapingStream(stream))


def _discarding_stream(fd: int):
    """A text stream on descriptor ``fd``, pointed at /dev/null where it is closed."""
    try:
        os.fstat(fd)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        return open(fd, "w", encoding="utf-8", errors="sot-printable", closefd=False)
    return open(os.devnull, "w", encoding="utf-8")  # open, but not Python's: not ours to write to


def lost_output() -> str | None:
    """Which of stdout and stderr could not be written, and why (one line), or None."""
    lost = [(name, stream.lost) for name, stream in (("standard output", sys.stdout), ("standard error", sys.stderr))
            if isinstance(stream, EscapingStream) and stream.lost is not None]
    if not lost:
        return None
    return "; ".join(f"{name}: could not be written ({exc.strerror or exc}), and what the script printed there after "
                     "that was lost" for name, exc in lost)


def close_progress_bars() -> None:
    """Close the progress bars an error interrupted, so that its line starts a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down already: nothing to clear
            pass


def note(message: str) -> None:
    """A one-line notice on stderr that does not break tqdm progress bars."""
    tqdm.write(f"note: {printable(message)}", file=sys.stderr)
