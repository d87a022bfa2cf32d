// Checks of a .pt2 package before the AOTInductor loader extracts and dlopens its library: the
// same checks as fastflow/export/package_check.py. A library cut short would be mapped past its end
// and kill the process with SIGBUS on first touch; these checks turn that into one line, exit 2.
#pragma once

#include <string>

namespace fastflow {

// Throws InputError unless `path` is a zip whose central directory is readable, whose entries lie
// inside the file and match their CRC-32, and whose `.so` entries are stored, whole 64-bit ELF
// libraries (header tables and loadable segments inside their bytes).
void check_package(const std::string& path);

}  // namespace fastflow
