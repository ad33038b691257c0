"""A schema-driven fuzzer: wrong values for every config key never get a traceback or slip through.

For every key of the composed config (cnnlab/config.py RULES says what each allows),
wrong values are generated: out of range, wrong type, empty, huge, NaN/inf, text
with spaces and quotes, paths to nothing, a file where a folder is wanted and the
reverse. Each becomes a command-line override and goes through what
``python -m cnnlab.run`` does before torch is imported: Hydra's override parser and
its override step on the composed config (the schema's type checks), then
``validate``. Every outcome must be either

- rejected with ONE line that names the key (what the CLI prints after ``error:``),
  from a CnnlabError or from Hydra/OmegaConf through cnnlab.errors.describe; or
- accepted, with a composed value that the key's documented rule allows
  (checked here by :func:`documented_ok`, written apart from ``Rule.allows``).

A sample of the rejected ones, drawn with a fixed seed, also runs through the real
CLI in a subprocess. The numbers (cases per run, time) are in the README.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TINY, compose, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import ListConfig, OmegaConf

from cnnlab.config import PATHS, RELATIONS, RULES, Rule, rules_markdown, validate
from cnnlab.errors import CnnlabError, describe

# Compositions that between them hold every key of every shipped option's config.
BASES = {
    "default": [],
    "adam": ["optimizer=adam"],
    "onecycle": ["scheduler=onecycle"],
    "step": ["scheduler=step"],
    "googlenet": ["model=googlenet"],
    "imagefolder": ["dataset=imagefolder", "dataset.root={tmp}/images"],
}
# Keys with a rule that no shipped option sets: fuzzed as `+key=value` on the default.
ADDED = [k for k in RULES if k.split(".")[0] in ("optimizer", "scheduler")]


def leaves(node: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config, dotted."""
    out = []
    for k in node.keys():
        child = node._get_node(k)
        key = f"{prefix}{k}"
        out += leaves(child, key + ".") if OmegaConf.is_dict(child) else [key]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tmp folder the path values point into, and the composed bases."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("fuzz")
    for c in range(2):
        (tmp / "images" / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (12, 12)).save(tmp / "images" / f"class{c}" / "0.png")
    (tmp / "a file.txt").write_text("a file, not a folder")
    (tmp / "weights.pt").write_bytes(b"not really weights: only a file that exists")
    (tmp / "a folder").mkdir()
    bases = {name: compose([o.format(tmp=tmp) for o in ovs], output_dir=tmp / "run") for name, ovs in BASES.items()}
    pristine = {name: OmegaConf.to_container(cfg, resolve=False) for name, cfg in bases.items()}
    where = {}
    for name, cfg in bases.items():
        for key in leaves(cfg):
            where.setdefault(key, name)
    yield tmp, bases, where
    for name, cfg in bases.items():  # every case put its key back
        assert OmegaConf.to_container(cfg, resolve=False) == pristine[name], name


# --------------------------------------------------------------------------- the oracle
def documented_ok(rule: Rule, v: Any, get: Any) -> bool:
    """Does the documented rule (its fields, as docs/errors.md shows them) allow the composed value v?"""
    if v is None:
        return rule.null
    if rule.choices:
        return any(v == c and isinstance(v, bool) == isinstance(c, bool) for c in rule.choices)

    def within(x: Any) -> bool:  # the range read from its text: "[0, 1)", ">= 1", "[0, dataset.image_size)"
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
            return False
        value = lambda b: get(b) if re.search("[a-z]", b) else float(b)  # noqa: E731
        m = re.fullmatch(r"([\[(])(.+), (.+)([\])])", rule.range)
        if m:
            lo, hi = value(m[2]), value(m[3])
            return (x >= lo if m[1] == "[" else x > lo) and (x <= hi if m[4] == "]" else x < hi)
        if rule.range:
            op, b = rule.range.split()
            return {">=": x >= value(b), ">": x > value(b), "<=": x <= value(b), "<": x < value(b)}[op]
        return True

    if rule.type is int:
        return isinstance(v, int) and within(v)
    if rule.type is float:
        return within(v)
    if rule.type is bool:
        return v is True or v is False
    if rule.type is list:
        items = list(v) if isinstance(v, (list, ListConfig)) else None
        return (bool(items) and rule.length in (None, len(items)) and all(within(x) for x in items)
                and all(isinstance(x, float) for x in items if rule.item is float))
    if not isinstance(v, str) or not v.strip():
        return False
    if rule.type in (str, "import"):
        return rule.type is str or "." in v and " " not in v
    assert rule.type in PATHS, rule
    p = Path(v)
    if rule.type == "file":
        return p.is_file()
    if rule.type == "exists":
        return p.exists()
    return p.is_dir() or not p.exists() and all(q.is_dir() for q in p.absolute().parents if q.exists())


def render(v: Any) -> str:
    """A Python value as a Hydra override value (what a user would type)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(render(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{render(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


_ABSENT = object()


def _snapshot(cfg: Any, key: str) -> Any:
    """The key's value as written (``${...}`` kept), or _ABSENT."""
    node = cfg
    for part in key.split("."):
        node = node._get_node(part) if node is not None and OmegaConf.is_dict(node) and part in node else None
    if node is None:
        return _ABSENT
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node._value()


def _restore(cfg: Any, key: str, value: Any) -> None:
    """Put the key back as it was before the case (a copy of the whole config per case is 3x slower)."""
    from omegaconf import open_dict

    parent, _, leaf = key.rpartition(".")
    with open_dict(cfg):
        if value is _ABSENT:
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(cfg, key, value, merge=False)


def run_override(world, key: str, value: str) -> tuple[str, Any]:
    """('rejected', the one line) or ('accepted', the composed value) for ``key=value``.

    The case runs on the base config and the key is put back afterwards (the tests
    check that every base is unchanged at the end).
    """
    tmp, bases, where = world
    added = key not in where
    cfg = bases[where.get(key, "default")]
    before = _snapshot(cfg, key)
    line = f"{'+' if added else ''}{key}={value}"
    try:
        return _run_on(cfg, key, line)
    finally:
        _restore(cfg, key, before)


def _run_on(cfg: Any, key: str, line: str) -> tuple[str, Any]:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    try:
        # What Hydra's composition does with a key=value override (config_loader_impl), in struct mode.
        parsed = OverridesParser.create().parse_overrides([line])
        ConfigLoaderImpl.validate_sweep_overrides_legal(parsed, run_mode=RunMode.RUN, from_shell=True)
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
        validate(cfg)
    except Exception as e:  # noqa: BLE001 - every outcome is judged below
        message = str(e) if isinstance(e, CnnlabError) else describe(e)
        assert message is not None, f"{line}: a traceback ({type(e).__name__}: {e})"
        return "rejected", message
    value = OmegaConf.select(cfg, key)
    get = {k: OmegaConf.select(cfg, k) for k in ("dataset.image_size", "trainer.epochs")}.get  # bounds named
    return "accepted", (OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value, get)


def judge(world, key: str, value: str, stats: dict[str, int]) -> str:
    """Run one case and assert the outcome is one of the two allowed; return it."""
    outcome, got = run_override(world, key, value)
    stats[outcome] = stats.get(outcome, 0) + 1
    if outcome == "rejected":
        assert "\n" not in got and "Traceback" not in got, (key, value, got)
        named = re.search(rf"(^|[ ('+]){re.escape(key)}(\[\d+\]|\.\w+)?([=) ]|$)", got) or "cannot be parsed" in got
        # A rule on two keys may name the other one (val_split + test_split, mean and std).
        partner = [k for k, _, _ in RELATIONS if k != key and k in got]
        assert named or partner, f"{key}={value}: the message does not name the key: {got}"
        if got.startswith(f"{key}=") and " is not allowed: " in got:  # validate's own rule
            relation = [a for k, a, _ in RELATIONS if k == key and a in got]
            keyed = re.search(r"[a-z]\.", RULES[key].range)  # shown with the other key's value
            assert RULES[key].allowed in got or relation or keyed, (key, value, got)
    else:
        assert documented_ok(RULES[key], *got), f"{key}={value} silently accepted as {got[0]!r}"
    return outcome


# --------------------------------------------------------------------------- wrong values
TRICKY_TEXT = ["", " ", "a b", "it's", 'say "hi"', "'", '"', "  lead", "tab\there", "ünïcode", "a,b", "x=y",
               "[1, 2]", "{a: 1}", "null", "true", "-1", "1e999",
               # interpolations: broken, naming no key, an unset variable, another key's value
               "${", "${nope}", "${oc.env:CNNLAB_NO_SUCH_VARIABLE}", "${seed}", "${dataset.mean}"]
# The same for every key: the usual suspects of each type (the random test draws the rest).
GENERIC = [None, True, -1, 10**30, 1.5, float("nan"), float("-inf"), [], {"a": 1}, "", "a b", 'it\'s "so"',
           "tab\there", "${oc.env:CNNLAB_NO_SUCH_VARIABLE}"]


def _numeric_bounds(rule: Rule) -> list[float]:
    """The bounds of a rule's range that are numbers (a bound naming a key is the other key's)."""
    return [b for _, b in rule.bounds() if isinstance(b, (int, float))]


def edge_values(key: str, tmp: Path) -> list[Any]:
    """The deterministic wrong (or borderline) values of one key: bounds +- 1, types, paths."""
    rule = RULES[key]
    vals: list[Any] = list(GENERIC)
    for b in _numeric_bounds(rule):  # each bound, and just past it on either side
        vals += [b, b - 1, b + 1, b - 0.001, b + 0.001]
    if rule.type is int and len(_numeric_bounds(rule)) < 2:
        vals += [2**63]
    if rule.type is list:
        vals += [[0], [-1], [float("nan")], [0.5] * ((rule.length or 1) + 1), [0.5] * 3, [True], [[0.5]]]
    if rule.choices:
        vals += [str(c).upper() for c in rule.choices if c is not None][:2] + ["no-such-choice"]
    if rule.type in PATHS:
        vals += [str(tmp / "nowhere"), str(tmp / "a file.txt"), str(tmp / "a file.txt" / "below"),
                 str(tmp / "a folder"), str(tmp / "weights.pt"), "~/does/not/exist"]
    else:
        vals += [str(tmp / "a file.txt")]
    return vals


def keys_to_fuzz(world) -> list[str]:
    _, _, where = world
    return sorted(set(where) | set(ADDED))


def test_every_key_has_a_rule(world):
    """A new schema or conf key must come with its rule (and so its docs row)."""
    _, _, where = world
    missing = sorted(k for k in where if k not in RULES)
    assert not missing, f"add rules to cnnlab/config.py RULES for: {missing}"


def test_rule_table_is_in_the_docs():
    doc = (REPO / "docs" / "errors.md").read_text()
    assert rules_markdown() in doc, "regenerate the table in docs/errors.md: python -m cnnlab.config"


def test_dataset_names_are_the_registry():
    from cnnlab.config import DATASET_NAMES
    from cnnlab.data.registry import DATASETS

    assert set(DATASET_NAMES) == set(DATASETS)


def test_every_key_edge_values(world, capsys):
    """Every key x every deterministic wrong value: a one-line rejection, or a documented-valid value."""
    tmp = world[0]
    stats: dict[str, int] = {}
    t0 = time.perf_counter()
    for key in keys_to_fuzz(world):
        for v in edge_values(key, tmp):
            judge(world, key, render(v), stats)
    with capsys.disabled():
        print(f"\nedge values: {sum(stats.values())} cases over {len(keys_to_fuzz(world))} keys {stats} "
              f"in {time.perf_counter() - t0:.1f} s")
    assert stats["rejected"] >= 500 and stats.get("accepted", 0) > 0


@st.composite
def bad_override(draw, keys: list[str], tmp: Path) -> tuple[str, str]:
    """(key, override value): random wrong values, typed or not, rendered or raw text."""
    key = draw(st.sampled_from(keys))
    rule = RULES[key]
    bounds = _numeric_bounds(rule)
    lo, hi = (bounds[0] if bounds else 0), (bounds[1] if len(bounds) == 2 else None)
    scalars = st.one_of(
        st.integers(max_value=int(lo) - 1) if rule.type in (int, float) else st.integers(),
        st.integers(min_value=int(hi) + 1) if hi is not None else st.integers(min_value=10**12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="$\\\x00"), max_size=12),
        st.sampled_from(TRICKY_TEXT),
        st.booleans(),
        st.none(),
    )
    values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.sampled_from("abc"), scalars,
                                                                                 max_size=2))
    paths = st.sampled_from(["nowhere", "a file.txt", "a file.txt/below", "a folder", "weights.pt"]).map(
        lambda p: str(tmp / p))
    raw = st.text(st.sampled_from("ab1.-_ '\"[]{},=:"), max_size=8)  # typed as is: may not parse
    kind = draw(st.sampled_from(["value", "value", "path" if rule.type in PATHS else "value", "raw"]))
    if kind == "raw":
        return key, draw(raw)
    return key, render(draw(paths if kind == "path" else values))


def test_fuzz_random_bad_overrides(world, capsys):
    """500 random wrong values over every key, per run; none gets a traceback or slips through."""
    keys, tmp = keys_to_fuzz(world), world[0]
    stats: dict[str, int] = {}
    t0 = time.perf_counter()

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(bad_override(keys, tmp))
    def case(kv):
        judge(world, *kv, stats)

    case()
    with capsys.disabled():
        print(f"\nrandom values: {sum(stats.values())} cases {stats} in {time.perf_counter() - t0:.1f} s")
    assert sum(stats.values()) >= 500 and stats.get("rejected", 0) >= 300


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("seed=-1", ["seed=-1 is not allowed", "[0, 4294967295]"]),
        ("seed=99999999999", ["seed=99999999999 is not allowed", "[0, 4294967295]"]),
        ("optimizer.weight_decay=-1", ["optimizer.weight_decay=-1 is not allowed", ">= 0"]),
        ("model.drop_rate=1.5", ["model.drop_rate=1.5 is not allowed", "[0, 1)"]),
        ("dataset.augment.crop_padding=-1", ["dataset.augment.crop_padding=-1 is not allowed", "[0, 31]"]),
        ("dataset.limit=0", ["dataset.limit=0 is not allowed", ">= 1"]),
        ("optimizer.momentum=2", ["optimizer.momentum=2 is not allowed", "[0, 1)"]),
        ("model.aux_weight=-1", ["model.aux_weight=-1.0 is not allowed", ">= 0"]),
        ("dataset.std=[0]", ["dataset.std=[0.0] is not allowed", "> 0"]),
        ("trainer.epochs=2.5", ["trainer.epochs=2.5: ", "Integer"]),  # the key, the value, OmegaConf's words
        ("optimizer.lr=inf", ["optimizer.lr=inf is not allowed", "> 0"]),
    ],
)
def test_the_issues_cases_get_one_clear_line(world, override, needles):
    key, value = override.split("=", 1)
    outcome, line = run_override(world, key, value)
    assert outcome == "rejected"
    for needle in needles:
        assert needle in line, (needle, line)


def _cli_sample(world, n: int = 20, seed: int = 16) -> list[str]:
    """n rejected overrides over distinct keys, drawn with a fixed seed from the edge values."""
    tmp = world[0]
    rng = random.Random(seed)
    keys = [k for k in keys_to_fuzz(world) if k not in ADDED or k in world[2]]
    rng.shuffle(keys)
    sample = []
    for key in keys:
        values = edge_values(key, tmp)
        rng.shuffle(values)
        for v in values:
            if run_override(world, key, render(v))[0] == "rejected":
                sample.append(f"{key}={render(v)}")
                break
        if len(sample) == n:
            break
    return sample


def test_fuzz_sample_through_the_cli(world, tmp_path):
    """About 20 of the rejected cases, as a user types them: exit != 0, one line, no traceback."""
    sample = _cli_sample(world)
    assert len(sample) == 20
    t0 = time.perf_counter()
    for override in sample:
        res = run_cli([*TINY, override], cwd=tmp_path, timeout=120)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode != 0, (override, res.stdout[-1000:])
        assert "Traceback" not in res.stderr + res.stdout, (override, res.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (override, res.stderr[-3000:])
    finished = [p for p in tmp_path.rglob("summary.json") if json.loads(p.read_text()).get("status") == "completed"]
    assert not finished
    print(f"cli sample: {len(sample)} cases in {time.perf_counter() - t0:.1f} s: {sample}")


# --------------------------------------------------------------------------- accepted edges
# Edge values that are refused later by design, each for a runtime fact that only the
# build can know (docs/errors.md), or too costly to build here: key -> why.
RUNTIME_FACTS = {
    "dataset.image_size": "below 16 px AlexNet's maps vanish (the model's runtime check); above 64: costly here",
    "device.compile": "true: torch.compile takes minutes on a CPU",
    "dataset.small_input": "false at 16 px: AlexNet's ImageNet stem can't take it (the model's runtime check)",
    "dataset.num_workers": "above 2: a process each",
    "dataset.limit": "below trainer.batch_size: a split smaller than a batch is a runtime fact",
    "device.name": "cuda and mps: not on this machine (a runtime fact)",
    "dataset.in_chans": "the dataset's own channel count is a fact of its files",
    "dataset.name": "another dataset: a download (picked with dataset=<name>)",
    "dataset.download": "a download: the network is a runtime fact",
    "model.source": "another library's model: picked with model=<name>, its arch with it",
    "model.pretrained": "a download: the network is a runtime fact",
}


def accepted_edges(key: str, rule: Any, get: Any) -> list[Any]:
    """The bounds of a key and one step either side, null and every choice: what validate may accept."""
    vals: list[Any] = [None] if rule.null else []
    vals += list(rule.choices) + ([True, False] if rule.type is bool else [])
    step = 1 if rule.type is int else 0.001
    for _, b in rule.bounds(get):
        if isinstance(b, (int, float)) and rule.type in (int, float, list):
            vals += [b, b + step, b - step]
    if rule.type is list:
        vals = [[(rule.item or type(v))(v)] * (rule.length or 1) for v in vals if v is not None] \
            or [[0.5] * (rule.length or 1)]
    return vals


def _too_costly_or_runtime(key: str, v: Any, get: Any) -> bool:
    if key in ("dataset.name", "dataset.download", "model.source", "model.pretrained"):
        return v != get(key)
    if key == "dataset.image_size":
        return not 16 <= v <= 64
    if key == "device.compile":
        return v is True
    if key == "dataset.small_input":
        return v is False
    if key == "dataset.num_workers":
        return v > 2
    if key == "dataset.limit":
        return v is not None and v < get("trainer.batch_size")
    if key == "device.name":
        return v in ("cuda", "mps")
    if key == "dataset.in_chans":
        return v != get("dataset.in_chans")
    return False


def _packed_configs(base: list[str]) -> list[list[str]]:
    """Every accepted edge of every key, packed greedily into as few configs as validate accepts."""
    import copy

    cfg = compose(base)
    get = lambda k: OmegaConf.select(cfg, k)  # noqa: E731
    todo = [(key, v) for key in leaves(cfg)
            if key in RULES and key.startswith(tuple(PREFIXES)) and not str(_snapshot(cfg, key)).startswith("${")
            for v in accepted_edges(key, RULES[key], get) if not _too_costly_or_runtime(key, v, get)]
    packs: list[tuple[Any, list[str]]] = []  # (the config so far, its overrides)
    for key, v in todo:
        for i, (packed, overrides) in enumerate([*packs, (cfg, [])]):
            if any(o.split("=")[0] == key for o in overrides):
                continue
            trial = copy.deepcopy(packed)
            OmegaConf.update(trial, key, v, merge=False)
            try:
                validate(trial)
            except CnnlabError:
                continue
            if i == len(packs):
                packs.append((trial, []))
            packs[i] = (trial, [*overrides, f"{key}={render(v)}"])
            break
    return [overrides for _, overrides in packs]


# The sections the build reads (paths and resume: their edges are null or a folder, tested above).
PREFIXES = ["model.", "dataset.", "optimizer.", "scheduler.", "device.", "trainer.", "loss.", "mix.", "ema.",
            "fit.", "seed"]
EDGE_BASE = [*TINY, "dataset.image_size=16", "trainer.save_checkpoints=false", "trainer.log_feature_maps=false"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["optimizer=adam", "scheduler=onecycle"], ["scheduler=step"]])
def test_accepted_edges_are_never_refused_later(extra, tmp_path):
    """Every edge value validate() accepts trains (data, model, optimizer, schedule, loop, fit diagnosis)
    without a ConfigError, ModelError or ValueError: a rule is checked once, before torch."""
    from cnnlab.train import train

    base = [*EDGE_BASE, *extra]
    packs = _packed_configs(base)
    assert sum(len(p) for p in packs) >= 100
    for i, pack in enumerate(packs):
        cfg = compose([*base, *pack], output_dir=tmp_path / f"run{i}")
        try:
            summary = train(cfg)
        except (CnnlabError, ValueError) as e:
            pytest.fail(f"accepted by validate, refused later: {pack}: {type(e).__name__}: {e}")
        assert summary["status"] in ("completed", "diverged"), pack
