"""The conf/ folder, and composing it outside a Hydra app (help, inspect, the model table, tests):
the config ``python -m cnnlab.run <overrides>`` would get. Only the standard library and Hydra
are imported: ``--help`` uses this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@contextmanager
def composing(conf_dir: Path = CONF_DIR) -> Iterator[Callable[..., Any]]:
    """``with composing() as compose: compose(overrides, config_name="config")``: Hydra stays
    initialised across many compositions (the inspector's ``--warm`` composes 84)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cnnlab.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        def compose(overrides: list[str] | None = None, config_name: str = "config") -> Any:
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))

        yield compose


def compose(overrides: list[str] | None = None, config_name: str = "config",
            conf_dir: Path = CONF_DIR) -> Any:
    """The composed DictConfig for ``overrides`` (``paths.output_dir`` is left unresolved)."""
    with composing(conf_dir) as c:
        return c(overrides, config_name)
