// Progress of one job: numbered events with elapsed time and ETA, and the step count the
// ETA and the batch order depend on. Contract: events are numbered 1, 2, ... in emission
// order; an event marked Unnumbered() (one only a resumed run emits) gets sequence 0 and
// does not advance the count, so a resumed run's numbered events are exactly those the
// uninterrupted run would emit from its checkpoint on.
#ifndef QSEARCH_SEARCH_PROGRESS_H_
#define QSEARCH_SEARCH_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

// Process-wide count of units of work done (training steps, evaluation batches, loading
// stages): the worker sends heartbeats while it moves, so the server can tell a slow job
// from a stuck one (a model whose forward never returns).
void Tick();
std::uint64_t Ticks();

class Progress {
 public:
  explicit Progress(std::function<void(const v1::JobEvent&)> sink);

  struct Event {
    v1::Phase phase = v1::PHASE_UNSPECIFIED;
    int epoch = 0;
    double loss = 0, accuracy = 0;
    std::string message;
    const v1::Policy* policy = nullptr;
    bool epoch_end = false;
    bool warning = false;
  };
  void Emit(const Event& e);
  // The next event is one only a resumed run emits.
  void Unnumbered() { next_unnumbered_ = true; }

  double ElapsedSeconds() const;
  // A resumed job's clock continues from its checkpoint.
  void SetElapsedSeconds(double seconds);

  std::int64_t sequence = 0;    // last number given
  std::int64_t steps_done = 0;  // training steps so far, every phase
  std::int64_t steps_total = 1;

 private:
  using Clock = std::chrono::steady_clock;
  std::function<void(const v1::JobEvent&)> sink_;
  Clock::time_point start_ = Clock::now();
  bool next_unnumbered_ = false;
};

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_PROGRESS_H_
