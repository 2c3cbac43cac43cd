"""CPU benchmark of bandpo.linear_logprob_entropy (issue 16) against the plain path and TRL's chunked log-prob.

    .venv/bin/python benchmarks/bench_lm_head.py                 # N 4096, 8192 x H 512, 1024, V 32768, fp32
    .venv/bin/python benchmarks/bench_lm_head.py --shapes 2048x512x32768 --reps 3

Each case is log-probs and entropy of N tokens from hidden [N, H] and weight [V, H], then backward through both
(loss = sum(logp * a) + sum(entropy * c)), in float32:
  eager  the plain path: logits = hidden @ weight.T, log_softmax, gather, entropy (full [N, V] logits)
  bandpo bandpo.linear_logprob_entropy (chunks of about 32 MiB of logits)
  trl    trl.kernels.chunked_logprob.ChunkedLogProbFunction, when trl is installed (TRL 1.16's chunked path)
Time: median of --reps fwd+bwd calls, the cases interleaved in one process (a, b, c, a, b, c, ...), after
--warmup untimed rounds. Extra peak memory: each case runs once in a fresh child process (before any timing); its peak RSS
minus that of a child that only makes the inputs and the gradient buffers (ru_maxrss). Targets (issue 16): bandpo's extra peak
memory <= 1/8 of eager's, its time <= eager's, ahead of TRL's on both.
"""

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch


def make(n, h, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    target = torch.randint(0, v, (n,), generator=g)
    a, c = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return hidden, weight, target, a, c


def eager(hidden, weight, target):
    logsm = torch.log_softmax(hidden @ weight.t(), dim=-1)
    return logsm.gather(1, target.unsqueeze(1)).squeeze(1), -(logsm.exp() * logsm).sum(-1)


def ours(hidden, weight, target):
    import bandpo

    return bandpo.linear_logprob_entropy(hidden, weight, target)


def trl_path(hidden, weight, target):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE  # the vocabulary tile TRL's trainers use

    # TRL 1.16: (hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)
    out = ChunkedLogProbFunction.apply(hidden, weight, None, target, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                       ("entropy",))
    return out[0], out[1]


CASES = {"eager": eager, "bandpo": ours, "trl": trl_path}


def have_trl():
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction  # noqa: F401
        return True
    except Exception:
        return False


def fwd_bwd(fn, hidden, weight, target, a, c):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    logp, ent = fn(h, w, target)
    ((logp * a).sum() + (ent * c).sum()).backward()
    return h.grad, w.grad


def _child(case, shape, queue):
    torch.set_num_threads(torch.get_num_threads())
    hidden, weight, target, a, c = make(*shape)
    if case == "baseline":  # inputs and the two gradient buffers
        grads = (torch.zeros_like(hidden), torch.zeros_like(weight))
        grads[0].add_(1), grads[1].add_(1)
    else:
        fwd_bwd(CASES[case], hidden, weight, target, a, c)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def peak_bytes(case, shape):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(case, shape, q))
    p.start()
    value = q.get()
    p.join()
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["4096x512x32768", "4096x1024x32768", "8192x512x32768",
                                                     "8192x1024x32768"], help="NxHxV")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each case first (default 1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = ["eager", "bandpo"] + (["trl"] if have_trl() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cases {cases}", flush=True)
    shapes = [tuple(int(x) for x in spec.split("x")) for spec in args.shapes]
    # Memory first: Linux keeps a process's peak RSS across fork and exec, so each child's ru_maxrss is at
    # least the parent's at the time; the parent has made no inputs yet.
    extra = {}
    for shape in shapes:
        base = peak_bytes("baseline", shape)
        for c in cases:
            extra[shape, c] = (peak_bytes(c, shape) - base) / 2 ** 20
    rows = []
    for shape in shapes:
        inputs = make(*shape)
        times = {c: [] for c in cases}
        for _ in range(args.warmup):
            for c in cases:
                fwd_bwd(CASES[c], *inputs)
        for _ in range(args.reps):
            for c in cases:
                t = time.perf_counter()
                fwd_bwd(CASES[c], *inputs)
                times[c].append(time.perf_counter() - t)
        for c in cases:
            row = {"N": shape[0], "H": shape[1], "V": shape[2], "case": c, "s": statistics.median(times[c]),
                   "extra_peak_MiB": extra[shape, c]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del inputs
    print(f"\n{'N':>5} {'H':>5} {'V':>6} {'case':>7} {'s':>8} {'extra MiB':>10} {'time/eager':>10} {'mem/eager':>9}")
    for r in rows:
        e = next(x for x in rows if x["case"] == "eager" and (x["N"], x["H"], x["V"]) == (r["N"], r["H"], r["V"]))
        print(f"{r['N']:>5} {r['H']:>5} {r['V']:>6} {r['case']:>7} {r['s']:>8.3f} {r['extra_peak_MiB']:>10.0f} "
              f"{r['s'] / e['s']:>10.2f} {r['extra_peak_MiB'] / max(e['extra_peak_MiB'], 1e-9):>9.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
