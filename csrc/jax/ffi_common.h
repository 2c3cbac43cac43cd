// What the XLA FFI handlers of bandpo.jax share (ffi_cpu.cpp, ffi_cuda.cpp): buffers described for the core's
// argument rules, the options read from the call's attributes by tables.h's rows, the loss's inputs laid out by the
// core (bandpo/arrays.h), and the core's exceptions as the FFI's errors.
//
// Options arrive as attributes named as tables.h's rows (float64 for numbers, bool for flags, int32 codes for
// choices; bandpo/jax.py checks and converts them with the C ABI first), read through for_each_option, so no
// option is listed twice. An absent mask or ref_logp is a size-0 placeholder with has_mask / has_ref_logp false;
// absent bounds (lower, upper) two such placeholders with has_bounds false.
// The arguments' rules are the core's: the same layout as every face, checked again here, so that a handler
// called directly cannot read past a buffer.
#pragma once

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bandpo/arrays.h"
#include "bandpo/dtypes.h"
#include "bandpo/inputs.h"
#include "bandpo/options.h"
#include "xla/ffi/api/ffi.h"

namespace bandpo {
namespace jax {

namespace ffi = xla::ffi;

inline ElementType element_type(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32:
      return ElementType::float32;
    case ffi::DataType::F64:
      return ElementType::float64;
    case ffi::DataType::BF16:
      return ElementType::bfloat16;
    case ffi::DataType::F16:
      return ElementType::float16;
    case ffi::DataType::PRED:
      return ElementType::boolean;
    case ffi::DataType::U8:
      return ElementType::uint8;
    case ffi::DataType::S64:
      return ElementType::int64;
    default:
      return ElementType::other;
  }
}

// A buffer as the core's rules see it (its sizes held here).
struct BufferDesc {
  BufferDesc(const ffi::AnyBuffer& b, bool present) {
    const auto dims = b.dimensions();
    sizes.assign(dims.begin(), dims.end());
    desc.present = present;
    desc.type = element_type(b.element_type());
    desc.ndim = static_cast<int>(sizes.size());
    desc.shape = sizes.data();
    desc.type_name = "a dtype bandpo does not take";
  }
  std::vector<int64_t> sizes;
  ArrayDesc desc;
};

// The options from the call's attributes, by tables.h's rows; the core's validate() after.
template <class Options>
Options options_from(const ffi::Dictionary& attrs) {
  Options o;
  std::string missing;
  for_each_option(o, [&](const OptionInfo& info, auto& field) {
    using Field = std::decay_t<decltype(field)>;
    // numbers and flags as their own type, a choice as its code (its row's index)
    using Attr = std::conditional_t<std::is_arithmetic_v<Field>, Field, int32_t>;
    const auto v = attrs.get<Attr>(info.name);
    if (v.has_value()) {
      field = static_cast<Field>(*v);
    } else {
      missing = info.name;
    }
  });
  if (!missing.empty()) throw std::invalid_argument("attribute " + missing + " is missing or of the wrong type");
  validate(o);  // choice codes out of range included
  return o;
}

// Runs f, turning the core's exceptions into the FFI's errors (the message kept: jax raises it).
template <class F>
ffi::Error guarded(F&& f) {
  try {
    f();
    return ffi::Error::Success();
  } catch (const std::invalid_argument& e) {
    return ffi::Error::InvalidArgument(e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

// The loss's inputs from its seven tensors' buffers, by the core's rules; the compute dtype must be each value
// buffer's own (bandpo/jax.py converts where the layout says so).
inline LossInputs loss_inputs(const ffi::AnyBuffer* const in[], const ffi::Dictionary& attrs,
                              const LossOptions& options) {
  const auto flag = [&](const char* name) {
    const auto v = attrs.get<bool>(name);
    if (!v.has_value()) throw std::invalid_argument(std::string("attribute ") + name + " is missing");
    return *v;
  };
  const bool bounds = flag("has_bounds");
  const bool present[kLossArgs] = {true, true, true, flag("has_mask"), flag("has_ref_logp"), bounds, bounds};
  const BufferDesc d[kLossArgs] = {BufferDesc(*in[0], present[0]), BufferDesc(*in[1], present[1]),
                                   BufferDesc(*in[2], present[2]), BufferDesc(*in[3], present[3]),
                                   BufferDesc(*in[4], present[4]), BufferDesc(*in[5], present[5]),
                                   BufferDesc(*in[6], present[6])};
  const LossLayout layout =
      loss_layout(LossArrays{d[0].desc, d[1].desc, d[2].desc, d[3].desc, d[4].desc, d[5].desc, d[6].desc}, options);
  if (layout.convert != 0)
    throw std::invalid_argument("inputs must be converted to the compute dtype before the call (bandpo.jax does)");
  LossInputs li;
  li.dtype = layout.compute;
  li.rows = layout.rows;
  li.cols = layout.cols;
  li.advantages_per_row = layout.advantages_per_row;
  li.mask_kind = layout.mask_kind;
  li.logp = in[0]->untyped_data();
  li.old_logp = in[1]->untyped_data();
  li.advantages = in[2]->untyped_data();
  li.mask = present[3] ? in[3]->untyped_data() : nullptr;
  li.ref_logp = present[4] ? in[4]->untyped_data() : nullptr;
  li.lower = bounds ? in[5]->untyped_data() : nullptr;
  li.upper = bounds ? in[6]->untyped_data() : nullptr;
  return li;
}

// The one element of a float buffer, as a double.
inline double load_scalar(const ffi::AnyBuffer& b, const char* name) {
  if (b.element_count() != 1) throw std::invalid_argument(std::string(name) + " must hold one value");
  const DType dtype = float_dtype(BufferDesc(b, true).desc, name);
  const void* p = b.untyped_data();
  switch (dtype) {
    case DType::float32:
      return static_cast<double>(*static_cast<const float*>(p));
    case DType::float64:
      return *static_cast<const double*>(p);
    case DType::bfloat16:
      return static_cast<double>(to_float(*static_cast<const bfloat16*>(p)));
    case DType::float16:
      return static_cast<double>(to_float(*static_cast<const float16*>(p)));
  }
  return 0.0;
}

inline void check_output(ffi::Result<ffi::AnyBuffer>& out, ffi::DataType type, size_t count, const char* name) {
  if (out->element_type() != type || out->element_count() != count)
    throw std::invalid_argument(std::string(name) + ": the output buffer does not match the inputs");
}

// The loss's eight inputs in call order: logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer.
using LossArgs = ffi::RemainingArgs;
constexpr size_t kLossBuffers = kLossArgs + 1;
constexpr size_t kNormalizerBuffer = kLossArgs;

// Those eight buffers of a call, decoded (in[i], held alive here).
struct LossBuffers {
  explicit LossBuffers(const LossArgs& args) {
    if (args.size() != kLossBuffers)
      throw std::invalid_argument("the loss takes " + std::to_string(kLossBuffers) + " buffers, got " +
                                  std::to_string(args.size()));
    held.reserve(kLossBuffers);
    for (size_t i = 0; i < kLossBuffers; ++i) {
      const auto b = args.get<ffi::AnyBuffer>(i);
      if (!b.has_value()) throw std::invalid_argument("argument " + std::to_string(i) + " is not a buffer");
      held.push_back(*b);
      in[i] = &held.back();
    }
  }
  LossBuffers(const LossBuffers&) = delete;  // in[] points into held
  LossBuffers& operator=(const LossBuffers&) = delete;
  std::vector<ffi::AnyBuffer> held;
  const ffi::AnyBuffer* in[kLossBuffers] = {};
};

// ---- The lm_head's chunk steps (bandpo.jax.linear_logprob_entropy) ----
// raw: float32 [rows, vocab], row-major (XLA's default layout). target: int64 [rows], or its int64 bits as uint32
// [rows, 2] (little-endian words: jax without x64 has no int64 arrays, so bandpo/jax.py sends int32 targets that
// way). The options: tables.h's logit rows, as attributes.
constexpr const char* kLogitOp = "linear_logprob_entropy";  // the name its messages start with

// A chunk step's call: its options, and its chunk of raw logits and targets, by the core's rules.
struct LogitCall {
  LogitCall(const ffi::AnyBuffer& raw, const ffi::AnyBuffer& target, const ffi::Dictionary& attrs)
      : options(options_from<LogitOptions>(attrs)) {
    const BufferDesc r(raw, true);
    BufferDesc t(target, true);
    const bool pairs = target.element_type() == ffi::DataType::U32 && t.sizes.size() == 2 && t.sizes[1] == 2;
    if (pairs) {  // the int64 the pairs hold, as the core's rule sees it
      t.sizes.pop_back();
      t.desc.ndim = 1;
      t.desc.type = ElementType::int64;
    }
    const int64_t vocab = r.sizes.size() == 2 ? r.sizes[1] : 0;
    const LogitChunkLayout l = logit_chunk_layout(kLogitOp, r.desc, vocab, 1, t.desc, false);
    chunk = LogitChunk{l.rows, l.vocab, l.row_stride, static_cast<const int64_t*>(target.untyped_data())};
  }
  LogitOptions options;
  LogitChunk chunk;
};

// The statistics step (raw, target) -> (logp, entropy): the call, its float32 [rows] outputs checked.
inline LogitCall stats_call(const ffi::AnyBuffer& raw, const ffi::AnyBuffer& target, ffi::Result<ffi::AnyBuffer>& logp,
                            ffi::Result<ffi::AnyBuffer>& entropy, const ffi::Dictionary& attrs) {
  LogitCall call(raw, target, attrs);
  check_output(logp, ffi::DataType::F32, static_cast<size_t>(call.chunk.rows), "logp");
  check_output(entropy, ffi::DataType::F32, static_cast<size_t>(call.chunk.rows), "entropy");
  return call;
}

// A float32 [rows] buffer of the gradient step, checked; size 0 means absent (null).
inline const float* row_values(const char* name, const ffi::AnyBuffer& b, int64_t rows) {
  if (b.element_count() == 0 && rows != 0) return nullptr;
  check_row_values(kLogitOp, name, BufferDesc(b, true).desc, rows);
  return static_cast<const float*>(b.untyped_data());
}

// The gradient step (raw, target, grad_logp, grad_entropy, logp, entropy) -> grad_raw: the call, the rows'
// upstream gradients and forward outputs, the output checked (float32 like raw, and raw's own buffer).
struct LogitGradCall : LogitCall {
  LogitGradCall(const ffi::AnyBuffer* const in[6], ffi::Result<ffi::AnyBuffer>& grad_raw, const ffi::Dictionary& attrs)
      : LogitCall(*in[0], *in[1], attrs) {
    const int64_t rows = chunk.rows;
    grads = LogitRowGrads{row_values("grad_logp", *in[2], rows), row_values("grad_entropy", *in[3], rows),
                          row_values("logp", *in[4], rows), row_values("entropy", *in[5], rows)};
    check_output(grad_raw, ffi::DataType::F32, in[0]->element_count(), "grad_raw");
    // the gradient overwrites the logits, so grad_raw must be raw's buffer (bandpo.jax aliases them: a copy would
    // cost a pass over the chunk, and on CUDA the runtime, which this library does not link)
    if (grad_raw->untyped_data() != in[0]->untyped_data())
      throw std::invalid_argument(std::string(kLogitOp) + ": grad_raw must alias raw (input_output_aliases={0: 0})");
    out = static_cast<float*>(grad_raw->untyped_data());
  }
  LogitRowGrads grads;
  float* out;  // raw's buffer, where the gradient goes
};

// Each target's binding (namespace binding) after its platform's context (none on the CPU; on CUDA XLA's stream, and the scratch
// allocator where the call takes a workspace): one definition of a target's arguments for both platforms.
namespace binding {
template <class B>
auto bounds(B b) {
  return std::move(b)
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<ffi::Dictionary>();
}
template <class B>
auto loss(B b) {  // the eight loss buffers (LossBuffers)
  return std::move(b)
      .RemainingArgs()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<ffi::Dictionary>();
}
template <class B>
auto loss_backward(B b) {  // grad_loss, then the eight loss buffers
  return std::move(b)
      .template Arg<ffi::AnyBuffer>()
      .RemainingArgs()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<ffi::Dictionary>();
}
template <class B>
auto logit_stats(B b) {
  return std::move(b)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<ffi::Dictionary>();
}
template <class B>
auto logit_grad(B b) {
  return std::move(b)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<ffi::Dictionary>();
}
}  // namespace binding

}  // namespace jax
}  // namespace bandpo
