// What a failure inside a stage becomes. Out-of-memory is the job runner's business (halve and retry);
// anything else means the model or the device cannot do the work, for this item or any other, so the job
// stops with a model or device error (exit 3) instead of failing every item the same way.
#pragma once
#include <exception>
#include <string>

namespace fluxbatch::runtime {

// The message a user sees: libtorch's and other foreign errors in one line (newlines folded), c10's C++
// backtrace ("Exception raised from ... frame #0 ...") only when `with_backtrace` (-v); fluxbatch's own
// errors as written.
std::string user_message(const std::exception& error, bool with_backtrace);

// Throws `error` as the error that stops the job, its message prefixed by `context` (e.g. "denoise stage,
// batch of 2 (a.png, b.png)"): fluxbatch's own errors keep their kind, except an InputError (the job was
// validated; the model could not process it), which becomes a ModelError; c10/CUDA errors become a
// DeviceError when they name CUDA, cuBLAS, cuDNN or NCCL, else a ModelError. The c10 backtrace is dropped
// (logged at debug level).
[[noreturn]] void throw_stage_error(const std::exception& error, const std::string& context);

}  // namespace fluxbatch::runtime
