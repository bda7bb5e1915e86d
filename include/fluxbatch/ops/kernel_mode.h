// Which implementation the fused ops run on a CUDA device. kFused: the project's own kernels (one pass
// over memory, fp32 arithmetic, one rounding per output). kReference: the ATen composition the reference
// (diffusers) runs, op for op and rounding for rounding, as the CPU always does. The CPU path is the
// reference in both modes: the golden tests compare it with diffusers bit for bit.
#pragma once

namespace fluxbatch::ops {

enum class KernelMode { kFused, kReference };

// Process-wide; read on every op call (an atomic load), so set it before rendering starts.
KernelMode kernel_mode();
void set_kernel_mode(KernelMode mode);

// "fused" / "reference"
const char* kernel_mode_name(KernelMode mode);

// Restores the previous mode when it goes out of scope (tests and benchmarks compare both modes).
class KernelModeGuard {
 public:
  explicit KernelModeGuard(KernelMode mode) : previous_(kernel_mode()) { set_kernel_mode(mode); }
  ~KernelModeGuard() { set_kernel_mode(previous_); }
  KernelModeGuard(const KernelModeGuard&) = delete;
  KernelModeGuard& operator=(const KernelModeGuard&) = delete;

 private:
  KernelMode previous_;
};

}  // namespace fluxbatch::ops
