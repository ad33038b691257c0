"""Feature maps in TensorBoard: the images are in the events file, stages are found, the demo."""

from __future__ import annotations

import pytest
from conftest import compose

from cnnlab.errors import run_main
from cnnlab.lessons.demo import main as _demo_main


def demo_main(argv: list[str]) -> int:
    """``python -m cnnlab.demo`` in-process: the demo inside the CLI's error boundary."""
    return run_main(_demo_main, argv)


def _images(logdir):
    """{tag: [(step, width, height)]} of every image in a TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0})  # 0: keep every image
    acc.Reload()
    return {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in acc.Tags()["images"]}


def _model(name, *overrides, dataset="cifar10"):
    from hydra.utils import instantiate

    import cnnlab.models  # noqa: F401  (registers MogaNet in timm)

    cfg = compose([f"model={name}", f"dataset={dataset}", *overrides])
    dc = cfg.dataset
    return instantiate(cfg.model, num_classes=10, in_chans=dc.in_chans, img_size=dc.image_size), cfg


def test_images_are_in_the_events_file(tmp_path):
    import torch

    from cnnlab.lessons.featuremaps import log_feature_maps
    from cnnlab.reporting.track import RunTracker

    model, cfg = _model("alexnet")
    model.train()
    tracker = RunTracker(tmp_path / "run")
    images = torch.rand(4, 3, 32, 32)
    threads = torch.get_num_threads()
    for step in (0, 5):  # the start and the end of a run
        tags = log_feature_maps(model, images, tracker, step, mean=list(cfg.dataset.mean),
                                std=list(cfg.dataset.std))
    tracker.close()
    assert model.training and torch.get_num_threads() == threads  # both restored

    written = _images(tmp_path / "run" / "tb")
    expected = ["feature_maps/input", "feature_maps/maxpool_k3s2",
                "feature_maps/map0_32x32_features.0",  # the first conv
                "feature_maps/map1_15x15_features.3",  # then each max-pool, the downsampling steps
                "feature_maps/map2_7x7_features.7", "feature_maps/map3_3x3_features.17",
                "feature_maps/kernels_features.0"]
    assert tags == expected and sorted(written) == sorted(expected)
    for tag in expected:
        assert [s for s, _, _ in written[tag]] == [0, 5]
    # 4 input images at 2x (64 px) with 2-px white lines: 4*64 + 5*2 = 266 wide.
    assert written["feature_maps/input"][0][1:] == (266, 68)
    assert written["feature_maps/maxpool_k3s2"][0][1:] == (4 * 30 + 5 * 2, 34)  # 15 px at 2x
    # 32 of the 48 first-conv channels, 8 a row, 32-px tiles: 4 rows.
    assert written["feature_maps/map0_32x32_features.0"][0][1:] == (8 * 32 + 9 * 2, 4 * 32 + 5 * 2)
    # 48 RGB 3x3 kernels, scaled 11x to 33 px, 8 a row: 6 rows.
    assert written["feature_maps/kernels_features.0"][0][1:] == (8 * 33 + 9 * 2, 6 * 33 + 7 * 2)


def test_each_channel_is_its_own_normalised_tile():
    import torch

    from cnnlab.lessons.featuremaps import _norm_tiles

    x = torch.stack([torch.arange(4.0).view(1, 2, 2), 10 + 100 * torch.arange(4.0).view(1, 2, 2),
                     torch.full((1, 2, 2), 7.0)])
    t = _norm_tiles(x)
    assert torch.allclose(t[0], t[1])  # same pattern, any scale: the same tile
    assert t[0].min() == 0 and t[0].max() == 1
    assert (t[2] == 0).all()  # a constant channel (a dead ReLU) is black, not noise


@pytest.mark.parametrize("name,overrides,sizes", [
    ("resnet18", [], [32, 16, 8, 4]),  # 3x3/1 stem, then a stride-2 conv per stage
    ("resnet18", ["model.small_input=false", "dataset.image_size=64"], [32, 16, 8, 4, 2]),
    ("googlenet", [], [32, 16, 8, 4, 2]),  # torchvision: max-pools between inception groups
    ("mobilenet_v3_small", [], [32, 16, 8, 4, 2]),  # squeeze-excitation 1x1 maps are skipped
    ("moganet_xtiny", [], [32, 16, 8, 4]),  # patch embeddings
])
def test_stages_are_found_generically(name, overrides, sizes, tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from cnnlab.lessons.featuremaps import log_feature_maps

    model, cfg = _model(name, *overrides)
    s = cfg.dataset.image_size
    with SummaryWriter(tmp_path) as w:
        tags = log_feature_maps(model, torch.rand(1, 3, s, s), w, 0, max_channels=8)
    maps = [t.split("/")[1] for t in tags if t.split("/")[1].startswith("map")]
    assert [int(m.split("_")[1].split("x")[0]) for m in maps] == sizes
    assert any(t.split("/")[1].startswith("kernels_") for t in tags)


def test_grayscale_kernels_for_one_input_channel(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from cnnlab.lessons.featuremaps import log_feature_maps

    model, _ = _model("alexnet", dataset="digits")
    with SummaryWriter(tmp_path) as w:
        log_feature_maps(model, torch.rand(2, 1, 32, 32), w, 0, max_kernels=16)
    # 16 one-channel kernels, 8 a row: 2 rows of 33-px tiles.
    assert _images(tmp_path)["feature_maps/kernels_features.0"][0][1:] == (8 * 33 + 18, 2 * 33 + 6)


def test_no_tensorboard_writes_nothing(tmp_path):
    import torch

    from cnnlab.lessons.featuremaps import log_feature_maps
    from cnnlab.reporting.track import RunTracker

    model, _ = _model("alexnet")
    tracker = RunTracker(tmp_path / "run", tensorboard=False)
    assert log_feature_maps(model, torch.rand(1, 3, 32, 32), tracker, 0) == []


# --------------------------------------------------------------------------- the demo
@pytest.fixture
def checkpoint(tmp_path):
    """A run folder with checkpoints/best.pt of a digits AlexNet, as cnnlab.train saves it."""
    from omegaconf import OmegaConf

    from cnnlab.lifecycle.checkpoint import save_checkpoint

    model, cfg = _model("alexnet", dataset="digits")
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    node = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "dataset")}
    save_checkpoint({"model": model.state_dict(), "epoch": 3, "config": node}, path)
    return path


def test_feature_maps_demo_on_a_run(checkpoint, capsys):
    rc = demo_main(["feature_maps", f"run={checkpoint.parents[1]}", "images=4"])
    out = capsys.readouterr().out
    assert rc == 0
    tb = checkpoint.parents[1] / "tb_feature_maps"
    assert f"written to {tb}" in out and "alexnet on digits val, epoch 3" in out
    written = _images(tb)
    assert "feature_maps/kernels_features.0" in written and "feature_maps/map0_32x32_features.0" in written
    assert written["feature_maps/input"] == [(3, 4 * 64 + 10, 68)]  # step = the checkpoint's epoch


def test_feature_maps_demo_keeps_the_older_invocation(checkpoint, tmp_path):
    # checkpoint=<file or run folder> means run=<it>; model= and dataset= naming what the
    # checkpoint holds are accepted (the checkpoint names them anyway).
    out = tmp_path / "elsewhere"
    rc = demo_main(["feature_maps", "model=alexnet", "dataset=digits", f"checkpoint={checkpoint}",
                    f"out={out}", "images=1", "split=test"])
    assert rc == 0 and "feature_maps/input" in _images(out)


@pytest.mark.parametrize("args,needle", [
    (["model.batch_norm=false"], "trained as model=alexnet dataset=digits"),
    (["model=resnet18"], "model=resnet18: the checkpoint names the model and the dataset"),
    (["images=0"], "images must be a positive integer"),
    (["split=holdout"], "split must be train, val or test"),
    (["checkpoint=last"], "use checkpoint=best"),
])
def test_feature_maps_demo_errors_are_one_line(args, needle, checkpoint, capsys):
    rc = demo_main(["feature_maps", f"run={checkpoint.parents[1]}", *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.startswith("error: ") and err.count("\n") == 1


def test_feature_maps_demo_needs_a_run(capsys):
    assert demo_main(["feature_maps", "images=2"]) == 2
    assert "run= is required" in capsys.readouterr().err
