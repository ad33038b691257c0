"""The device policy, and one training step down each CPU-reachable path of it."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from cnnlab.data.loader import Augment, TensorLoader
from cnnlab.device import DevicePolicy, resolve_device
from cnnlab.errors import DeviceError
from cnnlab.train import train_one_epoch

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


def test_cpu_policy_is_float32_nchw():
    p = resolve_device("cpu", None, None, False)
    assert p.device == torch.device("cpu") and p.name == "cpu"
    assert p.amp_dtype is None and p.amp == "none"
    assert not p.channels_last and not p.compile and not p.use_grad_scaler and not p.fused_optimizer
    offered = resolve_device("cpu", "bf16", True, True)
    assert offered.amp_dtype is torch.bfloat16 and offered.channels_last and offered.compile
    assert not offered.use_grad_scaler


@no_cuda
def test_auto_without_a_gpu_is_cpu_or_mps():
    p = resolve_device("auto", None, None, False)
    assert p.name in ("cpu", "mps") and p.amp_dtype is None


@no_cuda
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda", None, None, False)
    msg = str(e.value)
    assert "\n" not in msg and "device=cpu" in msg


@pytest.mark.parametrize("override, match", [
    ("device.name=tpu", "device.name='tpu' is not allowed: choose one of auto, cpu, cuda, mps"),
    ("device.amp=fp8", "device.amp='fp8' is not allowed: choose one of null, none, bf16, fp16"),
])
def test_bad_choices_are_refused_with_the_config(override, match):
    # Checked once, by the config's rules, before torch is imported: resolve_device does not repeat it.
    from conftest import compose

    from cnnlab.config import validate
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(match)):
        validate(compose([override]))


def test_fp16_on_the_cpu_is_refused_once_the_device_is_known():
    with pytest.raises(DeviceError, match="fp16 is for GPUs"):
        resolve_device("cpu", "fp16", None, False)


@pytest.fixture
def keep_backend_flags():
    """Restore the process-wide cudnn/TF32 switches that resolve_device sets."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    yield
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_cuda_branch_logic_without_a_gpu(monkeypatch, keep_backend_flags):
    """The cuda defaults, with CUDA faked: bf16 where supported, else fp16 + scaler; the
    cudnn/TF32 switches; and trainer.deterministic keeping cudnn.benchmark off."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    torch.backends.cudnn.deterministic = False
    p = resolve_device("auto", None, None, False)
    assert p.device == torch.device("cuda", 0) and p.amp_dtype is torch.bfloat16
    assert p.channels_last and not p.use_grad_scaler and p.fused_optimizer
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    torch.backends.cudnn.deterministic = True  # as seed_everything(deterministic=True) leaves it
    p = resolve_device("cuda", "bf16", False, False)
    assert p.amp_dtype is torch.float16 and p.use_grad_scaler and not p.channels_last
    assert not torch.backends.cudnn.benchmark
    with pytest.raises(DeviceError, match="local rank 3"):
        resolve_device("cuda", None, None, False, local_rank=3)


# ----------------------------------------------------------------------- one step per path
class _Small(nn.Module):
    """A conv, a BatchNorm and a linear head: every layer kind a CNN step exercises."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class _Recorder(_Small):
    """Records the dtype of the conv output and the memory format of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        self.seen.append((h.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.head(h.mean((2, 3)))


def _one_epoch(policy: DevicePolicy, model: nn.Module, steps: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8 * steps, 3, 16, 16), dtype=torch.uint8, generator=g)
    loader = TensorLoader(x, torch.arange(8 * steps) % 4, 8, [0.5], [0.25], device=policy.device,
                          train=True, augment=Augment(2, "zero", True), channels_last=policy.channels_last)
    fmt = torch.channels_last if policy.channels_last else torch.preserve_format
    model = model.to(policy.device, memory_format=fmt)
    step_model = torch.compile(model) if policy.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    out = train_one_epoch(step_model, loader, opt, sched, policy)
    assert out.seen == 8 * steps and out.steps == steps and out.bad_step() == -1
    assert torch.isfinite(out.loss_sum) and 0 <= int(out.correct) <= 8 * steps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return out


def test_bf16_autocast_step_on_cpu():
    model = _Recorder()
    _one_epoch(resolve_device("cpu", "bf16", False, False), model)
    assert model.seen and all(dtype is torch.bfloat16 for dtype, _ in model.seen)
    assert model.conv.weight.dtype is torch.float32  # autocast: the weights stay float32


def test_channels_last_step_on_cpu():
    model = _Recorder()
    _one_epoch(resolve_device("cpu", "none", True, False), model)
    assert model.seen and all(cl and dtype is torch.float32 for dtype, cl in model.seen)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_step_on_cpu():
    _one_epoch(resolve_device("cpu", "none", False, True), _Small())
