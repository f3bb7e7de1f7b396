"""Atomic writes: a reader sees the old version or the new one, never half of one.

Everything is written into a temporary sibling (``.tmp-<name>-<random>``), flushed to
disk, then renamed over the target. A directory that is being replaced is first set
aside as ``.old-<name>``; a crash between the two renames leaves it there and
:func:`recover` puts it back. A failure anywhere leaves the old version in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

TMP = ".tmp-"
OLD = ".old-"


def write_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{TMP}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_dir(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary directory, then swap it in for ``path``
    (an existing ``path`` is replaced; if the swap fails it is restored)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP}{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.iterdir():
            if file.is_file():
                _fsync(file)
        _fsync(tmp)
        old = path.with_name(f"{OLD}{path.name}")
        if path.exists():
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old.exists():
                old.rename(path)
            raise
        _fsync(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def recover(folder: str | Path) -> None:
    """Undo what a crash mid-write left in ``folder``: put ``.old-<name>`` back where
    ``<name>`` is missing (else drop it) and delete every ``.tmp-*`` entry."""
    folder = Path(folder)
    for old in folder.glob(f"{OLD}*"):
        target = folder / old.name[len(OLD):]
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    for tmp in folder.glob(f"{TMP}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
