#include "fluxbatch/runtime/execution/claimed_work.h"

#include <algorithm>
#include <chrono>

namespace fluxbatch::runtime {
namespace {

double steady_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

bool batchable(const job::RenderItem& a, const job::RenderItem& b, bool group_by_loras) {
  if (group_by_loras) {
    const auto& x = a.params.loras;
    const auto& y = b.params.loras;
    if (x.size() != y.size() || !std::equal(x.begin(), x.end(), y.begin(), [](const job::LoraRef& l, const job::LoraRef& r) {
          return l.same_as(r);
        })) {
      return false;
    }
  }
  return a.params.width == b.params.width && a.params.height == b.params.height &&
         a.params.steps == b.params.steps && a.params.max_sequence_length == b.params.max_sequence_length &&
         a.priority == b.priority;
}

ClaimedWork::ClaimedWork(const job::JobSpec& spec, std::vector<size_t> candidates, io::ClaimStore& claims,
                         ResumeIndex& index, Decide decide, double poll_s)
    : spec_(spec),
      candidates_(std::move(candidates)),
      claims_(claims),
      index_(index),
      decide_(std::move(decide)),
      poll_s_(poll_s),
      state_(candidates_.size(), kOpen) {}

// Finished by someone since this worker planned: any line (ok or failed) of this session. Only lines
// the index has read count.
bool ClaimedWork::finished_elsewhere(size_t position) const { return index_.session_line(position); }

int64_t ClaimedWork::open_count() const {
  int64_t n = 0;
  for (size_t c = cursor_; c < state_.size(); ++c) n += open(c) ? 1 : 0;
  return n;
}

Claimed ClaimedWork::try_take(size_t candidate) {
  const size_t position = candidates_[candidate];
  const job::RenderItem& item = spec_.items[position];
  if (state_[candidate] == kHeldElsewhere) --held_;
  if (finished_elsewhere(position)) {  // seen in the manifest without claiming anything
    state_[candidate] = kDone;
    ++done_elsewhere_;
    return Claimed::kDoneElsewhere;
  }
  if (claims_.claim(item.file, item.file) == io::ClaimResult::kHeld) {
    state_[candidate] = kHeldElsewhere;
    ++held_;
    if (held_since_.empty()) held_since_.assign(candidates_.size(), 0.0);
    held_since_[candidate] = steady_now();
    return Claimed::kHeld;
  }
  // Ours now. Whoever had it before released it only after writing its line: read what is new.
  index_.refresh();
  if (finished_elsewhere(position)) {
    claims_.release(item.file);
    state_[candidate] = kDone;
    ++done_elsewhere_;
    return Claimed::kDoneElsewhere;
  }
  const Claimed decided = decide_(position);
  if (decided == Claimed::kDoneElsewhere) {
    claims_.release(item.file);
    ++done_elsewhere_;
  }
  state_[candidate] = decided == Claimed::kRender ? kTaken : kDone;
  if (decided == Claimed::kRender) ++taken_;
  return decided;
}

Claimed ClaimedWork::take(size_t candidate) {
  if (state_[candidate] == kTaken || state_[candidate] == kDone) return Claimed::kDoneElsewhere;
  return try_take(candidate);
}

std::vector<const job::RenderItem*> ClaimedWork::next_batch(const Cap& cap) {
  std::vector<const job::RenderItem*> batch;
  if (held_ > 0) index_.refresh();  // others' lines since the last look
  const double now = steady_now();
  const job::RenderItem* first = nullptr;
  size_t most = 1;
  while (cursor_ < state_.size() && (state_[cursor_] == kTaken || state_[cursor_] == kDone)) ++cursor_;
  for (size_t i = cursor_; i < state_.size(); ++i) {
    if (state_[i] == kTaken || state_[i] == kDone) continue;
    const job::RenderItem& item = spec_.items[candidates_[i]];
    if (first != nullptr && item.priority != first->priority) break;  // render order is by priority
    if (first != nullptr && !batchable(*first, item, group_by_loras_)) continue;
    if (state_[i] == kHeldElsewhere && now - held_since_[i] < poll_s_ && !finished_elsewhere(candidates_[i])) continue;
    if (try_take(i) != Claimed::kRender) continue;
    batch.push_back(&item);
    if (first == nullptr) {
      first = &item;
      most = static_cast<size_t>(std::max(1, cap(item)));
    }
    if (batch.size() >= most) break;
  }
  return batch;
}

}  // namespace fluxbatch::runtime
