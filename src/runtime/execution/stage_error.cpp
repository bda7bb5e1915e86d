#include "fluxbatch/runtime/execution/stage_error.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/output_fault.h"

namespace fluxbatch::runtime {
namespace {

// Newlines and runs of spaces folded into single spaces, ends trimmed.
std::string one_line(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool space = false;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

bool names_device(const std::string& message) {
  std::string lower = message;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* needle : {"cuda", "cublas", "cudnn", "nccl", "device-side assert", "illegal memory access"}) {
    if (lower.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::string user_message(const std::exception& error, bool with_backtrace) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) {
    return with_backtrace ? std::string(c10_error->what()) : one_line(c10_error->what_without_backtrace());
  }
  // fluxbatch's own messages are written for the user (a job file's problems come one per line).
  if (dynamic_cast<const Error*>(&error) != nullptr || with_backtrace) return error.what();
  return one_line(error.what());
}

void throw_stage_error(const std::exception& error, const std::string& context) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) {
    log::debug(context + ": " + c10_error->what());  // with the backtrace, for -v
  }
  const std::string message = context + ": " + user_message(error, false);
  if (const auto* fault = dynamic_cast<const io::OutputFault*>(&error)) throw io::OutputFault(message, fault->error_code());
  if (dynamic_cast<const OutputError*>(&error) != nullptr) throw OutputError(message);
  if (dynamic_cast<const DeviceError*>(&error) != nullptr) throw DeviceError(message);
  if (dynamic_cast<const ModelError*>(&error) != nullptr || dynamic_cast<const InputError*>(&error) != nullptr) {
    throw ModelError(message);
  }
  if (names_device(message)) throw DeviceError(message);
  throw ModelError(message);
}

}  // namespace fluxbatch::runtime
