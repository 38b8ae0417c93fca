// JobStore: the service's durable state: jobs and their event streams. Jobs are stored as
// serialized SearchJob messages next to the columns queries need.
//
// Thread-safe; every method is one transaction, so a crash (kill -9) leaves either the
// old or the new state, never a mix.
// Tenancy: every read and write names the tenant; another tenant's job is NotFound.
#ifndef QSEARCH_SERVER_JOB_STORE_H_
#define QSEARCH_SERVER_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/service.pb.h"

namespace qsearch::server {

struct JobPage {
  std::vector<v1::SearchJob> jobs;
  std::string next_page_token;
};

// The durable state every replica shares. Two implementations: the embedded SQLite
// database (the default) and PostgreSQL (scale-out: several servers on one database).
class JobStore {
 public:
  // Opens (creating or migrating when needed) the store at `where`: a
  // postgresql://... (or postgres://...) connection URI, else the path of an SQLite file.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& where);
  virtual ~JobStore() = default;

  // A new QUEUED job, or the job this tenant created with `request_id` before
  // (`*created` says which). An empty request_id always creates.
  virtual absl::StatusOr<v1::SearchJob> Create(const std::string& tenant, const std::string& request_id,
                                               const v1::JobSpec& spec, bool* created) = 0;
  virtual absl::StatusOr<v1::SearchJob> Get(const std::string& tenant, const std::string& name) = 0;
  // The job this tenant created with `request_id` (non-empty), or NotFound.
  virtual absl::StatusOr<v1::SearchJob> FindByRequest(const std::string& tenant, const std::string& request_id) = 0;
  // Newest first. page_token is opaque (from a previous page); state 0 = any. A page holds
  // at most page_size jobs and ends early past kMaxPageBytes.
  static constexpr std::size_t kMaxPageBytes = 3 << 20;
  virtual absl::StatusOr<JobPage> List(const std::string& tenant, v1::JobState state, int page_size,
                                       const std::string& page_token) = 0;
  // Read-modify-write of one job in one transaction; `fn` may change anything but the
  // name and tenant. NotFound when the job is gone.
  virtual absl::StatusOr<v1::SearchJob> Update(const std::string& name,
                                               const std::function<absl::Status(v1::SearchJob&)>& fn) = 0;
  // Appends an event, giving it the job's next sequence number (returned in the event),
  // and records it as the job's last_event. `worker_sequence` > 0 marks an event from a
  // worker, numbered by it: one at or below the job's worker_sequence is a replay of a
  // stored event and is dropped (AlreadyExists).
  // With `fence` > 0 the event is refused (Aborted) unless the job is RUNNING under that
  // fence (see Claim): a worker whose lease was lost or whose job was cancelled cannot
  // add to its stream.
  virtual absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& name, v1::JobEvent event,
                                                   std::int64_t worker_sequence = 0, std::int64_t fence = 0) = 0;
  // Events with sequence > after, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& name, std::int64_t after,
                                                                int limit) = 0;
  virtual absl::Status Delete(const std::string& tenant, const std::string& name) = 0;
  // Jobs in `state` across tenants, oldest first (the scheduler's queue and restart scan).
  virtual absl::StatusOr<std::vector<v1::SearchJob>> InState(v1::JobState state) = 0;
  // Their names only: what the dispatcher polls, without parsing specs.
  virtual absl::StatusOr<std::vector<std::string>> NamesInState(v1::JobState state) = 0;
  // Count of a tenant's jobs in `state` (0: any state).
  virtual absl::StatusOr<int> CountInState(const std::string& tenant, v1::JobState state) = 0;
  // The tenant owning a job (NotFound when none).
  virtual absl::StatusOr<std::string> TenantOf(const std::string& name) = 0;

  // Calls `changed(job name)` on a thread of the store's whenever another process sharing
  // the store appends an event to a job, updates or deletes it; an empty name means
  // "anything may have changed" (after a lost connection). A store only this process
  // writes (SQLite) never calls it: the process's own hub hears its own writes.
  virtual absl::Status Subscribe(std::function<void(const std::string&)> changed) { return absl::OkStatus(); }

  // Leases and blobs: for a store several machines share (PostgreSQL). There, every
  // process that runs workers (a server with --workers > 0, a qsearch-agent) claims jobs
  // under a lease it renews; a job whose lease lapsed (its node died) is claimed again
  // and resumes from the checkpoint the store holds. The fencing token of a claim is the
  // job's `attempts` after it: every write a worker's events cause names it, and a write
  // with a stale token is refused, so a job never has two live runs writing it.
  virtual bool Shared() const { return false; }
  // Claims the oldest runnable job for `agent`: a RUNNING one whose lease lapsed first,
  // else a QUEUED one. It turns RUNNING with attempts + 1 (the fence) and a lease of
  // `lease_seconds` by the store's clock. NotFound when there is none; concurrent claimers
  // never get the same job (SELECT ... FOR UPDATE SKIP LOCKED).
  virtual absl::StatusOr<v1::SearchJob> Claim(const std::string& agent, double lease_seconds) {
    return absl::UnimplementedError("this job store does not lease jobs");
  }
  // Extends the lease by `lease_seconds` from now. FailedPrecondition when the job is no
  // longer RUNNING (cancelled), NotFound when deleted, Aborted when another claim holds it.
  virtual absl::Status Renew(const std::string& name, std::int64_t fence, double lease_seconds) {
    return absl::UnimplementedError("this job store does not lease jobs");
  }
  // Ends the lease at once (this node stops the job but it should run on), so another
  // node claims it without waiting for the lease to lapse.
  virtual absl::Status Release(const std::string& name, std::int64_t fence) { return absl::OkStatus(); }
  // The agent holding a job's lease and whether the lease is live now ("" when none).
  virtual absl::StatusOr<std::pair<std::string, bool>> LeaseHolder(const std::string& name) {
    return absl::UnimplementedError("this job store does not lease jobs");
  }
  // Blobs (uploads, checkpoints, artifacts) by key, so nodes need no shared filesystem.
  // Put replaces the key's bytes with the file's in one transaction; with a `fence_job`
  // it is refused (Aborted) unless that job is RUNNING under `fence`.
  virtual absl::Status PutBlob(const std::string& key, const std::string& path, const std::string& fence_job = "",
                               std::int64_t fence = 0) {
    return absl::UnimplementedError("this job store keeps no blobs");
  }
  // Writes the key's bytes to `path` (atomically, sha256 checked); NotFound for none.
  virtual absl::Status FetchBlob(const std::string& key, const std::string& path) {
    return absl::UnimplementedError("this job store keeps no blobs");
  }
  // Removes every blob whose key starts with `prefix`.
  virtual absl::Status DeleteBlobs(const std::string& prefix) { return absl::OkStatus(); }
};

// Shared by the implementations.
namespace store_internal {
// NotFound for a job that does not exist or belongs to another tenant (the same words).
absl::Status NoSuchJob(const std::string& name);
// A new job's name: jobs/ and 12 random hex digits.
std::string NewJobName();
std::int64_t NowMicros();
// The QUEUED job Create stores, stamped with the time `now_us`.
v1::SearchJob NewJob(const std::string& request_id, const v1::JobSpec& spec, std::int64_t now_us);
absl::StatusOr<v1::SearchJob> ParseJob(const std::string& bytes);
// List's keyset token: (created_us, name) of the last job returned.
absl::Status ParsePageToken(const std::string& token, std::int64_t* after_us, std::string* after_name);
std::string PageToken(std::int64_t created_us, const std::string& name);
// Aborted unless `job` is RUNNING under `fence` (0: no fence).
absl::Status CheckFence(const v1::SearchJob& job, std::int64_t fence);
}  // namespace store_internal

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_JOB_STORE_H_
