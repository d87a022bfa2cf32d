// Output files of the runner: checked before any work, written whole or not at all.
#pragma once

#include <string>
#include <vector>

namespace fastflow {

// Whether `a` and `b` name one file: compared as (device, inode) of the file, or, for a file not yet
// there, of its directory plus its name; never as strings.
bool same_file(const std::string& a, const std::string& b);

// Throws InputError when `path` cannot be an output: empty, a directory, in a directory that does
// not exist or is not writable, or the same file as one of `inputs` (the package, --input, --lq).
void check_output(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs);

// Writes `bytes` to a temporary file next to `path`, flushes it to disk, then renames it over
// `path`: a full disk or a kill leaves the old file (or none), never a partial one. InputError
// (one line, exit 2) when the disk refuses.
void write_atomic(const std::string& path, const std::string& bytes);

// Holds what is written to stderr (fd 2) while alive; release() returns it and restores fd 2, and
// the destructor writes it back unchanged if release() was not called (nothing is lost).
class StderrCapture {
 public:
  StderrCapture();
  ~StderrCapture();
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  std::string release();

 private:
  int saved_ = -1;
  int file_ = -1;
};

}  // namespace fastflow
