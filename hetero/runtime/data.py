"""Batch sharding for weighted DP, and a deterministic synthetic token stream for examples and tests.

Replica ``d`` of a plan takes rows ``[sum(shares[:d]), sum(shares[:d+1]))`` of the global batch, where
``shares = plan.stages[0].batch_shares`` may be unequal (faster replicas take more samples). Its gradients are then
weighted by ``shares[d] / global_batch`` (see ``hetero.runtime.parallelize``).

    x, y = hetero.data.shard(SyntheticTokens(vocab=256, seq_len=32).batch(step, 16), plan)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from hetero.autoparallel.plan import Plan
from hetero.config import ConfigError, check


def share_range(plan: Plan, dp_index: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of the global batch that replica ``dp_index`` trains on."""
    shares = plan.stages[0].batch_shares
    if not 0 <= dp_index < len(shares):
        raise ConfigError("dp_index", f"{dp_index} is outside the plan's {len(shares)} DP replicas")
    start = sum(shares[:dp_index])
    return start, start + shares[dp_index]


def shard(batch, plan: Plan, dp_index: int | None = None):
    """This replica's share of ``batch`` (a tensor ``[global_batch, ...]`` or a tuple/list/dict of them).

    ``dp_index`` defaults to ``HETERO_DP_INDEX`` (set by hetero-run)."""
    if dp_index is None:
        if "HETERO_DP_INDEX" not in os.environ:
            raise ConfigError("dp_index", "not given and HETERO_DP_INDEX is unset (start the script with hetero-run "
                                          "or pass dp_index=)")
        dp_index = int(os.environ["HETERO_DP_INDEX"])
    start, end = share_range(plan, dp_index)

    def cut(t):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"shard: expected tensors in the batch, got {type(t).__name__}")
        if t.shape[0] != plan.global_batch:
            raise ConfigError("batch", f"has {t.shape[0]} samples but the plan's global_batch is {plan.global_batch}")
        return t[start:end]

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(t) for t in batch)
    return cut(batch)


@dataclass(kw_only=True)
class SyntheticTokens:
    """Reproducible random token sequences: the same (seed, step) gives the same batch on every rank."""

    vocab: int
    """Vocabulary size."""
    seq_len: int
    """Tokens per sample (inputs; targets are shifted by one)."""
    seed: int = 1234
    """Base seed."""

    def __post_init__(self):
        check(self.vocab > 1, "vocab", "must be > 1")
        check(self.seq_len > 0, "seq_len", "must be > 0")

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs ``[B, S]``, targets ``[B, S]``), int64, for training step ``step``.

        Sequences follow a noisy affine pattern so that the loss can fall below log(vocab)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        start = torch.randint(0, self.vocab, (batch_size, 1), generator=g)
        stride = torch.randint(1, 4, (batch_size, 1), generator=g)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab
        noise = torch.rand(seq.shape, generator=g) < 0.1
        seq = torch.where(noise, torch.randint(0, self.vocab, seq.shape, generator=g), seq)
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
