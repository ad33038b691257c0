"""The device policy: which device, which precision, which memory format."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.errors import DeviceError


@dataclass
class DevicePolicy:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: float32
    channels_last: bool
    compile: bool
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 does not

    @property
    def name(self) -> str:
        return self.device.type


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str, amp: str | None, channels_last: bool | None, compile: bool,
                   local_rank: int = 0) -> DevicePolicy:
    """Turn the device config into a policy; fail in one line if the device is missing.

    ``auto`` picks cuda, then mps, then cpu. On cuda the defaults are bf16 autocast
    (fp16 with a GradScaler where bf16 is missing), channels_last, cudnn.benchmark and
    TF32 matmuls; elsewhere float32 and the default memory format.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device=cuda but CUDA is not available here: use device=cpu or device=auto")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif name == "mps":
        if not _mps_available():
            raise DeviceError("device=mps but MPS is not available here: use device=cpu or device=auto")
        device = torch.device("mps")
    elif name == "cpu":
        device = torch.device("cpu")
    else:
        raise DeviceError(f"device.name={name!r}: choose one of auto, cpu, cuda, mps")

    if amp is None:
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp = "fp16"  # pre-Ampere GPUs: fp16 with loss scaling
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if amp_dtype is torch.float16 and device.type == "cpu":
        raise DeviceError("device.amp=fp16 is for GPUs; on cpu use device.amp=bf16 or none")
    if channels_last is None:
        channels_last = device.type == "cuda"
    return DevicePolicy(device, amp_dtype, bool(channels_last), compile,
                        use_grad_scaler=amp_dtype is torch.float16)
