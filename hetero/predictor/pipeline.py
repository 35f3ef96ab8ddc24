"""Pipeline schedule simulation: GPipe, 1F1B and interleaved 1F1B over uneven stages.

Each stage runs its forward (F) and backward (B) blocks in the order its schedule prescribes; a block starts
when the stage is free and its input has arrived (F of micro-batch i on stage s needs F(i) of stage s-1 plus the
p2p transfer; B(i) on stage s needs B(i) of stage s+1 plus the transfer, and F(i) on s). The simulation returns
the makespan, per-stage busy time, the bubble fraction and every block's start/end (for Gantt charts).

Interleaved 1F1B (Narayanan et al. 2021) gives each stage ``v`` model chunks; chunk c of stage s is virtual
stage ``c * p + s``; micro-batches go in groups of p; warm-up is ``2 (p - s - 1) + (v - 1) p`` forward blocks.

    python -c "from hetero.predictor.pipeline import simulate; print(simulate([1, 1], [2, 2], 4).makespan)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

try:  # the C++ twin of ``simulate`` (csrc/pipeline.cpp), built by setup.py
    from hetero import _csrc
except ImportError:  # pragma: no cover - source tree without the build: the Python loop below
    _csrc = None


@dataclass(frozen=True)
class Block:
    """One scheduled block: stage, 'F' or 'B', micro-batch, model chunk, start and end seconds."""

    stage: int
    kind: str
    micro: int
    chunk: int
    start: float
    end: float


@dataclass
class Simulation:
    """Result of one pipeline simulation."""

    makespan: float
    """Time from the first forward to the last backward, seconds."""
    busy: list[float]
    """Compute-busy seconds per stage."""
    finish: list[float]
    """Time each stage finishes its last block."""
    blocks: list[Block] = field(default_factory=list)
    """Every block, for drawing."""

    @property
    def bubble_fraction(self) -> float:
        """1 - mean stage busy / makespan: the share of stage-time spent idle."""
        if self.makespan <= 0:
            return 0.0
        return 1.0 - sum(self.busy) / (len(self.busy) * self.makespan)


def stage_order(schedule: str, p: int, s: int, m: int, v: int = 1) -> list[tuple[str, int, int]]:
    """The (kind, micro-batch, chunk) sequence stage ``s`` of ``p`` runs for ``m`` micro-batches."""
    if schedule == "gpipe":
        return [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]
    if schedule == "1f1b" or (schedule == "interleaved_1f1b" and v == 1):
        warm = min(p - s - 1, m)
        order = [("F", i, 0) for i in range(warm)]
        f, b = warm, 0
        while f < m:
            order.append(("F", f, 0))
            f += 1
            order.append(("B", b, 0))
            b += 1
        order += [("B", i, 0) for i in range(b, m)]
        return order
    if schedule == "interleaved_1f1b":
        total = m * v

        def fwd(k: int) -> tuple[str, int, int]:
            group, r = divmod(k, p * v)
            return ("F", group * p + r % p, r // p)

        def bwd(k: int) -> tuple[str, int, int]:
            group, r = divmod(k, p * v)
            return ("B", group * p + r % p, v - 1 - r // p)

        warm = min(total, 2 * (p - s - 1) + (v - 1) * p) if m > p or m == p else total
        order = [fwd(k) for k in range(warm)]
        f, b = warm, 0
        while f < total:
            order.append(fwd(f))
            f += 1
            order.append(bwd(b))
            b += 1
        order += [bwd(k) for k in range(b, total)]
        return order
    raise ValueError(f"unknown schedule {schedule!r} (gpipe, 1f1b, interleaved_1f1b)")


def simulate(fwd: Sequence[float], bwd: Sequence[float], m: int, *, schedule: str = "1f1b",
             p2p: Sequence[float] | None = None, virtual_stages: int = 1, keep_blocks: bool = False) -> Simulation:
    """Simulate one pipeline step.

    fwd[s], bwd[s]: seconds for one micro-batch through all of stage s's layers (all its chunks together);
    p2p[s]: transfer time from stage s to s+1 (length p-1; activations forward, gradients backward);
    m: micro-batches. Raises ValueError if the schedule deadlocks (it never does for valid inputs)."""
    p = len(fwd)
    comm = list(p2p) if p2p is not None else [0.0] * max(p - 1, 0)
    if not keep_blocks and _csrc is not None and p >= 1:  # the same event loop in C++ (csrc/pipeline.cpp)
        try:
            makespan, busy, finish = _csrc.simulate([float(x) for x in fwd], [float(x) for x in bwd], int(m),
                                                    schedule, [float(x) for x in comm], int(virtual_stages))
        except RuntimeError as e:  # a deadlock (bad input raises ValueError there, as it does below)
            raise ValueError(str(e)) from None
        return Simulation(makespan=makespan, busy=list(busy), finish=list(finish))
    return simulate_py(fwd, bwd, m, schedule=schedule, p2p=comm, virtual_stages=virtual_stages,
                       keep_blocks=keep_blocks)


def simulate_py(fwd: Sequence[float], bwd: Sequence[float], m: int, *, schedule: str = "1f1b",
                p2p: Sequence[float] | None = None, virtual_stages: int = 1, keep_blocks: bool = False) -> Simulation:
    """The reference event loop of ``simulate`` in Python (also the path that records every block)."""
    p = len(fwd)
    v = virtual_stages if schedule == "interleaved_1f1b" else 1
    if p != len(bwd):
        raise ValueError("fwd and bwd need one entry per stage")
    if m < 1:
        raise ValueError("need at least one micro-batch")
    comm = list(p2p) if p2p is not None else [0.0] * max(p - 1, 0)
    orders = [stage_order(schedule, p, s, m, v) for s in range(p)]
    nv = p * v  # virtual stages
    done_f: dict[tuple[int, int], float] = {}  # (virtual stage, micro) -> end time
    done_b: dict[tuple[int, int], float] = {}
    free = [0.0] * p
    busy = [0.0] * p
    ptr = [0] * p
    blocks: list[Block] = []

    wrap = sum(comm) / len(comm) if comm else 0.0  # last stage's chunk c -> first stage's chunk c+1

    def link(vs: int) -> float:  # transfer time after virtual stage vs
        return comm[vs % p] if vs % p < p - 1 else wrap

    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            while ptr[s] < len(orders[s]):
                kind, i, c = orders[s][ptr[s]]
                vs = c * p + s
                if kind == "F":
                    if vs == 0:
                        ready = 0.0
                    elif (vs - 1, i) in done_f:
                        ready = done_f[(vs - 1, i)] + link(vs - 1)
                    else:
                        break
                    dur = fwd[s] / v
                else:
                    if (vs, i) not in done_f:
                        break
                    if vs == nv - 1:
                        ready = done_f[(vs, i)]
                    elif (vs + 1, i) in done_b:
                        ready = done_b[(vs + 1, i)] + link(vs)
                    else:
                        break
                    dur = bwd[s] / v
                start = max(free[s], ready)
                end = start + dur
                (done_f if kind == "F" else done_b)[(vs, i)] = end
                free[s] = end
                busy[s] += dur
                if keep_blocks:
                    blocks.append(Block(s, kind, i, c, start, end))
                ptr[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"schedule {schedule!r} deadlocked (p={p}, m={m}, v={v})")
    return Simulation(makespan=max(free), busy=busy, finish=list(free), blocks=blocks)
