#!/usr/bin/env bash
# The newcomer's demo: set up .venv (torch pinned to the local CPU wheel), describe this machine, plan a small GPT
# on an emulated mixed cluster (two CPU ranks declared as a fast and a half-speed device type), predict the plan,
# then train it for a few steps with hetero-run. Emulation pads the slow rank's compute (demos and tests only).
#
#   bash examples/demo.sh            # from the repository root or anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
out=runs/demo
mkdir -p "$out"

echo "== 1. what do I have? (hetero discover)"
hetero discover -o "$out/this_machine.yaml"

echo "== 2. how fast is it? (hetero profile: GEMMs, bandwidth, layers, gloo on this CPU, one thread)"
hetero profile --device cpu --quick -o "$out/cpu_profile.json"
# the cluster's two types are this CPU at full and at half speed: the profile, scaled, calibrates both
profiles=(--profile "cpu-fast=$out/cpu_profile.json" --profile "cpu-slow=$out/cpu_profile.json")

echo "== 3. how should I split the job? (hetero-plan on an emulated 2-type cluster)"
hetero-plan --cluster examples/clusters/cpu_mix.yaml --model examples/models/gpt_tiny.yaml \
    --global-batch 24 --dtype fp32 "${profiles[@]}" -o "$out/plan.yaml" --gantt "$out/plan.png"
hetero predict --cluster examples/clusters/cpu_mix.yaml --model examples/models/gpt_tiny.yaml \
    --plan "$out/plan.yaml" "${profiles[@]}"

echo "== 4. run it (hetero-run, slow rank emulated)"
hetero-run --standalone --plan "$out/plan.yaml" --cluster examples/clusters/cpu_mix.yaml --emulate \
    examples/train_gpt.py --model examples/models/gpt_tiny.yaml --steps 10 --ckpt "$out/ckpt"
echo "demo done: plan, Gantt chart and checkpoints are in $out/"
