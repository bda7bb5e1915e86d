#include "fluxbatch/ops/kernel_mode.h"

#include <atomic>

namespace fluxbatch::ops {
namespace {
std::atomic<KernelMode> g_mode{KernelMode::kFused};
}  // namespace

KernelMode kernel_mode() { return g_mode.load(std::memory_order_relaxed); }

void set_kernel_mode(KernelMode mode) { g_mode.store(mode, std::memory_order_relaxed); }

const char* kernel_mode_name(KernelMode mode) { return mode == KernelMode::kFused ? "fused" : "reference"; }

}  // namespace fluxbatch::ops
