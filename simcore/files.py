"""Files: atomic writes, the leftovers of killed writers, output paths checked before
the work that fills them, and the lock that makes a run folder one live run's.

Imports nothing of simcore's, so every module (checkpoints, images, the CLIs) can use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import tempfile
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; FolderLock then locks nothing (and says so)
    fcntl = None

# The process's umask, read once (reading it means setting it, which would race with
# other threads creating files if done on every write).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and ``os.replace``.

    Readers see the old file or the new one, never a mix; on any failure the temp file is
    removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    # mkstemp opens with O_CREAT | O_EXCL: never an existing file, never through a symlink
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), dir=folder)
    created = True
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # mkstemp's 0600 -> what open() would give
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(folder)


def _temp_prefix(name: str) -> str:
    """The start of write_atomic's temp file name for a file `name` (mkstemp adds 8 characters)."""
    return f".{name}.tmp-{os.getpid()}-"


def remove_stale_temps(folder) -> list[str]:
    """Remove the temp files of write_atomic calls in ``folder`` whose process is gone (a
    writer killed mid-way); return their paths. A live writer's temp file is left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry in names:
        m = re.fullmatch(r"\..+\.tmp-([0-9]+)(-.*)?", entry)
        if not m or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_dir(folder: str) -> None:
    """Make the rename durable. Some platforms (Windows) and filesystems cannot fsync a
    folder; the rename has happened either way, so that is not worth an exception."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_file(path, flag: str) -> str:
    """`path` as a file the caller will write later (with write_atomic): checked now,
    before the work. Raises ValueError naming `flag` for an empty path, a folder, a
    missing or unwritable parent folder, or a place where the file cannot be created."""
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f"{flag}: empty path")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder, not a file")
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: the file is not writable")
    # os.access says what the permissions allow, not what will happen: root passes it
    # everywhere, and a read-only mount, a full disk's inode table or a name too long once
    # made a temp file's fail only at the write. So create that very temp file, and remove it.
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), dir=folder)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return path


def check_outputs(outputs: dict, inputs: dict | None = None) -> None:
    """Every output ({flag: path}, None for one not given) checked as check_output_file
    does, then against the others and against the inputs ({flag: path} read first): two
    outputs that are one file would overwrite each other, and an output that is an input
    would destroy it. ValueError naming both flags."""
    given = {flag: os.fspath(p) for flag, p in outputs.items() if p is not None}
    for flag, p in given.items():
        check_output_file(p, flag)
    seen = {}
    for flag, p in given.items():
        key = _identity(p)
        if key in seen:
            raise ValueError(f"{flag} {p}: the same file as {seen[key]}; give each output its own path")
        seen[key] = f"{flag} {p}"
    for flag, p in (inputs or {}).items():
        if p is not None and _identity(os.fspath(p)) in seen:
            raise ValueError(f"{seen[_identity(os.fspath(p))]}: the file {flag} reads; writing it would "
                             "destroy it (give another path)")


def _identity(path: str) -> tuple:
    """One key per file: its inode when it exists (hard links, symlinks), else its real path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(os.path.abspath(path)))


def check_output_folder(path, flag: str) -> str:
    """`path` as a folder the caller will create (if needed) and write into."""
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f"{flag}: empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")
    return path


def folders_missing(path) -> list[str]:
    """The folders that creating `path` (os.makedirs) would create, deepest first: what
    to remove again if the work that needed them is refused."""
    missing, p = [], os.path.abspath(os.fspath(path))
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        missing.append(p)
        p = os.path.dirname(p)
    return missing


# ---- regular files only ------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(mode: int) -> str | None:
    """What a file of this st_mode is if not a regular file ("a named pipe", ...), else None.
    Reading a named pipe blocks until someone writes into it, a device may never end: only
    regular files are read as checkpoints and data."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str):
    """`path` opened for binary reading, if it is a regular file; else OSError (ENOENT,
    EACCES, ...) or ValueError saying what it is. Checked by stat before the open (opening
    a device can have effects of its own), and by fstat after it, on a descriptor opened
    with O_NONBLOCK: a file swapped for a pipe in between cannot make the open wait."""
    what = not_regular(os.stat(path).st_mode)
    if what is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        what = not_regular(os.fstat(fd).st_mode)
        if what is None:
            if hasattr(os, "set_blocking"):
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise ValueError(f"not a regular file ({what})")


# ---- one live run per folder -------------------------------------------------------------

LOCK_NAME = "run.lock"


class FolderBusy(ValueError):
    """A live run holds the folder's lock."""


class FolderLock:
    """A folder owned by one live process: <folder>/run.lock, held with flock, naming its
    owner (pid, host, start time) for the message a second run gets.

    flock rather than a lock file created with O_EXCL: the kernel drops a flock when its
    process ends, however it ends (kill -9, the OOM killer), so a file left behind needs no
    guess whether its pid still means its run; a lock file that can be locked is a dead
    run's leftover, taken over. With O_EXCL that judgement is a pid check, wrong after the
    pid is reused and impossible for a pid on another host. (On NFS, Linux turns flock into
    byte-range locks that the server arbitrates, so hosts sharing a folder exclude each
    other too.) The file is removed on release, while still locked; acquire checks that the
    file it locked is still the one at the path (it may have been removed meanwhile)."""

    def __init__(self, folder):
        self.path = os.path.join(os.fspath(folder), LOCK_NAME)
        self.stale = None       # the owner named in a dead run's file this lock took over
        self.unlocked = None    # why no lock could be taken (no flock here), else None
        self._fd = None

    def acquire(self) -> FolderLock:
        """Take the lock: FolderBusy (a ValueError) naming the owner if a live run holds
        it; OSError if the file cannot be created."""
        if fcntl is None:
            self.unlocked = "this platform has no flock"
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(100):
            fd = os.open(self.path, flags, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                raise FolderBusy(f"in use by another run ({owner or 'one just starting'}; "
                                 f"its lock: {self.path})") from None
            except OSError as err:  # a file system without locks
                os.close(fd)
                self.unlocked = f"cannot lock {self.path}: {err.strerror or err}"
                return self
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its owner removed it between our open and our lock: lock the new one
        else:
            raise OSError(f"{self.path}: removed and created again 100 times while taking it")
        self.stale = _owner(fd)  # a live owner's file would have refused the lock
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the file and drop the lock (again: nothing)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _owner(fd: int) -> str | None:
    """'pid 123 on host h, started ...' as the lock file at fd says, or None if it is empty."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        d = json.loads(text)
        return f"pid {int(d['pid'])} on host {d['host']}, started {d['started']}"
    except (ValueError, TypeError, KeyError):
        return f"an owner the file does not name: {text[:60]!r}"
