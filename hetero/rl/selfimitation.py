"""Self-imitation: the chunks of recent successful rollout episodes, per task, for a flow-matching anchor.

The behaviour-cloning anchor (``algo.bc_coef``) holds the policy on the few-shot demonstrations, so it cannot hold
what RL learned beyond them (Meta-World drawer-open with the drawer on the left, which no demo shows: docs/results.md,
RL, nineteenth session). With ``algo.sil_coef > 0`` the trainer also keeps, for each task, the (observation,
executed action chunk) rows of its last ``algo.sil_episodes`` successful rollout episodes, and adds ``sil_coef`` x
the flow-matching loss on ``algo.bc_batch_size`` of them to every minibatch: self-imitation learning (Oh et al.,
2018) in its filtered-behaviour-cloning form. Episodes of a crashed env worker never enter.

Hindsight (``algo.sil_hindsight``, tasks whose goal is a position in the state): a failed episode of such a task
is kept too, relabelled as a success for the goal it did reach: the goal entries of its states are replaced by
where the end effector ended (:class:`HindsightGoal`), and the episode is cut after the first chunk that ends
within the success radius of that goal, as the env would have ended it there. This is goal-conditioned
supervised learning (hindsight relabelling, Andrychowicz et al., 2017; Ghosh et al., 2019): it teaches the goal
conditioning a task's few demonstrations do not, from every episode rather than the rare successes.

Distractors (``algo.anchor_distractors``, tasks with an object their expert ignores, as Meta-World reach-v3's
puck): in the rows of both anchors (the demos' and the self-imitation rows) that object's state entries are
redrawn from the range the env draws it from (:class:`Distractor`), so the policy learns that task's actions do
not depend on it. Few demos cannot teach that (reach's 3 demos have 3 puck positions, and in most Meta-World tasks
the hand does go to the object), and a relabelled episode's goal is where the hand went, so it carries whatever
the policy followed, the puck included.

Tests: ``python -m pytest -q tests/test_rl_selfimitation.py``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class HindsightGoal:
    """Where a task's goal and its achieved counterpart sit in the state vector, for hindsight relabelling."""

    goal: tuple[int, int]
    """State entries [start, stop) holding the goal position."""
    achieved: tuple[int, int]
    """State entries [start, stop) from which the achieved position is read."""
    offset: tuple[float, ...]
    """Added to the achieved entries to give the position success is judged on (e.g. hand -> fingertip centre)."""
    radius: float
    """Success when the achieved position is within this distance of the goal."""

    def reached(self, state: torch.Tensor) -> torch.Tensor:
        """Achieved position ``[..., G]`` of states ``[..., S]``."""
        a0, a1 = self.achieved
        return state[..., a0:a1] + torch.tensor(self.offset, dtype=state.dtype)

    def relabel(self, ep: dict, final_state: torch.Tensor) -> dict:
        """A failed episode (stacked rows: state ``[L, S]``, actions ``[L, H, A]``, ...) and the state it ended in
        ``[S]`` -> the episode as a success for the goal it reached: goal entries set to the final achieved
        position, cut after the first chunk whose end state is within ``radius`` of it."""
        goal = self.reached(final_state)
        ends = torch.cat([ep["state"][1:], final_state[None]])  # the state after each row's chunk  [L, S]
        near = (self.reached(ends) - goal).norm(dim=-1) <= self.radius
        length = int(near.nonzero()[0, 0]) + 1  # the last row is always near: it ends where the goal is
        out = {k: (v[:length] if k != "instruction" else v) for k, v in ep.items()}
        out["state"] = out["state"].clone()
        out["state"][:, self.goal[0]:self.goal[1]] = goal
        return out


@dataclass(frozen=True, kw_only=True)
class Distractor:
    """An object in the state that a task's expert ignores, and the box the env draws its position from."""

    entries: tuple[tuple[int, int], ...]
    """State entries [start, stop) holding its position, one pair per copy (e.g. this and the previous frame)."""
    low: tuple[float, ...]
    """Lower corner of the box its position is drawn from (one value per entry of a copy)."""
    high: tuple[float, ...]
    """Upper corner of that box."""

    def redraw(self, state: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> None:
        """Set the entries of ``state [B, S]``'s ``rows`` (bool ``[B]``) to positions drawn uniformly from the box
        (the same position in every copy), in place; draws from ``gen`` (a CPU generator)."""
        n = int(rows.sum())
        lo, hi = torch.tensor(self.low), torch.tensor(self.high)
        pos = (lo + (hi - lo) * torch.rand(n, len(self.low), generator=gen)).to(state.device, state.dtype)
        for a, b in self.entries:
            state[rows, a:b] = pos


def redraw_distractors(obs: dict, distractors: dict[str, Distractor], gen: torch.Generator) -> dict:
    """``obs`` (state ``[B, S]``, instruction list) with the distractor entries of each row whose instruction is in
    ``distractors`` redrawn (:meth:`Distractor.redraw`); the state is copied, ``obs`` is left as it was."""
    state = obs["state"].clone()
    for instr, d in distractors.items():
        rows = torch.tensor([i == instr for i in obs["instruction"]], device=state.device)
        if rows.any():
            d.redraw(state, rows, gen)
    return {**obs, "state": state}


class SuccessBuffer:
    """Rows of the last ``per_task`` successful episodes of each task (tasks told apart by instruction).

    Call :meth:`add` once per chunk step of the rollout, in order, with the observation the chunk was sampled
    from and the chunk the envs executed; rows of an episode wait per env until it ends and are kept only if it
    ended in success, or, for a task in ``hindsight``, relabelled when it failed. :meth:`dataset` gives the kept
    rows in :func:`hetero.rl.sft.make_dataset`'s format."""

    def __init__(self, *, num_envs: int, per_task: int, hindsight: dict[str, HindsightGoal] | None = None):
        if per_task < 1:
            raise ValueError(f"per_task must be >= 1, got {per_task}")
        self.per_task = per_task
        self.hindsight = dict(hindsight or {})  # instruction -> relabelling of its failed episodes
        self.relabelled = 0  # failed episodes kept as hindsight successes, over the run
        self.pending: list[list[dict]] = [[] for _ in range(num_envs)]  # rows of each env's running episode
        self.episodes: dict[str, deque[dict]] = {}  # instruction -> its last kept episodes (stacked rows)

    def add(self, obs: dict, actions: torch.Tensor, *, done, success, discarded, final_state=None) -> int:
        """One chunk step: ``obs`` (state ``[N, S]``, instruction list, images ``[N, C, 3, h, w]`` where given) as
        sampled from, ``actions [N, H, A]`` as executed, and the step's ``done``, ``success`` and ``discarded``
        ``[N]`` and ``final_state`` ``[N, S]`` (the state finished episodes ended in; needed with hindsight)
        (:class:`hetero.rl.envs.base.ChunkResult`). Returns the number of episodes it kept (relabelled ones
        included)."""
        n = len(self.pending)
        if actions.shape[0] != n or obs["state"].shape[0] != n:
            raise ValueError(f"expected {n} envs, got actions {tuple(actions.shape)}, state {tuple(obs['state'].shape)}")
        kept = 0
        for i in range(n):
            row = {"state": obs["state"][i].cpu(), "actions": actions[i].cpu(), "instruction": obs["instruction"][i]}
            if "images" in obs:
                row["images"] = obs["images"][i].cpu()
            self.pending[i].append(row)
            if bool(done[i]):
                ep, hs = None, self.hindsight.get(row["instruction"])
                if bool(discarded[i]):
                    pass
                elif bool(success[i]):
                    ep = _stack(self.pending[i])
                elif hs is not None:
                    if final_state is None:
                        raise ValueError("hindsight relabelling needs final_state (ChunkResult.final_obs['state'])")
                    ep = hs.relabel(_stack(self.pending[i]), torch.as_tensor(final_state[i]).float().cpu())
                    self.relabelled += 1
                if ep is not None:
                    self.episodes.setdefault(ep["instruction"], deque(maxlen=self.per_task)).append(ep)
                    kept += 1
                self.pending[i] = []
        return kept

    def drop_running(self) -> None:
        """Forget the episodes still running (call when the envs are reset)."""
        self.pending = [[] for _ in self.pending]

    def dataset(self) -> dict | None:
        """The kept rows: state ``[M, S]``, actions ``[M, H, A]``, instruction [M], images where given; None when
        no episode has succeeded yet."""
        eps = [ep for task in self.episodes.values() for ep in task]
        if not eps:
            return None
        out = {k: torch.cat([ep[k] for ep in eps]) for k in eps[0] if k != "instruction"}
        out["instruction"] = [ep["instruction"] for ep in eps for _ in range(ep["state"].shape[0])]
        return out

    def counts(self) -> dict[str, int]:
        """Kept episodes per instruction."""
        return {k: len(v) for k, v in self.episodes.items()}

    def state_dict(self) -> dict:
        """The kept episodes (not the running ones: a resumed run resets its envs), for a checkpoint."""
        return {"per_task": self.per_task, "episodes": {k: list(v) for k, v in self.episodes.items()},
                "relabelled": self.relabelled}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`'s episodes (the newest ``per_task`` of each task where that shrank)."""
        self.episodes = {k: deque(v, maxlen=self.per_task) for k, v in sd["episodes"].items()}
        self.relabelled = sd.get("relabelled", 0)


def _stack(rows: list[dict]) -> dict:
    """One episode's rows -> state ``[L, S]``, actions ``[L, H, A]``, images where given, and its instruction."""
    ep = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "instruction"}
    ep["instruction"] = rows[0]["instruction"]
    return ep
