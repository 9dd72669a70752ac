"""Process-group setup from torchrun's environment, and the few collectives the trainer uses.

Everything works at world size 1 without a process group, so single-process runs and tests
need no launcher.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(*, backend: str = "auto", device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun, or by SLURM through Hydra's
    submitit launcher via `submitit.helpers.TorchDistributedEnvironment`) and join the group.

    NCCL on CUDA, gloo on CPU. A process group that is already initialised is reused (tests
    spawn workers that initialise it themselves). A collective that waits longer than
    `timeout_minutes` for the other ranks fails instead of hanging (gloo raises, and the
    helpers below say what to check; NCCL's watchdog aborts the process with its own message).
    """
    if not timeout_minutes > 0:
        raise ValueError(f"distributed.timeout_minutes must be > 0, got {timeout_minutes}")
    _env_from_slurm_if_needed()
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), dev)
    if world_size > 1:
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout,
                                store=_restart_store(timeout))
    return DistInfo(rank, local_rank, world_size, dev)


def data_parallel(model: torch.nn.Module, info: DistInfo, *, find_unused_parameters: bool) -> torch.nn.Module:
    """`model` in DDP (gradients averaged over ranks) when there are several ranks, else
    `model` itself. `find_unused_parameters`: some parameters may get no gradient in an update."""
    if not info.is_distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def _restart_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun (torch >= 2.5) the workers share the elastic agent's TCPStore, which
    outlives a restart: the restarted group would read the dead group's rendezvous keys and
    fail to connect, or hang (pytorch/pytorch#135712, #167288). A key prefix per restart
    keeps the groups apart. None (torch's own store from MASTER_ADDR/PORT) elsewhere.

    Multi-node: #135712 notes restart counts can differ between nodes; there, setting
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a store per restart) is the safe choice.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timeout)
    return dist.PrefixStore(f"restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)


def _env_from_slurm_if_needed() -> None:
    """Under `hydra/launcher=submitit_slurm` every task is started by srun, not torchrun:
    translate SLURM's variables into the torchrun ones (MASTER_ADDR from the first node)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", 1)) <= 1:
        return
    try:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()
    except (ImportError, RuntimeError) as err:  # not under a submitit job: leave it alone
        raise RuntimeError(
            "multi-task SLURM job without torchrun variables; launch it with "
            "hydra/launcher=submitit_slurm (needs hydra-submitit-launcher) or torchrun"
        ) from err


class CollectiveTimeoutError(RuntimeError):
    """A collective gave up waiting for the other ranks (`distributed.timeout_minutes`)."""


@contextlib.contextmanager
def _collective(name: str) -> Iterator[None]:
    """Re-raise a timed-out or broken collective as an error that says what to look for."""
    try:
        yield
    except RuntimeError as err:  # gloo raises RuntimeError (DistBackendError) on a timeout or a dead peer
        text = str(err)
        if "timed out" in text.lower() or "timeout" in text.lower():
            what = "timed out waiting for the other ranks"
        elif "connection" in text.lower() or "closed" in text.lower() or "reset" in text.lower():
            what = "lost its connection to another rank"
        else:
            raise
        raise CollectiveTimeoutError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: collective {name} {what}. Another rank "
            "probably crashed (look for its error above or in its log), is stuck reading data (a hung "
            "file system, a DataLoader worker that died), or runs a different number of updates. If a "
            "step legitimately takes that long, raise distributed.timeout_minutes. "
            f"({text.strip().splitlines()[-1][:300] if text.strip() else type(err).__name__})"
        ) from err


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (a no-op at world size 1). Returns `t`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with _collective("all_reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list at world size 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        with _collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out
    return [pickle.loads(pickle.dumps(obj))]


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        with _collective("broadcast_object_list"):
            dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with _collective("barrier"):
            dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
