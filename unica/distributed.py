"""Cross-process helpers for training: the one place where embeddings are gathered.

Data-parallel training (``torchrun``, ``accelerate launch``) gives every process its own shard of
the batch. Contrastive losses want the other processes' candidates as extra negatives, so the
losses call :func:`gather_with_grad` and offset their labels by :func:`rank_and_world_size`.
Without an initialised process group both functions describe a world of one process, so the same
loss code runs unchanged in a single process.

Gradient convention (the one open_clip and sentence-transformers use): every process computes the
mean loss of its *local* queries against the gathered candidates; the backward of the gather sums
the gradients that all processes send to a shard; DistributedDataParallel then averages parameter
gradients over processes. The result equals the gradient of the mean loss over the concatenated
global batch computed in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_ids", "gather_with_grad", "is_distributed", "rank_and_world_size"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes, ``(0, 1)`` when not distributed.

    Example:
        >>> rank_and_world_size()
        (0, 1)
    """
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients every process sends to this shard.

    Our own Function on public collectives: ``torch.distributed.nn.functional.all_gather`` does the
    same but is deprecated in torch 2.13 in favour of a private module.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        ctx.rows = (rank * tensor.shape[0], (rank + 1) * tensor.shape[0])
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        begin, end = ctx.rows
        return grad[begin:end]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    Rank ``r``'s rows land at ``[r * n, (r + 1) * n)`` of the result, where ``n = tensor.shape[0]``
    (every process must pass the same shape). The gradient that reaches the result flows back to
    the local shard, summed over all processes' losses. Returns ``tensor`` itself when not distributed.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> gather_with_grad(x).shape  # one process
        torch.Size([2, 3])
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def gather_ids(ids: torch.Tensor, pad_value: int = -1) -> torch.Tensor:
    """Concatenate integer id tensors from every process along dim 0 (no gradient).

    Unlike :func:`gather_with_grad`, the processes' tensors may differ in their second dimension (e.g. a
    different number of known positives per query): each is padded with ``pad_value`` to the widest.
    Returns ``ids`` itself when not distributed.

    Example:
        >>> gather_ids(torch.tensor([[3, -1], [4, 5]])).tolist()  # one process
        [[3, -1], [4, 5]]
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return ids
    ids = ids.contiguous()
    if ids.ndim == 2:
        width = torch.tensor([ids.shape[1]], device=ids.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        ids = torch.nn.functional.pad(ids, (0, int(width) - ids.shape[1]), value=pad_value)
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids)
    return torch.cat(parts, dim=0)
