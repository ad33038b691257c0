"""An on-disk cache of JSON answers that are slow only because of what they import.

The inspector's table takes a fraction of a second to compute, but importing torch,
torchvision and timm to compute it about 7 s on 2 cores. An answer is stored under a
hash of everything it depends on (config, input, library versions, our code): a changed
input gives a new name, and a stale entry is never read.

Where: ``$CNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``
(the XDG convention torch.hub and Hugging Face follow). Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The cache folder (not created here)."""
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cnnlab"


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of ``dists`` from their metadata (None: not installed), importing none."""
    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def source_digest(*paths: Path) -> str:
    """A hash of the names and bytes of the given files (the code an answer depends on)."""
    return digest([(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(paths)])


def read(path: Path) -> Any | None:
    """The JSON stored at ``path``; None when it is missing or unreadable (then recompute)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write(path: Path, data: Any) -> None:
    """Store ``data`` atomically; a cache that can't be written is skipped, not an error."""
    from cnnlab.lifecycle.atomic import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError:
        pass
