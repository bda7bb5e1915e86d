#include "fluxbatch/runtime/memory/memory_budget.h"

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_probe.h"

namespace fluxbatch::runtime {
namespace {

constexpr uint8_t kPriority = 100;  // above the default CPU allocator's registration

// Wraps the CPU allocator that was current at install time. Its DataPtrs are "simple" (context ==
// data, as raw_allocate() in oneDNN paths requires): a table maps each pointer to the wrapped
// DataPtr and its size, so a free decrements the count even after uninstall.
class CountingAllocator final : public c10::Allocator {
 public:
  c10::Allocator* base = nullptr;
  std::atomic<bool> installed{false};
  std::atomic<int> scopes{0};
  std::atomic<int64_t> budget{std::numeric_limits<int64_t>::max()};
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};

  c10::DataPtr allocate(size_t n) override {
    const auto bytes = static_cast<int64_t>(n);
    const int64_t now = live.load();
    if (scopes.load() > 0 && now + bytes > budget.load()) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "CPU out of memory: allocating ", format_bytes(bytes), " with ",
                       format_bytes(now), " in use would exceed the --vram-budget of ", format_bytes(budget.load()));
    }
    c10::DataPtr inner = base->allocate(n);
    void* data = inner.get();
    if (data == nullptr) return inner;  // zero bytes: nothing to count
    {
      std::lock_guard<std::mutex> lock(mutex);
      owned.emplace(data, Owned{std::move(inner), bytes});
    }
    const int64_t after = live.fetch_add(bytes) + bytes;
    int64_t seen = peak.load();
    while (after > seen && !peak.compare_exchange_weak(seen, after)) {
    }
    return {data, data, &release, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count > 0) std::memcpy(dest, src, count);
  }

 private:
  struct Owned {
    c10::DataPtr inner;
    int64_t bytes = 0;
  };
  std::mutex mutex;
  std::unordered_map<void*, Owned> owned;

  static void release(void* data);
};

// Never destroyed: tensors counted by it may outlive any budget object (and static destructors).
CountingAllocator& counting() {
  static auto* allocator = new CountingAllocator();
  return *allocator;
}

void CountingAllocator::release(void* data) {
  if (data == nullptr) return;
  CountingAllocator& self = counting();
  Owned gone;
  {
    std::lock_guard<std::mutex> lock(self.mutex);
    auto it = self.owned.find(data);
    if (it == self.owned.end()) return;  // not ours; cannot happen for pointers we handed out
    gone = std::move(it->second);
    self.owned.erase(it);
  }
  self.live.fetch_sub(gone.bytes);
}  // `gone.inner` frees through the wrapped allocator's deleter, outside the lock

}  // namespace

int64_t parse_byte_size(const std::string& text, const std::string& what) {
  const auto bad = [&]() {
    return InputError(what + ": expected a size such as 512M, 1.5G or 2GiB, got '" + text + "'");
  };
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    throw bad();
  }
  if (!std::isfinite(value) || value <= 0.0 || text.find_first_of("+-eExX") != std::string::npos) throw bad();
  std::string unit = text.substr(used);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() == 3 && unit.substr(1) == "IB") unit = unit.substr(0, 1);
  if (unit.size() == 2 && unit[1] == 'B') unit = unit.substr(0, 1);
  double scale = 1.0;
  if (unit == "K") scale = 1024.0;
  else if (unit == "M") scale = 1024.0 * 1024.0;
  else if (unit == "G") scale = 1024.0 * 1024.0 * 1024.0;
  else if (unit == "T") scale = 1024.0 * 1024.0 * 1024.0 * 1024.0;
  else if (!unit.empty() && unit != "B") throw bad();
  const double bytes = value * scale;
  if (bytes < 1.0 || bytes > 9.0e18) throw bad();
  return static_cast<int64_t>(bytes);
}

std::string format_bytes(int64_t bytes) {
  char buf[48];
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
  else if (bytes >= (int64_t{1} << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
  else if (bytes >= (int64_t{1} << 10)) std::snprintf(buf, sizeof buf, "%.1f KiB", b / (1 << 10));
  else std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  return buf;
}

CpuMemoryBudget::CpuMemoryBudget(int64_t budget_bytes) {
  CountingAllocator& a = counting();
  if (a.installed.exchange(true)) throw DeviceError("a CPU memory budget is already installed");
  a.base = c10::GetAllocator(c10::kCPU);
  a.budget = budget_bytes;
  a.peak = a.live.load();
  c10::SetAllocator(c10::kCPU, &a, kPriority);
}

CpuMemoryBudget::~CpuMemoryBudget() {
  CountingAllocator& a = counting();
  c10::SetAllocator(c10::kCPU, a.base, kPriority);
  a.installed = false;
}

int64_t CpuMemoryBudget::budget_bytes() const { return counting().budget.load(); }
void CpuMemoryBudget::set_budget_bytes(int64_t bytes) { counting().budget = bytes; }
int64_t CpuMemoryBudget::live_bytes() const { return counting().live.load(); }
int64_t CpuMemoryBudget::peak_bytes() const { return counting().peak.load(); }
void CpuMemoryBudget::reset_peak() { counting().peak = counting().live.load(); }

CpuMemoryBudget::Scope::Scope(CpuMemoryBudget& /*budget*/) { ++counting().scopes; }
CpuMemoryBudget::Scope::~Scope() { --counting().scopes; }

void cap_cuda_memory(int device_index, int64_t bytes) {
  for (const GpuMemory& g : probe_gpus()) {
    if (g.index != device_index) continue;
    if (bytes > g.total_bytes) {
      throw DeviceError("--vram-budget " + format_bytes(bytes) + " exceeds cuda:" + std::to_string(device_index) +
                        "'s " + format_bytes(g.total_bytes));
    }
#ifdef FLUXBATCH_WITH_CUDA
    c10::cuda::CUDACachingAllocator::setMemoryFraction(
        static_cast<double>(bytes) / static_cast<double>(g.total_bytes), static_cast<c10::DeviceIndex>(device_index));
#endif
    return;
  }
  throw DeviceError("--vram-budget: no CUDA device cuda:" + std::to_string(device_index));
}

BudgetedGenerator::BudgetedGenerator(std::unique_ptr<ImageGenerator> inner, std::shared_ptr<CpuMemoryBudget> budget)
    : inner_(std::move(inner)), budget_(std::move(budget)) {}

std::vector<Image> BudgetedGenerator::generate(const std::vector<job::RenderItem>& batch) {
  CpuMemoryBudget::Scope scope(*budget_);
  return inner_->generate(batch);
}

void BudgetedGenerator::prepare(const std::vector<const job::RenderItem*>& items) {
  CpuMemoryBudget::Scope scope(*budget_);
  inner_->prepare(items);
}

void BudgetedGenerator::generate_each(const std::vector<job::RenderItem>& batch, const ImageSink& on_image) {
  CpuMemoryBudget::Scope scope(*budget_);
  inner_->generate_each(batch, on_image);
}

std::string BudgetedGenerator::model_description() const { return inner_->model_description(); }

}  // namespace fluxbatch::runtime
