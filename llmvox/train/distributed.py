"""Distributed training under torchrun: the process group, the device of each rank, the collectives.

Every collective is a no-op in one process, so the training loop reads the same with and without
DDP (and a DDP run computes what one process would).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from llmvox.train.config import TrainConfig


@dataclass
class DistEnv:
    """Where this process stands in the run; its methods are the collectives the trainer uses."""

    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over processes (through the GPU under nccl), returned on the CPU."""
        if not self.ddp:
            return t
        import torch.distributed as dist

        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        out = t.to(dev)
        dist.all_reduce(out)
        return out.cpu()

    def all_gather_object(self, item: Any) -> list[Any]:
        """Every process's `item`, in rank order."""
        if not self.ddp:
            return [item]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, item)
        return gathered

    def agree_to_stop(self, requested: bool) -> bool:
        """True on every process when any of them was asked to stop (they must stop at the same step)."""
        if not self.ddp:
            return requested
        return bool(self.all_reduce(torch.tensor([float(requested)]))[0] > 0)


def resolve_train_device(name: str, local_rank: int = 0) -> torch.device:
    if name in ("", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    from llmvox.device import resolve_device

    dev = resolve_device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_distributed(cfg: TrainConfig) -> DistEnv:
    """DDP when torchrun set WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA unless --backend says)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(False, 0, 0, 1, resolve_train_device(cfg.device))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_train_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = cfg.backend if cfg.backend not in ("", "auto") else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        # long timeout: rank 0 may tokenise a data set while the others wait
        dist.init_process_group(backend=backend, timeout=timedelta(hours=6))
    return DistEnv(True, rank, local_rank, world, device)


@contextlib.contextmanager
def process_group(env: DistEnv) -> Iterator[None]:
    """Destroys the process group on the way out, whatever happened inside."""
    try:
        yield
    finally:
        if env.ddp:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def set_thread_count(env: DistEnv, num_threads: int | None) -> None:
    """--num_threads, or else each CPU process of a DDP run gets its share of the machine's cores."""
    if num_threads:
        torch.set_num_threads(num_threads)
    elif env.ddp and env.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DistributedDataParallel, without re-sending its buffers every step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    # the only buffer (code features) is the same everywhere: no need to re-send it every step
    no_resync = ({"forward_sync_buffers": False}
                 if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                 else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_resync)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters outside the DDP module (a missing one counts as zero)."""
    import torch.distributed as dist

    if not params or not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
