// The lm_head steps' part of the XLA FFI handlers' harness (fuzz_jax_ffi.cpp runs it): bandpo_logit_stats and
// bandpo_logit_grad called with XLA's call frames. raw float32 [rows, vocab] of any bits (NaN and infinities
// included), targets as int64 [rows] or as their bits in uint32 [rows, 2] (as bandpo.jax sends them), mostly in
// range, sometimes ignore_index or outside; options drawn around their defaults; any buffer sometimes of another
// dtype or shape; the gradient's output mostly raw's own buffer (as XLA aliases it), sometimes one of its own.
// Invariants: a gradient step into a buffer other than raw's is refused; a call that succeeds gives the bits of
// the C ABI's step on the same buffers.
#include <bandpo/bandpo.h>

#include "xla_ffi_standin.h"

extern "C" XLA_FFI_Error* bandpo_xla_logit_stats(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* bandpo_xla_logit_grad(XLA_FFI_CallFrame* call_frame);

namespace fuzz {

size_t compared_logit_steps = 0;

namespace {

// The options as attributes (one sometimes missing) and as the C ABI's struct.
void draw_logit_options(FuzzedDataProvider& in, Attrs& a, bandpo_logit_options& o) {
  bandpo_default_logit_options(&o);
  o.ignore_index = in.ConsumeBool() ? -100 : in.ConsumeIntegralInRange<int64_t>(-3, 9);
  o.logit_scale = draw_double(in, 1.0);
  o.softcap = in.ConsumeBool() ? 0.0 : draw_double(in, 3.0);
  o.temperature = draw_double(in, 0.7);
  const int skipped = in.ConsumeIntegralInRange<int>(0, 40);  // below 4: that attribute is missing
  if (skipped != 0) a.add("ignore_index", XLA_FFI_DataType_S64, o.ignore_index);
  if (skipped != 1) a.add("logit_scale", XLA_FFI_DataType_F64, o.logit_scale);
  if (skipped != 2) a.add("softcap", XLA_FFI_DataType_F64, o.softcap);
  if (skipped != 3) a.add("temperature", XLA_FFI_DataType_F64, o.temperature);
  a.finish();
}

// The targets: int64 [rows], or their bits as uint32 [rows, 2]; values mostly in [0, vocab) or ignore_index.
void draw_targets(FuzzedDataProvider& in, Buffer& b, int64_t rows, int64_t vocab, int64_t ignore_index) {
  const bool pairs = in.ConsumeBool();
  draw_buffer(in, b, pairs ? XLA_FFI_DataType_U32 : XLA_FFI_DataType_S64,
              pairs ? std::vector<int64_t>{rows, 2} : std::vector<int64_t>{rows});
  const bool as_drawn = in.ConsumeIntegralInRange<int>(0, 7) == 0;  // any bits
  if (as_drawn || b.bytes.size() != static_cast<size_t>(rows) * 8) return;
  for (int64_t r = 0; r < rows; ++r) {
    const int pick = in.ConsumeIntegralInRange<int>(0, 9);
    const int64_t t = pick == 0   ? ignore_index
                      : pick == 1 ? in.ConsumeIntegralInRange<int64_t>(-2, vocab + 2)
                                  : in.ConsumeIntegralInRange<int64_t>(0, vocab > 0 ? vocab - 1 : 0);
    std::memcpy(b.bytes.data() + 8 * r, &t, 8);  // little-endian: the pairs' words are these bytes too
  }
}

// A float32 [rows] buffer of the gradient step, or a size-0 placeholder (absent).
void draw_rows(FuzzedDataProvider& in, Buffer& b, int64_t rows, bool present) {
  draw_buffer(in, b, XLA_FFI_DataType_F32, present ? std::vector<int64_t>{rows} : std::vector<int64_t>{0});
}

// The handlers' rule for an optional [rows] buffer: size 0 (with rows > 0) is absent.
const float* data_of(const Buffer& b, int64_t rows) {
  return b.bytes.empty() && rows != 0 ? nullptr : static_cast<const float*>(b.buf.data);
}

}  // namespace

void fuzz_logit(FuzzedDataProvider& in, bool grad) {
  Attrs attrs;
  bandpo_logit_options o;
  draw_logit_options(in, attrs, o);
  const int64_t rows = in.ConsumeIntegralInRange<int64_t>(0, 6), vocab = in.ConsumeIntegralInRange<int64_t>(0, 9);
  Buffer raw, target, logp, entropy, grad_logp, grad_entropy, grad_raw;
  draw_buffer(in, raw, XLA_FFI_DataType_F32, {rows, vocab});
  draw_targets(in, target, rows, vocab, o.ignore_index);
  const bool bad_size = in.ConsumeIntegralInRange<int>(0, 31) == 0;
  Frame f;
  bool ok, aliased = false;
  std::vector<unsigned char> raw_before;
  const bool has_grad_logp = in.ConsumeBool(), has_grad_entropy = in.ConsumeBool(), has_outputs = in.ConsumeBool();
  if (grad) {
    draw_rows(in, grad_logp, rows, has_grad_logp);
    draw_rows(in, grad_entropy, rows, has_grad_entropy);
    draw_rows(in, logp, rows, has_outputs);
    draw_rows(in, entropy, rows, has_outputs);
    aliased = in.ConsumeIntegralInRange<int>(0, 7) != 0;
    if (aliased) {  // as XLA passes an output aliased to an input: raw's own buffer
      grad_raw.dims = raw.dims;
      grad_raw.buf = raw.buf;
      grad_raw.buf.dims = grad_raw.dims.data();
    } else {
      draw_buffer(in, grad_raw, XLA_FFI_DataType_F32, {rows, vocab});
    }
    raw_before = raw.bytes;  // the call overwrites raw with its gradient
    ok = succeeded(bandpo_xla_logit_grad(
        f.make({&raw, &target, &grad_logp, &grad_entropy, &logp, &entropy}, {&grad_raw}, attrs, bad_size)));
    if (ok) EXPECT(aliased || raw.bytes.empty());  // into a buffer of its own: refused (unless both are empty)
  } else {
    draw_buffer(in, logp, XLA_FFI_DataType_F32, {rows});
    draw_buffer(in, entropy, XLA_FFI_DataType_F32, {rows});
    ok = succeeded(bandpo_xla_logit_stats(f.make({&raw, &target}, {&logp, &entropy}, attrs, bad_size)));
  }
  if (bad_size) EXPECT(!ok);
  if (!ok) return;
  // the C ABI on the same buffers and options: the same bits (raw's own dims: the drawn ones may have changed)
  EXPECT(raw.dims.size() == 2);
  const bandpo_logit_chunk chunk{raw.dims[0], raw.dims[1], raw.dims[1], static_cast<const int64_t*>(target.buf.data)};
  if (grad) {
    const int64_t n = chunk.rows;
    const bandpo_logit_row_grads g{data_of(grad_logp, n), data_of(grad_entropy, n), data_of(logp, n),
                                   data_of(entropy, n)};
    std::vector<float> want(raw_before.size() / 4);
    if (!want.empty()) std::memcpy(want.data(), raw_before.data(), raw_before.size());
    EXPECT(bandpo_logit_grad(want.data(), &chunk, &o, &g) == BANDPO_OK);
    EXPECT(same_bytes(want.data(), raw.bytes.data(), raw.bytes.size()));  // grad_raw is raw's buffer
  } else {
    std::vector<float> want_logp(chunk.rows), want_entropy(chunk.rows);
    EXPECT(bandpo_logit_stats(static_cast<const float*>(raw.buf.data), &chunk, &o, want_logp.data(),
                              want_entropy.data()) == BANDPO_OK);
    EXPECT(same_bytes(want_logp.data(), logp.bytes.data(), logp.bytes.size()));
    EXPECT(same_bytes(want_entropy.data(), entropy.bytes.data(), entropy.bytes.size()));
  }
  ++compared_logit_steps;
}

}  // namespace fuzz
