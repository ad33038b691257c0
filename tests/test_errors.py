"""The bad-input catalogue (docs/errors.md), every entry run as a user would run it.

Each case runs ``python -m cnnlab.run <tiny settings> <the bad input>`` in a fresh
folder and checks four things: a non-zero exit; exactly one line on stderr,
``error: ...``, naming the problem (the needles); no traceback anywhere; and no run
folder whose summary claims success. Cases that need torch (data, weights, devices)
take 10-30 s each on 2 cores and are marked slow; the composition and range cases
take about 2 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY

DOC = REPO / "docs" / "errors.md"
# Tiny and quick: 16x16 images, one torch thread (2 shared cores).
ARGS = [*TINY, "dataset.image_size=16"]
# A proxy on a closed local port: any download fails at once, as offline.
OFFLINE = {k: "http://127.0.0.1:9" for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}


@dataclass
class Case:
    overrides: list[str]
    needles: list[str]  # all must be in the one stderr line ({tmp} is the case's folder)
    slow: bool = False  # imports torch: 10-30 s
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # -- composition: Hydra's own errors, rewritten to one line
    "unknown model": Case(["model=alexnett"], ["model=alexnett", "choose one of", "alexnet", "resnet18"]),
    "unknown dataset": Case(["dataset=cifar11"], ["dataset=cifar11", "cifar10"]),
    "unknown optimizer": Case(["optimizer=sgdd"], ["optimizer=sgdd", "adamw"]),
    "unknown scheduler": Case(["scheduler=cosin"], ["scheduler=cosin", "cosine"]),
    "unknown device": Case(["device=tpu"], ["device=tpu", "cpu", "cuda"]),
    "wrong type (int)": Case(["trainer.epochs=abc"], ["trainer.epochs=abc", "wrong type", "Integer"]),
    "wrong type (float)": Case(["optimizer.lr=fast"], ["optimizer.lr='fast'", "a number > 0"]),
    "wrong type (bool)": Case(["model.pretrained=maybe"], ["model.pretrained=maybe", "bool"]),
    "unknown key": Case(["trainer.epoch=3"], ["trainer.epoch", "not a config key", "trainer.epochs"]),
    "unparsable override": Case(["trainer.epochs=["], ["cannot be parsed", "key=value"]),
    # ({{ }} is one brace after the {tmp} formatting)
    "interpolation naming no key": Case(["trainer.epochs=${{trainer.epoch}}"],
                                        ["an interpolation in trainer.epochs names no key", "trainer.epoch"]),
    "--cfg hydra --resolve": Case(["--cfg", "hydra", "--resolve"], ["use `--cfg all --resolve`"]),
    # -- range and choice checks (cnnlab.config.validate), before torch is imported
    "zero epochs": Case(["trainer.epochs=0"], ["trainer.epochs=0", ">= 1"]),
    "negative batch size": Case(["trainer.batch_size=-1"], ["trainer.batch_size=-1", ">= 1"]),
    "zero lr": Case(["optimizer.lr=0"], ["optimizer.lr=0", "> 0"]),
    "negative lr": Case(["optimizer.lr=-0.1"], ["optimizer.lr=-0.1", "> 0"]),
    "val split of 1": Case(["dataset.val_split=1.0"], ["dataset.val_split=1.0", "[0, 1)"]),
    "unknown amp": Case(["device.amp=fp8"], ["device.amp='fp8'", "bf16"]),
    "missing mandatory value": Case(["model=timm"], ["model.arch has no value", "model.arch=<value>"]),
    "batch larger than the data": Case(["trainer.batch_size=1000"], ["trainer.batch_size=1000", "64 images"],
                                       slow=True),
    # -- data
    # Checked with the config, before torch is imported: fast.
    "imagefolder without a root": Case(["dataset=imagefolder"], ["dataset=imagefolder needs dataset.root=<folder>"]),
    "missing dataset root": Case(["dataset=imagefolder", "dataset.root={tmp}/nowhere"],
                                 ["nowhere", "not a folder"], slow=True),
    "empty dataset root": Case(["dataset=imagefolder", "dataset.root={tmp}/empty"],
                               ["empty' has no class subfolders"], slow=True),
    "imagefolder with one class": Case(["dataset=imagefolder", "dataset.root={tmp}/one"],
                                       ["1 class", "at least 2"], slow=True),
    "imagefolder with only non-image files": Case(["dataset=imagefolder", "dataset.root={tmp}/textonly"],
                                                  ["textonly", "holds no images"], slow=True),
    "download with no network": Case(["dataset=cifar10", "dataset.download=true", "dataset.root={tmp}/data"],
                                     ["cifar10", "download failed", "cifar-10-python.tar.gz"], slow=True,
                                     env=OFFLINE),
    # -- checkpoints
    "resume path that does not exist": Case(["resume={tmp}/nowhere.pt"], ["nowhere.pt", "no such"]),
    "resume file that is not a checkpoint": Case(["resume={tmp}/notes.pt"], ["notes.pt", "not a torch checkpoint"],
                                                 slow=True),
    "resume a truncated checkpoint": Case(["resume={tmp}/truncated.pt"], ["truncated.pt", "truncated or corrupt"],
                                          slow=True),
    "resume a weights-only file": Case(["resume={tmp}/weights.pt"], ["weights.pt", "model.checkpoint="],
                                       slow=True),
    "resume a run folder without checkpoints": Case(["resume={tmp}/empty"], ["holds no checkpoints/last.pt"],
                                                    slow=True),
    "resume another model's run": Case(["resume={tmp}/other_run"], ["belongs to another run", "model.name=resnet18"],
                                       slow=True),
    "resume a pickle that runs code": Case(["resume={tmp}/evil.pt"], ["evil.pt", "refused", "posix.system"],
                                           slow=True),
    "model.checkpoint that does not exist": Case(["model.checkpoint={tmp}/nowhere.pt"],
                                                 ["model.checkpoint=", "nowhere.pt", "no such file"]),
    "model.checkpoint that is not a checkpoint": Case(["model.checkpoint={tmp}/notes.pt"],
                                                      ["notes.pt", "not a torch checkpoint"], slow=True),
    "model.checkpoint of another model": Case(["model.checkpoint={tmp}/weights.pt"],
                                              ["weights.pt", "does not fit", "features.0.weight", "(3, 3)",
                                               "(48, 1, 3, 3)"], slow=True),
    # -- device and output folder
    "device=cuda without CUDA": Case(["device=cuda"], ["device=cuda", "not available", "device=cpu"], slow=True),
    "output folder that cannot be created": Case(["hydra.run.dir=/proc/forbidden/run"],
                                                 ["hydra.run.dir", "/proc/forbidden"]),
    "output folder under a file": Case(["hydra.run.dir={tmp}/a_file/run"], ["hydra.run.dir", "a_file"]),
}


def _make_inputs(tmp: Path) -> None:
    """The bad inputs the cases point at (all tiny)."""
    from PIL import Image

    from cnnlab.lifecycle.checkpoint import save_checkpoint

    (tmp / "empty").mkdir()
    for c in range(1):
        (tmp / "one" / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (12, 12)).save(tmp / "one" / f"class{c}" / "0.png")
    for c in range(2):
        (tmp / "textonly" / f"class{c}").mkdir(parents=True)
        (tmp / "textonly" / f"class{c}" / "readme.txt").write_text("not an image")
    (tmp / "notes.pt").write_text("these are my notes, not a checkpoint")
    (tmp / "a_file").write_text("a file, not a folder")
    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp / "weights.pt")
    whole = (tmp / "weights.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    save_checkpoint({"model": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {}, "epoch": 1, "rng": {},
                     "model_name": "resnet18", "config": {"model": {"name": "resnet18"}}},
                    tmp / "other_run" / "checkpoints" / "last.pt")

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp}/pwned",))

    torch.save({"epoch": 1, "x": RunsCode()}, tmp / "evil.pt")


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=full_env)


def _params():
    for name, case in CASES.items():
        marks = [pytest.mark.slow] if case.slow else []
        if name == "device=cuda without CUDA" and torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason="this machine has CUDA"))
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_bad_input_fails_in_one_line(name, tmp_path):
    case = CASES[name]
    _make_inputs(tmp_path)
    args = [*ARGS, *(o.format(tmp=tmp_path) for o in case.overrides)]
    res = _cli(args, tmp_path, case.env)

    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for needle in case.needles:
        assert needle.format(tmp=tmp_path) in lines[0], (needle, lines[0])
    claims = [p for p in tmp_path.rglob("summary.json") if json.loads(p.read_text()).get("status") == "completed"]
    assert not claims
    assert not (tmp_path / "pwned").exists()


def test_every_case_is_in_the_catalogue():
    doc = DOC.read_text()
    missing = [name for name in CASES if f"| {name} |" not in doc]
    assert not missing, f"add these rows to docs/errors.md: {missing}"


@pytest.mark.slow
def test_imagefolder_skips_a_corrupt_image_with_a_warning_and_other_files_silently(tmp_path):
    """Not an error: a corrupt image is skipped and named; a non-image file is left out by its extension."""
    from PIL import Image

    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (12, 12), (90 * c, 20 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    (root / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "class1" / "notes.txt").write_text("not an image")
    res = _cli([*ARGS, "dataset=imagefolder", f"dataset.root={root}", "trainer.batch_size=4",
                f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "run" / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert any("broken.png" in w and "skipping" in w for w in warnings), log
    assert "notes.txt" not in log
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
