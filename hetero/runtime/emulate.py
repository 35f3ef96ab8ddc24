"""Emulate a slower device on CPU by padding compute with sleep. FOR TESTS AND BENCHMARKS ONLY.

A rank declared as a device ``k`` times slower than the machine it runs on times each compute block and then
sleeps until the block has lasted ``k x`` the fastest time this rank has run that kind of block (its uncontended
time on this CPU), so the core stays free during the sleep (the rank's CPU duty cycle is ``1 / k``). Sizing the
padding from the fastest run, not from this run, is what a dedicated device does: it shares no cores, so its time
per block does not grow when other emulated ranks on this machine compute at the same moment (sizing from the
contended time would multiply the contention by ``k``). A block slowed by more than its padding is late, as it
would be for real. This lets a 2-core machine run a "heterogeneous" cluster honestly: the
timings are real, only the speed difference is emulated. Nothing in the production path uses this class; a real
heterogeneous cluster needs no emulation.

    HETERO_SLOWDOWN=2 python my_worker.py        # Emulator.from_env() then pads every `with emu.compute():`
    hetero-run --emulate ...                     # also pins ranks to cores (HETERO_EMULATE_CPUS, pack_cores)

    emu = Emulator.from_cluster(cluster, rank)   # slowdown = peak fp32 of the fastest type / the rank's type's
    with emu.compute():
        loss = model(x).sum(); loss.backward()
    with emu.compute(kind=f"sample{n}"):         # kinds: blocks of one kind do the same work (key by shape)
        actions = policy(obs)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from hetero.config import ConfigError

ENV_VAR = "HETERO_SLOWDOWN"
PHASE_VAR = "HETERO_EMULATE_PHASE"


class Emulator:
    """Pads compute blocks to emulate a device ``slowdown`` times slower (tests/benchmarks only).

    A block of ``kind`` lasts ``max(elapsed, slowdown x best)``, ``best`` being the fastest ``kind`` block so far;
    blocks of one ``kind`` must do the same work (callers key the kind by shape where it varies).
    ``phase`` (0..1) is the share of each block's padding slept *before* the block (sized from ``best``; the rest,
    after it, makes the total exact). Ranks that run in lockstep (DP replicas) with
    different phases put their compute at different moments of the padded window, so on a machine with fewer
    cores than ranks they do not all compute at once, as real devices, which share no cores, never do."""

    def __init__(self, *, slowdown: float, phase: float = 0.0):
        if not (isinstance(slowdown, (int, float)) and slowdown >= 1.0):
            raise ConfigError("slowdown", f"must be a number >= 1, got {slowdown!r}")
        if not (isinstance(phase, (int, float)) and 0.0 <= phase <= 1.0):
            raise ConfigError("phase", f"must be a number in [0, 1], got {phase!r}")
        self.slowdown = float(slowdown)
        self.phase = float(phase)
        self._best: dict[str, float] = {}
        self._pre: dict[str, float] = {}
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
        """Slowdown from ``HETERO_SLOWDOWN`` (1 when unset or empty), phase from ``HETERO_EMULATE_PHASE`` (0)."""
        raw = os.environ.get(ENV_VAR, "").strip()
        raw_phase = os.environ.get(PHASE_VAR, "").strip() or "0"
        try:
            phase = float(raw_phase)
        except ValueError:
            raise ConfigError(PHASE_VAR, f"must be a number in [0, 1], got {raw_phase!r}") from None
        if not raw:
            return cls(slowdown=1.0, phase=phase)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(ENV_VAR, f"must be a number >= 1, got {raw!r}") from None
        return cls(slowdown=value, phase=phase)

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

    @staticmethod
    def alternating_phase(slowdowns: Sequence[float], rank: int) -> float:
        """0 or 1: the emulated ranks (``slowdowns[r] > 1``, in rank order) alternate computing first and last in
        their padded windows, so lockstep ranks overlap as little as their duty cycles allow."""
        slow = [r for r, k in enumerate(slowdowns[: rank + 1]) if k > 1.0]
        return 1.0 if slow and slow[-1] == rank and len(slow) % 2 == 0 else 0.0

    @staticmethod
    def pack_cores(slowdowns: Sequence[float], cpus: Sequence[int]) -> list[tuple[list[int], float]] | None:
        """A core and a phase for each rank, so that no core carries more than one core's worth of duty cycles
        (``1 / slowdown``): worst-fit decreasing (the least-loaded core that fits), and the ranks sharing a core
        spread their phases evenly over [0, 1] (the slowest at 0) so that their compute tiles the padded window.
        A real device shares no cores; pinned this way an emulated fast rank keeps a core to itself while slower
        ranks share another.
        None when the duty cycles do not fit in ``cpus`` (then nothing should be pinned)."""
        cpus = list(cpus)
        load = [0.0] * len(cpus)
        on: list[list[int]] = [[] for _ in cpus]
        for r in sorted(range(len(slowdowns)), key=lambda r: slowdowns[r]):  # largest duty cycle first
            duty = 1.0 / max(float(slowdowns[r]), 1.0)
            fits = [i for i, used in enumerate(load) if used + duty <= 1.0 + 1e-9]
            if not fits:
                return None
            c = min(fits, key=lambda i: load[i])
            load[c] += duty
            on[c].append(r)
        out: list[tuple[list[int], float]] = [([], 0.0)] * len(slowdowns)
        for c, ranks in enumerate(on):
            # the slowest rank of a core computes first in its window (phase 0): all of its padding follows its
            # block, so a block stretched by the other ranks of the core is absorbed; a later phase leaves less
            # slack, and the slowest rank of a data-parallel step is the one that must not be late
            for j, r in enumerate(sorted(ranks, key=lambda r: (-slowdowns[r], r))):
                out[r] = ([cpus[c]], j / (len(ranks) - 1) if len(ranks) > 1 else 0.0)
        return out

    def before(self, kind: str = "block") -> float:
        """Sleep ``phase`` of the padding a ``kind`` block needs (from the fastest one so far), before it; return it."""
        want = self.phase * (self.slowdown - 1.0) * self._best.get(kind, 0.0)
        slept = self._sleep(want)
        self._pre[kind] = slept
        return slept

    def pad(self, elapsed_s: float, kind: str = "block") -> float:
        """After a block that took ``elapsed_s``: sleep until it has lasted ``slowdown x`` the fastest ``kind`` block
        so far (this one included), counting what ``before`` slept; return the padded duration (elapsed plus all
        sleep for it)."""
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        self.compute_s += elapsed_s
        best = self._best[kind] = min(elapsed_s, self._best.get(kind, elapsed_s))
        pre = self._pre.pop(kind, 0.0)
        slept = self._sleep(self.slowdown * best - elapsed_s - pre) if self.enabled else 0.0
        return elapsed_s + pre + slept

    def pad_cpu(self, elapsed_s: float, cpu_s: float) -> float:
        """After a block that took ``elapsed_s`` of wall time and ``cpu_s`` of its thread's CPU time: sleep until it
        has lasted ``slowdown x cpu_s``; return the padded duration. For blocks whose work varies from call to call
        (a simulator step), where no run of the same work exists to pad from: CPU time is roughly what the block
        would take alone on a free core (contention stretches wall time, not CPU time)."""
        if elapsed_s < 0 or cpu_s < 0:
            raise ValueError(f"elapsed_s and cpu_s must be >= 0, got {elapsed_s}, {cpu_s}")
        self.compute_s += elapsed_s
        slept = self._sleep(self.slowdown * cpu_s - elapsed_s) if self.enabled else 0.0
        return elapsed_s + slept

    def _sleep(self, want: float) -> float:
        if want <= 0:
            return 0.0
        t0 = time.perf_counter()
        time.sleep(want)
        slept = time.perf_counter() - t0
        self.padded_s += slept
        return slept

    @contextlib.contextmanager
    def compute(self, *, kind: str = "block", sync: Callable[[], None] | None = None) -> Iterator[None]:
        """Time the block (calling ``sync`` before reading the clock, e.g. ``torch.cuda.synchronize``), then
        pad it as a ``kind`` block (blocks of one kind must do the same work); a no-op at slowdown 1."""
        if not self.enabled:
            yield
            return
        self.before(kind)
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        yield
        if sync is not None:
            sync()
        self.pad(time.perf_counter() - t0, kind)
