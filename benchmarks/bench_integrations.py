"""What the verl policy loss "bandpo" costs against verl's own "vanilla" loss (forward + backward).

    .venv/bin/python benchmarks/bench_integrations.py                 # CPU, 131k and 1M tokens
    .venv/bin/python benchmarks/bench_integrations.py --device cuda   # on a GPU

Each case is the policy-loss function as verl's actor calls it (log_prob requires grad; loss.backward();
the metrics dict read, which synchronises once), timed round-robin with the others so that all share the
machine's state; medians. Needs verl (pip install bandpo[verl]).
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

from bandpo.integrations.verl import compute_policy_loss_bandpo


def actor_config(**policy_loss):
    return OmegaConf.create(
        {
            "clip_ratio": 0.2,
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.28,
            "clip_ratio_c": 3.0,
            "global_batch_info": {},
            "policy_loss": {"loss_mode": "bandpo", **policy_loss},
        }
    )


def batch(rows, cols, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(rows, cols, generator=g)).clamp(min=-20)
    logp = (old + 0.3 * torch.randn(rows, cols, generator=g)).clamp(max=0)
    adv = torch.randn(rows, 1, generator=g).expand(rows, cols).contiguous()
    mask = torch.rand(rows, cols, generator=g) > 0.1
    return [t.to(device) for t in (logp, old, adv, mask)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="64x2048,256x4096", help="comma-separated ROWSxCOLS")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()

    cases = {
        "verl vanilla": (compute_policy_loss_vanilla, actor_config()),
        "bandpo clip": (compute_policy_loss_bandpo, actor_config(divergence="clip")),
        "bandpo kl": (compute_policy_loss_bandpo, actor_config(divergence="kl", delta=0.05)),
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'shape':>10} {'agg':>20} " + " ".join(f"{name:>14}" for name in cases) + "   (ms, fwd+bwd+metrics)")
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        logp, old, adv, mask = batch(rows, cols, args.device)
        for agg in ("token-mean", "seq-mean-token-mean"):

            def run(fn, cfg):
                x = logp.detach().requires_grad_(True)
                loss, metrics = fn(
                    old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask, loss_agg_mode=agg, config=cfg
                )
                loss.backward()
                sync()
                return metrics

            times = {name: [] for name in cases}
            for name, (fn, cfg) in cases.items():
                run(fn, cfg)  # warm-up
            for _ in range(args.reps):
                for name, (fn, cfg) in cases.items():
                    start = time.perf_counter()
                    run(fn, cfg)
                    times[name].append((time.perf_counter() - start) * 1e3)
            medians = {name: statistics.median(t) for name, t in times.items()}
            print(
                f"{shape:>10} {agg:>20} "
                + " ".join(f"{medians[name]:>14.2f}" for name in cases)
                + f"   bandpo kl / vanilla = {medians['bandpo kl'] / medians['verl vanilla']:.2f}x"
            )


if __name__ == "__main__":
    main()
