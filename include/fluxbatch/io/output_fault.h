// Output failures that no later write can escape: the filesystem is full, over quota, read-only or
// failing. The job runner stops on these (exit 3) instead of failing every remaining image one by one;
// other OutputErrors (one file that cannot be created) fail only their image.
#pragma once
#include <string>

#include "fluxbatch/core/error.h"

namespace fluxbatch::io {

class OutputFault : public OutputError {
 public:
  OutputFault(const std::string& message, int error_code) : OutputError(message), error_code_(error_code) {}
  int error_code() const { return error_code_; }  // the errno

 private:
  int error_code_;
};

// True for the errnos of a filesystem that refuses every write: ENOSPC, EDQUOT, EROFS, EIO, EFBIG.
bool is_filesystem_fault(int error_code);

// Throws OutputFault when is_filesystem_fault(error_code), else OutputError, with `message`.
[[noreturn]] void throw_output_error(const std::string& message, int error_code);

}  // namespace fluxbatch::io
