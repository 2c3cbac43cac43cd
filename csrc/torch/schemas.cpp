// The operator schemas of torch.ops.bandpo, every one of them, built from tables.h. The C++ kernels are
// registered from one list (args.h BANDPO_KERNEL_OPS): CPU in ops_cpu.cpp, CUDA in ops_cuda.cpp; the kernels of
// the ops written in Python, every fake kernel and the autograd in python/bandpo/_ops.py, as in
// pytorch/extension-cpp's stable variant.
//
// Built with TORCH_TARGET_VERSION (CMakeLists.txt): the module uses only the stable C shim of that torch
// release, so one binary loads in it and in every later one.
#include "args.h"

namespace bandpo {

// The schemas are built from tables.h. ref_logp, lower and upper are positional-or-keyword arguments (ref_logp was
// keyword-only before 0.2): torch.library.register_autograd refuses keyword-only Tensor arguments.
STABLE_TORCH_LIBRARY(bandpo, m) {
  m.def(("band_bounds(Tensor old_logp, *" + bound_options_schema() + ") -> (Tensor, Tensor)").c_str());
  m.def(("band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask=None, Tensor? ref_logp=None, "
         "Tensor? lower=None, Tensor? upper=None, *" +
         loss_options_schema() + ") -> (Tensor, Tensor)")
            .c_str());
  m.def(("band_loss_backward(Tensor grad_loss, Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, "
         "Tensor? ref_logp, Tensor? lower=None, Tensor? upper=None, *" +
         loss_options_schema() + ") -> Tensor")
            .c_str());
  // The lm_head statistics of one chunk of raw logits (bandpo/cpu.h logit_stats_cpu, logit_grad_cpu), for
  // python/bandpo/lm_head: float32 raw [rows, vocab] with unit column stride.
  const std::string logit = logit_options_schema();
  m.def(("logit_chunk_stats(Tensor raw, Tensor target, *" + logit + ") -> (Tensor, Tensor)").c_str());
  // logp and entropy: the chunk's logit_chunk_stats outputs, when kept (then one pass per row, not three).
  m.def(("logit_chunk_grad_(Tensor(a!) raw, Tensor target, Tensor? grad_logp, Tensor? grad_entropy, *" + logit +
         ", Tensor? logp=None, Tensor? entropy=None) -> ()")
            .c_str());
  // The lm_head from hidden states, chunk by chunk (kernels in Python: python/bandpo/lm_head/op.py).
  m.def(("linear_logprob_entropy(Tensor hidden, Tensor weight, Tensor target, Tensor? bias=None, *" + logit +
         ", int chunk_size=0) -> (Tensor, Tensor)")
            .c_str());
  m.def(("linear_logprob_entropy_backward(Tensor? grad_logp, Tensor? grad_entropy, Tensor hidden, Tensor weight, "
         "Tensor target, Tensor? bias, Tensor logp, Tensor entropy, *" +
         logit + ", int chunk_size=0) -> (Tensor, Tensor, Tensor)")
            .c_str());
}

}  // namespace bandpo
