"""``python -m cnnlab.models``: a table of every model in conf/model/.

For each entry (the generic ``timm`` and ``torchvision`` ones are skipped: they
have no architecture of their own) the config is composed as a run composes it,
and the model is built twice at 10 classes and 3 channels:

* with ``small_input`` (the 32x32 datasets' setting): params, MACs at 32x32, and
  the final feature map at 32x32;
* without it (the ImageNet stem): MACs at 224x224 and the final map at 32x32, to
  show what the stem does to a small image.

MACs are Conv2d + Linear multiply-accumulates (``cnnlab.models.profile``). The
models are built on PyTorch's meta device, so the whole table takes seconds.
``--markdown`` prints a Markdown table; ``--update FILE`` rewrites the table
between the markers in FILE (docs/models.md), so the docs come from the code.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.compose import CONF_DIR, compose
from cnnlab.errors import CnnlabError, run_main
from cnnlab.units import human

GENERIC = ("timm", "torchvision")  # take any architecture by name: nothing to tabulate
BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
COMMAND = "python -m cnnlab.models --update docs/models.md"


@dataclass
class Row:
    name: str
    source: str
    arch: str
    params: int
    macs_32: int
    macs_224: int
    map_small: str
    map_plain: str  # "too small" when the ImageNet stem cannot take 32x32 (AlexNet's 11x11/4)


def model_entries(conf_dir: Path = CONF_DIR) -> list[str]:
    """The conf/model entries with an architecture of their own, sorted by name."""
    return sorted(p.stem for p in (conf_dir / "model").glob("*.yaml") if p.stem not in GENERIC)


def _source_label(source: str, arch: str) -> str:
    from cnnlab.models.registry import LEGACY_ARCHS, is_cnnlab_model

    if source == "cnnlab" or (source == "timm" and is_cnnlab_model(LEGACY_ARCHS.get(arch, arch))):
        return "cnnlab, registered in timm"
    return source


def describe(name: str, conf_dir: Path = CONF_DIR) -> Row:
    """Compose ``model=<name>``, build it with and without small_input, and measure it."""
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
    return Row(
        name=name,
        source=_source_label(mcfg.source, mcfg.arch),
        arch=mcfg.arch,
        params=count_params(small),
        macs_32=count_macs(small, (3, 32, 32)),
        macs_224=count_macs(plain, (3, 224, 224)),
        map_small=_map(final_feature_map(small, (3, 32, 32))),
        map_plain=_map_or_error(plain, (3, 32, 32)),
    )


def _map_or_error(model: object, shape: tuple[int, int, int]) -> str:
    from cnnlab.models.adapt import final_feature_map

    try:
        return _map(final_feature_map(model, shape))
    except RuntimeError as e:  # a layer's output would be empty: the image is too small
        if "too small" not in str(e):  # e.g. "Output size is too small" from a pool
            raise
        return "too small"


def _map(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


HEADER = ["model", "source", "arch", "params", "MACs 32x32 (small_input)", "MACs 224x224",
          "final map 32x32 (small_input)", "final map 32x32 (ImageNet stem)"]


def _cells(r: Row) -> list[str]:
    return [r.name, r.source, r.arch, human(r.params), human(r.macs_32), human(r.macs_224),
            r.map_small, r.map_plain]


def format_text(rows: list[Row]) -> str:
    table = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    right = {3, 4, 5}  # numbers read best right-aligned
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


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
    names = args.only or model_entries()
    t0 = time.perf_counter()
    rows = []
    for name in names:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(describe(name))
    print(f"  {len(rows)} models in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if args.update:
        update_file(args.update, format_markdown(rows))
        print(f"wrote the table into {args.update}", file=sys.stderr)
    print(format_markdown(rows) if args.markdown or args.update else format_text(rows))


if __name__ == "__main__":
    sys.exit(run_main(main))
