"""Cost of an eager band_loss call (CPU, forward + backward) through two builds of the torch binding, back to back.

    python benchmarks/bench_binding_overhead.py --new PATH_A --old PATH_B [--rounds 7]
    python benchmarks/bench_binding_overhead.py --new SITE --old SITE --new-env BANDPO_PUBLIC_AUTOGRAD=1

Each PATH is a folder that holds an importable ``bandpo`` package (a site-packages, or a source tree's
``python/`` with the built modules copied in). Two builds cannot share one process (both register
torch.ops.bandpo), so each measurement is a fresh worker process; the workers alternate old/new for
``--rounds`` rounds, and the report gives each build's median and the ratio new/old per size, from the same
run. The CPU kernels are forced to the same instruction set in both (``BANDPO_CPU_ISA``, default baseline)
so that only the binding differs. Used for the stable-ABI rewrite: its host overhead must stay within 10%.
``--new-env`` / ``--old-env`` set environment variables for one side's workers only: with one PATH for both
and ``--new-env BANDPO_PUBLIC_AUTOGRAD=1`` it measures the public torch.library autograd path against the
fast one (python/bandpo/_ops.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time, torch
import bandpo
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
out = {}
for n in (4096, 65536, 1 << 20):
    B = n // 1024
    old = -torch.rand(B, 1024) * 3 - 1e-3
    logp = (old + 0.3 * torch.randn_like(old)).clamp(max=-1e-4).requires_grad_()
    adv = torch.randn(B, 1024)
    mask = torch.rand(B, 1024) > 0.1
    def step():
        loss, metrics = torch.ops.bandpo.band_loss(logp, old, adv, mask)
        loss.backward()
        logp.grad = None
    for _ in range(5):
        step()
    reps = int(sys.argv[1]) * (1 << 20) // max(n, 131072)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    out[n] = times[len(times) // 2] * 1e3
print(json.dumps(out))
"""


def run(path, reps, threads, isa, extra_env):
    env = dict(os.environ, PYTHONPATH=path, BANDPO_CPU_ISA=isa)
    env.update(item.split("=", 1) for item in extra_env)
    res = subprocess.run(
        [sys.executable, "-c", WORKER, str(reps), str(threads)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    )
    return {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", required=True)
    ap.add_argument("--old", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=25, help="timed calls per worker at 1M tokens (8x below 128k)")
    ap.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--old-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default="baseline")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    samples = {"new": [], "old": []}
    for r in range(args.rounds):
        for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
            samples[which].append(
                run(getattr(args, which), args.reps, args.threads, args.isa, getattr(args, which + "_env"))
            )
    rows = []
    print(
        f"eager band_loss fwd+bwd, CPU, {args.threads} threads, ISA {args.isa}, {args.rounds} rounds "
        f"(medians of per-worker medians, ms)"
    )
    print(f"{'tokens':>8} {'old':>9} {'new':>9} {'new/old':>8}  per-round ratios")
    for n in (4096, 65536, 1 << 20):
        old = [s[n] for s in samples["old"]]
        new = [s[n] for s in samples["new"]]
        ratios = [b / a for a, b in zip(old, new)]
        rows.append(
            dict(
                tokens=n,
                old_ms=statistics.median(old),
                new_ms=statistics.median(new),
                ratio=statistics.median(new) / statistics.median(old),
                round_ratios=ratios,
            )
        )
        print(
            f"{n:>8} {statistics.median(old):9.3f} {statistics.median(new):9.3f} "
            f"{statistics.median(new) / statistics.median(old):8.3f}  " + " ".join(f"{x:.2f}" for x in ratios)
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
