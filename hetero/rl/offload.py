"""Context switching for collocated RL: move a model's parameters, gradients and optimizer state to a host-side store
and back, bit-exact, measuring the bytes freed and restored.

In collocated mode the actor (weights + grads + AdamW moments) is offloaded while the rollout model generates, and
the rollout model is offloaded while the actor trains, so both fit on one device. ``offload`` copies every tensor
to host memory (pinned when CUDA is present) and replaces the device tensor by an empty one, so its memory is
really released; ``reload`` puts identical copies back on the original device, under the same Parameter objects
(the optimizer keeps tracking them). On a GPU the freed device memory is measured with
``torch.cuda.memory_allocated``; on CPU the store's byte count is reported. Every switch is logged.

    store = HostStore()
    st = store.offload("actor", model, optimizer)   # st.bytes, st.device_freed_bytes, st.seconds
    ...                                             # model unusable here
    store.reload("actor", model, optimizer)         # exactly the same values as before

Tests: ``python -m pytest -q tests/test_rlsys_offload.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


class OffloadError(RuntimeError):
    """A model was offloaded twice, reloaded without being offloaded, or changed shape in between."""


@dataclass
class SwitchStats:
    """One offload or reload."""

    name: str
    """Store entry (``actor``, ``rollout``)."""
    direction: str
    """``offload`` (device -> host) or ``reload`` (host -> device)."""
    bytes: int
    """Bytes of tensors moved (params + grads + optimizer state)."""
    device_freed_bytes: int
    """Change of ``torch.cuda.memory_allocated`` (freed > 0 on offload, < 0 on reload); 0 on CPU."""
    seconds: float
    """Wall time of the move."""

    def line(self) -> str:
        """One log line."""
        dev = f", device memory {-self.device_freed_bytes / 2**20:+.1f} MiB" if self.device_freed_bytes else ""
        return f"{self.direction} {self.name}: {self.bytes / 2**20:.2f} MiB in {self.seconds * 1e3:.1f} ms{dev}"


def _tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
    """(owner, key, tensor) of every device tensor to move: param data, grads, buffers, optimizer state."""
    out = []
    for name, p in model.named_parameters():
        out.append((p, "data", p.data, f"param {name}"))
        if p.grad is not None:
            out.append((p, "grad", p.grad, f"grad {name}"))
    for mod_name, mod in model.named_modules():
        for bname, b in mod._buffers.items():
            if b is not None:
                out.append((mod._buffers, bname, b, f"buffer {mod_name}.{bname}"))
    if optimizer is not None:
        for st in optimizer.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0:  # scalar step counters stay where they are
                    out.append((st, k, v, f"optimizer state {k}"))
    return out


def _get(owner, key):
    return owner[key] if isinstance(owner, dict) else getattr(owner, key)


def _set(owner, key, value):
    if isinstance(owner, dict):
        owner[key] = value
    else:
        setattr(owner, key, value)


class HostStore:
    """Host-side copies of offloaded models, by name (see the module docstring)."""

    def __init__(self):
        self._entries: dict[str, list] = {}
        self.history: list[SwitchStats] = []

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def offload(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                log=print) -> SwitchStats:
        """Move ``model`` (and ``optimizer``'s state) to the host store under ``name``."""
        if name in self._entries:
            raise OffloadError(f"{name!r} is already offloaded")
        items = _tensors(model, optimizer)
        cuda = any(t.is_cuda for _, _, t, _ in items)
        if cuda:
            torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        saved, nbytes = [], 0
        for owner, key, t, what in items:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda and torch.cuda.is_available())
            host.copy_(t, non_blocking=cuda)
            saved.append((owner, key, host, t.device, what))
            nbytes += t.numel() * t.element_size()
        if cuda:
            torch.cuda.synchronize()
        for owner, key, _h, dev, _w in saved:  # release the device tensors (grads: None, as zero_grad does)
            _set(owner, key, None if key == "grad" else torch.empty(0, dtype=_get(owner, key).dtype, device=dev))
        del items
        if cuda:
            torch.cuda.synchronize()
        after = torch.cuda.memory_allocated() if cuda else 0
        self._entries[name] = saved
        st = SwitchStats(name, "offload", nbytes, before - after, time.perf_counter() - t0)
        self.history.append(st)
        if log:
            log(st.line())
        return st

    def reload(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
               log=print) -> SwitchStats:
        """Put ``name``'s tensors back on their devices (bit-exact) and drop the host copies."""
        if name not in self._entries:
            raise OffloadError(f"{name!r} is not offloaded")
        saved = self._entries.pop(name)
        cuda = any(dev.type == "cuda" for *_, dev, _w in saved)
        before = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        nbytes = 0
        for owner, key, host, dev, what in saved:
            cur = _get(owner, key)
            if (cur is not None) if key == "grad" else (cur is None or cur.numel() != 0):
                raise OffloadError(f"{name!r}: {what} was replaced while offloaded")
            _set(owner, key, host.to(dev, non_blocking=cuda, copy=True))
            nbytes += host.numel() * host.element_size()
        if cuda:
            torch.cuda.synchronize()
        after = torch.cuda.memory_allocated() if cuda else 0
        st = SwitchStats(name, "reload", nbytes, before - after, time.perf_counter() - t0)
        self.history.append(st)
        if log:
            log(st.line())
        return st
