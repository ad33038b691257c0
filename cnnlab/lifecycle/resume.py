"""Resuming in the run's own folder, with the run's own config.

Hydra picks the output folder before ``train`` runs, so the folder has to follow
``resume=`` at composition time: conf/hydra/default.yaml sets

    hydra.run.dir:       ${cnnlab_run_dir:${resume},'outputs/...'}
    hydra.output_subdir: ${cnnlab_hydra_subdir:${hydra.runtime.output_dir}}

``cnnlab_run_dir`` is the resumed run's folder (a run folder, or the folder above
``checkpoints/`` for a checkpoint file inside one); any other checkpoint starts a
new folder. A path that does not exist fails here, before any folder is made.
``cnnlab_hydra_subdir`` keeps the run's original ``.hydra/`` files: a folder that
already holds them gets this launch's files in ``.hydra/resume-<n>/`` instead.

A resumed run keeps the config it was started with: :func:`resume_config` composes
the run's original overrides (its ``.hydra/overrides.yaml``), those of its earlier
resumes (``.hydra/resume-<n>/``) and then this command's, so ``resume=<folder>``
alone suffices and ``resume=<folder> trainer.epochs=20`` changes only the number
of epochs, for this resume and the next ones.

Only the standard library, OmegaConf and Hydra are imported: the CLI registers the
resolvers at startup.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CheckpointError, ConfigError

log = logging.getLogger("cnnlab")


def run_folder_of(target: str | Path) -> Path | None:
    """The run folder a resume target belongs to, or None for a stray checkpoint file."""
    p = Path(target)
    if p.is_dir():
        return p
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def _run_dir(resume: Any, default: str) -> str:
    """Resolver ``cnnlab_run_dir``: the resumed run's folder, else ``default``."""
    if not resume:
        return default
    if not Path(str(resume)).exists():
        raise CheckpointError(f"resume={str(resume)!r}: no such run folder or checkpoint file")
    folder = run_folder_of(str(resume))
    return str(folder) if folder is not None else default


def _hydra_subdir(output_dir: str) -> str:
    """Resolver ``cnnlab_hydra_subdir``: ``.hydra``, or ``.hydra/resume-<n>`` if that is taken."""
    hydra_dir = Path(output_dir) / ".hydra"
    if not (hydra_dir / "config.yaml").exists():
        return ".hydra"
    n = 1
    while (hydra_dir / f"resume-{n}").exists():
        n += 1
    return f".hydra/resume-{n}"


def register_resolvers() -> None:
    """Register the two resolvers (idempotent); call before Hydra composes."""
    for name, fn in (("cnnlab_run_dir", _run_dir), ("cnnlab_hydra_subdir", _hydra_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``; ``model=x`` -> ``model``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(original: list[str], current: list[str]) -> list[str]:
    """The run's original overrides, minus those this command sets again, then this command's."""
    now = {_override_key(o) for o in current}
    return [o for o in original if _override_key(o) not in now] + list(current)


def resume_config(cfg: DictConfig) -> DictConfig:
    """Under Hydra, with ``resume=<run>``: the config of the run's overrides + this command's.

    Returns ``cfg`` unchanged outside a Hydra app (tests call ``train(cfg)`` with the
    full config), for a checkpoint outside a run folder, or when nothing differs.
    """
    from hydra.core.hydra_config import HydraConfig

    if not cfg.get("resume") or not HydraConfig.initialized():
        return cfg
    folder = run_folder_of(cfg.resume)
    saved = folder / ".hydra" / "overrides.yaml" if folder is not None else None
    if saved is None or not saved.is_file():
        return cfg
    # The launch that started the run, then each earlier resume in order (a resume that
    # changed trainer.epochs keeps its change), then this command.
    numbered = {p.parent.name.removeprefix("resume-"): p for p in saved.parent.glob("resume-*/overrides.yaml")}
    later = [numbered[n] for n in sorted((n for n in numbered if n.isdigit()), key=int)]
    original: list[str] = []
    for path in [saved, *later]:
        original = merge_overrides(original, [str(o) for o in OmegaConf.load(path)])
    current = [str(o) for o in HydraConfig.get().overrides.task]
    merged = merge_overrides(original, current)
    if merged == current:
        return cfg
    from hydra import compose

    try:
        new = compose(config_name=HydraConfig.get().job.config_name, overrides=merged)
    except Exception as e:  # noqa: BLE001 - Hydra raises several types; the first line says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"resume={cfg.resume!r}: the run's overrides {original} plus this "
                          f"command's {current} do not compose: {first}") from None
    log.info("resume: the run's overrides %s, then this command's %s", original, current)
    return new
