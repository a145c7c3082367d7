"""Data parallelism under ``torchrun``: process group, gradient all-reduce, shared sums.

Every rank relaxes its shard of the global batch and computes the gradient of the mean loss
over the samples it used; :meth:`DistContext.average_gradients` turns those into the gradient
of the mean over the whole global batch, Σ_r n_r·g_r / Σ_r n_r, which is what one process
computes on the global batch (up to the order of floating-point sums). Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """This process's rank and the number of processes (1 and rank 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistContext:
        """Join the process group torchrun describes (``WORLD_SIZE`` > 1), gloo on CPU and
        nccl on CUDA; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), owns)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: Sequence[float], device: str | torch.device = "cpu") -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        if self.active:
            dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params: Sequence[nn.Parameter], used: float) -> None:
        """Replace each ``p.grad`` (the mean over this rank's ``used`` samples) by the mean
        over all ranks' samples: Σ_r used_r·g_r / Σ_r used_r, in one flat all-reduce."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float64) * used for g in grads] +
                         [torch.tensor([used], dtype=torch.float64, device=grads[0].device)])
        dist.all_reduce(flat)
        total = flat[-1].clamp_min(1.0)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = (flat[offset:offset + n] / total).reshape(g.shape).to(g.dtype)
            offset += n

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Start every rank from rank 0's parameters and buffers."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

