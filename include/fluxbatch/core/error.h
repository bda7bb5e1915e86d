// The error hierarchy. Code inside throws these; only src/app maps them to exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace fluxbatch {

// Base of every error fluxbatch raises on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad user input: CLI arguments, job files, prompt lists. Exit code 2; nothing was written.
class InputError : public Error {
 public:
  using Error::Error;
};

// A model file or folder that is missing, corrupt or of an unsupported layout. Exit code 3.
class ModelError : public Error {
 public:
  using Error::Error;
};

// The device misbehaved (no CUDA, driver error, ...). Exit code 3.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// An output could not be written (disk full, permissions). Exit code 3.
class OutputError : public Error {
 public:
  using Error::Error;
};

}  // namespace fluxbatch

// FLUXBATCH_CHECK(cond, ExceptionType, message-expression): throw with the message when cond fails.
#define FLUXBATCH_CHECK(cond, Type, msg) \
  do {                                   \
    if (!(cond)) throw Type(msg);        \
  } while (0)
