"""The self-imitation buffer (hetero/rl/selfimitation.py): python -m pytest -q tests/test_rl_selfimitation.py"""

import numpy as np
import pytest
import torch

from hetero.rl.selfimitation import SuccessBuffer


def _step(t: int, instr: list[str]) -> tuple[dict, torch.Tensor]:
    """Chunk step ``t`` of 3 envs: state and actions carry (t, env) so rows can be traced back."""
    n = len(instr)
    state = torch.tensor([[float(t), float(i)] for i in range(n)])
    actions = torch.stack([torch.full((2, 1), 10.0 * t + i) for i in range(n)])  # [N, H=2, A=1]
    return {"state": state, "instruction": list(instr)}, actions


def test_only_successful_finished_episodes_are_kept_with_their_rows_in_order():
    buf = SuccessBuffer(num_envs=3, per_task=5)
    instr = ["open the drawer", "open the drawer", "press the button"]
    f, t_ = np.False_, np.True_
    # env 0: succeeds at step 1 (rows t=0,1); env 1: times out at 1, then succeeds at 2 (row t=2 only);
    # env 2: its worker crashes at step 2 (done and discarded, though success was reported)
    flags = [([f, f, f], [f, f, f], [f, f, f]),
             ([t_, t_, f], [t_, f, f], [f, f, f]),
             ([f, t_, t_], [f, t_, t_], [f, f, t_])]
    kept = []
    for t, (done, success, discarded) in enumerate(flags):
        obs, act = _step(t, instr)
        kept.append(buf.add(obs, act, done=np.array(done), success=np.array(success), discarded=np.array(discarded)))
    assert kept == [0, 1, 1]
    assert buf.counts() == {"open the drawer": 2}
    data = buf.dataset()
    assert data["state"].tolist() == [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]]
    assert data["actions"].shape == (3, 2, 1) and data["actions"][:, 0, 0].tolist() == [0.0, 10.0, 21.0]
    assert data["instruction"] == ["open the drawer"] * 3
    assert [len(p) for p in buf.pending] == [1, 0, 0]  # env 0 runs a new episode since step 2


def test_each_task_keeps_its_newest_episodes_and_a_checkpoint_round_trips():
    buf = SuccessBuffer(num_envs=2, per_task=2)
    instr = ["reach the goal", "push the puck"]
    for t in range(5):  # every step ends a successful one-chunk episode in both envs
        obs, act = _step(t, instr)
        buf.add(obs, act, done=np.ones(2, bool), success=np.ones(2, bool), discarded=np.zeros(2, bool))
    assert buf.counts() == {"reach the goal": 2, "push the puck": 2}
    data = buf.dataset()
    assert sorted(data["state"][:, 0].tolist()) == [3.0, 3.0, 4.0, 4.0]  # the newest two of each task
    again = SuccessBuffer(num_envs=2, per_task=2)
    again.load_state_dict(torch.load(_saved(buf.state_dict()), weights_only=False))
    assert torch.equal(again.dataset()["state"], data["state"]) and again.dataset()["instruction"] == data["instruction"]
    smaller = SuccessBuffer(num_envs=2, per_task=1)
    smaller.load_state_dict(buf.state_dict())
    assert sorted(smaller.dataset()["state"][:, 0].tolist()) == [4.0, 4.0]


def _saved(sd: dict):
    import io

    f = io.BytesIO()
    torch.save(sd, f)
    f.seek(0)
    return f


def test_empty_buffer_reset_and_bad_input():
    buf = SuccessBuffer(num_envs=2, per_task=3)
    assert buf.dataset() is None
    obs, act = _step(0, ["a", "b"])
    buf.add(obs, act, done=np.zeros(2, bool), success=np.zeros(2, bool), discarded=np.zeros(2, bool))
    buf.drop_running()  # the envs were reset: the running episodes never finish
    obs, act = _step(1, ["a", "b"])
    buf.add(obs, act, done=np.ones(2, bool), success=np.ones(2, bool), discarded=np.zeros(2, bool))
    assert buf.dataset()["state"][:, 0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="expected 2 envs"):
        buf.add(*_step(2, ["a", "b", "c"]), done=np.ones(3, bool), success=np.ones(3, bool),
                discarded=np.zeros(3, bool))
    with pytest.raises(ValueError, match="per_task must be >= 1"):
        SuccessBuffer(num_envs=2, per_task=0)
