// Temp file + fsync + rename + directory fsync: the POSIX recipe for atomic replacement.
#include "fluxbatch/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>  // renameat2, RENAME_NOREPLACE (glibc >= 2.28)
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/output_fault.h"
#include "io/write_faults.h"

namespace fluxbatch::io {
namespace {

namespace fs = std::filesystem;

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw_output_error("cannot write " + path + ": " + what + ": " + errno_text(err), err);
}

// Unique within the process (counter) and across processes (pid); hidden so that a crash
// leftover is not mistaken for an output image.
std::string temp_path_for(const fs::path& target) {
  static std::atomic<unsigned> counter{0};
  const std::string name = "." + target.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter.fetch_add(1));
  return (target.parent_path() / name).string();
}

void write_all(int fd, std::string_view bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = detail::write_some(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, "write failed", errno);
    }
    done += static_cast<size_t>(n);
  }
}

// Makes the rename itself durable; some filesystems refuse fsync on directories (EINVAL),
// which is not an error for us.
void fsync_directory(const fs::path& dir, const std::string& path) {
  const std::string d = dir.empty() ? std::string(".") : dir.string();
  const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
    const int err = errno;
    ::close(fd);
    fail(path, "fsync of directory " + d + " failed", err);
  }
  ::close(fd);
}

// rename() without clobbering: renameat2(RENAME_NOREPLACE), or link()+unlink() where the
// filesystem lacks it. Both fail with EEXIST when `to` exists.
int rename_no_replace(const char* from, const char* to) {
  if (::renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) return -1;
  if (::link(from, to) == 0) {
    ::unlink(from);
    return 0;
  }
  // Filesystems without hard links (SMB/CIFS, FAT, some FUSE mounts): look, then rename. Only a writer
  // racing us between the two could be clobbered, and the manifest lock keeps other runs out.
  if (errno != EPERM && errno != ENOTSUP && errno != EOPNOTSUPP && errno != ENOSYS) return -1;
  struct stat st {};
  if (::lstat(to, &st) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::rename(from, to);
}

}  // namespace

void write_file_atomic(const std::string& path, std::string_view bytes, bool replace_existing) {
  const fs::path target(path);
  const std::string temp = temp_path_for(target);
  const int fd = detail::open_for_writing(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot create temporary file " + temp, errno);
  bool closed = false;
  try {
    write_all(fd, bytes, path);
    if (::fsync(fd) != 0) fail(path, "fsync failed", errno);
    closed = true;  // close() releases the descriptor even when it reports an error
    if (::close(fd) != 0) fail(path, "close failed", errno);
  } catch (...) {
    if (!closed) ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  const int renamed = replace_existing ? ::rename(temp.c_str(), path.c_str())
                                       : rename_no_replace(temp.c_str(), path.c_str());
  if (renamed != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    if (err == EEXIST && !replace_existing) throw OutputError("not replacing " + path + ": the file already exists");
    fail(path, "rename from " + temp + " failed", err);
  }
  fsync_directory(target.parent_path(), path);
}

std::string create_once(const std::string& path, std::string_view bytes) {
  const fs::path target(path);
  const std::string temp = temp_path_for(target);
  const int fd = detail::open_for_writing(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot create temporary file " + temp, errno);
  try {
    write_all(fd, bytes, path);
    if (::fsync(fd) != 0) fail(path, "fsync failed", errno);
  } catch (...) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  ::close(fd);
  const int linked = ::link(temp.c_str(), path.c_str());
  const int err = errno;
  ::unlink(temp.c_str());
  if (linked != 0 && err != EEXIST) fail(path, "link from " + temp + " failed", err);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OutputError("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void check_writable_directory(const std::string& dir) {
  ensure_directory(dir);
  const std::string probe = temp_path_for(fs::path(dir) / "fluxbatch-write-check");
  const int fd = detail::open_for_writing(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    throw_output_error("cannot write to the output directory " + dir + ": " + errno_text(err) +
                           " (choose a writable one with --out or the job's output.dir)",
                       err);
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

void ensure_directory(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw OutputError("cannot create output directory " + dir + ": " + ec.message());
  if (!fs::is_directory(dir, ec)) throw OutputError("output path " + dir + " exists and is not a directory");
}

}  // namespace fluxbatch::io
