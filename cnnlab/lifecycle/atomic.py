"""One way to replace a file so that a reader never sees half of it: checkpoints, summary.json.

A temp file in the target's folder, fsynced, then ``os.replace`` (atomic on POSIX) and a
fsync of the folder; a failure or Ctrl-C leaves the previous file whole, no temp behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True,
                 suffix: str = "") -> None:
    """Call ``write(f)`` on a temp file ``.<name>.<random><suffix>`` beside ``path`` (those a ``kill -9``
    left: ``remove_stale_temps``), then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        err = os_error(e) if isinstance(e, Exception) else None
        if err is not None and err.errno is not None and err.filename != str(path):
            # A failed write() names no file, a failed open the temp file, torch.save its own
            # RuntimeError: the user is told the file they know, with the errno's words.
            raise OSError(err.errno, err.strerror, str(path)) from e
        raise


def os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (itself, or its cause or context), or None: torch.save reports a
    failed write as its own RuntimeError ("enforce fail at inline_container.cc"), the OSError in its
    context."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """``data`` as indented JSON (tensors and numpy scalars as numbers), replaced atomically."""
    def dump(f: IO[str]) -> None:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")

    write_atomic(path, dump, binary=False)


def finite_or_none(v: Any) -> Any:
    """``v``, or None for a NaN/inf float: JSON has no NaN, so a diverged run's loss is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network filesystems)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
