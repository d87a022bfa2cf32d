// A small JSON reader for the manifests fastflow writes (pipeline.json): objects, arrays, strings,
// numbers, true/false/null. Hostile input (deep nesting, a huge file, bad escapes, trailing bytes)
// is an InputError naming the file, never a crash.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fastflow {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  // The member `key` of an object, or nullptr (also when this is not an object).
  const Json* get(const std::string& key) const;
};

// Parses the file at `path` (at most 1 MiB, nesting at most 64 deep).
Json read_json(const std::string& path);

}  // namespace fastflow
