// libFuzzer harness over the XLA FFI handlers of bandpo.jax (csrc/jax/ffi_cpu.cpp), called directly with XLA's
// structs, as XLA calls them: a call frame of buffers (each of the size its dtype and dims say: XLA allocates them
// so), results of any shape and dtype, and attributes sorted by name, some missing or of the wrong type. The XLA
// API is a stand-in with the three error functions the handlers use (xla_ffi_standin.h). Built by ci/fuzz.sh beside
// the C ABI's harness where jaxlib's FFI headers are found; the lm_head steps' part is fuzz_jax_ffi_lm_head.cpp.
// Invariants, beyond "no crash and no sanitizer report":
//   - a failed call returns an error with a message; a call frame of the wrong struct size is refused;
//   - a loss call that succeeds gives the bits of the C ABI's bandpo_band_loss on the same buffers and options
//     (the attributes' translation is the C struct's), and a bounds call those of bandpo_band_bounds;
//   - an lm_head step that succeeds gives the bits of bandpo_logit_stats / bandpo_logit_grad.
#include <bandpo/bandpo.h>
#include <bandpo/dtypes.h>

#include "xla_ffi_standin.h"

namespace fuzz {
void fuzz_logit(FuzzedDataProvider& in, bool grad);  // fuzz_jax_ffi_lm_head.cpp
extern size_t compared_logit_steps;
}  // namespace fuzz

extern "C" XLA_FFI_Error* bandpo_xla_band_bounds(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* bandpo_xla_band_loss(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* bandpo_xla_band_loss_backward(XLA_FFI_CallFrame* call_frame);

namespace {

using namespace fuzz;

// Options drawn as the handlers' attributes, and the same values in the C ABI's struct.
void draw_options(FuzzedDataProvider& in, Attrs& a, bandpo_options& o, bool loss) {
  bandpo_default_options(&o);
  o.divergence = static_cast<bandpo_divergence>(in.ConsumeIntegralInRange<int>(0, 4));
  o.delta = draw_double(in, 0.05);
  o.eps_low = draw_double(in, 0.2);
  o.eps_high = draw_double(in, 0.28);
  o.relax_high_p = in.ConsumeBool();
  o.ratio_max = draw_double(in, 10.0);
  const bool skip = in.ConsumeIntegralInRange<int>(0, 15) == 0;  // a missing attribute, refused
  const int skipped = in.ConsumeIntegralInRange<int>(0, 10);
  int k = 0;
  const auto add_double = [&](const char* name, double v) {
    if (!(skip && k++ == skipped)) a.add(name, XLA_FFI_DataType_F64, v);
  };
  const auto add_code = [&](const char* name, int32_t v) {
    if (!(skip && k++ == skipped)) a.add(name, XLA_FFI_DataType_S32, v);
  };
  add_code("divergence", o.divergence);
  add_double("delta", o.delta);
  add_double("eps_low", o.eps_low);
  add_double("eps_high", o.eps_high);
  if (!(skip && k++ == skipped)) a.add("relax_high_p", XLA_FFI_DataType_PRED, static_cast<bool>(o.relax_high_p));
  add_double("ratio_max", o.ratio_max);
  if (!loss) return;
  o.dual_clip = in.ConsumeBool() ? std::numeric_limits<double>::infinity() : draw_double(in, 3.0);
  o.agg = static_cast<bandpo_aggregation>(in.ConsumeIntegralInRange<int>(0, 3));
  o.normalizer = in.ConsumeBool() ? std::numeric_limits<double>::quiet_NaN() : draw_double(in, 7.0);
  o.kl_coef = in.ConsumeBool() ? 0.0 : draw_double(in, 0.1);
  o.kl_estimator = static_cast<bandpo_kl_estimator>(in.ConsumeIntegralInRange<int>(0, 2));
  add_double("dual_clip", o.dual_clip);
  add_code("agg", o.agg);
  add_double("normalizer", o.normalizer);
  add_double("kl_coef", o.kl_coef);
  add_code("kl_estimator", o.kl_estimator);
}

// How many calls reached the comparison with the C ABI (printed at exit with BANDPO_FUZZ_STATS=1): the check that
// the invariants above are not vacuous.
size_t compared_bounds = 0, compared_losses = 0;

void fuzz_bounds(FuzzedDataProvider& in) {
  Attrs attrs;
  bandpo_options o;
  draw_options(in, attrs, o, false);
  attrs.finish();
  const XLA_FFI_DataType type = draw_type(in);
  const std::vector<int64_t> shape = draw_shape(in);
  Buffer old, lower, upper;
  draw_buffer(in, old, type, shape);
  draw_buffer(in, lower, type, shape);
  draw_buffer(in, upper, type, shape);
  Frame f;
  const bool bad_size = in.ConsumeIntegralInRange<int>(0, 31) == 0;
  const bool ok = succeeded(bandpo_xla_band_bounds(f.make({&old}, {&lower, &upper}, attrs, bad_size)));
  if (bad_size) EXPECT(!ok);
  if (!ok) return;
  // the C ABI on the same values gives the same bits
  std::vector<unsigned char> lo(lower.bytes.size()), hi(upper.bytes.size());
  const int64_t n = static_cast<int64_t>(old.bytes.size() / width(old.buf.dtype));
  EXPECT(bandpo_band_bounds(c_code(old.buf.dtype), old.buf.data, n, &o, lo.data(), hi.data()) == BANDPO_OK);
  EXPECT(same_bytes(lo.data(), lower.bytes.data(), lo.size()));
  EXPECT(same_bytes(hi.data(), upper.bytes.data(), hi.size()));
  ++compared_bounds;
}

void fuzz_loss(FuzzedDataProvider& in, bool backward) {
  Attrs attrs;
  bandpo_options o;
  draw_options(in, attrs, o, true);
  const bool has_mask = in.ConsumeBool(), has_ref = o.kl_coef != 0.0 || in.ConsumeBool();
  attrs.add("has_mask", XLA_FFI_DataType_PRED, has_mask);
  attrs.add("has_ref_logp", XLA_FFI_DataType_PRED, has_ref);
  attrs.add("has_bounds", XLA_FFI_DataType_PRED, false);  // the bounds are fuzzed through the C ABI's harness
  attrs.add("normalizer_in_program", XLA_FFI_DataType_PRED, false);
  attrs.finish();
  const XLA_FFI_DataType type = draw_type(in);
  const std::vector<int64_t> shape = draw_shape(in);
  const bool per_row = shape.size() == 2 && in.ConsumeBool();
  Buffer logp, old, adv, mask, ref, lower, upper, norm, grad_loss, loss, metrics, grad;
  draw_buffer(in, logp, type, shape);
  draw_buffer(in, old, type, shape);
  draw_buffer(in, adv, type, per_row ? std::vector<int64_t>{shape[0]} : shape);
  draw_buffer(in, mask, has_mask ? XLA_FFI_DataType_PRED : type, has_mask ? shape : std::vector<int64_t>{0});
  draw_buffer(in, ref, type, has_ref ? shape : std::vector<int64_t>{0});
  draw_buffer(in, norm, XLA_FFI_DataType_F64, {});
  if (!norm.bytes.empty()) std::memcpy(norm.bytes.data(), &o.normalizer, std::min<size_t>(8, norm.bytes.size()));
  Frame f;
  const bool bad_size = in.ConsumeIntegralInRange<int>(0, 31) == 0;
  for (Buffer* b : {&lower, &upper}) {  // size-0 placeholders, as bandpo.jax passes absent bounds
    b->buf.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
    b->buf.dtype = type;
    b->dims = {0};
    b->buf.rank = 1;
    b->buf.dims = b->dims.data();
  }
  std::vector<Buffer*> args = {&logp, &old, &adv, &mask, &ref, &lower, &upper, &norm};
  bool ok;
  if (backward) {
    draw_buffer(in, grad_loss, type, {});
    draw_buffer(in, grad, type, shape);
    args.insert(args.begin(), &grad_loss);
    ok = succeeded(bandpo_xla_band_loss_backward(f.make(args, {&grad}, attrs, bad_size)));
  } else {
    draw_buffer(in, loss, type, {});
    draw_buffer(in, metrics, XLA_FFI_DataType_F32, {BANDPO_NUM_METRICS});
    ok = succeeded(bandpo_xla_band_loss(f.make(args, {&loss, &metrics}, attrs, bad_size)));
  }
  if (bad_size) EXPECT(!ok);
  // compared where the normalizer buffer holds the attribute's number as XLA would pass it (a float64 scalar)
  if (!ok || backward || norm.buf.dtype != XLA_FFI_DataType_F64 || !norm.dims.empty()) return;
  // the C ABI on the same buffers and options, laid out by its own rules: the same loss and metrics, bit for bit
  const auto describe = [](const Buffer& b, bool present) {
    return present ? bandpo_array{b.buf.data, c_code(b.buf.dtype), static_cast<int32_t>(b.dims.size()), b.dims.data(),
                                  "another dtype"}
                   : bandpo_array{nullptr, BANDPO_FLOAT32, -1, nullptr, nullptr};
  };
  // no bounds given: the JAX face does not take them
  const bandpo_array absent{nullptr, BANDPO_FLOAT32, -1, nullptr, nullptr};
  const bandpo_loss_arrays arrays{describe(logp, true),
                                  describe(old, true),
                                  describe(adv, true),
                                  describe(mask, has_mask),
                                  describe(ref, has_ref),
                                  absent,
                                  absent};
  bandpo_loss_layout layout{};
  EXPECT(bandpo_loss_layout_of(&arrays, &o, &layout) == BANDPO_OK);
  EXPECT(layout.convert == 0);  // the handler refuses what needs converting
  const bandpo_loss_inputs li{layout.compute_dtype,
                              layout.rows,
                              layout.cols,
                              logp.buf.data,
                              old.buf.data,
                              adv.buf.data,
                              layout.advantages_per_row,
                              has_mask ? mask.buf.data : nullptr,
                              layout.mask_kind,
                              has_ref ? ref.buf.data : nullptr};
  double c_loss = 0;
  float c_metrics[BANDPO_NUM_METRICS];
  EXPECT(bandpo_band_loss(&li, &o, &c_loss, c_metrics, nullptr) == BANDPO_OK);
  EXPECT(same_bytes(c_metrics, metrics.bytes.data(), sizeof(c_metrics)));
  unsigned char want[8];  // the double loss, rounded as every writer rounds (dtypes.h)
  bandpo::store_as(static_cast<bandpo::DType>(layout.compute_dtype), want, c_loss);
  EXPECT(same_bytes(want, loss.bytes.data(), loss.bytes.size()));
  ++compared_losses;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bandpo_set_num_threads(1);
  if (const char* stats = std::getenv("BANDPO_FUZZ_STATS"); stats && stats[0] == '1')
    std::atexit([] {
      std::fprintf(stderr, "compared: %zu bounds, %zu losses, %zu lm_head steps\n", compared_bounds, compared_losses,
                   fuzz::compared_logit_steps);
    });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
      fuzz_bounds(in);
      break;
    case 1:
      fuzz_loss(in, false);
      break;
    case 2:
      fuzz_loss(in, true);
      break;
    default:  // fuzz_jax_ffi_lm_head.cpp
      fuzz::fuzz_logit(in, in.ConsumeBool());
  }
  return 0;
}
