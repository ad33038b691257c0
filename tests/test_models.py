"""Tests for the model zoo: every conf/model entry, built the way a run builds it.

The cases come from the conf/model folder (a new YAML file is tested without editing
this file); the generic ``timm`` and ``torchvision`` entries are tried with two cheap
architectures each. Each model is built through Hydra's real composition and
``hydra.utils.instantiate``, as ``cnnlab.train.train`` does.

Time: the module runs on one intra-op thread (as test_moganet does: on a busy 2-core
machine that is as fast and leaves a core to the others). The batch-32 steps of
moganet_small/base/large take 30-90 s each on one core, so they, the 224x224 passes
and the two end-to-end ``cnnlab.run`` processes are ``slow``.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF, REPO, TINY, compose, run_cli
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cnnlab.models  # noqa: F401  (registers MogaNet in timm)
from cnnlab.errors import CheckpointError, ModelError
from cnnlab.models import build_model
from cnnlab.models.adapt import final_feature_map
from cnnlab.models.outputs import split_output

NUM_CLASSES = 10

# The generic entries take any name: two cheap ones each.
GENERIC = {"timm": ("resnet10t", "efficientnet_b0"), "torchvision": ("resnet18", "mobilenet_v3_small")}
# One SGD step at batch 32 takes 30-90 s on one core for these: run it in the slow set.
# The batch-32 step of the bigger variants is slow-marked: their family's smallest member
# (resnet18, moganet_xtiny) runs the same code in `make test`.
SLOW_STEP = {"moganet_tiny", "moganet_small", "moganet_base", "moganet_large", "resnet34", "resnet50"}
# The final feature map at 32x32 with small_input, per model family (class name), as the
# adapt.py docstring and the MogaNet/AlexNet modules state it. Without small_input the
# ImageNet stems leave 1x1 (AlexNet's 11x11/4 stem can't take 32x32 at all).
SMALL_INPUT_SIDE = {
    "AlexNet": 3,
    "ResNet": 4,
    "MogaNet": 4,
    "GoogLeNetAux": 2,
    "MobileNetV2": 2,  # torchvision
    "MobileNetV3": 2,  # timm (V3 and V4) and torchvision
    "EfficientNet": 2,  # timm (MobileNetV2 and EfficientNet)
}
# The design's contract (../shared/design.md): these entries must exist.
CONTRACT = {"alexnet", "resnet18", "resnet34", "resnet50", "googlenet", "mobilenet_v2",
            "mobilenet_v3", "mobilenet_v3_small", "mobilenet_v4", "moganet_xtiny", "moganet_tiny",
            "moganet_small", "moganet_base", "moganet_large", "timm", "torchvision"}


def _entries() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _cases() -> list[tuple[str, str | None]]:
    """(entry, arch): arch is None for a named entry, a model name for a generic one."""
    return [(e, a) for e in _entries() for a in GENERIC.get(e, (None,))]


CASES = _cases()
IDS = [f"{e}:{a}" if a else e for e, a in CASES]


def _label(case: tuple[str, str | None]) -> str:
    return case[1] or case[0]


def compose_model(entry: str, arch: str | None = None, *overrides: str) -> DictConfig:
    """The composed ``cfg.model`` of ``model=<entry>``, as a run composes it."""
    extra = [f"model.arch={arch}"] if arch else []
    return compose([f"model={entry}", *extra, *overrides]).model


def build(case: tuple[str, str | None], *overrides: str, **kw) -> torch.nn.Module:
    """Instantiate a case with the dataset's values a run passes (10 classes, RGB, 32x32)."""
    kw = {"num_classes": NUM_CLASSES, "in_chans": 3, "img_size": 32, "small_input": True, **kw}
    return instantiate(compose_model(*case, *overrides), **kw)


def _root_cause(e: BaseException) -> BaseException:
    """Hydra wraps what a target raises in InstantiationException: the original error."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The training loop's loss: CE on the logits plus the model's weighted extra terms."""
    logits, extra = split_output(model(x))
    assert logits.shape == (x.shape[0], NUM_CLASSES)
    return F.cross_entropy(logits, y) + sum(w * F.cross_entropy(a, y) for w, a in extra), list(extra)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# Module scope with params: pytest runs every test of one case together, so each model is
# built once for them and freed before the next one is built.
@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request) -> tuple[str, str | None]:
    return request.param


@pytest.fixture(scope="module")
def model32(case) -> torch.nn.Module:
    """The case built for 32x32 RGB images with small_input, seeded."""
    torch.manual_seed(0)
    return build(case)


# --------------------------------------------------------------------------- the folder
def test_contract_entries_exist():
    assert CONTRACT <= set(_entries()), f"missing: {sorted(CONTRACT - set(_entries()))}"


def test_entry_names(case):
    """A named entry's ``name`` is its file name; a generic one shows the real architecture."""
    entry, arch = case
    cfg = compose_model(entry, arch)
    assert cfg.name == (arch or entry)
    assert cfg.source in ("cnnlab", "timm", "torchvision")


@pytest.mark.parametrize("entry", sorted(GENERIC))
def test_generic_entry_needs_arch(entry):
    """``arch: ???`` stays mandatory (the schema must not fill in a default)."""
    cfg = compose_model(entry)
    assert OmegaConf.is_missing(cfg, "arch")


# --------------------------------------------------------------------------- every model
def test_forward_backward_32(case, model32):
    """Batch 2 at 32x32 (small_input): (2, 10) logits, a finite loss, finite gradients."""
    model32.train()
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, NUM_CLASSES, (2,))
    loss, extra = _loss(model32, x, y)
    assert extra == [], "default configs return plain logits (aux heads are opt-in)"
    assert torch.isfinite(loss)
    model32.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model32.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameters are not used at 32x32"
    assert all(torch.isfinite(g).all() for g in grads)


def _train_step_changes_weights(model: torch.nn.Module, lr: float = 0.1) -> None:
    """One SGD step at batch 32, 32x32: a finite loss, and the weights move.

    The first layer and the classifier must change. Not every tensor can: timm's
    ResNets zero the last BN of each residual branch, so the branch convs get no
    gradient until that BN has moved. So every tensor whose largest update is big
    enough to show in float32 (over 1e-3 of its largest weight) must have changed:
    none is left out of the optimizer or detached from the loss.
    """
    model.train()
    torch.manual_seed(2)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, NUM_CLASSES, (32,))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad(set_to_none=True)
    loss, _ = _loss(model, x, y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True)]
    assert changed[0], "the first layer must train"
    assert changed[-1], "the classifier must train"
    for (name, p), b, moved in zip(model.named_parameters(), before, changed, strict=True):
        if p.grad is not None and (lr * p.grad).abs().max() > 1e-3 * b.abs().max():
            assert moved, f"{name} got a gradient but did not change"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if _label(c) in SLOW_STEP else c for c in CASES],
    ids=IDS, indirect=True,
)
def test_train_step_batch32(case, model32):
    _train_step_changes_weights(model32)


def test_final_feature_map_32(case, model32):
    """The final map at 32x32 is what adapt.py claims, and 1x1 with the ImageNet stem."""
    family = type(model32).__name__
    side = SMALL_INPUT_SIDE[family]
    c, h, w = final_feature_map(model32, (3, 32, 32))
    assert (h, w) == (side, side), f"{family} with small_input: {h}x{w}, expected {side}x{side}"
    plain = build(case, small_input=False, img_size=224)  # as an ImageNet run builds it
    if family == "AlexNet":
        with pytest.raises(RuntimeError, match="too small"):
            final_feature_map(plain, (3, 32, 32))
    else:
        assert final_feature_map(plain, (3, 32, 32)) == (c, 1, 1)


def test_one_input_channel(case):
    """in_chans=1 (MNIST, digits): the first conv takes one channel."""
    torch.manual_seed(0)
    model = build(case, in_chans=1).eval()
    with torch.no_grad():
        logits, _ = split_output(model(torch.randn(2, 1, 32, 32)))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_forward_backward_224(case):
    """Batch 2 at 224x224 with the ImageNet stem."""
    torch.manual_seed(0)
    model = build(case, img_size=224, small_input=False).train()
    x, y = torch.randn(2, 3, 224, 224), torch.randint(0, NUM_CLASSES, (2,))
    loss, _ = _loss(model, x, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- GoogLeNet's aux heads
class _OneBatch:
    """The loader interface train_one_epoch needs: an iterable of (x, y) batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batches = [(x, y)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return 1


def test_googlenet_aux_loss_through_training_loop():
    """aux_logits=true: train_one_epoch's loss is main + 0.3 * (aux1 + aux2); eval is main only.

    The loop knows nothing of GoogLeNet: the model returns (logits, [(w, aux), ...]) in
    training, and ``split_output`` hands the extra terms to the loss.
    """
    from cnnlab.train import evaluate, train_one_epoch

    torch.manual_seed(0)
    model = build(("googlenet", None), "model.aux_logits=true")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
    policy = SimpleNamespace(device=torch.device("cpu"), amp_dtype=None)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    # The expected gradient, by hand; dropout draws the same masks under the same seed.
    model.train()
    torch.manual_seed(5)
    logits, extra = split_output(model(x))
    assert [w for w, _ in extra] == [0.3, 0.3] and all(a.shape == logits.shape for _, a in extra)
    main = F.cross_entropy(logits, y)
    total = main + 0.3 * (F.cross_entropy(extra[0][1], y) + F.cross_entropy(extra[1][1], y))
    model.zero_grad()
    total.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert expected["aux1.fc2.weight"].abs().sum() > 0, "the aux heads get gradients"

    # The same step through the real loop: SGD with lr=1 moves each weight by -grad.
    model.load_state_dict(start)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.manual_seed(5)
    out = train_one_epoch(model, _OneBatch(x, y), opt, SimpleNamespace(step=lambda: None), policy)
    assert out.loss_sum.item() == pytest.approx(main.item() * 4, rel=1e-4), "logged loss: main only"
    for n, p in model.named_parameters():
        torch.testing.assert_close(start[n] - p.detach(), expected[n], rtol=1e-3, atol=1e-5, msg=n)

    # Evaluation: plain logits, so evaluate() scores the main head only.
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)
    loss, acc = evaluate(model, _OneBatch(x, y), policy)
    assert loss == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-4) and 0 <= acc <= 1


def test_googlenet_aux_weight_key():
    model = build(("googlenet", None), "model.aux_logits=true", "model.aux_weight=0.5").train()
    _, extra = split_output(model(torch.randn(2, 3, 32, 32)))
    assert [w for w, _ in extra] == [0.5, 0.5]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("entry,arch,close", [("timm", "resnet181", "resnet18"),
                                              ("torchvision", "googlenett", "googlenet")])
def test_unknown_arch_is_one_line_with_closest(entry, arch, close):
    with pytest.raises(InstantiationException) as ei:
        build((entry, arch))
    err = _root_cause(ei.value)
    assert isinstance(err, ModelError)
    msg = str(err)
    assert "\n" not in msg and arch in msg and f"closest: {close}" in msg


def _run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli([*TINY, *overrides], cwd=tmp_path)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.mark.slow  # a whole `cnnlab.run` process: ~10-25 s
def test_run_unknown_arch_exits_2_with_one_line(tmp_path):
    """``python -m cnnlab.run model=timm model.arch=resnet181`` -> one `error: ...` line, rc 2."""
    line = _one_error_line(_run_cli(tmp_path, "model=timm", "model.arch=resnet181"))
    assert "resnet181" in line and "closest: resnet18" in line


@pytest.mark.slow
def test_run_generic_entry_without_arch_exits_2_with_one_line(tmp_path):
    line = _one_error_line(_run_cli(tmp_path, "model=timm"))
    assert "model.arch" in line


def test_pretrained_offline_fails_fast(monkeypatch, tmp_path):
    """pretrained=true with no network and no cache: a one-line ModelError within seconds."""
    import urllib.error

    import huggingface_hub.constants as hf

    import cnnlab.models.factory as factory

    def refused(*a, **k):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(factory, "_reachable", lambda url, timeout=3.0: False)  # the HF hub's probe
    monkeypatch.setattr(torch.hub, "urlopen", refused)  # torchvision's download is tried, and refused
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    try:
        for source, arch in (("timm", "resnet10t"), ("torchvision", "resnet18")):
            t0 = time.perf_counter()
            with pytest.raises(ModelError, match="pretrained") as ei:
                build_model(arch, source, arch, NUM_CLASSES, pretrained=True)
            assert time.perf_counter() - t0 < 10
            assert "\n" not in str(ei.value) and "model.pretrained=false" in str(ei.value)
    finally:
        torch.hub.set_dir(old_hub)
    assert hf.HF_HUB_OFFLINE is False, "the offline switch is restored"


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_loads(tmp_path):
    """model.checkpoint=<file>: a bare state dict, or a checkpoint holding one under 'model'."""
    torch.manual_seed(0)
    src = build(("resnet18", None))
    sd = src.state_dict()
    torch.save(sd, tmp_path / "bare.pt")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    for f in ("bare.pt", "ckpt.pt"):
        torch.manual_seed(1)  # different init: only the file can make them equal
        model = build(("resnet18", None), f"model.checkpoint={tmp_path / f}")
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("override,layer,file_shape,model_shape", [
    ({"in_chans": 1}, "conv1.weight", (64, 3, 3, 3), (64, 1, 3, 3)),
    ({"num_classes": 5}, "fc.weight", (10, 512), (5, 512)),
])
def test_checkpoint_mismatch_names_layer_and_shapes(tmp_path, override, layer, file_shape, model_shape):
    torch.save(build(("resnet18", None)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(InstantiationException) as ei:
        build(("resnet18", None), f"model.checkpoint={tmp_path / 'w.pt'}", **override)
    err = _root_cause(ei.value)
    assert isinstance(err, CheckpointError)
    msg = str(err)
    assert f"'{layer}'" in msg and str(file_shape) in msg and str(model_shape) in msg, msg


# --------------------------------------------------------------------------- the table
def test_model_table_markdown(capsys):
    from cnnlab.models.__main__ import _source_label, main

    main(["--markdown", "--only", "alexnet", "mobilenet_v3_small"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| model | source |") and len(out) == 4
    assert out[2].startswith("| alexnet | cnnlab, registered in timm | cnnlab_alexnet |")
    assert "| 128x3x3 | too small |" in out[2]
    assert out[3].startswith("| mobilenet_v3_small | timm | mobilenetv3_small_100 |")
    assert "| 576x2x2 | 576x1x1 |" in out[3]
    assert _source_label("timm", "moganet_tiny") == "cnnlab, registered in timm"
    assert _source_label("cnnlab", "alexnet") == "cnnlab, registered in timm"  # the old alias
    assert _source_label("torchvision", "googlenet") == "torchvision"


def test_docs_table_lists_every_entry():
    """docs/models.md's generated table has one row per named entry (regenerate if not)."""
    from cnnlab.models.__main__ import BEGIN, COMMAND, END, model_entries

    text = (REPO / "docs" / "models.md").read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = [m.group(1) for m in re.finditer(r"^\| (\w+) \|", table, re.M)][1:]  # skip the header
    assert rows == model_entries(), f"stale table: run `{COMMAND}`"
    assert COMMAND in text
