// fastflow-run: run a generator exported by `fastflow-export --format pt2` without Python.
//
// The package's fastflow metadata says what it takes (z | z,cond | lq,noise,tau), the sample
// shape, batch range and dtype; inputs are built and checked from it, so a wrong shape is one
// line on stderr and exit 2, never an out-of-bounds read. Seeded noise equals Python's
// `torch.manual_seed(S); torch.randn(B, *sample_shape)` (drawn on the CPU, then moved).
//
// Exit codes: 0 success, 2 bad input (one line on stderr), 1 the model produced non-finite values.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "error.h"
#include "io.h"
#include "npy.h"
#include "png.h"
#include "spec.h"

namespace fastflow {
namespace {

constexpr const char* kUsage =
    "usage: fastflow-run PACKAGE.pt2 --out OUT.npy [--batch B] [--seed S | --input NOISE.npy]\n"
    "                    [--label K] [--tau T] [--lq LQ.npy] [--png GRID.png] [--threads N]\n"
    "                    [--iters N] [--warmup N] [--timing-json F] [--device cpu|cuda] [--info]\n";

struct Options {
  std::string package, out, png, input, lq, timing_json, device;
  std::optional<int64_t> batch, label;
  std::optional<double> tau;
  int64_t seed = 0, threads = 1, iters = 0, warmup = 3;
  bool info = false;
};

int64_t parse_int(const std::string& flag, const std::string& value, int64_t lo) {
  try {
    std::size_t used = 0;
    const auto v = std::stoll(value, &used);
    if (used == value.size() && v >= lo) return v;
  } catch (const std::exception&) {
  }
  throw InputError(flag + " takes an integer >= " + std::to_string(lo) + ", got '" + value + "'");
}


// At most the cores this process may run on (its affinity): OpenMP crashes on huge counts.
int64_t parse_threads(const std::string& v) {
  const int64_t n = parse_int("--threads", v, 1);
  cpu_set_t set;
  const int64_t cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  if (n > cores)
    throw InputError("--threads must be between 1 and " + std::to_string(cores) +
                     " (the cores this process may use), got " + v);
  return n;
}

Options parse_args(int argc, char** argv) {
  Options o;
  const std::map<std::string, std::string*> strings = {
      {"--out", &o.out}, {"--png", &o.png}, {"--input", &o.input}, {"--lq", &o.lq},
      {"--timing-json", &o.timing_json}, {"--device", &o.device}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a == "--info") {
      o.info = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      if (!o.package.empty()) throw InputError("unexpected argument '" + a + "'");
      o.package = a;
      continue;
    }
    if (i + 1 >= argc) throw InputError(a + " needs a value");
    const std::string v = argv[++i];
    if (const auto it = strings.find(a); it != strings.end()) *it->second = v;
    else if (a == "--batch") o.batch = parse_int(a, v, 1);
    else if (a == "--label") o.label = parse_int(a, v, 0);
    else if (a == "--seed") o.seed = parse_int(a, v, 0);
    else if (a == "--threads") o.threads = parse_threads(v);
    else if (a == "--iters") o.iters = parse_int(a, v, 0);
    else if (a == "--warmup") o.warmup = parse_int(a, v, 0);
    else if (a == "--tau") {
      char* end = nullptr;
      o.tau = std::strtod(v.c_str(), &end);
      if (end != v.c_str() + v.size() || !(*o.tau >= 0.0 && *o.tau <= 1.0))
        throw InputError("--tau takes a number in [0, 1], got '" + v + "'");
    } else {
      throw InputError("unknown option " + a + " (see --help)");
    }
  }
  if (o.package.empty()) throw InputError("no package given (see --help)");
  if (o.out.empty() && !o.info) throw InputError("--out OUT.npy is required");
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    throw InputError("--device must be cpu or cuda, got '" + o.device + "'");
  return o;
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  return o.str() + "]";
}

// "[B, 1, 16, 16]": what a sample input of the package looks like.
std::string batch_shape_str(const Spec& spec) { return "[B, " + shape_str(spec.sample_shape).substr(1); }

// A float input file [B, *sample_shape] with finite values.
at::Tensor read_sample_file(const std::string& path, const Spec& spec, const std::string& what) {
  auto t = read_npy(path);
  if (!at::isFloatingType(t.scalar_type()))
    throw InputError(path + ": " + what + " must be float16/32/64 data, got " + std::string(c10::toString(t.scalar_type())));
  std::vector<int64_t> tail(t.sizes().begin() + std::min<int64_t>(1, t.dim()), t.sizes().end());
  if (t.dim() != static_cast<int64_t>(spec.sample_shape.size()) + 1 || tail != spec.sample_shape)
    throw InputError(path + ": " + what + " has shape " + shape_str(t.sizes()) + ", the package takes " +
                     batch_shape_str(spec));
  if (!at::isfinite(t.to(at::kDouble)).all().item<bool>()) throw InputError(path + ": holds NaN or Inf values");
  return t.to(at::kFloat);
}

void check_batch(int64_t b, const Spec& spec) {
  if (b < spec.batch_min || b > spec.batch_max)
    throw InputError("batch " + std::to_string(b) + " is outside the package's range " +
                     std::to_string(spec.batch_min) + ".." + std::to_string(spec.batch_max));
}

// The package's inputs in its order, on the CPU (float inputs still float32).
std::vector<at::Tensor> build_inputs(const Options& o, const Spec& spec) {
  const bool sr = spec.kind == "sr";
  if (!sr && (!o.lq.empty() || o.tau)) throw InputError("--lq/--tau are for super-resolution packages only");
  if (spec.kind != "conditional" && o.label) throw InputError("this package takes no class label (--label)");
  at::Tensor lq;
  int64_t b = o.batch.value_or(spec.batch_min);
  if (sr) {
    if (o.lq.empty()) throw InputError("a super-resolution package needs --lq LQ.npy " + batch_shape_str(spec));
    lq = read_sample_file(o.lq, spec, "lq");
    b = lq.size(0);
  }
  at::Tensor noise;
  if (!o.input.empty()) {
    noise = read_sample_file(o.input, spec, "noise");
    b = noise.size(0);
  }
  if (o.batch && *o.batch != b) throw InputError("--batch " + std::to_string(*o.batch) + " disagrees with the "
                                                 "input files' batch " + std::to_string(b));
  if (sr && noise.defined() && noise.size(0) != lq.size(0)) throw InputError("--input and --lq batches differ");
  check_batch(b, spec);
  if (!noise.defined()) {
    std::vector<int64_t> shape = {b};
    shape.insert(shape.end(), spec.sample_shape.begin(), spec.sample_shape.end());
    torch::manual_seed(static_cast<uint64_t>(o.seed));
    noise = at::randn(shape, at::TensorOptions().dtype(at::kFloat));
  }
  if (sr) return {lq, noise, at::full({b}, o.tau.value_or(0.5), at::TensorOptions().dtype(at::kFloat))};
  if (spec.kind == "conditional") {
    if (o.label && *o.label >= spec.num_classes)
      throw InputError("--label " + std::to_string(*o.label) + " is out of range: the package has " +
                       std::to_string(spec.num_classes) + " classes (0.." + std::to_string(spec.num_classes - 1) + ")");
    const auto labels = o.label ? at::full({b}, *o.label, at::TensorOptions().dtype(at::kLong))
                                : at::arange(b, at::TensorOptions().dtype(at::kLong)).remainder(spec.num_classes);
    return {noise, labels};
  }
  return {noise};
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Percentile with linear interpolation (numpy/torch.quantile's default).
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const auto hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// The first call doubles as the check that the package's fastflow.* metadata (what our checks
// trust) agrees with its compiled code: AOTInductor's own guards refuse what the code cannot take
// (they also print the reason to stderr: held back, as our one line carries it).
std::vector<at::Tensor> first_call(torch::inductor::AOTIModelPackageLoader& loader, std::vector<at::Tensor>& inputs,
                                   const std::string& package) {
  StderrCapture guard_output;
  try {
    return loader.run(inputs);
  } catch (const std::exception& e) {
    guard_output.release();
    throw InputError(package + ": its compiled code refused inputs its fastflow.* metadata allows (" +
                     first_line(e.what()) + "): the metadata was edited or belongs to another package; re-export it");
  }
}

int run(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  if (!is_file(o.package)) throw InputError(o.package + ": file not found");
  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(o.package, "model");
  } catch (const std::exception&) {
    throw InputError(o.package + ": not a readable AOTInductor package");
  }
  const Spec spec = parse_spec(meta, o.package);
  if (o.info) {
    std::cout << spec.describe();
    return 0;
  }
  const std::string device = o.device.empty() ? spec.device : o.device;
  if (device != spec.device)
    throw InputError(o.package + " was compiled for " + spec.device + "; run it with --device " + spec.device);
  if (device == "cuda" && !torch::cuda::is_available()) throw InputError("--device cuda: no CUDA device available");
  if (!o.png.empty() && spec.sample_shape.size() == 3 && spec.sample_shape[0] != 1 && spec.sample_shape[0] != 3)
    throw InputError("--png needs 1 or 3 channels; this package makes " + std::to_string(spec.sample_shape[0]));
  const std::vector<std::string> ins = {o.package, o.input, o.lq};  // every output checked before any work
  check_output("--out", o.out, ins);
  for (const auto& [flag, path] : {std::pair<std::string, std::string>{"--png", o.png}, {"--timing-json", o.timing_json}})
    if (!path.empty()) check_output(flag, path, ins);
  if (o.png == o.out || o.timing_json == o.out || (!o.png.empty() && o.png == o.timing_json))
    throw InputError("--out, --png and --timing-json must name different files");
  at::set_num_threads(static_cast<int>(o.threads));

  auto inputs = build_inputs(o, spec);
  const int64_t batch = inputs[0].size(0);
  const auto dev = device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const bool sample = spec.inputs[i] == "z" || spec.inputs[i] == "lq" || spec.inputs[i] == "noise";
    inputs[i] = inputs[i].to(dev, sample ? spec.scalar_type() : inputs[i].scalar_type());
  }

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  try {
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(o.package, "model");
  } catch (const c10::Error& e) {
    throw InputError(o.package + ": cannot load the model (" + e.what_without_backtrace() + ")");
  }
  auto call = [&] { return loader->run(inputs); };
  const auto out = first_call(*loader, inputs, o.package).at(0).to(at::kCPU, at::kFloat);
  if (!at::isfinite(out).all().item<bool>()) throw OutputError("the model produced NaN or Inf values");
  write_npy(o.out, out);
  if (!o.png.empty()) write_png_grid(o.png, out);
  std::cout << "wrote " << o.out << (o.png.empty() ? "" : " and " + o.png) << ": " << shape_str(out.sizes())
            << " from " << spec.kind << " package (" << spec.dtype << ", " << device << ")\n";

  if (o.iters > 0) {
    const bool cuda = device == "cuda";
    for (int64_t i = 0; i < o.warmup; ++i) call();
    if (cuda) torch::cuda::synchronize();
    std::vector<double> ms;
    for (int64_t i = 0; i < o.iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      call();
      if (cuda) torch::cuda::synchronize();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    double mean = 0;
    for (const auto v : ms) mean += v / static_cast<double>(ms.size());
    const double p50 = percentile(ms, 0.5), p90 = percentile(ms, 0.9), p99 = percentile(ms, 0.99);
    std::cout << std::fixed << std::setprecision(4) << "latency over " << o.iters << " calls (batch " << batch
              << ", " << o.threads << " thread" << (o.threads > 1 ? "s" : "") << "): p50 " << p50 << " ms, p90 "
              << p90 << " ms, p99 " << p99 << " ms, mean " << mean << " ms\n";
    if (!o.timing_json.empty()) {
      std::ostringstream f;
      f << std::setprecision(9) << "{\"p50_ms\": " << p50 << ", \"p90_ms\": " << p90 << ", \"p99_ms\": " << p99
        << ", \"mean_ms\": " << mean << ", \"calls\": " << o.iters << ", \"batch\": " << batch
        << ", \"threads\": " << o.threads << ", \"device\": \"" << device << "\"}\n";
      write_atomic(o.timing_json, f.str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace fastflow

int main(int argc, char** argv) {
  // AOTInductor's own input checks, as a second line behind ours, whatever the environment said.
  ::setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", 1);
  try {
    return fastflow::run(argc, argv);
  } catch (const fastflow::InputError& e) {
    std::cerr << "fastflow-run: error: " << fastflow::first_line(e.what()) << "\n";
    return 2;
  } catch (const fastflow::OutputError& e) {
    std::cerr << "fastflow-run: error: " << fastflow::first_line(e.what()) << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "fastflow-run: error: " << fastflow::first_line(e.what_without_backtrace()) << "\n";
    return 2;
  } catch (const std::exception& e) {  // e.g. AOTInductor's guards (std::runtime_error): never an abort
    std::cerr << "fastflow-run: error: " << fastflow::first_line(e.what()) << "\n";
    return 2;
  }
}
