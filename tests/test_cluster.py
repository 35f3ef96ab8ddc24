"""Cluster model: YAML parsing, catalog aliases, validation errors with key paths, discovery."""

import pytest
import yaml

from hetero.cluster import Cluster, resolve
from hetero.cluster.catalog import catalog
from hetero.cluster.discover import discover
from hetero.config import ConfigError

GOOD = """
name: mix
device_types:
  - {id: slow-cpu, like: cpu, scale: 0.5}
nodes:
  - name: a100
    repeat: 2
    devices: {type: A100, count: 8}
    intra_link: {fabric: nvlink3, bandwidth_gbs: 300}
  - name: mi250-0
    devices: {type: MI250X, count: 4}
  - name: cpu-0
    devices: {type: slow-cpu, count: 2}
network: {bandwidth_gbps: 200, latency_us: 5}
links:
  - {nodes: [a100-0, mi250-0], bandwidth_gbps: 100, latency_us: 10}
"""


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_parse_and_query(tmp_path):
    c = Cluster.from_yaml(write(tmp_path, GOOD))
    assert [n.name for n in c.nodes] == ["a100-0", "a100-1", "mi250-0", "cpu-0"]
    assert c.world_size == 8 + 8 + 4 + 2
    assert c.type_counts() == {"nvidia_a100_sxm4_80gb": 16, "amd_mi250x": 4, "slow-cpu": 2}
    assert c.rank_types()[16] == "amd_mi250x"
    assert c.node("a100-0").intra_link.bandwidth == 300e9
    assert c.link("a100-0", "mi250-0").bandwidth == 100e9 / 8  # Gb/s -> bytes/s
    assert c.link("mi250-0", "a100-0").latency == pytest.approx(10e-6)
    assert c.link("a100-1", "mi250-0").bandwidth == 200e9 / 8
    slow = c.device_types()["slow-cpu"]
    assert slow.peak("fp32") == pytest.approx(catalog()["cpu"].peak("fp32") * 0.5)
    assert c.subset("amd_mi250x").world_size == 4


def test_roundtrip(tmp_path):
    c = Cluster.from_yaml(write(tmp_path, GOOD))
    c2 = Cluster.from_dict(yaml.safe_load(c.to_yaml()))
    assert c2.rank_types() == c.rank_types()
    assert c2.fingerprint() == c.fingerprint()
    assert c2.link("a100-0", "mi250-0") == c.link("a100-0", "mi250-0")


@pytest.mark.parametrize("alias,expect", [
    ("A100", "nvidia_a100_sxm4_80gb"), ("a100-80g", "nvidia_a100_sxm4_80gb"), ("A100-SXM4-40GB", "nvidia_a100_sxm4_40gb"),
    ("H100", "nvidia_h100_sxm5_80gb"), ("MI300X", "amd_mi300x"), ("910B", "huawei_ascend_910b"),
    ("mlu370", "cambricon_mlu370_x8"), ("nvidia_v100_sxm2_32gb", "nvidia_v100_sxm2_32gb"),
])
def test_aliases(alias, expect):
    assert resolve(alias).id == expect


def test_catalog_numbers():
    a100 = resolve("A100")
    assert a100.peak("bf16") == 312e12
    assert a100.memory_bytes == 80 * 2**30
    assert resolve("V100").peak("bf16") == 125e12  # no bf16 on Volta: falls back to fp16 tensor cores
    mi250 = resolve("MI250X")  # one GCD is one torch device
    assert mi250.memory_bytes == 64 * 2**30
    assert len(catalog()) == 33  # 32 accelerators + the cpu prior


def test_unknown_type_lists_close_matches():
    with pytest.raises(ConfigError, match="did you mean.*a100"):
        resolve("A1000")


@pytest.mark.parametrize("text,message", [
    ("nodes:\n  - name: a\n    devices: {type: A100, count: -1}\n", "nodes[0].devices.count: must be > 0"),
    ("nodes:\n  - name: a\n    devices: {type: A100, count: 2, colour: red}\n", "nodes[0].devices.colour: unknown key"),
    ("nodes:\n  - name: a\n    devices: {type: A100, count: two}\n", "nodes[0].devices.count: expected an integer"),
    ("nodes:\n  - name: a\n    devices: {type: Z9000, count: 1}\n", "nodes[0].devices.type: unknown device type"),
    ("nodes:\n  - name: a\n    devices: {type: A100, count: 1}\n  - name: b\n    devices: {type: A100, count: 1}\n",
     "network: missing required key"),
    ("nodes:\n  - name: a\n    devices: {type: A100, count: 1}\nnetwork: {bandwidth_gbps: 1}\n"
     "links:\n  - {nodes: [a, ghost], bandwidth_gbps: 1}\n", "links[0].nodes[1]: names missing node 'ghost'"),
    ("nodes: [\n", "malformed YAML"),
    ("device_types:\n  - {id: x}\nnodes:\n  - name: a\n    devices: {type: x, count: 1}\n",
     "device_types[0].memory_gib: required"),
    ("nodes:\n  - name: a\n    devices: {count: 1}\n", "nodes[0].devices.type: missing required key"),
])
def test_bad_input_names_path(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        Cluster.from_yaml(write(tmp_path, text))
    assert message in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        Cluster.from_yaml("/nonexistent/cluster.yaml")


def test_discover_cpu_validates():
    doc = discover(measure=False)
    c = Cluster.from_dict(doc)
    assert c.world_size >= 1


def test_cli_discover_and_bad_file(tmp_path, capsys):
    from hetero.cli import main

    out = tmp_path / "me.yaml"
    assert main(["discover", "--no-measure", "-o", str(out)]) == 0
    assert Cluster.from_yaml(out).world_size >= 1
    bad = write(tmp_path, "nodes:\n  - name: a\n    devices: {type: A100, count: 0}\n")
    plan = tmp_path / "p.yaml"
    plan.write_text("model: x\nnum_layers: 1\nglobal_batch: 1\nstages: [{layers: [0, 1], device_type: cpu, ranks: [0]}]\n")
    assert main(["predict", "--cluster", str(bad), "--model", "gpt2-small", "--plan", str(plan)]) == 2
    assert "nodes[0].devices.count: must be > 0" in capsys.readouterr().err
