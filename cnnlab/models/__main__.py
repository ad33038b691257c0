"""``python -m cnnlab.models``: a table of every model in conf/model/.

Each entry (bar the generic ``timm`` and ``torchvision``) is composed as a run composes
it and built on the meta device at 10 classes and 3 channels, with ``small_input`` (32x32)
and without (the ImageNet stem). ``--update FILE`` rewrites the table between the markers
in FILE (docs/models.md), so the docs come from the code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cnnlab.compose import CONF_DIR, compose
from cnnlab.errors import CnnlabError, run_main
from cnnlab.units import human

GENERIC = ("timm", "torchvision")  # take any architecture by name: nothing to tabulate
BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
COMMAND = "python -m cnnlab.models --update docs/models.md"
HEADER = ["model", "source", "arch", "params", "MACs 32x32 (small_input)", "MACs 224x224",
          "final map 32x32 (small_input)", "final map 32x32 (ImageNet stem)"]


def model_entries(conf_dir: Path = CONF_DIR) -> list[str]:
    """The conf/model entries with an architecture of their own, sorted by name."""
    return sorted(p.stem for p in (conf_dir / "model").glob("*.yaml") if p.stem not in GENERIC)


def _source_label(source: str, arch: str) -> str:
    from cnnlab.models.registry import LEGACY_ARCHS, is_cnnlab_model

    if source == "cnnlab" or (source == "timm" and is_cnnlab_model(LEGACY_ARCHS.get(arch, arch))):
        return "cnnlab, registered in timm"
    return source


def describe(name: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Compose ``model=<name>``, build it with and without small_input: its row of HEADER."""
    import torch
    from hydra.utils import instantiate

    import cnnlab.models  # noqa: F401  (registers MogaNet in timm before instantiate)
    from cnnlab.models.adapt import final_feature_map
    from cnnlab.models.profile import count_macs, count_params

    mcfg = compose([f"model={name}"], conf_dir=conf_dir).model
    built = {}
    for small in (True, False):
        # On the meta device tensors have shapes but no storage and ops do no arithmetic:
        # params, MACs and feature-map shapes come out exact, in a fraction of the time.
        with torch.device("meta"):
            built[small] = instantiate(mcfg, num_classes=10, in_chans=3,
                                       img_size=32 if small else 224, small_input=small)
    small, plain = built[True], built[False]
    try:
        map_plain = _map(final_feature_map(plain, (3, 32, 32)))
    except RuntimeError:  # the probe's shape error: the ImageNet stem can't take 32x32 (AlexNet's 11x11/4)
        map_plain = "too small"
    return [name, _source_label(mcfg.source, mcfg.arch), mcfg.arch, human(count_params(small)),
            human(count_macs(small, (3, 32, 32))), human(count_macs(plain, (3, 224, 224))),
            _map(final_feature_map(small, (3, 32, 32))), map_plain]


def _map(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def format_text(rows: list[list[str]]) -> str:
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[list[str]]) -> str:
    right = {3, 4, 5}  # numbers read best right-aligned
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(HEADER))) + "|"
    return "\n".join(["| " + " | ".join(HEADER) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])


def update_file(path: Path, table: str) -> None:
    """Replace the text between the BEGIN and END markers in ``path`` with ``table``."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise CnnlabError(f"{path} has no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.models", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--update", metavar="FILE", type=Path,
                        help="write the Markdown table between the markers in FILE (docs/models.md)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these conf/model entries")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    rows = []
    for name in args.only or model_entries():
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(describe(name))
    print(f"  {len(rows)} models in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if args.update:
        update_file(args.update, format_markdown(rows))
        print(f"wrote the table into {args.update}", file=sys.stderr)
    print(format_markdown(rows) if args.markdown or args.update else format_text(rows))


if __name__ == "__main__":
    sys.exit(run_main(main))
