"""Actor -> rollout weight sync with version numbers, over a torch.distributed group (the ``hetero`` communicator
broadcasts across device types; gloo on CPU in tests).

After every update the actor's first rank broadcasts ``[version, numel]`` and then every floating-point entry of the
policy's ``state_dict`` flattened into one fp32 buffer (exact for fp32/bf16/fp16). Rollout ranks load it and tag
every sample they produce with the version, so the actor knows which policy produced each sample (and a
synchronous algorithm can check that it trains on fresh samples only).

    ws = WeightSync(src=actor_rank, ranks=[actor_rank, *rollout_ranks], group=sync_group)  # same on every member
    ws.push(actor_model, version=3)        # on src
    v = ws.pull(rollout_model)             # on the others -> 3

Tests: ``python -m pytest -q tests/test_rlsys_channel.py``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class WeightSyncError(RuntimeError):
    """The received weights do not fit the model, or the version went backwards."""


def _entries(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


def flatten(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.Tensor:
    """All floating state_dict entries of ``model`` as one fp32 vector ``[numel]`` on ``device``."""
    return torch.cat([v.detach().reshape(-1).to(device=device, dtype=torch.float32) for _, v in _entries(model)])


def unflatten_into(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy a vector made by :func:`flatten` into ``model`` (dtype/device of each entry kept)."""
    entries = _entries(model)
    total = sum(v.numel() for _, v in entries)
    if flat.numel() != total:
        raise WeightSyncError(f"received {flat.numel()} values but the model has {total} floating-point values")
    off = 0
    with torch.no_grad():
        for _, v in entries:
            n = v.numel()
            v.copy_(flat[off:off + n].view(v.shape).to(dtype=v.dtype, device=v.device))
            off += n


class WeightSync:
    """Broadcast of policy weights from ``src`` to the other ``ranks`` of ``group`` (see the module docstring)."""

    def __init__(self, *, src: int, ranks: list[int], group: dist.ProcessGroup | None = None,
                 transport_device: str = "cpu"):
        if src not in ranks:
            raise WeightSyncError(f"source rank {src} is not in the sync ranks {ranks}")
        self.src, self.ranks, self.group, self.transport = src, list(ranks), group, transport_device
        self.version = -1
        self.last_s = 0.0
        self.bytes = 0

    def push(self, model: torch.nn.Module, *, version: int) -> int:
        """On ``src``: broadcast ``model``'s weights as ``version`` (must increase). Returns bytes sent."""
        if version <= self.version:
            raise WeightSyncError(f"version must increase: got {version} after {self.version}")
        t0 = time.perf_counter()
        flat = flatten(model, self.transport)
        head = torch.tensor([version, flat.numel()], dtype=torch.int64)
        if len(self.ranks) > 1:
            dist.broadcast(head, self.src, group=self.group)
            dist.broadcast(flat, self.src, group=self.group)
        self.version = version
        self.bytes = flat.numel() * 4
        self.last_s = time.perf_counter() - t0
        return self.bytes

    def pull(self, model: torch.nn.Module) -> int:
        """On a receiver: load the broadcast weights into ``model``; returns their version."""
        t0 = time.perf_counter()
        head = torch.zeros(2, dtype=torch.int64)
        dist.broadcast(head, self.src, group=self.group)
        version, n = int(head[0]), int(head[1])
        if version <= self.version:
            raise WeightSyncError(f"received version {version} but already had {self.version}")
        flat = torch.empty(n, dtype=torch.float32, device=self.transport)
        dist.broadcast(flat, self.src, group=self.group)
        unflatten_into(model, flat)
        self.version = version
        self.bytes = n * 4
        self.last_s = time.perf_counter() - t0
        return version
