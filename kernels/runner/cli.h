#pragma once

// What both modes of fastflow-run share: the options, input files, seeded noise, the checked
// first call of a package, and the latency loop.

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "spec.h"

namespace fastflow {

struct Options {
  std::string package, out, png, input, lq, timing_json, device, emb, tokens;
  std::optional<int64_t> batch, label;
  std::optional<double> tau;
  int64_t seed = 0, threads = 1, iters = 0, warmup = 3;
  bool info = false;
};

Options parse_args(int argc, char** argv);

std::string shape_str(at::IntArrayRef s);
std::string first_line(const std::string& s);
bool is_file(const std::string& path);
bool is_dir(const std::string& path);

// A float input file [B, *sample_shape] with finite values (as float32).
at::Tensor read_sample_file(const std::string& path, const Spec& spec, const std::string& what);
void check_batch(int64_t b, const Spec& spec);
// Python's `torch.manual_seed(seed); torch.randn(b, *sample_shape)`.
at::Tensor seeded_noise(int64_t seed, int64_t b, const Spec& spec);

// A package and its fastflow spec; refuses one compiled for another device.
struct Package {
  std::string path;
  Spec spec;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};
Spec read_spec(const std::string& path);
Package load_package(const std::string& path, const std::string& device);
// The first call doubles as the check that the metadata agrees with the compiled code.
at::Tensor first_call(Package& p, std::vector<at::Tensor>& inputs);
// Moves float "sample" inputs to the package's dtype and every input to the device.
void to_device(std::vector<at::Tensor>& inputs, const Spec& spec, const std::string& device);

// Checks --out/--png/--timing-json before any work (not over an input, distinct, writable).
void check_outputs(const Options& o, const std::vector<std::string>& inputs);
// Writes --out (and --png), after checking the values are finite.
void write_outputs(const Options& o, const at::Tensor& out, const std::string& what);
// --iters N: times `call` after --warmup calls; prints p50/p90/p99 and writes --timing-json.
void time_calls(const Options& o, const std::function<void()>& call, int64_t batch, const std::string& device);

}  // namespace fastflow
