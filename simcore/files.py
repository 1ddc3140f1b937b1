"""Files: atomic writes, the leftovers of killed writers, and output paths checked
before the work that fills them.

Imports nothing of simcore's, so every module (checkpoints, images, the CLIs) can use it.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile

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
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=folder)
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
    """`path` as a file the caller will write later: checked now, before the work.
    Raises ValueError naming `flag` for an empty path, a folder, a missing or
    unwritable parent folder."""
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f"{flag}: empty path")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: the file is not writable")
    return path


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
