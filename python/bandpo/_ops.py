"""Every Python registration of torch.ops.bandpo, in one place, as in pytorch/extension-cpp.

Every schema is defined in C++ (csrc/torch/schemas.cpp, built from tables.h), and so are the CPU and CUDA kernels
of band_bounds, band_loss, band_loss_backward and the lm_head chunk steps (ops_cpu.cpp, ops_cuda.cpp). Here:
  - the fake kernels of every op (shapes for torch.compile and meta tensors);
  - the kernels of the two ops written in Python, linear_logprob_entropy and its backward (bandpo/lm_head/op.py:
    the chunk loop over torch's GEMMs and the chunk kernels), for every device;
  - the autograd of band_loss and of linear_logprob_entropy (the ABI-stable API has none). band_loss's backward is
    the band_loss_backward op, which recomputes what it needs from the inputs, so nothing N-sized is kept
    between forward and backward beyond the inputs themselves.
Options are passed through by name, never re-listed here (their one definition is tables.h).
"""

from __future__ import annotations

import os

import torch

from . import _C
from ._capi import LOSS_ARRAY_NAMES
from ._tables import METRIC_NAMES
from .lm_head import checks as _lm_checks
from .lm_head import op as _lm_op


def typed_refusal(error: RuntimeError):
    """The TypeError or ValueError a kernel of torch.ops.bandpo meant, for a RuntimeError torch made of it.

    The kernels refuse bad arguments with exceptions that torch up to 2.14 raises as TypeError / ValueError;
    from torch 2.15 on, torch turns every exception of an ABI-stable kernel into RuntimeError with the same
    message. The module records each refusal's type (``_C.last_refusal``), so the Python faces raise the
    type meant. None when ``error`` is no refusal of this thread's last bandpo call.
    """
    kind, message = _C.last_refusal()
    if kind and message == str(error):
        return {"TypeError": TypeError, "ValueError": ValueError}[kind](message)
    return None


def call_op(op, *args, **kwargs):
    """op(*args, **kwargs), its refusals raised as TypeError / ValueError under every torch (typed_refusal)."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as e:
        typed = typed_refusal(e)
        if typed is None:
            raise
        raise typed from None


@torch.library.register_fake("bandpo::band_bounds")
def _band_bounds_fake(old_logp, **options):
    return (
        torch.empty_like(old_logp, memory_format=torch.contiguous_format),
        torch.empty_like(old_logp, memory_format=torch.contiguous_format),
    )


@torch.library.register_fake("bandpo::band_loss")
def _band_loss_fake(logp, old_logp, advantages, mask=None, ref_logp=None, lower=None, upper=None, **options):
    tensors = (old_logp, advantages, mask, ref_logp, lower, upper)
    for name, t in zip(LOSS_ARRAY_NAMES[1:], tensors):
        if t is not None and t.device != logp.device:
            raise ValueError(f"{name} is on {t.device} but logp is on {logp.device}")
    torch._check(old_logp.shape == logp.shape, lambda: f"old_logp must have the shape of logp {tuple(logp.shape)}")
    return logp.new_empty(()), logp.new_empty((len(METRIC_NAMES),), dtype=torch.float32)


@torch.library.register_fake("bandpo::band_loss_backward")
def _band_loss_backward_fake(grad_loss, logp, old_logp, advantages, mask, ref_logp, lower=None, upper=None, **options):
    return torch.empty_like(logp, memory_format=torch.contiguous_format)


# band_loss's autograd. Two ways to register it, the same gradient:
#   - the fast path: a kernel for the Autograd dispatch key, which does what torch.library.register_autograd
#     generates minus one cost: register_autograd re-reads the op's schema on every call to fill in defaults
#     (torch's fill_defaults walks schema.arguments, rebuilt on each access: quadratic in the 16 arguments, about
#     0.2 ms per call measured here, 7% of a 64k-token step). It uses four private torch names
#     (_AutoDispatchBelowAutograd, _after_autograd_keyset, _any_requires_grad, OpOverload.redispatch), the first
#     things a later torch could change;
#   - the public one, torch.library.register_autograd, used wherever the fast path's names are missing or do
#     not behave (checked once at import on a tiny input), and when BANDPO_PUBLIC_AUTOGRAD=1.
# The options are passed through by name as the dispatcher gives them; the backward op has the same defaults
# (tables.h), so nothing needs filling in.
_band_loss = torch.ops.bandpo.band_loss.default


def _backward(ctx, grad_loss, logp_needs_grad):
    # The gradient is logp's alone: old_logp, advantages, the mask, ref_logp and given bounds are data.
    if not logp_needs_grad or grad_loss is None:
        return None
    return torch.ops.bandpo.band_loss_backward(grad_loss, *ctx.saved_tensors, **ctx.options)


class _BandLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keyset, options, *tensors):
        with torch._C._AutoDispatchBelowAutograd():
            loss, metrics = _band_loss.redispatch(keyset & torch._C._after_autograd_keyset, *tensors, **options)
        ctx.save_for_backward(*tensors)
        ctx.options = options
        ctx.mark_non_differentiable(metrics)
        return loss, metrics

    @staticmethod
    def backward(ctx, grad_loss, grad_metrics):
        grad = _backward(ctx, grad_loss, ctx.needs_input_grad[2])  # after keyset and options
        return None, None, grad, *([None] * (len(LOSS_ARRAY_NAMES) - 1))


def _band_loss_autograd(
    keyset, logp, old_logp, advantages, mask=None, ref_logp=None, lower=None, upper=None, **options
):
    # The dispatcher passes keyword-only arguments as kwargs, the others positionally (trailing defaults
    # dropped, hence the Python defaults above). Every call of band_loss passes here, torch.ops' included:
    # refusals leave as TypeError / ValueError under every torch (typed_refusal).
    tensors = (logp, old_logp, advantages, mask, ref_logp, lower, upper)
    try:
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors):
            return _BandLossFunction.apply(keyset, options, *tensors)
        with torch._C._AutoDispatchBelowAutograd():
            return _band_loss.redispatch(keyset & torch._C._after_autograd_keyset, *tensors, **options)
    except RuntimeError as e:
        typed = typed_refusal(e)
        if typed is None:
            raise
        raise typed from None


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    ctx.save_for_backward(*inputs)  # the tensors (LOSS_ARRAY_NAMES); the options are keyword-only
    ctx.options = keyword_only_inputs
    ctx.mark_non_differentiable(output[1])


def _public_backward(ctx, grad_loss, grad_metrics):
    return _backward(ctx, grad_loss, ctx.needs_input_grad[0]), *([None] * (len(LOSS_ARRAY_NAMES) - 1))


def _fast_path_gradient_is_right() -> bool:
    """With the fast kernel registered: a tiny CPU call through the dispatcher gives band_loss_backward's gradient."""
    try:
        x = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
        old = torch.tensor([-1.5, -1.0], dtype=torch.float64)
        adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
        loss, _ = torch.ops.bandpo.band_loss(x, old, adv, delta=0.2)
        (grad,) = torch.autograd.grad(loss, x)
        want = torch.ops.bandpo.band_loss_backward(
            torch.ones((), dtype=torch.float64), x.detach(), old, adv, None, None, None, None, delta=0.2
        )
        return bool(torch.equal(grad, want))
    except Exception:  # a private name gone or changed
        return False


def _register() -> bool:
    """Registers band_loss's autograd; True for the public path."""
    global _lib
    if (
        os.environ.get("BANDPO_PUBLIC_AUTOGRAD", "") in ("", "0")
        and all(
            hasattr(torch._C, n) for n in ("_AutoDispatchBelowAutograd", "_after_autograd_keyset", "_any_requires_grad")
        )
        and hasattr(_band_loss, "redispatch")
    ):
        _lib = torch.library.Library("bandpo", "IMPL")  # noqa: TOR901  (kept alive: the registration lives with it)
        _lib.impl("band_loss", _band_loss_autograd, "Autograd", with_keyset=True)
        if _fast_path_gradient_is_right():
            return False
        _lib._destroy()  # unregisters the kernel
        _lib = None
    torch.library.register_autograd("bandpo::band_loss", _public_backward, setup_context=_setup_context)
    return True


_lib = None
PUBLIC_AUTOGRAD = _register()  # which path serves band_loss's gradient in this process


# The lm_head chunk steps: kernels in C++; their fakes.
@torch.library.register_fake("bandpo::logit_chunk_stats")
def _logit_chunk_stats_fake(raw, target, **options):
    return raw.new_empty(raw.shape[0], dtype=torch.float32), raw.new_empty(raw.shape[0], dtype=torch.float32)


@torch.library.register_fake("bandpo::logit_chunk_grad_")
def _logit_chunk_grad_fake(raw, target, grad_logp, grad_entropy, **options):
    return None


# linear_logprob_entropy and its backward: kernels in Python (the chunk loop), for every device.
torch.library.impl("bandpo::linear_logprob_entropy", "CompositeExplicitAutograd", _lm_op.forward_kernel)
torch.library.impl("bandpo::linear_logprob_entropy_backward", "CompositeExplicitAutograd", _lm_op.backward_kernel)


@torch.library.register_fake("bandpo::linear_logprob_entropy")
def _linear_logprob_entropy_fake(hidden, weight, target, bias=None, *, chunk_size=0, **options):
    _lm_checks.check_head(hidden, weight, target, bias)
    _lm_checks.check_options(_lm_checks.LogitOptions(**options), chunk_size)
    cdt = _lm_checks.compute_dtype(hidden.dtype)
    return hidden.new_empty(hidden.shape[0], dtype=cdt), hidden.new_empty(hidden.shape[0], dtype=cdt)


@torch.library.register_fake("bandpo::linear_logprob_entropy_backward")
def _linear_logprob_entropy_backward_fake(grad_logp, grad_entropy, hidden, weight, target, bias, *rest, **options):
    bias_grad = hidden.new_empty(weight.shape[0] if bias is not None else 0)
    return torch.empty_like(hidden), torch.empty_like(weight), bias_grad


def _linear_logprob_entropy_setup(ctx, inputs, keyword_only_inputs, output):
    hidden, weight, target, bias = inputs
    ctx.save_for_backward(hidden, weight, target, bias, *output)
    ctx.options = keyword_only_inputs  # the transform and chunk_size
    ctx.set_materialize_grads(False)


def _linear_logprob_entropy_backward(ctx, grad_logp, grad_entropy):
    hidden, weight, target, bias, logp, entropy = ctx.saved_tensors
    if grad_logp is None and grad_entropy is None:
        return None, None, None, None
    gh, gw, gb = torch.ops.bandpo.linear_logprob_entropy_backward(
        grad_logp, grad_entropy, hidden, weight, target, bias, logp, entropy, **ctx.options
    )
    needs = ctx.needs_input_grad
    return gh if needs[0] else None, gw if needs[1] else None, None, gb if bias is not None and needs[3] else None


torch.library.register_autograd(
    "bandpo::linear_logprob_entropy", _linear_logprob_entropy_backward, setup_context=_linear_logprob_entropy_setup
)
