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
``fused_linear_band_loss`` puts ``band_loss`` on top and forms the gradients in the forward (three GEMMs, not
four: the loss's per-token gradient needs only the token and its aggregation weight).

One job a module:
    checks      arguments and options, named in each error; the chunk size budget
    chunks      the chunk loop: torch's GEMM, then bandpo's chunk kernels (torch.ops.bandpo.logit_chunk_stats /
                logit_chunk_grad_, the math in csrc/include/bandpo/lm_head.h) or torch_math; the gradient sums
    torch_math  the same chunk math as torch operations (float64, other devices, a build without CUDA kernels)
    reference   the plain float64 path the tests hold both to
    op          torch.ops.bandpo.linear_logprob_entropy's kernels and the public function (registered with
                every other op's fake kernel and autograd in bandpo/_ops.py)
    fused       fused_linear_band_loss
Units: log-probs and entropy in nats, float32 [N] (float64 for float64 inputs).
"""

from .checks import DEFAULT_CHUNK_BYTES, LogitOptions
from .fused import fused_linear_band_loss
from .op import linear_logprob_entropy
from .reference import linear_logprob_entropy_reference

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "LogitOptions",
    "fused_linear_band_loss",
    "linear_logprob_entropy",
    "linear_logprob_entropy_reference",
]
