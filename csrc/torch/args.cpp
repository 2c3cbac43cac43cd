// Argument handling shared by the CPU and CUDA kernels of torch.ops.bandpo (see args.h).
#include "args.h"

// pybind11's type_error is header-only: thrown here, it is caught by the pybind11 of torch's Python binding
// (matched by type name), which raises TypeError with our message.
#include <pybind11/detail/common.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace bandpo {

using torch::stable::detail::to;

namespace {
// The last refusal raised on this thread, for last_refusal(): from torch 2.15 on, torch turns every exception
// of a stable-ABI kernel into RuntimeError, and the Python side restores the type from here.
thread_local Refusal last;
}  // namespace

const Refusal& last_refusal() { return last; }

void raise_value_error(const std::string& message) {
  last = Refusal{"ValueError", message};
  throw std::invalid_argument(message);
}
void raise_type_error(const std::string& message) {
  last = Refusal{"TypeError", message};
  throw pybind11::type_error(message);
}

const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return "float32";
    case ScalarType::Double:
      return "float64";
    case ScalarType::BFloat16:
      return "bfloat16";
    case ScalarType::Half:
      return "float16";
    case ScalarType::Bool:
      return "bool";
    case ScalarType::Byte:
      return "uint8";
    case ScalarType::Char:
      return "int8";
    case ScalarType::Short:
      return "int16";
    case ScalarType::Int:
      return "int32";
    case ScalarType::Long:
      return "int64";
    default:
      return "an unsupported dtype";
  }
}

std::string device_name(const Tensor& t) {
  const torch::stable::Device d = t.device();
  std::string type;
  switch (d.type()) {
    case torch::headeronly::DeviceType::CPU:
      type = "cpu";
      break;
    case torch::headeronly::DeviceType::CUDA:
      type = "cuda";
      break;
    case torch::headeronly::DeviceType::Meta:
      type = "meta";
      break;
    default:
      type = cat("device type ", static_cast<int>(d.type()));
  }
  return d.has_index() ? cat(type, ":", static_cast<int>(d.index())) : type;
}

std::string shape_string(const Tensor& t) {
  std::string s = "[";
  const int64_t dim = t.dim();
  for (int64_t i = 0; i < dim; ++i) s += cat(i ? ", " : "", t.size(i));
  return s + "]";
}

ElementType element_type(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return ElementType::float32;
    case ScalarType::Double:
      return ElementType::float64;
    case ScalarType::BFloat16:
      return ElementType::bfloat16;
    case ScalarType::Half:
      return ElementType::float16;
    case ScalarType::Bool:
      return ElementType::boolean;
    case ScalarType::Byte:
      return ElementType::uint8;
    case ScalarType::Long:
      return ElementType::int64;
    default:
      return ElementType::other;
  }
}

TensorDesc::TensorDesc(const Tensor& t) {
  const int64_t dim = t.dim();
  sizes.resize(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) sizes[static_cast<size_t>(i)] = t.size(i);
  desc.present = true;
  desc.type = element_type(t.scalar_type());
  desc.ndim = static_cast<int>(dim);
  desc.shape = sizes.data();
  desc.type_name = dtype_name(t.scalar_type());
}

DType to_dtype(const Tensor& t, const char* name) {
  const TensorDesc d(t);
  return with_python_errors([&] { return float_dtype(d.desc, name); });
}

namespace {

// A string argument, whose handle the kernel owns: read and freed here. Not to<std::string>: in the headers
// of torch 2.10 to 2.13 it copies the string out of a `new std::string` it never deletes, a leak of ~48
// bytes per string option per call (found by tests/test_steady_state.py; fixed in 2.14's headers).
std::string take_string(StableIValue v) {
  StringHandle handle = to<StringHandle>(v);
  size_t length = 0;
  const char* data = nullptr;
  const bool read = torch_string_length(handle, &length) == AOTI_TORCH_SUCCESS &&
                    torch_string_c_str(handle, &data) == AOTI_TORCH_SUCCESS;
  std::string s = read ? std::string(data, length) : std::string();
  torch_delete_string(handle);
  if (!read) throw std::runtime_error("bandpo: could not read a string argument from the stack");
  return s;
}

// One option from its stack entry, by the C++ type of its field (tables.h). Optional options ("float?")
// map None to the field's default, the sentinel.
struct OptionReader {
  StableIValue* stack;
  uint64_t next = 0;

  void operator()(const OptionInfo& info, double& field) {
    StableIValue v = stack[next++];
    if (info.optional()) {
      const std::optional<double> value = to<std::optional<double>>(v);
      field = optional_option(info, value.has_value(), value.value_or(0.0), field);
    } else {
      field = to<double>(v);
    }
  }
  void operator()(const OptionInfo&, bool& field) { field = to<bool>(stack[next++]); }
  void operator()(const OptionInfo&, int64_t& field) { field = to<int64_t>(stack[next++]); }
  template <class Choice>
  void operator()(const OptionInfo&, Choice& field) {
    parse_choice(take_string(stack[next++]), field);
  }
};

template <class Options>
Options unbox(StableIValue* stack) {
  Options o;
  OptionReader reader{stack};
  std::string error;
  // Read every entry before raising: a string left on the stack would leak.
  for_each_option(o, [&](const OptionInfo& info, auto& field) {
    try {
      reader(info, field);
    } catch (const std::invalid_argument& e) {
      if (error.empty()) error = e.what();
    }
  });
  if (!error.empty()) raise_value_error(error);
  try {
    validate(o);
  } catch (const std::invalid_argument& e) {
    raise_value_error(e.what());
  }
  return o;
}

void check_device(const std::optional<Tensor>& t, const char* name, const Tensor& logp) {
  if (t.has_value())
    BANDPO_CHECK_VALUE(t->device() == logp.device(), name, " is on ", device_name(*t), " but logp is on ",
                       device_name(logp));
}

}  // namespace

void check_stack(const char* op, uint64_t num_args, uint64_t expected_args, uint64_t num_outputs,
                 uint64_t expected_outputs) {
  if (num_args != expected_args || num_outputs != expected_outputs)
    throw std::runtime_error(cat("bandpo::", op, ": the registered schema has ", num_args, " arguments and ",
                                 num_outputs, " outputs, the kernel expects ", expected_args, " and ", expected_outputs,
                                 " (tables.h and the schema are out of step)"));
}

BoundOptions unbox_bound_options(StableIValue* stack) { return unbox<BoundOptions>(stack); }

BoundsCall unbox_bounds_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_bounds", num_args, 1 + kNumBoundOptions, num_outputs, 2);
  const Tensor old_logp = to<Tensor>(stack[0]);
  const BoundOptions options = unbox_bound_options(stack + 1);
  const DType dtype = to_dtype(old_logp, "old_logp");
  return BoundsCall{as_contiguous(old_logp), dtype, options};
}

namespace {
// band_loss's arguments from where they start on a stack (band_loss's own, or band_loss_backward's after
// grad_loss).
LossCall loss_call_at(StableIValue* stack) {
  Tensor logp = to<Tensor>(stack[0]), old_logp = to<Tensor>(stack[1]), advantages = to<Tensor>(stack[2]);
  auto mask = to<std::optional<Tensor>>(stack[3]);
  auto ref_logp = to<std::optional<Tensor>>(stack[4]);
  auto lower = to<std::optional<Tensor>>(stack[5]);
  auto upper = to<std::optional<Tensor>>(stack[6]);
  return LossCall{logp,     old_logp, advantages, mask,
                  ref_logp, lower,    upper,      unbox_loss_options(stack + kNumLossTensors)};
}
}  // namespace

LossOptions unbox_loss_options(StableIValue* stack) { return unbox<LossOptions>(stack); }
LogitOptions unbox_logit_options(StableIValue* stack) { return unbox<LogitOptions>(stack); }

LossCall unbox_loss_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_loss", num_args, kNumLossTensors + kNumLossOptions, num_outputs, 2);
  return loss_call_at(stack);
}

BackwardCall unbox_backward_call(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_loss_backward", num_args, 1 + kNumLossTensors + kNumLossOptions, num_outputs, 1);
  BackwardCall b{to<Tensor>(stack[0]), loss_call_at(stack + 1)};
  BANDPO_CHECK_VALUE(b.grad_loss.numel() == 1, "grad_loss must hold one value; got shape ", shape_string(b.grad_loss));
  return b;
}

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

Tensor empty_like_contiguous(const Tensor& like) {
  const int64_t dim = like.dim();
  std::vector<int64_t> sizes(dim);
  for (int64_t i = 0; i < dim; ++i) sizes[i] = like.size(i);
  return torch::stable::empty(sizes, like.scalar_type(), std::nullopt, like.device());
}

Tensor empty_on(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& device_of) {
  return torch::stable::empty(std::vector<int64_t>(sizes), dtype, std::nullopt, device_of.device());
}

LossArgs loss_args(const LossCall& call) {
  const Tensor& logp = call.logp;
  // The tensors in argument order (LossArg), absent ones empty.
  const std::optional<Tensor> given[kNumLossTensors] = {logp,          call.old_logp, call.advantages, call.mask,
                                                        call.ref_logp, call.lower,    call.upper};
  const char* const names[kNumLossTensors] = {"logp", "old_logp", "advantages", "mask", "ref_logp", "lower", "upper"};
  for (int i = kArgOldLogp; i < kNumLossTensors; ++i) check_device(given[i], names[i], logp);
  // The rules are the core's (bandpo/arrays.h), the same for every face.
  std::optional<TensorDesc> descs[kNumLossTensors];
  for (int i = 0; i < kNumLossTensors; ++i)
    if (given[i]) descs[i].emplace(*given[i]);
  const auto desc = [&](int i) { return descs[i] ? descs[i]->desc : ArrayDesc{}; };
  const LossArrays arrays{desc(kArgLogp),    desc(kArgOldLogp), desc(kArgAdvantages), desc(kArgMask),
                          desc(kArgRefLogp), desc(kArgLower),   desc(kArgUpper)};
  const LossLayout layout = with_python_errors([&] { return loss_layout(arrays, call.options); });

  LossArgs a;
  a.logp_dtype = logp.scalar_type();
  LossInputs& in = a.inputs;
  in.dtype = layout.compute;
  in.rows = layout.rows;
  in.cols = layout.cols;
  in.advantages_per_row = layout.advantages_per_row;
  in.mask_kind = layout.mask_kind;
  const ScalarType compute = scalar_type(layout.compute);
  // Contiguous, and in the compute dtype where the layout asks ([B] or [B, 1] advantages: the same B values).
  const auto ready = [&](const Tensor& t, LossArg arg) {
    return as_contiguous(layout.converts(arg) ? torch::stable::to(t, compute) : t);
  };
  std::optional<Tensor>* const kept[kNumLossTensors] = {&a.logp,     &a.old_logp, &a.advantages, &a.mask,
                                                        &a.ref_logp, &a.lower,    &a.upper};
  const void** const pointers[kNumLossTensors] = {&in.logp,     &in.old_logp, &in.advantages, &in.mask,
                                                  &in.ref_logp, &in.lower,    &in.upper};
  for (int i = 0; i < kNumLossTensors; ++i) {
    if (!given[i]) continue;
    *kept[i] = ready(*given[i], static_cast<LossArg>(i));
    *pointers[i] = (*kept[i])->data_ptr();
  }
  return a;
}

ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::float32:
      return ScalarType::Float;
    case DType::float64:
      return ScalarType::Double;
    case DType::bfloat16:
      return ScalarType::BFloat16;
    case DType::float16:
      return ScalarType::Half;
  }
  return ScalarType::Float;
}

namespace {
// raw and target of a chunk op, checked (the core's rules, bandpo/arrays.h): call's tensors and chunk.
void unbox_chunk(const char* op, const Tensor& raw, const Tensor& target, bool half_ok, LogitChunkCall& call) {
  const TensorDesc r(raw), t(target);
  const int64_t dim = raw.dim();
  const LogitChunkLayout l = with_python_errors([&] {
    return logit_chunk_layout(op, r.desc, dim == 2 ? raw.stride(0) : 0, dim == 2 ? raw.stride(1) : 1, t.desc, half_ok);
  });
  BANDPO_CHECK_VALUE(target.device() == raw.device(), op, ": target is on ", device_name(target), " but raw is on ",
                     device_name(raw));
  call.raw = raw;
  call.target = as_contiguous(target);
  call.chunk = LogitChunk{l.rows, l.vocab, l.row_stride, static_cast<const int64_t*>(call.target.data_ptr())};
}

// An optional float32 [rows] argument of logit_chunk_grad_, checked and made contiguous (kept alive in `keep`):
// its data, or null when absent.
const float* optional_row_values(const char* name, const std::optional<Tensor>& t, const LogitChunkCall& call,
                                 std::optional<Tensor>& keep) {
  const char* op = "logit_chunk_grad_";
  if (!t.has_value()) return nullptr;
  const TensorDesc d(*t);
  with_python_errors([&] { check_row_values(op, name, d.desc, call.chunk.rows); });
  BANDPO_CHECK_VALUE(t->device() == call.raw.device(), op, ": ", name, " is on ", device_name(*t), " but raw is on ",
                     device_name(call.raw));
  keep = as_contiguous(*t);
  return static_cast<const float*>(keep->data_ptr());
}
}  // namespace

// logit_chunk_stats(Tensor raw, Tensor target, *, <logit options>) -> (Tensor logp, Tensor entropy)
// (Every tensor is taken off the stack before anything can raise: a handle left there would leak.)
LogitChunkCall unbox_logit_stats(StableIValue* stack, uint64_t num_args, uint64_t num_outputs, bool half_ok) {
  check_stack("logit_chunk_stats", num_args, 2 + kNumLogitOptions, num_outputs, 2);
  Tensor raw = to<Tensor>(stack[0]);
  const Tensor target = to<Tensor>(stack[1]);
  LogitChunkCall call;
  call.options = unbox_logit_options(stack + 2);
  if (raw.dim() == 2 && raw.size(0) > 1 && raw.size(1) > 1 && raw.stride(1) != 1) raw = as_contiguous(raw);
  unbox_chunk("logit_chunk_stats", raw, target, half_ok, call);
  return call;
}

// logit_chunk_grad_(Tensor(a!) raw, Tensor target, Tensor? grad_logp, Tensor? grad_entropy, *, <logit options>,
//                   Tensor? logp, Tensor? entropy) -> ()
LogitChunkCall unbox_logit_grad(StableIValue* stack, uint64_t num_args, uint64_t num_outputs, bool half_ok) {
  check_stack("logit_chunk_grad_", num_args, 6 + kNumLogitOptions, num_outputs, 0);
  const Tensor raw = to<Tensor>(stack[0]), target = to<Tensor>(stack[1]);
  const std::optional<Tensor> rows[4] = {to<std::optional<Tensor>>(stack[2]), to<std::optional<Tensor>>(stack[3]),
                                         to<std::optional<Tensor>>(stack[4 + kNumLogitOptions]),
                                         to<std::optional<Tensor>>(stack[5 + kNumLogitOptions])};
  LogitChunkCall call;
  call.options = unbox_logit_options(stack + 4);
  unbox_chunk("logit_chunk_grad_", raw, target, half_ok, call);
  call.grads.grad_logp = optional_row_values("grad_logp", rows[0], call, call.keep[0]);
  call.grads.grad_entropy = optional_row_values("grad_entropy", rows[1], call, call.keep[1]);
  call.grads.logp = optional_row_values("logp", rows[2], call, call.keep[2]);
  call.grads.entropy = optional_row_values("entropy", rows[3], call, call.keep[3]);
  return call;
}

namespace {
std::atomic<bool>& input_checks_flag() {
  static std::atomic<bool> flag([] {
    const char* env = std::getenv("BANDPO_CHECK_INPUTS");
    return env != nullptr && std::strcmp(env, "") != 0 && std::strcmp(env, "0") != 0;
  }());
  return flag;
}
}  // namespace

bool input_checks_enabled() { return input_checks_flag().load(std::memory_order_relaxed); }
void set_input_checks_enabled(bool enabled) { input_checks_flag().store(enabled, std::memory_order_relaxed); }

}  // namespace bandpo
