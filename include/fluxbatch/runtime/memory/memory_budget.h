// A counting byte budget for CPU runs (--device cpu --vram-budget SIZE): wraps c10's CPU allocator,
// counts the live bytes of every CPU tensor allocated while installed, and — only inside an
// enforcement scope (the generate() call) — throws c10::OutOfMemoryError past the budget, so the
// job runner's halve-and-retry works on a machine without a GPU. Process-wide: one at a time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/runtime/execution/image_generator.h"

namespace fluxbatch::runtime {

// "512M", "1.5G", "2GiB", "4096", "64k" (binary units; a bare number is bytes) -> bytes.
// InputError naming `what` otherwise.
int64_t parse_byte_size(const std::string& text, const std::string& what = "--vram-budget");
std::string format_bytes(int64_t bytes);  // "1.50 GiB", "12.0 MiB", "512 B"

class CpuMemoryBudget {
 public:
  // Installs the counting allocator; tensors allocated from now on are counted (weights loaded
  // after this count too). DeviceError when another budget is installed.
  explicit CpuMemoryBudget(int64_t budget_bytes);
  ~CpuMemoryBudget();  // restores the previous CPU allocator (tensors still alive stay valid)
  CpuMemoryBudget(const CpuMemoryBudget&) = delete;
  CpuMemoryBudget& operator=(const CpuMemoryBudget&) = delete;

  int64_t budget_bytes() const;
  void set_budget_bytes(int64_t bytes);
  int64_t live_bytes() const;  // counted CPU tensor bytes alive now
  int64_t peak_bytes() const;  // most live bytes since install or reset_peak()
  void reset_peak();

  // While a Scope lives, an allocation that would take live bytes past the budget throws
  // c10::OutOfMemoryError ("CPU out of memory: ... budget ...").
  class Scope {
   public:
    explicit Scope(CpuMemoryBudget& budget);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
  };
};

// The CUDA counterpart: caps what the caching allocator of `device_index` may reserve at `bytes`
// (c10's setMemoryFraction), so allocations past it throw c10::OutOfMemoryError. DeviceError
// without CUDA or when `bytes` exceeds the device's memory.
void cap_cuda_memory(int device_index, int64_t bytes);

// Runs `inner`'s prepare() and generate() inside `budget`'s enforcement scope.
class BudgetedGenerator : public ImageGenerator {
 public:
  BudgetedGenerator(std::unique_ptr<ImageGenerator> inner, std::shared_ptr<CpuMemoryBudget> budget);
  void prepare(const std::vector<const job::RenderItem*>& items) override;
  std::vector<Image> generate(const std::vector<job::RenderItem>& batch) override;
  void generate_each(const std::vector<job::RenderItem>& batch, const ImageSink& on_image) override;
  std::string model_description() const override;

 private:
  std::unique_ptr<ImageGenerator> inner_;
  std::shared_ptr<CpuMemoryBudget> budget_;
};

}  // namespace fluxbatch::runtime
