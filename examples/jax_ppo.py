"""GRPO-style PPO in plain JAX with bandpo's loss: a contextual bandit (a softmax policy over 64 actions, linear in a
one-hot context of 8 prompts; each prompt rewards one action), trained from a policy that prefers a wrong one.

    python examples/jax_ppo.py [--steps 60] [--divergence kl]

Each step samples 16 actions per prompt, normalises the rewards within each prompt's group, and takes 4 optimiser
steps (Adam, written out) on the same batch through ``bandpo.jax.band_loss`` under ``jax.jit`` and ``jax.grad``. It
prints the mean reward every 10 steps; tests/test_jax.py runs it and requires the reward to rise.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import bandpo.jax as bj

PROMPTS, ACTIONS, SAMPLES, EPOCHS = 8, 64, 16, 4


def init(key):
    """Logits [PROMPTS, ACTIONS]: a strong preference for a wrong action, the right one (prompt p: action 3 p + 1)
    rare (old probability about 1e-3)."""
    logits = 0.1 * jax.random.normal(key, (PROMPTS, ACTIONS))
    return logits.at[:, 0].add(5.0)


def reward(actions):
    return (actions == (3 * jnp.arange(PROMPTS)[:, None] + 1)).astype(jnp.float32)


def make_step(divergence: str, lr: float = 0.05):
    def loss_fn(params, actions, old_logp, advantages):
        logp_all = jax.nn.log_softmax(params, axis=-1)
        logp = jnp.take_along_axis(logp_all, actions, axis=-1)  # [PROMPTS, SAMPLES]
        return bj.band_loss(logp, old_logp, advantages, divergence=divergence, agg="seq-mean-token-mean").loss

    @jax.jit
    def step(params, adam, key):
        actions = jax.random.categorical(key, params[:, None, :], shape=(PROMPTS, SAMPLES))
        old_logp = jnp.take_along_axis(jax.nn.log_softmax(params, axis=-1), actions, axis=-1)
        r = reward(actions).astype(params.dtype)
        advantages = (r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + 1e-6)
        m, v, t = adam
        for _ in range(EPOCHS):
            g = jax.grad(loss_fn)(params, actions, old_logp, advantages)
            t = t + 1
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            params = params - lr * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return params, (m, v, t), r.mean()

    return step


def train(steps: int = 60, divergence: str = "kl", seed: int = 0, log=print) -> list:
    key = jax.random.key(seed)
    params = init(key)
    adam = (jnp.zeros_like(params), jnp.zeros_like(params), jnp.zeros(()))
    step = make_step(divergence)
    rewards = []
    for i in range(steps):
        params, adam, r = step(params, adam, jax.random.fold_in(key, i))
        rewards.append(float(r))
        if (i + 1) % 10 == 0:
            log(f"step {i + 1}: mean reward {sum(rewards[-10:]) / 10:.3f}")
    return rewards


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--divergence", default="kl")
    args = ap.parse_args()
    train(args.steps, args.divergence)
