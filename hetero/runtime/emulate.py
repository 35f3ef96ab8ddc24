"""Emulate a slower device on CPU by padding compute with sleep. FOR TESTS AND BENCHMARKS ONLY.

A rank declared as a device ``k`` times slower than the machine it runs on times each compute block and then
sleeps ``(k - 1) x elapsed``, so the block takes ``k x`` as long while the core stays free during the sleep (the
rank's CPU duty cycle is ``1 / k``). This lets a 2-core machine run a "heterogeneous" cluster honestly: the
timings are real, only the speed difference is emulated. Nothing in the production path uses this class; a real
heterogeneous cluster needs no emulation.

    HETERO_SLOWDOWN=2 python my_worker.py        # Emulator.from_env() then pads every `with emu.compute():`

    emu = Emulator.from_cluster(cluster, rank)   # slowdown = peak fp32 of the fastest type / the rank's type's
    with emu.compute():
        loss = model(x).sum(); loss.backward()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from hetero.config import ConfigError

ENV_VAR = "HETERO_SLOWDOWN"


class Emulator:
    """Pads compute blocks to emulate a device ``slowdown`` times slower (tests/benchmarks only)."""

    def __init__(self, *, slowdown: float):
        if not (isinstance(slowdown, (int, float)) and slowdown >= 1.0):
            raise ConfigError("slowdown", f"must be a number >= 1, got {slowdown!r}")
        self.slowdown = float(slowdown)
        self.compute_s = 0.0
        """Measured (unpadded) seconds of all blocks so far."""
        self.padded_s = 0.0
        """Seconds slept for padding so far."""

    def __repr__(self) -> str:
        return f"Emulator(slowdown={self.slowdown:g})"

    @property
    def enabled(self) -> bool:
        """Whether this emulator pads at all (slowdown > 1)."""
        return self.slowdown > 1.0

    @property
    def duty_cycle(self) -> float:
        """Fraction of wall time the rank keeps a core busy while computing: 1 / slowdown."""
        return 1.0 / self.slowdown

    @classmethod
    def from_env(cls) -> Emulator:
        """Slowdown from ``HETERO_SLOWDOWN`` (1 when unset or empty)."""
        raw = os.environ.get(ENV_VAR, "").strip()
        if not raw:
            return cls(slowdown=1.0)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(ENV_VAR, f"must be a number >= 1, got {raw!r}") from None
        return cls(slowdown=value)

    @classmethod
    def from_cluster(cls, cluster, rank: int, *, reference: str | None = None) -> Emulator:
        """Slowdown of ``rank``'s device type relative to ``reference`` (a device type id of the cluster; default
        the fastest), speed = peak fp32 FLOP/s. The reference type must be at least as fast as the rank's."""
        types = cluster.device_types()
        rank_types = cluster.rank_types()
        if not 0 <= rank < len(rank_types):
            raise ConfigError("rank", f"must be in [0, {len(rank_types)}), got {rank}")
        if reference is None:
            ref = max(types.values(), key=lambda t: t.peak("fp32"))
        elif reference in types:
            ref = types[reference]
        else:
            raise ConfigError("reference", f"unknown device type {reference!r} (cluster has {', '.join(types)})")
        mine = types[rank_types[rank]]
        ratio = ref.peak("fp32") / mine.peak("fp32")
        if ratio < 1.0 - 1e-9:
            raise ConfigError("reference", f"{ref.id} is slower than rank {rank}'s {mine.id}; emulation can only "
                              "slow a rank down (pick the fastest type as reference)")
        return cls(slowdown=max(ratio, 1.0))

    def pad(self, elapsed_s: float) -> float:
        """Sleep ``(slowdown - 1) x elapsed_s`` after a block that took ``elapsed_s``; return the padded duration
        (elapsed plus the sleep actually taken)."""
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        self.compute_s += elapsed_s
        want = (self.slowdown - 1.0) * elapsed_s
        if want <= 0:
            return elapsed_s
        t0 = time.perf_counter()
        time.sleep(want)
        slept = time.perf_counter() - t0
        self.padded_s += slept
        return elapsed_s + slept

    @contextlib.contextmanager
    def compute(self, *, sync: Callable[[], None] | None = None) -> Iterator[None]:
        """Time the block (calling ``sync`` before reading the clock, e.g. ``torch.cuda.synchronize``), then
        pad it."""
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        yield
        if sync is not None:
            sync()
        self.pad(time.perf_counter() - t0)
