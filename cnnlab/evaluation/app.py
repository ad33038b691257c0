"""What ``python -m cnnlab.evaluate`` and ``python -m cnnlab.predict`` share around Hydra.

``app`` answers ``--help`` from a static text (no Hydra, no torch: instant); both run
inside :func:`cnnlab.errors.run_main`, the boundary of every entry point.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any


def dataset_overrides(argv: list[str]) -> list[str]:
    """``dataset.root=x`` without ``dataset=<name>`` -> ``+dataset.root=x``: conf/evaluate.yaml's
    dataset is null (the run's own), so the ``+`` adds the keys, applied on top of the run's own."""
    if any(a.split("=", 1)[0] in ("dataset", "+dataset", "++dataset") for a in argv if "=" in a):
        return argv  # dataset=<name>: the keys override that dataset
    return [f"+{a}" if a.startswith("dataset.") and "=" in a else a for a in argv]


def app(main: Callable[[], object], usage: str, rewrite: Callable[[list[str]], list[str]] | None = None) -> int:
    """Run a Hydra ``main``; ``--help`` prints ``usage``; ``rewrite`` edits the command line first."""
    args = sys.argv[1:]
    if {"--help", "-h"} & set(args):
        print(usage)
        return 0
    if rewrite is not None:
        sys.argv = [sys.argv[0], *rewrite(args)]
    main()
    return 0


def check_keys(values: dict[str, Any], rules: dict[str, Any]) -> None:
    """Refuse, in one line, a value its rule (of :mod:`cnnlab.config`) does not allow; keys
    absent from ``values`` are skipped."""
    from cnnlab.errors import ConfigError

    for key, rule in rules.items():
        if key in values and not rule.allows(values[key]):
            raise ConfigError(f"{key}={values[key]!r} is not allowed: {rule.allowed}")


def app_keys(cfg: Any, **rules: Any) -> dict[str, Any]:
    """An app's Hydra config as plain data, its ``batch_size``, ``device`` and other keys checked."""
    from omegaconf import OmegaConf

    from cnnlab.config import Rule

    raw = OmegaConf.to_container(cfg, resolve=True)
    check_keys(raw, {"device": Rule(choices=("auto", "cpu", "cuda", "mps")), **rules})
    return raw


def check_dataset_overrides(overrides: dict[str, Any]) -> None:
    """``dataset.KEY=VALUE`` on top of the run's own dataset: a key the schema knows, of its
    type and in its range (the run's rules), or one line saying what is allowed."""
    from omegaconf import OmegaConf

    from cnnlab.config import RULES, DatasetConfig

    # An unknown key or a wrong type raises OmegaConf's error: cnnlab.errors.describe says it.
    OmegaConf.merge(OmegaConf.structured({"dataset": DatasetConfig}), {"dataset": overrides})
    flat = {f"dataset.{k}": v for k, v in overrides.items() if not isinstance(v, dict)}
    flat |= {f"dataset.{k}.{kk}": vv for k, v in overrides.items() if isinstance(v, dict) for kk, vv in v.items()}
    check_keys(flat, {k: r for k, r in RULES.items() if k in flat})


def next_free(path: str | os.PathLike, is_dir: bool) -> str:
    """``path`` if free, else ``path-2``, ``path-3``, ... (before a file's suffix): never overwrite.

    A folder is claimed as it is found (``mkdir`` without ``exist_ok``), so two evaluations
    started at once get two folders; a file is claimed by its writer (``open(..., "x")``).
    """
    from pathlib import Path

    p = Path(path)
    stem, suffix = (p.name, "") if is_dir else (p.stem, p.suffix)
    for n in itertools.count(1):
        candidate = p if n == 1 else p.with_name(f"{stem}-{n}{suffix}")
        if is_dir:
            with contextlib.suppress(FileExistsError):
                candidate.mkdir(parents=True)
                return str(candidate)
        elif not candidate.exists():
            return str(candidate)
    raise AssertionError  # itertools.count never ends
