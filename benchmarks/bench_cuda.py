"""GPU benchmark of torch.ops.bandpo; prints a short table last and writes JSON.

    python benchmarks/bench_cuda.py [--sizes 1048576 16777216 67108864] [--out results.json]

Times are medians of CUDA-event timings after warm-up, rotating over three input sets so that no case runs
from a warm L2 the others lack. `ms` is an eager call as a training step makes it (Python, autograd, launches
included: at small sizes this host time is what one sees); `graph ms` replays the same calls captured in a
CUDA graph, i.e. the device time. Bandwidth = bytes / device time against a measured device-to-device copy
(bytes read + written). Two byte counts are reported for the loss: `moved`, what this design must move (forward
reads logp, old_logp, advantages, mask; the backward reads them again and writes the gradient), and `floor`,
the least any fwd+bwd could move (inputs once + the gradient).
Targets: Band-KL fwd+bwd at 16M fp32 >= 70% of copy bandwidth; band_bounds(kl) >= 1000x the released
bisection solver (re-implementation, released_solver.py); Band-KL fwd+bwd no slower than an eager fixed-clip loss.
Targets at 16M fp32 and bf16: band_bounds(kl) >= 70% of copy bandwidth, Band-KL fwd+bwd >= 60% of the bytes it
moves, both in device time (graph replay; band_bounds' bytes: old_logp read, lower and upper written).
"""

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bandpo  # noqa: E402
from bandpo import reference  # noqa: E402
from released_solver import released_kl_bounds  # noqa: E402

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def cuda_ms(fns, warmup=3, reps=20):
    """Median milliseconds of calling fns[i % len(fns)] (rotating input sets), timed with CUDA events."""
    for i in range(warmup):
        fns[i % len(fns)]()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fns[i % len(fns)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fns, reps=20):
    """Median milliseconds of replaying a CUDA graph of each fns[i] (rotating): the device time alone, without
    the host-side cost of Python, autograd and launches that the eager timing includes."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)
    ms = cuda_ms([g.replay for g in graphs], reps=reps)
    del graphs
    return ms


def copy_bandwidth():
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_ms([lambda: dst.copy_(src)], reps=30)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def make_inputs(n, dtype, seed, peaked=False):
    """Uniform p (log clamped at -20), or `peaked`: as sampled LLM tokens mostly are, 80% with p near 1
    (old_logp = -|N(0, 0.05)|) and the rest uniform. The KL table's lookups touch few intervals then."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    old = torch.log(torch.rand(n, generator=g, device="cuda")).clamp(min=-20)
    if peaked:
        near_one = -(0.05 * torch.randn(n, generator=g, device="cuda")).abs()
        old = torch.where(torch.rand(n, generator=g, device="cuda") < 0.8, near_one, old)
    logp = (old + 0.3 * torch.randn(n, generator=g, device="cuda")).clamp(max=0)
    adv = torch.randn(n, generator=g, device="cuda")
    mask = torch.rand(n, generator=g, device="cuda") > 0.1
    # [n / 4096, 4096]: a batch of long sequences
    shape = (n // 4096, 4096)
    return [t.to(dtype).view(shape) for t in (logp, old, adv)] + [mask.view(shape)]


def eager_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28):
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum()


def fwd_bwd(loss_fn, logp, old, adv, mask, **kw):
    x = logp.detach().requires_grad_()

    def run():
        out = loss_fn(x, old, adv, mask, **kw)
        loss = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(loss, x)

    return run


def kernel_times(n):
    """Device time of each kernel that band_bounds and band_loss fwd+bwd launch, from torch.profiler (us per call)."""
    from torch.profiler import ProfilerActivity, profile

    logp, old, adv, mask = make_inputs(n, torch.float32, 0)
    for div in ("kl", "tv"):
        cases = {
            "band_bounds": lambda: torch.ops.bandpo.band_bounds(old, divergence=div),
            "band_loss fwd+bwd": fwd_bwd(torch.ops.bandpo.band_loss, logp, old, adv, mask, divergence=div),
        }
        for name, fn in cases.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            reps = 10
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    fn()
                torch.cuda.synchronize()
            print(f"{name}[{div}] {n} fp32, device us per call by kernel:")
            for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
                if e.device_time_total > 0:
                    print(f"  {e.device_time_total / reps:9.1f}  {e.key[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24, 1 << 26])
    ap.add_argument("--out", default=None, help="JSON file for all results")
    ap.add_argument(
        "--kernel-times",
        type=int,
        default=0,
        metavar="N",
        help="only print each kernel's device time in band_bounds and band_loss fwd+bwd at N tokens",
    )
    ap.add_argument(
        "--ops-only",
        action="store_true",
        help="only band_bounds and band_loss (no baselines, no targets): e.g. to compare BANDPO_KL_TABLE=0",
    )
    args = ap.parse_args()
    if args.kernel_times:
        kernel_times(args.kernel_times)
        return

    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    results = {"device": props.name, "torch": torch.__version__, "copy_bytes_per_s": bw, "rows": []}

    def record(name, n, dtype, ms, moved=None, floor=None, graph=None):
        row = {
            "case": name,
            "tokens": n,
            "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
            "ms": ms,
            "tokens_per_s": n / (ms * 1e-3),
        }
        if graph is not None:
            row["graph_ms"] = graph
        device_ms = graph if graph is not None else ms
        if moved is not None:
            row["bw_frac_moved"] = moved / (device_ms * 1e-3) / bw
        if floor is not None:
            row["bw_frac_floor"] = floor / (device_ms * 1e-3) / bw
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        return row

    # The fixed cost of a call: one token (for "kl" in float mostly the build of its table on the device).
    one = torch.full((1,), -1.0, device="cuda")
    for div in ("kl", "tv"):
        fns = [lambda: torch.ops.bandpo.band_bounds(one, divergence=div)]
        record(f"band_bounds[{div}] one token", 1, torch.float32, cuda_ms(fns), graph=graph_ms(fns))
    n16 = 1 << 24 if (1 << 24) in args.sizes else args.sizes[0]
    for n in args.sizes:
        for dtype in (torch.float32, torch.bfloat16):
            s = torch.tensor([], dtype=dtype).element_size()
            sets = [make_inputs(n, dtype, seed) for seed in range(3)]
            for div in ("kl", "tv", "chi2"):
                bounds = [lambda st=st: torch.ops.bandpo.band_bounds(st[1], divergence=div) for st in sets]
                record(f"band_bounds[{div}]", n, dtype, cuda_ms(bounds), moved=3 * s * n, graph=graph_ms(bounds))
                runs = [fwd_bwd(torch.ops.bandpo.band_loss, *st, divergence=div) for st in sets]
                record(
                    f"band_loss[{div}] fwd+bwd",
                    n,
                    dtype,
                    cuda_ms(runs),
                    moved=(7 * s + 2) * n,
                    floor=(4 * s + 1) * n,
                    graph=graph_ms(runs),
                )
            if n == n16:
                peaked = [make_inputs(n, dtype, seed, peaked=True) for seed in range(3)]
                bounds = [lambda st=st: torch.ops.bandpo.band_bounds(st[1], divergence="kl") for st in peaked]
                record("band_bounds[kl] peaked p", n, dtype, cuda_ms(bounds), moved=3 * s * n, graph=graph_ms(bounds))
                runs = [fwd_bwd(torch.ops.bandpo.band_loss, *st, divergence="kl") for st in peaked]
                record(
                    "band_loss[kl] fwd+bwd peaked p",
                    n,
                    dtype,
                    cuda_ms(runs),
                    moved=(7 * s + 2) * n,
                    floor=(4 * s + 1) * n,
                    graph=graph_ms(runs),
                )
                del peaked
            if args.ops_only:
                del sets
                continue
            runs = [fwd_bwd(eager_clip_loss, *st) for st in sets]
            record("eager clip loss fwd+bwd", n, dtype, cuda_ms(runs), graph=graph_ms(runs))
            if dtype == torch.float32 and n <= (1 << 24):
                record(
                    "released bisection bounds[kl]",
                    n,
                    dtype,
                    cuda_ms([lambda st=st: released_kl_bounds(st[1].exp(), 0.05) for st in sets], warmup=1, reps=3),
                )
                record(
                    "reference loss[kl] fwd+bwd eager",
                    n,
                    dtype,
                    cuda_ms([fwd_bwd(reference.band_loss, *st) for st in sets], reps=5),
                )
                compiled = torch.compile(reference.band_loss, dynamic=False)
                record(
                    "reference loss[kl] fwd+bwd compiled",
                    n,
                    dtype,
                    cuda_ms([fwd_bwd(compiled, *st) for st in sets], reps=10),
                )
            del sets
            torch.cuda.empty_cache()

    def find(case, n, dtype="fp32"):
        return next(r for r in results["rows"] if r["case"] == case and r["tokens"] == n and r["dtype"] == dtype)

    loss = find("band_loss[kl] fwd+bwd", n16)
    targets = {}
    if args.ops_only:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        for r in results["rows"]:
            print(f"{r['case']:32s} {r['tokens']:>9d} {r['dtype']:>5s} graph {r['graph_ms']:.4f} ms")
        return
    for dt in ("fp32", "bf16"):  # targets: KL bounds >= 70% of copy bandwidth, KL fwd+bwd >= 60% of its bytes
        targets[f"band_bounds[kl] 16M {dt}, device time, fraction of copy bandwidth"] = find(
            "band_bounds[kl]", n16, dt
        )["bw_frac_moved"]
        targets[f"band_bounds[kl] / band_bounds[tv] device time (16M {dt})"] = (
            find("band_bounds[kl]", n16, dt)["graph_ms"] / find("band_bounds[tv]", n16, dt)["graph_ms"]
        )
        targets[f"kl fwd+bwd 16M {dt}, device time, fraction of copy bandwidth (moved bytes)"] = find(
            "band_loss[kl] fwd+bwd", n16, dt
        )["bw_frac_moved"]
        targets[f"band_loss[kl] / band_loss[tv] fwd+bwd device time (16M {dt})"] = (
            find("band_loss[kl] fwd+bwd", n16, dt)["graph_ms"] / find("band_loss[tv] fwd+bwd", n16, dt)["graph_ms"]
        )
    targets.update(
        {
            "kl fwd+bwd 16M fp32, device time, fraction of copy bandwidth (moved bytes)": loss["bw_frac_moved"],
            "kl fwd+bwd 16M fp32, device time, fraction of copy bandwidth (floor bytes)": loss["bw_frac_floor"],
            "band_bounds[kl] speed-up over released bisection (16M fp32)": find("released bisection bounds[kl]", n16)[
                "ms"
            ]
            / find("band_bounds[kl]", n16)["ms"],
            "kl fwd+bwd time / eager clip fwd+bwd time (16M fp32, eager)": loss["ms"]
            / find("eager clip loss fwd+bwd", n16)["ms"],
            "kl fwd+bwd time / eager clip fwd+bwd time (16M fp32, graphs)": loss["graph_ms"]
            / find("eager clip loss fwd+bwd", n16)["graph_ms"],
        }
    )
    results["targets"] = targets
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    print(f"\n{props.name}, torch {torch.__version__}, copy {bw / 1e9:.0f} GB/s (read+write)")
    print(f"{'case':38s} {'tokens':>9s} {'dtype':>5s} {'ms':>8s} {'graph ms':>8s} {'Gtok/s':>7s} {'bw%':>4s}")
    for r in results["rows"]:
        frac, graph = r.get("bw_frac_moved"), r.get("graph_ms")
        print(
            f"{r['case']:38s} {r['tokens']:>9d} {r['dtype']:>5s} {r['ms']:>8.3f} "
            f"{'' if graph is None else f'{graph:.3f}':>8s} {r['tokens_per_s'] / 1e9:>7.2f} "
            f"{'' if frac is None else f'{100 * frac:.0f}':>4s}"
        )
    for k, v in targets.items():
        print(f"{k}: {v:.3g}")


if __name__ == "__main__":
    main()
