// Errors the runner reports as one line on stderr with exit code 2 (bad input) or 1 (the model
// produced something unusable). Anything else that escapes is a bug and aborts loudly.
#pragma once

#include <stdexcept>
#include <string>

namespace fastflow {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct OutputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace fastflow
