"""Tests for cnnlab.models.moganet: checkpoint layout, parameter counts, timm API, shapes."""

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnlab.models.moganet as moganet
from cnnlab.models.moganet import MogaNet, MultiOrderDWConv, split_channels
from cnnlab.models.registry import extra_kwargs, register

VARIANTS = ["moganet_base", "moganet_large", "moganet_small", "moganet_tiny", "moganet_xtiny"]

# Exact parameter counts at 1000 classes. xtiny/tiny are the released checkpoints' counts
# (spec); small/base/large are this construction's, pinned against regressions.
PARAM_COUNTS = {
    "moganet_xtiny": 2_956_066,
    "moganet_tiny": 5_197_332,
    "moganet_small": 25_335_675,
    "moganet_base": 43_720_475,
    "moganet_large": 82_480_978,
}
PAPER_PARAMS_M = {
    "moganet_xtiny": 2.97,
    "moganet_tiny": 5.20,
    "moganet_small": 25.3,
    "moganet_base": 43.9,
    "moganet_large": 82.5,
}


def _spec_dir() -> Path | None:
    """Directory holding moganet_{xtiny,tiny}.state_dict.json (the released layouts)."""
    candidates = [
        os.environ.get("CNNLAB_MOGANET_SPEC_DIR"),
        # A copy of ../shared/moganet/*.json, committed so the test runs in any clone.
        Path(__file__).resolve().parent / "data" / "moganet",
    ]
    for c in candidates:
        if c and (Path(c) / "moganet_tiny.state_dict.json").is_file():
            return Path(c)
    return None


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initialising memory."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _stage_shapes(model: MogaNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shape of norm1..norm4 for input x."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        getattr(model, f"norm{i}").register_forward_hook(
            lambda m, i, o: shapes.append(tuple(o.shape))
        )
        for i in range(1, 5)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Run this module on one intra-op thread, restoring the setting afterwards.

    The inputs are tiny, so one thread is as fast; on a busy 2-core machine, OpenMP's
    thread pool otherwise makes the first pass of each conv shape take seconds.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_tiny() -> MogaNet:
    torch.manual_seed(0)
    return timm.create_model("moganet_tiny", num_classes=10, in_chans=1, small_input=True)


# --- checkpoint layout and sizes -------------------------------------------------------


@pytest.mark.parametrize("variant", ["xtiny", "tiny"])
def test_state_dict_matches_released_layout(variant: str) -> None:
    spec = _spec_dir()
    if spec is None:
        pytest.fail("tests/data/moganet/moganet_*.state_dict.json is missing")
    ref = json.loads((spec / f"moganet_{variant}.state_dict.json").read_text())
    model = _meta_model(f"moganet_{variant}")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(ref["state_dict"]) - set(ours))
    extra = sorted(set(ours) - set(ref["state_dict"]))
    assert not missing and not extra, f"missing={missing[:5]} extra={extra[:5]}"
    assert ours == ref["state_dict"]  # same shapes for every key
    assert list(ours) == list(ref["state_dict"])  # and the same key order
    assert _num_params(model) == ref["num_params"] == PARAM_COUNTS[f"moganet_{variant}"]


def test_state_dict_spot_check_without_reference_files() -> None:
    sd = _meta_model("moganet_xtiny").state_dict()
    expected = {
        "patch_embed1.projection.0.weight": (16, 3, 3, 3),
        "patch_embed1.projection.4.running_var": (32,),
        "blocks1.0.layer_scale_1": (1, 32, 1, 1),
        "blocks1.0.attn.value.DW_conv1.weight": (12, 1, 5, 5),
        "blocks1.0.attn.value.DW_conv2.weight": (16, 1, 7, 7),
        "blocks1.0.attn.sigma.scale": (1, 32, 1, 1),
        "blocks1.0.mlp.fc1.weight": (256, 32, 1, 1),
        "blocks3.9.mlp.decompose.weight": (1, 384, 1, 1),
        "blocks3.9.mlp.sigma.scale": (1, 384, 1, 1),
        "patch_embed4.projection.weight": (192, 96, 3, 3),
        "norm4.running_var": (192,),
        "head.weight": (1000, 192),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert "blocks3.10.norm1.weight" not in sd  # xtiny stage 3 has exactly 10 blocks


@pytest.mark.parametrize("name", VARIANTS)
def test_param_counts(name: str) -> None:
    n = _num_params(_meta_model(name))
    assert n == PARAM_COUNTS[name]
    # Within 1% of the paper's rounded figure (base: 43.72M here vs 43.9M quoted).
    assert abs(n / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01


# --- timm registry ---------------------------------------------------------------------


def test_registered_in_timm() -> None:
    assert timm.list_models("moganet*") == VARIANTS
    for name in VARIANTS:
        assert timm.is_model(name)
        assert timm.models.model_entrypoint(name) is getattr(moganet, name)


@pytest.mark.parametrize("name", VARIANTS)
def test_create_model_every_variant(name: str) -> None:
    model = _meta_model(name, num_classes=10, in_chans=1, small_input=True, drop_path_rate=0.1)
    assert isinstance(model, MogaNet)
    assert model.num_classes == 10 and model.head.out_features == 10
    assert model.patch_embed1.projection[0].in_channels == 1
    assert model.patch_embed1.projection[0].stride == (1, 1)
    assert model.num_features == moganet.MOGANET_ARCHS[name]["embed_dims"][-1]
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["architecture"] == name and cfg["first_conv"] == "patch_embed1.projection.0"
    # The official release: one .pth.tar of the authors' GitHub release per variant.
    assert cfg["url"].startswith(moganet._RELEASE) and cfg["url"].endswith(".pth.tar")
    assert name.removeprefix("moganet_") in cfg["url"] and "_sz224_" in cfg["url"]
    assert cfg["tag"] == "in1k" and cfg["num_classes"] == 1000 and cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == 0.9 and cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_pretrained_tags_at_256() -> None:
    """xtiny and tiny are also released at 256x256: the ``.in1k_256`` tags."""
    assert timm.list_models("moganet*", pretrained=True) == [
        "moganet_base.in1k", "moganet_large.in1k", "moganet_small.in1k", "moganet_tiny.in1k",
        "moganet_tiny.in1k_256", "moganet_xtiny.in1k", "moganet_xtiny.in1k_256",
    ]
    cfg = _meta_model("moganet_tiny.in1k_256").pretrained_cfg
    assert cfg["input_size"] == (3, 256, 256) and cfg["pool_size"] == (8, 8)
    assert cfg["url"].endswith("moganet_tiny_sz256_8xbs128_ep300.pth.tar")


def test_pretrained_from_local_file(tmp_path: Path) -> None:
    src = timm.create_model("moganet_xtiny")
    path = tmp_path / "moganet_xtiny.pth.tar"
    torch.save({"state_dict": src.state_dict()}, path)  # the released checkpoints' container
    model = timm.create_model(
        "moganet_xtiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_register_guard() -> None:
    # Re-registering our own entrypoint (a module reload) is silent and keeps it registered.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert register(("small_input",))(moganet.moganet_tiny) is moganet.moganet_tiny
    assert timm.models.model_entrypoint("moganet_tiny") is moganet.moganet_tiny

    # A same-named entrypoint from another module does not overwrite ours.
    def moganet_tiny(pretrained: bool = False, **kwargs):
        raise AssertionError("impostor called")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register()(moganet_tiny)
    assert timm.models.model_entrypoint("moganet_tiny") is moganet.moganet_tiny
    assert extra_kwargs("moganet_tiny") == ("small_input",)  # the impostor changed nothing


# --- shapes and training behaviour -----------------------------------------------------


def test_forward_small_input(cifar_tiny: MogaNet) -> None:
    x = torch.randn(2, 1, 32, 32)
    cifar_tiny.eval()
    with torch.no_grad():
        assert _stage_shapes(cifar_tiny, x) == [
            (2, 32, 32, 32),
            (2, 64, 16, 16),
            (2, 128, 8, 8),
            (2, 256, 4, 4),
        ]
        assert cifar_tiny.forward_features(x).shape == (2, 256, 4, 4)
        assert cifar_tiny(x).shape == (2, 10)


def test_forward_default_stride() -> None:
    model = timm.create_model("moganet_xtiny", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _stage_shapes(model, x) == [
            (2, 32, 8, 8),
            (2, 64, 4, 4),
            (2, 96, 2, 2),
            (2, 192, 1, 1),
        ]
        assert model.forward_features(x).shape == (2, 192, 1, 1)
        assert model(x).shape == (2, 7)


def test_forward_xtiny_224() -> None:
    model = timm.create_model("moganet_xtiny").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
        logits = model.forward_head(feats)
    assert feats.shape == (1, 192, 7, 7)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moganet_small", "moganet_base", "moganet_large"])
def test_forward_large_variants_224(name: str) -> None:
    model = timm.create_model(name).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
        logits = model.forward_head(feats)
    assert feats.shape == (1, model.num_features, 7, 7)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_backward_finite_grads(cifar_tiny: MogaNet) -> None:
    cifar_tiny.train()
    cifar_tiny.zero_grad(set_to_none=True)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 9])  # stage 4 at 2x2
    F.cross_entropy(cifar_tiny(x), y).backward()
    no_grad = [n for n, p in cifar_tiny.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in cifar_tiny.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    assert cifar_tiny.head.weight.grad.abs().sum() > 0
    assert cifar_tiny.patch_embed1.projection[0].weight.grad.abs().sum() > 0  # reaches the stem


def test_grad_checkpointing_matches() -> None:
    torch.manual_seed(0)
    model = timm.create_model("moganet_xtiny", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref.sum().backward()
    ref_grad = model.blocks3[0].attn.proj_1.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(model.blocks3[0].attn.proj_1.weight.grad, ref_grad)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    a = timm.create_model("moganet_xtiny", num_classes=4)
    a.train()
    a(torch.randn(2, 3, 32, 32))  # move BN running stats off their defaults
    torch.manual_seed(2)
    b = timm.create_model("moganet_xtiny", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        torch.save(a.state_dict(), tmp_path / "a.pt")
        result = b.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# --- building blocks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (32, (4, 12, 16)),
        (64, (8, 24, 32)),
        (96, (12, 36, 48)),
        (320, (40, 120, 160)),
        (640, (80, 240, 320)),
    ],
)
def test_split_channels(width: int, expected: tuple[int, int, int]) -> None:
    assert split_channels(width) == expected
    value = MultiOrderDWConv(width)
    assert value.DW_conv0.in_channels == width
    assert value.DW_conv1.in_channels == value.DW_conv1.groups == expected[1]
    assert value.DW_conv2.in_channels == value.DW_conv2.groups == expected[2]
    assert (value.DW_conv1.dilation, value.DW_conv2.dilation) == ((2, 2), (3, 3))


@pytest.mark.parametrize("width", [12, 30, 100])
def test_split_channels_rejects_widths_not_divisible_by_8(width: int) -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        split_channels(width)


def test_multi_order_value_routes_channel_groups() -> None:
    """With identity kernels, each group must come out scaled by its own DW conv."""
    c0, c1, c2 = split_channels(16)
    value = MultiOrderDWConv(16)
    with torch.no_grad():
        for conv, gain in ((value.DW_conv0, 1.0), (value.DW_conv1, 2.0), (value.DW_conv2, 3.0)):
            conv.weight.zero_()
            k = conv.kernel_size[0] // 2
            conv.weight[:, :, k, k] = gain  # centre tap only: a per-channel scale
            conv.bias.zero_()
        value.PW_conv.weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        value.PW_conv.bias.zero_()
        x = torch.randn(2, 16, 9, 9)
        out = value(x)
    expected = torch.cat([x[:, :c0], 2 * x[:, c0 : c0 + c1], 3 * x[:, 16 - c2 :]], dim=1)
    torch.testing.assert_close(out, expected)


def _reference_block(blk: moganet.MogaBlock, x: torch.Tensor) -> torch.Tensor:
    """MogaBlock written out from the spec with functional ops (eval-mode BN)."""

    def conv(m: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)

    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    a, v = blk.attn, blk.attn.value
    c = x.shape[1]
    c1, c2 = 3 * c // 8, c // 2
    c0 = c - c1 - c2
    # Spatial aggregation.
    u = bn(blk.norm1, x)
    y = conv(a.proj_1, u)
    y = F.silu(y + a.sigma.scale * (y - y.mean(dim=(2, 3), keepdim=True)))
    g = conv(a.gate, y)
    x0 = conv(v.DW_conv0, y)
    x1 = conv(v.DW_conv1, x0[:, c0 : c0 + c1])
    x2 = conv(v.DW_conv2, x0[:, c - c2 :])
    val = conv(v.PW_conv, torch.cat([x0[:, :c0], x1, x2], dim=1))
    x = x + blk.layer_scale_1 * (conv(a.proj_2, F.silu(g) * F.silu(val)) + u)
    # Channel aggregation.
    h = F.gelu(conv(blk.mlp.dwconv, conv(blk.mlp.fc1, bn(blk.norm2, x))))
    h = h + blk.mlp.sigma.scale * (h - F.gelu(conv(blk.mlp.decompose, h)))
    return x + blk.layer_scale_2 * conv(blk.mlp.fc2, h)


def test_block_matches_spec_formulas() -> None:
    torch.manual_seed(0)
    blk = moganet.MogaBlock(32, ffn_ratio=4).eval()
    with torch.no_grad():  # make every scale and BN statistic matter
        for p in (blk.layer_scale_1, blk.layer_scale_2, blk.attn.sigma.scale, blk.mlp.sigma.scale):
            p.uniform_(0.5, 1.5)
        for bn in (blk.norm1, blk.norm2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 32, 12, 12)
        torch.testing.assert_close(blk(x), _reference_block(blk, x))


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = timm.create_model("moganet_tiny")
    block = model.blocks3[0]
    for p in (
        block.layer_scale_1,
        block.layer_scale_2,
        block.attn.sigma.scale,
        block.mlp.sigma.scale,
    ):
        assert torch.all(p == 1e-5)
    assert torch.all(model.norm4.weight == 1) and torch.all(model.norm4.bias == 0)
    assert torch.all(model.head.bias == 0)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    fc1 = block.mlp.fc1.weight  # (512, 128, 1, 1): fan_out = 512
    assert fc1.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    dw = block.attn.value.DW_conv2.weight  # (64, 1, 7, 7) depth-wise: fan_out = 49
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 49), rel=0.1)
    assert torch.all(block.mlp.fc1.bias == 0)


def test_drop_rates() -> None:
    model = _meta_model("moganet_xtiny", drop_rate=0.3, drop_path_rate=0.2)
    assert model.head_drop.p == 0.3
    assert model.blocks1[0].mlp.drop.p == 0.3  # FFN dropout follows drop_rate by default
    assert isinstance(model.blocks1[0].drop_path, nn.Identity)  # first block: rate 0
    assert model.blocks4[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert model.blocks3[0].drop_path.drop_prob == pytest.approx(0.2 * 6 / 17)  # linear over 18
    model = _meta_model("moganet_xtiny", drop_rate=0.3, proj_drop_rate=0.0)
    assert model.head_drop.p == 0.3 and model.blocks1[0].mlp.drop.p == 0.0


# --- timm model API --------------------------------------------------------------------


def test_classifier_api() -> None:
    model = timm.create_model("moganet_xtiny", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.get_classifier() is model.head
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 192)
        model.reset_classifier(3)
        assert model.num_classes == 3 and model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity) and model(x).shape == (2, 192)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (2, 192, 1, 1)


def test_features_only() -> None:
    model = timm.create_model("moganet_xtiny", features_only=True, small_input=True).eval()
    assert model.feature_info.channels() == [32, 64, 96, 192]
    assert model.feature_info.reduction() == [1, 2, 4, 8]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [
        (1, 32, 32, 32),
        (1, 64, 16, 16),
        (1, 96, 8, 8),
        (1, 192, 4, 4),
    ]


def test_group_matcher_layer_decay_groups() -> None:
    model = _meta_model("moganet_xtiny")
    fine = timm.models.group_parameters(model, model.group_matcher())
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    # fine: stem, one group per block (norm_i merged into the last), patch_embed2..4, head.
    assert len(fine) == 1 + sum(model.depths) + 3 + 1
    assert len(coarse) == 1 + 4 + 1
    grouped = [n for names in fine.values() for n in names]
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    assert all(n.startswith("patch_embed1.") for n in fine[0])


def test_unknown_kwargs_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with torch.device("meta"):
        MogaNet(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), ffn_ratios=(2, 2, 2, 2), bogus=1)
    assert "bogus" in caplog.text
