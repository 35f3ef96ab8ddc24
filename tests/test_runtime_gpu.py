"""GPU + CPU through hetero-run: the GPT example with the GPU as one pipeline stage and a CPU rank as the other
(a real two-type cluster). Skipped without CUDA.

    python -m pytest -q -m gpu tests/test_runtime_gpu.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_stage_and_cpu_stage(tmp_path):
    name = torch.cuda.get_device_name(0)
    from hetero.cluster.catalog import resolve

    try:
        gpu_type = resolve(name, "device").id
    except Exception:
        gpu_type = "H100-SXM5-80GB"
    cluster = {"nodes": [{"name": "gpu", "devices": {"type": gpu_type, "count": 1}},
                         {"name": "cpu", "devices": {"type": "cpu", "count": 1}}],
               "network": {"bandwidth_gbps": 100, "latency_us": 5}}
    from hetero.cluster.spec import Cluster

    cl = Cluster.from_dict(cluster)
    gid = cl.rank_types()[0]
    plan = {"model": "gpt-tiny", "num_layers": 6, "global_batch": 8, "num_microbatches": 2, "seq_len": 32,
            "dtype": "fp32", "schedule": "1f1b",
            "stages": [{"layers": [0, 5], "device_type": gid, "ranks": [0]},
                       {"layers": [5, 6], "device_type": "cpu", "ranks": [1]}]}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    r = subprocess.run([sys.executable, "-m", "hetero.runtime.launch", "--plan", str(tmp_path / "plan.yaml"),
                        "--cluster", str(tmp_path / "cluster.yaml"), "examples/train_gpt.py", "--steps", "6",
                        "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    losses = [out["losses"][str(s)] for s in range(6)]
    assert losses[-1] < losses[0], losses
