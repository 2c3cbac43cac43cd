"""Outputs of bandpo on fixed inputs, recorded once so that a refactor can be held to the same bits.

    python tests/data/record_outputs.py            # writes tests/data/recorded_outputs.npz (only on purpose)

tests/test_recorded_outputs.py recomputes every entry and requires it bit for bit (NaN where NaN). The cases
cover each face on the CPU: the bounds of every divergence, the loss with its metrics and gradient for every
aggregation and option that changes the arithmetic, the numpy face, the lm_head op with its transforms and its
backward, and the fused head+loss with its gradients. Inputs come from a seeded generator in float64 and are
cast, so they are the same on every machine; the baseline CPU kernels are used (BANDPO_CPU_ISA=baseline, set
by the test before bandpo loads), so that a machine's instruction set cannot change the answer.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "recorded_outputs.npz")


def _inputs(dtype, rows=3, cols=37, seed=11):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(rows, cols, generator=g, dtype=torch.float64) * 0.999 + 1e-4)
    logp = torch.clamp(old + 0.4 * torch.randn(rows, cols, generator=g, dtype=torch.float64), max=0.0)
    adv = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    weights = torch.rand(rows, cols, generator=g, dtype=torch.float64)
    ref = torch.clamp(old + 0.2 * torch.randn(rows, cols, generator=g, dtype=torch.float64), max=0.0)
    mask = weights > 0.15
    lower = torch.rand(rows, cols, generator=g, dtype=torch.float64)  # bounds of nobody's divergence (drawn last:
    upper = 1 + 3 * torch.rand(rows, cols, generator=g, dtype=torch.float64)  # the values above stay as they were)
    return {
        "logp": logp.to(dtype),
        "old": old.to(dtype),
        "adv": adv.to(dtype),
        "row_adv": adv[:, 0].to(dtype),
        "mask": mask,
        "weights": weights.to(dtype),
        "ref": ref.to(dtype),
        "lower": lower.to(dtype),
        "upper": upper.to(dtype),
    }


def _loss_cases():
    """(name, kwargs of band_loss beside the tensors, which mask, per-row advantages)."""
    cases = []
    for agg in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        cases.append((f"agg={agg}", {"agg": agg}, "mask", False))
    for div in ("kl", "tv", "chi2", "clip", "dcpo"):
        cases.append((f"div={div}", {"divergence": div, "dual_clip": 3.0, "relax_high_p": True}, "weights", False))
    for est in ("k1", "k2", "k3"):
        cases.append((f"ref={est}", {"kl_coef": 0.05, "kl_estimator": est}, "mask", True))
    cases.append(("normalizer", {"normalizer": 17.0, "agg": "seq-mean-token-mean", "ratio_max": 3.0}, "weights", True))
    cases.append(("nomask", {"delta": 0.3, "eps_high": 0.5}, None, False))
    cases.append(("given", {"dual_clip": 3.0, "relax_high_p": True, "ratio_max": 4.0}, "weights", False))
    return cases


def compute() -> dict:
    """Every recorded output, by name, as numpy arrays."""
    import bandpo
    import bandpo.np as bnp

    torch.set_num_threads(2)
    out = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        d = str(dtype).split(".")[1]
        x = _inputs(dtype)
        for div in bandpo.DIVERGENCES:
            for relax in (False, True):
                lo, hi = bandpo.band_bounds(x["old"], divergence=div, relax_high_p=relax, delta=0.07)
                out[f"bounds/{d}/{div}/{relax}"] = np.stack([lo.float().numpy(), hi.float().numpy()])
        for name, kwargs, mask_name, per_row in _loss_cases():
            logp = x["logp"].clone().requires_grad_()
            adv = x["row_adv"] if per_row else x["adv"]
            mask = None if mask_name is None else x[mask_name]
            ref = x["ref"] if "kl_coef" in kwargs else None
            bounds = {"lower": x["lower"], "upper": x["upper"]} if name == "given" else {}
            res = bandpo.band_loss(logp, x["old"], adv, mask, ref_logp=ref, **bounds, **kwargs)
            res.loss.backward()
            out[f"loss/{d}/{name}"] = np.concatenate(
                [
                    res.loss.detach().float().reshape(1).numpy(),
                    res.metrics_tensor.numpy(),
                    logp.grad.float().reshape(-1).numpy(),
                ]
            )
            if dtype != torch.bfloat16:
                n = bnp.band_loss(
                    x["logp"].numpy(),
                    x["old"].numpy(),
                    adv.numpy(),
                    None if mask is None else mask.numpy(),
                    ref_logp=None if ref is None else ref.numpy(),
                    **{k: v.numpy() for k, v in bounds.items()},
                    **kwargs,
                )
                out[f"numpy/{d}/{name}"] = np.concatenate(
                    [np.asarray(n.loss, np.float64).reshape(1), n.grad.reshape(-1)]
                )
    out.update(_lm_head_outputs())
    return out


def _head_inputs(dtype, n=40, hidden=16, vocab=53, seed=5):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    b = (torch.randn(vocab, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[3] = -100
    return h, w, b, t


TRANSFORMS = {
    "plain": {},
    "softcap": {"softcap": 2.5, "temperature": 0.7},
    "scaled": {"logit_scale": 0.5, "temperature": 1.3},
}


def _lm_head_outputs() -> dict:
    import bandpo

    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        d = str(dtype).split(".")[1]
        for tname, transform in TRANSFORMS.items():
            h, w, b, t = _head_inputs(dtype)
            h.requires_grad_()
            w.requires_grad_()
            b.requires_grad_()
            logp, ent = bandpo.linear_logprob_entropy(h, w, t, b, chunk_size=16, **transform)
            g = torch.Generator().manual_seed(3)
            gl = torch.randn(logp.shape, generator=g, dtype=torch.float64).to(logp.dtype)
            ge = torch.randn(logp.shape, generator=g, dtype=torch.float64).to(logp.dtype)
            ((logp * gl).sum() + (ent * ge).sum()).backward()
            parts = [logp.detach(), ent.detach(), h.grad.reshape(-1), w.grad.reshape(-1), b.grad]
            out[f"head/{d}/{tname}"] = np.concatenate([p.float().numpy() for p in parts])

            h, w, b, t = _head_inputs(dtype)
            h, w = h.requires_grad_(), w.requires_grad_()
            x = _inputs(torch.float32, rows=4, cols=10, seed=8)
            target = t.view(4, 10)
            mask = x["mask"] & (target != -100)
            res = bandpo.fused_linear_band_loss(
                h.view(4, 10, -1),
                w,
                target,
                x["old"],
                x["adv"],
                mask,
                bias=b,
                chunk_size=16,
                entropy_coef=0.01,
                agg="seq-mean-token-mean",
                **transform,
            )
            res.loss.backward()
            parts = [res.loss.detach().reshape(1), res.metrics_tensor, h.grad.reshape(-1), w.grad.reshape(-1)]
            out[f"fused/{d}/{tname}"] = np.concatenate([p.float().numpy() for p in parts])
    return out


if __name__ == "__main__":
    if os.environ.get("BANDPO_CPU_ISA") != "baseline":
        sys.exit("run with BANDPO_CPU_ISA=baseline (the test does)")
    np.savez_compressed(PATH, **compute())
    print(f"wrote {PATH}")
