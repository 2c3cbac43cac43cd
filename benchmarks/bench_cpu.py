"""CPU benchmark of torch.ops.bandpo against the baselines; prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_cpu.py                      # 64k, 1M, 16M tokens (a few minutes)
    .venv/bin/python benchmarks/bench_cpu.py --sizes 1048576 --out results.json

Every ratio is measured within one run (the machine is shared and noisy): median of repeated timings, inputs
rotated so that no case runs from a warm cache the others lack. Targets (2-core machine):
  * band_bounds(kl), 1M float32: >= 200x faster than the released bisection solver (released_solver.py)
  * band_loss(kl) fwd+bwd, 1M float32: <= 0.5x the time of an eager fixed-clip PPO loss fwd+bwd
  * no N-sized temporaries beyond the gradient (reported from the profiler's allocations)
Targets for Band-KL (1M and 16M float32 tokens): band_bounds kl <= 1.5x band_bounds tv, band_loss kl fwd+bwd
<= 1.25x band_loss clip fwd+bwd (back-to-back pairs; `--kl-cost-sizes` picks the sizes).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bandpo  # noqa: E402,F401  (registers torch.ops.bandpo)
from bandpo import reference  # noqa: E402
from released_solver import released_kl_bounds  # noqa: E402


def median_ms(fn, min_time=0.3, max_reps=50):
    fn()  # warm-up (and compilation)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def interleaved_ratio(numerator, denominator, rounds=9, calls=3):
    """Median of time(numerator)/time(denominator) over rounds that time `calls` calls of each back to back, alternating
    which goes first, so that both see the same machine load (the shared machine's speed drifts by more
    than the ratios being measured)."""
    numerator(), denominator()

    def timed(fn):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - t

    ratios = []
    for r in range(rounds):
        if r % 2:
            t_den, t_num = timed(denominator), timed(numerator)
        else:
            t_num, t_den = timed(numerator), timed(denominator)
        ratios.append(t_num / t_den)
    return statistics.median(ratios), min(ratios), max(ratios)


def make_inputs(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(n, generator=g)).clamp(min=-20)
    logp = (old + 0.3 * torch.randn(n, generator=g)).clamp(max=0)
    adv = torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.1
    return logp.to(dtype), old.to(dtype), adv.to(dtype), mask


def eager_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28):
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum()


def fwd_bwd(loss_fn, logp, *rest, **kw):
    x = logp.detach().requires_grad_()

    def run():
        x.grad = None
        out = loss_fn(x, *rest, **kw)
        (out[0] if isinstance(out, tuple) else out).backward()

    return run


def copy_bandwidth_gbs():
    x = torch.randn(1 << 25)  # 128 MiB
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def net_allocation_bytes(fn):
    """Bytes the bandpo ops allocate and keep (their outputs), from the profiler's memory records."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(evt.cpu_memory_usage for evt in prof.key_averages() if evt.key.startswith("bandpo::"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1 << 16, 1 << 20, 1 << 24])
    ap.add_argument(
        "--baseline-max",
        type=int,
        default=1 << 22,
        help="largest size at which the slow baselines (bisection, reference) run",
    )
    ap.add_argument(
        "--kl-cost-sizes",
        type=int,
        nargs="*",
        default=[1 << 20, 1 << 24],
        help="sizes (float32) of the back-to-back KL/TV and KL/clip ratios",
    )
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu.json"))
    args = ap.parse_args()

    bw = copy_bandwidth_gbs()
    rows = []

    def record(case, n, dtype, ms, bytes_moved=None, **extra):
        row = dict(
            case=case,
            tokens=n,
            dtype=str(dtype).replace("torch.", ""),
            ms=round(ms, 4),
            mtok_per_s=round(n / (ms * 1e-3) / 1e6, 2),
            **extra,
        )
        if bytes_moved:
            row["floor_ms"] = round(bytes_moved / (bw * 1e9) * 1e3, 4)
        rows.append(row)
        print(
            f"{case:34s} {n:>9d} {row['dtype']:>9s} {ms:10.3f} ms {row['mtok_per_s']:10.1f} Mtok/s"
            + (f"   floor {row['floor_ms']:.3f} ms" if bytes_moved else ""),
            flush=True,
        )
        return ms

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth {bw:.1f} GB/s")
    for n in args.sizes:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            logp, old, adv, mask = make_inputs(n, dtype)
            size = torch.finfo(dtype).bits // 8
            for div in ("kl", "tv", "chi2", "clip"):
                record(
                    f"band_bounds[{div}]",
                    n,
                    dtype,
                    median_ms(lambda: torch.ops.bandpo.band_bounds(old, divergence=div)),
                    3 * size * n,
                )
            for div in ("kl", "tv", "chi2", "clip"):
                # forward reads logp, old, adv, mask; backward reads them again and writes the gradient
                record(
                    f"band_loss[{div}] fwd+bwd",
                    n,
                    dtype,
                    median_ms(fwd_bwd(torch.ops.bandpo.band_loss, logp, old, adv, mask, divergence=div)),
                    (2 * (3 * size + 1) + size) * n,
                )
            record("eager fixed-clip loss fwd+bwd", n, dtype, median_ms(fwd_bwd(eager_clip_loss, logp, old, adv, mask)))
            if dtype != torch.float32 or n > args.baseline_max:
                continue
            record(
                "released bisection bounds[kl]",
                n,
                dtype,
                median_ms(lambda: released_kl_bounds(old.exp(), 0.05), 1.0, 5),
            )
            record("reference bounds[kl] eager", n, dtype, median_ms(lambda: reference.band_bounds(old)))
            record(
                "reference loss[kl] fwd+bwd eager",
                n,
                dtype,
                median_ms(fwd_bwd(reference.band_loss, logp, old, adv, mask)),
            )
            compiled = torch.compile(reference.band_loss, dynamic=False)
            record("reference loss[kl] fwd+bwd compiled", n, dtype, median_ms(fwd_bwd(compiled, logp, old, adv, mask)))

    logp, old, adv, mask = make_inputs(1 << 20, torch.float32)
    x = logp.clone().requires_grad_()
    alloc_fwd = net_allocation_bytes(lambda: torch.ops.bandpo.band_loss(x, old, adv, mask))
    alloc_bwd = net_allocation_bytes(lambda: torch.ops.bandpo.band_loss(x, old, adv, mask)[0].backward())
    # The kernels themselves work in fixed stack buffers (512 tokens per block); only non-contiguous inputs
    # are copied. What the ops allocate is their outputs:
    print(
        f"\nnet allocations by bandpo ops at 1M float32 tokens: forward {alloc_fwd} B, forward+backward "
        f"{alloc_bwd} B (the gradient alone is {4 << 20} B)"
    )

    # The targets, each from back-to-back pairs of calls (see interleaved_ratio), at 1M float32 tokens.
    summary = dict(alloc_forward_bytes=alloc_fwd, alloc_forward_backward_bytes=alloc_bwd)
    logp, old, adv, mask = make_inputs(1 << 20, torch.float32)
    speedup = interleaved_ratio(
        lambda: released_kl_bounds(old.exp(), 0.05),
        lambda: torch.ops.bandpo.band_bounds(old, divergence="kl"),
        rounds=5,
        calls=1,
    )
    time_ratio = interleaved_ratio(
        fwd_bwd(torch.ops.bandpo.band_loss, logp, old, adv, mask),
        fwd_bwd(eager_clip_loss, logp, old, adv, mask),
        rounds=15,
        calls=5,
    )
    # Band-KL against the closed forms: float32 bounds kl / tv, and loss fwd+bwd kl / clip.
    kl_cost = {}
    for n in args.kl_cost_sizes:
        logp_n, old_n, adv_n, mask_n = make_inputs(n, torch.float32)
        rounds, calls = (9, 3) if n <= 1 << 22 else (5, 1)
        bounds_ratio = interleaved_ratio(
            lambda: torch.ops.bandpo.band_bounds(old_n, divergence="kl"),
            lambda: torch.ops.bandpo.band_bounds(old_n, divergence="tv"),
            rounds,
            calls,
        )
        loss_ratio = interleaved_ratio(
            fwd_bwd(torch.ops.bandpo.band_loss, logp_n, old_n, adv_n, mask_n, divergence="kl"),
            fwd_bwd(torch.ops.bandpo.band_loss, logp_n, old_n, adv_n, mask_n, divergence="clip"),
            rounds,
            calls,
        )
        kl_cost[str(n)] = dict(
            bounds_kl_over_tv=[round(v, 3) for v in bounds_ratio], loss_kl_over_clip=[round(v, 3) for v in loss_ratio]
        )
    summary["kl_cost"] = kl_cost
    summary["bounds_kl_speedup_vs_released"] = [round(v, 1) for v in speedup]
    summary["loss_kl_time_vs_eager_clip"] = [round(v, 3) for v in time_ratio]

    def table_ms(case):
        return next(
            (r["ms"] for r in rows if r["case"] == case and r["tokens"] == 1 << 20 and r["dtype"] == "float32"), None
        )

    print("\n== targets (1M float32 tokens) ==")
    bis, kl, loss, clip = (
        table_ms(c)
        for c in (
            "released bisection bounds[kl]",
            "band_bounds[kl]",
            "band_loss[kl] fwd+bwd",
            "eager fixed-clip loss fwd+bwd",
        )
    )
    if bis and kl:
        summary["table_bounds_kl_speedup_vs_released"] = round(bis / kl, 1)
        print(
            f"from the table's medians: band_bounds(kl) {bis / kl:.1f}x faster than the released bisection"
            " (target >= 200x)"
        )
    if loss and clip:
        summary["table_loss_kl_time_vs_eager_clip"] = round(loss / clip, 3)
        print(f"from the table's medians: band_loss(kl) fwd+bwd takes {loss / clip:.3f} of eager clip (target <= 0.5)")
    print(
        "from back-to-back pairs, median [min, max] (each call right after the other, which also hands it the "
        "other's cache and allocator state):"
    )
    print(f"  band_bounds(kl) vs released bisection: {speedup[0]:.1f}x [{speedup[1]:.1f}, {speedup[2]:.1f}]")
    print(f"  band_loss(kl) fwd+bwd / eager clip: {time_ratio[0]:.3f} [{time_ratio[1]:.3f}, {time_ratio[2]:.3f}]")
    for n, r in kl_cost.items():
        b, l = r["bounds_kl_over_tv"], r["loss_kl_over_clip"]
        print(
            f"  {int(n) >> 20}M float32: band_bounds kl / tv {b[0]:.2f} [{b[1]:.2f}, {b[2]:.2f}] (target <= 1.5); "
            f"band_loss fwd+bwd kl / clip {l[0]:.2f} [{l[1]:.2f}, {l[2]:.2f}] (target <= 1.25)"
        )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            dict(
                machine=platform.machine(),
                processor=platform.processor(),
                threads=torch.get_num_threads(),
                torch=torch.__version__,
                copy_bandwidth_gbs=bw,
                kernels=rows,
                summary=summary,
            ),
            f,
            indent=1,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
