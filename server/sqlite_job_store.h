// The embedded JobStore: one SQLite database (WAL mode) under the server's data directory.
// One connection behind a mutex.
#ifndef QSEARCH_SERVER_SQLITE_JOB_STORE_H_
#define QSEARCH_SERVER_SQLITE_JOB_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/job_store.h"

struct sqlite3;

namespace qsearch::server {

class SqliteJobStore final : public JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~SqliteJobStore() override;
  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

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

 private:
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}
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

#endif  // QSEARCH_SERVER_SQLITE_JOB_STORE_H_
