// Event numbering, elapsed time and ETA.
#include "search/progress.h"

#include <algorithm>
#include <atomic>

namespace qsearch::search {
namespace {
std::atomic<std::uint64_t> g_ticks{0};
}  // namespace

void Tick() { g_ticks.fetch_add(1, std::memory_order_relaxed); }
std::uint64_t Ticks() { return g_ticks.load(std::memory_order_relaxed); }

Progress::Progress(std::function<void(const v1::JobEvent&)> sink) : sink_(std::move(sink)) {}

double Progress::ElapsedSeconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void Progress::SetElapsedSeconds(double seconds) {
  start_ = Clock::now() - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

void Progress::Emit(const Event& in) {
  const bool numbered = !next_unnumbered_;
  next_unnumbered_ = false;
  if (numbered) ++sequence;
  if (!sink_) return;
  v1::JobEvent e;
  e.set_sequence(numbered ? sequence : 0);
  e.set_phase(in.phase);
  e.set_epoch(in.epoch);
  e.set_step(steps_done);
  e.set_loss(in.loss);
  e.set_accuracy(in.accuracy);
  e.set_message(in.message);
  e.set_epoch_end(in.epoch_end);
  e.set_warning(in.warning);
  const double elapsed = ElapsedSeconds();
  e.set_elapsed_seconds(elapsed);
  if (steps_done > 0) e.set_eta_seconds(elapsed / steps_done * std::max<std::int64_t>(0, steps_total - steps_done));
  if (in.policy != nullptr) *e.mutable_policy() = *in.policy;
  sink_(e);
}

}  // namespace qsearch::search
