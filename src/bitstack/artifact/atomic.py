"""Atomic file writes: write a temporary sibling, fsync, rename over the target, fsync the folder."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears (complete) only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; on success it replaces ``target`` (a folder that
    exists is swapped out, then removed), and the parent is fsynced.  On any error the temporary
    folder is removed and ``target`` is left as it was; an OSError becomes an InputError naming
    ``target``."""
    import shutil

    from bitstack.errors import InputError

    target = Path(target)
    work = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        yield work
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(work, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, target)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(target.parent)
