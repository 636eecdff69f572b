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
    with atomic_directory("./UMR-S10", overwrite=False) as tmp:   # a whole folder (exports, checkpoints)
        (tmp / "README.md").write_text("...")
    with file_lock("cache/entry.npy"):            # writers of the same entry take turns
        ...
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_path", "atomic_write", "current_umask", "file_lock", "TEMPORARY_MARKER"]

logger = logging.getLogger(__name__)

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


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``path``; on success it becomes ``path``, on error it is removed.

    A folder that is not complete never appears at ``path``: exports and checkpoints are written here.

    * ``path`` existing is a ``FileExistsError`` unless ``overwrite``; with ``overwrite`` the old folder
      is moved aside, the new one renamed in, and the old one deleted, so ``path`` is never a mix.
    * Staging folders a killed writer of ``path`` left (``.<name>.partial-*``) are removed first, and an
      old folder a writer killed between its two renames left aside (``.<name>.old-*`` with no ``path``)
      is put back. One writer per ``path`` at a time is assumed.
    * The folder gets the permissions ``mkdir`` gives (0777 less the umask), not ``mkdtemp``'s 0700.
    """
    target = Path(path).absolute()
    _recover_or_clean(target)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output folder {str(target)!r} already exists; choose another --out or pass --overwrite (overwrite=True)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMPORARY_MARKER}", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        yield staging
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}{_OLD_MARKER}", dir=target.parent))
            os.replace(target, backup / target.name)  # aside, inside a unique folder, in one rename
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_OLD_MARKER = ".old-"


def _recover_or_clean(target: Path) -> None:
    """Before a write of ``target``: remove what killed writes left beside it, restoring a lost old folder."""
    if not target.parent.is_dir():
        return
    for entry in sorted(target.parent.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name.startswith(f".{target.name}{_OLD_MARKER}"):
            old = entry / target.name
            if not old.is_dir():  # not this module's layout: someone else's folder, left alone
                continue
            if not target.exists():
                logger.warning("restoring %s from %s (a write was killed between its renames)", target, old)
                os.replace(old, target)
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(f".{target.name}{TEMPORARY_MARKER}"):
            logger.warning("removing %s, left behind by an interrupted write of %s", entry, target)
            shutil.rmtree(entry, ignore_errors=True)
