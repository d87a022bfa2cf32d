// The contract stored in a package by fastflow-export (fastflow/export/spec.py): which inputs the
// generator takes, the sample shape, batch range and dtype. Keys are "fastflow.<name>" strings.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace fastflow {

struct Spec {
  std::string kind;                   // generator | conditional | sr | text_encoder | text_generator | vae_decoder
  std::vector<std::string> inputs;    // z | z,cond | lq,noise,tau | tokens | z,emb | latent
  std::vector<int64_t> sample_shape;  // e.g. {1, 16, 16}
  int64_t batch_min = 1, batch_opt = 1, batch_max = 1;
  std::string dtype;                  // fp32 | fp16 | bf16
  int64_t steps = 1;
  int64_t num_classes = 0;            // classes; a text encoder's vocabulary
  std::vector<int64_t> cond_shape;    // tokens (L) or text embeddings (L, D) per sample
  std::string device;                 // cpu | cuda
  std::string checkpoint_sha256;

  c10::ScalarType scalar_type() const;
  std::string describe() const;  // multi-line, for --info
};

// Throws InputError when the metadata has no fastflow keys, is malformed, or is newer than this runner.
Spec parse_spec(const std::unordered_map<std::string, std::string>& metadata, const std::string& source);

}  // namespace fastflow
