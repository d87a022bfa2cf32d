// Output files of the runner: checked before any work, written whole or not at all.
#pragma once

#include <string>
#include <vector>

namespace fastflow {

// Throws InputError when `path` cannot be an output: empty, a directory, in a directory that does
// not exist or is not writable, or the same file as one of `inputs` (the package, --input, --lq).
void check_output(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs);

// Writes `bytes` to a temporary file next to `path`, flushes it to disk, then renames it over
// `path`: a full disk or a kill leaves the old file (or none), never a partial one. InputError
// (one line, exit 2) when the disk refuses.
void write_atomic(const std::string& path, const std::string& bytes);

}  // namespace fastflow
