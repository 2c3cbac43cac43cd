"""Per-token log-probs and entropy straight from hidden states, without the [tokens, vocab] logits.

    logp, entropy = bandpo.linear_logprob_entropy(hidden, weight, target)   # hidden [N, H], weight [V, H]

is ``log_softmax(z)[target]`` and ``-(softmax(z) * log_softmax(z)).sum(-1)`` for the logits

    raw = hidden @ weight.T + bias
    y   = logit_scale * raw,  then  y = softcap * tanh(y / softcap)  when softcap > 0
    z   = y / temperature

computed over chunks of tokens: each chunk's logits are made, reduced to the per-token statistics, and dropped;
the backward makes them again and turns them into the logits' gradient in place. So the memory beyond inputs,
outputs and gradients is a few chunk-sized buffers (``chunk_size`` tokens by V, float32), whatever N is, where
the plain path keeps [N, V] logits and their log-softmax (2 x 4 GiB in float32 at N = 16k, V = 64k).

The GEMMs are torch's. Each chunk's statistics and its logits-to-gradient step are bandpo's kernels on the CPU
and on CUDA (torch.ops.bandpo.logit_chunk_stats / logit_chunk_grad_: one pass per row, the per-element math in
csrc/include/bandpo/logit_stats.h; the gradient takes each row's sums from the forward's logp and entropy) and
the same math as torch operations elsewhere (other devices, float64, a build without CUDA kernels);
``linear_logprob_entropy_reference`` is the plain float64 path the tests hold both to. Units: log-probs in
nats, entropy in nats, both float32 [N].

``fused_linear_band_loss`` puts ``band_loss`` on top and forms the gradients in the forward (three GEMMs, not
four: the loss's per-token gradient needs only the token and its aggregation weight).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
from torch import Tensor

from .config import resolve_config

# Target of the chunk's float32 logits buffer (bytes) when chunk_size is 0: a few such buffers are live at once.
# On the CPU 64 MiB: the chunk's GEMM [n, H] x [H, V] runs near the full GEMM's rate from n = 512 tokens at
# V = 32768 (measured on a 2-core EPYC at H = 512, float32: 256-token chunks took 1.21x the full GEMM's time,
# 512 1.05x; with 64 MiB the op's fwd+bwd went from 1.26x to 1.17x of the plain path at N 4096, its extra
# memory from 1/16 to 1/11 of the plain path's; 128 MiB gave no more speed and 1/7). On a GPU larger: each
# chunk adds its share of d weight into a float32 [V, H] sum, a pass over V H 8 bytes that costs about
# 220 / chunk tokens of the chunk's three GEMMs on an H200 (bf16), so chunks of 2048 tokens at V = 131072
# (measured there: 512 tokens gave 1.82x the three GEMMs alone, 1024 1.48x, 2048 1.35x); the logits buffer is
# then 512 MiB in bf16.
DEFAULT_CHUNK_BYTES = {"cpu": 64 << 20, "other": 1 << 30}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the float inputs, float64 for float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_tokens(n: int, vocab: int, chunk_size: int, device: torch.device) -> int:
    if chunk_size > 0:
        return chunk_size
    budget = DEFAULT_CHUNK_BYTES["cpu" if device.type == "cpu" else "other"]
    return max(1, min(n, budget // (4 * max(vocab, 1))))


def _check_types(hidden, weight, target, bias) -> None:
    """TypeError naming the argument that is not a tensor (bias may be None)."""
    for name, t in (("hidden", hidden), ("weight", weight), ("target", target), ("bias", bias)):
        if not isinstance(t, Tensor) and not (name == "bias" and t is None):
            raise TypeError(
                f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, got {type(t).__name__}"
            )


def _int64(name: str, value) -> int:
    """value as an int that the op's int64 argument takes, else ValueError naming it (the schema's own message for
    an integer beyond int64 names neither the argument nor the range)."""
    v = int(value)
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f"{name} must fit in int64, got {v}")
    return v


def _check(hidden, weight, target, bias, temperature, softcap, logit_scale, chunk_size) -> None:
    """Validates shapes, dtypes, devices and options before any work, naming the argument."""
    _check_types(hidden, weight, target, bias)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [tokens, hidden_size], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [vocab, hidden_size] = [V, {hidden.shape[1]}], got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (vocab size 0)")
    if target.dim() != 1 or target.shape[0] != hidden.shape[0]:
        raise ValueError(f"target must be 1-D [tokens] = [{hidden.shape[0]}], got shape {tuple(target.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64, got {target.dtype}")
    if hidden.dtype not in _FLOATS:
        raise ValueError(f"hidden must be float32, bfloat16, float16 or float64, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    for name, t in (("weight", weight), ("target", target)):
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must be [vocab] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias must have hidden's dtype {hidden.dtype}, got {bias.dtype}")
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {hidden.device}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: none), got {softcap}")
    if not (math.isfinite(logit_scale) and logit_scale != 0):
        raise ValueError(f"logit_scale must be a finite nonzero number, got {logit_scale}")
    if chunk_size < 0:
        raise ValueError(
            f"chunk_size must be >= 0 (0: about {DEFAULT_CHUNK_BYTES['cpu'] >> 20} MiB of logits on the CPU, "
            f"{DEFAULT_CHUNK_BYTES['other'] >> 20} MiB elsewhere), got {chunk_size}"
        )


def _check_targets(target: Tensor, vocab: int, ignore_index: int) -> Optional[Tensor]:
    """Positions whose target is neither in [0, vocab) nor ignore_index. On the CPU they raise here (naming the
    first index; then None is returned); on an accelerator that would need a host sync, so the positions are
    returned and give NaN log-prob and entropy instead (_nan_where_bad)."""
    bad = ((target < 0) | (target >= vocab)) & (target != ignore_index)
    if target.device.type != "cpu":
        return bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target[{i}] = {int(target[i])} is outside [0, {vocab}) and is not ignore_index ({ignore_index})"
        )
    return None


def _uses_kernels(x: Tensor) -> bool:
    """Whether a chunk's statistics and gradient run in bandpo's kernels (torch.ops.bandpo.logit_chunk_stats,
    logit_chunk_grad_: one pass per row, csrc/include/bandpo/logit_stats.h): on the CPU and on CUDA (where the
    wheel has its CUDA kernels), for float inputs other than float64 (x: the hidden states or the chunk's raw
    logits). Elsewhere (other devices, float64) the same math runs as torch operations below."""
    if x.dtype == torch.float64:
        return False
    return x.device.type == "cpu" or (x.device.type == "cuda" and _has_cuda_kernels())


@functools.cache
def _has_cuda_kernels() -> bool:
    from . import has_cuda_kernels

    return has_cuda_kernels()


def _raw_logits(h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """hidden @ weight.T + bias in the inputs' dtype (as the model's lm_head would: float32 accumulation in
    torch's kernels), then in the compute dtype (float32; float64 for float64), except where the CUDA kernels
    read the GEMM's output as it is (bfloat16 / float16: half the bytes, no conversion pass; the gradient then
    comes back in that dtype, the one its two GEMMs take)."""
    raw = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
    if raw.is_cuda and _uses_kernels(raw):
        return raw
    return raw.to(_compute_dtype(h.dtype))


def _logit_chunks(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], chunk_size: int):
    """(b, e, raw) chunk after chunk: raw = the raw logits of rows [b, e) of hidden (_raw_logits). The one place
    the tokens are cut into chunks, for the op's forward, its backward and the fused loss alike."""
    n = hidden.shape[0]
    step = _chunk_tokens(n, weight.shape[0], chunk_size, hidden.device)
    for b in range(0, n, step):
        e = min(n, b + step)
        yield b, e, _raw_logits(hidden[b:e], weight, bias)


def _nan_where_bad(values: tuple[Tensor, ...], bad: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Rows with an out-of-range target read NaN off the CPU, where checking them would sync the host (the CPU
    raised in _check_targets already; bad is None there)."""
    return values if bad is None else tuple(v.masked_fill(bad, math.nan) for v in values)


def _transform_(raw: Tensor, temperature: float, softcap: float, logit_scale: float) -> tuple[Tensor, Optional[Tensor]]:
    """The chunk's logits z [n, V] from its raw logits (torch path; in raw's buffer), and dz/draw where it is not
    a constant (softcap), else None."""
    z = raw
    dz = None
    if softcap > 0:
        z.mul_(logit_scale / softcap).tanh_()  # t = tanh(scale raw / softcap)
        dz = torch.mul(z, z).neg_().add_(1.0).mul_(logit_scale / temperature)  # (1 - t^2) scale / T
        z.mul_(softcap / temperature)
    elif logit_scale != 1.0 or temperature != 1.0:
        z.mul_(logit_scale / temperature)
    return z, dz


def _chunk_stats(z: Tensor, t: Tensor, ignored: Tensor) -> tuple[Tensor, Tensor]:
    """logp and entropy of each row of z (float32 [n, V], consumed: overwritten with lse - z)."""
    # a logit of +inf leaves no distribution: NaN, as log_softmax and the kernels give (logsumexp says +inf)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    lse.masked_fill_(lse == math.inf, math.nan)
    z_target = z.gather(1, t.clamp(0, z.shape[1] - 1).unsqueeze(1)).squeeze(1)
    p = torch.sub(z, lse).exp_()
    # entropy = sum P (lse - z): non-negative terms, no cancellation between lse and E[z]; a logit of -inf (P = 0)
    # adds 0, the limit of p log p, not 0 * inf = NaN (logit_stats.h logit_offset)
    entropy = torch.einsum("nv,nv->n", p, z.sub_(lse).neg_().masked_fill_(p == 0, 0.0))
    logp = (z_target - lse.squeeze(1)).clamp_max(0.0)  # rounding may not make a probability above 1
    zero = torch.zeros((), device=z.device)
    return torch.where(ignored, zero, logp), torch.where(ignored, zero, entropy)


def linear_logprob_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    softcap: float = 0.0,
    logit_scale: float = 1.0,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """The plain path in float64 with the full [N, V] logits (for tests): (logp, entropy), float64 [N]."""
    raw = hidden.double() @ weight.double().t()
    if bias is not None:
        raw = raw + bias.double()
    y = logit_scale * raw
    if softcap > 0:
        y = softcap * torch.tanh(y / softcap)
    logsm = torch.log_softmax(y / temperature, dim=1)
    ignored = target == ignore_index
    t = torch.where(ignored, torch.zeros_like(target), target)
    logp = logsm.gather(1, t.unsqueeze(1)).squeeze(1)
    p = logsm.exp()
    entropy = -(p * torch.where(p > 0, logsm, 0.0)).sum(1)  # p log p -> 0 at p = 0 (a logit of -inf)
    return torch.where(ignored, 0.0, logp), torch.where(ignored, 0.0, entropy)


@torch.library.custom_op("bandpo::linear_logprob_entropy", mutates_args=())
def _linear_logprob_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor],
    temperature: float,
    softcap: float,
    logit_scale: float,
    ignore_index: int,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    _check(hidden, weight, target, bias, temperature, softcap, logit_scale, chunk_size)
    n, vocab = hidden.shape[0], weight.shape[0]
    bad = _check_targets(target, vocab, ignore_index)
    logp = torch.empty(n, dtype=_compute_dtype(hidden.dtype), device=hidden.device)
    entropy = torch.empty(n, dtype=_compute_dtype(hidden.dtype), device=hidden.device)
    for b, e, raw in _logit_chunks(hidden, weight, bias, chunk_size):
        logp[b:e], entropy[b:e] = _chunk_logp_entropy(raw, target[b:e], ignore_index, temperature, softcap, logit_scale)
    return _nan_where_bad((logp, entropy), bad)


@torch.library.register_fake("bandpo::logit_chunk_stats")
def _(raw, target, *, ignore_index=-100, logit_scale=1.0, softcap=0.0, temperature=1.0):
    return raw.new_empty(raw.shape[0], dtype=torch.float32), raw.new_empty(raw.shape[0], dtype=torch.float32)


@torch.library.register_fake("bandpo::logit_chunk_grad_")
def _(
    raw,
    target,
    grad_logp,
    grad_entropy,
    *,
    ignore_index=-100,
    logit_scale=1.0,
    softcap=0.0,
    temperature=1.0,
    logp=None,
    entropy=None,
):
    return None


@_linear_logprob_entropy.register_fake
def _(hidden, weight, target, bias, temperature, softcap, logit_scale, ignore_index, chunk_size):
    _check(hidden, weight, target, bias, temperature, softcap, logit_scale, chunk_size)
    n = hidden.shape[0]
    cdt = _compute_dtype(hidden.dtype)
    return hidden.new_empty(n, dtype=cdt), hidden.new_empty(n, dtype=cdt)


@torch.library.custom_op("bandpo::linear_logprob_entropy_backward", mutates_args=())
def _linear_logprob_entropy_backward(
    grad_logp: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor],
    temperature: float,
    softcap: float,
    logit_scale: float,
    ignore_index: int,
    chunk_size: int,
    logp: Tensor,
    entropy: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_hidden, grad_weight, grad_bias); grad_bias is empty [0] without a bias. A missing grad_logp or
    grad_entropy counts as 0 (and the entropy's terms are then not computed). logp and entropy are the forward's
    outputs: each row's softmax sums follow from them, so a chunk's gradient is one pass over its logits."""
    grads = _GradAccumulator(hidden, weight, bias)
    transform = (temperature, softcap, logit_scale)
    for b, e, raw in _logit_chunks(hidden, weight, bias, chunk_size):
        g = _chunk_logit_grad_(
            raw,
            target[b:e],
            None if grad_logp is None else grad_logp[b:e],
            None if grad_entropy is None else grad_entropy[b:e],
            ignore_index,
            *transform,
            logp=logp[b:e],
            entropy=entropy[b:e],
        )
        grads.add(g, b, e)
    return grads.result()


def _chunk_logp_entropy(
    raw: Tensor,
    t: Tensor,
    ignore_index: int,
    temperature: float,
    softcap: float,
    logit_scale: float,
    keep_raw: bool = False,
) -> tuple[Tensor, Tensor]:
    """logp and entropy [n] of the chunk's raw logits [n, V] (compute dtype). raw is consumed unless keep_raw."""
    if _uses_kernels(raw):
        return torch.ops.bandpo.logit_chunk_stats(
            raw, t, ignore_index=ignore_index, logit_scale=logit_scale, softcap=softcap, temperature=temperature
        )
    z, _ = _transform_(raw.clone() if keep_raw else raw, temperature, softcap, logit_scale)
    return _chunk_stats(z, t, t == ignore_index)


def _chunk_logit_grad_(
    raw: Tensor,
    t: Tensor,
    grad_logp: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    ignore_index: int,
    temperature: float,
    softcap: float,
    logit_scale: float,
    logp: Optional[Tensor] = None,
    entropy: Optional[Tensor] = None,
) -> Tensor:
    """d loss / d raw logits [n, V] of the chunk (in raw's buffer where it can), from the upstream gradients of
    its logp and entropy ([n] each, or None for 0). logp and entropy: the chunk's own outputs (or None), from
    which each row's log-sum-exp and mean logit follow without a pass over the row."""
    if _uses_kernels(raw):
        torch.ops.bandpo.logit_chunk_grad_(
            raw,
            t,
            None if grad_logp is None else grad_logp.float().contiguous(),
            None if grad_entropy is None else grad_entropy.float().contiguous(),
            ignore_index=ignore_index,
            logit_scale=logit_scale,
            softcap=softcap,
            temperature=temperature,
            logp=logp,
            entropy=entropy,
        )
        return raw
    cdt, vocab = raw.dtype, raw.shape[1]
    ignored = t == ignore_index
    live = (~ignored).to(cdt)
    z, dz = _transform_(raw, temperature, softcap, logit_scale)
    # dlogp/dz = onehot - P; dH/dz = -P (z - E[z]). g_z = g_logp (onehot - P) - g_H P (z - E[z]).
    if logp is not None and entropy is not None:
        # from the outputs (logit_stats.h logit_row_grad_from_outputs): lse = z_target - logp, E[z] = lse - H
        z.sub_(z.gather(1, t.clamp(0, vocab - 1).unsqueeze(1)).sub_(logp.to(cdt).unsqueeze(1)))  # z - lse
        p = torch.exp(z)
        ez = entropy.to(cdt).neg().unsqueeze(1)  # E[z] - lse
    else:
        # Shifted by the row's max first: E[z] is then a sum of terms near 0 for the likely tokens (unshifted,
        # float32 sums of logits around 10 lost 2e-5 of E[z], 1e-4 of the gradient).
        z.sub_(z.amax(dim=1, keepdim=True))
        p = torch.exp(z)
        p.div_(p.sum(dim=1, keepdim=True))
        ez = None
    gl = (grad_logp.to(cdt) * live).unsqueeze(1) if grad_logp is not None else None
    gh = (grad_entropy.to(cdt) * live).unsqueeze(1) if grad_entropy is not None else None
    if gh is not None:
        z.masked_fill_(p == 0, 0.0)  # a logit of -inf (P = 0) has no entropy gradient, not 0 * -inf = NaN
        if ez is None:
            ez = torch.einsum("nv,nv->n", p, z).unsqueeze(1)
        g = z.sub_(ez).mul_(p).mul_(gh).neg_()  # -g_H P (z - E[z]), in z's buffer
        if gl is not None:
            g.addcmul_(p, gl, value=-1.0)
    else:
        g = p.mul_(gl).neg_() if gl is not None else p.zero_()
    del p
    if gl is not None:
        g.scatter_add_(1, t.clamp(0, vocab - 1).unsqueeze(1), gl)
    if dz is not None:
        g.mul_(dz)
    elif logit_scale != 1.0 or temperature != 1.0:
        g.mul_(logit_scale / temperature)
    # an ignored row's P from the outputs is not a distribution (its logp and entropy are 0): inf there times 0
    return g.masked_fill_(ignored.unsqueeze(1), 0.0)


class _GradAccumulator:
    """d hidden, d weight and d bias, chunk by chunk from each chunk's d loss / d raw logits g [e - b, V]: its rows
    of d hidden, and its share of d weight and d bias (accumulated in the compute dtype, chunk after chunk in
    order: the same bits for every run). A gradient not wanted (needs[i] False) is neither computed nor kept."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], needs=(True, True, True)):
        cdt = _compute_dtype(hidden.dtype)
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
        gw = None if self.grad_weight is None else self.grad_weight.to(self.weight.dtype)
        return self.grad_hidden, gw, self.grad_bias.to(self.hidden.dtype)


@_linear_logprob_entropy_backward.register_fake
def _(
    grad_logp,
    grad_entropy,
    hidden,
    weight,
    target,
    bias,
    temperature,
    softcap,
    logit_scale,
    ignore_index,
    chunk_size,
    logp,
    entropy,
):
    return (
        torch.empty_like(hidden),
        torch.empty_like(weight),
        hidden.new_empty(weight.shape[0] if bias is not None else 0),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, target, bias, temperature, softcap, logit_scale, ignore_index, chunk_size = inputs
    ctx.save_for_backward(hidden, weight, target, bias, *output)
    ctx.options = (temperature, softcap, logit_scale, ignore_index, chunk_size)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_logp, grad_entropy):
    hidden, weight, target, bias, logp, entropy = ctx.saved_tensors
    if grad_logp is None and grad_entropy is None:
        return None, None, None, None, None, None, None, None, None
    gh, gw, gb = _linear_logprob_entropy_backward(
        grad_logp, grad_entropy, hidden, weight, target, bias, *ctx.options, logp, entropy
    )
    return (
        gh if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None,
        gb if bias is not None and ctx.needs_input_grad[3] else None,
        None,
        None,
        None,
        None,
        None,
    )


_linear_logprob_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_logprob_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    softcap: float = 0.0,
    logit_scale: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int = 0,
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target token and the entropy of each position's distribution, from hidden states.

    Args:
        hidden: [N, H] float32, bfloat16 or float16 (float64 too, computed in float64: for gradcheck); any
            strides.
        weight: [V, H] the lm_head weight, hidden's dtype and device.
        target: [N] int64 token ids in [0, V), or ``ignore_index``.
        bias: optional [V].
        temperature: z = logits / temperature (default 1).
        softcap: logits -> softcap * tanh(logits / softcap) before the temperature; 0 (default) for none.
        logit_scale: multiplies the logits first (default 1).
        ignore_index: targets equal to it give logp = entropy = 0 and no gradient (default -100).
        chunk_size: tokens per chunk; 0 (default) picks about 64 MiB of float32 logits per chunk on the CPU,
            1 GiB on a GPU (DEFAULT_CHUNK_BYTES).

    Returns:
        (logp, entropy): float32 [N] each (float64 for float64 inputs), in nats; logp <= 0. Differentiable
        w.r.t. hidden, weight and bias through both outputs. A row with a NaN or +inf logit gives NaN (as
        log_softmax does); a logit of -inf (e.g. a bias of -inf) has probability 0.

    >>> import torch, bandpo
    >>> h, w = torch.randn(6, 16), torch.randn(50, 16)
    >>> logp, ent = bandpo.linear_logprob_entropy(h, w, torch.tensor([1, 2, 3, 4, 5, -100]))
    >>> ref = torch.log_softmax(h @ w.t(), dim=1)
    >>> bool(torch.allclose(logp[:5], ref[torch.arange(5), torch.tensor([1, 2, 3, 4, 5])], atol=1e-5))
    True
    >>> float(logp[5]), float(ent[5])
    (0.0, 0.0)
    """
    _check_types(hidden, weight, target, bias)
    hidden, weight, bias = _under_autocast(hidden, weight, bias)
    with _autocast_off(hidden.device.type):
        return _linear_logprob_entropy(
            hidden,
            weight,
            target,
            bias,
            float(temperature),
            float(softcap),
            float(logit_scale),
            _int64("ignore_index", ignore_index),
            _int64("chunk_size", chunk_size),
        )


def _under_autocast(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """Under autocast the head runs in autocast's dtype, as a plain lm_head would: hidden, weight and bias are cast
    to it here (differentiably: the gradients reach the float32 parameters), and the op then runs with autocast
    off (_autocast_off), so that its forward and its backward (which autocast never covers) compute the same
    logits."""
    device = hidden.device.type
    if not (
        torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device) and hidden.is_floating_point()
    ):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _autocast_off(device_type: str):
    """Autocast off for the op's call, on devices that have autocast (not "meta", for one)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _loss_weights(old_logp: Tensor, mask: Optional[Tensor], loss_kwargs: dict, normalizer: Optional[float]) -> Tensor:
    """a [like old_logp]: each token's weight in the loss, loss = sum_n a_n l_n with l_n the token's own loss
    (its mask weight over the aggregation's denominator: sum(mask), B, B T, the row's weight times B, or the
    normalizer). Asked of the op itself, so that the aggregation rules stay written once (aggregation.h): at
    logp = old_logp, A = -1 and no KL penalty or dual clip, the token's loss is -A r = r, whose slope in logp is
    exactly 1 (r = 1 lies inside every band), so band_loss_backward returns a_n."""
    kwargs = {**loss_kwargs, "kl_coef": 0.0, "dual_clip": None}
    one = torch.ones((), dtype=old_logp.dtype, device=old_logp.device)
    return torch.ops.bandpo.band_loss_backward(
        one, old_logp, old_logp, -torch.ones_like(old_logp), mask, None, normalizer=normalizer, **kwargs
    )


class _FusedLinearBandLoss(torch.autograd.Function):
    """The head and the loss with the gradients formed in the forward, chunk by chunk: each chunk's logits are made
    once, reduced to logp and entropy, turned into d loss / d logits right away (the loss's per-token gradient
    needs only the token and its weight a_n) and folded into d hidden, d weight, d bias by two GEMMs. Three GEMMs
    in all, where the op's own backward recomputes the logits (four). The backward scales them by d out / d loss."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, run):
        loss, logp, entropy, grads = run(hidden, weight, bias, ctx.needs_input_grad[:3])
        ctx.mark_non_differentiable(logp, entropy)
        ctx.save_for_backward(*grads)
        ctx.used = False
        return loss, logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        if ctx.used:
            raise RuntimeError(
                "fused_linear_band_loss: its gradients were scaled in place by a first backward; a "
                "second backward through the same graph (retain_graph=True) is not supported"
            )
        ctx.used = True
        # In place: the saved gradients are ours, and the same size as what is returned.
        return tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors) + (None,)


def fused_linear_band_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Optional[Tensor] = None,
    config=None,
    *,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    softcap: float = 0.0,
    logit_scale: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int = 0,
    normalizer: Optional[float] = None,
    ref_logp: Optional[Tensor] = None,
    entropy_coef: float = 0.0,
    **overrides,
):
    """The lm_head and the BandPO loss in one call: the new policy's log-probs as :func:`linear_logprob_entropy`
    gives them, the loss over them as :func:`bandpo.band_loss` gives it, minus ``entropy_coef`` times the entropy
    aggregated as the loss is (verl's entropy bonus).

    Where a gradient is wanted, it is formed in the forward, chunk by chunk, from each chunk's logits made once:
    three GEMMs of [N, H] x [H, V] in all (the plain path's count; the op's backward would recompute the logits,
    a fourth), and the memory beyond inputs and gradients stays a few chunks. The gradients are kept until
    backward, which scales them by the loss's upstream gradient in place (one backward per graph).

    Args:
        hidden: [B, T, H] (or [N, H]) final hidden states; weight [V, H]; target [B, T] (or [N]) sampled ids.
        old_logp, advantages, mask, config, normalizer, ref_logp, overrides: as for :func:`bandpo.band_loss`,
            shaped like target. Positions with target == ignore_index must be masked out (their logp is 0).
        bias, temperature, softcap, logit_scale, ignore_index, chunk_size: as for :func:`linear_logprob_entropy`.
        entropy_coef: weight of the entropy bonus (default 0: none); the loss is band_loss - entropy_coef *
            (entropy aggregated with the loss's weights).

    Returns a :class:`bandpo.BandLoss` whose metrics also hold ``entropy``: the mask-weighted mean entropy
    (nats, detached; 0-d float32). The loss is computed from log-probs in old_logp's dtype, as band_loss's;
    the gradient in float32 (float64 for float64).
    """
    from .api import BandLoss, band_loss

    cfg = resolve_config(config, overrides)
    _check_types(hidden, weight, target, bias)
    if not math.isfinite(entropy_coef):
        raise ValueError(f"entropy_coef must be a finite number, got {entropy_coef}")
    if not isinstance(old_logp, Tensor):
        raise TypeError(f"old_logp must be a torch.Tensor, got {type(old_logp).__name__}")
    if old_logp.shape != target.shape:
        raise ValueError(f"old_logp must have target's shape {tuple(target.shape)}, got {tuple(old_logp.shape)}")
    # The loss's own checks (shapes, dtypes, values, options; the op's messages) on its inputs before the head's
    # GEMMs, not after them: band_loss with log-probs of 0 standing in for the head's (old_logp's shape and dtype).
    band_loss(torch.zeros_like(old_logp), old_logp, advantages, mask, cfg, normalizer=normalizer, ref_logp=ref_logp)
    ignore_index, chunk_size = _int64("ignore_index", ignore_index), _int64("chunk_size", chunk_size)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_target = target.reshape(-1)
    options = (float(temperature), float(softcap), float(logit_scale))

    def finish(logp: Tensor, entropy: Tensor, weights: Optional[Tensor]):
        logp = logp.view(target.shape).to(old_logp.dtype)
        out = band_loss(logp, old_logp, advantages, mask, cfg, normalizer=normalizer, ref_logp=ref_logp)
        ent = entropy.detach().view(target.shape)
        w = torch.ones_like(ent, dtype=torch.float32) if mask is None else mask.to(torch.float32)
        mean_entropy = (ent.float() * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)
        loss = out.loss.detach()
        if entropy_coef != 0.0:
            if weights is None:
                weights = _loss_weights(
                    old_logp.to(ent.dtype), _mask_as(mask, ent.dtype), cfg.loss_kwargs(), normalizer
                )
            loss = loss - (entropy_coef * (weights.view(target.shape) * ent).sum()).to(loss.dtype)
        return loss, {**out.metrics, "entropy": mean_entropy}, out.metrics_tensor

    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not wants_grad:
        logp, entropy = linear_logprob_entropy(
            flat_hidden,
            weight,
            flat_target,
            bias,
            temperature=temperature,
            softcap=softcap,
            logit_scale=logit_scale,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
        )
        return BandLoss(*finish(logp, entropy, None))

    def run(h, w, b, needs):
        flat_hidden = h.reshape(-1, h.shape[-1])
        _check(flat_hidden, w, flat_target, b, *options, chunk_size)
        n, vocab = flat_hidden.shape[0], w.shape[0]
        bad = _check_targets(flat_target, vocab, ignore_index)  # raises on the CPU; NaN rows elsewhere
        cdt = _compute_dtype(flat_hidden.dtype)
        old = old_logp.reshape(-1).to(cdt)
        # each token's loss weight, then the token's gradient in each chunk: the op's own backward on the chunk
        # with a_n as its mask and the denominator 1 gives a_n dl_n/dlogp
        weights = _loss_weights(old_logp.to(cdt), _mask_as(mask, cdt), cfg.loss_kwargs(), normalizer).reshape(-1)
        adv = (
            (
                advantages.reshape(target.shape[0], *([1] * (target.dim() - 1)))
                if advantages.dim() < target.dim()
                else advantages
            )
            .expand(target.shape)
            .reshape(-1)
            .to(cdt)
        )
        ref = None if ref_logp is None else ref_logp.reshape(-1).to(cdt)
        chunk_kwargs = {**cfg.loss_kwargs(), "agg": "token-mean"}
        one = torch.ones((), dtype=cdt, device=flat_hidden.device)
        logp = torch.empty(n, dtype=cdt, device=flat_hidden.device)
        entropy = torch.empty(n, dtype=cdt, device=flat_hidden.device)
        grads = _GradAccumulator(flat_hidden, w, b, needs)
        for s, e, raw in _logit_chunks(flat_hidden, w, b, chunk_size):
            t = flat_target[s:e]
            lp, ent = _nan_where_bad(
                _chunk_logp_entropy(raw, t, ignore_index, *options, keep_raw=True), None if bad is None else bad[s:e]
            )
            logp[s:e] = lp
            entropy[s:e] = ent
            g_logp = torch.ops.bandpo.band_loss_backward(
                one,
                lp,
                old[s:e],
                adv[s:e],
                weights[s:e],
                None if ref is None else ref[s:e],
                normalizer=1.0,
                **chunk_kwargs,
            )
            g_entropy = weights[s:e] * -entropy_coef if entropy_coef != 0.0 else None
            grads.add(_chunk_logit_grad_(raw, t, g_logp, g_entropy, ignore_index, *options, logp=lp, entropy=ent), s, e)
        loss, metrics, metrics_tensor = finish(logp, entropy, weights)
        run.metrics = (metrics, metrics_tensor)
        gh, gw, gb = grads.result()
        gh = gh.reshape(h.shape) if gh is not None else None
        return loss, logp, entropy, (gh, gw, gb if bias is not None and needs[2] else None)

    hidden, weight, bias = _under_autocast(hidden, weight, bias)
    with _autocast_off(hidden.device.type):
        loss, _, _ = _FusedLinearBandLoss.apply(hidden, weight, bias, run)
    return BandLoss(loss, *run.metrics)


def _mask_as(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """The mask as band_loss takes it beside logp of `dtype`: bool stays bool, weights in that dtype."""
    return mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
