"""Cost of bounds of any making, CPU: bandpo.f_divergence_bounds against the built-in band_bounds, and the fused
loss reading given bounds (lower, upper) against the same loss computing its own. Back to back, one run.

    .venv/bin/python benchmarks/bench_f_divergence.py [--tokens 1048576] [--reps 5] [--compile]

Prints medians (ms) and ratios. The generic solver runs in float64 whatever the input (about 30 evaluations of f
and f' per side, each a few elementwise passes): it is meant for the bounds of a batch, computed once and reused
by every minibatch and epoch. --compile adds it under torch.compile (minutes to compile on CPU, once).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bandpo


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.tokens
    rows = n // 1024
    old = (-torch.rand(rows, 1024) * 3 - 1e-3).float()
    logp = (old + 0.3 * torch.randn_like(old)).clamp(max=-1e-4)
    adv, mask = torch.randn(rows, 1024), torch.rand(rows, 1024) > 0.1
    print(f"{n} float32 tokens, {args.threads} threads, CPU kernels {bandpo.cpu_kernel_isa()}")

    built_in = median_ms(lambda: bandpo.band_bounds(old, divergence="kl"), args.reps * 4)
    results = {"band_bounds(kl), built-in": built_in}
    for f in ("kl", "hellinger"):
        results[f"f_divergence_bounds({f})"] = median_ms(lambda f=f: bandpo.f_divergence_bounds(old, f), args.reps)
    if args.compile:
        compiled = torch.compile(lambda x: bandpo.f_divergence_bounds(x, "hellinger"))
        t = time.perf_counter()
        compiled(old)
        print(f"torch.compile of f_divergence_bounds(hellinger): {time.perf_counter() - t:.0f} s to compile")
        results["f_divergence_bounds(hellinger), compiled"] = median_ms(lambda: compiled(old), args.reps)
    for name, ms in results.items():
        print(f"  {name:45s} {ms:10.2f} ms   {ms / built_in:8.1f}x built-in")

    lower, upper = bandpo.band_bounds(old)

    def step(bounds):
        x = logp.clone().requires_grad_()
        out = bandpo.band_loss(x, old, adv, mask, **bounds)
        out.loss.backward()

    own, given = [], []
    for _ in range(args.reps * 4):  # alternating, back to back
        own.append(median_ms(lambda: step({}), 1))
        given.append(median_ms(lambda: step({"lower": lower, "upper": upper}), 1))
    own_ms, given_ms = statistics.median(own), statistics.median(given)
    print(f"  band_loss fwd+bwd (kl), own bounds            {own_ms:10.2f} ms")
    print(f"  band_loss fwd+bwd, given lower/upper           {given_ms:10.2f} ms   {given_ms / own_ms:8.2f}x")
    print(f"  (given bounds read two more float32 tensors: {2 * 4 * n / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
