"""Data-parallel training under torchrun: one :class:`Dist` answers every distributed question.

Without torchrun's ``RANK``/``WORLD_SIZE`` every call is a no-op; a dead or hung peer
becomes one :class:`DistError` after ``CNNLAB_DDP_TIMEOUT`` seconds at most. Why each
is so: docs/distributed.md. Only the standard library is imported at module level
(``cnnlab.run`` calls :func:`rank_overrides` at start-up).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError, ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("cnnlab")

TIMEOUT_ENV = "CNNLAB_DDP_TIMEOUT"  # seconds a collective may wait for the other ranks
STOP_EVERY_ENV = "CNNLAB_DDP_STOP_EVERY"
STOP_EVERY = 10  # steps between two agreements on the stop flag (a tiny CPU all-reduce)


class DistError(CnnlabError):
    """The process group could not start, or another rank failed or timed out."""


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def rank_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides, appended last (they win), for a torchrun worker: a rank > 0 gets a
    throwaway run dir (removed at exit) and no ``.hydra/``; it adopts rank 0's in :meth:`Dist.share_path`."""
    rank, world, _ = env_ranks()
    if world > 1 and any(a in ("-m", "--multirun") or a.lower() == "hydra.mode=multirun" for a in argv):
        raise ConfigError("-m/--multirun under torchrun is not supported: torchrun trains one config; "
                          "run one torchrun per config, or sweep with hydra/launcher=submitit_slurm "
                          "(docs/distributed.md)")
    if rank == 0 or world <= 1:
        return []
    scratch = tempfile.mkdtemp(prefix=f"cnnlab-rank{rank}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]


def _timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give a number of seconds, e.g. 600") from None
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be > 0")
    return seconds


@dataclass
class Dist:
    """This process's place in the job; ``world_size == 1``: every method is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # gloo (CPU) or nccl (CUDA); None when single-process
    cpu_group: Any = None  # a gloo group for host-side flags (the default group under gloo)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:  # rank 0: the one that writes the run folder
        return self.rank == 0

    def share_path(self, path: Path) -> Path:
        """Rank 0's ``path`` on every rank (the run folder: ranks > 0 composed a throwaway one)."""
        return Path(self.gather(str(path))[0])

    def barrier(self) -> None:
        """Wait for every rank (on the CPU group: no device work)."""
        if self.enabled:
            import torch.distributed as dist

            self._guard(dist.barrier, group=self.cpu_group)

    def local_batch(self, global_batch: int) -> int:
        """This rank's share of ``trainer.batch_size`` (the global batch)."""
        if global_batch % self.world_size:
            lo = global_batch // self.world_size * self.world_size
            raise ConfigError(
                f"trainer.batch_size={global_batch} is the global batch and must split evenly over "
                f"{self.world_size} processes: use {lo or self.world_size} or {lo + self.world_size}")
        return global_batch // self.world_size

    def convert_sync_bn(self, model: torch.nn.Module, sync_bn: bool, device_type: str) -> torch.nn.Module:
        """``model.sync_bn=true``: BatchNorm layers become SyncBatchNorm (batch statistics over
        the global batch, not each rank's share). Call before the optimizer is built."""
        if not sync_bn or not self.enabled:
            return model
        if device_type != "cuda":
            # torch's SyncBatchNorm raises on CPU tensors in training mode.
            raise ConfigError(f"model.sync_bn=true needs CUDA (torch's SyncBatchNorm has no {device_type} "
                              "kernel): use model.sync_bn=false on this device")
        import torch

        log.info("model.sync_bn: BatchNorm -> SyncBatchNorm over %d processes", self.world_size)
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        """The training-step module: DDP around ``model`` (then ``torch.compile`` if asked). Not for
        evaluation: DDP's forward broadcasts buffers, and ranks' eval shards can differ by a batch."""
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[self.local_rank] if self.backend == "nccl" else None,
                  gradient_as_bucket_view=True)  # grads live in the all-reduce buckets: no copy
        return torch.compile(ddp) if compile else ddp

    def sync_buffers(self, model: torch.nn.Module, weights: bool = False) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics: each rank's last step updated its
        own) before evaluating; with ``weights`` its parameters too (the best checkpoint it loaded)."""
        if self.enabled:
            import torch.distributed as dist

            for t in ([p.data for p in model.parameters()] if weights else []) + list(model.buffers()):
                self._guard(dist.broadcast, t, src=0)

    def all_reduce(self, *values: Any, op: str = "sum") -> tuple[Any, ...]:
        """``values`` (0-d tensors on one device, or ints) reduced (sum, min or max) over every rank in
        one all-reduce, each in its own type (float64 on the wire: counts stay exact). Ints only: on
        the CPU group, no device sync. Single-process: ``values`` unchanged."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        device = next((v.device for v in values if isinstance(v, torch.Tensor)), None)
        wire = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
        self._guard(dist.all_reduce, wire, op=getattr(dist.ReduceOp, op.upper()),
                    group=self.cpu_group if device is None else None)
        return tuple(int(w.item()) if isinstance(v, int) else w.to(v.dtype) if v.is_floating_point()
                     else w.round().to(v.dtype) for w, v in zip(wire, values, strict=True))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order; single-process: ``[obj]``."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        self._guard(dist.all_gather_object, parts, obj)
        return parts

    def agreed_stop(self, stop: Any) -> AgreedStop:
        """Wrap a :class:`cnnlab.lifecycle.signals.GracefulStop` so all ranks read the same flag."""
        every = int(os.environ.get(STOP_EVERY_ENV, STOP_EVERY))
        return AgreedStop(stop, self, max(1, every))

    def close(self) -> None:
        """Destroy the process group (idempotent)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - a peer already gone must not hide the real outcome
                log.debug("destroy_process_group: %s", e)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around a training pass: DDP's gradient all-reduce failing becomes a DistError. gloo raises
        a plain RuntimeError there, so whether a peer is gone is asked of a barrier, not the message."""
        import torch.distributed as dist

        try:
            yield
        except RuntimeError as e:
            if self.enabled and (isinstance(e, dist.DistError) or not self._peers_answer()):
                raise lost_peer(self, e) from e
            raise

    def _peers_answer(self) -> bool:
        """Whether every rank reaches a barrier within the collective timeout."""
        import datetime

        import torch.distributed as dist

        try:
            dist.monitored_barrier(self.cpu_group, timeout=datetime.timedelta(seconds=_timeout_seconds()))
        except RuntimeError:  # DistError, or gloo's own: a peer is gone
            return False
        return True

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a collective; a peer that died or timed out becomes a DistError naming the cause."""
        import torch.distributed as dist

        try:
            return fn(*args, **kwargs)
        except (dist.DistError, RuntimeError) as e:
            raise lost_peer(self, e) from e


def lost_peer(d: Dist, e: BaseException) -> DistError:
    """The error a rank raises when a collective fails: another rank died, hung or diverged."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DistError(
        f"rank {d.rank}/{d.world_size}: a collective with the other ranks failed ({type(e).__name__}: "
        f"{first[:300]}); another rank probably died or hung (its own log says why; "
        f"{TIMEOUT_ENV} sets how long to wait)")


class AgreedStop:
    """A GracefulStop whose ``signum`` is the same on every rank, at the same step.

    Every ``every``-th :meth:`poll` (after each training step) and each :meth:`sync` (each
    epoch's end) the ranks all-reduce (MAX) the signal each received, on the CPU: no device
    sync. Single-process: the local flag, read live.
    """

    def __init__(self, stop: Any, d: Dist, every: int) -> None:
        self._stop, self._dist, self.every = stop, d, every
        self._calls = 0
        self._agreed: int | None = None  # the agreed signal number, or None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signum(self) -> int | None:
        return self._agreed if self._dist.enabled else self._stop.signum

    def poll(self) -> bool:
        if self._dist.enabled:
            self._calls += 1
            if self._calls % self.every == 0:
                self.sync()
        return self.requested

    def sync(self) -> bool:
        """Agree now (a collective: every rank must call it at the same point)."""
        if self._dist.enabled:
            (signum,) = self._dist.all_reduce(self._stop.signum or 0, op="max")
            self._agreed = signum or None
        return self.requested

    def request(self, *signum: int) -> None:
        self._stop.request(*signum)

    def restore(self) -> None:
        self._stop.restore()


def _backend(device_name: str) -> str:
    """nccl when the run will be on CUDA (device=cuda, or auto with a GPU), else gloo."""
    import torch

    if device_name == "mps" or (device_name == "auto" and not torch.cuda.is_available()
                                and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("torchrun with device=mps is not supported (no collective backend): "
                          "use device=cpu")
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def setup(device_name: str) -> Dist:
    """Join the process group torchrun's environment describes; a no-op single-process.

    Ranks > 0 log warnings and errors only (the epoch lines would repeat rank 0's).
    """
    rank, world, local_rank = env_ranks()
    if world <= 1:
        return Dist()
    import datetime

    import torch
    import torch.distributed as dist

    backend = _backend(device_name)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # before init: NCCL binds this rank to its GPU
    timeout = datetime.timedelta(seconds=_timeout_seconds())
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except (dist.DistError, RuntimeError, ValueError) as e:
            raise DistError(f"rank {rank}/{world}: cannot join the process group ({backend}, "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {e}") from e
    # Host-side flags (the stop flag) travel on the CPU: under nccl, a gloo group of
    # their own, so reading them never waits for the GPU.
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    if rank > 0:
        log.setLevel(logging.WARNING)
    log.info("distributed: %d processes, backend %s, timeout %ss", world, backend, int(timeout.total_seconds()))
    return Dist(rank, world, local_rank, backend, cpu_group)
