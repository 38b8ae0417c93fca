// JobStore::Open picks the implementation from the address; helpers both share.
#include "server/job_store.h"

#include <chrono>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/postgres_job_store.h"
#include "server/sqlite_job_store.h"

namespace qsearch::server {

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& where) {
  if (absl::StartsWith(where, "postgresql://") || absl::StartsWith(where, "postgres://")) {
    return PostgresJobStore::Open(where);
  }
  return SqliteJobStore::Open(where);
}

namespace store_internal {

absl::Status NoSuchJob(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("no job named '", name, "'"));
}

std::string NewJobName() {
  static std::mt19937_64 rng(std::random_device{}());
  static absl::Mutex mu;
  absl::MutexLock lock(&mu);
  return absl::StrFormat("jobs/%012x", rng() & 0xffffffffffffULL);
}

std::int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

v1::SearchJob NewJob(const std::string& request_id, const v1::JobSpec& spec, std::int64_t now_us) {
  v1::SearchJob job;
  job.set_name(NewJobName());
  job.set_request_id(request_id);
  *job.mutable_spec() = spec;
  job.set_state(v1::QUEUED);
  job.mutable_create_time()->set_seconds(now_us / 1000000);
  job.mutable_create_time()->set_nanos(static_cast<int>(now_us % 1000000) * 1000);
  return job;
}

absl::StatusOr<v1::SearchJob> ParseJob(const std::string& bytes) {
  v1::SearchJob job;
  if (!job.ParseFromString(bytes)) return absl::DataLossError("job store: a stored job does not parse");
  return job;
}

absl::Status ParsePageToken(const std::string& token, std::int64_t* after_us, std::string* after_name) {
  const size_t bar = token.find('|');
  if (bar == std::string::npos || !absl::SimpleAtoi(token.substr(0, bar), after_us) ||
      !absl::StartsWith(token.substr(bar + 1), "jobs/")) {
    return absl::InvalidArgumentError("page_token is not one this server returned");
  }
  *after_name = token.substr(bar + 1);
  return absl::OkStatus();
}

std::string PageToken(std::int64_t created_us, const std::string& name) { return absl::StrCat(created_us, "|", name); }

absl::Status CheckFence(const v1::SearchJob& job, std::int64_t fence) {
  if (fence <= 0) return absl::OkStatus();
  if (job.attempts() != fence) {
    return absl::AbortedError(absl::StrCat("lease lost: ", job.name(), " was claimed again (attempt ", job.attempts(),
                                           ", this run is attempt ", fence, ")"));
  }
  if (job.state() != v1::RUNNING) {
    return absl::AbortedError(absl::StrCat(job.name(), " is ", v1::JobState_Name(job.state()), ": its run stops"));
  }
  return absl::OkStatus();
}

}  // namespace store_internal
}  // namespace qsearch::server
