"""Issue #21: every file a run, an evaluation and a sweep writes, made to fail in turn with a
full disk (ENOSPC) and a read-only one (EROFS), at the real write call (tests/faults.py).

Each case checks what the user is promised: one line (``error: ...`` naming the file and the
errno's words), exit status 2 (a trained run whose report could not be written: status
``trained``), no traceback; every file written before the fault byte-identical after it; and
the way back works: ``resume=<run>`` after a training fault, ``cnnlab.evaluate run=<run>`` or
``cnnlab.compare`` after a report fault. In-process, on a 2-class 16x16 image folder and timm's
200k-parameter ``test_byobnet``: the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY, compose
from faults import DiskFault, snapshot

from cnnlab.errors import exit_status

pytestmark = pytest.mark.usefixtures("one_thread")
CODES = [pytest.param(errno.ENOSPC, id="ENOSPC"), pytest.param(errno.EROFS, id="EROFS")]


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    """A 2-epoch run of a 200k-parameter model on 2 x 16 generated 8x8 images: ~1 s."""
    from PIL import Image

    root = tmp_path_factory.mktemp("faults_data")
    for c, v in (("cat", 0), ("dog", 255)):
        (root / c).mkdir()
        for i in range(16):
            Image.new("RGB", (8, 8), (v, i * 15, 255 - v)).save(root / c / f"{i}.png")
    return compose([*TINY, "trainer.epochs=2", "trainer.batch_size=4", "trainer.log_feature_maps=false",
                    "model=timm", "model.arch=test_byobnet", "dataset=imagefolder", f"dataset.root={root}",
                    "dataset.image_size=16", "dataset.val_split=0.25", "dataset.test_split=0.25"])


def _cfg(base, run: Path, **keys):
    cfg = copy.deepcopy(base)
    cfg.paths.output_dir = str(run)
    for k, v in keys.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def trained(base_cfg, tmp_path_factory):
    """A completed run, for the evaluation's and the sweep's faults (copied, never written to)."""
    from cnnlab.train import train

    run = tmp_path_factory.mktemp("faults_trained") / "run"
    assert train(_cfg(base_cfg, run))["status"] == "completed"
    return run


def _one_line(e: BaseException, capsys) -> tuple[int, str]:
    """What ``python -m cnnlab.*`` prints for ``e`` and its exit status (cnnlab.errors.exit_status),
    after checking that nothing printed a traceback."""
    assert "Traceback" not in "".join(capsys.readouterr())
    status = exit_status(e)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return status, lines[0]


def _says(line: str, fault: DiskFault) -> None:
    """The line names the file that failed (not a temp file of it; TensorBoard's file or, when its
    first event fails as the writer is made, its folder) and the errno's words."""
    named = str(fault.path) in line or ("tfevents" in fault.path.name and f"{fault.path.parent}'" in line)
    assert named and os.strerror(fault.code) in line, line
    assert "Errno" not in line and "inline_container" not in line, line


# ----------------------------------------------------------------------------- training
# (target, nth, after): the write that fails. Each comes after epoch 1 is on disk
# where it can, so there are earlier files to compare.
TRAINING = [
    pytest.param("checkpoints/last.pt", 3, None, id="last.pt"),  # epoch 2's (0: before any step, 1)
    # epoch 1's (best.pt is written when val improves); save_checkpoint, as last.pt: make test-all
    pytest.param("checkpoints/best.pt", 1, None, id="best.pt", marks=pytest.mark.slow),
    pytest.param("summary.json", 1, "metrics.csv", id="summary.json"),  # the first write after epoch 1's row
    pytest.param("metrics.csv", 2, None, id="metrics.csv"),  # epoch 2's row
    pytest.param("tb/*tfevents*", 1, "metrics.csv", id="tb"),  # epoch 1's scalars
]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("target,nth,after", TRAINING)
def test_a_write_that_fails_during_training_stops_the_run_and_resume_finishes_it(
        base_cfg, tmp_path, monkeypatch, capsys, target, nth, after, code):
    from cnnlab.train import train

    run = tmp_path / "run"
    fault = DiskFault(run, target, code, nth=nth, after=after).install(monkeypatch)
    with pytest.raises(Exception) as e:
        train(_cfg(base_cfg, run))
    monkeypatch.undo()
    assert fault.path is not None, "the fault never fired"
    status, line = _one_line(e.value, capsys)
    assert status == 2, line
    _says(line, fault)  # docs/errors.md's words:
    assert line.startswith(f"error: cannot write {str(fault.path)!r} ({os.strerror(code)}), so the run stopped; "
                           "checkpoints/last.pt holds epoch "), line
    assert line.endswith(f"then continue with resume={str(run)!r}"), line
    # summary.json may say `failed` now, if it could be written; nothing else written before changed.
    assert fault.changed_since(allowed=("summary.json",)) == []
    assert fault.temps_left() == []
    summary = json.loads((run / "summary.json").read_text())  # whole, whichever version
    assert summary["status"] in ("running", "failed")

    resumed = train(_cfg(base_cfg, run, resume=str(run)))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 2
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]


# ----------------------------------------------------------------------------- the end of a run
END = [
    ("test_report", "test_report/*", 3, None),          # confusion.csv, after metrics.json, per_class.csv
    ("summary.json", "summary.json", 1, "test_report/reliability.png"),  # the test results' summary
]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("point,target,nth,after", END, ids=[t[0] for t in END])
def test_a_report_that_fails_after_training_keeps_the_trained_run(
        base_cfg, tmp_path, monkeypatch, capsys, point, target, nth, after, code):
    from cnnlab.evaluate import evaluate_run
    from cnnlab.lifecycle.record import ReportNotWritten
    from cnnlab.train import train

    run = tmp_path / "run"
    fault = DiskFault(run, target, code, nth=nth, after=after).install(monkeypatch)
    with pytest.raises(ReportNotWritten) as e:
        train(_cfg(base_cfg, run))
    monkeypatch.undo()
    status, line = _one_line(e.value, capsys)
    assert status == 2 and line.startswith("error: the run trained, but "), line
    _says(line, fault)
    assert f"python -m cnnlab.evaluate run={run}" in line, line
    assert fault.changed_since(allowed=("summary.json",)) == []
    assert fault.temps_left() == []
    if code == errno.ENOSPC and point != "summary.json":  # summary.json could still be written
        assert json.loads((run / "summary.json").read_text())["status"] == "trained"
    out, metrics = evaluate_run(str(run), tensorboard=False)  # the report, redone
    assert 0 <= metrics["accuracy"] <= 1 and (out / "confusion.png").is_file()


# ----------------------------------------------------------------------------- evaluation
# Every file evaluate writes; the CSVs and the other PNGs share metrics.json's and confusion.png's
# code path (write_atomic), so `make test` runs one of each and `make test-all` all of them.
EVALUATION = ["metrics.json", "confusion.png", "tb",
              *(pytest.param(name, marks=pytest.mark.slow) for name in
                ("per_class.csv", "confusion.csv", "confusion_normalized.csv", "reliability.png", "misclassified.png"))]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("name", EVALUATION)
def test_an_evaluation_that_cannot_be_written_is_one_line_and_redone(
        trained, tmp_path, monkeypatch, capsys, name, code):
    from cnnlab.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    target = "tb/*tfevents*.test_imagefolder" if name == "tb" else f"eval/test_imagefolder/{name}"
    fault = DiskFault(run, target, code).install(monkeypatch)
    with pytest.raises(Exception) as e:
        evaluate_run(str(run))
    monkeypatch.undo()
    status, line = _one_line(e.value, capsys)
    assert status == 2 and line.startswith("error: cannot write the evaluation to "), line
    _says(line, fault)
    assert fault.changed_since() == [] and fault.temps_left() == []
    out, metrics = evaluate_run(str(run))
    assert 0 <= metrics["accuracy"] <= 1 and (out / "misclassified.png").is_file()


# ----------------------------------------------------------------------------- the sweep report
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("name", ["comparison.csv", *(pytest.param(n, marks=pytest.mark.slow)
                                                      for n in ("comparison.md", "comparison.png"))])
def test_a_sweep_report_that_cannot_be_written_is_one_line_and_rebuilt(
        trained, tmp_path, monkeypatch, capsys, caplog, name, code):
    from omegaconf import OmegaConf

    from cnnlab.reporting.callbacks import ComparisonReport, sweep_exit_code
    from cnnlab.reporting.compare import main as compare

    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep / "0")
    fault = DiskFault(sweep, name, code).install(monkeypatch)
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        ComparisonReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    monkeypatch.undo()
    assert sweep_exit_code() == 1
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
    said = errors[0].getMessage()
    _says(said, fault)
    assert f"python -m cnnlab.compare {sweep}" in said and "\n" not in said
    assert "Traceback" not in "".join(capsys.readouterr())
    assert fault.changed_since() == [] and fault.temps_left() == []

    before = snapshot(sweep / "0")
    assert compare([str(sweep), "--quiet"]) == 0  # rebuilt once the disk is fine
    assert {p.name for p in sweep.glob("comparison.*")} == {"comparison.csv", "comparison.md", "comparison.png"}
    assert snapshot(sweep / "0") == before


def test_every_fault_is_in_the_catalogue():
    from conftest import REPO

    doc = (REPO / "docs" / "errors.md").read_text()
    for row in ("disk full or read-only during training", "disk full or read-only after training",
                "disk full or read-only while a sweep's report is written"):
        assert f"| {row}" in doc, f"add the row {row!r} to docs/errors.md"


# ----------------------------------------------------------------------------- as a user runs it
# A sitecustomize (imported at interpreter start) installs the fault in `python -m cnnlab.run`.
_HOOK = """
import os, sys
sys.path.insert(0, os.environ["FAULTS_DIR"])
from faults import DiskFault


class _Patch:
    setattr = staticmethod(setattr)


DiskFault(os.environ["FAULT_ROOT"], os.environ["FAULT_TARGET"], int(os.environ["FAULT_CODE"]),
          nth=int(os.environ["FAULT_NTH"])).install(_Patch())
"""


@pytest.mark.slow  # two subprocesses: ~20 s
@pytest.mark.parametrize("code", CODES)
def test_on_the_command_line_a_full_disk_is_one_line_and_resume_finishes(tmp_path, code):
    from conftest import REPO, run_cli

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_HOOK)
    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=2", "dataset.image_size=16", "trainer.log_feature_maps=false",
            f"hydra.run.dir={run}"]
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path / 'hook'}", "FAULTS_DIR": str(Path(__file__).parent),
           "FAULT_ROOT": str(run), "FAULT_TARGET": "checkpoints/last.pt", "FAULT_CODE": str(code),
           "FAULT_NTH": "3", "OMP_NUM_THREADS": "1"}
    res = run_cli(args, tmp_path, env=env)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {str(run / 'checkpoints' / 'last.pt')!r} "
                                                   f"({os.strerror(code)}), so the run stopped"), lines
    assert not (run / ".cnnlab.lock").exists()
    res = run_cli([f"resume={run}", "trainer.progress=log"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
