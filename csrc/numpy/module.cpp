// bandpo._np: the torch-free core on numpy arrays (pybind11), for JAX / numpy pipelines without torch.
// python/bandpo/np.py is the documented face; this module keeps the argument handling of the torch op:
// the same shapes (per-row advantages for 2-D inputs), the same options and the same error messages.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bandpo/cpu.h"
#include "bandpo/errors.h"

namespace py = pybind11;

namespace {

bandpo::DType dtype_of(const py::array& a, const char* name) {
  const py::dtype d = a.dtype();
  if (d.kind() == 'f' && d.itemsize() == 4) return bandpo::DType::float32;
  if (d.kind() == 'f' && d.itemsize() == 8) return bandpo::DType::float64;
  if (d.kind() == 'f' && d.itemsize() == 2) return bandpo::DType::float16;
  throw py::type_error(std::string(name) + " must be float32, float64 or float16; got " +
                       py::str(d).cast<std::string>());
}

py::array contiguous(const py::array& a) { return py::array::ensure(a, py::array::c_style); }

std::vector<ssize_t> shape_of(const py::array& a) { return std::vector<ssize_t>(a.shape(), a.shape() + a.ndim()); }

void check_same(const py::array& a, const char* name, const py::array& logp) {
  if (!a.dtype().is(logp.dtype()))
    throw py::type_error(std::string(name) + " has dtype " + py::str(a.dtype()).cast<std::string>() +
                         " but logp has " + py::str(logp.dtype()).cast<std::string>() +
                         ": logp, old_logp, advantages and ref_logp must share one dtype");
}

void check_shape(const py::array& a, const char* name, const py::array& logp) {
  if (shape_of(a) != shape_of(logp))
    throw py::value_error(std::string(name) + " must have the shape of logp " + py::str(py::tuple(py::cast(shape_of(logp)))).cast<std::string>() +
                          "; got " + py::str(py::tuple(py::cast(shape_of(a)))).cast<std::string>());
}

// One option from a Python keyword argument, by the C++ type of its field (tables.h).
struct OptionReader {
  const py::handle value;
  void operator()(const bandpo::OptionInfo& info, double& field) const {
    if (info.optional()) {
      field = bandpo::optional_option(info, !value.is_none(), value.is_none() ? 0.0 : value.cast<double>(), field);
    } else {
      field = value.cast<double>();
    }
  }
  void operator()(const bandpo::OptionInfo&, bool& field) const { field = value.cast<bool>(); }
  template <class Choice>
  void operator()(const bandpo::OptionInfo&, Choice& field) const {
    bandpo::parse_choice(value.cast<std::string>(), field);
  }
};

// Options from keyword arguments (any subset; the rest keep their defaults), validated by the core.
// Unknown names are refused, naming them; std::invalid_argument becomes ValueError.
template <class Options>
Options options_from(const py::kwargs& kwargs) {
  Options o;
  size_t used = 0;
  bandpo::for_each_option(o, [&](const bandpo::OptionInfo& info, auto& field) {
    if (!kwargs.contains(info.name)) return;
    ++used;
    try {
      OptionReader{kwargs[info.name]}(info, field);
    } catch (const py::cast_error&) {
      throw py::type_error(std::string(info.name) + ": wrong type " +
                           py::str(py::type::handle_of(kwargs[info.name])).cast<std::string>());
    }
  });
  if (used != kwargs.size()) {
    Options probe;
    for (auto item : kwargs) {
      const std::string name = item.first.cast<std::string>();
      bool known = false;
      bandpo::for_each_option(probe, [&](const bandpo::OptionInfo& info, auto&) { known |= name == info.name; });
      if (!known) throw py::type_error("unexpected option '" + name + "'");
    }
  }
  bandpo::validate(o);
  return o;
}

py::tuple band_bounds(const py::array& old_logp_in, const py::kwargs& options) {
  const bandpo::BoundOptions o = options_from<bandpo::BoundOptions>(options);
  const bandpo::DType dt = dtype_of(old_logp_in, "old_logp");
  const py::array old_logp = contiguous(old_logp_in);
  py::array lower(old_logp.dtype(), shape_of(old_logp)), upper(old_logp.dtype(), shape_of(old_logp));
  const void* in = old_logp.data();
  void *lo = lower.mutable_data(), *hi = upper.mutable_data();
  const int64_t n = old_logp.size();
  {
    py::gil_scoped_release release;
    bandpo::band_bounds_cpu(dt, in, n, o, lo, hi);
  }
  return py::make_tuple(lower, upper);
}

py::tuple band_loss(const py::array& logp_in, const py::array& old_logp_in, const py::array& advantages_in,
                    const std::optional<py::array>& mask_in, const std::optional<py::array>& ref_logp_in,
                    bool with_grad, const py::kwargs& options) {
  const bandpo::LossOptions o = options_from<bandpo::LossOptions>(options);
  const std::string agg = bandpo::aggregation_name(o.agg);
  bandpo::LossInputs in;
  in.dtype = dtype_of(logp_in, "logp");
  check_same(old_logp_in, "old_logp", logp_in);
  check_same(advantages_in, "advantages", logp_in);
  check_shape(old_logp_in, "old_logp", logp_in);
  const py::array logp = contiguous(logp_in), old_logp = contiguous(old_logp_in);
  const ssize_t dim = logp.ndim();
  if (o.agg != bandpo::Aggregation::token_mean && dim != 2)
    throw py::value_error("agg='" + agg + "' needs 2-D [batch, tokens] inputs");
  if (dim == 0) {
    in.rows = in.cols = 1;
  } else {
    in.cols = logp.shape(dim - 1);
    in.rows = in.cols > 0 ? logp.size() / in.cols : 0;
  }
  py::array advantages;
  if (shape_of(advantages_in) == shape_of(logp)) {
    advantages = contiguous(advantages_in);
  } else {
    const bool per_row = dim == 2 && advantages_in.size() == in.rows &&
                         (advantages_in.ndim() == 1 || (advantages_in.ndim() == 2 && advantages_in.shape(1) == 1));
    if (!per_row)
      throw py::value_error("advantages must have the shape of logp or, for 2-D logp, one value per sequence "
                            "([B] or [B, 1])");
    advantages = contiguous(advantages_in);
    in.advantages_per_row = true;
  }
  py::array mask, ref_logp;
  if (mask_in) {
    check_shape(*mask_in, "mask", logp);
    const char kind = mask_in->dtype().kind();
    if (kind == 'b' || (kind == 'u' && mask_in->dtype().itemsize() == 1)) {
      mask = contiguous(*mask_in);
      in.mask_kind = bandpo::MaskKind::boolean;
    } else if (kind == 'f') {
      mask = contiguous(py::array(mask_in->attr("astype")(logp.dtype())));
      in.mask_kind = bandpo::MaskKind::values;
    } else {
      throw py::type_error("mask must be bool, uint8 or floating point; got " + py::str(mask_in->dtype()).cast<std::string>());
    }
    in.mask = mask.data();
  }
  if (ref_logp_in) {
    check_same(*ref_logp_in, "ref_logp", logp);
    check_shape(*ref_logp_in, "ref_logp", logp);
    ref_logp = contiguous(*ref_logp_in);
    in.ref_logp = ref_logp.data();
  }
  in.logp = logp.data();
  in.old_logp = old_logp.data();
  in.advantages = advantages.data();
  py::object grad = py::none();
  void* grad_data = nullptr;
  if (with_grad) {
    py::array g(logp.dtype(), shape_of(logp));
    grad_data = g.mutable_data();
    grad = g;
  }
  bandpo::LossResult r;
  {
    py::gil_scoped_release release;
    r = bandpo::band_loss_cpu(in, o, grad_data);
  }
  py::array_t<float> metrics(bandpo::kNumMetrics);
  for (int m = 0; m < bandpo::kNumMetrics; ++m) metrics.mutable_at(m) = r.metrics[m];
  return py::make_tuple(r.loss, metrics, grad);
}

// A chunk of raw float32 logits [rows, vocab] as the core takes it: a pointer, its row stride in elements (rows
// may be apart, the logits of a row must be adjacent) and its sizes.
struct LogitChunk {
  float* data;
  int64_t rows, vocab, row_stride;
};

LogitChunk logit_chunk(const py::array& raw, bool writeable) {
  if (!(raw.dtype().kind() == 'f' && raw.dtype().itemsize() == 4))
    throw py::type_error("raw must be float32 logits; got " + py::str(raw.dtype()).cast<std::string>());
  if (raw.ndim() != 2) throw py::value_error("raw must be 2-D [rows, vocab]; got " + std::to_string(raw.ndim()) + "-D");
  const int64_t rows = raw.shape(0), vocab = raw.shape(1);
  if (vocab > 1 && raw.strides(1) != 4)
    throw py::value_error("raw's rows must each be contiguous (stride 4 bytes along vocab); got " +
                          std::to_string(raw.strides(1)));
  if (rows > 1 && (raw.strides(0) <= 0 || raw.strides(0) % 4 != 0))
    throw py::value_error("raw's row stride must be a positive multiple of 4 bytes; got " +
                          std::to_string(raw.strides(0)));
  if (writeable && !raw.writeable()) throw py::value_error("raw must be writeable (its gradient is written in place)");
  return LogitChunk{static_cast<float*>(const_cast<void*>(raw.data())), rows, vocab,
                    rows > 1 ? static_cast<int64_t>(raw.strides(0) / 4) : vocab};
}

// A per-row array of the chunk ([rows], contiguous); `dtype` float32 or int64.
template <class T>
py::array_t<T> row_array(const py::handle& a, const char* name, int64_t rows) {
  const py::array arr = py::array::ensure(a);
  const char kind = std::is_same<T, float>::value ? 'f' : 'i';
  if (!arr || arr.dtype().kind() != kind || arr.dtype().itemsize() != static_cast<ssize_t>(sizeof(T)))
    throw py::type_error(std::string(name) + " must be " + (std::is_same<T, float>::value ? "a float32" : "an int64") +
                         " array; got " + (arr ? py::str(arr.dtype()).cast<std::string>() : std::string("no array")));
  if (arr.ndim() != 1 || arr.shape(0) != rows)
    throw py::value_error(std::string(name) + " must have shape (" + std::to_string(rows) + ",), one value per row of raw");
  return py::array_t<T, py::array::c_style>::ensure(arr);
}

py::tuple logit_stats(const py::array& raw_in, const py::handle& target_in, int64_t ignore_index, double logit_scale,
                      double softcap, double temperature) {
  const LogitChunk c = logit_chunk(raw_in, false);
  const py::array_t<int64_t> target = row_array<int64_t>(target_in, "target", c.rows);
  py::array_t<float> logp(c.rows), entropy(c.rows);
  float *lp = logp.mutable_data(), *ent = entropy.mutable_data();
  const int64_t* t = target.data();
  {
    py::gil_scoped_release release;
    bandpo::logit_stats_cpu(c.data, c.rows, c.vocab, c.row_stride, t, ignore_index, logit_scale, softcap,
                            temperature, lp, ent);
  }
  return py::make_tuple(logp, entropy);
}

void logit_grad_(const py::array& raw_in, const py::handle& target_in, const py::object& grad_logp_in,
                 const py::object& grad_entropy_in, const py::object& logp_in, const py::object& entropy_in,
                 int64_t ignore_index, double logit_scale, double softcap, double temperature) {
  const LogitChunk c = logit_chunk(raw_in, true);
  const py::array_t<int64_t> target = row_array<int64_t>(target_in, "target", c.rows);
  // An optional per-row array: null for None, else its data, the array kept alive in `keep`.
  py::array_t<float> keep[4];
  auto rows_or_null = [&](const py::object& a, const char* name, py::array_t<float>& kept) -> const float* {
    if (a.is_none()) return nullptr;
    kept = row_array<float>(a, name, c.rows);
    return kept.data();
  };
  const float* g1 = rows_or_null(grad_logp_in, "grad_logp", keep[0]);
  const float* g2 = rows_or_null(grad_entropy_in, "grad_entropy", keep[1]);
  const float* o1 = rows_or_null(logp_in, "logp", keep[2]);
  const float* o2 = rows_or_null(entropy_in, "entropy", keep[3]);
  const int64_t* t = target.data();
  py::gil_scoped_release release;
  bandpo::logit_grad_cpu(c.data, c.rows, c.vocab, c.row_stride, t, ignore_index, logit_scale, softcap, temperature,
                         g1, g2, o1, o2);
}

}  // namespace

PYBIND11_MODULE(_np, m) {
  m.doc() = "bandpo on numpy arrays (torch-free core); see bandpo.np";
  // std::invalid_argument is pybind11's ValueError already; a workspace that cannot be allocated is Python's
  // MemoryError, with the core's message (its size and the shape).
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const bandpo::out_of_memory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  m.def("band_bounds", &band_bounds, py::arg("old_logp"));
  m.def("band_loss", &band_loss, py::arg("logp"), py::arg("old_logp"), py::arg("advantages"), py::arg("mask"),
        py::arg("ref_logp"), py::arg("with_grad"));
  m.def(
      "validate_options", [](const py::kwargs& options) { options_from<bandpo::LossOptions>(options); },
      "Validate band_loss options (keyword arguments, any subset) as the ops do: ValueError/TypeError naming "
      "the option.");
  m.def("logit_stats", &logit_stats, py::arg("raw"), py::arg("target"), py::arg("ignore_index"),
        py::arg("logit_scale"), py::arg("softcap"), py::arg("temperature"));
  m.def("logit_grad_", &logit_grad_, py::arg("raw"), py::arg("target"), py::arg("grad_logp"), py::arg("grad_entropy"),
        py::arg("logp"), py::arg("entropy"), py::arg("ignore_index"), py::arg("logit_scale"), py::arg("softcap"),
        py::arg("temperature"));
  m.def("version", &bandpo::version);
}
