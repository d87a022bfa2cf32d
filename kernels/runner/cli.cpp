#include "cli.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "error.h"
#include "io.h"
#include "npy.h"
#include "package_check.h"
#include "png.h"

namespace fastflow {
namespace {

constexpr const char* kUsage =
    "usage: fastflow-run PACKAGE.pt2 --out OUT.npy [--batch B] [--seed S | --input NOISE.npy]\n"
    "                    [--label K] [--tau T] [--lq LQ.npy] [--png GRID.png] [--threads N]\n"
    "                    [--iters N] [--warmup N] [--timing-json F] [--device cpu|cuda] [--info] [--version]\n"
    "       fastflow-run PIPELINE_DIR --out OUT.npy (--tokens IDS.npy | --emb EMB.npy) [--batch B]\n"
    "                    [--seed S | --input NOISE.npy] [--png GRID.png] [--threads N] [--iters N] ...\n"
    "  a pipeline directory (fastflow-export --format pt2 --pipeline) chains text_encoder.pt2 →\n"
    "  generator.pt2 → vae_decoder.pt2; token ids come from `fastflow prompts --ids` (no tokenizer here)\n";

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

// Percentile with linear interpolation (numpy/torch.quantile's default).
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const auto hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

Options parse_args(int argc, char** argv) {
  Options o;
  const std::map<std::string, std::string*> strings = {
      {"--out", &o.out}, {"--png", &o.png}, {"--input", &o.input}, {"--lq", &o.lq},
      {"--timing-json", &o.timing_json}, {"--device", &o.device}, {"--emb", &o.emb}, {"--tokens", &o.tokens}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a == "--version") {  // fastflow's version (pyproject.toml, through CMake) and the libtorch it links
      std::cout << "fastflow-run " << FASTFLOW_VERSION << " (libtorch " << TORCH_VERSION << ")\n";
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
  if (!o.timing_json.empty() && o.iters <= 0) throw InputError("--timing-json needs --iters N (N >= 1 timed calls)");
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

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

at::Tensor read_sample_file(const std::string& path, const Spec& spec, const std::string& what) {
  auto t = read_npy(path);
  if (!at::isFloatingType(t.scalar_type()))
    throw InputError(path + ": " + what + " must be float16/32/64 data, got " + std::string(c10::toString(t.scalar_type())));
  std::vector<int64_t> tail(t.sizes().begin() + std::min<int64_t>(1, t.dim()), t.sizes().end());
  if (t.dim() != static_cast<int64_t>(spec.sample_shape.size()) + 1 || tail != spec.sample_shape)
    throw InputError(path + ": " + what + " has shape " + shape_str(t.sizes()) + ", the package takes [B, " +
                     shape_str(spec.sample_shape).substr(1));
  if (!at::isfinite(t.to(at::kDouble)).all().item<bool>()) throw InputError(path + ": holds NaN or Inf values");
  return t.to(at::kFloat);
}

void check_batch(int64_t b, const Spec& spec) {
  if (b < spec.batch_min || b > spec.batch_max)
    throw InputError("batch " + std::to_string(b) + " is outside the package's range " +
                     std::to_string(spec.batch_min) + ".." + std::to_string(spec.batch_max));
}

at::Tensor seeded_noise(int64_t seed, int64_t b, const Spec& spec) {
  std::vector<int64_t> shape = {b};
  shape.insert(shape.end(), spec.sample_shape.begin(), spec.sample_shape.end());
  torch::manual_seed(static_cast<uint64_t>(seed));
  return at::randn(shape, at::TensorOptions().dtype(at::kFloat));
}

Spec read_spec(const std::string& path) {
  if (!is_file(path)) throw InputError(path + ": file not found");
  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const std::exception&) {
    throw InputError(path + ": not a readable AOTInductor package");
  }
  return parse_spec(meta, path);
}

Package load_package(const std::string& path, const std::string& device) {
  Package p{path, read_spec(path), nullptr};
  if (device != p.spec.device)
    throw InputError(path + " was compiled for " + p.spec.device + "; run it with --device " + p.spec.device);
  if (device == "cuda" && !torch::cuda::is_available()) throw InputError("--device cuda: no CUDA device available");
  check_package(path);  // a cut library would kill the process (SIGBUS) inside the loader
  try {
    p.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model");
  } catch (const c10::Error& e) {
    throw InputError(path + ": cannot load the model (" + e.what_without_backtrace() + ")");
  }
  return p;
}

// AOTInductor's own guards refuse what the code cannot take (they also print the reason to
// stderr: held back, as our one line carries it).
at::Tensor first_call(Package& p, std::vector<at::Tensor>& inputs) {
  StderrCapture guard_output;
  try {
    return p.loader->run(inputs).at(0);
  } catch (const std::exception& e) {
    guard_output.release();
    throw InputError(p.path + ": its compiled code refused inputs its fastflow.* metadata allows (" +
                     first_line(e.what()) + "): the metadata was edited or belongs to another package; re-export it");
  }
}

void to_device(std::vector<at::Tensor>& inputs, const Spec& spec, const std::string& device) {
  const auto dev = device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto& name = spec.inputs[i];
    const bool sample = name == "z" || name == "lq" || name == "noise" || name == "emb" || name == "latent";
    inputs[i] = inputs[i].to(dev, sample ? spec.scalar_type() : inputs[i].scalar_type());
  }
}

void check_outputs(const Options& o, const std::vector<std::string>& inputs) {
  check_output("--out", o.out, inputs);
  for (const auto& [flag, path] : {std::pair<std::string, std::string>{"--png", o.png}, {"--timing-json", o.timing_json}})
    if (!path.empty()) check_output(flag, path, inputs);
  if (same_file(o.png, o.out) || same_file(o.timing_json, o.out) || same_file(o.png, o.timing_json))
    throw InputError("--out, --png and --timing-json must name different files");
}

void write_outputs(const Options& o, const at::Tensor& out, const std::string& what) {
  if (!at::isfinite(out).all().item<bool>()) throw OutputError("the model produced NaN or Inf values");
  write_npy(o.out, out);
  if (!o.png.empty()) write_png_grid(o.png, out);
  std::cout << "wrote " << o.out << (o.png.empty() ? "" : " and " + o.png) << ": " << shape_str(out.sizes())
            << " from " << what << "\n";
}

void time_calls(const Options& o, const std::function<void()>& call, int64_t batch, const std::string& device) {
  if (o.iters <= 0) return;
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
  const double fastest = *std::min_element(ms.begin(), ms.end());
  std::cout << std::fixed << std::setprecision(4) << "latency over " << o.iters << " calls (batch " << batch << ", "
            << o.threads << " thread" << (o.threads > 1 ? "s" : "") << "): p50 " << p50 << " ms, p90 " << p90
            << " ms, p99 " << p99 << " ms, mean " << mean << " ms\n";
  if (!o.timing_json.empty()) {
    std::ostringstream f;
    f << std::setprecision(9) << "{\"p50_ms\": " << p50 << ", \"p90_ms\": " << p90 << ", \"p99_ms\": " << p99
      << ", \"mean_ms\": " << mean << ", \"calls\": " << o.iters << ", \"min_ms\": " << fastest << ", \"batch\": " << batch
      << ", \"threads\": " << o.threads << ", \"device\": \"" << device << "\"}\n";
    write_atomic(o.timing_json, f.str());
  }
}

}  // namespace fastflow
