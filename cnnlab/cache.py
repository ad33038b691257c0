"""An on-disk cache of JSON answers that are slow only because of what they import.

The layer-shape inspector's table takes a fraction of a second to compute, but
computing it means importing torch, torchvision and timm (about 7 s on a 2-core
CPU). The table is a pure function of the model config, the input shape, the
library versions and our model code, so it is stored under a hash of all of those:
a changed input gives a new name, and a stale entry is never read.

Where: ``$CNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnlab``, else
``~/.cache/cnnlab`` (the XDG convention that torch.hub and Hugging Face follow).
Deleting the folder is always safe.
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
    """Installed versions of ``dists`` from their metadata: no import of the packages."""
    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def source_digest(*paths: Path) -> str:
    """A hash of the bytes of the given files (the code an answer depends on)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:24]


def read(path: Path) -> Any | None:
    """The JSON stored at ``path``; None when it is missing or unreadable (then recompute)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write(path: Path, data: Any) -> bool:
    """Store ``data`` atomically; False (and nothing written) when the folder is not writable.

    A cache that cannot be written is not an error: the answer is still printed.
    """
    from cnnlab.lifecycle.atomic import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError:
        return False
    return True
