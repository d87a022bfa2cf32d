#include "pipeline.h"

#include <ATen/Parallel.h>

#include <iostream>
#include <map>
#include <optional>

#include "error.h"
#include "json.h"
#include "npy.h"

namespace fastflow {
namespace {

// The components pipeline.json names (the contract fastflow.export.pipeline writes and Python reads).
struct Parts {
  std::string dir;
  std::map<std::string, std::string> files;  // component → file inside dir
  Spec generator;
  std::optional<Spec> text_encoder, vae_decoder;
  std::string path(const std::string& name) const {
    const auto it = files.find(name);
    return it == files.end() ? std::string() : dir + "/" + it->second;
  }
};

// A component's file: a plain name inside the directory (no separator, not "." or "..").
std::string component_file(const Json& c, const std::string& name, const std::string& manifest) {
  const Json* file = c.get("file");
  if (!file || file->type != Json::Type::String || file->string.empty() || file->string == "." ||
      file->string == ".." || file->string.find('/') != std::string::npos ||
      file->string.find('\0') != std::string::npos)
    throw InputError(manifest + ": component '" + name + "' must name a file inside the pipeline directory");
  return file->string;
}

Parts read_parts(const std::string& dir) {
  const std::string manifest = dir + "/pipeline.json";
  if (!is_file(manifest))
    throw InputError(dir + ": not a pipeline directory (no pipeline.json; export one with fastflow-export --format "
                     "pt2 --pipeline)");
  const Json m = read_json(manifest);
  const Json *format = m.get("format"), *version = m.get("version"), *artefacts = m.get("artefact_format"),
             *chain = m.get("chain"), *comps = m.get("components");
  if (!format || format->type != Json::Type::String || format->string != "fastflow-pipeline" || !version ||
      version->type != Json::Type::Number || version->number < 1 || version->number > 1)
    throw InputError(manifest + ": not a fastflow pipeline of version <= 1");
  if (!artefacts || artefacts->type != Json::Type::String || artefacts->string != "pt2")
    throw InputError(manifest + ": fastflow-run runs .pt2 pipelines; this one is " +
                     (artefacts && artefacts->type == Json::Type::String ? artefacts->string : "of no known format"));
  if (!chain || chain->type != Json::Type::Array || chain->array.empty() || !comps ||
      comps->type != Json::Type::Object || chain->array.size() != comps->object.size())
    throw InputError(manifest + ": malformed manifest (chain and components must agree)");
  Parts p{dir, {}, {}, std::nullopt, std::nullopt};
  const std::map<std::string, std::string> kinds = {
      {"text_encoder", "text_encoder"}, {"generator", "text_generator"}, {"vae_decoder", "vae_decoder"}};
  for (const Json& entry : chain->array) {
    const Json* c = entry.type == Json::Type::String ? comps->get(entry.string) : nullptr;
    if (!c || !kinds.count(entry.string) || p.files.count(entry.string))
      throw InputError(manifest + ": malformed manifest (chain names an unknown or repeated component)");
    p.files[entry.string] = component_file(*c, entry.string, manifest);
    const std::string path = p.path(entry.string);
    if (!is_file(path)) throw InputError(manifest + ": names " + p.files[entry.string] + ", which is missing");
    Spec s = read_spec(path);
    if (s.kind != kinds.at(entry.string))
      throw InputError(path + ": holds a " + s.kind + ", not a " + kinds.at(entry.string));
    if (entry.string == "generator") p.generator = s;
    else if (entry.string == "text_encoder") p.text_encoder = s;
    else p.vae_decoder = s;
  }
  if (!p.files.count("generator")) throw InputError(manifest + ": the chain has no generator");
  return p;
}

// --tokens [L] or [B, L] integer ids within the vocabulary, as int64.
at::Tensor read_tokens(const std::string& path, const Spec& te) {
  auto t = read_npy(path);
  if (t.scalar_type() != at::kLong && t.scalar_type() != at::kInt)
    throw InputError(path + ": token ids must be int32/int64, got " + std::string(c10::toString(t.scalar_type())));
  const int64_t length = te.cond_shape.at(0);
  if (!((t.dim() == 1 || t.dim() == 2) && t.size(-1) == length))
    throw InputError(path + ": token ids have shape " + shape_str(t.sizes()) + ", the text encoder takes [B, " +
                     std::to_string(length) + "] or [" + std::to_string(length) + "]");
  t = t.to(at::kLong);
  if (t.numel() && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= te.num_classes))
    throw InputError(path + ": token ids must lie in [0, " + std::to_string(te.num_classes) + ") (the vocabulary)");
  return t;
}

// --emb [L, D] or [B, L, D] finite text embeddings, as float32.
at::Tensor read_embeddings(const std::string& path, const Spec& gen) {
  auto t = read_npy(path);
  if (!at::isFloatingType(t.scalar_type()))
    throw InputError(path + ": embeddings must be float16/32/64 data");
  const std::vector<int64_t> want = gen.cond_shape;
  std::vector<int64_t> tail(t.sizes().end() - std::min<int64_t>(t.dim(), 2), t.sizes().end());
  if (!((t.dim() == 2 || t.dim() == 3) && tail == want))
    throw InputError(path + ": embeddings have shape " + shape_str(t.sizes()) + ", the generator takes [B, " +
                     shape_str(want).substr(1) + " or " + shape_str(want));
  if (!at::isfinite(t.to(at::kDouble)).all().item<bool>()) throw InputError(path + ": holds NaN or Inf values");
  return t.to(at::kFloat);
}

// The batch from --batch, --input and a batched text input (they must agree); an unbatched text
// input is repeated over it.
int64_t batch_of(const Options& o, const at::Tensor& noise, const at::Tensor& text, bool text_batched, int64_t lo) {
  std::optional<int64_t> b = o.batch;
  for (const auto& [what, n] : {std::pair<std::string, std::optional<int64_t>>{
                                    "--input", noise.defined() ? std::optional<int64_t>(noise.size(0)) : std::nullopt},
                                {"the text input", text_batched ? std::optional<int64_t>(text.size(0)) : std::nullopt}}) {
    if (!n) continue;
    if (b && *b != *n)
      throw InputError(what + " has batch " + std::to_string(*n) + ", which disagrees with batch " + std::to_string(*b));
    b = n;
  }
  return b.value_or(lo);
}

}  // namespace

int run_pipeline(const Options& o) {
  const Parts p = read_parts(o.package);
  if (o.info) {
    for (const auto& [name, spec] : {std::pair<std::string, std::optional<Spec>>{"text_encoder", p.text_encoder},
                                     {"generator", p.generator}, {"vae_decoder", p.vae_decoder}})
      if (spec) std::cout << "[" << name << "]\n" << spec->describe();
    return 0;
  }
  if (o.label || o.tau || !o.lq.empty()) throw InputError("--label/--tau/--lq are not pipeline inputs");
  if (o.tokens.empty() == o.emb.empty())
    throw InputError("a pipeline takes exactly one of --tokens IDS.npy (from `fastflow prompts --ids`) or --emb EMB.npy");
  if (!o.tokens.empty() && !p.text_encoder)
    throw InputError(o.package + " has no text_encoder (pipeline.json): give --emb EMB.npy");
  const std::string device = o.device.empty() ? p.generator.device : o.device;
  const int64_t channels = p.vae_decoder ? 3 : p.generator.sample_shape.at(0);
  if (!o.png.empty() && channels != 1 && channels != 3)
    throw InputError("--png needs 1 or 3 channels; this pipeline ends in " + std::to_string(channels) +
                     " (no vae_decoder in pipeline.json)");
  std::vector<std::string> inputs = {o.input, o.emb, o.tokens};
  for (const auto& [name, file] : p.files) inputs.push_back(p.path(name));
  check_outputs(o, inputs);
  at::set_num_threads(static_cast<int>(o.threads));

  at::Tensor text = o.tokens.empty() ? read_embeddings(o.emb, p.generator) : read_tokens(o.tokens, *p.text_encoder);
  const bool batched = text.dim() == (o.tokens.empty() ? 3 : 2);
  at::Tensor noise = o.input.empty() ? at::Tensor() : read_sample_file(o.input, p.generator, "noise");
  const int64_t b = batch_of(o, noise, text, batched, p.generator.batch_min);
  for (const auto* spec : {&p.generator, p.text_encoder ? &*p.text_encoder : nullptr,
                           p.vae_decoder ? &*p.vae_decoder : nullptr})
    if (spec) check_batch(b, *spec);
  if (!batched) {
    std::vector<int64_t> shape = {b};
    shape.insert(shape.end(), text.sizes().begin(), text.sizes().end());
    text = text.unsqueeze(0).expand(shape).contiguous();
  }
  if (!noise.defined()) noise = seeded_noise(o.seed, b, p.generator);

  Package gen = load_package(p.path("generator"), device);
  std::optional<Package> te, vae;
  if (!o.tokens.empty()) te = load_package(p.path("text_encoder"), device);
  if (p.vae_decoder) vae = load_package(p.path("vae_decoder"), device);
  std::vector<at::Tensor> te_in = {text};
  auto chain = [&](bool first) {
    auto call = [&](Package& pkg, std::vector<at::Tensor>& in) {
      to_device(in, pkg.spec, device);
      return first ? first_call(pkg, in) : pkg.loader->run(in).at(0);
    };
    std::vector<at::Tensor> gen_in = {noise, te ? call(*te, te_in) : text};
    at::Tensor latent = call(gen, gen_in);
    if (!vae) return latent;
    std::vector<at::Tensor> vae_in = {latent};
    return call(*vae, vae_in);
  };
  const auto out = chain(true).to(at::kCPU, at::kFloat);
  write_outputs(o, out, std::string(te ? "text_encoder → " : "") + "generator" + (vae ? " → vae_decoder" : "") +
                            " (" + p.generator.dtype + ", " + device + ")");
  time_calls(o, [&] { chain(false); }, b, device);
  return 0;
}

}  // namespace fastflow
