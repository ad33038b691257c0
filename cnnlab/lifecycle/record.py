"""The run record: summary.json's status (docs/errors.md) and every message a run can end with.

The loop says *what happened* (an :class:`Outcome`); :class:`RunRecord` says how it reads,
and, as a context manager around the run, records the exceptions that end it early.
Only the standard library is imported; :class:`cnnlab.reporting.track.RunTracker` writes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cnnlab.errors import CnnlabError, ConfigError

log = logging.getLogger("cnnlab")

Ending = Literal["finished", "early_stopped", "interrupted", "diverged"]


@dataclass(frozen=True)
class Outcome:
    """How the epoch loop ended. ``epoch``: the one it ended in (diverged, partial interrupted)
    or after (finished, early_stopped, interrupted between epochs). ``steps``: a partial epoch's
    steps done; a divergence's 0-based first NaN/inf step (-1: only the weights were)."""

    kind: Ending
    epoch: int
    steps: int | None = None


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's summary.json as a dict; None if there is none. Raises OSError or ValueError
    (garbled, or not an object): each caller decides what an unreadable summary means."""
    try:
        data = json.loads((Path(run_dir) / "summary.json").read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError("summary.json is not a JSON object")
    return data


def mark_failed(run_dir: str | os.PathLike, error: str, **fields: Any) -> None:
    """Mark a multirun job ``failed`` when it died outside train()'s bookkeeping (a summary that is
    missing or still ``running``; one that says why the run ended is left alone)."""
    from cnnlab.lifecycle.atomic import write_json_atomic

    try:
        summary = read_summary(run_dir) or {}
    except (OSError, ValueError):
        summary = {}
    if summary.get("status") not in (None, "running"):
        return
    for k, v in fields.items():
        summary.setdefault(k, v)
    summary.update(status="failed", error=error)
    try:
        write_json_atomic(Path(run_dir) / "summary.json", summary)
    except OSError as e:  # the disk that failed the job: say it in one line, as the job's error was
        if written_in(e, Path(run_dir)) is None:
            raise
        log.warning("could not mark %s failed: cannot write %r (%s)", run_dir, e.filename, e.strerror)


class RunRecord:
    """summary.json of one run, its status changes and their messages.

    ``tracker``: a RunTracker (disabled on DDP ranks > 0); ``previous``: the folder's summary
    before this launch; ``resume_epoch``: the resumed checkpoint's; None for new ones.
    ``completed``: the last completed epoch (a fresh run's is None until train sets it to 0).
    """

    def __init__(self, tracker: Any, run_dir: Path, previous: dict[str, Any] | None,
                 resume_epoch: int | None, save_checkpoints: bool) -> None:
        self.tracker, self.run_dir, self.previous = tracker, run_dir, previous
        self.resume_epoch, self.save_checkpoints = resume_epoch, save_checkpoints
        self.completed: int | None = resume_epoch
        # False until the resumed checkpoint has been loaded into the model: a failure
        # before that (it does not fit) must not mark the run it named as failed.
        self.resume_checked = resume_epoch is None
        self.experiment: Any = None  # the experiment tracker (tracker=...), once :meth:`track` starts it

    @property
    def summary(self) -> dict[str, Any]:
        return self.tracker.summary

    @property
    def saved_epoch(self) -> int | None:
        """The epoch checkpoints/last.pt holds: the last completed one when checkpoints are on."""
        return self.completed if self.save_checkpoints else self.resume_epoch

    def device(self) -> str:  # the config's choice until it is resolved
        return str(self.summary.get("device"))

    def update(self, **fields: Any) -> None:
        self.tracker.update_summary(**fields)

    # ---- the moves --------------------------------------------------------------------
    def start(self, model: str, dataset: str, device: str) -> None:
        """Write the summary of a run that has just started (status ``running``)."""
        from cnnlab.tracking.env import now

        self.started = now()  # env's start time (cnnlab/tracking/env.py)
        earlier = (self.previous or {}).get("resumed_at_epochs") or []
        self.update(
            model=model, dataset=dataset, device=device, status="running", error=None, params=None,
            macs=None, epochs_completed=0, best_val_acc=None, best_epoch=None, test_acc=None,
            train_seconds=0.0, images_per_second=None, fit=None, run_dir=str(self.run_dir),
            resumed_at_epochs=earlier + ([self.resume_epoch] if self.resume_epoch is not None else []),
        )

    def track(self, node: dict[str, Any], config: dict[str, Any], device: str) -> None:
        """summary.json's ``run_id`` (kept on resume) and ``env``; the experiment tracker
        (``node``: the resolved tracker config, cnnlab/tracking/) starts the run."""
        from cnnlab.tracking import new_run_id, start_tracker
        from cnnlab.tracking.env import environment

        run_id = (self.previous or {}).get("run_id") or new_run_id()
        env = environment(device, started=self.started)
        self.update(run_id=run_id, env=env)
        self.experiment = start_tracker(node, self.run_dir, run_id, config, env, enabled=self.tracker.enabled)

    def log_epoch(self, row: dict[str, float]) -> None:
        """One epoch's row: metrics.csv and TensorBoard, then the experiment tracker (never per step)."""
        self.tracker.log_epoch(row)
        if self.experiment is not None:
            self.experiment.log_epoch(row)

    def track_end(self) -> None:
        """The end time into ``env``; the tracker gets the final summary, whatever the status."""
        import contextlib

        from cnnlab.tracking.env import now

        if self.experiment is None:
            return
        with contextlib.suppress(OSError):
            self.update(env={**self.summary["env"], "ended": now()})
        self.experiment.finish(dict(self.summary))

    def resumed(self, state: Any, source: Path) -> None:
        """The checkpoint is loaded: the summary continues from its epoch."""
        self.resume_checked = True
        self.update(epochs_completed=self.resume_epoch, best_val_acc=state.best_val_acc,
                    best_epoch=state.best_epoch, train_seconds=state.train_seconds)
        log.info("resumed from %s at epoch %d", source, self.resume_epoch)

    def epoch_done(self, epoch: int, state: Any) -> None:
        """An epoch is complete (and saved, when checkpoints are on)."""
        self.completed = epoch
        self.update(epochs_completed=epoch, best_val_acc=state.best_val_acc, best_epoch=state.best_epoch,
                    train_seconds=state.train_seconds,
                    images_per_second=state.images_seen / max(state.train_seconds, 1e-9))

    def diverged(self, outcome: Outcome, steps_per_epoch: int, lr: float, grad_clip: float | None) -> None:
        """A NaN/inf loss or weight: stop before anything is saved; say what to change."""
        where = (f"at epoch {outcome.epoch}, step {outcome.steps + 1} of {steps_per_epoch}"
                 if outcome.steps is not None and outcome.steps >= 0
                 else f"in the weights after epoch {outcome.epoch}")
        kept = f"; checkpoints/last.pt keeps epoch {self.saved_epoch}" if self.saved_epoch is not None else ""
        clip = f"lower trainer.grad_clip (now {grad_clip})" if grad_clip else "set trainer.grad_clip=1.0"
        self.update(status="diverged", epochs_completed=outcome.epoch - 1,
                    error=f"loss became NaN/inf {where}: lower optimizer.lr (now {lr}, try {lr / 10:g}) "
                          f"or {clip}{kept}")
        log.error("diverged: %s", self.summary["error"])

    def interrupted(self, outcome: Outcome, signum: int, steps_per_epoch: int) -> BaseException:
        """A signal stopped the loop: record it and return the Interrupted to raise."""
        from cnnlab.lifecycle.signals import Interrupted, signal_name

        where = (f"during epoch {outcome.epoch} after step {outcome.steps} of {steps_per_epoch} (that "
                 "partial epoch is not kept)" if outcome.steps is not None else f"after epoch {self.completed}")
        kept = (f"checkpoints/last.pt holds epoch {self.saved_epoch}" if self.saved_epoch is not None
                else "no checkpoint was saved (trainer.save_checkpoints=false)")
        msg = f"{signal_name(signum)} {where}: {kept}; continue with resume={str(self.run_dir)!r}"
        self.update(status="interrupted", error=msg)
        log.warning("interrupted: %s", msg)
        return Interrupted(signum, msg)

    def completed_test(self, best_epoch: int, **report: Any) -> None:
        """The best checkpoint is tested (``report``: test_report's summary fields): the run is complete."""
        self.update(status="completed", **report)
        log.info("test (best epoch %d): loss %.4f acc %.4f", best_epoch, report["test_loss"], report["test_acc"])

    # ---- what ends a run early ----------------------------------------------------------
    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> bool:
        if e is None:
            return False
        if isinstance(e, KeyboardInterrupt):
            if self.summary.get("status") != "interrupted":  # a second signal, or a bare Ctrl-C
                kept = (f"checkpoints/last.pt holds epoch {self.saved_epoch}" if self.saved_epoch is not None
                        else "no checkpoint")
                self.update(status="interrupted", error=f"{str(e) or 'interrupted by the user'}: {kept}; "
                                                        f"continue with resume={str(self.run_dir)!r}")
        elif (err := written_in(e, self.run_dir)) is not None:  # a full or read-only disk, mid-run
            import contextlib

            msg = self.not_written(err)
            with contextlib.suppress(OSError):  # the same disk: summary.json may not take it either
                self.update(status="failed", error=msg)
            raise RunNotWritten(msg) from None
        elif isinstance(e, CnnlabError):
            from cnnlab.lifecycle.guards import OutOfMemory

            if not self.resume_checked and self.previous is not None and not isinstance(e, OutOfMemory):
                # The resume did not fit (e.g. another model's weights): the run it named stays as it was.
                self.tracker.summary = dict(self.previous)
                self.update()
            else:
                self.update(status="failed", error=str(e))
        elif isinstance(e, Exception):
            self.update(status="failed", error=f"{type(e).__name__}: {e}")
        return False  # the exception goes on to the caller

    def not_written(self, err: OSError) -> str:
        """A write into the run folder failed during training: what failed, what is kept, how to go on."""
        run = str(self.run_dir)
        if self.saved_epoch is None:
            kept = ("no checkpoint was saved yet: free space or make the folder writable, then start the run "
                    "again (in a new folder, or in this one with trainer.auto_resume=true)")
        else:
            kept = (f"checkpoints/last.pt holds epoch {self.saved_epoch}: free space or make the folder "
                    f"writable, then continue with resume={run!r}")
        return f"cannot write {err.filename!r} ({err.strerror or err}), so the run stopped; {kept}"

    def report_not_written(self, unwritten: list[str], saved: bool) -> ReportNotWritten:
        """Status ``trained`` (not ``failed``): the message says what is kept and how to redo the report."""
        import contextlib

        run = str(self.run_dir)
        kept = (f"the trained weights are kept in {run}/checkpoints (best.pt, last.pt): free space or make the "
                f"folder writable, then redo the report with python -m cnnlab.evaluate run={run}" if saved else
                "no checkpoint was saved (trainer.save_checkpoints=false), so the report cannot be redone")
        msg = f"the run trained, but {'; '.join(unwritten)}; {kept}"
        with contextlib.suppress(OSError):
            self.update(status="trained", error=msg)
        return ReportNotWritten(msg)


class ReportNotWritten(CnnlabError):
    """The run trained and its weights are saved, but a report could not be written."""


class RunNotWritten(CnnlabError):
    """A write into the run folder failed during training (a full or read-only disk): the run stopped."""


WRITE_ERRNOS = {"ENOSPC", "EROFS", "EDQUOT", "EFBIG", "EACCES", "EPERM"}  # a full or read-only destination


def written_in(e: BaseException, run_dir: Path) -> OSError | None:
    """The OSError behind ``e`` if it is a write into ``run_dir`` that a full or read-only disk
    refused (:data:`WRITE_ERRNOS`, the file named), else None."""
    import errno

    from cnnlab.lifecycle.atomic import os_error

    err = os_error(e)
    if err is None or errno.errorcode.get(err.errno) not in WRITE_ERRNOS or not err.filename:
        return None
    return err if Path(os.path.abspath(err.filename)).is_relative_to(os.path.abspath(run_dir)) else None


@contextmanager
def report_writes(unwritten: list[str], what: str) -> Iterator[None]:
    """A write of ``what`` that fails for want of space or permission after training adds a line to
    ``unwritten`` instead of failing the trained run; any other error goes on."""
    import errno

    from cnnlab.lifecycle.atomic import os_error

    try:
        yield
    except Exception as e:
        err = os_error(e)
        if err is None or errno.errorcode.get(err.errno) not in WRITE_ERRNOS:
            raise
        where = f" {err.filename!r}" if err.filename else ""
        unwritten.append(f"{what} could not be written{where} ({err.strerror or e})")


# ---- the claim on the run folder ----------------------------------------------------------
LOCK = ".cnnlab.lock"  # "<pid> <host> <start time>" of the launch that holds the folder (_me)
TRACES = ("summary.json", "checkpoints", "metrics.csv", "tb", "run.log")  # a folder holding one holds a run
# The same, less run.log: Hydra writes this launch's own run.log before the job runs.
TRACES_BEFORE_HYDRA = TRACES[:-1]
_held: dict[str, RunClaim] = {}


class RunClaim:
    """This process's hold on a run folder, from :func:`claim_run_dir` until :meth:`release`.

    ``before``: the folder's (and its .hydra/'s) entries when claimed, and run.log's size, so that a
    refused launch can remove exactly what it wrote (Hydra's .hydra/ files and run.log lines).
    """

    def __init__(self, run_dir: Path, made: list[Path]) -> None:
        self.run_dir, self.made = run_dir, made
        self.before = {sub: set(os.listdir(run_dir / sub)) if (run_dir / sub).is_dir() else set()
                       for sub in ("", ".hydra")}
        log_file = run_dir / "run.log"
        self.log_size = log_file.stat().st_size if log_file.is_file() else None
        self.in_sweep = _in_sweep()  # claimed in a sweep's job: Hydra has written this job's run.log

    @property
    def traces(self) -> list[str]:
        """What of an earlier run the folder held when claimed."""
        names = TRACES_BEFORE_HYDRA if self.in_sweep else TRACES
        return [name for name in names if name in self.before[""]]

    def release(self, undo: bool = False) -> None:
        """Give the folder up (idempotent); ``undo``: first remove what this launch wrote into it."""
        import shutil

        if _held.get(str(self.run_dir)) is not self:
            return
        del _held[str(self.run_dir)]
        if undo and not self.in_sweep:  # a sweep's job folder keeps its .hydra/ for the report
            for sub, names in self.before.items():
                folder = self.run_dir / sub
                for name in set(os.listdir(folder) if folder.is_dir() else ()) - names - {LOCK, ".hydra"}:
                    path = folder / name
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if self.log_size is not None:
                os.truncate(self.run_dir / "run.log", self.log_size)
            if ".hydra" not in self.before[""]:
                shutil.rmtree(self.run_dir / ".hydra", ignore_errors=True)
        if _read_lock(self.run_dir / LOCK) == _me():
            (self.run_dir / LOCK).unlink(missing_ok=True)
        for folder in self.made:  # the folders this launch made, if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _me() -> str:
    """This launch as its lock file records it: "<pid> <host> <start>" (start: :func:`_started`)."""
    import socket

    return f"{os.getpid()} {socket.gethostname()} {_started(os.getpid())}"


def _started(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (/proc/<pid>/stat's 22nd field), so that
    a pid the kernel has since given to another process is told apart; "-" where unknown (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return "-"
    return stat.rpartition(")")[2].split()[19]  # after "(comm)", which may hold spaces: fields 3..


def _read_lock(lock: Path) -> str | None:
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return None


def _is_stale(holder: str) -> bool:
    """The lock's launch is gone. Only a launch of this host can be checked: its pid no longer runs
    (a kill -9), or now runs another process (started at another time than the lock records), or is
    this process's own. Another host's lock, or one still being written, counts as live."""
    pid, host, started = (holder.split() + ["", "", ""])[:3]
    if not pid.isdigit() or host != _me().split()[1]:
        return False  # being written, or another host's: we cannot see its process, assume it is alive
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _started(int(pid))  # the pid runs: the same process, or a reused pid?
    return started not in ("", "-") and now != "-" and now != started


def _who(holder: str) -> str:
    return " ".join(holder.split()[:2])  # "<pid> <host>": the start time means nothing to a reader


def claim_run_dir(run_dir: str | os.PathLike) -> RunClaim:
    """Claim ``run_dir`` (made if missing) for this launch before anything is written to it: one
    create-exclusive step, the lock file made with O_CREAT|O_EXCL. Of two launches, the second is
    refused in one line; a lock left by a killed launch is taken over. Re-entrant within a process."""
    run_dir = Path(os.path.abspath(run_dir))
    if str(run_dir) in _held:
        return _held[str(run_dir)]
    made = []
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        made.append(folder)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None:
                continue  # released meanwhile
            if not _is_stale(holder):
                raise ConfigError(f"run folder {str(run_dir)!r} is in use by another launch (pid {_who(holder)}, "
                                  f"{LOCK}): wait for it to end, or pick a new folder with hydra.run.dir=<folder>") from None
            aside = lock.with_name(f"{LOCK}.{os.getpid()}")  # take the stale lock away, atomically
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                continue
            if _read_lock(aside) != holder:  # a live launch's, made meanwhile: put it back
                try:
                    os.link(aside, lock)
                except OSError:
                    pass
            else:
                log.warning("%s: taking over the lock of launch %s, which is gone", run_dir, _who(holder))
            aside.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(_me() + "\n")
        claim = _held[str(run_dir)] = RunClaim(run_dir, made)
        return claim
    raise ConfigError(f"run folder {str(run_dir)!r} is in use by another launch ({LOCK}): pick a new folder "
                      "with hydra.run.dir=<folder>")


def release_claim(run_dir: str | None) -> None:
    """Undo and release the claim this process holds on ``run_dir`` (a launch refused before train() claims)."""
    claim = _held.get(os.path.abspath(run_dir)) if run_dir else None
    if claim:
        claim.release(undo=True)


def used_folder_error(run_dir: Path, traces: list[str]) -> ConfigError:
    return ConfigError(f"run folder {str(run_dir)!r} already holds a run ({', '.join(traces)}); use "
                       f"resume={str(run_dir)!r} or trainer.auto_resume=true to continue it, or pick a new folder")
