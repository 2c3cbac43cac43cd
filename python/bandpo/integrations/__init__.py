"""Drop-in BandPO for existing RL trainers.

- :mod:`bandpo.integrations.verl`: the verl policy loss ``"bandpo"`` (``pip install bandpo[verl]``).
- :mod:`bandpo.integrations.trl`: ``BandGRPOTrainer`` / ``BandGRPOConfig`` for TRL (``pip install bandpo[trl]``).

Each module imports its trainer package at import time; importing ``bandpo`` itself never does.
"""
