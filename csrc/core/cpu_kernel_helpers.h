// Internal: what the CPU hot loops of the cpu_kernels_*.inc parts share (mask weights, typed inputs, a
// segment's advantages). Included only by those parts, which are compiled once per instruction set: everything
// here has internal linkage (an unnamed namespace), so each instruction set's copy stays its own.
#pragma once

#include <cstdint>
#include <type_traits>

#include "bandpo/bounds.h"
#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"
#include "bandpo/kl_table.h"
#include "bandpo/options.h"
#include "dispatch.h"

namespace bandpo {
namespace detail {
namespace {

template <class C, MaskKind kMask, class T>
inline C mask_weight(const void* mask, int64_t i) {
  if constexpr (kMask == MaskKind::none) {
    return C(1);
  } else if constexpr (kMask == MaskKind::boolean) {
    return static_cast<const uint8_t*>(mask)[i] != 0 ? C(1) : C(0);
  } else {
    return load<C>(static_cast<const T*>(mask), i);
  }
}

// The token loops run over blocks of this many tokens, whose per-token values stay in L1 (stack arrays).
constexpr int64_t kBlockTokens = 512;

// w[j] = the weight of token begin + j, for j in [0, n) (n <= kBlockTokens), in the compute type: a small loop
// per mask kind into a buffer that the heavy token loops then read. Those loops are thereby compiled once for
// all mask kinds rather than once for each: a third of their instances, and of the build's longest steps.
template <class C, class T>
void mask_weights(MaskKind kind, const void* mask, int64_t begin, int64_t n, C* w) {
  with_mask_kind(kind, [&](auto k) {
    constexpr MaskKind kMask = decltype(k)::value;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) w[j] = mask_weight<C, kMask, T>(mask, begin + j);
  });
}

// The table, where the compute type reads one (float); double always solves.
template <class C>
void attach_kl_table(BoundParams<C>& prm, const KlTable& kl_table) {
  if constexpr (std::is_same<C, float>::value) prm.kl_table = kl_table;
}

// Inputs of one segment as typed pointers; a missing ref_logp aliases logp, which makes every KL estimator
// exactly 0 without a branch in the loop.
template <class T>
struct TypedInputs {
  const T* logp;
  const T* old_logp;
  const T* advantages;
  const T* ref_logp;
  const void* mask;
  const T* lower;  // null unless given
  const T* upper;

  explicit TypedInputs(const LossInputs& in)
      : logp(static_cast<const T*>(in.logp)),
        old_logp(static_cast<const T*>(in.old_logp)),
        advantages(static_cast<const T*>(in.advantages)),
        ref_logp(in.ref_logp ? static_cast<const T*>(in.ref_logp) : static_cast<const T*>(in.logp)),
        mask(in.mask),
        lower(static_cast<const T*>(in.lower)),
        upper(static_cast<const T*>(in.upper)) {}
};

// Advantages of one segment (tokens [begin, end) of row `row`) as a stride-1 array indexed by i - offset:
// per-token advantages as given; one value per row repeated into `buffer` (at most kItemTokens values). One
// loop then serves both layouts: compiling each loop twice (per row, per token) doubled the build time
// for a fill that costs well under 1% of a segment's work.
template <class T>
struct SegmentAdvantages {
  const T* values;
  int64_t offset;
  SegmentAdvantages(const LossInputs& raw, int64_t row, int64_t begin, int64_t end, T* buffer) {
    const T* advantages = static_cast<const T*>(raw.advantages);
    if (raw.advantages_per_row) {
      const T v = advantages[row];
      for (int64_t j = 0; j < end - begin; ++j) buffer[j] = v;
      values = buffer;
      offset = begin;
    } else {
      values = advantages;
      offset = 0;
    }
  }
};

}  // namespace
}  // namespace detail
}  // namespace bandpo
