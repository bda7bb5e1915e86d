// The write calls of src/io (open for writing, write) behind one seam, with an optional injected fault
// for tests (tests/io/test_output_faults.cpp, tests/app/test_cli_output_faults.cpp): the environment
// variable FLUXBATCH_TEST_WRITE_FAULT set to
//   "enospc-after:N"  every write past the first N bytes (process-wide) fails with ENOSPC, the write that
//                     crosses N writes its part first (a disk filling up mid-file);
//   "erofs"           every open for writing fails with EROFS (a read-only filesystem, which root cannot
//                     get with chmod);
//   "nolock"          flock fails with ENOLCK (a network filesystem without a lock daemon).
// Read once per process. Internal to src/io.
#pragma once
#include <sys/types.h>

#include <cstddef>

namespace fluxbatch::io::detail {

// ::open(path, flags, mode) for files io writes.
int open_for_writing(const char* path, int flags, int mode);
// ::write(fd, data, size).
ssize_t write_some(int fd, const void* data, std::size_t size);
// ::flock(fd, operation).
int lock_file(int fd, int operation);

// Replaces the fault (the same spellings as the environment variable; nullptr: none), for tests that
// run in one process.
void set_write_fault(const char* spec);

}  // namespace fluxbatch::io::detail
