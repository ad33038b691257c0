"""One way to replace a file so that a reader never sees half of it: checkpoints, summary.json.

The bytes go to a temp file in the target's folder (same filesystem, so the rename
is atomic on POSIX), are flushed and fsynced, then ``os.replace`` puts them in
place and the folder is fsynced so the rename itself survives a crash. A failure
or Ctrl-C at any point leaves the previous file whole and no temp file behind.
Only the standard library is imported.
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
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.

    The temp file is ``.<name>.<random><suffix>`` (``remove_stale_temps`` in
    checkpoint.py finds those a ``kill -9`` left). Exceptions propagate unchanged.
    """
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    if hasattr(v, "item"):
        return v.item()
    return str(v)


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
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
