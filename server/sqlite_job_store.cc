// SQLite-backed JobStore. Schema:
//   jobs(name PK, tenant, request_id, state, created_us, job BLOB)  UNIQUE(tenant, request_id)
//   events(name, seq, event BLOB)  PK(name, seq)
#include "server/sqlite_job_store.h"

#include <sqlite3.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace qsearch::server {
namespace {

// One prepared statement; finalised on scope exit.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status ok() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("job store: ", sqlite3_errmsg(db_)));
  }
  Statement& Bind(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Text(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error.
  absl::StatusOr<bool> Step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(sqlite3_errmsg(db_));
    return absl::InternalError(absl::StrCat("job store: ", sqlite3_errmsg(db_)));
  }
  std::string Blob(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    return std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  std::int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

}  // namespace

using store_internal::NowMicros;
using store_internal::ParseJob;

absl::StatusOr<std::unique_ptr<JobStore>> SqliteJobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open job store ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  absl::MutexLock lock(&store->mu_);
  RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=NORMAL"));
  RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS jobs(name TEXT PRIMARY KEY, tenant TEXT NOT NULL, request_id TEXT,"
      " state INTEGER NOT NULL, created_us INTEGER NOT NULL, job BLOB NOT NULL)"));
  RETURN_IF_ERROR(store->Exec(
      "CREATE UNIQUE INDEX IF NOT EXISTS jobs_request ON jobs(tenant, request_id) WHERE request_id <> ''"));
  RETURN_IF_ERROR(store->Exec("CREATE INDEX IF NOT EXISTS jobs_list ON jobs(tenant, created_us DESC, name DESC)"));
  RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS events(name TEXT NOT NULL, seq INTEGER NOT NULL, event BLOB NOT NULL,"
      " PRIMARY KEY(name, seq))"));
  return std::unique_ptr<JobStore>(std::move(store));
}

SqliteJobStore::~SqliteJobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("job store: ", err ? err : "error", " in: ", sql));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::GetLocked(const std::string& name, std::string* tenant) {
  Statement st(db_, "SELECT job, tenant FROM jobs WHERE name = ?");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, name);
  ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return store_internal::NoSuchJob(name);
  if (tenant != nullptr) *tenant = st.Blob(1);
  return ParseJob(st.Blob(0));
}

absl::Status SqliteJobStore::PutLocked(const v1::SearchJob& job) {
  Statement st(db_, "UPDATE jobs SET state = ?, job = ? WHERE name = ?");
  RETURN_IF_ERROR(st.ok());
  st.Bind(1, static_cast<std::int64_t>(job.state())).Bind(2, job.SerializeAsString()).Text(3, job.name());
  return st.Step().status();
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::FindByRequestLocked(const std::string& tenant,
                                                            const std::string& request_id) {
  Statement st(db_, "SELECT job FROM jobs WHERE tenant = ? AND request_id = ?");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, tenant).Text(2, request_id);
  ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no job with request_id '", request_id, "'"));
  return ParseJob(st.Blob(0));
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::FindByRequest(const std::string& tenant, const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  return FindByRequestLocked(tenant, request_id);
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::Create(const std::string& tenant, const std::string& request_id,
                                               const v1::JobSpec& spec, bool* created) {
  absl::MutexLock lock(&mu_);
  *created = false;
  if (!request_id.empty()) {
    auto existing = FindByRequestLocked(tenant, request_id);
    if (existing.ok() || existing.status().code() != absl::StatusCode::kNotFound) return existing;
  }
  const std::int64_t now = NowMicros();
  v1::SearchJob job = store_internal::NewJob(request_id, spec, now);
  Statement st(db_, "INSERT INTO jobs(name, tenant, request_id, state, created_us, job) VALUES(?, ?, ?, ?, ?, ?)");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, job.name()).Text(2, tenant).Text(3, request_id).Bind(4, std::int64_t{v1::QUEUED}).Bind(5, now);
  st.Bind(6, job.SerializeAsString());
  RETURN_IF_ERROR(st.Step().status());
  *created = true;
  return job;
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::Get(const std::string& tenant, const std::string& name) {
  absl::MutexLock lock(&mu_);
  std::string owner;
  auto job = GetLocked(name, &owner);
  if (job.ok() && owner != tenant) return store_internal::NoSuchJob(name);
  return job;
}

absl::StatusOr<JobPage> SqliteJobStore::List(const std::string& tenant, v1::JobState state, int page_size,
                                       const std::string& page_token) {
  if (page_size <= 0) page_size = 50;
  page_size = std::min(page_size, 500);
  std::int64_t after_us = INT64_MAX;
  std::string after_name = "\xff";
  if (!page_token.empty()) RETURN_IF_ERROR(store_internal::ParsePageToken(page_token, &after_us, &after_name));
  absl::MutexLock lock(&mu_);
  Statement st(db_,
               "SELECT job, created_us FROM jobs WHERE tenant = ? AND (? = 0 OR state = ?)"
               " AND (created_us < ? OR (created_us = ? AND name < ?))"
               " ORDER BY created_us DESC, name DESC LIMIT ?");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, tenant).Bind(2, std::int64_t{state}).Bind(3, std::int64_t{state}).Bind(4, after_us).Bind(5, after_us);
  st.Text(6, after_name).Bind(7, std::int64_t{page_size} + 1);
  JobPage page;
  std::int64_t last_us = 0;
  std::size_t bytes = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    // A page ends at page_size jobs, or once it holds kMaxPageBytes, so every client with
    // gRPC's default 4 MB receive limit can read it.
    if (static_cast<int>(page.jobs.size()) == page_size || bytes >= kMaxPageBytes) {
      page.next_page_token = store_internal::PageToken(last_us, page.jobs.back().name());
      break;
    }
    ASSIGN_OR_RETURN(v1::SearchJob job, ParseJob(st.Blob(0)));
    last_us = st.Int(1);
    bytes += job.ByteSizeLong();
    page.jobs.push_back(std::move(job));
  }
  return page;
}

absl::StatusOr<v1::SearchJob> SqliteJobStore::Update(const std::string& name,
                                               const std::function<absl::Status(v1::SearchJob&)>& fn) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(v1::SearchJob job, GetLocked(name, nullptr));
  RETURN_IF_ERROR(fn(job));
  job.set_name(name);
  RETURN_IF_ERROR(PutLocked(job));
  return job;
}

absl::StatusOr<v1::JobEvent> SqliteJobStore::AppendEvent(const std::string& name, v1::JobEvent event,
                                                   std::int64_t worker_sequence, std::int64_t fence) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<v1::JobEvent> {
    ASSIGN_OR_RETURN(v1::SearchJob job, GetLocked(name, nullptr));
    RETURN_IF_ERROR(store_internal::CheckFence(job, fence));
    if (worker_sequence > 0) {
      if (worker_sequence <= job.worker_sequence()) {
        return absl::AlreadyExistsError(absl::StrCat("worker event ", worker_sequence, " is stored already"));
      }
      job.set_worker_sequence(worker_sequence);
    }
    event.set_sequence(job.last_sequence() + 1);
    Statement st(db_, "INSERT INTO events(name, seq, event) VALUES(?, ?, ?)");
    RETURN_IF_ERROR(st.ok());
    st.Text(1, name).Bind(2, event.sequence()).Bind(3, event.SerializeAsString());
    RETURN_IF_ERROR(st.Step().status());
    job.set_last_sequence(event.sequence());
    *job.mutable_last_event() = event;
    RETURN_IF_ERROR(PutLocked(job));
    return event;
  };
  auto result = body();
  RETURN_IF_ERROR(Exec(result.ok() ? "COMMIT" : "ROLLBACK"));
  return result;
}

absl::StatusOr<std::vector<v1::JobEvent>> SqliteJobStore::EventsAfter(const std::string& name, std::int64_t after,
                                                                int limit) {
  absl::MutexLock lock(&mu_);
  Statement st(db_, "SELECT event FROM events WHERE name = ? AND seq > ? ORDER BY seq LIMIT ?");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, name).Bind(2, after).Bind(3, std::int64_t{limit});
  std::vector<v1::JobEvent> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    v1::JobEvent e;
    if (!e.ParseFromString(st.Blob(0))) return absl::DataLossError("job store: a stored event does not parse");
    out.push_back(std::move(e));
  }
  return out;
}

absl::Status SqliteJobStore::Delete(const std::string& tenant, const std::string& name) {
  absl::MutexLock lock(&mu_);
  std::string owner;
  RETURN_IF_ERROR(GetLocked(name, &owner).status());
  if (owner != tenant) return store_internal::NoSuchJob(name);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  Statement a(db_, "DELETE FROM events WHERE name = ?");
  Statement b(db_, "DELETE FROM jobs WHERE name = ?");
  absl::Status s = a.ok();
  if (s.ok()) s = b.ok();
  if (s.ok()) s = a.Text(1, name).Step().status();
  if (s.ok()) s = b.Text(1, name).Step().status();
  RETURN_IF_ERROR(Exec(s.ok() ? "COMMIT" : "ROLLBACK"));
  return s;
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::NamesInState(v1::JobState state) {
  absl::MutexLock lock(&mu_);
  Statement st(db_, "SELECT name FROM jobs WHERE state = ? ORDER BY created_us, name");
  RETURN_IF_ERROR(st.ok());
  st.Bind(1, std::int64_t{state});
  std::vector<std::string> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back(st.Blob(0));
  }
  return out;
}

absl::StatusOr<std::vector<v1::SearchJob>> SqliteJobStore::InState(v1::JobState state) {
  absl::MutexLock lock(&mu_);
  Statement st(db_, "SELECT job FROM jobs WHERE state = ? ORDER BY created_us, name");
  RETURN_IF_ERROR(st.ok());
  st.Bind(1, std::int64_t{state});
  std::vector<v1::SearchJob> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(v1::SearchJob job, ParseJob(st.Blob(0)));
    out.push_back(std::move(job));
  }
  return out;
}

absl::StatusOr<int> SqliteJobStore::CountInState(const std::string& tenant, v1::JobState state) {
  absl::MutexLock lock(&mu_);
  Statement st(db_, "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND (? = 0 OR state = ?)");
  RETURN_IF_ERROR(st.ok());
  st.Text(1, tenant).Bind(2, std::int64_t{state}).Bind(3, std::int64_t{state});
  ASSIGN_OR_RETURN(bool row, st.Step());
  return row ? static_cast<int>(st.Int(0)) : 0;
}

absl::StatusOr<std::string> SqliteJobStore::TenantOf(const std::string& name) {
  absl::MutexLock lock(&mu_);
  std::string owner;
  RETURN_IF_ERROR(GetLocked(name, &owner).status());
  return owner;
}

}  // namespace qsearch::server
