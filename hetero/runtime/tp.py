"""Speed-proportional tensor parallelism: column/row-parallel linear layers with uneven shards.

DTensor shards a dimension evenly; a heterogeneous TP group wants each rank's shard proportional to its speed
(``Stage.tp_shares``). These layers hold one contiguous slice of a full ``nn.Linear`` (Megatron-style):

- :class:`ColumnParallelLinear` keeps output rows ``[start, end)`` of ``weight [out, in]`` (and of the bias);
  its input must have gone through :func:`copy_to_tp` (identity forward, all-reduce of the gradient backward).
- :class:`RowParallelLinear` keeps input columns ``[start, end)`` of ``weight [out, in]``; it all-reduces the
  partial products forward (:func:`reduce_from_tp`, identity backward) and adds the full bias once.

Each sharded parameter carries ``param._hetero_shard = (dim, start, end, full_size)`` so that checkpoints can
gather it back to the full tensor (:func:`gather_full`) and re-slice it under another plan.

    python -m pytest -q tests/test_runtime_parallel.py -k tp
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hetero.autoparallel.plan import split_sizes


def shard_range(total: int, shares: list[float] | None, n: int, index: int, *, what: str) -> tuple[int, int]:
    """``[start, end)`` of rank ``index``'s shard of ``total`` units (see :func:`split_sizes`)."""
    sizes = split_sizes(total, shares, n, what=what)
    start = sum(sizes[:index])
    return start, start + sizes[index]


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the input gradient over the TP group backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce (sum) forward over the TP group; identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Enter a TP region: ``x`` (replicated on the group) unchanged; its gradient is summed over the group."""
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Leave a TP region: sum the partial results ``x`` over the group."""
    return _ReduceFromTP.apply(x, group)


def _mark(p: nn.Parameter, dim: int, start: int, end: int, full: int) -> nn.Parameter:
    p._hetero_shard = (dim, start, end, full)
    return p


class ColumnParallelLinear(nn.Module):
    """Output rows ``[start, end)`` of a linear layer: ``y[..., end-start] = x[..., in] @ W[start:end].T + b``."""

    def __init__(self, linear: nn.Linear, start: int, end: int):
        super().__init__()
        out = linear.out_features
        self.in_features, self.out_features, self.full_out = linear.in_features, end - start, out
        self.weight = _mark(nn.Parameter(linear.weight.detach()[start:end].clone()), 0, start, end, out)
        self.bias = None if linear.bias is None else _mark(
            nn.Parameter(linear.bias.detach()[start:end].clone()), 0, start, end, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Input columns ``[start, end)``: ``y[..., out] = allreduce(x_shard @ W[:, start:end].T) + b``."""

    def __init__(self, linear: nn.Linear, start: int, end: int, group):
        super().__init__()
        full = linear.in_features
        self.group = group
        self.in_features, self.out_features, self.full_in = end - start, linear.out_features, full
        self.weight = _mark(nn.Parameter(linear.weight.detach()[:, start:end].clone()), 1, start, end, full)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_tp(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


def shard_of(full: torch.Tensor, meta: tuple[int, int, int, int] | None) -> torch.Tensor:
    """This rank's slice of a full tensor given a parameter's ``_hetero_shard`` metadata (None: all of it)."""
    if meta is None:
        return full
    dim, start, end, _ = meta
    return full.narrow(dim, start, end - start).clone()


def gather_full(shard: torch.Tensor, meta: tuple[int, int, int, int] | None, group) -> torch.Tensor:
    """The full tensor from every TP rank's (uneven) shard: all-gather of zero-padded shards, then trimmed."""
    if meta is None or group is None:
        return shard.detach()
    dim, start, end, full = meta
    n = dist.get_world_size(group)
    bounds = torch.tensor([start, end], dtype=torch.long)
    all_bounds = [torch.empty_like(bounds) for _ in range(n)]
    dist.all_gather(all_bounds, bounds, group=group)
    width = max(int(b[1] - b[0]) for b in all_bounds)
    shape = list(shard.shape)
    shape[dim] = width
    padded = torch.zeros(shape, dtype=shard.dtype)
    padded.narrow(dim, 0, end - start).copy_(shard.detach())
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    pieces = sorted((int(b[0]), p.narrow(dim, 0, int(b[1] - b[0]))) for b, p in zip(all_bounds, parts))
    out = torch.cat([p for _, p in pieces], dim=dim)
    if out.shape[dim] != full:
        raise RuntimeError(f"TP shards cover {out.shape[dim]} of {full} entries along dim {dim}")
    return out
