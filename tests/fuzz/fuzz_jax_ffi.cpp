// libFuzzer harness over the XLA FFI handlers of bandpo.jax (csrc/jax/ffi_cpu.cpp), called directly with XLA's
// structs, as XLA calls them: a call frame of buffers (each of the size its dtype and dims say: XLA allocates them
// so), results of any shape and dtype, and attributes sorted by name, some missing or of the wrong type. The XLA
// API is a stand-in with the three error functions the handlers use. Built by ci/fuzz.sh beside the C ABI's harness
// where jaxlib's FFI headers are found.
// Invariants, beyond "no crash and no sanitizer report":
//   - a failed call returns an error with a message; a call frame of the wrong struct size is refused;
//   - a loss call that succeeds gives the bits of the C ABI's bandpo_band_loss on the same buffers and options
//     (the attributes' translation is the C struct's), and a bounds call those of bandpo_band_bounds.
#include <bandpo/bandpo.h>
#include <bandpo/dtypes.h>
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "xla/ffi/api/c_api.h"

extern "C" XLA_FFI_Error* bandpo_xla_band_bounds(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* bandpo_xla_band_loss(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* bandpo_xla_band_loss_backward(XLA_FFI_CallFrame* call_frame);

// The stand-in API's error: a code and a message.
struct XLA_FFI_Error {
  XLA_FFI_Error_Code code;
  std::string message;
};

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  std::abort();
}
#define EXPECT(cond)          \
  do {                        \
    if (!(cond)) fail(#cond); \
  } while (0)

XLA_FFI_Error* error_create(XLA_FFI_Error_Create_Args* args) {
  return new XLA_FFI_Error{args->errc, args->message ? args->message : ""};
}
void error_get_message(XLA_FFI_Error_GetMessage_Args* args) { args->message = args->error->message.c_str(); }
void error_destroy(XLA_FFI_Error_Destroy_Args* args) { delete args->error; }

const XLA_FFI_Api* api() {
  static XLA_FFI_Api a = [] {
    XLA_FFI_Api x{};
    x.struct_size = XLA_FFI_Api_STRUCT_SIZE;
    x.api_version = XLA_FFI_Api_Version{XLA_FFI_Api_Version_STRUCT_SIZE, nullptr, XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR};
    x.XLA_FFI_Error_Create = error_create;
    x.XLA_FFI_Error_GetMessage = error_get_message;
    x.XLA_FFI_Error_Destroy = error_destroy;
    return x;
  }();
  return &a;
}

// A buffer as XLA hands it over: its dims, and storage of exactly the bytes they and the dtype make.
struct Buffer {
  XLA_FFI_Buffer buf{};
  std::vector<int64_t> dims;
  std::vector<unsigned char> bytes;
};

size_t width(XLA_FFI_DataType t) {
  switch (t) {
    case XLA_FFI_DataType_F64:
    case XLA_FFI_DataType_S64:
      return 8;
    case XLA_FFI_DataType_F32:
    case XLA_FFI_DataType_S32:
      return 4;
    case XLA_FFI_DataType_BF16:
    case XLA_FFI_DataType_F16:
      return 2;
    default:
      return 1;
  }
}

const XLA_FFI_DataType kTypes[] = {XLA_FFI_DataType_F32, XLA_FFI_DataType_F64,  XLA_FFI_DataType_BF16,
                                   XLA_FFI_DataType_F16, XLA_FFI_DataType_PRED, XLA_FFI_DataType_U8,
                                   XLA_FFI_DataType_S64, XLA_FFI_DataType_S32};

// A drawn buffer: mostly like `like` (the shapes the Python face makes), sometimes any.
void draw_buffer(FuzzedDataProvider& in, Buffer& b, XLA_FFI_DataType type, const std::vector<int64_t>& like) {
  b.buf.dtype = in.ConsumeIntegralInRange<int>(0, 5) ? type : kTypes[in.ConsumeIntegralInRange<int>(0, 7)];
  b.dims = like;
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) {
    b.dims.resize(in.ConsumeIntegralInRange<size_t>(0, 3));
    for (auto& d : b.dims) d = in.ConsumeIntegralInRange<int64_t>(0, 6);
  }
  size_t n = 1;
  for (int64_t d : b.dims) n *= static_cast<size_t>(d);
  b.bytes.resize(n * width(b.buf.dtype));
  // values: from the input, the rest a pattern of plausible log-probs (-0.5 as float32 / float64 bits)
  const std::vector<unsigned char> drawn = in.ConsumeBytes<unsigned char>(b.bytes.size());
  std::copy(drawn.begin(), drawn.end(), b.bytes.begin());
  for (size_t i = drawn.size(); i < b.bytes.size(); ++i) b.bytes[i] = i % 4 == 3 ? 0xbf : 0;
  if (b.buf.dtype == XLA_FFI_DataType_PRED)
    for (auto& v : b.bytes) v &= 1;
  b.buf.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
  b.buf.data = b.bytes.empty() ? nullptr : b.bytes.data();
  b.buf.rank = static_cast<int64_t>(b.dims.size());
  b.buf.dims = b.dims.data();
}

// The attributes: one scalar per name, sorted by name as XLA sorts them.
struct Attrs {
  struct One {
    std::string name;
    XLA_FFI_DataType type;
    alignas(8) unsigned char value[8];  // aligned, as XLA holds attribute values
    XLA_FFI_ByteSpan span;
    XLA_FFI_Scalar scalar;
  };
  std::vector<One> all;
  std::vector<XLA_FFI_AttrType> types;
  std::vector<XLA_FFI_ByteSpan*> names;
  std::vector<void*> values;
  XLA_FFI_Attrs attrs{};

  template <class T>
  void add(const std::string& name, XLA_FFI_DataType type, T v) {
    One o{name, type, {}, {}, {}};
    std::memcpy(o.value, &v, sizeof(T));
    all.push_back(o);
  }
  void finish() {
    std::sort(all.begin(), all.end(), [](const One& a, const One& b) { return a.name < b.name; });
    for (auto& o : all) {
      o.span = XLA_FFI_ByteSpan{o.name.data(), o.name.size()};
      o.scalar = XLA_FFI_Scalar{o.type, o.value};
      types.push_back(XLA_FFI_AttrType_SCALAR);
      names.push_back(&o.span);
      values.push_back(&o.scalar);
    }
    attrs = XLA_FFI_Attrs{XLA_FFI_Attrs_STRUCT_SIZE,
                          nullptr,
                          static_cast<int64_t>(all.size()),
                          types.data(),
                          names.data(),
                          values.data()};
  }
};

double draw_double(FuzzedDataProvider& in, double typical) {
  static const double kSpecial[] = {std::numeric_limits<double>::quiet_NaN(),
                                    std::numeric_limits<double>::infinity(),
                                    -1.0,
                                    0.0,
                                    1e-13,
                                    0.05,
                                    0.2,
                                    1.0,
                                    3.0,
                                    1e7,
                                    1e300};
  return in.ConsumeIntegralInRange<int>(0, 3) ? typical : kSpecial[in.ConsumeIntegralInRange<int>(0, 10)];
}

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

struct Frame {
  std::vector<XLA_FFI_ArgType> arg_types;
  std::vector<void*> args;
  std::vector<XLA_FFI_RetType> ret_types;
  std::vector<void*> rets;
  XLA_FFI_CallFrame frame{};

  XLA_FFI_CallFrame* make(std::vector<Buffer*> in, std::vector<Buffer*> out, const Attrs& attrs, bool bad_size) {
    for (Buffer* b : in) {
      arg_types.push_back(XLA_FFI_ArgType_BUFFER);
      args.push_back(&b->buf);
    }
    for (Buffer* b : out) {
      ret_types.push_back(XLA_FFI_RetType_BUFFER);
      rets.push_back(&b->buf);
    }
    frame.struct_size = bad_size ? XLA_FFI_CallFrame_STRUCT_SIZE - 8 : XLA_FFI_CallFrame_STRUCT_SIZE;
    frame.api = api();
    frame.stage = XLA_FFI_ExecutionStage_EXECUTE;
    frame.args = XLA_FFI_Args{XLA_FFI_Args_STRUCT_SIZE, nullptr, static_cast<int64_t>(args.size()), arg_types.data(),
                              args.data()};
    frame.rets = XLA_FFI_Rets{XLA_FFI_Rets_STRUCT_SIZE, nullptr, static_cast<int64_t>(rets.size()), ret_types.data(),
                              rets.data()};
    frame.attrs = attrs.attrs;
    return &frame;
  }
};

// How many calls reached the comparison with the C ABI (printed at exit with BANDPO_FUZZ_STATS=1): the check that
// the invariants above are not vacuous.
size_t compared_bounds = 0, compared_losses = 0;

// memcmp of n bytes, n = 0 included (where a buffer's data may be null).
bool same_bytes(const void* a, const void* b, size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

// The handler's result: true for success; an error must carry a message.
bool succeeded(XLA_FFI_Error* e) {
  if (e == nullptr) return true;
  EXPECT(!e->message.empty());
  delete e;
  return false;
}

// The C ABI's dtype code of an XLA dtype (BANDPO_OTHER_DTYPE for those it does not take).
bandpo_dtype c_code(XLA_FFI_DataType t) {
  switch (t) {
    case XLA_FFI_DataType_F32:
      return BANDPO_FLOAT32;
    case XLA_FFI_DataType_F64:
      return BANDPO_FLOAT64;
    case XLA_FFI_DataType_BF16:
      return BANDPO_BFLOAT16;
    case XLA_FFI_DataType_F16:
      return BANDPO_FLOAT16;
    case XLA_FFI_DataType_PRED:
      return BANDPO_BOOL;
    case XLA_FFI_DataType_U8:
      return BANDPO_UINT8;
    case XLA_FFI_DataType_S64:
      return BANDPO_INT64;
    default:
      return BANDPO_OTHER_DTYPE;
  }
}

// A call's float dtype and shape (rank 0 to 2, sizes 0 to 9), which its buffers mostly follow.
XLA_FFI_DataType draw_type(FuzzedDataProvider& in) { return kTypes[in.ConsumeIntegralInRange<int>(0, 3)]; }
std::vector<int64_t> draw_shape(FuzzedDataProvider& in) {
  std::vector<int64_t> shape(in.ConsumeIntegralInRange<size_t>(0, 2));
  for (auto& d : shape) d = in.ConsumeIntegralInRange<int64_t>(0, 9);
  return shape;
}

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
  unsigned char want[8];
  switch (layout.compute_dtype) {  // the double loss, rounded as every writer rounds (dtypes.h store)
    case BANDPO_FLOAT64:
      bandpo::store(reinterpret_cast<double*>(want), 0, c_loss);
      break;
    case BANDPO_BFLOAT16:
      bandpo::store(reinterpret_cast<bandpo::bfloat16*>(want), 0, c_loss);
      break;
    case BANDPO_FLOAT16:
      bandpo::store(reinterpret_cast<bandpo::float16*>(want), 0, c_loss);
      break;
    default:
      bandpo::store(reinterpret_cast<float*>(want), 0, c_loss);
  }
  EXPECT(same_bytes(want, loss.bytes.data(), loss.bytes.size()));
  ++compared_losses;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bandpo_set_num_threads(1);
  if (const char* stats = std::getenv("BANDPO_FUZZ_STATS"); stats && stats[0] == '1')
    std::atexit([] { std::fprintf(stderr, "compared: %zu bounds, %zu losses\n", compared_bounds, compared_losses); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      fuzz_bounds(in);
      break;
    case 1:
      fuzz_loss(in, false);
      break;
    default:
      fuzz_loss(in, true);
  }
  return 0;
}
