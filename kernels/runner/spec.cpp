#include "spec.h"

#include <sstream>

#include "error.h"

namespace fastflow {
namespace {

constexpr int kVersion = 1;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);) out.push_back(item);
  return out;
}

int64_t to_int(const std::string& value, const std::string& key, const std::string& source) {
  try {
    std::size_t used = 0;
    const auto v = std::stoll(value, &used);
    if (used != value.size()) throw std::invalid_argument(value);
    return v;
  } catch (const std::exception&) {
    throw InputError(source + ": malformed fastflow metadata (" + key + " = '" + value + "')");
  }
}

}  // namespace

c10::ScalarType Spec::scalar_type() const {
  if (dtype == "fp16") return c10::kHalf;
  if (dtype == "bf16") return c10::kBFloat16;
  return c10::kFloat;
}

std::string Spec::describe() const {
  std::ostringstream o;
  o << "kind: " << kind << "\ninputs:";
  for (const auto& i : inputs) o << " " << i;
  o << "\nsample shape:";
  for (const auto d : sample_shape) o << " " << d;
  o << "\nbatch: " << batch_min << ".." << batch_max << " (opt " << batch_opt << ")\ndtype: " << dtype
    << "\nsteps: " << steps << "\nnum classes: " << num_classes << "\ndevice: " << device
    << "\ncheckpoint sha256: " << checkpoint_sha256 << "\n";
  if (!cond_shape.empty()) {
    o << "cond shape:";
    for (const auto d : cond_shape) o << " " << d;
    o << "\n";
  }
  return o.str();
}

Spec parse_spec(const std::unordered_map<std::string, std::string>& metadata, const std::string& source) {
  auto get = [&](const std::string& key) -> const std::string& {
    const auto it = metadata.find("fastflow." + key);
    if (it == metadata.end()) {
      if (key == "version")
        throw InputError(source + ": no fastflow metadata (export it with fastflow-export --format pt2)");
      throw InputError(source + ": malformed fastflow metadata (no " + key + ")");
    }
    return it->second;
  };
  if (to_int(get("version"), "version", source) > kVersion)
    throw InputError(source + ": made by a newer fastflow (metadata version " + get("version") + ")");
  Spec s;
  s.kind = get("kind");
  s.inputs = split(get("inputs"), ',');
  for (const auto& d : split(get("sample_shape"), ',')) s.sample_shape.push_back(to_int(d, "sample_shape", source));
  s.batch_min = to_int(get("batch_min"), "batch_min", source);
  s.batch_opt = to_int(get("batch_opt"), "batch_opt", source);
  s.batch_max = to_int(get("batch_max"), "batch_max", source);
  s.dtype = get("dtype");
  s.steps = to_int(get("steps"), "steps", source);
  s.num_classes = to_int(get("num_classes"), "num_classes", source);
  s.device = get("device");
  s.checkpoint_sha256 = get("checkpoint_sha256");
  if (const auto c = metadata.find("fastflow.cond_shape"); c != metadata.end())
    for (const auto& d : split(c->second, ',')) s.cond_shape.push_back(to_int(d, "cond_shape", source));
  using Names = std::vector<std::string>;
  const bool inputs_ok = (s.kind == "generator" && s.inputs == Names{"z"}) ||
                         (s.kind == "conditional" && s.inputs == Names{"z", "cond"}) ||
                         (s.kind == "sr" && s.inputs == Names{"lq", "noise", "tau"}) ||
                         (s.kind == "text_encoder" && s.inputs == Names{"tokens"} && s.cond_shape.size() == 1) ||
                         (s.kind == "text_generator" && s.inputs == Names{"z", "emb"} && s.cond_shape.size() == 2) ||
                         (s.kind == "vae_decoder" && s.inputs == Names{"latent"});
  if (!inputs_ok) throw InputError(source + ": unknown generator kind '" + s.kind + "' / inputs '" + get("inputs") + "'");
  if (s.dtype != "fp32" && s.dtype != "fp16" && s.dtype != "bf16")
    throw InputError(source + ": unknown dtype '" + s.dtype + "'");
  if (!(1 <= s.batch_min && s.batch_min <= s.batch_opt && s.batch_opt <= s.batch_max))
    throw InputError(source + ": malformed batch range in metadata");
  if ((s.kind == "conditional" || s.kind == "text_encoder") && s.num_classes < 1)
    throw InputError(source + ": " + s.kind + " package without num_classes");
  // fastflow.fused (absent in older packages): off / triton run here, and "cpu" (the CPU block kernel,
  // whose library the runner links); "op" calls ops only Python registers.
  const auto fused = metadata.find("fastflow.fused");
  if (fused != metadata.end() && fused->second == "op")
    throw InputError(source + ": calls fastflow's Python-registered fused ops (exported with --fused on without "
                     "CUDA); re-export with --fused off, or with --fused on on a CUDA machine");
  if (fused != metadata.end() && fused->second != "off" && fused->second != "triton" &&
      fused->second != "cpu")
    throw InputError(source + ": unknown fastflow.fused '" + fused->second + "'");
  return s;
}

}  // namespace fastflow
