// JobStore: the service's durable state in one SQLite database (WAL mode) under the
// server's data directory: jobs, their event streams, artifact records and uploads.
// Jobs are stored as serialized SearchJob messages next to the columns queries need.
//
// Thread-safe: one connection behind a mutex; every method is one transaction, so a
// crash (kill -9) leaves either the old or the new state, never a mix.
// Tenancy: every read and write names the tenant; another tenant's job is NotFound.
#ifndef QSEARCH_SERVER_JOB_STORE_H_
#define QSEARCH_SERVER_JOB_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "qsearch/v1/service.pb.h"

struct sqlite3;

namespace qsearch::server {

struct JobPage {
  std::vector<v1::SearchJob> jobs;
  std::string next_page_token;
};

class JobStore {
 public:
  // Opens (creating when needed) the database at `path`.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // A new QUEUED job, or the job this tenant created with `request_id` before
  // (`*created` says which). An empty request_id always creates.
  absl::StatusOr<v1::SearchJob> Create(const std::string& tenant, const std::string& request_id,
                                       const v1::JobSpec& spec, bool* created);
  absl::StatusOr<v1::SearchJob> Get(const std::string& tenant, const std::string& name);
  // The job this tenant created with `request_id` (non-empty), or NotFound.
  absl::StatusOr<v1::SearchJob> FindByRequest(const std::string& tenant, const std::string& request_id);
  // Newest first. page_token is opaque (from a previous page); state 0 = any. A page holds
  // at most page_size jobs and ends early past kMaxPageBytes.
  static constexpr std::size_t kMaxPageBytes = 3 << 20;
  absl::StatusOr<JobPage> List(const std::string& tenant, v1::JobState state, int page_size,
                               const std::string& page_token);
  // Read-modify-write of one job under the store's lock; `fn` may change anything but the
  // name and tenant. NotFound when the job is gone.
  absl::StatusOr<v1::SearchJob> Update(const std::string& name,
                                       const std::function<absl::Status(v1::SearchJob&)>& fn);
  // Appends an event, giving it the job's next sequence number (returned in the event),
  // and records it as the job's last_event. `worker_sequence` > 0 marks an event from a
  // worker, numbered by it: one at or below the job's worker_sequence is a replay of a
  // stored event and is dropped (AlreadyExists).
  absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& name, v1::JobEvent event,
                                           std::int64_t worker_sequence = 0);
  // Events with sequence > after, in order, at most `limit`.
  absl::StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& name, std::int64_t after, int limit);
  absl::Status Delete(const std::string& tenant, const std::string& name);
  // Jobs in `state` across tenants, oldest first (the scheduler's queue and restart scan).
  absl::StatusOr<std::vector<v1::SearchJob>> InState(v1::JobState state);
  // Their names only: what the dispatcher polls, without parsing specs.
  absl::StatusOr<std::vector<std::string>> NamesInState(v1::JobState state);
  // Count of a tenant's jobs in `state` (0: any state).
  absl::StatusOr<int> CountInState(const std::string& tenant, v1::JobState state);
  // The tenant owning a job (NotFound when none).
  absl::StatusOr<std::string> TenantOf(const std::string& name);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::SearchJob> GetLocked(const std::string& name, std::string* tenant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutLocked(const v1::SearchJob& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::SearchJob> FindByRequestLocked(const std::string& tenant, const std::string& request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_JOB_STORE_H_
