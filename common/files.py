"""The file system and memory as the scripts meet them: run-folder locks, stale temporary files,
writable output folders, free disk space and available memory.

Light on purpose (no torch): a lock can be taken and a folder checked before anything heavy loads.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

from .errors import InputError, Interrupted, note

LOCK_NAME = ".lock"
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # what atomic writes leave behind: .<name>.tmp<PID>


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
    except OSError:
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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            if holder is not None and not pid_alive(holder):
                who = (f"PID {holder}, which has ended; its data-loader workers still hold the lock: "
                       "try again in a few seconds")
            else:
                who = f"PID {holder}" if holder is not None else "a process that has not written its PID yet"
            raise InputError(f"{self.folder}: another run is using this run folder ({who}); wait for it to "
                             "finish, or give another --name") from None
        except OSError as exc:  # no locks on this file system (some NFS setups)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            note(f"{self.folder}: the file system does not support locks ({exc.strerror}); two runs with "
                 "this --name at once would not be stopped")
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


def remove_if_stale(path: Path, locked: bool = False) -> bool:
    """Delete one ``.<name>.tmp<PID>`` file (or staging folder, see :class:`StagedFolder`) if no
    running writer owns it (see below); whether it went."""
    m = _TEMPORARY.match(path.name)
    if not m or path.is_symlink() or not (path.is_file() or path.is_dir()):
        return False
    pid = int(m.group(1))
    if pid == os.getpid() or (not locked and pid_alive(pid)):
        return False
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike, locked: bool = False) -> list[Path]:
    """Delete the ``.<name>.tmp<PID>`` files that a killed writer left under ``folder`` (recursively).

    A temporary is stale when its PID is no longer running, or, when the caller holds ``folder``'s
    run lock (``locked``), whenever it is not this process's: nobody else may write there then.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [path for path in folder.rglob(".*.tmp*") if remove_if_stale(path, locked)]
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
    import stat

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
    probe = existing / f".write-test.tmp{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{target}: cannot write the {what} ({exc.strerror or exc})") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file or folder (through links and bind mounts alike)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def folders_to_make(folder: Path) -> list[Path]:
    """The folders that ``mkdir(parents=True)`` would create for ``folder``, innermost first."""
    return [f for f in [folder, *folder.parents] if not f.exists()]


def remove_made(folders: list[Path]) -> None:
    """Remove folders made for output that was never written, innermost first; one that something
    else was put in meanwhile stays (and so do the ones above it)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


class StagedFolder:
    """Files meant for ``folder``, written first into a hidden staging folder inside it
    (``.staging.tmp<PID>``) and moved into place together by :meth:`commit`.

    A run that fails, or is stopped, before it commits leaves ``folder`` exactly as it was: the
    staging folder goes, and so do any folders made for it. A killed run's staging folder is removed
    by the next run in that folder. Each move is an atomic rename: a file already there is replaced
    whole, never half-written, and a link there is replaced, not followed.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.made = folders_to_make(self.folder)
        self.path = self.folder / f".staging.tmp{os.getpid()}"

    def __enter__(self) -> "StagedFolder":
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            remove_made(self.made)
            raise InputError(f"{self.folder}: cannot write the results folder ({exc.strerror or exc})") from None
        remove_stale_temporaries(self.folder)
        return self

    def commit(self) -> list[Path]:
        """Move every staged file into ``folder``; returns where they went."""
        placed = []
        for staged in sorted(self.path.iterdir()):
            target = self.folder / staged.name
            if target.is_dir() and not target.is_symlink():
                if not staged.is_dir():
                    raise InputError(f"{target}: is a folder; cannot put the result {staged.name} there")
                shutil.rmtree(target)  # a folder of results (a report's pictures) that this run replaces
            os.replace(staged, target)
            placed.append(target)
        self.path.rmdir()
        fsync_folder(self.folder)
        return placed

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.path.exists():
            return
        written = sum(1 for _ in self.path.iterdir())
        shutil.rmtree(self.path, ignore_errors=True)
        made = [f for f in self.made if f.exists()]
        remove_made(self.made)
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


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system that holds ``path`` (or its nearest existing folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure(path: str | os.PathLike, exc: OSError, needed: int | None, what: str) -> str:
    """``<path>: could not write the <what> (No space left on device): about 1.2 GiB needed, 10.0 MiB
    free``: the reason, and the space it would take when that is likely the cause."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)  # HDF5 keeps no errno
    reason = "No space left on device" if full and not exc.strerror else (exc.strerror or str(exc))
    text = f"{path}: could not write the {what} ({reason.splitlines()[0] if reason else type(exc).__name__})"
    free = free_bytes(Path(path).parent)
    if full or (needed and free is not None and free < needed):
        if needed:
            text += f": it needs about {human_bytes(needed)}"
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
