// What the libFuzzer harnesses of the XLA FFI handlers share (fuzz_jax_ffi.cpp, fuzz_jax_ffi_lm_head.cpp): a
// stand-in of XLA's API with the three error functions the handlers use, buffers of exactly the bytes their dtype
// and dims make (XLA allocates them so), attributes sorted by name, call frames, and the checks of a result.
#pragma once

#include <bandpo/bandpo.h>
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

// The stand-in API's error: a code and a message.
struct XLA_FFI_Error {
  XLA_FFI_Error_Code code;
  std::string message;
};

namespace fuzz {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  std::abort();
}
#define EXPECT(cond)          \
  do {                        \
    if (!(cond)) fail(#cond); \
  } while (0)

inline XLA_FFI_Error* error_create(XLA_FFI_Error_Create_Args* args) {
  return new XLA_FFI_Error{args->errc, args->message ? args->message : ""};
}
inline void error_get_message(XLA_FFI_Error_GetMessage_Args* args) { args->message = args->error->message.c_str(); }
inline void error_destroy(XLA_FFI_Error_Destroy_Args* args) { delete args->error; }

inline const XLA_FFI_Api* api() {
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

inline size_t width(XLA_FFI_DataType t) {
  switch (t) {
    case XLA_FFI_DataType_F64:
    case XLA_FFI_DataType_S64:
      return 8;
    case XLA_FFI_DataType_F32:
    case XLA_FFI_DataType_S32:
    case XLA_FFI_DataType_U32:
      return 4;
    case XLA_FFI_DataType_BF16:
    case XLA_FFI_DataType_F16:
      return 2;
    default:
      return 1;
  }
}

inline const XLA_FFI_DataType kTypes[] = {XLA_FFI_DataType_F32, XLA_FFI_DataType_F64,  XLA_FFI_DataType_BF16,
                                          XLA_FFI_DataType_F16, XLA_FFI_DataType_PRED, XLA_FFI_DataType_U8,
                                          XLA_FFI_DataType_S64, XLA_FFI_DataType_S32};

// A drawn buffer: mostly like `like` (the shapes the Python face makes), sometimes any.
inline void draw_buffer(FuzzedDataProvider& in, Buffer& b, XLA_FFI_DataType type, const std::vector<int64_t>& like) {
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

inline double draw_double(FuzzedDataProvider& in, double typical) {
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

// memcmp of n bytes, n = 0 included (where a buffer's data may be null).
inline bool same_bytes(const void* a, const void* b, size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

// The handler's result: true for success; an error must carry a message.
inline bool succeeded(XLA_FFI_Error* e) {
  if (e == nullptr) return true;
  EXPECT(!e->message.empty());
  delete e;
  return false;
}

// The C ABI's dtype code of an XLA dtype (BANDPO_OTHER_DTYPE for those it does not take).
inline bandpo_dtype c_code(XLA_FFI_DataType t) {
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
inline XLA_FFI_DataType draw_type(FuzzedDataProvider& in) { return kTypes[in.ConsumeIntegralInRange<int>(0, 3)]; }
inline std::vector<int64_t> draw_shape(FuzzedDataProvider& in) {
  std::vector<int64_t> shape(in.ConsumeIntegralInRange<size_t>(0, 2));
  for (auto& d : shape) d = in.ConsumeIntegralInRange<int64_t>(0, 9);
  return shape;
}

}  // namespace fuzz
