#include "io/write_faults.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "fluxbatch/io/output_fault.h"

namespace fluxbatch::io {

bool is_filesystem_fault(int error_code) {
  return error_code == ENOSPC || error_code == EDQUOT || error_code == EROFS || error_code == EIO ||
         error_code == EFBIG;
}

void throw_output_error(const std::string& message, int error_code) {
  if (is_filesystem_fault(error_code)) throw OutputFault(message, error_code);
  throw OutputError(message);
}

namespace detail {
namespace {

struct Fault {
  enum Kind { kNone, kEnospcAfter, kErofs, kNoLock } kind = kNone;
  long long budget = 0;  // kEnospcAfter: bytes still writable
};

Fault parse(const char* spec) {
  Fault out;
  if (spec == nullptr) return out;
  const std::string s(spec);
  if (s.rfind("enospc-after:", 0) == 0) {
    out.kind = Fault::kEnospcAfter;
    out.budget = std::atoll(s.c_str() + 13);
  } else if (s == "erofs") {
    out.kind = Fault::kErofs;
  } else if (s == "nolock") {
    out.kind = Fault::kNoLock;
  }
  return out;
}

Fault& fault() {
  static Fault f = parse(std::getenv("FLUXBATCH_TEST_WRITE_FAULT"));
  return f;
}

// The runner writes PNGs on several threads (its output queue) and the manifest on another, and tests
// change the fault while they run: every use of the fault holds this.
std::mutex& fault_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

int open_for_writing(const char* path, int flags, int mode) {
  std::unique_lock<std::mutex> lock(fault_mutex());
  if (fault().kind == Fault::kErofs) {
    errno = EROFS;
    return -1;
  }
  lock.unlock();
  return ::open(path, flags, mode);
}

ssize_t write_some(int fd, const void* data, std::size_t size) {
  std::unique_lock<std::mutex> lock(fault_mutex());
  Fault& f = fault();
  if (f.kind == Fault::kEnospcAfter) {  // held across the write: the budget is shared by every thread
    if (f.budget <= 0) {
      errno = ENOSPC;
      return -1;
    }
    if (static_cast<long long>(size) > f.budget) size = static_cast<std::size_t>(f.budget);
    const ssize_t n = ::write(fd, data, size);
    if (n > 0) f.budget -= n;
    return n;
  }
  lock.unlock();
  return ::write(fd, data, size);
}

int lock_file(int fd, int operation) {
  std::unique_lock<std::mutex> lock(fault_mutex());
  if (fault().kind == Fault::kNoLock) {
    errno = ENOLCK;
    return -1;
  }
  lock.unlock();
  return ::flock(fd, operation);
}

void set_write_fault(const char* spec) {
  const std::lock_guard<std::mutex> lock(fault_mutex());
  fault() = parse(spec);
}

}  // namespace detail
}  // namespace fluxbatch::io
