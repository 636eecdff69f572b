"""Atomic writes: a reader sees the old file or the complete new one, never half a file.

Every write goes to a uniquely named temporary file in the target's own folder (same file system, so
the final ``os.replace`` is atomic) and is renamed into place only when complete; on any error the
temporary file is removed. Two processes writing the same target never share a temporary name, so
neither can rename or delete the other's half-written file. :func:`file_lock` serialises writers
that must not interleave (e.g. a data file and the metadata file that describes it).

This module imports only the standard library, so every layer of the project can use it.

Example::

    atomic_write("results.json", json.dumps(results))
    with atomic_path("index.faiss") as tmp:       # for writers that want a path, not bytes
        faiss.write_index(index, str(tmp))
    with file_lock("cache/entry.npy"):            # writers of the same entry take turns
        ...
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "current_umask", "file_lock", "TEMPORARY_MARKER"]

# Part of every temporary name, so that folder scans can skip unfinished files.
TEMPORARY_MARKER = ".partial-"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps ``path``'s suffix (``.npy``, ``.png``), so writers that pick a format from
    the suffix behave the same. The final file gets the permissions a plain ``open(path, "w")`` would
    give (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_MARKER}", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as temporary:
        if isinstance(data, str):
            temporary.write_text(data, encoding=encoding)
        else:
            temporary.write_bytes(data)
    return path


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (blocking) for the ``with`` block.

    Serialises cooperating writers across processes on POSIX (``fcntl.flock``); where ``fcntl`` is not
    available the block runs unlocked (atomic renames still keep every file whole).
    """
    lock_path = Path(f"{os.fspath(path)}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks in the standard library
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
