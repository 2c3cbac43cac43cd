"""The JAX face's cost against the torch op on the CPU: Band-KL band_loss forward + backward, float32, back to back.

    python benchmarks/bench_jax.py [--tokens 4096 65536 1048576] [--rounds 5] [--lm-head 4096 512 32768]

Both call the same core kernels (the results are the same bits, tests/test_jax.py); what differs is the call
path: torch's dispatcher and autograd against XLA's FFI custom calls inside one jitted value_and_grad. Rounds
alternate torch / jax; each reports the median of its rounds' medians, and the ratio jax / torch per size.
The lm_head (linear_logprob_entropy, fwd + bwd of sum(logp) + sum(entropy), float32, N tokens by H by V) the same
way: there the GEMMs differ too (XLA's against torch's).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import bandpo
import bandpo.jax as bj


def batch(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    rows = max(1, n // 1024)
    old = np.log(g.uniform(0.01, 0.99, (rows, n // rows))).astype(np.float32)
    logp = np.minimum(old + 0.3 * g.standard_normal(old.shape).astype(np.float32), 0.0)
    adv = g.standard_normal(rows).astype(np.float32)
    mask = g.random(old.shape) > 0.1
    return logp, old, adv, mask


def time_calls(f, reps: int) -> float:
    f()  # warm (compile, first-touch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 65536, 1 << 20])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm-head", type=int, nargs=3, default=[4096, 512, 32768], metavar=("N", "H", "V"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__}, torch {torch.__version__}, CPU kernels {bandpo.cpu_kernel_isa()}")
    print("tokens | torch ms | jax ms | jax / torch")
    for n in args.tokens:
        logp, old, adv, mask = batch(n)
        t_logp, t_old, t_adv, t_mask = (torch.from_numpy(a) for a in (logp, old, adv, mask))
        x = t_logp.clone().requires_grad_()

        def torch_step():
            x.grad = None
            bandpo.band_loss(x, t_old, t_adv, t_mask).loss.backward()

        j_args = [jnp.asarray(a) for a in (old, adv, mask)]
        step = jax.jit(jax.value_and_grad(lambda z: bj.band_loss(z, *j_args).loss))
        j_logp = jnp.asarray(logp)

        def jax_step():
            jax.block_until_ready(step(j_logp))

        reps = 25 if n <= 65536 else 10
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(time_calls(torch_step, reps))
            theirs.append(time_calls(jax_step, reps))
        t, j = statistics.median(ours), statistics.median(theirs)
        print(f"{n} | {1e3 * t:.3f} | {1e3 * j:.3f} | {j / t:.2f}")
    lm_head(args)


def lm_head(args) -> None:
    n, h, v = args.lm_head
    g = np.random.default_rng(1)
    hidden = g.standard_normal((n, h)).astype(np.float32)
    weight = (g.standard_normal((v, h)) / np.sqrt(h)).astype(np.float32)
    target = g.integers(0, v, n)
    th, tw, tt = (
        torch.tensor(hidden, requires_grad=True),
        torch.tensor(weight, requires_grad=True),
        torch.tensor(target),
    )

    def torch_step():
        th.grad = tw.grad = None
        logp, ent = bandpo.linear_logprob_entropy(th, tw, tt)
        (logp.sum() + ent.sum()).backward()

    def objective(x, w):
        logp, ent = bj.linear_logprob_entropy(x, w, target)
        return logp.sum() + ent.sum()

    step = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
    jh, jw = jnp.asarray(hidden), jnp.asarray(weight)

    def jax_step():
        jax.block_until_ready(step(jh, jw))

    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(time_calls(torch_step, 3))
        theirs.append(time_calls(jax_step, 3))
    t, j = statistics.median(ours), statistics.median(theirs)
    print(
        f"lm_head N={n} H={h} V={v} fwd+bwd | torch {1e3 * t:.1f} ms | jax {1e3 * j:.1f} ms | jax / torch {j / t:.2f}"
    )


if __name__ == "__main__":
    main()
