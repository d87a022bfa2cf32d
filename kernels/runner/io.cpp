#include "io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "error.h"

namespace fastflow {
namespace {

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) { return path.substr(path.find_last_of('/') + 1); }

}  // namespace

bool same_file(const std::string& a, const std::string& b) {
  // (device, inode) of the file where it exists; else of its directory, plus its name: `o//a.npy`,
  // `./a.npy` and a symlinked directory all name one file.
  auto key = [](const std::string& p, struct stat& st, std::string& name) {
    if (::stat(p.c_str(), &st) == 0) return true;
    name = base_of(p);
    return name != "." && name != ".." && !name.empty() && ::stat(parent_of(p).c_str(), &st) == 0;
  };
  struct stat sa {}, sb {};
  std::string na, nb;
  if (a.empty() || b.empty()) return false;
  if (!key(a, sa, na) || !key(b, sb, nb)) return a == b;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino && na == nb;
}

void check_output(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs) {
  if (path.empty()) throw InputError(flag + " needs a file name");
  struct stat st {};
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw InputError(flag + " " + path + " is a directory");
  for (const auto& in : inputs)
    if (!in.empty() && same_file(path, in)) throw InputError(flag + " " + path + " would overwrite an input (" + in + ")");
  const auto dir = parent_of(path);
  struct stat sd {};
  if (stat(dir.c_str(), &sd) != 0 || !S_ISDIR(sd.st_mode)) throw InputError(flag + " " + path + ": no directory " + dir);
  if (access(dir.c_str(), W_OK) != 0) throw InputError(flag + " " + path + ": cannot write in " + dir);
}

void write_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = parent_of(path) + "/." + path.substr(path.find_last_of('/') + 1) + ".tmp." +
                          std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw InputError(path + ": cannot write (" + std::strerror(errno) + ")");
  std::size_t done = 0;
  int err = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (!err && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  if (!err && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err) {
    ::unlink(tmp.c_str());
    throw InputError(path + ": cannot write (" + std::strerror(err) + ")");
  }
}

StderrCapture::StderrCapture() {
  std::fflush(stderr);
  std::FILE* f = std::tmpfile();
  if (f == nullptr) return;  // no capture: stderr stays as it is
  file_ = dup(fileno(f));
  std::fclose(f);
  saved_ = dup(2);
  if (file_ < 0 || saved_ < 0 || dup2(file_, 2) < 0) {
    if (saved_ >= 0) close(saved_);
    if (file_ >= 0) close(file_);
    saved_ = file_ = -1;
  }
}

std::string StderrCapture::release() {
  if (saved_ < 0) return "";
  std::fflush(stderr);
  dup2(saved_, 2);
  close(saved_);
  saved_ = -1;
  std::string text;
  char buf[4096];
  ssize_t n = 0;
  for (off_t at = 0; (n = pread(file_, buf, sizeof buf, at)) > 0; at += n) text.append(buf, static_cast<std::size_t>(n));
  close(file_);
  file_ = -1;
  return text;
}

StderrCapture::~StderrCapture() {
  const std::string text = release();
  if (!text.empty()) (void)!write(2, text.data(), text.size());
}

}  // namespace fastflow
