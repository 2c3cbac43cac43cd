// The operator schemas of torch.ops.bandpo, built from tables.h. The kernels are registered beside them:
// CPU in ops_cpu.cpp, CUDA in ops_cuda.cpp; fake kernels and autograd from Python (python/bandpo/_ops.py; the
// lm_head chunk ops' in python/bandpo/lm_head.py), as in pytorch/extension-cpp's stable variant.
//
// Built with TORCH_TARGET_VERSION (CMakeLists.txt): the module uses only the stable C shim of that torch
// release, so one binary loads in it and in every later one.
#include "args.h"

namespace bandpo {

// The schemas are built from tables.h. ref_logp is a positional-or-keyword argument (it was keyword-only
// before 0.2): torch.library.register_autograd refuses keyword-only Tensor arguments.
STABLE_TORCH_LIBRARY(bandpo, m) {
  m.def(("band_bounds(Tensor old_logp, *" + bound_options_schema() + ") -> (Tensor, Tensor)").c_str());
  m.def(("band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask=None, Tensor? ref_logp=None, *" +
         loss_options_schema() + ") -> (Tensor, Tensor)")
            .c_str());
  m.def(("band_loss_backward(Tensor grad_loss, Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, "
         "Tensor? ref_logp, *" +
         loss_options_schema() + ") -> Tensor")
            .c_str());
  // The lm_head statistics of one chunk of raw logits (bandpo/cpu.h logit_stats_cpu, logit_grad_cpu), for
  // python/bandpo/lm_head.py: float32 raw [rows, vocab] with unit column stride.
  m.def(
      "logit_chunk_stats(Tensor raw, Tensor target, *, int ignore_index=-100, float logit_scale=1., "
      "float softcap=0., float temperature=1.) -> (Tensor, Tensor)");
  // logp and entropy: the chunk's logit_chunk_stats outputs, when kept (then one pass per row, not three).
  m.def(
      "logit_chunk_grad_(Tensor(a!) raw, Tensor target, Tensor? grad_logp, Tensor? grad_entropy, *, "
      "int ignore_index=-100, float logit_scale=1., float softcap=0., float temperature=1., Tensor? logp=None, "
      "Tensor? entropy=None) -> ()");
}

}  // namespace bandpo
