"""Multiruns end to end: the report callback, a failing job, launchers, Optuna, TensorBoard.

Each sweep runs `python -m cnnlab.run -m ...` as a subprocess with 32-64 images per
split and one epoch. The launcher and sweeper tests need the `sweep` extra
(`pip install -e '.[sweep]'`, part of `make install`) and are skipped without it.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, compose, run_cli

from cnnlab.config import register_schema
from cnnlab.reporting.callbacks import parallel_jobs, pick_gpu

# One epoch on 32 images: the cheapest run that still goes through every step.
SMALL = ["trainer.epochs=1", "trainer.batch_size=16", "trainer.eval_batch_size=64", "dataset.limit=32",
         "device=cpu", "trainer.progress=log", "trainer.save_checkpoints=false"]
REPORT = ("comparison.csv", "comparison.md", "comparison.png")


def multirun(args: list[str], sweep_dir: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return run_cli(["-m", *args, f"hydra.sweep.dir={sweep_dir}"], cwd=sweep_dir.parent, timeout=timeout)


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "comparison.csv", newline="") as f:
        return list(csv.DictReader(f))


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def needs_plugin(module: str) -> None:
    pytest.importorskip(module, reason="needs the sweep extra: pip install -e '.[sweep]'")


@pytest.fixture(scope="module")
def two_model_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """alexnet and resnet18, one tiny epoch each, with the basic launcher."""
    sweep_dir = tmp_path_factory.mktemp("two_models") / "sweep"
    proc = multirun(["model=alexnet,resnet18", *SMALL], sweep_dir)
    return proc, sweep_dir


# --------------------------------------------------------------------------- the report
@pytest.mark.slow  # ~30 s: two processes' worth of imports and a ResNet-18 epoch
def test_two_model_sweep_writes_the_report(two_model_sweep) -> None:
    proc, sweep_dir = two_model_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in REPORT:
        assert (sweep_dir / name).is_file(), name
    got = rows(sweep_dir)
    assert sorted(r["model"] for r in got) == ["alexnet", "resnet18"]
    assert all(r["status"] == "completed" and r["dataset"] == "digits" for r in got)
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 and int(r["params"]) > 0 for r in got)
    # The table is printed at the end of the sweep, after the jobs' logs.
    assert "| alexnet |" in proc.stdout and "| resnet18 |" in proc.stdout
    assert "wrote comparison.csv, comparison.md, comparison.png" in proc.stdout
    # One job folder per model, named after its overrides.
    assert [p.name.split("_", 1)[0] for p in job_dirs(sweep_dir)] == ["0", "1"]
    assert "model=alexnet" in job_dirs(sweep_dir)[0].name


def test_a_failing_job_does_not_stop_the_sweep_but_fails_the_exit_status(tmp_path: Path) -> None:
    # model._target_=builtins.dict "builds" a dict, so the next step (counting its
    # parameters) raises an AttributeError (not a CnnlabError): the kind of exception
    # that would abort a plain Hydra sweep. (A bad value such as model.drop_rate=5 is
    # a ConfigError now, caught by the rule table before the job builds anything.)
    sweep_dir = tmp_path / "sweep"
    proc = multirun(["model=alexnet", "model._target_=cnnlab.models.build_model,builtins.dict", *SMALL], sweep_dir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    got = {r["overrides"].split()[1]: r for r in rows(sweep_dir)}
    assert got["model._target_=cnnlab.models.build_model"]["status"] == "completed"
    failed = got["model._target_=builtins.dict"]
    assert failed["status"] == "failed" and "AttributeError" in failed["error"]
    assert "1 of 2 jobs did not complete" in proc.stderr
    # The traceback is in the failed job's own log; its summary says why.
    bad = next(p for p in job_dirs(sweep_dir) if "builtins.dict" in p.name)
    assert "Traceback" in (bad / "run.log").read_text()
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- TensorBoard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_tensorboard_shows_each_job_as_a_run_with_hparams(two_model_sweep) -> None:
    proc, sweep_dir = two_model_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    for job in jobs:
        # train() wrote the hparams into the job's own tb/ folder, not a subfolder.
        events = b"".join(p.read_bytes() for p in (job / "tb").glob("events.*"))
        assert b"_hparams_/session_start_info" in events
        assert [p.name for p in job.iterdir() if p.name == "tb"] == ["tb"]
        assert not [p for p in (job / "tb").iterdir() if p.is_dir()], "hparams in a subfolder"

    tb = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
    assert tb, "tensorboard is a dependency of cnnlab"
    port = _free_port()
    server = subprocess.Popen([tb, "--logdir", str(sweep_dir), "--host", "127.0.0.1", "--port", str(port),
                               "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    want_runs = sorted(f"{j.name}/tb" for j in jobs)
    runs, tags, groups = None, {}, []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                runs = sorted(_get(f"{base}/data/runs"))
                tags = _get(f"{base}/data/plugin/scalars/tags")
                groups = _get(f"{base}/data/plugin/hparams/session_groups", {
                    "experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 100,
                    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                        "STATUS_RUNNING"]}).get("sessionGroups", [])
                if runs == want_runs and all("val/acc" in tags.get(r, {}) for r in runs) \
                        and len(groups) == len(jobs):
                    break
            except (OSError, ValueError):
                pass  # not listening yet, or still loading the event files
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    assert runs == want_runs
    for run in want_runs:
        assert {"val/acc", "val/loss", "train/loss", "hparam/best_val_acc"} <= set(tags[run]), tags[run]
    by_run = {g["name"]: g for g in groups}
    assert sorted(by_run) == want_runs
    assert sorted(g["hparams"]["model"] for g in groups) == ["alexnet", "resnet18"]
    for g in groups:
        assert {"dataset", "optimizer", "lr", "batch_size"} <= set(g["hparams"])
        assert {m["name"]["tag"] for m in g["metricValues"]} >= {"hparam/best_val_acc", "hparam/params"}


# --------------------------------------------------------------------------- launchers
@pytest.mark.slow
def test_joblib_runs_two_jobs_in_parallel_and_groups_seeds(tmp_path: Path) -> None:
    needs_plugin("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    proc = multirun(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=alexnet", "seed=0,1",
                     *SMALL], sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(sweep_dir)
    assert len(got) == 2 and all(r["status"] == "completed" for r in got)
    # Two seeds of one configuration: the grouped table with mean ± std.
    assert "Repeated seeds (mean ± std)" in (sweep_dir / "comparison.md").read_text()
    # Two jobs at once on this machine: each gets its share of the cores.
    logs = [(j / "run.log").read_text() for j in job_dirs(sweep_dir)]
    assert all("torch threads (2 parallel jobs" in log for log in logs)


@pytest.mark.slow
def test_submitit_local_runs_a_one_job_sweep(tmp_path: Path) -> None:
    needs_plugin("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    proc = multirun(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=alexnet",
                     *SMALL], sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = rows(sweep_dir)
    assert row["model"] == "alexnet" and row["status"] == "completed"
    assert (sweep_dir / ".submitit").is_dir()


@pytest.mark.slow
def test_optuna_runs_two_trials(tmp_path: Path) -> None:
    needs_plugin("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    # SMALL fixes trainer.batch_size=16 on the command line: Optuna then searches only
    # lr and weight decay (a fixed value takes a parameter out of the search space).
    proc = multirun(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "model=alexnet", *SMALL],
                    sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(sweep_dir)
    assert len(got) == 2 and all(r["status"] == "completed" for r in got)
    for r in got:
        assert "optimizer.lr=" in r["overrides"] and "optimizer.weight_decay=" in r["overrides"]
        assert "trainer.batch_size=16" in r["overrides"].split()
    import yaml

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(float(r["best_val_acc"]) for r in got))


# --------------------------------------------------------------------------- configs
def test_sweep_zoo_preset_is_sized_and_scales_up() -> None:
    cfg = compose(["experiment=sweep_zoo"])
    assert cfg.trainer.epochs == 5 and cfg.dataset.limit == 512 and cfg.dataset.name == "digits"
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hc = hydra_compose(config_name="config", overrides=["experiment=sweep_zoo"], return_hydra_config=True)
    models = hc.hydra.sweeper.params.model.split(",")
    assert models == ["alexnet", "resnet18", "googlenet", "mobilenet_v3", "moganet_xtiny"]
    for m in models:
        assert (REPO / "conf" / "model" / f"{m}.yaml").is_file(), m
    # Command-line overrides (what `make sweep DATASET=cifar10 EPOCHS=30` passes) win.
    big = compose(["experiment=sweep_zoo", "dataset=cifar10", "dataset.limit=null", "trainer.epochs=30"])
    assert big.trainer.epochs == 30 and big.dataset.name == "cifar10" and big.dataset.limit is None


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_sweep_passes_dataset_and_epochs() -> None:
    def dry(*args: str) -> str:
        out = subprocess.run(["make", "-n", "sweep", *args], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if "cnnlab.run" in line)

    quick = dry()
    assert "-m experiment=sweep_zoo" in quick and "dataset.limit=null" not in quick
    big = dry("DATASET=cifar10", "EPOCHS=30")
    assert "dataset=cifar10" in big and "trainer.epochs=30" in big and "dataset.limit=null" in big


def test_hydra_config_has_the_callbacks() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hc = hydra_compose(config_name="config", return_hydra_config=True)
    targets = {c._target_ for c in hc.hydra.callbacks.values()}
    assert targets == {"cnnlab.run.ClaimRunFolder", "cnnlab.reporting.callbacks.ComparisonReport",
                       "cnnlab.reporting.callbacks.JobResources", "cnnlab.tracking.sweep.SweepTracker"}


def test_optuna_preset_composes() -> None:
    needs_plugin("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hc = hydra_compose(config_name="config", overrides=["hparams_search=optuna"],
                           return_hydra_config=True)
    sw = hc.hydra.sweeper
    assert "optuna" in sw._target_ and sw.direction == "maximize"
    assert set(sw.params) == {"optimizer.lr", "optimizer.weight_decay", "trainer.batch_size"}


# --------------------------------------------------------------------------- resources
def test_parallel_jobs_and_gpu_choice() -> None:
    assert parallel_jobs({"n_jobs": 2}, cpu_count=8) == 2
    assert parallel_jobs({"n_jobs": -1}, cpu_count=8) == 8  # joblib: all cores
    assert parallel_jobs({"n_jobs": -2}, cpu_count=8) == 7  # all but one
    assert parallel_jobs({"_target_": "basic"}, cpu_count=8) == 1  # basic/submitit: one at a time here
    assert [pick_gpu(n, ["0", "1", "2"]) for n in range(5)] == ["0", "1", "2", "0", "1"]
    assert pick_gpu(3, []) is None


def test_slurm_preset_composes() -> None:
    needs_plugin("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hc = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm_gpu",
                                                            "hydra.launcher.partition=gpu"],
                           return_hydra_config=True)
    launcher = hc.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.partition == "gpu"
