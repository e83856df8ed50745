"""Atomic file writes: a crash never leaves a half-written file (or folder) where a complete one is expected."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file (same folder) to ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. ``write`` must write
    the file at the path it is given (e.g. ``frame.to_pickle``, ``figure.savefig``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_directory_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_folder)``, then put that folder (made beside ``path``) in the place of ``path``.

    On any error the temporary folder is removed and ``path`` is left as it was. A folder already at ``path`` is
    renamed away, the new one renamed in and the old one removed: a reader finds the old folder, the new one or,
    for the moment between the two renames, none, but never a half-written one.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = temporary.with_name(f"{temporary.name}.old")  # unique, as the temporary folder's name is
    try:
        write(temporary)
        os.chmod(temporary, 0o755)  # mkdtemp creates folders readable by their owner only
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(temporary, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path
