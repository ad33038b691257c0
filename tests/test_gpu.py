"""The GPU path, proven on a GPU. Every test here is marked ``gpu`` and skipped without CUDA,
so CI (no GPU) only collects them.

    scripts/gpu_check.sh                       # all of them, then the benchmarks (docs/gpu.md)
    python -m pytest -m gpu tests/test_gpu.py  # these tests alone, on a machine with a CUDA GPU

Most train in process on a shrunken config (conftest.TINY moved to the GPU: 32 images a
split, batch 16, one epoch = two training steps and one val pass of 32 images), through
``cnnlab.train.train``, the path ``python -m cnnlab.run device=cuda`` takes. A spy around
``train_one_epoch`` sees what the run built: the policy, the model, the optimizer, the scaler.
"""

from __future__ import annotations

import csv
import gc
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: scripts/gpu_check.sh on a GPU machine (docs/gpu.md)"),
]

# TINY without its device=cpu (each call names its device: a group is chosen once).
GPU_TINY = [*(o for o in TINY if not o.startswith("device=")), "dataset.limit=32", "trainer.log_feature_maps=false"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """train() sets process-wide switches (cudnn.benchmark, TF32, deterministic algorithms):
    each test gets the ones it found, and sync-debug mode off."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
    torch.cuda.set_sync_debug_mode(0)


def _train(run: Path, *overrides: str, device: str = "cuda") -> dict:
    from cnnlab.train import train

    return train(compose([*GPU_TINY, f"device={device}", *overrides], output_dir=run))


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


def _spy(monkeypatch, hook: bool = False) -> list[dict]:
    """Record each training pass's arguments; with ``hook``, the first conv's output (dtype,
    channels_last, device) at every step (not for compiled models: a hook added after
    compiling would change the graph)."""
    import cnnlab.train as train_mod

    seen: list[dict] = []
    real = train_mod.train_one_epoch

    def wrapped(model, loader, optimizer, scheduler, policy, **kw):
        rec = {"model": model, "loader": loader, "optimizer": optimizer, "policy": policy,
               "scaler": kw.get("scaler"), "conv": []}
        handle = None
        if hook:
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            handle = conv.register_forward_hook(lambda m, i, o: rec["conv"].append(
                (o.dtype, o.is_contiguous(memory_format=torch.channels_last), o.device.type)))
        try:
            return real(model, loader, optimizer, scheduler, policy, **kw)
        finally:
            if handle is not None:
                handle.remove()
            seen.append(rec)

    monkeypatch.setattr(train_mod, "train_one_epoch", wrapped)
    return seen


def _model(name: str, in_chans: int = 3) -> torch.nn.Module:
    """conf/model/<name>.yaml's model for 10 classes of 32x32 images (small_input), on the CPU."""
    from cnnlab.models.factory import instantiate_model

    cfg = compose([f"model={name}"])
    return instantiate_model(cfg.model, num_classes=10, in_chans=in_chans, img_size=32, small_input=True)


def _loader(device: torch.device, n: int = 256, batch: int = 64, channels_last: bool = True):
    """cnnlab's tensor loader over n random CIFAR-shaped uint8 images, crop + flip on the device."""
    from cnnlab.data.loader import Augment, TensorLoader

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorLoader(x, y, batch, CIFAR_MEAN, CIFAR_STD, device=device, train=True,
                        augment=Augment(crop_padding=4, pad_mode="reflect", flip=True),
                        channels_last=channels_last)


# --------------------------------------------------------------------------- the device policy
def test_device_auto_picks_cuda(tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    summary = _train(tmp_path / "run", device="auto")
    assert summary["status"] == "completed" and summary["device"] == "cuda"
    p = seen[0]["policy"]
    assert p.device.type == "cuda" and p.channels_last and p.fused_optimizer
    assert p.amp == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert seen[0]["optimizer"].defaults.get("fused") is True


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_a_step_and_a_val_pass_in_each_precision(amp, channels_last, tmp_path, monkeypatch):
    seen = _spy(monkeypatch, hook=True)
    run = tmp_path / "run"
    summary = _train(run, f"device.amp={amp}", f"device.channels_last={str(channels_last).lower()}")
    assert summary["status"] == "completed" and summary["device"] == "cuda"
    (rec,) = seen
    assert rec["policy"].amp == amp and rec["policy"].channels_last is channels_last
    assert rec["scaler"].is_enabled() is (amp == "fp16")  # fp16 needs loss scaling, bf16 does not
    want = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert len(rec["conv"]) == 2, rec["conv"]  # two training steps (the val pass is not spied on)
    assert all(c == (want, channels_last, "cuda") for c in rec["conv"]), rec["conv"]
    # (a conv with one input channel is both NCHW and NHWC: the check takes one with more)
    conv = next(m for m in rec["model"].modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.dtype is torch.float32  # autocast: the weights stay float32
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    (row,) = _rows(run)
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
    assert 0 <= float(row["val_acc"]) <= 1 and summary["test_acc"] is not None


@pytest.mark.parametrize("model", ["alexnet", "resnet18"])
def test_compile_on_and_off(model, tmp_path, monkeypatch):
    """The same run eager and compiled (fp32, no dropout: the same draws): both train, and the
    first epoch's loss agrees to within what kernel fusion changes in float32."""
    seen = _spy(monkeypatch)
    loss = {}
    for compiled in (False, True):
        run = tmp_path / f"compile-{compiled}"
        summary = _train(run, f"model={model}", f"device.compile={str(compiled).lower()}", "device.amp=none",
                         "model.drop_rate=0")
        assert summary["status"] == "completed"
        assert hasattr(seen[-1]["model"], "_orig_mod") is compiled  # torch.compile's OptimizedModule
        (row,) = _rows(run)
        loss[compiled] = float(row["train_loss"])
    assert loss[True] == pytest.approx(loss[False], rel=0.05), loss


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizers(optimizer, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    summary = _train(tmp_path / "run", f"optimizer={optimizer}")
    assert summary["status"] == "completed"
    opt = seen[0]["optimizer"]
    assert type(opt).__name__.lower() == optimizer and opt.defaults.get("fused") is True
    state = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    assert state and all(v.is_cuda for v in state)  # momentum / Adam moments live on the GPU


# --------------------------------------------------------------------------- the loader and the loop
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_tensor_loader_stays_on_the_gpu_without_host_syncs(amp):
    """The data lives on the GPU; a training pass (train_one_epoch, the cuda defaults, fused
    SGD; fp16 with its GradScaler) makes no host sync: sync-debug mode "error" raises on any."""
    from cnnlab.device import resolve_device
    from cnnlab.schedulers import cosine
    from cnnlab.train import train_one_epoch

    policy = resolve_device("cuda", amp, None, False)
    loader = _loader(policy.device)
    assert loader.x.is_cuda and loader.y.is_cuda and loader.generator.device.type == "cuda"
    xb, yb = next(iter(loader))
    assert xb.is_cuda and yb.is_cuda and xb.dtype is torch.float32
    assert xb.is_contiguous(memory_format=torch.channels_last)
    model = _model("resnet18").to(policy.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                          fused=True)
    sched = cosine(opt, total_steps=100, steps_per_epoch=len(loader))
    scaler = torch.amp.GradScaler("cuda", enabled=policy.use_grad_scaler)
    train_one_epoch(model, loader, opt, sched, policy, scaler=scaler)  # warm-up: cudnn autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = train_one_epoch(model, loader, opt, sched, policy, scaler=scaler)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    loss, acc = sums.means()  # the pass's one host read, after it
    assert sums.steps == len(loader) == 4 and math.isfinite(loss) and 0 <= acc <= 1


def test_deterministic_resume_is_bit_identical_on_the_gpu(tmp_path, monkeypatch):
    """trainer.deterministic=true: a run stopped by SIGTERM after epoch 1 and resumed ends with
    the same metrics and the same weights and optimizer state, bit for bit, as one never stopped."""
    import cnnlab.train as train_mod
    from cnnlab.lifecycle.checkpoint import load_checkpoint
    from cnnlab.lifecycle.signals import Interrupted

    base = ("trainer.deterministic=true", "trainer.epochs=2")
    ref, run = tmp_path / "ref", tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _train(ref, *base)["status"] == "completed"
    # torch.use_deterministic_algorithms(warn_only=True) warns for each op with no deterministic kernel.
    loose = sorted({str(w.message).splitlines()[0] for w in caught if "deterministic" in str(w.message)})

    real = train_mod.train_one_epoch

    def stop_after_first(*args, **kwargs):
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the epoch completes and is saved, then the run stops
        return out

    with monkeypatch.context() as m:
        m.setattr(train_mod, "train_one_epoch", stop_after_first)
        with pytest.raises(Interrupted):
            _train(run, *base)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    summary = _train(run, *base, f"resume={run}")
    assert summary["status"] == "completed" and summary["resumed_at_epochs"] == [1]
    assert _rows(run) == _rows(ref), loose
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, ref))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (k, loose)
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k])), (pid, k)


def test_one_process_nccl_ddp_smoke(monkeypatch):
    """nccl through env:// with world_size 1: cnnlab's DDP wrapper trains a pass on the GPU
    (DDP's gradient all-reduce runs on nccl) and a collective answers."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from cnnlab.device import resolve_device
    from cnnlab.dist import Dist, _backend
    from cnnlab.train import train_one_epoch

    assert _backend("cuda") == "nccl" and _backend("auto") == "nccl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    policy = resolve_device("cuda", None, None, False)
    dist.init_process_group("nccl", init_method="env://")
    try:
        d = Dist(0, 1, 0, "nccl", dist.new_group(backend="gloo"))
        model = _model("alexnet").to(policy.device, memory_format=torch.channels_last)
        wrapped = d.wrap(model)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids == [0]
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        sums = train_one_epoch(wrapped, _loader(policy.device), opt, sched, policy)
        assert sums.steps == 4 and math.isfinite(sums.means()[0])
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        t = torch.arange(3.0, device=policy.device)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0] and dist.get_backend() == "nccl"
    finally:
        dist.destroy_process_group()


def test_a_batch_that_cannot_fit_gets_the_one_line_hint(tmp_path):
    """Out of memory in training: one line naming trainer.batch_size and half of it, summary.json
    'failed' with that line, and the failed run's GPU memory given back. The card is capped at
    1 GiB for this process (set_per_process_memory_fraction: the caching allocator then raises
    torch's own OutOfMemoryError), so the batch that cannot fit is small and quick to find."""
    from cnnlab.lifecycle.guards import OutOfMemory

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    run = tmp_path / "run"
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2**30 / total))
    try:
        with pytest.raises(OutOfMemory) as e:
            # ResNet-18 at 64x64, 1024 images a step: ~5 GiB of activations.
            _train(run, "model=resnet18", "dataset.limit=null", "dataset.image_size=64",
                   "trainer.batch_size=1024")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    msg = str(e.value)
    del e  # its frames hold the run's model and optimizer
    assert "\n" not in msg and msg.startswith("out of memory on cuda"), msg
    assert "during training with trainer.batch_size=1024: try trainer.batch_size=512" in msg, msg
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and msg in summary["error"]
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - before < 64 * 2**20


# --------------------------------------------------------------------------- use what you trained
@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    """A run trained on the GPU well past chance: 600 images a split (the test split: 270), 4 epochs."""
    from cnnlab.train import train

    run = tmp_path_factory.mktemp("cuda_run") / "run"
    cfg = compose([*GPU_TINY, "device=cuda", "dataset.limit=600", "trainer.batch_size=32", "trainer.epochs=4"],
                  output_dir=run)
    assert train(cfg)["status"] == "completed"
    return run


def _digit_pngs(folder: Path, n: int = 32) -> None:
    from PIL import Image

    from cnnlab.data import load_dataset

    data = load_dataset("digits", None, False, 32, 1, 0.15, 0.15, 0, 512)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(data.test.x[i, 0].numpy()).save(folder / f"{i}_{int(data.test.y[i])}.png")


def test_evaluate_and_predict_on_cuda(cuda_run, tmp_path):
    from cnnlab.evaluate import evaluate_run
    from cnnlab.predict import predict

    summary = json.loads((cuda_run / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["test_acc"] > 0.3  # chance: 0.1
    out, m = evaluate_run(str(cuda_run), device="cuda", tensorboard=False)
    assert m["n_images"] == 270 and (out / "metrics.json").exists() and (out / "confusion.png").exists()
    # The weights the run tested with, on the same images (bf16 on both: a borderline image may flip).
    assert m["accuracy"] == pytest.approx(summary["test_acc"], abs=0.02)

    _digit_pngs(tmp_path / "imgs")
    _, on_gpu, _ = predict(str(cuda_run), str(tmp_path / "imgs"), topk=3, device="cuda",
                           out=str(tmp_path / "gpu.csv"))
    _, on_cpu, _ = predict(str(cuda_run), str(tmp_path / "imgs"), topk=3, device="cpu",
                           out=str(tmp_path / "cpu.csv"))
    assert len(on_gpu) == len(on_cpu) == 32
    for r in on_gpu:
        assert 1 >= r["prob_1"] >= r["prob_2"] >= r["prob_3"] >= 0
    cpu_top = {r["file"]: r["class_1"] for r in on_cpu}
    agree = sum(r["class_1"] == cpu_top[r["file"]] for r in on_gpu)
    assert agree >= 29, agree  # bf16 on the GPU vs float32 on the CPU: the same answers but a few
    right = sum(r["class_1"] == Path(r["file"]).stem.split("_")[1] for r in on_gpu)
    assert right >= 10, right  # chance: 3 of 32


def test_export_a_gpu_trained_run(cuda_run):
    """cnnlab.export ([export], issue #23), once it exists, on a run trained on the GPU."""
    if importlib.util.find_spec("cnnlab.export") is None:
        pytest.skip("cnnlab.export does not exist yet (issue #23)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "cnnlab.export"]
    usage = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, timeout=120)
    args = [f"run={cuda_run}"] + (["device=cuda"] if "device=" in usage.stdout + usage.stderr else [])
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (cuda_run / "export" / "export.json").exists()
