"""timm's standard model checks on every model cnnlab registers in timm, and their weights.

The models come from timm's registry (``cnnlab.models.registry.cnnlab_models``: every
entrypoint defined in a cnnlab module), not from a list here, so a newly registered
model is checked without editing this file. The checks follow timm's own test-suite
(tests/test_models.py of pytorch-image-models): forward, backward, the pretrained cfg,
forward_features / forward_head / reset_classifier, forward_intermediates and
prune_intermediate_layers, features_only, TorchScript and torch.fx, on small inputs
(64x64, batch 1-2). MogaNet-Base and -Large (44M and 82M parameters) are ``slow``.

The pretrained-weights tests write checkpoints in the MogaNet release's format (timm's
training-script checkpoint: ``state_dict``, maybe ``state_dict_ema``, ``args`` as an
``argparse.Namespace``, optimizer state ...) and load them the three ways a user can:
``pretrained=True`` from the torch.hub cache (the URL path), ``pretrained_cfg_overlay``
with a file, and ``model.checkpoint=<file>``.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import pytest
import timm
import torch
from conftest import compose
from hydra.utils import instantiate
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import FeatureInfo
from timm.models._features import FeatureGetterNet
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import cnnlab.models.weights as weights
from cnnlab.errors import CheckpointError, ModelError
from cnnlab.models import build_model
from cnnlab.models.alexnet import AlexNet
from cnnlab.models.registry import cnnlab_models, extra_kwargs

SIZE = 64  # input side for the fast checks: every ImageNet stem here still leaves >= 1x1
SLOW = {"moganet_base", "moganet_large"}  # 44M / 82M params: seconds per build and per pass
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in cnnlab_models()]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _create(name: str, size: int = SIZE, **kw) -> torch.nn.Module:
    """``timm.create_model`` sized for ``size`` inputs, seeded: a fixed-input-size model
    (AlexNet: its classifier width follows the input) is told the size."""
    if timm.get_pretrained_cfg(name).fixed_input_size:
        kw.setdefault("img_size", size)
    torch.manual_seed(0)
    return timm.create_model(name, **kw)


def _x(batch: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_lists_cnnlab_models():
    names = cnnlab_models()
    assert "cnnlab_alexnet" in names and {f"moganet_{v}" for v in ("xtiny", "tiny", "small")} <= set(names)
    for n in names:
        assert timm.models.model_entrypoint(n).__module__.startswith("cnnlab.models.")
    assert "resnet18" not in names and extra_kwargs("resnet18") == ()


# --------------------------------------------------------------------------- timm's checks
@pytest.mark.parametrize("name", MODELS)
def test_forward(name):
    model = _create(name).eval()
    with torch.no_grad():
        out = model(_x())
    assert out.shape == (1, 1000) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_backward(name):
    """Train mode, 42 classes: every parameter gets a gradient."""
    model = _create(name, num_classes=42).train()
    out = model(_x(batch=2))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg(name):
    """The pretrained cfg's fields, checked against the model built at the cfg's input size.

    On the meta device: shapes without arithmetic, so 224x224 costs nothing.
    """
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert cfg["num_classes"] == 1000 and len(cfg["input_size"]) == 3
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    assert 0 < cfg["crop_pct"] <= 1 and cfg["interpolation"] in ("bilinear", "bicubic")
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
    assert sd[cfg["classifier"] + ".weight"].shape[0] == 1000
    x = torch.empty(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features and tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])


@pytest.mark.parametrize("name", MODELS)
def test_forward_features_and_head(name):
    """timm's reset_classifier contract: 0 classes -> pooled (B, head_hidden_size); no pool -> the map."""
    model = _create(name).eval()
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        assert torch.equal(model.forward_head(feats), logits)
        assert feats.ndim == 4 and feats.shape[:2] == (1, model.num_features)
        pool = model.global_pool
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
        model.reset_classifier(7, pool)
        assert model(x).shape == (1, 7)
        assert _create(name, num_classes=0, global_pool="").eval()(x).shape == feats.shape


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    """Four stages as feature_info says; indices, stop_early, intermediates_only; pruning."""
    model = _create(name).eval()
    info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) == 4
    x = _x()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(inter) == 4
        for c, r, o in zip(channels, reductions, inter, strict=True):
            assert o.shape[:2] == (1, c) and not torch.isnan(o).any()
            assert o.shape[-1] <= math.ceil(SIZE / r) + 1 and o.shape[-2] <= math.ceil(SIZE / r) + 1
        assert torch.equal(inter[-1], final)  # the last stage's output is forward_features'

        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last2] == [t.shape for t in inter[2:]]
        ends = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert torch.equal(ends[0], inter[0]) and torch.equal(ends[1], inter[3])
        early, (only,) = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early, inter[1]) and torch.equal(only, inter[1])
        with pytest.raises(AssertionError):
            model.forward_intermediates(x, indices=[4])

        n_params = sum(p.numel() for p in model.parameters())
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1]
        assert sum(p.numel() for p in model.parameters()) < n_params
        pruned = model.forward_intermediates(x, intermediates_only=True)
        assert len(pruned) == 2 and all(torch.equal(a, b) for a, b in zip(pruned, inter[:2], strict=True))
        assert model.num_features == channels[1] and model.num_classes == 0
        assert model(x).shape == inter[1].shape  # no head left: forward gives the features


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    """features_only goes through forward_intermediates (timm's FeatureGetterNet)."""
    base = _create(name).eval()
    feat = _create(name, features_only=True).eval()  # same seed: same weights
    assert isinstance(feat, FeatureGetterNet)
    assert feat.feature_info.channels() == [i["num_chs"] for i in base.feature_info]
    x = _x()
    with torch.no_grad():
        expected = base.forward_intermediates(x, intermediates_only=True)
        outs = feat(x)
        assert len(outs) == 4 and all(torch.equal(a, b) for a, b in zip(outs, expected, strict=True))
        sub = _create(name, features_only=True, out_indices=(1, 2)).eval()
        assert sub.feature_info.channels() == feat.feature_info.channels()[1:3]
        assert all(torch.equal(a, b) for a, b in zip(sub(x), expected[1:3], strict=True))
    assert not any(k.startswith(("model.head.", "model.classifier.")) for k in feat.state_dict())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", MODELS)
def test_torchscript(name):
    with timm.set_scriptable(True):
        model = _create(name).eval()
    scripted = torch.jit.script(model)
    x = _x()
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_torch_fx(name):
    """Symbolic tracing (torchvision's extractor, timm's leaf modules): same output, and a
    train-mode backward through the traced graph, as timm's fx tests do."""
    model = _create(name, num_classes=42)
    tracer_kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )
    x = _x(batch=2)
    model.eval()
    fx_model.eval()
    with torch.no_grad():
        (out,) = fx_model(x).values()
        assert torch.allclose(out, model(x), atol=1e-5)
    fx_model.train()
    (out,) = fx_model(x).values()
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in fx_model.parameters())


# --------------------------------------------------------------------------- AlexNet
def test_alexnet_entry_builds_as_before():
    """``model=alexnet`` now goes through timm (cnnlab_alexnet). Under one seed it must give
    the weights the AlexNet constructor gives, and consume the RNG identically, so a
    seeded default run's numbers don't move. (Checked against the pre-timm factory's code,
    too: identical state dicts and RNG draws; see the branch's report.)"""
    cfg = compose(["model=alexnet"]).model
    assert (cfg.source, cfg.arch) == ("timm", "cnnlab_alexnet")
    kw = dict(num_classes=10, in_chans=1, img_size=32, small_input=True)
    torch.manual_seed(0)
    direct = AlexNet(drop_rate=0.5, batch_norm=True, **kw)
    after_direct = torch.rand(3)
    torch.manual_seed(0)
    via_timm = instantiate(cfg, **kw)
    after_timm = torch.rand(3)
    assert type(via_timm) is AlexNet and via_timm.pretrained_cfg["architecture"] == "cnnlab_alexnet"
    a, b = direct.state_dict(), via_timm.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(after_direct, after_timm)


def test_source_cnnlab_is_an_alias():
    kw = dict(num_classes=10, in_chans=3, img_size=32, small_input=True)
    torch.manual_seed(0)
    old = build_model("alexnet", "cnnlab", "alexnet", **kw)
    torch.manual_seed(0)
    new = build_model("alexnet", "timm", "cnnlab_alexnet", **kw)
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    torch.manual_seed(0)
    legacy = build_model("alexnet", "timm", "alexnet", **kw)  # a run saved with model.arch=alexnet
    assert all(torch.equal(v, legacy.state_dict()[k]) for k, v in old.state_dict().items())
    assert type(build_model("m", "cnnlab", "moganet_xtiny", **kw)).__name__ == "MogaNet"
    with pytest.raises(ModelError, match="not a cnnlab model; choose one of cnnlab_alexnet, moganet_"):
        build_model("m", "cnnlab", "resnet18", **kw)


def test_alexnet_has_no_pretrained_weights():
    with pytest.raises(ModelError, match="no published weights for 'cnnlab_alexnet'.*model.checkpoint"):
        build_model("alexnet", "timm", "cnnlab_alexnet", 10, img_size=32, small_input=True, pretrained=True)


# --------------------------------------------------------------------------- MogaNet weights
VARIANT = "moganet_xtiny"


class NotAllowed:
    """A class no release needs: weights_only loading must refuse to build it."""


def _release(sd: dict, ema: dict | None = None, args: object | None = None) -> dict:
    """A checkpoint as timm's training script (the MogaNet release) saves it."""
    ck = {
        "epoch": 299,
        "arch": VARIANT,
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "weight_decay": 0.03, "params": [0, 1]}]},
        "version": 2,
        "args": args or argparse.Namespace(model=VARIANT, input_size=224, lr=1e-3, crop_pct=0.9,
                                           drop_path=0.05, aa="rand-m7-mstd0.5-inc1", amp=True),
        "metric": 76.5,
    }
    if ema is not None:
        ck["state_dict_ema"] = ema
    return ck


def _url() -> str:
    return timm.get_pretrained_cfg(VARIANT).url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub dir, and a refused network: weights come from there or nowhere."""
    import urllib.error

    def refused(*a, **k):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "urlopen", refused)  # what torch.hub.download_url_to_file calls
    yield Path(torch.hub.get_dir())
    torch.hub.set_dir(old)


def _seeded(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(VARIANT, **kw).eval()


def test_release_checkpoint_loads_strictly_with_the_same_logits(hub, tmp_path):
    """The must-reach: a release-format checkpoint, loaded strictly through each path, gives
    the logits its state dict gives when loaded directly."""
    sd = _seeded(0).state_dict()
    x = _x(batch=2)
    direct = _seeded(1)  # another init: only the weights can make the logits agree
    direct.load_state_dict(sd, strict=True)
    with torch.no_grad():
        want = direct(x)

    cached = weights.cached_path(_url())
    cached.parent.mkdir(parents=True)
    torch.save(_release(sd), cached)  # as a download would leave it
    local = tmp_path / cached.name
    local.write_bytes(cached.read_bytes())

    loaded = {
        "pretrained (URL, cached)": _seeded(1, pretrained=True),
        "pretrained_cfg_overlay file": _seeded(1, pretrained=True, pretrained_cfg_overlay=dict(file=str(local))),
        "model.pretrained=true": build_model(VARIANT, "timm", VARIANT, 1000, img_size=224, pretrained=True),
        "model.checkpoint": build_model(VARIANT, "timm", VARIANT, 1000, img_size=224, checkpoint=str(local)),
    }
    for how, model in loaded.items():
        with torch.no_grad():
            assert torch.equal(model.eval()(x), want), how


def test_release_checkpoint_prefers_ema(hub, tmp_path):
    """small/base/large are released with EMA weights, which their accuracy refers to."""
    plain, ema = _seeded(0).state_dict(), _seeded(2).state_dict()
    path = tmp_path / "release.pth.tar"
    torch.save(_release(plain, ema=ema), path)
    for model in (_seeded(1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
                  build_model(VARIANT, "timm", VARIANT, 1000, checkpoint=str(path))):
        assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_release_checkpoint_loads_strictly(hub, tmp_path):
    sd = _seeded(0).state_dict()
    del sd["norm4.running_var"]
    path = tmp_path / "broken.pth.tar"
    torch.save(_release(sd), path)
    with pytest.raises(RuntimeError, match="norm4.running_var"):
        _seeded(1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(CheckpointError, match="no weights for layer 'norm4.running_var'"):
        build_model(VARIANT, "timm", VARIANT, 1000, checkpoint=str(path))


def test_release_checkpoint_refuses_other_globals(hub, tmp_path):
    """weights_only=True: only argparse.Namespace is allowed beyond plain data."""
    path = tmp_path / "evil.pth.tar"
    torch.save(_release(_seeded(0).state_dict(), args=NotAllowed()), path)
    refused = "the moganet_xtiny weights file was refused: loading it would import test_timm_models.NotAllowed"
    with pytest.raises(ModelError, match=refused) as ei:  # timm's file loader
        _seeded(1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert "\n" not in str(ei.value)
    cached = weights.cached_path(_url())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match=refused) as ei:
        build_model(VARIANT, "timm", VARIANT, 1000, pretrained=True)  # the URL path (torch.hub)
    assert "\n" not in str(ei.value)
    with pytest.raises(CheckpointError, match="refused: loading it would import .*NotAllowed") as ei:
        build_model(VARIANT, "timm", VARIANT, 1000, checkpoint=str(path))
    assert "\n" not in str(ei.value)
    # The Namespace allowance is scoped to cnnlab's loads, not registered for the process.
    torch.save(_release({}), tmp_path / "ns.pt")
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(tmp_path / "ns.pt", weights_only=True)


def test_pretrained_offline_fails_in_one_line(hub):
    """Not downloaded, the download refused: one line naming the URL, where to put the file,
    and model.checkpoint."""
    url = timm.get_pretrained_cfg("moganet_tiny").url
    with pytest.raises(ModelError) as ei:
        build_model("moganet_tiny", "timm", "moganet_tiny", 10, pretrained=True)
    msg = str(ei.value)
    assert "\n" not in msg and url in msg and str(weights.cached_path(url)) in msg
    assert "model.checkpoint=<file>" in msg and "model.pretrained=true" in msg
    assert not any(weights.cached_path(url).parent.glob("*")), "nothing half-written is left"
    with pytest.raises(ModelError, match="moganet_tiny.in1k_256"):
        timm.create_model("moganet_tiny.in1k_256", pretrained=True)


def test_pretrained_is_downloaded_once_into_the_cache(hub, tmp_path, monkeypatch):
    """The download is tried (served here from a local file) and lands where timm looks;
    the next build reads the cache."""
    import urllib.request

    sd = _seeded(0).state_dict()
    served = tmp_path / "served.pth.tar"
    torch.save(_release(sd), served)
    asked = []

    def serve(req, *a, **k):
        asked.append(req.full_url)
        return urllib.request.urlopen(served.as_uri())

    monkeypatch.setattr(torch.hub, "urlopen", serve)
    for _ in range(2):
        model = build_model(VARIANT, "timm", VARIANT, 1000, img_size=224, pretrained=True)
    assert asked == [_url()]
    assert weights.cached_path(_url()).read_bytes() == served.read_bytes()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_pretrained_adapts_classes_and_channels(hub):
    """timm's rule for other datasets: the head starts fresh, the stem is summed to 1 channel."""
    src = _seeded(0)
    cached = weights.cached_path(_url())
    cached.parent.mkdir(parents=True)
    torch.save(_release(src.state_dict()), cached)
    model = build_model(VARIANT, "timm", VARIANT, 10, in_chans=1, small_input=True, pretrained=True)
    sd, ref = model.state_dict(), src.state_dict()
    assert sd["head.weight"].shape == (10, 192)
    stem = "patch_embed1.projection.0.weight"
    assert torch.allclose(sd[stem], ref[stem].sum(dim=1, keepdim=True))
    body = [k for k in ref if not k.startswith(("head.", stem))]
    assert all(torch.equal(sd[k], ref[k]) for k in body)
    # features_only=True loads the same body (timm drops the head before the load).
    feat = timm.create_model(VARIANT, pretrained=True, features_only=True).state_dict()
    assert all(torch.equal(feat[f"model.{k}"], ref[k]) for k in ref if not k.startswith("head."))
