"""The self-imitation buffer (hetero/rl/selfimitation.py): python -m pytest -q tests/test_rl_selfimitation.py"""

import numpy as np
import pytest
import torch

from hetero.rl.selfimitation import Distractor, HindsightGoal, SuccessBuffer, redraw_distractors


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


REACH = HindsightGoal(goal=(4, 6), achieved=(0, 2), offset=(0.0, -1.0), radius=0.5)  # toy 6-dim state, 2-D goal


def _hand(t: int, i: int, goal=(9.0, 9.0)) -> list[float]:
    """Env ``i`` at chunk step ``t``: hand moves +1 in x per step from (i, 1); entries 2:4 are filler."""
    return [float(i + t), 1.0, 7.0, 7.0, *goal]


def test_relabel_sets_the_goal_to_where_it_ended_and_cuts_at_the_first_arrival():
    ep = {"state": torch.tensor([_hand(t, 0) for t in range(4)]), "actions": torch.arange(4.0).reshape(4, 1, 1),
          "instruction": "reach"}
    final = torch.tensor([2.2, 1.0, 7.0, 7.0, 9.0, 9.0])  # it went to x=3.0, then back to 2.2: ended at (2.2, 0)
    out = REACH.relabel(ep, final)
    # chunk ends: rows 1, 2, 3, final -> achieved x 1, 2, 3, 2.2 (y 0); within 0.5 of (2.2, 0) first at row 1's end
    assert out["state"].shape[0] == 2 and out["actions"][:, 0, 0].tolist() == [0.0, 1.0]
    assert torch.allclose(out["state"][:, 4:6], torch.tensor([[2.2, 0.0], [2.2, 0.0]]))
    assert out["state"][:, :4].tolist() == ep["state"][:2, :4].tolist() and out["instruction"] == "reach"
    assert ep["state"][0, 4].item() == 9.0  # the input episode is not modified


def test_hindsight_keeps_failed_episodes_of_its_tasks_only_and_never_crashed_ones():
    buf = SuccessBuffer(num_envs=3, per_task=5, hindsight={"reach": REACH})
    instr = ["reach", "push", "reach"]
    for t in range(3):  # all three envs end at step 2 without success; env 2's worker crashed
        obs = {"state": torch.tensor([_hand(t, i) for i in range(3)]), "instruction": instr}
        act = torch.full((3, 1, 1), float(t))
        end = t == 2
        final = torch.tensor([_hand(3, i) for i in range(3)]) if end else None
        kept = buf.add(obs, act, done=np.full(3, end), success=np.zeros(3, bool),
                       discarded=np.array([False, False, end]), final_state=final)
    assert kept == 1 and buf.relabelled == 1 and buf.counts() == {"reach": 1}
    data = buf.dataset()
    assert data["state"][:, 4:6].tolist() == [[3.0, 0.0]] * 3  # env 0 ended at hand (3, 1) -> goal (3, 0)
    again = SuccessBuffer(num_envs=3, per_task=5, hindsight={"reach": REACH})
    again.load_state_dict(buf.state_dict())
    assert again.relabelled == 1 and torch.equal(again.dataset()["state"], data["state"])
    with pytest.raises(ValueError, match="needs final_state"):
        buf.add({"state": torch.zeros(3, 6), "instruction": instr}, torch.zeros(3, 1, 1), done=np.ones(3, bool),
                success=np.zeros(3, bool), discarded=np.zeros(3, bool))


def test_hindsight_config_names_what_it_cannot_relabel():
    from hetero.config import ConfigError
    from hetero.rl.config import load_config

    base = "examples/rl/metaworld_mt10_flow_sde.yaml"
    assert load_config(base, ["algo.sil_coef=0.3", "algo.sil_hindsight=[reach-v3]"]).algo.sil_hindsight == ["reach-v3"]
    with pytest.raises(ConfigError, match=r"^algo\.sil_hindsight: needs sil_coef > 0"):
        load_config(base, ["algo.sil_hindsight=[reach-v3]"])
    with pytest.raises(ConfigError, match=r"no hindsight relabelling for 'push-v3'; known: \['reach-v3'\]"):
        load_config(base, ["algo.sil_coef=0.3", "algo.sil_hindsight=[push-v3]"])
    with pytest.raises(ConfigError, match="'reach-v3' is not one of the env's tasks"):
        load_config(base, ["algo.sil_coef=0.3", "algo.sil_hindsight=[reach-v3]", "env.tasks=[push-v3]"])
    with pytest.raises(ConfigError, match="camera images would still show the old goal"):
        load_config(base, ["algo.sil_coef=0.3", "algo.sil_hindsight=[reach-v3]", "env.num_cameras=1"])


def test_meta_world_reach_relabelling_matches_the_env_success_test():
    """The relabelled goal is where the env's success test (fingertip centre within 0.05 m) puts the hand: set it
    as the env's target and the env reports success at the episode's last state."""
    metaworld = pytest.importorskip("metaworld", reason="metaworld not installed: pip install -e .[rl]")
    from hetero.rl.envs.metaworld import HINDSIGHT_GOALS

    hs = HINDSIGHT_GOALS["reach-v3"]
    mt = metaworld.MT1("reach-v3", seed=0)
    env = mt.train_classes["reach-v3"]()
    env.set_task(mt.train_tasks[0])
    state, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        state, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    s = torch.as_tensor(state, dtype=torch.float32)
    goal = hs.reached(s)
    assert torch.allclose(torch.as_tensor(state[36:39], dtype=torch.float32), torch.as_tensor(env._target_pos, dtype=torch.float32))
    assert (goal - torch.as_tensor(env.tcp_center, dtype=torch.float32)).norm() < 2e-3
    env._target_pos = goal.double().numpy()
    assert env.evaluate_state(state, np.zeros(4))[1]["success"] == 1.0
    env._target_pos = (goal + torch.tensor([0.0, 0.0, 0.06])).double().numpy()  # beyond the radius: no success
    assert env.evaluate_state(state, np.zeros(4))[1]["success"] == 0.0


def test_distractors_are_redrawn_in_their_tasks_rows_only_and_in_every_copy():
    d = Distractor(entries=((1, 3), (4, 6)), low=(-0.1, 0.6), high=(0.1, 0.7))
    state = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obs = {"state": state.clone(), "instruction": ["reach", "push", "reach", "push"]}
    out = redraw_distractors(obs, {"reach": d}, torch.Generator().manual_seed(0))
    assert torch.equal(obs["state"], state)  # the caller's rows are not touched
    assert torch.equal(out["state"][[1, 3]], state[[1, 3]]) and out["instruction"] == obs["instruction"]
    new = out["state"][[0, 2]]
    assert torch.equal(new[:, [0, 3]], state[[0, 2]][:, [0, 3]])  # entries outside the distractor's stay
    assert torch.equal(new[:, 1:3], new[:, 4:6])  # one position, in both copies
    assert ((new[:, 1] >= -0.1) & (new[:, 1] <= 0.1) & (new[:, 2] >= 0.6) & (new[:, 2] <= 0.7)).all()
    assert not torch.equal(new[0, 1:3], new[1, 1:3])  # each row draws its own
    again = redraw_distractors(obs, {"reach": d}, torch.Generator().manual_seed(0))
    assert torch.equal(again["state"], out["state"])  # the generator decides the draws


def test_distractor_config_names_what_it_cannot_redraw():
    from hetero.config import ConfigError
    from hetero.rl.config import load_config

    base = "examples/rl/metaworld_mt10_flow_sde.yaml"  # bc_coef 0.3
    assert load_config(base, ["algo.anchor_distractors=[reach-v3]"]).algo.anchor_distractors == ["reach-v3"]
    with pytest.raises(ConfigError, match=r"^algo\.anchor_distractors: needs bc_coef > 0 or sil_coef > 0"):
        load_config(base, ["algo.anchor_distractors=[reach-v3]", "algo.bc_coef=0"])
    with pytest.raises(ConfigError, match=r"no distractor for 'push-v3'; known: \['reach-v3'\]"):
        load_config(base, ["algo.anchor_distractors=[push-v3]"])
    with pytest.raises(ConfigError, match="'reach-v3' is not one of the env's tasks"):
        load_config(base, ["algo.anchor_distractors=[reach-v3]", "env.tasks=[push-v3]"])
    with pytest.raises(ConfigError, match="camera images would still show it"):
        load_config(base, ["algo.anchor_distractors=[reach-v3]", "env.num_cameras=1"])


def test_meta_world_reach_puck_is_a_distractor():
    """The table matches the env: the puck sits at both copies of the entries, is drawn from the table's box, and
    the scripted expert's action does not depend on it."""
    metaworld = pytest.importorskip("metaworld", reason="metaworld not installed: pip install -e .[rl]")
    from metaworld.policies import SawyerReachV3Policy

    from hetero.rl.envs.metaworld import DISTRACTORS

    d = DISTRACTORS["reach-v3"]
    mt = metaworld.MT1("reach-v3", seed=0)
    env = mt.train_classes["reach-v3"]()
    assert np.allclose(env._random_reset_space.low[:3], d.low) and np.allclose(env._random_reset_space.high[:3], d.high)
    expert = SawyerReachV3Policy()
    for task in mt.train_tasks[:5]:
        env.set_task(task)
        state, _ = env.reset(seed=0)
        pos = [state[a:b] for a, b in d.entries]
        assert all(np.allclose(p, pos[0]) for p in pos)
        assert np.all(pos[0] >= np.array(d.low) - 1e-9) and np.all(pos[0] <= np.array(d.high) + 1e-9)
        moved = state.copy()
        for a, b in d.entries:
            moved[a:b] = np.array(d.high) - (pos[0] - np.array(d.low))  # the puck mirrored in its box
        assert not np.allclose(moved, state)
        assert np.array_equal(expert.get_action(moved), expert.get_action(state))
