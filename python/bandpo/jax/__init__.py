"""bandpo in JAX: the Band bounds, the fused BandPO loss and the lm_head's log-probs as XLA FFI calls, under jax.jit,
jax.grad and jax.vmap.

    import jax, jax.numpy as jnp
    import bandpo.jax as bj
    loss, metrics = bj.band_loss(logp, old_logp, advantages, mask)                 # Band-KL, delta 0.05
    grad = jax.grad(lambda x: bj.band_loss(x, old_logp, advantages, mask)[0])(logp)

The kernels are the core library's CPU kernels (the torch op's on the CPU, bit for bit), called by XLA through
the handlers of csrc/jax (libbandpo_jax.so, built against the FFI headers of the jaxlib present when the wheel
was built; the FFI's binary interface is stable across jaxlib releases). The gradient is the core's analytic
backward (band_loss_backward), through jax.custom_vjp; nothing N-sized is kept between forward and backward
beyond the inputs. Arguments, shapes, dtypes and options follow the torch op's rules and are checked when the
call is traced, by the same C ABI, with the same messages (TypeError / ValueError naming the argument). A bad
value at a valid position (NaN, a log-probability above 1e-6, an infinite advantage) is found when the call runs:
jax raises its runtime error with the core's message. Options are static (part of the traced call), except
``normalizer``, which may also be an array computed in the program: the global count of a data-parallel step,
a ``jax.lax.psum`` of the local counts inside ``shard_map`` (its range is then checked when the call runs).

Importing bandpo never imports jax; importing bandpo.jax needs jax and registers the handlers for the CPU and,
where the wheel has the CUDA kernels, for CUDA (csrc/jax/ffi_cuda.cpp: on XLA's stream, no host sync; a
``normalizer`` computed in the program is CPU-only). The CUDA handlers are compiled in CI but have not yet run on
a GPU.
"""

from ._ffi import library_path
from .lm_head import linear_logprob_entropy
from .loss import BandLoss, band_bounds, band_loss

__all__ = ["BandLoss", "band_bounds", "band_loss", "library_path", "linear_logprob_entropy"]
