"""hetero.rl: online RL for flow-matching VLA policies (piRL Flow-Noise / Flow-SDE, PPO, GRPO).

Maths in flow.py and algos.py, sampling/replay in policy.py, envs in envs/, the loop in trainer.py, few-shot SFT in
sft.py, evaluation in eval.py, the ``hetero rl`` command in cli.py. Quick start: ``hetero rl --help``.
"""
