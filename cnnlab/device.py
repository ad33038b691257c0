"""The device policy: which device, which precision, which memory format, compiled or not.

    auto  cuda if available, then mps, then cpu
    cuda  bf16 autocast (fp16 + GradScaler on GPUs without bf16), channels_last,
          cudnn.benchmark, TF32 matmuls and convolutions; train.py adds fused optimizers
    mps   float32 (device.amp=bf16 or fp16 to opt in)
    cpu   float32; device.amp=bf16 turns on CPU bf16 autocast (fp16 is refused)

``device.compile=true`` makes train.py wrap the model in ``torch.compile``.
``resolve_device`` sets the process-wide cudnn/TF32 switches as a side effect: they
are global in torch, and the policy is resolved once per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.errors import DeviceError


@dataclass
class DevicePolicy:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: float32 throughout
    channels_last: bool  # model and batches in NHWC memory (faster convs on tensor cores)
    compile: bool
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 has float32's range and does not

    @property
    def name(self) -> str:
        return self.device.type

    @property
    def amp(self) -> str:
        """The precision as the config spells it: none, bf16 or fp16."""
        return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def fused_optimizer(self) -> bool:
        """Whether to ask torch's optimizers for their fused (single-kernel) CUDA step."""
        return self.device.type == "cuda"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str, amp: str | None, channels_last: bool | None, compile: bool,
                   local_rank: int = 0) -> DevicePolicy:
    """Turn the device config (checked with the config) into a policy; fail in one line if this
    machine lacks the device. ``amp``/``channels_last`` None: the device's default (bf16 and
    channels_last on cuda, float32 and NCHW elsewhere). ``local_rank``: a DDP rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device=cuda but CUDA is not available here: use device=cpu or device=auto")
        if not 0 <= local_rank < torch.cuda.device_count():
            raise DeviceError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # cudnn.benchmark times the conv algorithms once per input shape and keeps the
        # fastest; it picks non-deterministic ones, so trainer.deterministic (which sets
        # cudnn.deterministic before this runs) keeps it off.
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.deterministic
        # TF32: float32 matmuls/convs on tensor cores (10-bit mantissa inputs, fp32 accumulate).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif name == "mps":
        if not _mps_available():
            raise DeviceError("device=mps but MPS is not available here: use device=cpu or device=auto")
        device = torch.device("mps")
    else:
        device = torch.device("cpu")

    if amp is None:
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp = "fp16"  # pre-Ampere GPUs: fp16 with loss scaling
    if amp == "fp16" and device.type == "cpu":
        raise DeviceError("device.amp=fp16 is for GPUs; on cpu use device.amp=bf16 or none")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if channels_last is None:
        channels_last = device.type == "cuda"
    return DevicePolicy(device, amp_dtype, bool(channels_last), bool(compile),
                        use_grad_scaler=amp_dtype is torch.float16)
