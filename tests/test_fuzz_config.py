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

from cnnlab.config import CROSS_RULES, RULES, Rule, rules_markdown, validate
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
def documented_ok(rule: Rule, v: Any) -> bool:
    """Does the documented rule (its fields, as docs/errors.md shows them) allow the composed value v?"""
    if v is None:
        return rule.null
    real = isinstance(v, (int, float)) and not isinstance(v, bool)

    def within(x: float) -> bool:
        lo_ok = rule.lo is None or (x > rule.lo if rule.lo_open else x >= rule.lo)
        hi_ok = rule.hi is None or (x < rule.hi if rule.hi_open else x <= rule.hi)
        return math.isfinite(x) and lo_ok and hi_ok

    if rule.kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and within(v)
    if rule.kind == "number":
        return real and within(v)
    if rule.kind == "choice":
        return any(v == c and isinstance(v, bool) == isinstance(c, bool) for c in rule.choices)
    if rule.kind == "flag":
        return v is True or v is False
    if rule.kind in ("text", "target"):
        return isinstance(v, str) and bool(v.strip()) and (rule.kind == "text" or "." in v and " " not in v)
    if rule.kind == "numbers":
        items = list(v) if isinstance(v, (list, ListConfig)) else None
        return (bool(items) and (not rule.lengths or len(items) in rule.lengths)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and within(x) for x in items))
    if rule.kind == "path":
        p = Path(v)
        if not v.strip():
            return False
        if rule.path == "file":
            return p.is_file()
        if rule.path == "exists":
            return p.exists()
        return p.is_dir() or not p.exists() and all(q.is_dir() for q in p.absolute().parents if q.exists())
    raise AssertionError(rule.kind)


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
    return "accepted", OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def judge(world, key: str, value: str, stats: dict[str, int]) -> str:
    """Run one case and assert the outcome is one of the two allowed; return it."""
    outcome, got = run_override(world, key, value)
    stats[outcome] = stats.get(outcome, 0) + 1
    if outcome == "rejected":
        assert "\n" not in got and "Traceback" not in got, (key, value, got)
        named = re.search(rf"(^|[ ('+]){re.escape(key)}(\[\d+\])?([=) ]|$)", got) or "cannot be parsed" in got
        # A rule on two keys may name the other one (val_split + test_split, mean and std).
        partner = [c.key for c in CROSS_RULES if c.key != key and c.key in got]
        assert named or partner, f"{key}={value}: the message does not name the key: {got}"
        if got.startswith(f"{key}=") and " is not allowed: " in got:  # validate's own rule
            cross = [c for c in CROSS_RULES if c.key == key]
            assert RULES[key].allowed in got or cross, (key, value, got)
    else:
        assert documented_ok(RULES[key], got), f"{key}={value} silently accepted as {got!r}"
    return outcome


# --------------------------------------------------------------------------- wrong values
TRICKY_TEXT = ["", " ", "a b", "it's", 'say "hi"', "'", '"', "  lead", "tab\there", "ünïcode", "a,b", "x=y",
               "[1, 2]", "{a: 1}", "null", "true", "-1", "1e999",
               # interpolations: broken, naming no key, an unset variable, another key's value
               "${", "${nope}", "${oc.env:CNNLAB_NO_SUCH_VARIABLE}", "${seed}", "${dataset.mean}"]
# The same for every key: the usual suspects of each type (the random test draws the rest).
GENERIC = [None, True, -1, 10**30, 1.5, float("nan"), float("-inf"), [], {"a": 1}, "", "a b", 'it\'s "so"',
           "tab\there", "${oc.env:CNNLAB_NO_SUCH_VARIABLE}"]


def edge_values(key: str, tmp: Path) -> list[Any]:
    """The deterministic wrong (or borderline) values of one key: bounds +- 1, types, paths."""
    rule = RULES[key]
    vals: list[Any] = list(GENERIC)
    for b in (rule.lo, rule.hi):
        if b is not None:  # each bound, and just past it on either side
            vals += [b, b - 1, b + 1, b - 0.001, b + 0.001]
    if rule.kind == "int" and rule.hi is None:
        vals += [2**63]
    if rule.kind == "numbers":
        vals += [[0], [-1], [float("nan")], [0.5] * (max(rule.lengths or (1,)) + 1), [0.5] * 3, [True], [[0.5]]]
    if rule.kind == "choice":
        vals += [str(c).upper() for c in rule.choices if c is not None][:2] + ["no-such-choice"]
    if rule.kind == "path":
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
    lo = rule.lo if rule.lo is not None else 0
    scalars = st.one_of(
        st.integers(max_value=int(lo) - 1) if rule.kind in ("int", "number") else st.integers(),
        st.integers(min_value=int(rule.hi) + 1) if rule.hi is not None else st.integers(min_value=10**12),
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
    kind = draw(st.sampled_from(["value", "value", "path" if rule.kind == "path" else "value", "raw"]))
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
        ("dataset.augment.crop_padding=-1", ["dataset.augment.crop_padding=-1 is not allowed", ">= 0"]),
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
