"""Process-group setup from torchrun's environment, and the few collectives the trainer uses.

Everything works at world size 1 without a process group, so single-process runs and tests
need no launcher.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


def init_distributed(*, backend: str = "auto", device: str = "auto") -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun, or by SLURM through Hydra's
    submitit launcher via `submitit.helpers.TorchDistributedEnvironment`) and join the group.

    NCCL on CUDA, gloo on CPU. A process group that is already initialised is reused (tests
    spawn workers that initialise it themselves).
    """
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
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, local_rank, world_size, dev)


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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (a no-op at world size 1). Returns `t`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list at world size 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [pickle.loads(pickle.dumps(obj))]


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
