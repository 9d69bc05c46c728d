"""torchrun-native distributed helpers: one code path from one CPU process to many GPU nodes.

``torchrun`` (or ``srun`` + a launcher that sets the same variables) provides ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; without them the program runs as one process with no process group, and every collective below
returns its input unchanged. No ``mp.spawn``, no SLURM branch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the default process group from torchrun's environment, or run as a single process.

    Args:
        device: ``auto`` (the local CUDA device if available, else CPU), ``cpu`` or ``cuda``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but CUDA is not available; use device=cpu or device=auto")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 0, 1, torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(rank, local_rank, world, dev)


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def get_rank() -> int:
    return torch_dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else 1


def launch_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without torchrun).

    Unlike :func:`get_rank` it holds before :func:`init_distributed` and after :func:`cleanup` (e.g. for printing
    a result once after the run scaffold has destroyed the process group).
    """
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files)."""
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor); the input itself when not distributed."""
    if not is_initialized():
        return tensor
    out = tensor.clone()
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks; the input itself when not distributed."""
    if not is_initialized():
        return tensor
    return all_reduce_sum(tensor) / get_world_size()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0; the input itself when not distributed."""
    if not is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` when not distributed); e.g. per-rank detections."""
    if not is_initialized():
        return [obj]
    parts: list[object] = [None] * get_world_size()
    torch_dist.all_gather_object(parts, obj)
    return parts


def maybe_sync_bn(model: nn.Module) -> nn.Module:
    """Convert BatchNorm to SyncBatchNorm only in a multi-process job (SyncBN needs a process group)."""
    if get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def cleanup() -> None:
    """Destroy the process group (the run scaffold does it when a run ends, also on error)."""
    if is_initialized():
        torch_dist.destroy_process_group()
