"""A minimal but real PPO/GRPO loop on a small language-model policy, comparing the clipping rules of the
BandPO paper (clip, Clip-Higher, DCPO, TRGPPO, Band) on a task where exploration matters.

    python -m bandpo.ppo                      # the default comparison (CPU, about 3 minutes)
    python -m bandpo.ppo --quick              # seconds: tiny settings
    python -m bandpo.ppo --help
    python -m bandpo.ppo --experiment clip-binds   # the pre-registered experiment (docs/ppo/PROTOCOL.md)

Modules: task.py (zigzag and sort tasks, rewards, imperfect demonstrations, held-out split), model.py (causal
transformer), rollout.py (sampling, masks, log-probs, GRPO advantages), settings.py (RunConfig), methods.py
(method specs over bandpo.PRESETS), warm_start.py (supervised warm start and its cache), train.py (PPO loop,
DDP), jobs.py (one job per seed, in worker processes), evaluate.py (pass@k, distinct answers), report.py
(summary and plots), experiment.py and stats.py (pre-registered experiments, paired tests), cli.py (the command
line).
"""
