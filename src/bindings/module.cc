// The pybind11 module lowbit._core: checks arguments, releases the GIL and
// calls the kernels. Python-facing validation with friendly messages lives in
// python/lowbit/; the checks here keep bad calls from reaching the kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "bindings/args.h"
#include "bindings/py_weight.h"
#include "quant/quant_params.h"
#include "quant/quantize.h"
#include "util/checked.h"
#include "util/errors.h"
#include "util/targets.h"
#include "util/thread_pool.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

// Enum values are checked: pybind11's enums can be built from any int.
void CheckDType(DType t, const std::string& name) {
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16) {
    throw py::value_error(name + ": unknown dtype " +
                          std::to_string(static_cast<int>(t)));
  }
}

size_t ItemSize(DType t) { return t == DType::kF32 ? 4 : 2; }

void CheckMatrix(const py::array& a, const std::string& name,
                 size_t itemsize) {
  if (a.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D array, got " +
                          std::to_string(a.ndim()) + "-D");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(name + ": array is not C-contiguous");
  }
  if (static_cast<size_t>(a.itemsize()) != itemsize) {
    throw py::type_error(name + ": expected " + std::to_string(itemsize) +
                         "-byte elements, got " +
                         std::to_string(a.itemsize()));
  }
  if (a.dtype().kind() == 'O' || !a.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error(name + ": expected numbers in native byte order, "
                         "got dtype " + py::str(a.dtype()).cast<std::string>());
  }
}

void CheckParams(const QuantParams& p, size_t cols, const std::string& name) {
  if (p.bits < 1 || p.bits > 8 || p.bits == 7) {
    throw py::value_error(name + ": bits must be 1 to 6 or 8, got " +
                          std::to_string(p.bits));
  }
  const int rule = static_cast<int>(p.rule);
  const int method = static_cast<int>(p.method);
  if (rule < 0 || rule > static_cast<int>(ScaleRule::kSignedMax)) {
    throw py::value_error(name + ": unknown rule " + std::to_string(rule));
  }
  if (method < 0 || method > static_cast<int>(Method::kHqq)) {
    throw py::value_error(name + ": unknown method " + std::to_string(method));
  }
  // The stored codes q + code_offset, in int64 so that a code_offset near
  // 2^31 cannot wrap into range: int8 for 8-bit symmetric schemes, unsigned
  // `bits`-bit integers otherwise.
  const bool is_signed = p.bits == 8 && !p.asymmetric();
  const int64_t code_min = is_signed ? -128 : 0;
  const int64_t code_max = is_signed ? 127 : (int64_t{1} << p.bits) - 1;
  const int64_t lo = int64_t{p.qmin} + p.code_offset;
  const int64_t hi = int64_t{p.qmax} + p.code_offset;
  if (p.qmin > p.qmax || lo < code_min || hi > code_max) {
    throw py::value_error(
        name + ": code range [" + std::to_string(lo) + ", " +
        std::to_string(hi) + "] from qmin, qmax and code_offset does not " +
        "fit in " + std::to_string(p.bits) + " bits ([" +
        std::to_string(code_min) + ", " + std::to_string(code_max) + "])");
  }
  // minmax maps [min, max] onto [0, qmax]: it divides by qmax.
  if (p.asymmetric() && (p.qmin != 0 || p.qmax == 0)) {
    throw py::value_error(name + ": minmax needs qmin 0 and qmax > 0");
  }
  if ((p.rule == ScaleRule::kAbsMax || p.rule == ScaleRule::kSignedMax) &&
      (!std::isfinite(p.scale_divisor) || p.scale_divisor == 0.0f)) {
    throw py::value_error(name + ": scale_divisor must be finite and nonzero");
  }
  if (cols == 0) throw py::value_error(name + ": rows are empty");
  if (cols > kMaxCols) {
    throw py::value_error(name + ": cols " + std::to_string(cols) +
                          " is more than " + std::to_string(kMaxCols));
  }
  if (p.bits == 1 && !p.asymmetric()) {
    throw py::value_error(name + ": 1-bit codes need a zero point");
  }
  if (IsSplit(p.bits) && !p.asymmetric()) {
    throw py::value_error(name + ": " + std::to_string(p.bits) +
                          "-bit codes (two planes) need a zero point");
  }
  if (p.method == Method::kHqq && !p.asymmetric()) {
    throw py::value_error(name + ": hqq needs a scheme with zero points");
  }
  if (p.group_size != 0 &&
      (p.group_size % kBlockBytes != 0 || cols % p.group_size != 0)) {
    throw py::value_error(name + ": group size " +
                          std::to_string(p.group_size) +
                          " must be a multiple of 16 that divides cols=" +
                          std::to_string(cols));
  }
}

// A float32 [rows, cols] array whose data starts on a 64-byte boundary, so
// that kernels can use aligned (streaming) stores on it.
py::array_t<float> AlignedFloatMatrix(size_t rows, size_t cols) {
  constexpr size_t kAlign = 64;
  constexpr size_t kSlack = kAlign / sizeof(float);
  const size_t n = CheckedAdd(CheckedMul(rows, cols, "rows x cols"), kSlack,
                              "rows x cols");
  CheckedBytes(n, sizeof(float), "rows x cols");
  py::array_t<float> storage(n);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(storage.mutable_data());
  const size_t skip = ((kAlign - addr % kAlign) % kAlign) / sizeof(float);
  return py::array_t<float>({rows, cols},
                            {cols * sizeof(float), sizeof(float)},
                            storage.mutable_data() + skip, storage);
}

std::string Where(const ErrorSink& e) {
  return "row " + std::to_string(e.row()) + ", column " +
         std::to_string(e.col());
}

// The importances of Quantize: none, or cols finite non-negative float32.
std::optional<py::array_t<float, py::array::c_style>> ImportanceArg(
    const py::object& arg, size_t cols, const std::string& name) {
  if (arg.is_none()) return std::nullopt;
  const std::string what = name + " importance";
  if (!py::isinstance<py::array>(arg) ||
      py::cast<py::array>(arg).dtype().kind() != 'f') {
    throw py::type_error(what + ": expected a float32 array, got " +
                         TypeName(arg));
  }
  auto w = py::array_t<float, py::array::c_style | py::array::forcecast>(arg);
  if (w.ndim() != 1 || static_cast<size_t>(w.shape(0)) != cols) {
    throw py::value_error(what + ": expected shape (" + std::to_string(cols) +
                          ",), one per column");
  }
  const float* v = w.data();
  for (size_t j = 0; j < cols; ++j) {
    if (!(v[j] >= 0.0f) || !std::isfinite(v[j])) {
      throw py::value_error(what + ": column " + std::to_string(j) +
                            " is negative, NaN or Inf");
    }
  }
  return w;
}

// The arrays a quantized matrix is stored as, allocated for rows x cols.
struct QuantizedArrays {
  py::array codes;
  py::array scales;
  std::optional<py::array> zeros;

  QuantizedArrays(size_t rows, size_t cols, const QuantParams& p) {
    const size_t groups = GroupsPerRow(cols, p.group_size);
    const size_t row_bytes = RowBytes(cols, p.bits);
    const bool is_signed = p.bits == 8 && !p.asymmetric();
    codes = is_signed
                ? py::array(py::dtype::of<int8_t>(), {rows, row_bytes})
                : py::array(py::dtype::of<uint8_t>(), {rows, row_bytes});
    // Group parameters are stored as float16, per-row ones as float32.
    const py::dtype param_type =
        p.f16_params ? py::dtype("float16") : py::dtype::of<float>();
    scales = py::array(param_type, {rows, groups});
    if (p.asymmetric()) {
      zeros.emplace(param_type, std::vector<size_t>{rows, groups});
    }
  }
  uint8_t* codes_data() { return static_cast<uint8_t*>(codes.mutable_data()); }
  void* zeros_data() { return zeros ? zeros->mutable_data() : nullptr; }
  // (codes, scales, zero points or None)
  py::tuple Tuple() const {
    py::object z = zeros ? py::object(*zeros) : py::none();
    return py::make_tuple(codes, scales, z);
  }
};

// A ValueError naming the tensor and where, for what the kernels reported.
void RaiseReported(const ErrorSink& errors, const std::string& name) {
  switch (errors.kind()) {
    case ErrorKind::kNone:
      return;
    case ErrorKind::kNonFinite:
      throw py::value_error(name + ": NaN or Inf at " + Where(errors));
    case ErrorKind::kScaleOverflow:
      throw py::value_error(
          name + ": the scale or zero point of the group at " + Where(errors) +
          " overflows float16; use per-row scales (group_size=None)");
    case ErrorKind::kCastOverflow:
      throw py::value_error(name + ": value out of range at " + Where(errors));
  }
}

py::tuple Quantize(const py::array& x, DType dtype, const QuantParams& p,
                   const std::string& name, const py::object& importance_arg) {
  CheckDType(dtype, name);
  CheckMatrix(x, name, ItemSize(dtype));
  const size_t rows = x.shape(0);
  const size_t cols = x.shape(1);
  CheckParams(p, cols, name);
  const auto importance = ImportanceArg(importance_arg, cols, name);
  QuantizedArrays out(rows, cols, p);
  ErrorSink errors;
  {
    const void* src = x.data();
    uint8_t* dst = out.codes_data();
    void* sc = out.scales.mutable_data();
    void* zp = out.zeros_data();
    const float* w = importance ? importance->data() : nullptr;
    py::gil_scoped_release release;
    QuantizeMatrix(src, dtype, rows, cols, p, dst, sc, zp, &errors, w);
  }
  RaiseReported(errors, name);
  return out.Tuple();
}

// GPTQ of float32 x [rows, cols] with u [cols, cols] (upper Cholesky factor
// of the damped inverse Hessian): (codes, scales, zeros or None, the
// reconstruction as float32 [rows, cols]).
py::tuple Gptq(const py::array& x, const py::array& u_arg, const QuantParams& p,
               const std::string& name, const py::object& importance_arg) {
  CheckMatrix(x, name, sizeof(float));
  if (x.dtype().kind() != 'f' || x.itemsize() != sizeof(float)) {
    throw py::type_error(name + ": gptq takes float32 weights");
  }
  const size_t rows = x.shape(0);
  const size_t cols = x.shape(1);
  CheckParams(p, cols, name);
  const std::string what = name + " gptq factor";
  CheckMatrix(u_arg, what, sizeof(float));
  if (u_arg.dtype().kind() != 'f' ||
      static_cast<size_t>(u_arg.shape(0)) != cols ||
      static_cast<size_t>(u_arg.shape(1)) != cols) {
    throw py::value_error(what + ": expected float32 of shape (" +
                          std::to_string(cols) + ", " + std::to_string(cols) +
                          ")");
  }
  const float* u = static_cast<const float*>(u_arg.data());
  for (size_t c = 0; c < cols; ++c) {
    // The errors are divided by the diagonal; the rest must be finite.
    if (!(u[c * cols + c] > 0.0f) || !std::isfinite(u[c * cols + c])) {
      throw py::value_error(what + ": diagonal entry " + std::to_string(c) +
                            " is not positive and finite");
    }
    for (size_t j = c; j < cols; ++j) {
      if (!std::isfinite(u[c * cols + j])) {
        throw py::value_error(what + ": NaN or Inf at row " +
                              std::to_string(c) + ", column " +
                              std::to_string(j));
      }
    }
  }
  const auto importance = ImportanceArg(importance_arg, cols, name);
  py::array_t<float> work = AlignedFloatMatrix(rows, cols);
  std::memcpy(work.mutable_data(), x.data(), rows * cols * sizeof(float));
  QuantizedArrays out(rows, cols, p);
  ErrorSink errors;
  {
    float* w = work.mutable_data();
    uint8_t* dst = out.codes_data();
    void* sc = out.scales.mutable_data();
    void* zp = out.zeros_data();
    const float* imp = importance ? importance->data() : nullptr;
    py::gil_scoped_release release;
    GptqMatrix(w, u, rows, cols, p, dst, sc, zp, &errors, imp);
  }
  RaiseReported(errors, name);
  py::object z = out.zeros ? py::object(*out.zeros) : py::none();
  return py::make_tuple(out.codes, out.scales, z, work);
}

py::array_t<float> Dequantize(const py::array& codes, const py::array& scales,
                              const std::optional<py::array>& zeros,
                              const py::object& rows_arg,
                              const py::object& cols_arg, const QuantParams& p,
                              const std::string& name,
                              const py::object& out_arg) {
  const size_t rows = SizeArg(rows_arg, name + ": rows");
  const size_t cols = SizeArg(cols_arg, name + ": cols", 1, kMaxCols);
  CheckQuantized(codes, scales, zeros, rows, cols, p, name);
  py::array_t<float> out;
  if (!out_arg.is_none()) {
    // Not py::array_t<float> as the parameter: pybind11 would convert a
    // float64 `out` into a temporary, fill it, and leave `out` untouched.
    out = FloatOut(out_arg, name, rows, cols);
  } else {
    out = AlignedFloatMatrix(rows, cols);
  }
  {
    const uint8_t* c = static_cast<const uint8_t*>(codes.data());
    const void* s = scales.data();
    const void* z = p.asymmetric() ? zeros->data() : nullptr;
    float* o = out.mutable_data();
    py::gil_scoped_release release;
    DequantizeMatrix(c, s, z, rows, cols, p, o);
  }
  return out;
}

// (signal, noise) per row: sum x^2 and sum (x - x^)^2, as float64 arrays.
py::tuple ReconstructionErrorPy(const py::array& x, DType dtype,
                                const py::array& codes, const py::array& scales,
                                const std::optional<py::array>& zeros,
                                const QuantParams& p, const std::string& name) {
  CheckMatrix(x, name, ItemSize(dtype));
  const size_t rows = x.shape(0);
  const size_t cols = x.shape(1);
  CheckQuantized(codes, scales, zeros, rows, cols, p, name);
  py::array_t<double> signal(rows), noise(rows);
  {
    const void* xs = x.data();
    const uint8_t* c = static_cast<const uint8_t*>(codes.data());
    const void* s = scales.data();
    const void* z = p.asymmetric() ? zeros->data() : nullptr;
    double* sg = signal.mutable_data();
    double* ns = noise.mutable_data();
    py::gil_scoped_release release;
    ReconstructionError(xs, dtype, c, s, z, rows, cols, p, sg, ns);
  }
  return py::make_tuple(signal, noise);
}

py::array Cast(const py::array& x, DType in_type, DType out_type,
               const std::string& name) {
  CheckDType(in_type, name + ": in_type");
  CheckDType(out_type, name + ": out_type");
  if (!(x.flags() & py::array::c_style)) {
    throw py::value_error(name + ": array is not C-contiguous");
  }
  if (static_cast<size_t>(x.itemsize()) != ItemSize(in_type)) {
    throw py::type_error(name + ": element size does not match the dtype");
  }
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array out = out_type == DType::kF32
                      ? py::array(py::dtype::of<float>(), shape)
                  : out_type == DType::kF16 ? py::array(py::dtype("float16"), shape)
                                            : py::array(py::dtype::of<uint16_t>(), shape);
  ErrorSink errors;
  {
    const void* in = x.data();
    void* o = out.mutable_data();
    const size_t n = x.size();
    py::gil_scoped_release release;
    CastArray(in, in_type, n, o, out_type, &errors);
  }
  if (errors.kind() == ErrorKind::kNonFinite) {
    throw py::value_error(name + ": NaN or Inf at flat index " +
                          std::to_string(errors.col()));
  }
  if (errors.kind() == ErrorKind::kCastOverflow) {
    throw py::value_error(name + ": value at flat index " +
                          std::to_string(errors.col()) +
                          " overflows the output type");
  }
  return out;
}

}  // namespace

// Checks that codes, scales and zero points describe a rows x cols matrix
// quantized with p; a clear ValueError naming the tensor otherwise.
void CheckQuantized(const py::array& codes, const py::array& scales,
                    const std::optional<py::array>& zeros, size_t rows,
                    size_t cols, const QuantParams& p,
                    const std::string& name) {
  CheckMatrix(codes, name + " codes", 1);
  const size_t param_size = p.f16_params ? 2 : 4;
  CheckMatrix(scales, name + " scales", param_size);
  CheckParams(p, cols, name);
  const size_t groups = GroupsPerRow(cols, p.group_size);
  const size_t row_bytes = RowBytes(cols, p.bits);
  const std::string for_shape = " for rows=" + std::to_string(rows) +
                                ", cols=" + std::to_string(cols);
  if (static_cast<size_t>(codes.shape(0)) != rows ||
      static_cast<size_t>(codes.shape(1)) != row_bytes) {
    throw py::value_error(name + ": codes have shape (" +
                          std::to_string(codes.shape(0)) + ", " +
                          std::to_string(codes.shape(1)) + "), expected (" +
                          std::to_string(rows) + ", " +
                          std::to_string(row_bytes) + ")" + for_shape);
  }
  auto check_params = [&](const py::array& a, const std::string& what) {
    if (static_cast<size_t>(a.shape(0)) != rows ||
        static_cast<size_t>(a.shape(1)) != groups) {
      throw py::value_error(name + ": " + what + " have shape (" +
                            std::to_string(a.shape(0)) + ", " +
                            std::to_string(a.shape(1)) + "), expected (" +
                            std::to_string(rows) + ", " +
                            std::to_string(groups) + ")" + for_shape);
    }
  };
  check_params(scales, "scales");
  if (p.asymmetric()) {
    if (!zeros) throw py::value_error(name + ": zero points are missing");
    CheckMatrix(*zeros, name + " zero points", param_size);
    check_params(*zeros, "zero points");
  }
}

void BindMoe(py::module_& m);  // py_moe.cc

}  // namespace lowbit

PYBIND11_MODULE(_core, m) {
  using namespace lowbit;
  m.doc() = "lowbit's C++ core: Highway-dispatched quantization kernels.";

  py::enum_<ScaleRule>(m, "ScaleRule")
      .value("ABSMAX", ScaleRule::kAbsMax)
      .value("MEANABS", ScaleRule::kMeanAbs)
      .value("MINMAX", ScaleRule::kMinMax)
      .value("SIGNEDMAX", ScaleRule::kSignedMax);
  py::enum_<Method>(m, "Method")
      .value("RTN", Method::kRtn)
      .value("MSE", Method::kMse)
      .value("HQQ", Method::kHqq);
  py::enum_<DType>(m, "DType")
      .value("F32", DType::kF32)
      .value("F16", DType::kF16)
      .value("BF16", DType::kBF16);

  py::class_<QuantParams> params(m, "QuantParams");
  params.def(py::init<>())
      .def_readwrite("rule", &QuantParams::rule)
      .def_readwrite("scale_divisor", &QuantParams::scale_divisor)
      .def_readwrite("method", &QuantParams::method)
      .def_readwrite("f16_params", &QuantParams::f16_params);
  // Any int32 is stored; CheckParams judges the combination before use.
  constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
  constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
  IntField(params, "QuantParams", "bits", &QuantParams::bits, kI32Min,
           kI32Max);
  IntField(params, "QuantParams", "qmin", &QuantParams::qmin, kI32Min,
           kI32Max);
  IntField(params, "QuantParams", "qmax", &QuantParams::qmax, kI32Min,
           kI32Max);
  IntField(params, "QuantParams", "code_offset", &QuantParams::code_offset,
           kI32Min, kI32Max);
  IntField(params, "QuantParams", "group_size", &QuantParams::group_size,
           size_t{0}, kMaxCols);

  // Layout and search constants, for python/lowbit/schemes.py and the NumPy
  // reference (reference.py): one definition, in quant_params.h.
  m.attr("BLOCK_BYTES") = kBlockBytes;
  m.attr("HQQ_LP_NORM") = kHqqLpNorm;
  m.attr("HQQ_BETA") = kHqqBeta;
  m.attr("HQQ_KAPPA") = kHqqKappa;
  m.attr("HQQ_ITERS") = kHqqIters;
  // The clip ratios MseRatio gives for steps 0 .. MseSteps - 1, for the
  // rules other than meanabs and for meanabs. Step 0 is never tried: the
  // search (kernels and reference) starts from ratio 1.
  auto mse_ratios = [](ScaleRule rule) {
    QuantParams p;
    p.rule = rule;
    py::tuple ratios(MseSteps(p));
    for (int step = 0; step < MseSteps(p); ++step) {
      ratios[step] = MseRatio(p, step);
    }
    return ratios;
  };
  m.attr("MSE_RATIOS") = mse_ratios(ScaleRule::kAbsMax);
  m.attr("MSE_RATIOS_MEANABS") = mse_ratios(ScaleRule::kMeanAbs);

  m.def(
      "row_bytes",
      [](const py::object& cols, const py::object& bits) {
        const size_t c = SizeArg(cols, "cols", 1, kMaxCols);
        const int b = IntArg<int>(bits, "bits", 1, 8);
        try {
          return CheckedRowBytes(c, b);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      "cols"_a, "bits"_a,
      "Stored bytes of one row of codes (whole 16-byte blocks).");
  m.def("quantize", &Quantize, "x"_a, "dtype"_a, "params"_a, "name"_a,
        "importance"_a = py::none(),
        "Quantize a 2-D array; returns (codes, scales, zero points or None). "
        "importance: None or float32 [cols], weights of the mse/hqq error.");
  m.def("gptq", &Gptq, "x"_a, "u"_a, "params"_a, "name"_a,
        "importance"_a = py::none(),
        "GPTQ of float32 x [rows, cols] given u, the upper Cholesky factor "
        "of the damped inverse Hessian [cols, cols] (only its upper triangle "
        "is read); returns (codes, scales, zero points or None, the "
        "reconstruction). importance: as for quantize, for the group "
        "parameter searches.");
  m.def("dequantize", &Dequantize, "codes"_a, "scales"_a, "zeros"_a, "rows"_a,
        "cols"_a, "params"_a, "name"_a, "out"_a = py::none(),
        "Reconstruct float32 weights (into `out` when given).");
  m.def("reconstruction_error", &ReconstructionErrorPy, "x"_a, "dtype"_a,
        "codes"_a, "scales"_a, "zeros"_a, "params"_a, "name"_a,
        "Per-row sum x^2 and sum (x - x^)^2, without materialising x^.");
  m.def("cast", &Cast, "x"_a, "in_type"_a, "out_type"_a, "name"_a,
        "Convert between float32, float16 and bfloat16 (bits as uint16).");
  BindWeight(m);
  BindModel(m);
  BindMoe(m);

  m.def(
      "set_num_threads",
      [](const py::object& n) {
        // More than max_threads() is clamped to it, as documented.
        ThreadPool::Global().SetNumThreads(SizeArg(n, "n", 1));
      },
      "n"_a, "Threads the kernels use (1 to max_threads(); more is clamped).");
  m.def("num_threads", [] { return ThreadPool::Global().NumThreads(); });
  m.def("max_threads", [] { return ThreadPool::Global().MaxThreads(); });

  m.def("available_targets", &AvailableTargets,
        "SIMD targets compiled in and supported by this CPU, best first.");
  m.def("dispatched_target", &DispatchedTarget,
        "The SIMD target the kernels run on now.");
  m.def("force_target", &ForceTarget, "name"_a,
        "Run kernels on one target ('' restores the best). For tests.");
}
