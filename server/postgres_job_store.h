// The JobStore on PostgreSQL (libpq), for several servers sharing one database. The
// schema is versioned (qsearch_schema) and migrated on Open under an advisory lock, so
// replicas starting together migrate once. One connection behind a mutex, re-established
// once per call when it broke; a second one LISTENs for other replicas' changes. Jobs are
// claimed under leases (JobStore::Claim) and blobs kept in chunked rows, so servers and
// worker agents on several machines need nothing but this database in common.
#ifndef QSEARCH_SERVER_POSTGRES_JOB_STORE_H_
#define QSEARCH_SERVER_POSTGRES_JOB_STORE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/job_store.h"

struct pg_conn;

namespace qsearch::server {

class PostgresJobStore final : public JobStore {
 public:
  // The schema version this build writes; a database at a newer version is refused.
  static constexpr int kSchemaVersion = 2;

  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& uri);
  ~PostgresJobStore() override;
  PostgresJobStore(const PostgresJobStore&) = delete;
  PostgresJobStore& operator=(const PostgresJobStore&) = delete;

  absl::StatusOr<v1::SearchJob> Create(const std::string& tenant, const std::string& request_id,
                                       const v1::JobSpec& spec, bool* created) override;
  absl::StatusOr<v1::SearchJob> Get(const std::string& tenant, const std::string& name) override;
  absl::StatusOr<v1::SearchJob> FindByRequest(const std::string& tenant, const std::string& request_id) override;
  absl::StatusOr<JobPage> List(const std::string& tenant, v1::JobState state, int page_size,
                               const std::string& page_token) override;
  absl::StatusOr<v1::SearchJob> Update(const std::string& name,
                                       const std::function<absl::Status(v1::SearchJob&)>& fn) override;
  absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& name, v1::JobEvent event,
                                           std::int64_t worker_sequence = 0, std::int64_t fence = 0) override;
  absl::StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& name, std::int64_t after,
                                                        int limit) override;
  absl::Status Delete(const std::string& tenant, const std::string& name) override;
  absl::StatusOr<std::vector<v1::SearchJob>> InState(v1::JobState state) override;
  absl::StatusOr<std::vector<std::string>> NamesInState(v1::JobState state) override;
  absl::StatusOr<int> CountInState(const std::string& tenant, v1::JobState state) override;
  absl::StatusOr<std::string> TenantOf(const std::string& name) override;
  // LISTEN on its own connection; events and updates NOTIFY in their transaction.
  absl::Status Subscribe(std::function<void(const std::string&)> changed) override;
  bool Shared() const override { return true; }
  absl::StatusOr<v1::SearchJob> Claim(const std::string& agent, double lease_seconds) override;
  absl::Status Renew(const std::string& name, std::int64_t fence, double lease_seconds) override;
  absl::Status Release(const std::string& name, std::int64_t fence) override;
  absl::StatusOr<std::pair<std::string, bool>> LeaseHolder(const std::string& name) override;
  // Chunked rows (1 MiB each) in one transaction; holds this store's connection meanwhile.
  absl::Status PutBlob(const std::string& key, const std::string& path, const std::string& fence_job = "",
                       std::int64_t fence = 0) override;
  absl::Status FetchBlob(const std::string& key, const std::string& path) override;
  absl::Status DeleteBlobs(const std::string& prefix) override;

 private:
  PostgresJobStore(pg_conn* conn, std::string uri, std::string where)
      : conn_(conn), uri_(std::move(uri)), where_(std::move(where)) {}
  void Listen(std::function<void(const std::string&)> changed);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` in one transaction: committed when it returns OK, rolled back otherwise.
  absl::Status InTransaction(const std::function<absl::Status()>& body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reconnects when the connection broke (server restart, network), before a call.
  absl::Status EnsureConnected() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::SearchJob> GetLocked(const std::string& name, std::string* tenant, bool for_update)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutLocked(const v1::SearchJob& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::SearchJob> FindByRequestLocked(const std::string& tenant, const std::string& request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  pg_conn* conn_ ABSL_GUARDED_BY(mu_);
  const std::string uri_;
  const std::string where_;  // the URI without its password, for messages
  std::atomic<bool> stopping_{false};
  std::thread listener_;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_POSTGRES_JOB_STORE_H_
