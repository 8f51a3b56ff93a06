"""The file system and memory as the scripts meet them: run-folder locks, stale temporary files,
writable output folders, atomic writes, free disk space and available memory.

Light on purpose (no torch): a lock can be taken and a folder checked before anything heavy loads.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Collection

from .errors import InputError, Interrupted
from .signals import check_interrupted, stop_signals_held
from .text import note

LOCK_NAME = ".lock"
# Every temporary this program writes is named .sot-tmp-<PID>-<what it becomes>: a name no other
# program gives its files, so that one left by a killed run can be told from the user's own.
TEMPORARY_PREFIX = ".sot-tmp-"
_TEMPORARY = re.compile(r"^\.sot-tmp-(\d{1,10})-(.+)$", re.S)
_EARLIER_TEMPORARY = re.compile(r"^\.(.+)\.tmp(\d{1,10})$", re.S)  # earlier versions': .<name>.tmp<PID>
_PID_ROOM = 10  # digits kept free for the PID when deciding whether a temporary's name fits


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OSError, OverflowError):  # OverflowError: a number no process can have
        return False
    return True


# ----------------------------------------------------------------------------- the run lock
class RunLock:
    """An exclusive lock on a run folder (``<folder>/.lock``, holding the holder's PID).

    ``flock`` ties the lock to the open file, so the kernel drops it when the process ends however it
    ends: a SIGKILLed run leaves no stale lock (data-loader workers forked from it hold it until they
    notice, within seconds). The file itself stays; removing it would let two runs lock two files.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{self.folder}: cannot write the output folder ({exc.strerror or exc})") from None
        try:
            held = lock_exclusively(fd, self.folder, "two runs with this --name at once would not be stopped")
        except OSError:
            os.close(fd)
            raise
        if not held:
            holder = self._holder(fd)
            os.close(fd)
            if holder is not None and not pid_alive(holder):
                who = (f"PID {holder}, which has ended; its data-loader workers still hold the lock: "
                       "try again in a few seconds")
            else:
                who = f"PID {holder}" if holder is not None else "a process that has not written its PID yet"
            raise InputError(f"{self.folder}: another run is using this run folder ({who}); wait for it to "
                             "finish, or give another --name")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_exclusively(fd: int, folder: Path, unprotected: str) -> bool:
    """``flock`` the open file ``fd`` without waiting: whether this process holds it now (False: another
    does). Where the file system has no locks (some NFS setups) a note says so (``unprotected``: what
    is then not stopped) and the run goes on."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        note(f"{folder}: the file system does not support locks ({exc.strerror}); {unprotected}")
    return True


class FolderLock:
    """A folder made (where missing) and locked for one run: ``flock`` on the folder's own descriptor,
    so that nothing is written into it for the lock (a results folder of the user's gets no lock file)
    and the kernel drops the lock however the run ends.

    ``made``: exactly the folders this run created for it (another run making one at the same moment
    keeps it its own); :meth:`release` removes them again, while still holding the lock, unless the
    run put something there to stay (``made`` emptied).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.fd: int | None = None
        self.made: list[Path] = []

    def try_acquire(self) -> bool:
        """Make the folder and lock it; False, with nothing held or removed, where another run holds it."""
        for _ in range(10):
            made = make_folders(self.folder, "results folder")
            if self.folder.is_symlink() and not self.folder.exists():
                raise InputError(f"{self.folder}: cannot write the results folder (a broken symbolic link to "
                                 f"{os.readlink(self.folder)})")
            try:
                fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # removed meanwhile by a run that gave it up: make it again
                continue
            except OSError as exc:
                remove_made(made)
                raise InputError(f"{self.folder}: cannot write the results folder ({exc.strerror or exc})") from None
            try:
                if not lock_exclusively(fd, self.folder, "two runs writing into this folder at once would not "
                                                         "be stopped"):
                    os.close(fd)
                    return False
                # a run that gave the folder up may have removed it between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.folder))
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.made = fd, made
                return True
            os.close(fd)
        raise InputError(f"{self.folder}: the folder keeps being removed while this run makes it; is another "
                         "program cleaning it up?")

    def release(self) -> None:
        """Remove the folders made for the run (``made``) if they are empty, then drop the lock."""
        remove_made(self.made)
        self.made = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def temporary_tail(path: str | os.PathLike) -> str:
    """What follows ``.sot-tmp-<PID>-`` in the name of ``path``'s temporary: its name, or where that
    would make the temporary's name too long for the file system, a digest of it (so that a file
    whose own name just fits can still be written by way of a temporary)."""
    path = Path(path)
    if len(os.fsencode(f"{TEMPORARY_PREFIX}{'0' * _PID_ROOM}-{path.name}")) <= name_max(path.parent):
        return path.name
    return "long-" + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:32]


def temporary_path(path: str | os.PathLike) -> Path:
    """Where a write of ``path`` goes first, to be renamed into place: ``.sot-tmp-<PID>-<name>`` beside it."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{temporary_tail(path)}")


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) that the file system of ``folder`` (or its nearest existing
    folder) takes."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def temporary_of(name: str, earlier_names: bool = False) -> tuple[str, int] | None:
    """For the name of one of this program's temporaries, what it was to become (the name, or
    :func:`temporary_tail`'s digest of a long one) and its writer's PID; None for any other name.
    ``earlier_names``: earlier versions' ``.<name>.tmp<PID>`` too."""
    m = _TEMPORARY.match(name)
    if m:
        return m.group(2), int(m.group(1))
    m = _EARLIER_TEMPORARY.match(name) if earlier_names else None
    return (m.group(1), int(m.group(2))) if m else None


def remove_stale_temporaries(folder: str | os.PathLike, targets: Collection[str] | re.Pattern, locked: bool = False,
                             folders: bool = False, earlier_names: bool = False) -> list[Path]:
    """Delete the temporaries that a killed run of this program left at the top of ``folder`` (never in
    its subfolders): entries named ``.sot-tmp-<PID>-<target>``, for a ``target`` among ``targets`` (the
    names this program writes there, or a pattern that such a name matches whole), that are regular
    files (``folders``: folders, not links). ``earlier_names``: also the ``.<target>.tmp<PID>`` files of
    earlier versions, for a folder that is this program's own (a run folder). Nothing else is touched,
    whatever it is called.

    A temporary is stale when its PID is no longer running, or, when the caller holds ``folder``'s
    lock (``locked``), whenever it is not this process's: nobody else may write there then.
    """
    folder = Path(folder)
    if isinstance(targets, re.Pattern):
        ours = lambda tail: targets.fullmatch(tail) is not None  # noqa: E731
    else:
        ours = {*targets, *(temporary_tail(folder / name) for name in targets)}.__contains__
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        of = temporary_of(entry.name, earlier_names)
        if of is None or not ours(of[0]):
            continue
        pid = of[1]
        if pid == os.getpid() or (not locked and pid_alive(pid)):
            continue
        try:
            if folders and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif not folders and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
        except OSError:
            continue
        removed.append(Path(entry.path))
    if removed:
        note(f"{folder}: removed {len(removed)} temporary file(s) left by an interrupted write, e.g. "
             f"{removed[0].name}")
    return removed


# ----------------------------------------------------------------------------- input files
def unreadable_reason(path: str | os.PathLike, what: str = "a file") -> str | None:
    """Why ``path`` is not a regular file that can be opened for reading, in words, or None.

    Tells apart what ``Path.is_file()`` lumps together as False: a missing file, a broken symbolic
    link, a link loop, a folder, a FIFO or device (reading one would block or never end) and a file
    without read permission. ``what`` names what was expected ("an image", "a checkpoint file")."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:
            return "no such file"
        return f"a broken symbolic link (to {target}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic-link loop (the link points back at itself through other links)"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return f"a folder, not {what}"
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device")
        return f"{what}, not a regular file (reading it could block forever)"
    if not os.access(path, os.R_OK):
        return "cannot be read (Permission denied)"
    return None


def check_readable_file(path: str | os.PathLike, what: str = "a file") -> int:
    """Refuse anything but a readable regular file (see :func:`unreadable_reason`); its size in bytes."""
    reason = unreadable_reason(path, what)
    if reason:
        raise InputError(f"{path}: {reason}")
    return Path(path).stat().st_size


def check_fits_in_memory(path: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse to read ``needed`` bytes of ``path`` into memory when fewer are available."""
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(f"{path}: {what} needs about {human_bytes(needed)} of memory; "
                         f"{human_bytes(available)} is available")


# ----------------------------------------------------------------------------- output folders
def check_can_write(target: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse, before any work, an output path that cannot be written: a component that is a file,
    a read-only mount, a folder without write permission. Creates nothing: the probe file is made
    in the nearest folder that exists, and removed."""
    target = Path(target)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = f"{existing} is a file, not a folder" if existing != target else "is a file, not a folder"
        raise InputError(f"{target}: cannot write the {what} ({where})")
    try:
        with probe_file(existing, "write-test"):
            pass
    except OSError as exc:
        raise InputError(f"{target}: cannot write the {what} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def probe_file(folder: Path, label: str):
    """An empty file made in ``folder`` under a name no other file has (created exclusively, so nothing
    of the user's is opened), removed again at the end of the block; yields its path."""
    fd, name = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-{label}-", dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file or folder (through links and bind mounts alike)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def folders_to_make(folder: Path) -> list[Path]:
    """The folders that ``mkdir(parents=True)`` would create for ``folder``, innermost first."""
    return [f for f in [folder, *folder.parents] if not f.exists()]


def make_folders(folder: Path, what: str = "output folder") -> list[Path]:
    """Make ``folder`` and the folders missing above it, one ``mkdir`` at a time; the ones this call
    made, innermost first (a folder another process makes at the same moment is not counted)."""
    made = []
    try:
        for f in reversed(folders_to_make(folder)):
            try:
                f.mkdir()
            except FileExistsError:
                continue
            made.insert(0, f)
    except OSError as exc:
        remove_made(made)
        raise InputError(f"{folder}: cannot write the {what} ({exc.strerror or exc})") from None
    return made


def remove_made(folders: list[Path]) -> None:
    """Remove folders made for output that was never written, innermost first; one that something
    else was put in meanwhile stays (and so do the ones above it)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


class StagedFolder:
    """Files meant for a locked folder (``lock``, a :class:`FolderLock` held), written first into a
    hidden staging folder inside it (``.sot-tmp-<PID>-staging``) and moved into place together by
    :meth:`commit`.

    A run that fails, or is stopped, before it commits leaves the folder exactly as it was: the
    staging folder goes, and so do any folders made for it. A killed run's staging folder is removed
    by the next run in that folder. The commit is all or nothing: a stop signal during it waits for
    its end, and a move that fails puts back what the moves before it had replaced.
    """

    STAGING, REPLACED = "staging", "replaced"

    def __init__(self, lock: FolderLock, may_replace: Callable[[Path], str | None] | None = None):
        """``may_replace(path)``: None where the entry at ``path`` may be replaced by the staged one of
        its name, else why not (by default nothing there is replaced)."""
        self.lock, self.folder = lock, lock.folder
        self.path = temporary_path(self.folder / self.STAGING)
        self.replaced = temporary_path(self.folder / self.REPLACED)  # what the commit replaces, until it is whole
        self.may_replace = may_replace or (lambda path: "it is already there")
        self.committed = False

    def __enter__(self) -> "StagedFolder":
        remove_stale_temporaries(self.folder, (self.STAGING, self.REPLACED), locked=True, folders=True)
        try:
            self.path.mkdir()
        except OSError as exc:
            raise InputError(f"{self.folder}: cannot write the results folder ({exc.strerror or exc})") from None
        return self

    def commit(self) -> list[Path]:
        """Move every staged entry into the folder, all or nothing; returns where they went."""
        staged = sorted(self.path.iterdir())
        for entry in staged:  # what would be replaced is checked again, before the first move
            target = self.folder / entry.name
            why = self.may_replace(target) if os.path.lexists(target) else None
            if why:
                raise InputError(f"{target}: {why}; nothing of this run was put into {self.folder}")
        moved: list[tuple[Path, Path, Path | None]] = []
        with stop_signals_held():
            try:
                for entry in staged:
                    target, earlier = self.folder / entry.name, None
                    if os.path.lexists(target):
                        self.replaced.mkdir(exist_ok=True)
                        earlier = self.replaced / entry.name
                        os.rename(target, earlier)
                    try:
                        os.rename(entry, target)
                    except OSError:
                        if earlier is not None:
                            os.rename(earlier, target)
                        raise
                    moved.append((entry, target, earlier))
            except OSError as exc:
                raise InputError(f"{target}: could not move the result into place ({exc.strerror or exc}); "
                                 + self._undo(moved)) from None
            self.committed = True
            self.lock.made = []  # they hold the results now
            shutil.rmtree(self.replaced, ignore_errors=True)  # earlier results this run was asked to replace
            shutil.rmtree(self.path, ignore_errors=True)  # empty now
            fsync_folder(self.folder)
        check_interrupted()  # a stop whose exception was lost before the commit: raised now that it is whole
        return [target for _, target, _ in moved]

    def _undo(self, moved: list[tuple[Path, Path, Path | None]]) -> str:
        """Put back what a failed commit had moved; says how the folder is left."""
        try:
            for entry, target, earlier in reversed(moved):
                os.rename(target, entry)
                if earlier is not None:
                    os.rename(earlier, target)
        except OSError as exc:
            return (f"putting back the earlier results failed too ({exc.strerror or exc}): {self.folder} holds "
                    f"part of this run's results, and {self.replaced} the earlier ones they replaced")
        try:
            self.replaced.rmdir()
        except OSError:
            pass
        return f"{self.folder} is as it was"

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed:
            if isinstance(exc, Interrupted):
                exc.completed.append(f"the results were complete, in {self.folder}")
            return
        if not self.path.exists():
            return
        written = sum(1 for _ in self.path.iterdir())
        shutil.rmtree(self.path, ignore_errors=True)
        made = [f for f in self.lock.made if f.exists()]
        self.lock.release()
        if isinstance(exc, Interrupted):
            what = f"the {written} unfinished result file(s) written so far" if written else "the empty staging folder"
            exc.cleaned.append(what + (f" and the folder {made[-1]} made for them" if made else
                                       f" ({self.folder} is as it was)"))


def fsync_folder(folder: Path) -> None:
    """Make renames inside ``folder`` durable (where the file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write, replace: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it into place.

    If anything fails (a full disk, a kill), the previous file at ``path`` is untouched and the
    temporary file is removed where possible. ``replace=False``: an entry found at ``path`` (one that
    appeared since the caller checked) is kept, and FileExistsError raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _move_if_absent(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_folder(path.parent)


def _move_if_absent(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless an entry is there (FileExistsError): a hard link fails rather
    than replace one; where the file system makes none, ``path`` is checked just before the rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (FAT, some network mounts)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system that holds ``path`` (or its nearest existing folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure(path: str | os.PathLike, exc: OSError, needed: int | None, what: str, at_least: bool = False) -> str:
    """``<path>: could not write the <what> (No space left on device): it needs about 1.2 GiB, 10.0 MiB
    is free there``: the reason, and the space it would take when that is likely the cause
    (``at_least``: ``needed`` is a lower bound)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)  # HDF5 keeps no errno
    reason = "No space left on device" if full and not exc.strerror else (exc.strerror or str(exc))
    text = f"{path}: could not write the {what} ({reason.splitlines()[0] if reason else type(exc).__name__})"
    free = free_bytes(Path(path).parent)
    if full or (needed and free is not None and free < needed):
        if needed:
            text += f": it needs {'at least' if at_least else 'about'} {human_bytes(needed)}"
            text += f", {human_bytes(free)} is free there" if free is not None else ""
        elif free is not None:
            text += f": {human_bytes(free)} is free there"
    return text


# ----------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping: the system's MemAvailable, capped by a
    container's memory limit (cgroup v2 or v1) where there is one. None when unknown."""
    amounts = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    amounts.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not amounts:
        try:
            amounts.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            amounts.append(max(0, int(limit) - usage))
        break
    return min(amounts) if amounts else None
