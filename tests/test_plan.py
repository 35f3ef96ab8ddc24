"""Plan schema: validation errors naming the stage, YAML/JSON round trip, rank mapping."""

import pytest

from hetero.autoparallel.plan import Plan, Prediction, Stage
from hetero.config import ConfigError


def two_stage(**kw):
    return Plan(model="gpt2-small", num_layers=14, global_batch=12, num_microbatches=2, seq_len=1024,
                stages=[Stage(layers=(0, 9), device_type="a", ranks=[0, 1], dp=2, batch_shares=[8, 4]),
                        Stage(layers=(9, 14), device_type="b", ranks=[2, 3], dp=2, batch_shares=[8, 4])], **kw)


def test_rank_map_and_microbatches():
    p = two_stage()
    assert p.pp == 2 and p.dp == 2 and p.world_size == 4
    assert p.rank_map() == {0: (0, 0, 0), 1: (0, 1, 0), 2: (1, 0, 0), 3: (1, 1, 0)}
    assert [p.micro_batch_size(d) for d in range(2)] == [4, 2]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_roundtrip(tmp_path, suffix):
    p = two_stage(predicted=Prediction(step_time_s=1.5, rank_memory_bytes={0: 10, 3: 20}, stage_busy_s=[1.0, 0.5]))
    f = tmp_path / f"plan{suffix}"
    p.to_file(f)
    q = Plan.from_file(f)
    assert q == p


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["stages"][1].update(layers=[10, 14]), "stages[1].layers: starts at layer 10"),
    (lambda d: d["stages"][1].update(layers=[9, 13]), "stages[1].layers: ends at layer 13 but the model has 14"),
    (lambda d: d["stages"][1].update(ranks=[1, 3]), "stages[1].ranks: rank 1 is already used by stages[0]"),
    (lambda d: d["stages"][0].update(ranks=[0]), "stages[0].ranks: has 1 ranks but tp*dp"),
    (lambda d: d["stages"][0].update(batch_shares=[6, 4]), "stages[0].batch_shares: sum to 10"),
    (lambda d: d["stages"][0].update(batch_shares=[9, 3]), "stages[0].batch_shares[0]: share 9 is not divisible"),
    (lambda d: d["stages"][0].update(tp_shares=[0.5, 0.6]), "stages[0].tp_shares"),
    (lambda d: d.update(schedule="zigzag"), "schedule: must be one of"),
    (lambda d: d.update(colour=1), "colour: unknown key"),
    (lambda d: d.update(version=9), "version: unsupported plan version 9"),
])
def test_validation_errors(mutate, message):
    d = two_stage().to_dict()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        Plan.from_dict(d)
    assert message in str(e.value)


def test_validate_against_world_and_types():
    p = two_stage()
    p.validate(world_size=4, num_layers=14, rank_types=["a", "a", "b", "b"])
    with pytest.raises(ConfigError, match="covers ranks 0-3 but the world has 6 ranks"):
        p.validate(world_size=6)
    with pytest.raises(ConfigError, match="made for a model with 14 layers, this model has 26"):
        p.validate(num_layers=26)
    with pytest.raises(ConfigError, match=r"stages\[1\].device_type: is 'b' but rank 2 is a 'a'"):
        p.validate(rank_types=["a", "a", "a", "b"])


def test_malformed_json(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="malformed JSON"):
        Plan.from_file(f)


def test_replica_types_are_validated_and_round_trip(tmp_path):
    from hetero.autoparallel.plan import Plan, Stage

    st = Stage(layers=(0, 4), device_type="a", ranks=[0, 1, 2], dp=3, batch_shares=[4, 2, 2],
               replica_types=["a", "b", "b"])
    assert st.type_of(1) == "b" and st.types == ["a", "b"]
    plan = Plan(model="m", num_layers=4, global_batch=8, stages=[st])
    plan.validate(world_size=3, num_layers=4, rank_types=["a", "b", "b"])
    with pytest.raises(ConfigError, match=r"replica_types.*rank 2 is a 'a'"):
        plan.validate(rank_types=["a", "b", "a"])
    path = tmp_path / "p.yaml"
    plan.to_file(path)
    assert Plan.from_file(path).stages[0].replica_types == ["a", "b", "b"]
    with pytest.raises(ConfigError, match="replica_types: has 2 entries but dp = 3"):
        Stage(layers=(0, 4), device_type="a", ranks=[0, 1, 2], dp=3, replica_types=["a", "b"])
    with pytest.raises(ConfigError, match="replica 0 is 'b'"):
        Stage(layers=(0, 4), device_type="a", ranks=[0, 1], dp=2, replica_types=["b", "a"])
