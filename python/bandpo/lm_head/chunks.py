"""The chunk loop of the lm_head: tokens cut into chunks, each chunk's raw logits made by torch's GEMM, its
statistics and its logits-to-gradient step run by bandpo's kernels (torch.ops.bandpo.logit_chunk_stats,
logit_chunk_grad_) or by torch_math where those do not run, and the chunk's gradient folded into d hidden,
d weight and d bias."""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from . import torch_math
from .checks import DEFAULT_CHUNK_BYTES, LogitOptions, RowGrads, compute_dtype


def chunk_tokens(n: int, vocab: int, chunk_size: int, device: torch.device) -> int:
    """Tokens per chunk: chunk_size, or for 0 as many as DEFAULT_CHUNK_BYTES of float32 logits hold."""
    if chunk_size > 0:
        return chunk_size
    budget = DEFAULT_CHUNK_BYTES["cpu" if device.type == "cpu" else "other"]
    return max(1, min(n, budget // (4 * max(vocab, 1))))


def uses_kernels(x: Tensor) -> bool:
    """Whether a chunk's statistics and gradient run in bandpo's kernels (one pass per row,
    csrc/include/bandpo/lm_head.h): on the CPU and on CUDA (where the wheel has its CUDA kernels), for float
    inputs other than float64 (x: the hidden states or the chunk's raw logits). Elsewhere (other devices, float64)
    the same math runs as torch operations (torch_math)."""
    if x.dtype == torch.float64:
        return False
    return x.device.type == "cpu" or (x.device.type == "cuda" and _has_cuda_kernels())


@functools.cache
def _has_cuda_kernels() -> bool:
    from .. import has_cuda_kernels

    return has_cuda_kernels()


def raw_logits(h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """hidden @ weight.T + bias in the inputs' dtype (as the model's lm_head would: float32 accumulation in
    torch's kernels), then in the compute dtype (float32; float64 for float64), except where the CUDA kernels
    read the GEMM's output as it is (bfloat16 / float16: half the bytes, no conversion pass; the gradient then
    comes back in that dtype, the one its two GEMMs take)."""
    raw = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
    if raw.is_cuda and uses_kernels(raw):
        return raw
    return raw.to(compute_dtype(h.dtype))


def logit_chunks(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], chunk_size: int):
    """(b, e, raw) chunk after chunk: raw = the raw logits of rows [b, e) of hidden (raw_logits). The one place
    the tokens are cut into chunks, for the op's forward, its backward and the fused loss alike."""
    n = hidden.shape[0]
    step = chunk_tokens(n, weight.shape[0], chunk_size, hidden.device)
    for b in range(0, n, step):
        e = min(n, b + step)
        yield b, e, raw_logits(hidden[b:e], weight, bias)


def chunk_logp_entropy(raw: Tensor, t: Tensor, o: LogitOptions, keep_raw: bool = False) -> tuple[Tensor, Tensor]:
    """logp and entropy [n] of the chunk's raw logits [n, V] (compute dtype). raw is consumed unless keep_raw."""
    if uses_kernels(raw):
        return torch.ops.bandpo.logit_chunk_stats(raw, t, **o._asdict())
    return torch_math.chunk_stats(raw.clone() if keep_raw else raw, t, o)


def chunk_logit_grad_(raw: Tensor, t: Tensor, rows: RowGrads, o: LogitOptions) -> Tensor:
    """d loss / d raw logits [n, V] of the chunk (in raw's buffer where it can); rows: the upstream gradients
    and, where known, the chunk's own outputs."""
    if not uses_kernels(raw):
        return torch_math.chunk_logit_grad_(raw, t, rows, o)
    grad_logp, grad_entropy = (
        None if g is None else g.float().contiguous() for g in (rows.grad_logp, rows.grad_entropy)
    )
    torch.ops.bandpo.logit_chunk_grad_(
        raw, t, grad_logp, grad_entropy, **o._asdict(), logp=rows.logp, entropy=rows.entropy
    )
    return raw


class GradAccumulator:
    """d hidden, d weight and d bias, chunk by chunk from each chunk's d loss / d raw logits g [e - b, V]: its rows
    of d hidden, and its share of d weight and d bias (accumulated in the compute dtype, chunk after chunk in
    order: the same bits for every run). A gradient not wanted (needs[i] False) is neither computed nor kept."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], needs=(True, True, True)):
        cdt = compute_dtype(hidden.dtype)
        self.hidden, self.weight = hidden, weight
        self.needs = (needs[0], needs[1], needs[2] and bias is not None)
        self.grad_hidden = torch.zeros_like(hidden) if self.needs[0] else None
        self.grad_weight = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if self.needs[1] else None
        self.grad_bias = torch.zeros(weight.shape[0] if self.needs[2] else 0, dtype=cdt, device=weight.device)

    def add(self, g: Tensor, b: int, e: int) -> None:
        g_in = g.to(self.hidden.dtype)
        if self.needs[0]:
            self.grad_hidden[b:e] = torch.mm(g_in, self.weight)
        if self.needs[1]:
            if g_in.is_cuda and g_in.dtype in (torch.bfloat16, torch.float16):
                # the GEMM in the inputs' dtype (a float32 one is several times slower on tensor-core GPUs), its
                # product added to the float32 sum unrounded
                torch.addmm(self.grad_weight, g_in.t(), self.hidden[b:e], out_dtype=torch.float32, out=self.grad_weight)
            else:
                self.grad_weight.addmm_(g.t(), self.hidden[b:e].to(self.grad_weight.dtype))
        if self.needs[2]:
            self.grad_bias.add_(g.sum(0, dtype=self.grad_bias.dtype))

    def result(self) -> tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        """(d hidden, d weight, d bias) in the inputs' dtypes; d bias is empty [0] without a bias."""
        gw = None if self.grad_weight is None else self.grad_weight.to(self.weight.dtype)
        return self.grad_hidden, gw, self.grad_bias.to(self.hidden.dtype)
