"""Benchmark of bandpo.linear_logprob_entropy and bandpo.fused_linear_band_loss against the plain path,
TRL's chunked log-prob and (CUDA, --loss) Liger's fused linear GRPO loss.

    .venv/bin/python benchmarks/bench_lm_head.py                 # CPU: N 4096, 8192 x H 512, 1024, V 32768, fp32
    .venv/bin/python benchmarks/bench_lm_head.py --loss          # the same with the BandPO loss on top
    python benchmarks/bench_lm_head.py --device cuda --loss --dtype bfloat16 --shapes 8192x4096x131072

Each case is log-probs and entropy of N tokens from hidden [N, H] and weight [V, H], then backward through both
(loss = sum(logp * a) + sum(entropy * c)):
  eager  the plain path: logits = hidden @ weight.T, log_softmax, gather, entropy (full [N, V] logits)
  bandpo bandpo.linear_logprob_entropy (token chunks; the backward recomputes each chunk's logits)
  trl    trl.kernels.chunked_logprob.ChunkedLogProbFunction, when trl is installed (TRL 1.16's chunked path, at the
         vocabulary chunk its trainers use; Triton on CUDA, torch ops on the CPU)
With --loss each case is the BandPO loss over those log-probs minus 0.01 x the mean entropy, then backward
(advantages a, old log-probs -|c|):
  eager   the plain path's log-probs and entropy, then bandpo.band_loss
  bandpo  bandpo.fused_linear_band_loss: the gradients formed in the forward (three GEMMs)
  op      bandpo.linear_logprob_entropy, then bandpo.band_loss (the op's backward recomputes the logits: four)
  trl     TRL's chunked log-prob, then bandpo.band_loss
  liger   liger_kernel's LigerFusedLinearGRPOLoss (CUDA, when installed): its own clipped loss, no entropy, over
          N / 1024 sequences of 1024 tokens, one sequence per chunk (its default)
On CUDA a further case, gemms, times the three GEMMs of the plain path alone (logits, d hidden, d weight), the
yardstick of the CUDA target.

Time: median of --reps fwd+bwd calls, the cases interleaved in one process (a, b, c, a, b, c, ...), after
--warmup untimed rounds (CUDA: synchronised around each call). Extra peak memory: on the CPU each case runs once
in a fresh child process (before any timing), its peak RSS minus that of a child that only makes the inputs and
the gradient buffers (ru_maxrss); on CUDA the allocator's peak during the call minus what was allocated before
it and the two gradients. Targets: CPU, bandpo's extra peak memory <= 1/8 of eager's, its time <=
eager's, ahead of TRL's on both; CUDA (N 8192, H 4096, V 131072, bf16), time within 1.25x of the three GEMMs.
"""

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch

ENTROPY_COEF = 0.01
SEQUENCE = 1024  # tokens per sequence where a case needs sequences (Liger)
CHUNK = {"tokens": 0}  # bandpo's chunk_size (--chunk-size; 0: its default)


def make(n, h, v, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device, dtype)
    target = torch.randint(0, v, (n,), generator=g).to(device)
    a, c = torch.randn(n, generator=g).to(device), torch.randn(n, generator=g).to(device)
    return hidden, weight, target, a, c


def eager(hidden, weight, target):
    logsm = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)
    return logsm.gather(1, target.unsqueeze(1)).squeeze(1), -(logsm.exp() * logsm).sum(-1)


def ours(hidden, weight, target):
    import bandpo

    return bandpo.linear_logprob_entropy(hidden, weight, target, chunk_size=CHUNK["tokens"])


def trl_path(hidden, weight, target):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE  # the vocabulary tile TRL's trainers use

    # TRL 1.16: (hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)
    out = ChunkedLogProbFunction.apply(
        hidden, weight, None, target, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("entropy",)
    )
    return out[0], out[1]


def _op_loss(head):
    """The op-mode loss: sum(logp a) + sum(entropy c)."""

    def loss(hidden, weight, target, a, c):
        logp, ent = head(hidden, weight, target)
        return (logp * a).sum() + (ent * c).sum()

    return loss


def _band_loss(head):
    """The loss mode over a head's log-probs: band_loss (advantages a, old log-probs -|c|) minus the entropy bonus."""

    def loss(hidden, weight, target, a, c):
        import bandpo

        logp, ent = head(hidden, weight, target)
        return bandpo.band_loss(logp, -c.abs(), a).loss - ENTROPY_COEF * ent.mean()

    return loss


def _fused_loss(hidden, weight, target, a, c):
    import bandpo

    return bandpo.fused_linear_band_loss(
        hidden, weight, target, -c.abs(), a, entropy_coef=ENTROPY_COEF, chunk_size=CHUNK["tokens"]
    ).loss


_LIGER = {}


def _liger_loss(hidden, weight, target, a, c):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    if "loss" not in _LIGER:
        _LIGER["loss"] = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="dapo")
    b = hidden.shape[0] // SEQUENCE
    mask = torch.ones(b, SEQUENCE, device=hidden.device, dtype=torch.long)
    out = _LIGER["loss"](
        hidden.view(b, SEQUENCE, -1),
        weight,
        target.view(b, SEQUENCE),
        mask,
        a.view(b, SEQUENCE)[:, 0],
        old_per_token_logps=-c.abs().view(b, SEQUENCE),
    )
    return out[0] if isinstance(out, tuple) else out


def _three_gemms(hidden, weight, target, a, c):
    """The plain path's three GEMMs alone (the logits stand in for their gradient): the CUDA yardstick."""

    class ThreeGemms(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, w):
            z = h @ w.t()
            ctx.save_for_backward(h, w, z)
            return z.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            h, w, z = ctx.saved_tensors
            return z @ w, z.t() @ h

    return ThreeGemms.apply(hidden, weight)


CASES = {"gemms": _three_gemms, "eager": _op_loss(eager), "bandpo": _op_loss(ours), "trl": _op_loss(trl_path)}
LOSS_CASES = {
    "gemms": _three_gemms,
    "eager": _band_loss(eager),
    "bandpo": _fused_loss,
    "op": _band_loss(ours),
    "trl": _band_loss(trl_path),
    "liger": _liger_loss,
}


def importable(module):
    try:
        __import__(module)
        return True
    except Exception:
        return False


def fwd_bwd(fn, hidden, weight, target, a, c):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    fn(h, w, target, a, c).backward()
    return h.grad, w.grad


def _child(case, shape, loss_mode, chunk_tokens, queue):
    torch.set_num_threads(torch.get_num_threads())
    CHUNK["tokens"] = chunk_tokens  # a spawned child starts from the module's defaults
    cases = LOSS_CASES if loss_mode else CASES
    hidden, weight, target, a, c = make(*shape)
    if case == "baseline":  # inputs and the two gradient buffers
        grads = (torch.zeros_like(hidden), torch.zeros_like(weight))
        grads[0].add_(1), grads[1].add_(1)
    else:
        fwd_bwd(cases[case], hidden, weight, target, a, c)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def peak_bytes_cpu(case, shape, loss_mode):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(case, shape, loss_mode, CHUNK["tokens"], q))
    p.start()
    value = q.get()
    p.join()
    return value


def extra_peak_cuda(fn, inputs):
    """Allocator peak during one fwd+bwd, above what was allocated before it and the two gradients (MiB)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = fwd_bwd(fn, *inputs)
    torch.cuda.synchronize()
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    return (torch.cuda.max_memory_allocated() - before - grad_bytes) / 2**20


def timed(fn, inputs, cuda):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fwd_bwd(fn, *inputs)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def print_kernel_times(name, fn, inputs, top=8):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwd_bwd(fn, *inputs)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    print(f"{name}: device ms by kernel (total {total / 1e3:.1f})")
    for e in events[:top]:
        print(f"  {e.device_time_total / 1e3:8.2f} x{e.count:<4} {e.key[:100]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=None, help="NxHxV (default: the target shapes for the device)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each case first (default 1)")
    ap.add_argument("--loss", action="store_true", help="the BandPO loss on top (fused_linear_band_loss)")
    ap.add_argument("--cases", nargs="+", default=None, help="a subset of the cases")
    ap.add_argument("--chunk-size", type=int, default=0, help="bandpo's chunk_size (default 0: its own choice)")
    ap.add_argument(
        "--kernel-times",
        action="store_true",
        help="CUDA: after the timing, each case's top kernels over one fwd+bwd (torch.profiler)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    CHUNK["tokens"] = args.chunk_size
    dtype = getattr(torch, args.dtype)
    table = LOSS_CASES if args.loss else CASES
    cases = (["gemms"] if cuda else []) + ["eager", "bandpo"] + (["op"] if args.loss else [])
    cases += ["trl"] if importable("trl.kernels.chunked_logprob") else []
    cases += ["liger"] if cuda and args.loss and importable("liger_kernel.chunked_loss") else []
    if args.cases:
        cases = [c for c in cases if c in args.cases]
    if args.shapes is None:
        args.shapes = (
            ["8192x4096x131072"] if cuda else ["4096x512x32768", "4096x1024x32768", "8192x512x32768", "8192x1024x32768"]
        )
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {device_name}, {args.dtype}, bandpo chunk_size {args.chunk_size}; cases {cases}",
        flush=True,
    )
    shapes = [tuple(int(x) for x in spec.split("x")) for spec in args.shapes]
    # CPU memory first: Linux keeps a process's peak RSS across fork and exec, so each child's ru_maxrss is at
    # least the parent's at the time; the parent has made no inputs yet.
    extra = {}
    if not cuda:
        if dtype != torch.float32:
            raise SystemExit("the CPU memory children make float32 inputs: --dtype float32 on the CPU")
        for shape in shapes:
            base = peak_bytes_cpu("baseline", shape, args.loss)
            for c in cases:
                extra[shape, c] = (peak_bytes_cpu(c, shape, args.loss) - base) / 2**20
    rows = []
    for shape in shapes:
        inputs = make(*shape, device=args.device, dtype=dtype)
        times = {c: [] for c in cases}
        for _ in range(args.warmup):
            for c in cases:
                fwd_bwd(table[c], *inputs)
        if cuda:
            for c in cases:
                extra[shape, c] = extra_peak_cuda(table[c], inputs)
        for _ in range(args.reps):
            for c in cases:
                times[c].append(timed(table[c], inputs, cuda))
        if cuda and args.kernel_times:
            for c in cases:
                print_kernel_times(c, table[c], inputs)
        for c in cases:
            row = {
                "mode": "loss" if args.loss else "op",
                "device": device_name,
                "dtype": args.dtype,
                "N": shape[0],
                "H": shape[1],
                "V": shape[2],
                "case": c,
                "s": statistics.median(times[c]),
                "extra_peak_MiB": extra[shape, c],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del inputs
    ref_case = "gemms" if cuda else "eager"
    print(
        f"\n{'N':>5} {'H':>5} {'V':>6} {'case':>7} {'ms':>9} {'extra MiB':>10} {'time/' + ref_case:>11} "
        f"{'mem/eager':>9}"
    )
    for r in rows:
        same = [x for x in rows if (x["N"], x["H"], x["V"]) == (r["N"], r["H"], r["V"])]
        ref = next((x for x in same if x["case"] == ref_case), r)
        e = next((x for x in same if x["case"] == "eager"), None)
        mem = f"{r['extra_peak_MiB'] / max(e['extra_peak_MiB'], 1e-9):>9.3f}" if e else f"{'-':>9}"
        print(
            f"{r['N']:>5} {r['H']:>5} {r['V']:>6} {r['case']:>7} {r['s'] * 1e3:>9.1f} {r['extra_peak_MiB']:>10.0f} "
            f"{r['s'] / ref['s']:>11.2f} {mem}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
