"""Hydra callbacks for multiruns (configured in conf/hydra/default.yaml).

``ComparisonReport`` writes and prints the comparison report when a multirun ends (read
from disk: any launcher or sweeper); ``JobResources`` splits the cores (and GPUs) between
parallel jobs. Hydra's multirun ``main`` returns nothing, so ``cnnlab.run`` exits with
``sweep_exit_code()``: 1 when a job did not complete.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("cnnlab")

# Set by ComparisonReport at the end of a multirun in this process: whether a job did not
# complete, or the report failed.
_last_sweep = {"failed": False}


def sweep_exit_code() -> int:
    """1 if the last multirun in this process had a job that did not complete (or no report), else 0."""
    return int(_last_sweep["failed"])


@dataclass
class ComparisonReport(Callback):
    """Writes and prints the comparison report when a multirun ends."""

    plot: bool = True
    print_table: bool = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _last_sweep["failed"] = False

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import errno

        from cnnlab.lifecycle.atomic import os_error
        from cnnlab.lifecycle.record import WRITE_ERRNOS
        from cnnlab.reporting.compare import build_report, console_text, write_report

        # hydra.sweep.dir holds ${now:...}; Hydra caches that resolver on the config,
        # so this is the folder the launcher created, not a new timestamp.
        sweep_dir = Path(str(config.hydra.sweep.dir))
        t0 = time.perf_counter()
        _last_sweep["failed"] = True  # until the report says otherwise
        try:
            report = build_report([sweep_dir])
            files = write_report(report, sweep_dir, title=f"Sweep {sweep_dir.name}", plot=self.plot)
        except Exception as e:  # noqa: BLE001 - the jobs' results are on disk; say so, don't crash
            err = os_error(e)
            if err is not None and errno.errorcode.get(err.errno) in WRITE_ERRNOS:  # a full or read-only disk
                log.error("the comparison report could not be written: cannot write %r (%s); the jobs' results "
                          "are kept: free space or make the folder writable, then rebuild it with "
                          "`python -m cnnlab.compare %s`", err.filename or str(sweep_dir), err.strerror, sweep_dir)
            else:
                log.exception("the comparison report failed; rebuild it with "
                              "`python -m cnnlab.compare %s`", sweep_dir)
            return
        _last_sweep["failed"] = bool(report.failed)
        if self.print_table:
            print(f"\nComparison of {len(report.runs)} runs in {sweep_dir}:\n", flush=True)
            print(console_text(report))
            print(f"\nwrote {', '.join(f.name for f in files)} in {time.perf_counter() - t0:.2f}s",
                  flush=True)
        if report.failed:
            print(f"{len(report.failed)} of {len(report.runs)} jobs did not complete: their errors are in "
                  f"{sweep_dir / 'comparison.md'}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- resources
def parallel_jobs(launcher: Any, cpu_count: int) -> int:
    """How many jobs the launcher runs at once (joblib's n_jobs; 1 for the others)."""
    n = launcher.get("n_jobs") if hasattr(launcher, "get") else None
    if not isinstance(n, int) or n == 0:
        return 1
    # joblib: -1 = all CPUs, -2 = all but one, ...
    return max(1, n if n > 0 else cpu_count + 1 + n)


def pick_gpu(job_num: int, visible: list[str]) -> str | None:
    """The GPU for a job: round-robin over the visible ones by job number."""
    return visible[job_num % len(visible)] if visible else None


def _visible_gpus() -> list[str]:
    """GPU ids this process may use, from the driver's /proc listing: asking torch would
    initialise CUDA, which reads CUDA_VISIBLE_DEVICES once, at its first call."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


class JobResources(Callback):
    """Split the cores (and GPUs) between jobs that the launcher runs in parallel."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        hc = config.hydra
        if hc.mode != RunMode.MULTIRUN:
            return
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = parallel_jobs(hc.launcher, cpus)
        if n <= 1:
            return  # one job at a time: torch's defaults already use the whole machine
        threads = max(1, cpus // n)
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for any subprocess the job starts
        # A joblib worker process runs several jobs in turn, and CUDA can be pinned only
        # before its first use there: the worker's first job chooses, later ones keep it.
        gpus = _visible_gpus()
        if len(gpus) > 1 and not os.environ.get("CNNLAB_GPU_PINNED") and not torch.cuda.is_initialized():
            gpu = pick_gpu(int(hc.job.num), gpus)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            os.environ["CNNLAB_GPU_PINNED"] = "1"
            log.info("job %s: %d torch threads, GPU %s", hc.job.num, threads, gpu)
        else:
            log.info("job %s: %d torch threads (%d parallel jobs on %d cores)", hc.job.num, threads, n, cpus)
