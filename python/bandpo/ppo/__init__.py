"""A minimal but real PPO/GRPO loop on a small language-model policy, comparing clip, Clip-Higher and Band.

    python -m bandpo.ppo                      # the default comparison (CPU, a few minutes)
    python -m bandpo.ppo --help

Modules: task.py (sorting task, reward, imperfect demonstrations), model.py (causal transformer),
rollout.py (sampling, masks, log-probs, GRPO advantages), methods.py (method presets), train.py (warm
start, PPO loop, DDP), report.py (summary and plots), cli.py (the command line).
"""
