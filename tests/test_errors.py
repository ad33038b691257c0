"""The bad-input catalogue (docs/errors.md), every entry run as a user would run it.

Each case runs ``python -m cnnlab.run <tiny settings> <the bad input>`` in a fresh
folder and checks four things: exit status 2; exactly one line on stderr,
``error: ...``, naming the key and the value (the needles, not the library's wording);
no traceback anywhere; and no run folder whose summary claims success. Cases that need torch (data, weights, devices)
take 10-30 s each on 2 cores and are marked slow; the composition and range cases
take about 2 s.
"""

from __future__ import annotations

import json
import os
import socket
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
    "wrong type (int)": Case(["trainer.epochs=abc"], ["trainer.epochs='abc'", "Integer"]),
    "wrong type (float)": Case(["optimizer.lr=fast"], ["optimizer.lr='fast'", "a number > 0"]),
    "wrong type (bool)": Case(["model.pretrained=maybe"], ["model.pretrained='maybe'", "bool"]),
    "unknown key": Case(["trainer.epoch=3"], ["trainer.epoch", "not a config key", "trainer.epochs"]),
    "unparsable override": Case(["trainer.epochs=["], ["'trainer.epochs=['", "cannot be parsed", "key=value"]),
    # ({{ }} is one brace after the {tmp} formatting)
    "interpolation naming no key": Case(["trainer.epochs=${{trainer.epoch}}"],
                                        ["trainer.epochs", "'trainer.epoch'"]),
    "interpolation of an unset variable": Case(["seed=${{oc.env:CNNLAB_NO_SUCH_VARIABLE}}"],
                                               ["seed", "CNNLAB_NO_SUCH_VARIABLE"]),
    "broken interpolation": Case(["model.name='${{'"], ["model.name='${{': "]),
    "--cfg hydra --resolve": Case(["--cfg", "hydra", "--resolve"], ["use `--cfg all --resolve`"]),
    # -- range and choice checks (cnnlab.config.validate), before torch is imported
    "zero epochs": Case(["trainer.epochs=0"], ["trainer.epochs=0", ">= 1"]),
    "negative batch size": Case(["trainer.batch_size=-1"], ["trainer.batch_size=-1", ">= 1"]),
    "zero lr": Case(["optimizer.lr=0"], ["optimizer.lr=0", "> 0"]),
    "negative lr": Case(["optimizer.lr=-0.1"], ["optimizer.lr=-0.1", "> 0"]),
    "val split of 1": Case(["dataset.val_split=1.0"], ["dataset.val_split=1.0", "(0, 1)"]),
    "val split of 0": Case(["dataset.val_split=0"], ["dataset.val_split=0.0", "(0, 1)", "best epoch"]),
    "unknown amp": Case(["device.amp=fp8"], ["device.amp='fp8'", "bf16"]),
    # (the rule table, cnnlab.config.RULES: issue 16's cases and their kin)
    "negative seed": Case(["seed=-1"], ["seed=-1 is not allowed", "[0, 4294967295]"]),
    "seed too large": Case(["seed=99999999999"], ["seed=99999999999 is not allowed", "[0, 4294967295]"]),
    "negative weight decay": Case(["optimizer.weight_decay=-1"], ["optimizer.weight_decay=-1", ">= 0"]),
    "momentum of 1 or more": Case(["optimizer.momentum=2"], ["optimizer.momentum=2", "[0, 1)"]),
    "nesterov without momentum": Case(["optimizer.momentum=0"], ["optimizer.momentum=0", "nesterov"]),
    "infinite lr": Case(["optimizer.lr=inf"], ["optimizer.lr=inf", "> 0"]),
    "drop rate of 1 or more": Case(["model.drop_rate=1.5"], ["model.drop_rate=1.5", "[0, 1)"]),
    "negative aux weight": Case(["model=googlenet", "model.aux_weight=-1"], ["model.aux_weight=-1.0", ">= 0"]),
    "negative crop padding": Case(["dataset.augment.crop_padding=-1"], ["dataset.augment.crop_padding=-1", "[0, 15]"]),
    "crop padding as large as the image": Case(["dataset.augment.crop_padding=40"],
                                               ["dataset.augment.crop_padding=40", "[0, 15]"]),
    "zero limit": Case(["dataset.limit=0"], ["dataset.limit=0", "null or an integer >= 1"]),
    "zero std": Case(["dataset.std=[0]"], ["dataset.std=[0.0]", "numbers > 0"]),
    "a list key given a number": Case(["dataset.std=0.5"], ["dataset.std=0.5: ", "list"]),
    "dataset root that is a file": Case(["dataset.root={tmp}/a_file"], ["a_file' is a file, not a folder"]),
    "missing mandatory value": Case(["model=timm"], ["model.arch", "???"]),
    "batch larger than the data": Case(["trainer.batch_size=1000"], ["trainer.batch_size=1000", "64 images"],
                                       slow=True),
    "BatchNorm on a batch of one": Case(["trainer.batch_size=1", "model=resnet18", "model.small_input=false"],
                                        ["trainer.batch_size=1 is too small", "trainer.batch_size=2"], slow=True),
    "optimizer the schema does not know": Case(
        ["optimizer._target_=torch.optim.RMSprop"],
        ["optimizer (torch.optim.RMSprop): ", "nesterov"], slow=True),
    # -- fine-tuning and imbalance (issue 25; cnnlab/recipes/freeze.py, imbalance.py)
    "freeze that is not a choice": Case(["model.freeze=head"], ["model.freeze='head'", "backbone or stages=N"]),
    "unfreeze past the last epoch": Case(["model.freeze=backbone", "trainer.epochs=3", "model.unfreeze_epoch=5"],
                                         ["model.unfreeze_epoch=5", "[2, 3]"]),
    "unfreeze without a freeze": Case(["model.unfreeze_epoch=2", "trainer.epochs=2"],
                                      ["model.unfreeze_epoch=2", "needs model.freeze"]),
    "class weights of the wrong length": Case(["loss.class_weights=[1,2,3]"],
                                              ["loss.class_weights=[1, 2, 3]", "one weight per class"]),
    "negative class weight": Case(["loss.class_weights=[1,1,1,1,1,1,1,1,1,-2]"],
                                  ["loss.class_weights=", "numbers >= 0"]),
    "imbalance below 1": Case(["dataset.imbalance=0.5"], ["dataset.imbalance=0.5", ">= 1"]),
    "freeze more stages than the model has": Case(["model.freeze=stages\\=9"],
                                                  ["model.freeze=stages=9", "4 feature stages"], slow=True),
    "layer decay on a model without timm's grouping": Case(["model=googlenet", "optimizer.layer_decay=0.7"],
                                                          ["optimizer.layer_decay=0.7", "group_matcher"], slow=True),
    # -- data
    # Checked with the config, before torch is imported: fast.
    "imagefolder without a root": Case(["dataset=imagefolder"], ["dataset=imagefolder needs dataset.root=<folder>"]),
    "missing dataset root": Case(["dataset=imagefolder", "dataset.root={tmp}/nowhere"],
                                 ["nowhere", "not a folder"]),
    "empty dataset root": Case(["dataset=imagefolder", "dataset.root={tmp}/empty"],
                               ["empty' has no class subfolders"], slow=True),
    "imagefolder with one class": Case(["dataset=imagefolder", "dataset.root={tmp}/one"],
                                       ["1 class", "at least 2"], slow=True),
    "imagefolder with only non-image files": Case(["dataset=imagefolder", "dataset.root={tmp}/textonly"],
                                                  ["textonly", "holds no images"], slow=True),
    "imagefolder with an empty class folder": Case(["dataset=imagefolder", "dataset.root={tmp}/emptyclass"],
                                                   ["emptyclass/eel'", "holds no images"], slow=True),
    "imagefolder with a class folder of unreadable images": Case(
        ["dataset=imagefolder", "dataset.root={tmp}/unreadableclass"],
        ["unreadableclass/eel'", "holds no readable image"], slow=True),
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
    "resume another model's run": Case(["resume={tmp}/other_run", "model=alexnet"], ["belongs to another run", "model.name=resnet18"],
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
    "run folder that holds a run": Case(["hydra.run.dir={tmp}/used"], ["{tmp}/used", "already holds a run",
                                                                      "checkpoints, metrics.csv", "resume="]),
    "run folder in use by another launch": Case(["hydra.run.dir={tmp}/busy"], ["{tmp}/busy", "in use by another"]),
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
    for name, bad in (("emptyclass", None), ("unreadableclass", b"\x89PNG\r\n\x1a\n truncated")):
        for c in ("class0", "class1", "eel"):
            (tmp / name / c).mkdir(parents=True)
            if c != "eel":
                Image.new("RGB", (12, 12)).save(tmp / name / c / "0.png")
            elif bad:
                (tmp / name / c / "0.png").write_bytes(bad)
    (tmp / "notes.pt").write_text("these are my notes, not a checkpoint")
    (tmp / "a_file").write_text("a file, not a folder")
    (tmp / "used" / "checkpoints").mkdir(parents=True)  # a run without its summary.json
    (tmp / "used" / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (tmp / "busy").mkdir()  # held by a live process: this test's
    (tmp / "busy" / ".cnnlab.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
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

    assert res.returncode == 2, res.stderr[-3000:]
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


# A bug that escapes train(cfg): a sitecustomize (imported at interpreter start) swaps
# train for one that raises, then the real `python -m cnnlab.run` runs.
_BUG = """
import cnnlab.train


def train(cfg):
    raise RuntimeError("boom: something cnnlab did not expect\\nsecond line")


cnnlab.train.train = train
"""


@pytest.mark.parametrize("full_error", [False, True], ids=["one line", "HYDRA_FULL_ERROR=1"])
def test_a_bug_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path, full_error):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_BUG)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path / 'hook'}", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    res = subprocess.run([sys.executable, "-m", "cnnlab.run", *ARGS, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    log = (tmp_path / "run" / "run.log").read_text()
    if full_error:  # the developer's setting: the whole traceback on the terminal
        assert res.returncode != 0 and "Traceback" in res.stderr and "second line" in res.stderr
        return
    assert res.returncode == 3
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: unexpected RuntimeError: boom: something cnnlab did not expect (a bug")
    assert str(tmp_path / "run" / "run.log") in lines[0]
    assert "Traceback" in log and "second line" in log


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]], ids=["--help", "--cfg job"])
def test_piped_into_head_exits_quietly(tmp_path, args):
    """`--help | head -1`: the reader is gone before anything is written; no BrokenPipeError."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `head` that has read its line and left
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "", err
    # And as a user types it: head prints the first line, nothing else is said.
    res = subprocess.run(["bash", "-c", f"{sys.executable} -m cnnlab.run {' '.join(args)} | head -1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stderr == "" and len(res.stdout.splitlines()) == 1
