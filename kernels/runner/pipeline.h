#pragma once

#include "cli.h"

namespace fastflow {

// A pipeline directory (`fastflow-export --format pt2 --pipeline`): [text_encoder.pt2 →]
// generator.pt2 [→ vae_decoder.pt2], from --tokens IDS.npy or --emb EMB.npy and seeded noise.
int run_pipeline(const Options& o);

}  // namespace fastflow
