"""Any timm or torchvision model by name, at the dataset's size, or one line that says why not.

The eight models of issue 17 (the ones new users try first on 32x32 data, which used
to end in a traceback), the general small-input rule of cnnlab/models/adapt.py on
families that have no rule of their own, and the one-line refusal of a model that
can't take the input. Built with the factory in-process (as ``train`` builds them);
one ``cnnlab.run`` process checks that the refusal reaches the user as one line.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_cli

import cnnlab.models  # noqa: F401  (registers MogaNet in timm)
from cnnlab.errors import ModelError
from cnnlab.models import build_model
from cnnlab.models.adapt import final_feature_map
from cnnlab.models.outputs import split_output

ISSUE_MODELS = [("timm", "vit_tiny_patch16_224"), ("timm", "deit_tiny_patch16_224"),
                ("timm", "swin_tiny_patch4_window7_224"), ("timm", "levit_128s"), ("timm", "fastvit_t8"),
                ("timm", "coatnet_nano_rw_224"), ("timm", "maxvit_nano_rw_256"),
                ("torchvision", "inception_v3")]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _build(source: str, arch: str, img_size: int = 32, small_input: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, source, arch, num_classes=10, in_chans=3, img_size=img_size,
                       small_input=small_input)


def _sgd_step(model: torch.nn.Module, side: int) -> torch.Tensor:
    """One SGD step at batch 2 as the training loop takes it; the loss."""
    model.train()
    x, y = torch.randn(2, 3, side, side), torch.tensor([3, 7])
    before = [p.detach().clone() for p in model.parameters()]
    logits, extra = split_output(model(x))
    assert logits.shape == (2, 10)
    loss = F.cross_entropy(logits, y) + sum(w * F.cross_entropy(a, y) for w, a in extra)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return loss


@pytest.mark.parametrize(("source", "arch"), ISSUE_MODELS, ids=[a for _, a in ISSUE_MODELS])
def test_issue_models_train_one_step_at_32(source, arch):
    """Each used to fail at 32x32 with a traceback; each now trains (img_size or the general rule)."""
    loss = _sgd_step(_build(source, arch), 32)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch", ["convnext_atto", "regnetx_002", "fastvit_t8"])
def test_general_rule_keeps_a_usable_final_map_and_says_no_warning(arch, caplog):
    """Families with no rule of their own: 1x1 at 32 without small_input, >= 2x2 with it, no warning."""
    plain = _build("timm", arch, small_input=False)
    assert final_feature_map(plain, (3, 32, 32))[1:] == (1, 1)
    with caplog.at_level(logging.INFO, logger="cnnlab.models.adapt"):
        small = _build("timm", arch)
    side = final_feature_map(small, (3, 32, 32))[1]
    assert side >= 2, f"{arch}: {side}x{side} final map with small_input"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert any("general rule: stem strides" in r.getMessage() for r in caplog.records), caplog.text


def test_general_rule_leaves_a_strided_shortcut_matched():
    """RegNet's first block is strided with a 1x1 shortcut: both or neither lose the stride."""
    model = _build("timm", "regnetx_002")
    block = model.s1.b1
    assert block.conv2.conv.stride == block.downsample.conv.stride
    assert torch.isfinite(_sgd_step(model, 32))


def test_a_model_that_takes_img_size_is_sized_not_restrided():
    """ViT takes img_size: a 2x2 patch grid at 32, and its 16x16 patch embedding is kept."""
    model = _build("timm", "vit_tiny_patch16_224")
    assert model.patch_embed.grid_size == (2, 2)
    assert model.patch_embed.proj.stride == (16, 16)


def test_model_that_cannot_take_the_input_fails_at_build_in_one_line():
    """torchvision's MaxViT needs 224: the refusal names the model, its size and the fix."""
    with pytest.raises(ModelError) as ei:
        _build("torchvision", "maxvit_t")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "'maxvit_t'" in msg and "32x32" in msg and "224x224" in msg and "dataset.image_size=224" in msg


@pytest.mark.slow  # MaxViT at 224 on the CPU: ~15 s
def test_the_suggested_size_works():
    """The fix the refusal names (dataset.image_size=224) builds and trains."""
    assert torch.isfinite(_sgd_step(_build("torchvision", "maxvit_t", img_size=224, small_input=False), 224))


def test_build_check_leaves_the_model_as_it_was():
    """The build-time pass runs in eval mode with no grad: BN stats, mode and the RNG untouched."""
    from cnnlab.models.factory import check_input

    model = _build("timm", "resnet10t").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_input(model, "timm", "resnet10t", 3, 32)
    assert model.training and torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    vit = _build("timm", "vit_tiny_patch16_224").train()  # sized for 32x32: a 64x64 image is refused
    with pytest.raises(ModelError, match="vit_tiny_patch16_224.*can't take 64x64 images"):
        check_input(vit, "timm", "vit_tiny_patch16_224", 3, 64)
    assert vit.training


@pytest.mark.slow  # a whole `cnnlab.run` process: ~10-25 s
def test_run_refuses_a_size_in_one_line(tmp_path):
    """``cnnlab.run model=torchvision model.arch=maxvit_t``: rc 2, one `error:` line, no traceback."""
    proc = run_cli([*TINY, "model=torchvision", "model.arch=maxvit_t"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "dataset.image_size=224" in errors[0], proc.stderr[-2000:]
