// fastflow-run: run a generator exported by `fastflow-export --format pt2` without Python, or a
// text-to-image pipeline directory (`--pipeline`: text_encoder.pt2 → generator.pt2 → vae_decoder.pt2).
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

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "package_check.h"
#include "error.h"
#include "pipeline.h"
#include "spec.h"

namespace fastflow {
namespace {

// The package's inputs in its order, on the CPU (float inputs still float32).
std::vector<at::Tensor> build_inputs(const Options& o, const Spec& spec) {
  const bool sr = spec.kind == "sr";
  if (!o.emb.empty() || !o.tokens.empty()) throw InputError("--emb/--tokens are for pipeline directories only");
  if (!sr && (!o.lq.empty() || o.tau)) throw InputError("--lq/--tau are for super-resolution packages only");
  if (spec.kind != "conditional" && o.label) throw InputError("this package takes no class label (--label)");
  at::Tensor lq;
  int64_t b = o.batch.value_or(spec.batch_min);
  if (sr) {
    if (o.lq.empty())
      throw InputError("a super-resolution package needs --lq LQ.npy [B, " + shape_str(spec.sample_shape).substr(1));
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
  if (!noise.defined()) noise = seeded_noise(o.seed, b, spec);
  if (sr) return {lq, noise, at::full({b}, o.tau.value_or(0.5), at::TensorOptions().dtype(at::kFloat))};
  if (spec.kind == "conditional") {
    if (o.label && *o.label >= spec.num_classes)
      throw InputError("--label " + std::to_string(*o.label) + " is out of range: the package has " +
                       std::to_string(spec.num_classes) + " classes (0.." + std::to_string(spec.num_classes - 1) + ")");
    const auto labels = o.label ? at::full({b}, *o.label, at::TensorOptions().dtype(at::kLong))
                                : at::arange(b, at::TensorOptions().dtype(at::kLong)).remainder(spec.num_classes);
    return {noise, labels};
  }
  if (spec.kind != "generator")
    throw InputError(o.package + ": a pipeline component (" + spec.kind + "); run its directory instead");
  return {noise};
}

int run(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  if (is_dir(o.package)) return run_pipeline(o);
  const Spec spec = read_spec(o.package);
  if (o.info) {
    check_package(o.package);
    std::cout << spec.describe();
    return 0;
  }
  const std::string device = o.device.empty() ? spec.device : o.device;
  if (!o.png.empty() && spec.sample_shape.size() == 3 && spec.sample_shape[0] != 1 && spec.sample_shape[0] != 3)
    throw InputError("--png needs 1 or 3 channels; this package makes " + std::to_string(spec.sample_shape[0]));
  check_outputs(o, {o.package, o.input, o.lq});  // every output checked before any work
  at::set_num_threads(static_cast<int>(o.threads));

  auto inputs = build_inputs(o, spec);
  Package package = load_package(o.package, device);
  to_device(inputs, spec, device);
  const auto out = first_call(package, inputs).to(at::kCPU, at::kFloat);
  write_outputs(o, out, spec.kind + " package (" + spec.dtype + ", " + device + ")");
  time_calls(o, [&] { package.loader->run(inputs); }, inputs[0].size(0), device);
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
