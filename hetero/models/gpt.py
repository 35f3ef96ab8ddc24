"""A small reference GPT language model, laid out as ``ModelSpec.transformer`` describes it.

``GPT.layers`` is the flat layer list the Plan indexes: ``[embedding, block.0 .. block.{N-1}, head]`` (N + 2
layers), so a plan stage with ``layers: [a, b]`` owns ``GPT.layers[a:b]``. Every layer maps one tensor to one
tensor (tokens ``[B, S]`` -> hidden ``[B, S, H]`` -> logits ``[B, S, V]``), which is what pipeline stages need.
Blocks can be tensor-parallel sharded with uneven (speed-proportional) shares (``Block.tp_shard``) or handed to
DTensor (``Block.tp_plan``). ``GPTConfig.spec()`` gives the matching ModelSpec (same parameter counts).

    python -c "from hetero.models.gpt import GPT, GPTConfig; m = GPT(GPTConfig()); print(m.config.spec().summary())"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hetero.config import check
from hetero.models.spec import ModelSpec


@dataclass(kw_only=True)
class GPTConfig:
    """Shape of the reference GPT."""

    name: str = "gpt-tiny"
    """Model name (recorded in plans and checkpoints)."""
    vocab: int = 256
    """Vocabulary size."""
    hidden: int = 64
    """Hidden size H."""
    heads: int = 4
    """Attention heads (H must be divisible by heads)."""
    num_layers: int = 4
    """Transformer blocks N (the layer list has N + 2 entries)."""
    seq_len: int = 32
    """Maximum sequence length S (positional embeddings)."""
    ffn: int = 0
    """MLP hidden size; 0 means 4 H."""

    def __post_init__(self):
        for k in ("vocab", "hidden", "heads", "num_layers", "seq_len"):
            check(getattr(self, k) > 0, k, "must be > 0")
        check(self.hidden % self.heads == 0, "heads", f"hidden {self.hidden} is not divisible by heads {self.heads}")
        check(self.ffn >= 0, "ffn", "must be >= 0")
        if self.ffn == 0:
            self.ffn = 4 * self.hidden

    def spec(self, *, dtype: str = "fp32") -> ModelSpec:
        """The ModelSpec of this model (same layer list and parameter counts)."""
        return ModelSpec.transformer(name=self.name, num_layers=self.num_layers, hidden=self.hidden, heads=self.heads,
                                     ffn=self.ffn, vocab=self.vocab, seq_len=self.seq_len, dtype=dtype)


class Embedding(nn.Module):
    """Token + learned position embedding: tokens ``[B, S]`` (int64) -> hidden ``[B, S, H]``."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.tok = nn.Embedding(c.vocab, c.hidden)
        self.pos = nn.Embedding(c.seq_len, c.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tok(tokens) + self.pos(pos)[None]


class Attention(nn.Module):
    """Causal multi-head self-attention; with TP each rank runs a contiguous range of heads."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.head_dim = c.hidden // c.heads
        self.q = nn.Linear(c.hidden, c.hidden)
        self.k = nn.Linear(c.hidden, c.hidden)
        self.v = nn.Linear(c.hidden, c.hidden)
        self.proj = nn.Linear(c.hidden, c.hidden)
        self.tp_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, H]`` -> ``[B, S, H]``; the local head count follows from q's (possibly sharded) width."""
        from hetero.runtime.tp import copy_to_tp

        if self.tp_group is not None:
            x = copy_to_tp(x, self.tp_group)
        b, s, _ = x.shape

        def heads(t):  # [B, S, h_local * d] -> [B, h_local, S, d]
            return t.view(b, s, -1, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))``; with TP each rank holds a contiguous range of the FFN columns."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden, c.ffn)
        self.fc2 = nn.Linear(c.ffn, c.hidden)
        self.tp_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from hetero.runtime.tp import copy_to_tp

        if self.tp_group is not None:
            x = copy_to_tp(x, self.tp_group)
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: hidden ``[B, S, H]`` -> ``[B, S, H]``."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.ln1 = nn.LayerNorm(c.hidden)
        self.attn = Attention(c)
        self.ln2 = nn.LayerNorm(c.hidden)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def tp_shard(self, *, group, index: int, size: int, shares: list[float] | None) -> None:
        """Keep TP rank ``index``'s shard (of ``size``): heads and FFN columns split by ``shares``
        (speed-proportional; equal when None) with hetero's column/row-parallel layers."""
        from hetero.runtime.tp import ColumnParallelLinear, RowParallelLinear, shard_range

        c, a, m = self.config, self.attn, self.mlp
        h0, h1 = shard_range(c.heads, shares, size, index, what="attention heads")
        lo, hi = h0 * a.head_dim, h1 * a.head_dim
        a.q, a.k, a.v = (ColumnParallelLinear(lin, lo, hi) for lin in (a.q, a.k, a.v))
        a.proj = RowParallelLinear(a.proj, lo, hi, group)
        f0, f1 = shard_range(c.ffn, shares, size, index, what="FFN columns")
        m.fc1 = ColumnParallelLinear(m.fc1, f0, f1)
        m.fc2 = RowParallelLinear(m.fc2, f0, f1, group)
        a.tp_group = m.tp_group = group

    def tp_plan(self) -> dict:
        """DTensor plan for even TP (``torch.distributed.tensor.parallel.parallelize_module``)."""
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        col, row = ColwiseParallel(), RowwiseParallel()
        return {"attn.q": col, "attn.k": col, "attn.v": col, "attn.proj": row, "mlp.fc1": col, "mlp.fc2": row}


class Head(nn.Module):
    """Final LayerNorm + LM head: hidden ``[B, S, H]`` -> logits ``[B, S, V]``."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln = nn.LayerNorm(c.hidden)
        self.out = nn.Linear(c.hidden, c.vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(x))


class GPT(nn.Module):
    """The reference GPT: ``layers = [Embedding, Block x N, Head]``; forward tokens ``[B, S]`` -> logits ``[B, S, V]``."""

    def __init__(self, config: GPTConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.ModuleList([Embedding(config), *(Block(config) for _ in range(config.num_layers)),
                                         Head(config)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for layer in self.layers:
            x = layer(x)
        return x


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy: logits ``[B, S, V]``, targets ``[B, S]`` (int64) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
