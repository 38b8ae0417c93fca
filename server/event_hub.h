// EventHub: wakes Watch streams when a job gets a new event or changes state. Versions
// close the race between "read the store, found nothing" and "wait": a waiter passes the
// version it saw before reading and is called at once if the job has moved on since.
#ifndef QSEARCH_SERVER_EVENT_HUB_H_
#define QSEARCH_SERVER_EVENT_HUB_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace qsearch::server {

class EventHub {
 public:
  std::uint64_t Version(const std::string& job) {
    absl::MutexLock lock(&mu_);
    return versions_[job];
  }
  // Registers `wake` to run once, on the notifying thread and without the hub's lock, at
  // the job's next Notify; returns true. Returns false, registering nothing, when the
  // version already moved past `seen` (the caller looks again). Never calls `wake` itself,
  // so callers may hold their own locks.
  bool Wait(const std::string& job, std::uint64_t seen, std::function<void()> wake) {
    absl::MutexLock lock(&mu_);
    if (versions_[job] > seen) return false;
    waiters_[job].push_back(std::move(wake));
    return true;
  }
  void Notify(const std::string& job) {
    std::vector<std::function<void()>> wake;
    {
      absl::MutexLock lock(&mu_);
      ++versions_[job];
      auto it = waiters_.find(job);
      if (it != waiters_.end()) {
        wake.swap(it->second);
        waiters_.erase(it);
      }
    }
    for (auto& w : wake) w();
  }
  // Wakes every waiter (server shutdown).
  void NotifyAll() {
    std::vector<std::string> jobs;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [job, w] : waiters_) jobs.push_back(job);
    }
    for (const auto& j : jobs) Notify(j);
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::uint64_t> versions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<std::function<void()>>> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_EVENT_HUB_H_
