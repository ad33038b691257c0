"""A fast ``--help`` for ``python -m cnnlab.run``: Hydra's own builds a config repository per
group, each a deep copy of the ConfigStore (2-4 s here); this reads ``conf/`` and composes
once, in well under a second. ``--hydra-help`` still shows Hydra's own flags.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.compose import CONF_DIR, compose


def group_options(conf: Path = CONF_DIR) -> dict[str, list[str]]:
    """{group: [option, ...]} for every folder of conf/ that holds YAML files."""
    groups: dict[str, list[str]] = {}
    for d in sorted(p for p in conf.rglob("*") if p.is_dir()):
        rel = d.relative_to(conf).as_posix()
        if rel.split("/")[0] in ("hydra", "demo"):  # not the user's experiment knobs
            continue
        names = sorted(p.stem for p in d.glob("*.yaml"))
        if names:
            groups[rel] = names
    return groups


def help_text(overrides: list[str]) -> str:
    """The groups and options, then the config the overrides compose to (unresolved)."""
    from omegaconf import OmegaConf

    cfg = compose(overrides)
    lines = [
        "cnnlab: train and compare image-classification CNNs.",
        "",
        "usage: python -m cnnlab.run [group=option ...] [key=value ...]   (-m for a sweep: model=a,b,c)",
        "",
        "== Configuration groups ==",
        "Compose your configuration from those groups (group=option)",
        "",
        *[f"{g}: {', '.join(opts)}" for g, opts in group_options().items()],
        "",
        "== Config ==",
        "Override anything in the config (foo.bar=value)",
        "",
        OmegaConf.to_yaml(cfg).rstrip(),
        "",
        "Hydra's own flags (--cfg job, --multirun, --info, ...): python -m cnnlab.run --hydra-help",
    ]
    return "\n".join(lines)
