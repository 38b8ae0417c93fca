// EventHub: wakes Watch streams when a job gets a new event or changes state. Versions
// close the race between "read the store, found nothing" and "wait": a waiter passes the
// version it saw before reading and is called at once if the job has moved on since.
#ifndef QSEARCH_SERVER_EVENT_HUB_H_
#define QSEARCH_SERVER_EVENT_HUB_H_

#include <cstdint>
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
  // the job's next Notify; returns its id (> 0) for Forget. Returns 0, registering
  // nothing, when the version already moved past `seen` (the caller looks again). Never
  // calls `wake` itself, so callers may hold their own locks.
  std::uint64_t Wait(const std::string& job, std::uint64_t seen, std::function<void()> wake) {
    absl::MutexLock lock(&mu_);
    if (versions_[job] > seen) return 0;
    const std::uint64_t id = ++last_id_;
    waiters_[job].emplace(id, std::move(wake));
    return id;
  }
  // Drops a waiter that has not run: a stream that ended while waiting, so that watchers
  // of a job with no news (queued behind others) do not pile up. No-op once it ran.
  void Forget(const std::string& job, std::uint64_t id) {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(job);
    if (it == waiters_.end()) return;
    it->second.erase(id);
    if (it->second.empty()) waiters_.erase(it);
  }
  // Waiters registered for `job` and not yet run or forgotten.
  std::size_t Waiting(const std::string& job) {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(job);
    return it == waiters_.end() ? 0 : it->second.size();
  }
  void Notify(const std::string& job) {
    std::map<std::uint64_t, std::function<void()>> wake;
    {
      absl::MutexLock lock(&mu_);
      ++versions_[job];
      auto it = waiters_.find(job);
      if (it != waiters_.end()) {
        wake.swap(it->second);
        waiters_.erase(it);
      }
    }
    for (auto& [_, w] : wake) w();
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
  std::map<std::string, std::map<std::uint64_t, std::function<void()>>> waiters_ ABSL_GUARDED_BY(mu_);
  std::uint64_t last_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_EVENT_HUB_H_
