"""A full or read-only disk, injected at the real write calls, by path (tests/test_faults.py).

``DiskFault(root, "metrics.csv", errno.ENOSPC, nth=2).install(monkeypatch)`` makes the 2nd write
of ``<root>/metrics.csv`` fail. A "write" is a file opened for writing under ``root``: through
``open`` / ``io.open`` (csv, json, PNG by PIL, TensorBoard's event appends, pathlib's write_text)
or ``os.fdopen`` on a temp file of :func:`cnnlab.lifecycle.atomic.write_atomic` (checkpoints,
summary.json), whose temp name ``.<name>.<8 random chars>[.tmp]`` counts as a write of ``<name>``.
The fault is what the OS does, and stays, as a full or read-only disk stays:

- ``ENOSPC``: the open succeeds; the first ``write`` stores half its bytes, then raises
  ``OSError(ENOSPC)`` with no file name, as a real ``write(2)``. Later writes of that file fail too.
- ``EROFS``: the open raises ``OSError(EROFS, ..., path)``; from then on every write under ``root``
  does (the folder was remounted read-only; ``spread=False``: only those matching ``target``, a
  read-only subfolder).

When the fault fires, ``before`` holds every file under ``root`` (path -> bytes): what must be
intact after the failure. The tests run as root, where a chmod'ed folder stops no write, hence
the injection rather than a real read-only mount.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import os
import re
from pathlib import Path
from typing import Any

# write_atomic's temp files: mkstemp(prefix=".<name>.", suffix="" or ".tmp"), 8 random characters.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?:\.tmp)?$")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by its path relative to ``root``; not the dot-files of the moment
    (the run's lock, the temp file being written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


class _HalfWrite:
    """A file whose first write stores half its bytes, then fails with ENOSPC (and so on after)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _HalfWrite:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class DiskFault:
    """The ``nth`` write of the files under ``root`` that match ``target`` (a glob relative to
    ``root``, e.g. ``checkpoints/last.pt``, ``tb/*tfevents*``, ``test_report/*``) fails with ``code``."""

    def __init__(self, root: str | os.PathLike, target: str, code: int, nth: int = 1,
                 after: str | None = None, spread: bool | None = None) -> None:
        """``after``: a glob under ``root``; writes count only once a file matches it (e.g. the
        first summary.json write after epoch 1's ``metrics.csv`` row). ``spread``: once fired, every
        write under ``root`` fails (default: for EROFS), else only those of ``target``."""
        self.root, self.target, self.code, self.nth = Path(os.path.abspath(root)), target, code, nth
        self.after, self.spread = after, (code == errno.EROFS) if spread is None else spread
        self.writes = 0                      # writes of the target so far
        self.path: Path | None = None        # the file whose write failed
        self.before: dict[str, bytes] = {}   # every file under root when it failed

    # ---- which write fails
    def _relative(self, path: Path) -> str | None:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return None

    def _fails(self, path: Path) -> bool:
        rel = self._relative(path)
        if rel is None:
            return False
        if self.path is not None:  # the disk stays full (that file) or read-only (everything)
            return path == self.path or self.spread or (self.code == errno.EROFS and fnmatch.fnmatch(rel, self.target))
        if not fnmatch.fnmatch(rel, self.target) or (self.after and not any(self.root.glob(self.after))):
            return False
        self.writes += 1
        if self.writes < self.nth:
            return False
        self.before = snapshot(self.root)
        self.path = path
        return True

    # ---- the hooks
    def install(self, monkeypatch: Any) -> DiskFault:
        real_open, real_fdopen = io.open, os.fdopen

        def fault_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                path = Path(os.path.abspath(os.fsdecode(file)))  # TensorBoard opens bytes paths
                if self._fails(path):
                    if self.code == errno.EROFS:
                        raise OSError(self.code, os.strerror(self.code), os.fsdecode(file))
                    return _HalfWrite(real_open(file, mode, *args, **kwargs))
            return real_open(file, mode, *args, **kwargs)

        def fault_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            temp = Path(os.readlink(f"/proc/self/fd/{fd}"))
            m = _TEMP.match(temp.name)
            if m and any(c in mode for c in "wax+") and self._fails(temp.with_name(m["name"])):
                if self.code == errno.EROFS:  # as mkstemp's own open would have failed
                    os.close(fd)
                    raise OSError(self.code, os.strerror(self.code), str(temp))
                return _HalfWrite(real_fdopen(fd, mode, *args, **kwargs))
            return real_fdopen(fd, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fault_open)
        monkeypatch.setattr(io, "open", fault_open)
        monkeypatch.setattr(os, "fdopen", fault_fdopen)
        return self

    # ---- what the tests check
    def changed_since(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Files of ``before`` whose bytes changed or that are gone; ``allowed`` globs may be
        rewritten (summary.json's status), and TensorBoard's event files may only grow."""
        now = snapshot(self.root)
        out = []
        for rel, data in self.before.items():
            after = now.get(rel)
            if after == data or (after is not None and "tfevents" in rel and after.startswith(data)):
                continue
            if after is not None and any(fnmatch.fnmatch(rel, a) for a in allowed):
                continue
            out.append(rel)
        return out

    def temps_left(self) -> list[str]:
        """Temp files a failed write left behind (write_atomic's, or any other dot-file)."""
        return [str(p.relative_to(self.root)) for p in self.root.rglob(".*")
                if p.is_file() and p.name != ".cnnlab.lock"]
