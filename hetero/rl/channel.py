"""Channels between RL roles: send/recv of dicts of tensors keyed by micro-batch, with back-pressure.

A channel joins one sending rank to one receiving rank. ``send(key, data)`` ships a dict whose values are
tensors (any shape/dtype) or small picklable values (instruction strings, episode records); ``recv(key)`` returns
the next message sent under that key (per key, messages arrive in the order they were sent; different keys are
independent). At most ``capacity`` messages may be sent and not yet received: the sender then blocks until the
receiver takes one (credit-based back-pressure), so a fast env cannot flood a slow rollout.

- :class:`P2PChannel`: two processes, over any torch.distributed group (``hetero`` communicator across device types
  or gloo): a message is two p2p transfers, the lengths and then one byte buffer holding a pickled header (keys,
  shapes, dtypes, offsets, non-tensor values) and every tensor (8-byte aligned). Each transfer has its own tag,
  made of the channel's tag, the key, the message number under that key (mod 256) and the part, because gloo
  does not keep several pending sends on one (peer, tag) in order. Credits flow back on a tag of their own.
- :class:`LocalChannel`: both roles in one process (collocated): a bounded queue per key, no copy.

:class:`Channels` hands each rank the right kind for a (src, dst) pair.

    ch = P2PChannel(rank=r, src=0, dst=1, capacity=2, group=dist.group.WORLD)
    ch.send(3, {"obs": obs_tensor, "instruction": ["open the door"]})   # on rank 0
    msg = ch.recv(3)                                                     # on rank 1
    ch.close()                                                           # both ends; drains credits

Tests: ``python -m pytest -q tests/test_rlsys_channel.py``.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

MAX_KEY = 4096   # keys 0..MAX_KEY-2; MAX_KEY-1 carries credits
SEQ = 256        # per-key message numbers modulo SEQ (> capacity): every in-flight send has its own tag
MAX_CHANNELS = 64


class ChannelError(RuntimeError):
    """A channel was used wrongly (wrong end, key out of range) or a peer did not answer in time."""


def _split(data: dict[str, Any]) -> tuple[list, list[torch.Tensor]]:
    """Header entries ``(name, "t", shape, dtype)`` or ``(name, "v", value)`` and the tensors in order."""
    header, tensors = [], []
    for name, v in data.items():
        if torch.is_tensor(v):
            header.append((name, "t", tuple(v.shape), str(v.dtype).removeprefix("torch.")))
            tensors.append(v)
        else:
            header.append((name, "v", v))
    return header, tensors


class P2PChannel:
    """One end of a channel between two ranks over torch.distributed p2p (see the module docstring)."""

    def __init__(self, *, rank: int, src: int, dst: int, capacity: int = 2, group: dist.ProcessGroup | None = None,
                 tag_base: int = 0, device: str | torch.device = "cpu"):
        if src == dst:
            raise ChannelError(f"P2PChannel needs two ranks, got src == dst == {src} (use LocalChannel)")
        if rank not in (src, dst):
            raise ChannelError(f"rank {rank} is neither end of the channel {src} -> {dst}")
        if not 1 <= capacity < SEQ:
            raise ChannelError(f"capacity must be in [1, {SEQ}), got {capacity}")
        if not 0 <= tag_base < MAX_CHANNELS:
            raise ChannelError(f"tag_base must be in [0, {MAX_CHANNELS}), got {tag_base}")
        self.rank, self.src, self.dst, self.capacity, self.group = rank, src, dst, capacity, group
        self.tag_base = tag_base
        self._seq: dict[int, int] = {}  # messages sent (sender) or received (receiver) per key
        self._credit_tag = self._make_tag(MAX_KEY - 1, 0, 0)
        self.device = torch.device(device)
        self.sent = 0            # messages sent (sender)
        self.credits = 0         # credits received back (sender)
        self._inflight: deque = deque()  # (works, keep-alive tensors) of sends not known to be complete
        self._credit_works: list = []    # credit sends (receiver)
        self.blocked_s = 0.0     # time the sender spent waiting for credits (back-pressure)
        self.bytes_sent = 0

    def _make_tag(self, key: int, seq: int, part: int) -> int:
        return ((self.tag_base * MAX_KEY + key) * SEQ + seq % SEQ) * 2 + part

    def _next_tags(self, key: int) -> tuple[int, int]:
        """Tags of the (lengths, buffer) transfers of the next message under ``key``."""
        if not 0 <= key < MAX_KEY - 1:
            raise ChannelError(f"key must be in [0, {MAX_KEY - 1}), got {key}")
        n = self._seq.get(key, 0)
        self._seq[key] = n + 1
        return self._make_tag(key, n, 0), self._make_tag(key, n, 1)

    def _reap(self, block: bool = False) -> None:
        while self._inflight and (block or all(w.is_completed() for w in self._inflight[0][0])):
            works, _keep = self._inflight.popleft()
            for w in works:
                w.wait()

    def send(self, key: int, data: dict[str, Any]) -> None:
        """Send ``data`` under ``key``; blocks while ``capacity`` messages are unreceived."""
        if self.rank != self.src:
            raise ChannelError(f"rank {self.rank} is the receiving end of {self.src} -> {self.dst}")
        t0 = time.perf_counter()
        while self.sent - self.credits >= self.capacity:
            c = torch.zeros(1, dtype=torch.int64)
            dist.recv(c, self.dst, group=self.group, tag=self._credit_tag)
            self.credits += 1
        self.blocked_s += time.perf_counter() - t0
        tag_len, tag_buf = self._next_tags(key)
        header, tensors = _split(data)
        payload, offsets, off = [], [], 0
        for t in tensors:  # one byte buffer: header + every tensor, each 8-byte aligned
            b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # staged on the host
            pad = (-off) % 8
            if pad:
                payload.append(torch.zeros(pad, dtype=torch.uint8))
            offsets.append(off + pad)
            payload.append(b)
            off += pad + b.numel()
        head = pickle.dumps((header, offsets))
        hpad = (-len(head)) % 8
        blob = torch.cat([torch.frombuffer(bytearray(head + b"\0" * hpad), dtype=torch.uint8), *payload])
        length = torch.tensor([len(head) + hpad, off], dtype=torch.int64)
        works = [dist.isend(length, self.dst, group=self.group, tag=tag_len),
                 dist.isend(blob, self.dst, group=self.group, tag=tag_buf)]
        self.bytes_sent += 16 + blob.numel()
        self._inflight.append((works, (length, blob)))
        self.sent += 1
        self._reap()

    def recv(self, key: int) -> dict[str, Any]:
        """The next message sent under ``key`` (tensors on ``device``); returns a credit to the sender."""
        if self.rank != self.dst:
            raise ChannelError(f"rank {self.rank} is the sending end of {self.src} -> {self.dst}")
        tag_len, tag_buf = self._next_tags(key)
        length = torch.zeros(2, dtype=torch.int64)
        dist.recv(length, self.src, group=self.group, tag=tag_len)
        hlen, plen = int(length[0]), int(length[1])
        blob = torch.empty(hlen + plen, dtype=torch.uint8)
        dist.recv(blob, self.src, group=self.group, tag=tag_buf)
        header, offsets = pickle.loads(blob[:hlen].numpy().tobytes())
        out: dict[str, Any] = {}
        i = 0
        for entry in header:
            if entry[1] == "t":
                name, _, shape, dtype = entry
                dt = getattr(torch, dtype)
                n = math.prod(shape) * torch.empty(0, dtype=dt).element_size()
                start = hlen + offsets[i]
                t = blob[start:start + n].clone().view(dt).reshape(shape)
                out[name] = t.to(self.device)
                i += 1
            else:
                out[entry[0]] = entry[2]
        c = torch.ones(1, dtype=torch.int64)
        self._credit_works.append((dist.isend(c, self.src, group=self.group, tag=self._credit_tag), c))
        return out

    def close(self) -> None:
        """Finish this end: the sender waits for its sends and collects the remaining credits; the receiver
        waits for its credit sends. Call on both ends once every sent message was received."""
        if self.rank == self.src:
            self._reap(block=True)
            while self.credits < self.sent:
                c = torch.zeros(1, dtype=torch.int64)
                dist.recv(c, self.dst, group=self.group, tag=self._credit_tag)
                self.credits += 1
        else:
            for w, _c in self._credit_works:
                w.wait()
            self._credit_works.clear()


class LocalChannel:
    """Both ends in one process: a bounded FIFO per key (thread-safe); values are passed without copying."""

    def __init__(self, *, capacity: int = 2, timeout_s: float = 60.0):
        if capacity < 1:
            raise ChannelError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.timeout_s = capacity, timeout_s
        self._queues: dict[int, deque] = {}
        self._count = 0
        self._cv = threading.Condition()
        self.blocked_s = 0.0
        self.bytes_sent = 0

    def send(self, key: int, data: dict[str, Any]) -> None:
        """Queue ``data`` under ``key``; blocks (up to timeout_s, then ChannelError) while the channel is full."""
        t0 = time.perf_counter()
        with self._cv:
            if not self._cv.wait_for(lambda: self._count < self.capacity, timeout=self.timeout_s):
                raise ChannelError(f"local channel full ({self.capacity} messages) for {self.timeout_s} s: "
                                   "nobody receives (a single-threaded loop must receive before sending more)")
            self._queues.setdefault(key, deque()).append(data)
            self._count += 1
            self._cv.notify_all()
        self.blocked_s += time.perf_counter() - t0

    def recv(self, key: int) -> dict[str, Any]:
        """The next message under ``key`` (blocks up to timeout_s, then ChannelError)."""
        with self._cv:
            if not self._cv.wait_for(lambda: bool(self._queues.get(key)), timeout=self.timeout_s):
                raise ChannelError(f"no message under key {key} for {self.timeout_s} s")
            self._count -= 1
            data = self._queues[key].popleft()
            self._cv.notify_all()
            return data

    def close(self) -> None:
        """Check that nothing was left unreceived."""
        if self._count:
            raise ChannelError(f"local channel closed with {self._count} unreceived messages")


class Channels:
    """The channels of one rank, by (name, src, dst): local when both ends are this rank, p2p otherwise.
    Every rank must ask for the channels it is an end of with the same ``tag`` per name (distinct names get
    distinct tags)."""

    def __init__(self, *, rank: int, group: dist.ProcessGroup | None = None, capacity: int = 2,
                 device: str = "cpu"):
        self.rank, self.group, self.capacity = rank, group, capacity
        self.device = device
        self._open: dict[tuple[str, int, int], P2PChannel | LocalChannel] = {}
        self._tags: dict[str, int] = {}

    def get(self, name: str, src: int, dst: int, *, tag: int) -> P2PChannel | LocalChannel:
        """The channel ``name`` from ``src`` to ``dst`` (this rank must be an end)."""
        if self._tags.setdefault(name, tag) != tag:
            raise ChannelError(f"channel {name!r} used with tags {self._tags[name]} and {tag}")
        key = (name, src, dst)
        if key not in self._open:
            if src == dst:
                self._open[key] = LocalChannel(capacity=self.capacity)
            else:
                self._open[key] = P2PChannel(rank=self.rank, src=src, dst=dst, capacity=self.capacity,
                                             group=self.group, tag_base=tag, device=self.device)
        return self._open[key]

    def stats(self) -> dict[str, float]:
        """Bytes sent and seconds blocked on back-pressure, over this rank's channels."""
        return {"bytes_sent": sum(c.bytes_sent for c in self._open.values()),
                "blocked_s": sum(c.blocked_s for c in self._open.values())}

    def close(self) -> None:
        """Close every channel of this rank."""
        for c in self._open.values():
            c.close()
