"""The layer-shape inspector: its table equals a real forward pass, for every conf/model entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import CONF, REPO, compose, run_cli

# Every conf/model entry; the generic ones get an architecture of their own.
GENERIC_ARCH = {"timm": "resnet10t", "torchvision": "resnet18"}
# These take over 5 s each here (two builds and forwards on 2 shared cores); MogaNet-XTiny
# keeps the MogaNet code in the fast set.
SLOW = {"moganet_tiny", "moganet_small", "moganet_base", "moganet_large"}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _inspect_main(argv: list[str]) -> int:
    """``python -m cnnlab.inspect`` in-process: the inspector inside the CLI's error boundary."""
    from cnnlab.errors import run_main
    from cnnlab.lessons.inspect import main

    return run_main(main, argv)


def _overrides(name: str) -> list[str]:
    extra = [f"model.arch={GENERIC_ARCH[name]}"] if name in GENERIC_ARCH else []
    return [f"model={name}", "dataset=cifar10", "model.small_input=true", *extra]


def _real_forward(model, shape):
    """(leaf name, output shape) for every leaf call of a real eval forward: our own hooks."""
    import torch

    seen = []

    def hook(name):
        def fn(_m, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor):
                seen.append((name, tuple(t.shape[1:])))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and not list(m.children())]
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small image: threads cost more than they give on shared cores
    try:
        with torch.no_grad():
            model(torch.randn(1, *shape))
    finally:
        torch.set_num_threads(threads)
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
def test_table_equals_a_real_forward(name):
    from cnnlab.lessons.inspect import build_model, find_gone, inspect_model
    from cnnlab.models.profile import count_macs, count_params

    cfg = compose(_overrides(name))
    report = inspect_model(cfg)
    real, shape = build_model(cfg)  # a second model, traced by the hooks below
    assert shape == (3, 32, 32)
    assert [(r.name, r.out_shape) for r in report.trace.layers] == _real_forward(real, shape)
    assert report.total_params == count_params(real)
    assert report.trace.macs == count_macs(real, shape)
    assert report.trace.failed is None
    assert find_gone(report.trace.layers) is None, "small_input models keep a map larger than 1x1"


def test_resnet18_imagenet_stem_flags_1x1():
    from cnnlab.lessons.inspect import GONE, find_gone, format_report, inspect_model

    report = inspect_model(compose(["model=resnet18", "dataset=cifar10", "model.small_input=false"]))
    gone = report.trace.layers[find_gone(report.trace.layers)]
    assert gone.name == "layer4.0.conv1" and gone.in_hw == (2, 2) and gone.out_shape[1:] == (1, 1)
    text = format_report(report)
    assert [line for line in text.splitlines() if GONE in line][0].split()[1] == "layer4.0.conv1"
    assert "model.small_input=true" in text


def test_a_forward_that_fails_stops_the_table_at_that_layer():
    from torch import nn

    from cnnlab.lessons.inspect import Report, find_gone, format_report, trace

    # 8x8 -> conv 8x8 -> pool 3x3 -> pool 1x1 (the map is gone) -> pool: fails
    toy = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(3, 2), nn.MaxPool2d(3, 2),
                        nn.MaxPool2d(3, 2))
    t = trace(toy, (1, 8, 8))
    assert [r.out_shape for r in t.layers] == [(4, 8, 8), (4, 3, 3), (4, 1, 1)]
    assert t.failed.name == "3" and t.failed.in_hw == (1, 1) and "too small" in str(t.error)
    assert find_gone(t.layers) == 2
    assert t.macs == 4 * 8 * 8 * 9  # the conv's, up to the failure
    text = format_report(Report("toy", (1, 8, 8), True, t, 40))
    assert "fails" in text and "input 1x1 is smaller than its window" in text
    assert "the forward pass fails at 3" in text


def test_global_pools_and_se_branches_are_not_flagged():
    # MobileNetV3 has squeeze-excitation 1x1 convs and a global pool: neither is "the map gone".
    from cnnlab.lessons.inspect import find_gone, inspect_model

    report = inspect_model(compose(["model=mobilenet_v3_small", "dataset=cifar10"]))
    assert any(r.out_shape[1:] == (1, 1) for r in report.trace.layers if len(r.out_shape) == 3)
    assert find_gone(report.trace.layers) is None


def test_depth_groups_rows_with_the_blocks_own_output():
    from cnnlab.lessons.inspect import format_report, inspect_model, rows

    report = inspect_model(compose(["model=googlenet", "dataset=cifar10"]))
    groups = {g.name: g for g in rows(report, 1)}
    # An Inception block's output concatenates its branches: 64+128+32+32 = 256 channels.
    block = [r for r in report.trace.layers if r.name.startswith("inception3a.")]
    assert groups["inception3a"].out_shape == (256, 8, 8)
    assert groups["inception3a"].params == sum(r.params for r in block)
    assert groups["inception3a"].macs == sum(r.macs for r in block)
    assert sum(g.macs for g in groups.values()) == report.trace.macs
    assert "inception3a" in format_report(report, depth=1)


def test_cli_flags_1x1_for_resnet18_without_small_input_then_answers_from_the_cache(tmp_path):
    args = ["model=resnet18", "dataset=cifar10", "model.small_input=false"]
    t0 = time.perf_counter()
    res = run_cli(args, cwd=tmp_path, module="cnnlab.inspect")
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if "<- 1x1: the map is gone" in line)
    assert "layer4.0.conv1" in line and "512x1x1" in line
    assert "total: 11,181,642 params" in res.stdout
    assert "Use model.small_input=true" in res.stdout
    assert "read from the cache" not in res.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no log file

    # The second call reads the table the first one cached, and imports no torch to do so.
    code = ("import sys; from cnnlab.lessons.inspect import main; from cnnlab.errors import run_main; rc = run_main(main, sys.argv[1:]); "
            "print('heavy imports:', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    again = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 0, again.stderr
    table, _, tail = again.stdout.partition("\n\n(read from the cache: ")
    assert table + "\n" == res.stdout
    assert tail.splitlines()[-1] == "heavy imports: []"
    print(f"inspect wall time: {wall:.2f}s uncached", file=sys.stderr)


def test_cache_key_follows_what_the_table_depends_on(monkeypatch):
    import cnnlab.lessons.inspect as cache
    from cnnlab.lessons.inspect import cache_path

    base = ["model=resnet18", "dataset=cifar10"]
    path = cache_path(compose(base))
    assert path.parent == cache.cache_root() / "inspect" and path.name.startswith("resnet18-")
    # Same table: weights and the DDP flag do not change shapes; svhn has cifar10's input.
    assert cache_path(compose([*base, "model.pretrained=true", "model.sync_bn=true"])) == path
    assert cache_path(compose(["model=resnet18", "dataset=svhn"])) == path
    # Another table: the stem, the classes, the input size, a library version, our code.
    for other in (["model.small_input=false"], ["dataset=cifar100"], ["dataset.image_size=64"]):
        assert cache_path(compose([*base, *other])) != path, other
    hub = cache_path(compose(["model=timm", "model.arch=hf-hub:timm/resnet18.a1_in1k", "dataset=cifar10"]))
    assert hub.parent == path.parent and hub.name.startswith("hf-hub_timm_resnet18.a1_in1k-")
    monkeypatch.setattr(cache, "versions", lambda *d: {"timm": "0.0"})
    assert cache_path(compose(base)) != path
    monkeypatch.undo()
    monkeypatch.setattr(cache, "source_digest", lambda *p: "edited")
    assert cache_path(compose(base)) != path


def test_cache_entries_are_read_recomputed_and_refused_models_too(monkeypatch, capsys):
    import cnnlab.lessons.inspect as insp

    calls = []
    real = insp.inspect_model
    monkeypatch.setattr(insp, "inspect_model", lambda cfg: calls.append(1) or real(cfg))

    args = ["model=mobilenet_v3_small", "dataset=digits"]
    assert _inspect_main(args) == 0 and len(calls) == 1
    first = capsys.readouterr().out
    assert _inspect_main(args) == 0 and len(calls) == 1  # a hit: nothing built
    assert capsys.readouterr().out.startswith(first.rstrip("\n"))
    assert _inspect_main([*args, "cache=false"]) == 0 and len(calls) == 2
    assert capsys.readouterr().out == first

    entry = insp.cache_path(compose(args))
    entry.write_text("{not json")  # a torn or foreign entry is recomputed and replaced
    assert _inspect_main(args) == 0 and len(calls) == 3
    assert capsys.readouterr().out == first
    assert json.loads(entry.read_text())["model"] == "mobilenet_v3_small"

    # A model that refuses the input: the message is cached too.
    assert _inspect_main(["model=alexnet", "model.small_input=false"]) == 2 and len(calls) == 4
    err = capsys.readouterr().err
    assert "img_size=32 is too small for AlexNet" in err
    assert _inspect_main(["model=alexnet", "model.small_input=false"]) == 2 and len(calls) == 4
    assert capsys.readouterr().err == err


def test_an_unwritable_cache_still_answers(tmp_path, monkeypatch, capsys):
    main = _inspect_main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(blocker))
    assert main(["model=alexnet"]) == 0
    assert "final feature map before the classifier" in capsys.readouterr().out


def test_warm_caches_every_model_and_dataset_once(tmp_path, capsys):
    import shutil

    from cnnlab.lessons.inspect import warm

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    for group, keep in (("model", {"alexnet.yaml", "mobilenet_v3_small.yaml", "timm.yaml"}),
                        ("dataset", {"digits.yaml", "mnist.yaml", "cifar100.yaml", "imagefolder.yaml"})):
        for p in (conf / group).glob("*.yaml"):
            if p.name not in keep:
                p.unlink()
    # 2 models x (digits = mnist, cifar100) x small_input true/false, less AlexNet's two
    # refusals (its stride-4 stem on 32x32), which are cached as messages.
    assert warm(conf, out=sys.stdout) == 6
    out = capsys.readouterr().out
    assert out.count("too small for AlexNet") == 2 and "imagefolder" not in out
    assert "cached timm " not in out and "\n  timm " not in out  # the generic entry needs an arch
    assert warm(conf, out=sys.stdout) == 0

    main = _inspect_main

    assert main(["--warm", "model=alexnet"]) == 2
    assert "--warm takes no other arguments" in capsys.readouterr().err


@pytest.mark.parametrize("arg,needle", [
    ("model=resnet19", "model=resnet19 is not an option of model: choose one of alexnet, googlenet"),
    ("dataset=cifar11", "dataset=cifar11 is not an option of dataset: choose one of cifar10, cifar100, digits"),
    ("depth=x", "depth=x: depth must be an integer"),
    ("cache=maybe", "cache=maybe: cache must be true or false"),
    ("run=no/such/run", "run='no/such/run': no such run folder or checkpoint file"),
])
def test_cli_bad_names_are_one_line(arg, needle, tmp_path):
    res = run_cli([arg], cwd=tmp_path, module="cnnlab.inspect")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and needle in res.stderr
    assert "Traceback" not in res.stderr


def test_alexnet_imagenet_stem_on_32x32_is_an_error_with_the_fix(capsys):
    main = _inspect_main

    assert main(["model=alexnet", "model.small_input=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "use dataset.image_size=224" in err


def test_the_module_name_does_not_shadow_the_standard_library():
    import inspect as std_inspect

    import cnnlab.lessons.inspect

    assert std_inspect is not cnnlab.lessons.inspect and hasattr(std_inspect, "signature")
    assert str(REPO / "cnnlab") not in std_inspect.__file__


def test_macs_count_conv_and_linear_only_and_count_macs_raises_what_the_forward_raised():
    from torch import nn

    from cnnlab.models.profile import count_macs, trace_layers

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Flatten(),
                        nn.Linear(8 * 16 * 16, 10))
    # per output element: in/groups * k * k; Linear: in_features per output
    assert count_macs(net, (3, 32, 32)) == 8 * 32 * 32 * 27 + 8 * 16 * 16 * 9 + 10 * 8 * 16 * 16
    assert net.training  # the pass is in eval mode, and the mode is given back

    too_small = nn.Sequential(nn.MaxPool2d(4), nn.MaxPool2d(4))
    with pytest.raises(RuntimeError):
        count_macs(too_small, (1, 8, 8))
    t = trace_layers(too_small, (1, 8, 8))  # the trace keeps what ran before the failure
    assert [s.out_shape for s in t.layers] == [(1, 2, 2)] and t.failed.name == "1"
    assert isinstance(t.error, RuntimeError) and t.failed.in_hw == (2, 2)


def test_an_image_folder_needs_no_root_to_be_inspected(capsys):
    main = _inspect_main

    assert main(["model=alexnet", "dataset=imagefolder"]) == 0
    assert "alexnet at 3x64x64" in capsys.readouterr().out


def test_uninitialised_weights_give_the_same_table_or_fall_back_to_a_real_build(monkeypatch):
    import cnnlab.lessons.inspect as insp

    cfg = compose(["model=resnet18", "dataset=cifar10"])
    ref = insp.inspect_model(cfg)
    assert ref.trace.failed is None
    calls = []
    real_trace, real_build = insp.trace, insp.build_model

    def trace_once_wrong(model, shape):  # as if a buffer of garbage values broke the forward
        calls.append(1)
        if len(calls) == 1:
            raise IndexError("index 1073741824 is out of bounds")
        return real_trace(model, shape)

    monkeypatch.setattr(insp, "trace", trace_once_wrong)
    assert insp.inspect_model(cfg) == ref and len(calls) == 2
    monkeypatch.setattr(insp, "trace", real_trace)

    def no_meta(cfg, device="cpu"):  # as if construction read a tensor's value
        if device == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real_build(cfg, device)

    monkeypatch.setattr(insp, "build_model", no_meta)
    assert insp.inspect_model(cfg) == ref


def test_macs_count_attention_too():
    # FlopCounterMode counts the matrix products of attention, which no Conv2d/Linear rule sees.
    import torch
    from torch import nn

    from cnnlab.models.profile import count_macs, trace_layers

    class Attention(nn.Module):
        def forward(self, x):  # (1, C, H, W) -> tokens (1, HW, C) -> softmax(q k^T) v
            t = x.flatten(2).transpose(1, 2)
            return torch.softmax(t @ t.transpose(1, 2), -1) @ t

    net = nn.Sequential(nn.Conv2d(3, 8, 1), Attention())
    conv, attention = 8 * 16 * 3, 2 * 16 * 16 * 8  # (16x8)@(8x16), then (16x16)@(16x8)
    assert count_macs(net, (3, 4, 4)) == conv + attention
    t = trace_layers(net, (3, 4, 4))
    assert t.macs == conv + attention and [r.macs for r in t.layers] == [conv, attention]

    class FusedAttention(nn.Module):  # timm's ViTs: the fused kernel, counted on the CPU too
        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)[:, None]  # (1, heads=1, HW, C)
            return torch.nn.functional.scaled_dot_product_attention(t, t, t)

    assert count_macs(nn.Sequential(nn.Conv2d(3, 8, 1), FusedAttention()), (3, 4, 4)) == conv + attention


def test_the_probe_restores_mode_and_random_state():
    import torch
    from torch import nn

    from cnnlab.models.profile import probe

    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    seen = []
    torch.manual_seed(0)
    out = probe(net, torch.ones(1, 4), hooks=[(net[1], lambda m, i, o: seen.append(m.training))])
    assert seen == [False] and net.training  # eval inside, train again after
    assert not out.requires_grad
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # the probe drew nothing from the stream
    assert not net[1]._forward_hooks  # its hooks are gone


def _alexnet_run(folder):
    """A run folder with checkpoints/best.pt of a digits AlexNet, as cnnlab.train saves it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import cnnlab.models  # noqa: F401  (registers cnnlab_alexnet in timm)
    from cnnlab.lifecycle.checkpoint import save_checkpoint

    cfg = compose(["model=alexnet", "dataset=digits"])
    model = instantiate(cfg.model, num_classes=10, in_chans=1, img_size=32)
    node = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "dataset")}
    save_checkpoint({"model": model.state_dict(), "epoch": 3, "config": node,
                     "class_names": [str(i) for i in range(10)]}, folder / "checkpoints" / "best.pt")
    return folder


def test_a_run_is_inspected_from_its_checkpoint(tmp_path, capsys):
    main = _inspect_main

    run = _alexnet_run(tmp_path / "run")
    assert main([f"run={run}", "depth=1"]) == 0
    from_run = capsys.readouterr().out
    assert main(["model=alexnet", "dataset=digits", "depth=1", "cache=false"]) == 0
    assert from_run == capsys.readouterr().out  # the same model, no model= or dataset= repeated
    assert from_run.startswith("alexnet at 1x32x32 (model.small_input=true)")
    assert main([f"run={run / 'checkpoints' / 'best.pt'}"]) == 0  # a checkpoint file too

    assert main([f"run={run}", "model=resnet18"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run= takes the model and the input from the checkpoint" in err
    assert main([f"run={run}", "checkpoint=last"]) == 2
    assert "use checkpoint=best" in capsys.readouterr().err
