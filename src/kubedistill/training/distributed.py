"""Every torch.distributed call of the project lives here. Each helper also works in a single process
(world size 1, rank 0), so the rest of the code never checks whether it runs distributed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kubedistill.errors import KubedistillError

logger = logging.getLogger(__name__)

# torchrun sets all of these for every process it starts.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = timedelta(minutes=10)


class LaunchEnvironmentError(KubedistillError):
    """The distributed launch environment is half set."""


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_info(environ: dict[str, str] | None = None) -> ProcessInfo:
    """Read rank/world size from torchrun's environment; rank 0 of 1 when none of it is set.

    Raises LaunchEnvironmentError when only some of the variables are set, naming the missing ones.
    """
    env = os.environ if environ is None else environ
    present = [v for v in TORCHRUN_VARS if v in env]
    if not present:
        return ProcessInfo(rank=0, world_size=1, local_rank=0, local_world_size=1)
    missing = [v for v in TORCHRUN_VARS if v not in env]
    if missing:
        raise LaunchEnvironmentError(
            f"distributed launch environment is half set: {', '.join(present)} set but {', '.join(missing)} "
            "missing. Start training with torchrun (e.g. `torchrun --nproc-per-node=2 -m kubedistill train ...`), "
            "which sets all of them, or unset them all for a single-process run. In a PyTorchJob, run a bare "
            "`torchrun` that reads PET_NNODES/PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT; do not launch "
            "python directly (the operator's RANK is the pod index, not the process rank)."
        )
    try:
        return ProcessInfo(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env["LOCAL_RANK"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
        )
    except ValueError as e:
        raise LaunchEnvironmentError(f"distributed launch environment has a non-integer value: {e}") from e


def init(device: torch.device, *, timeout: timedelta = DEFAULT_TIMEOUT) -> ProcessInfo:
    """Initialise the process group when launched by torchrun with more than one process.

    NCCL on CUDA devices, gloo on CPU. The timeout is explicit: a rank whose peers never come fails after
    ``timeout`` instead of the 30-minute default.
    """
    info = launch_info()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = _attempt_store(info, timeout)
        dist.init_process_group(
            backend=backend, store=store, rank=info.rank, world_size=info.world_size, timeout=timeout
        )
        logger.info("process group ready: backend=%s rank=%d world_size=%d", backend, info.rank, info.world_size)
    return info


def _attempt_store(info: ProcessInfo, timeout: timedelta) -> dist.Store:
    """The rendezvous store, under a key prefix unique to this run and restart attempt.

    After torchrun restarts a worker group (--max-restarts), the store still holds the previous attempt's
    process-group keys (peer addresses); a restarted rank that comes up before its peers would read them and
    try to connect to dead processes. A prefix per TORCHELASTIC_RESTART_COUNT keeps the attempts apart.
    Under torchrun the agent hosts the store (TORCHELASTIC_USE_AGENT_STORE); otherwise rank 0 does.
    """
    env = os.environ
    hosted_by_agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        info.world_size,
        is_master=info.rank == 0 and not hosted_by_agent,
        timeout=timeout,
    )
    run_id = env.get("TORCHELASTIC_RUN_ID", "none")
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"kubedistill/{run_id}/attempt-{attempt}", store)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


@torch.no_grad()
def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, ...) tensors of all ranks along dim 0, in rank order; no gradient flows back."""
    if not is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's (picklable) ``obj``, in rank order; ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (for logging a global loss); the value itself in one process."""
    if not is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over ``module`` when running distributed, else ``module`` itself.

    SyncBatchNorm on CUDA so batch statistics cover the global batch (gloo has no SyncBatchNorm kernel). Buffers
    are not broadcast each step: the method's queue is identical on all ranks by construction, and copying a
    8192 x 768 queue every forward would cost more than the step's gradients.
    """
    if not is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device.index], broadcast_buffers=False)
    return DistributedDataParallel(module, broadcast_buffers=False)


def is_elastic_restart(environ: dict[str, str] | None = None) -> bool:
    """True when torchrun restarted this worker group after a failure (--max-restarts)."""
    env = os.environ if environ is None else environ
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (e.g. a random seed drawn once)."""
    if not is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def is_launched(environ: dict[str, str] | None = None) -> bool:
    """Whether a launcher (torchrun, a PyTorchJob, our own local processes) started this process."""
    env = os.environ if environ is None else environ
    return any(v in env for v in TORCHRUN_VARS)


# Where processes started by ``run_local_processes`` leave a user-facing error for the parent to raise.
_FAILURE_DIR_VAR = "KUBEDISTILL_LOCAL_FAILURE_DIR"


def run_local_processes(nprocs: int, entrypoint: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` in ``nprocs`` processes on this machine, as torchrun would (torch's elastic
    launcher, in-process: c10d rendezvous on a free loopback port, no restarts); {local rank: return value}.

    ``entrypoint`` and ``args`` must be picklable (the processes are spawned). When a process fails with one of
    our errors (bad data, a bad setting, a NaN loss), that error is raised here, not the launcher's summary; any
    other failure is raised as a ``LocalProcessError`` that carries its traceback.
    """
    import socket
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # As torchrun does: without this every process starts one thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=f"kubedistill-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0, monitor_interval=0.5,
        start_method="spawn",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kubedistill-failures-") as failures:
        previous = os.environ.get(_FAILURE_DIR_VAR)
        os.environ[_FAILURE_DIR_VAR] = failures  # the spawned processes inherit it
        try:
            return elastic_launch(config, _report_failures)(entrypoint, *args)
        except ChildFailedError as launcher_error:
            _raise_reported(failures, launcher_error)
            raise
        finally:
            if previous is None:
                os.environ.pop(_FAILURE_DIR_VAR, None)
            else:
                os.environ[_FAILURE_DIR_VAR] = previous


def report_failure(error: BaseException) -> None:
    """In a process ``run_local_processes`` started: leave ``error`` for the parent to raise. One of ours (bad
    data, a bad setting) is pickled and raised as itself; any other is left as its traceback, which the parent
    raises in a ``LocalProcessError`` (the launcher's own summary carries no traceback)."""
    import pickle
    import traceback
    from pathlib import Path

    folder = os.environ.get(_FAILURE_DIR_VAR)
    if not folder:
        return
    name = f"rank-{rank() if is_initialized() else int(os.environ.get('RANK', '0')):05d}"
    if isinstance(error, KubedistillError):
        try:
            payload = pickle.dumps(error)
            pickle.loads(payload)  # an error that cannot be rebuilt in the parent goes as its traceback
        except Exception:
            pass
        else:
            (Path(folder) / f"{name}.pickle").write_bytes(payload)
            return
    (Path(folder) / f"{name}.txt").write_text("".join(traceback.format_exception(error)))


class LocalProcessError(RuntimeError):
    """A process ``run_local_processes`` started failed with an error that is not one of ours."""


def _report_failures(entrypoint: Callable[..., Any], *args: Any) -> Any:
    """What each process ``run_local_processes`` starts runs: ``entrypoint``, reporting how it failed."""
    try:
        return entrypoint(*args)
    except BaseException as error:
        report_failure(error)
        raise


def _raise_reported(folder: str, launcher_error: BaseException) -> None:
    """Raise what the failed processes reported: one of our errors first, else the traceback of the process
    that failed first (a peer that failed because of it reports later: a broken collective)."""
    import pickle
    from pathlib import Path

    ours = sorted(Path(folder).glob("rank-*.pickle"))
    if ours:
        raise pickle.loads(ours[0].read_bytes()) from launcher_error
    others = sorted(Path(folder).glob("rank-*.txt"), key=lambda path: path.stat().st_mtime_ns)
    if others:
        local_rank = int(others[0].stem.removeprefix("rank-"))
        raise LocalProcessError(
            f"local process {local_rank} of those started on this machine failed:\n{others[0].read_text()}"
        ) from launcher_error


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled on the way: for a decision, or a checkpoint's state once)."""
    if not is_initialized():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_equal(values: list[float], device: torch.device) -> bool:
    """Whether every rank holds exactly the same ``values`` (e.g. the step and a checksum of the weights)."""
    if not is_initialized():
        return True
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(other, gathered[0]) for other in gathered)


def abort_process(exit_code: int = 1) -> None:
    """Exit now, after printing the current exception: a rank whose peer died must not wait at interpreter
    shutdown, where tearing down the process group blocks on the dead peer and keeps torchrun from restarting
    the group (--max-restarts)."""
    import sys
    import traceback

    traceback.print_exc()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
