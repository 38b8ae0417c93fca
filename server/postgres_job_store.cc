// PostgreSQL-backed JobStore. Schema (version 2):
//   jobs(name PK, tenant, request_id, state, created_us, job BYTEA,
//        lease_owner, lease_until_us)                           UNIQUE(tenant, request_id) where set
//   events(name, seq, event BYTEA)                              PK(name, seq)
//   blobs(key PK, size, sha256), blob_chunks(key, chunk, data)  PK(key, chunk)
// Lease times are the database's clock (clock_timestamp()), so nodes' clocks need not agree.
// Every parameter and result travels in binary: texts as bytes, integers big-endian.
#include "server/postgres_job_store.h"

#include <endian.h>
#include <libpq-fe.h>

#include <poll.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_io.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace qsearch::server {
namespace {

constexpr Oid kInt8 = 20, kText = 25, kBytea = 17;
// pg_advisory_lock key held while migrating ("qsearch" in ASCII).
constexpr std::int64_t kMigrationLock = 0x71736561726368;
// The database's clock, in microseconds: leases are measured against it.
#define QSEARCH_PG_NOW_US "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"
// Blobs are stored in rows of this many bytes.
constexpr std::size_t kChunkBytes = 1 << 20;
// The NOTIFY channel; the payload is the job's name.
constexpr char kChannel[] = "qsearch_jobs";

// Schema steps; migration i takes the database from version i to i + 1.
const std::vector<std::vector<const char*>>& Migrations() {
  static const auto* m = new std::vector<std::vector<const char*>>{{
      "CREATE TABLE jobs(name TEXT COLLATE \"C\" PRIMARY KEY, tenant TEXT NOT NULL, request_id TEXT NOT NULL DEFAULT '',"
      " state INTEGER NOT NULL, created_us BIGINT NOT NULL, job BYTEA NOT NULL)",
      "CREATE UNIQUE INDEX jobs_request ON jobs(tenant, request_id) WHERE request_id <> ''",
      "CREATE INDEX jobs_list ON jobs(tenant, created_us DESC, name DESC)",
      "CREATE INDEX jobs_state ON jobs(state, created_us, name)",
      "CREATE TABLE events(name TEXT COLLATE \"C\" NOT NULL, seq BIGINT NOT NULL, event BYTEA NOT NULL, PRIMARY KEY(name, seq))",
  }, {
      "ALTER TABLE jobs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '',"
      " ADD COLUMN lease_until_us BIGINT NOT NULL DEFAULT 0",
      "CREATE TABLE blobs(key TEXT COLLATE \"C\" PRIMARY KEY, size BIGINT NOT NULL, sha256 TEXT NOT NULL)",
      "CREATE TABLE blob_chunks(key TEXT COLLATE \"C\" NOT NULL, chunk BIGINT NOT NULL, data BYTEA NOT NULL,"
      " PRIMARY KEY(key, chunk))",
  }};
  return *m;
}

// The URI for messages: a password in the user part or in the query is masked.
std::string Redacted(const std::string& uri) {
  std::string out = uri;
  const size_t scheme = out.find("://");
  const size_t at = out.find('@', scheme == std::string::npos ? 0 : scheme + 3);
  if (scheme != std::string::npos && at != std::string::npos) {
    const size_t colon = out.find(':', scheme + 3);
    if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  for (size_t p = out.find("password="); p != std::string::npos; p = out.find("password=", p + 1)) {
    const size_t end = out.find('&', p);
    out.replace(p + 9, (end == std::string::npos ? out.size() : end) - p - 9, "***");
  }
  return out;
}

// Parameters of one statement, every one in binary format.
class Params {
 public:
  Params& Text(const std::string& s) { return Add(s, kText); }
  Params& Bytes(const std::string& s) { return Add(s, kBytea); }
  Params& Int(std::int64_t v) {
    const std::uint64_t be = htobe64(static_cast<std::uint64_t>(v));
    return Add(std::string(reinterpret_cast<const char*>(&be), sizeof be), kInt8);
  }
  int size() const { return static_cast<int>(values_.size()); }
  const Oid* types() const { return types_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }
  std::vector<const char*> pointers() const {
    std::vector<const char*> p;
    for (const auto& v : values_) p.push_back(v.data());
    return p;
  }

 private:
  Params& Add(std::string v, Oid type) {
    lengths_.push_back(static_cast<int>(v.size()));
    values_.push_back(std::move(v));
    types_.push_back(type);
    formats_.push_back(1);
    return *this;
  }
  std::vector<std::string> values_;
  std::vector<Oid> types_;
  std::vector<int> lengths_, formats_;
};

// One result; cleared on scope exit.
class Result {
 public:
  explicit Result(PGresult* r) : r_(r) {}
  ~Result() { PQclear(r_); }
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  int rows() const { return PQntuples(r_); }
  std::string Bytes(int row, int col) const {
    return std::string(PQgetvalue(r_, row, col), static_cast<size_t>(PQgetlength(r_, row, col)));
  }
  std::int64_t Int(int row, int col) const {
    const char* p = PQgetvalue(r_, row, col);
    if (PQgetlength(r_, row, col) == 4) {
      std::uint32_t v;
      std::memcpy(&v, p, 4);
      return static_cast<std::int32_t>(be32toh(v));
    }
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return static_cast<std::int64_t>(be64toh(v));
  }

 private:
  PGresult* r_;
};

std::string Trimmed(std::string msg) {
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  return msg;
}

// The canonical code for a failed statement: a broken connection is Unavailable, a
// duplicate key AlreadyExists, bad data (e.g. a NUL byte in a text) InvalidArgument.
absl::Status StatementError(PGconn* conn, PGresult* r, const char* sql) {
  if (PQstatus(conn) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("job store: lost the PostgreSQL connection: ", PQerrorMessage(conn)));
  }
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const std::string msg = Trimmed(r ? PQresultErrorMessage(r) : PQerrorMessage(conn));
  const std::string code = state ? state : "";
  if (code == "23505") return absl::AlreadyExistsError(absl::StrCat("job store: ", msg));
  if (absl::StartsWith(code, "22")) return absl::InvalidArgumentError(absl::StrCat("job store: ", msg));
  if (absl::StartsWith(code, "08") || code == "57P01") return absl::UnavailableError(absl::StrCat("job store: ", msg));
  return absl::InternalError(absl::StrCat("job store: ", msg, " in: ", sql));
}

absl::StatusOr<Result> Run(PGconn* conn, const char* sql, const Params& params = Params()) {
  const std::vector<const char*> values = params.pointers();
  PGresult* r = PQexecParams(conn, sql, params.size(), params.types(), values.data(), params.lengths(),
                             params.formats(), /*resultFormat=*/1);
  const ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    absl::Status s = StatementError(conn, r, sql);
    PQclear(r);
    return s;
  }
  return Result(r);
}

// Other replicas' watchers learn of the change when the transaction commits.
absl::Status NotifyChanged(PGconn* conn, const std::string& name) {
  return Run(conn, "SELECT pg_notify($1, $2)", Params().Text(kChannel).Text(name)).status();
}

void Quiet(void*, const char*) {}  // NOTICEs ("already exists, skipping") are not errors

}  // namespace

using store_internal::ParseJob;

absl::StatusOr<std::unique_ptr<JobStore>> PostgresJobStore::Open(const std::string& uri) {
  PGconn* conn = PQconnectdb(uri.c_str());
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    const std::string msg = conn ? Trimmed(PQerrorMessage(conn)) : "out of memory";
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("cannot open job store ", Redacted(uri), ": ", msg));
  }
  PQsetNoticeProcessor(conn, Quiet, nullptr);
  std::unique_ptr<PostgresJobStore> store(new PostgresJobStore(conn, uri, Redacted(uri)));
  absl::MutexLock lock(&store->mu_);
  RETURN_IF_ERROR(store->Migrate());
  return std::unique_ptr<JobStore>(std::move(store));
}

PostgresJobStore::~PostgresJobStore() {
  stopping_ = true;
  if (listener_.joinable()) listener_.join();
  absl::MutexLock lock(&mu_);
  PQfinish(conn_);
}

absl::Status PostgresJobStore::Subscribe(std::function<void(const std::string&)> changed) {
  if (listener_.joinable()) return absl::FailedPreconditionError("job store: already subscribed");
  listener_ = std::thread([this, changed = std::move(changed)] { Listen(changed); });
  return absl::OkStatus();
}

void PostgresJobStore::Listen(std::function<void(const std::string&)> changed) {
  PGconn* conn = nullptr;
  bool lost = false;  // a connection broke: what happened meanwhile is unknown
  while (!stopping_) {
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
      PQfinish(conn);
      conn = PQconnectdb(uri_.c_str());
      if (PQstatus(conn) != CONNECTION_OK ||
          !Run(conn, absl::StrCat("LISTEN ", kChannel).c_str()).ok()) {
        PQfinish(conn);
        conn = nullptr;
        lost = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
      PQsetNoticeProcessor(conn, Quiet, nullptr);
      if (lost) changed("");
      lost = false;
    }
    pollfd p{PQsocket(conn), POLLIN, 0};
    if (::poll(&p, 1, 200) < 0) continue;
    if (!PQconsumeInput(conn)) {
      lost = true;
      continue;
    }
    while (PGnotify* n = PQnotifies(conn)) {
      const std::string name = n->extra;
      PQfreemem(n);
      changed(name);
    }
  }
  PQfinish(conn);
}

absl::Status PostgresJobStore::Migrate() {
  RETURN_IF_ERROR(Run(conn_, "SELECT pg_advisory_lock($1)", Params().Int(kMigrationLock)).status());
  auto body = [&]() -> absl::Status {
    RETURN_IF_ERROR(Run(conn_, "CREATE TABLE IF NOT EXISTS qsearch_schema(version INTEGER NOT NULL)").status());
    ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT COALESCE(MAX(version), 0) FROM qsearch_schema"));
    const int have = static_cast<int>(r.Int(0, 0));
    if (have > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat("job store ", where_, " has schema version ", have,
                                                        ", newer than this server's ", kSchemaVersion,
                                                        ": run a server at least as new as the one that wrote it"));
    }
    for (int v = have; v < kSchemaVersion; ++v) {
      RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
        for (const char* sql : Migrations()[v]) RETURN_IF_ERROR(Run(conn_, sql).status());
        return Run(conn_, "INSERT INTO qsearch_schema(version) VALUES($1)", Params().Int(v + 1)).status();
      }));
    }
    return absl::OkStatus();
  };
  const absl::Status s = body();
  RETURN_IF_ERROR(Run(conn_, "SELECT pg_advisory_unlock($1)", Params().Int(kMigrationLock)).status());
  return s;
}

absl::Status PostgresJobStore::EnsureConnected() {
  if (PQstatus(conn_) == CONNECTION_OK) return absl::OkStatus();
  PQreset(conn_);
  if (PQstatus(conn_) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("job store ", where_, " is unreachable: ", Trimmed(PQerrorMessage(conn_))));
  }
  return absl::OkStatus();
}

absl::Status PostgresJobStore::InTransaction(const std::function<absl::Status()>& body) {
  RETURN_IF_ERROR(Run(conn_, "BEGIN").status());
  absl::Status s = body();
  if (s.ok()) return Run(conn_, "COMMIT").status();
  (void)Run(conn_, "ROLLBACK");  // the body's error is the one to report
  return s;
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::GetLocked(const std::string& name, std::string* tenant,
                                                          bool for_update) {
  ASSIGN_OR_RETURN(Result r, Run(conn_,
                                 for_update ? "SELECT job, tenant FROM jobs WHERE name = $1 FOR UPDATE"
                                            : "SELECT job, tenant FROM jobs WHERE name = $1",
                                 Params().Text(name)));
  if (r.rows() == 0) return store_internal::NoSuchJob(name);
  if (tenant != nullptr) *tenant = r.Bytes(0, 1);
  return ParseJob(r.Bytes(0, 0));
}

absl::Status PostgresJobStore::PutLocked(const v1::SearchJob& job) {
  return Run(conn_, "UPDATE jobs SET state = $1, job = $2 WHERE name = $3",
             Params().Int(job.state()).Bytes(job.SerializeAsString()).Text(job.name()))
      .status();
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::FindByRequestLocked(const std::string& tenant,
                                                                    const std::string& request_id) {
  ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT job FROM jobs WHERE tenant = $1 AND request_id = $2",
                                 Params().Text(tenant).Text(request_id)));
  if (r.rows() == 0) return absl::NotFoundError(absl::StrCat("no job with request_id '", request_id, "'"));
  return ParseJob(r.Bytes(0, 0));
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::FindByRequest(const std::string& tenant,
                                                              const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  return FindByRequestLocked(tenant, request_id);
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::Create(const std::string& tenant, const std::string& request_id,
                                                       const v1::JobSpec& spec, bool* created) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  *created = false;
  const std::int64_t now = store_internal::NowMicros();
  v1::SearchJob job = store_internal::NewJob(request_id, spec, now);
  // Two replicas creating with one request_id at once: the unique index lets one insert;
  // the other finds that job.
  ASSIGN_OR_RETURN(Result r, Run(conn_,
                                 "INSERT INTO jobs(name, tenant, request_id, state, created_us, job)"
                                 " VALUES($1, $2, $3, $4, $5, $6)"
                                 " ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING RETURNING name",
                                 Params()
                                     .Text(job.name())
                                     .Text(tenant)
                                     .Text(request_id)
                                     .Int(v1::QUEUED)
                                     .Int(now)
                                     .Bytes(job.SerializeAsString())));
  if (r.rows() == 0) return FindByRequestLocked(tenant, request_id);
  *created = true;
  return job;
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::Get(const std::string& tenant, const std::string& name) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  std::string owner;
  auto job = GetLocked(name, &owner, false);
  if (job.ok() && owner != tenant) return store_internal::NoSuchJob(name);
  return job;
}

absl::StatusOr<JobPage> PostgresJobStore::List(const std::string& tenant, v1::JobState state, int page_size,
                                               const std::string& page_token) {
  if (page_size <= 0) page_size = 50;
  page_size = std::min(page_size, 500);
  std::int64_t after_us = INT64_MAX;
  std::string after_name;
  if (!page_token.empty()) RETURN_IF_ERROR(store_internal::ParsePageToken(page_token, &after_us, &after_name));
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  // Names compare bytewise (their column is COLLATE "C"), as the page token and SQLite do.
  ASSIGN_OR_RETURN(Result r, Run(conn_,
                                 "SELECT job, created_us FROM jobs WHERE tenant = $1 AND ($2 = 0 OR state = $2)"
                                 " AND ($4 = '' OR created_us < $3 OR (created_us = $3 AND name < $4))"
                                 " ORDER BY created_us DESC, name DESC LIMIT $5",
                                 Params().Text(tenant).Int(state).Int(after_us).Text(after_name).Int(page_size + 1)));
  JobPage page;
  std::int64_t last_us = 0;
  std::size_t bytes = 0;
  for (int i = 0; i < r.rows(); ++i) {
    // A page ends at page_size jobs, or once it holds kMaxPageBytes (gRPC's default 4 MB).
    if (static_cast<int>(page.jobs.size()) == page_size || bytes >= kMaxPageBytes) {
      page.next_page_token = store_internal::PageToken(last_us, page.jobs.back().name());
      break;
    }
    ASSIGN_OR_RETURN(v1::SearchJob job, ParseJob(r.Bytes(i, 0)));
    last_us = r.Int(i, 1);
    bytes += job.ByteSizeLong();
    page.jobs.push_back(std::move(job));
  }
  return page;
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::Update(const std::string& name,
                                                       const std::function<absl::Status(v1::SearchJob&)>& fn) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  v1::SearchJob job;
  RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(job, GetLocked(name, nullptr, /*for_update=*/true));
    RETURN_IF_ERROR(fn(job));
    job.set_name(name);
    RETURN_IF_ERROR(PutLocked(job));
    return NotifyChanged(conn_, name);
  }));
  return job;
}

absl::StatusOr<v1::JobEvent> PostgresJobStore::AppendEvent(const std::string& name, v1::JobEvent event,
                                                           std::int64_t worker_sequence, std::int64_t fence) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
    // The row lock orders appenders on every replica: sequences stay gap-free.
    ASSIGN_OR_RETURN(v1::SearchJob job, GetLocked(name, nullptr, /*for_update=*/true));
    RETURN_IF_ERROR(store_internal::CheckFence(job, fence));
    if (worker_sequence > 0) {
      if (worker_sequence <= job.worker_sequence()) {
        return absl::AlreadyExistsError(absl::StrCat("worker event ", worker_sequence, " is stored already"));
      }
      job.set_worker_sequence(worker_sequence);
    }
    event.set_sequence(job.last_sequence() + 1);
    RETURN_IF_ERROR(Run(conn_, "INSERT INTO events(name, seq, event) VALUES($1, $2, $3)",
                        Params().Text(name).Int(event.sequence()).Bytes(event.SerializeAsString()))
                        .status());
    job.set_last_sequence(event.sequence());
    *job.mutable_last_event() = event;
    RETURN_IF_ERROR(PutLocked(job));
    return NotifyChanged(conn_, name);
  }));
  return event;
}

absl::StatusOr<std::vector<v1::JobEvent>> PostgresJobStore::EventsAfter(const std::string& name,
                                                                        std::int64_t after, int limit) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT event FROM events WHERE name = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                                 Params().Text(name).Int(after).Int(limit)));
  std::vector<v1::JobEvent> out;
  for (int i = 0; i < r.rows(); ++i) {
    v1::JobEvent e;
    if (!e.ParseFromString(r.Bytes(i, 0))) return absl::DataLossError("job store: a stored event does not parse");
    out.push_back(std::move(e));
  }
  return out;
}

absl::Status PostgresJobStore::Delete(const std::string& tenant, const std::string& name) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  return InTransaction([&]() -> absl::Status {
    std::string owner;
    RETURN_IF_ERROR(GetLocked(name, &owner, /*for_update=*/true).status());
    if (owner != tenant) return store_internal::NoSuchJob(name);
    RETURN_IF_ERROR(Run(conn_, "DELETE FROM events WHERE name = $1", Params().Text(name)).status());
    RETURN_IF_ERROR(Run(conn_, "DELETE FROM jobs WHERE name = $1", Params().Text(name)).status());
    return NotifyChanged(conn_, name);
  });
}

absl::StatusOr<std::vector<std::string>> PostgresJobStore::NamesInState(v1::JobState state) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT name FROM jobs WHERE state = $1 ORDER BY created_us, name",
                                 Params().Int(state)));
  std::vector<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back(r.Bytes(i, 0));
  return out;
}

absl::StatusOr<std::vector<v1::SearchJob>> PostgresJobStore::InState(v1::JobState state) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT job FROM jobs WHERE state = $1 ORDER BY created_us, name",
                                 Params().Int(state)));
  std::vector<v1::SearchJob> out;
  for (int i = 0; i < r.rows(); ++i) {
    ASSIGN_OR_RETURN(v1::SearchJob job, ParseJob(r.Bytes(i, 0)));
    out.push_back(std::move(job));
  }
  return out;
}

absl::StatusOr<int> PostgresJobStore::CountInState(const std::string& tenant, v1::JobState state) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND ($2 = 0 OR state = $2)",
                                 Params().Text(tenant).Int(state)));
  return r.rows() ? static_cast<int>(r.Int(0, 0)) : 0;
}

absl::StatusOr<std::string> PostgresJobStore::TenantOf(const std::string& name) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  std::string owner;
  RETURN_IF_ERROR(GetLocked(name, &owner, false).status());
  return owner;
}

absl::StatusOr<v1::SearchJob> PostgresJobStore::Claim(const std::string& agent, double lease_seconds) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  v1::SearchJob job;
  RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
    // A job whose node died goes first (it resumes), then the queue, oldest first. Rows
    // another claimer holds are skipped, not waited for.
    ASSIGN_OR_RETURN(Result r, Run(conn_,
                                   "SELECT job FROM jobs WHERE state = $1 OR (state = $2 AND lease_until_us < "
                                   QSEARCH_PG_NOW_US ") ORDER BY state DESC, created_us, name LIMIT 1"
                                   " FOR UPDATE SKIP LOCKED",
                                   Params().Int(v1::QUEUED).Int(v1::RUNNING)));
    if (r.rows() == 0) return absl::NotFoundError("no job to claim");
    ASSIGN_OR_RETURN(job, ParseJob(r.Bytes(0, 0)));
    if (job.state() == v1::QUEUED) {
      const std::int64_t now = store_internal::NowMicros();
      job.mutable_start_time()->set_seconds(now / 1000000);
      job.mutable_start_time()->set_nanos(static_cast<int>(now % 1000000) * 1000);
    }
    job.set_state(v1::RUNNING);
    job.set_attempts(job.attempts() + 1);
    RETURN_IF_ERROR(Run(conn_,
                        "UPDATE jobs SET state = $1, job = $2, lease_owner = $3,"
                        " lease_until_us = " QSEARCH_PG_NOW_US " + $4 WHERE name = $5",
                        Params()
                            .Int(job.state())
                            .Bytes(job.SerializeAsString())
                            .Text(agent)
                            .Int(static_cast<std::int64_t>(lease_seconds * 1e6))
                            .Text(job.name()))
                        .status());
    return NotifyChanged(conn_, job.name());
  }));
  return job;
}

absl::Status PostgresJobStore::Renew(const std::string& name, std::int64_t fence, double lease_seconds) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  return InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(v1::SearchJob job, GetLocked(name, nullptr, /*for_update=*/true));
    if (job.attempts() == fence && job.state() != v1::RUNNING) {
      return absl::FailedPreconditionError(absl::StrCat(name, " is ", v1::JobState_Name(job.state())));
    }
    RETURN_IF_ERROR(store_internal::CheckFence(job, fence));
    return Run(conn_, "UPDATE jobs SET lease_until_us = " QSEARCH_PG_NOW_US " + $1 WHERE name = $2",
               Params().Int(static_cast<std::int64_t>(lease_seconds * 1e6)).Text(name))
        .status();
  });
}

absl::Status PostgresJobStore::Release(const std::string& name, std::int64_t fence) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  return InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(v1::SearchJob job, GetLocked(name, nullptr, /*for_update=*/true));
    RETURN_IF_ERROR(store_internal::CheckFence(job, fence));
    RETURN_IF_ERROR(Run(conn_, "UPDATE jobs SET lease_until_us = 0 WHERE name = $1", Params().Text(name)).status());
    return NotifyChanged(conn_, name);
  });
}

absl::StatusOr<std::pair<std::string, bool>> PostgresJobStore::LeaseHolder(const std::string& name) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  ASSIGN_OR_RETURN(Result r, Run(conn_,
                                 "SELECT lease_owner, (state = $2 AND lease_until_us >= " QSEARCH_PG_NOW_US ")::int4"
                                 " FROM jobs WHERE name = $1",
                                 Params().Text(name).Int(v1::RUNNING)));
  if (r.rows() == 0) return store_internal::NoSuchJob(name);
  return std::make_pair(r.Bytes(0, 0), r.Int(0, 1) == 1);
}

absl::Status PostgresJobStore::PutBlob(const std::string& key, const std::string& path, const std::string& fence_job,
                                       std::int64_t fence) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path, " to store it"));
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  return InTransaction([&]() -> absl::Status {
    if (!fence_job.empty()) {
      // FOR SHARE: a claim (FOR UPDATE) waits until this blob is in or refused.
      ASSIGN_OR_RETURN(Result r,
                       Run(conn_, "SELECT job FROM jobs WHERE name = $1 FOR SHARE", Params().Text(fence_job)));
      if (r.rows() == 0) return store_internal::NoSuchJob(fence_job);
      ASSIGN_OR_RETURN(v1::SearchJob job, ParseJob(r.Bytes(0, 0)));
      RETURN_IF_ERROR(store_internal::CheckFence(job, fence));
    }
    RETURN_IF_ERROR(Run(conn_, "DELETE FROM blob_chunks WHERE key = $1", Params().Text(key)).status());
    RETURN_IF_ERROR(Run(conn_, "DELETE FROM blobs WHERE key = $1", Params().Text(key)).status());
    Sha256 hash;
    std::int64_t size = 0;
    std::string buf(kChunkBytes, '\0');
    for (std::int64_t chunk = 0;; ++chunk) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::string data = buf.substr(0, static_cast<size_t>(in.gcount()));
      if (data.empty() && chunk > 0) break;
      hash.Update(data);
      size += static_cast<std::int64_t>(data.size());
      RETURN_IF_ERROR(Run(conn_, "INSERT INTO blob_chunks(key, chunk, data) VALUES($1, $2, $3)",
                          Params().Text(key).Int(chunk).Bytes(data))
                          .status());
      if (data.size() < buf.size()) break;
    }
    if (in.bad()) return absl::DataLossError(absl::StrCat("reading ", path, " failed"));
    return Run(conn_, "INSERT INTO blobs(key, size, sha256) VALUES($1, $2, $3)",
               Params().Text(key).Int(size).Text(hash.HexDigest()))
        .status();
  });
}

absl::Status PostgresJobStore::FetchBlob(const std::string& key, const std::string& path) {
  const std::string part = path + ".fetch";
  absl::Status s = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(EnsureConnected());
    // One snapshot: a Put replacing the blob meanwhile cannot tear it.
    RETURN_IF_ERROR(Run(conn_, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").status());
    auto body = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(Result head, Run(conn_, "SELECT size, sha256 FROM blobs WHERE key = $1", Params().Text(key)));
      if (head.rows() == 0) return absl::NotFoundError(absl::StrCat("the store holds no ", key));
      const std::int64_t size = head.Int(0, 0);
      const std::string want = head.Bytes(0, 1);
      std::ofstream out(part, std::ios::binary | std::ios::trunc);
      if (!out) return absl::InternalError(absl::StrCat("cannot write ", part));
      Sha256 hash;
      std::int64_t got = 0;
      for (std::int64_t chunk = 0; got < size || chunk == 0; ++chunk) {
        ASSIGN_OR_RETURN(Result r, Run(conn_, "SELECT data FROM blob_chunks WHERE key = $1 AND chunk = $2",
                                       Params().Text(key).Int(chunk)));
        if (r.rows() == 0) break;
        const std::string data = r.Bytes(0, 0);
        if (data.empty()) break;
        hash.Update(data);
        out.write(data.data(), static_cast<std::streamsize>(data.size()));
        got += static_cast<std::int64_t>(data.size());
      }
      out.close();
      if (!out) return absl::InternalError(absl::StrCat("cannot write ", part));
      if (got != size || hash.HexDigest() != want) {
        return absl::DataLossError(absl::StrCat("the store's copy of ", key, " is damaged (", got, " of ", size,
                                                " bytes, or a sha256 mismatch)"));
      }
      return absl::OkStatus();
    };
    absl::Status b = body();
    (void)Run(conn_, b.ok() ? "COMMIT" : "ROLLBACK");
    return b;
  }();
  std::error_code ec;
  if (!s.ok()) {
    std::filesystem::remove(part, ec);
    return s;
  }
  std::filesystem::rename(part, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move the fetched ", key, " into place: ", ec.message()));
  return absl::OkStatus();
}

absl::Status PostgresJobStore::DeleteBlobs(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(EnsureConnected());
  // LIKE would read % and _ in a key as patterns: compare the prefix itself.
  return InTransaction([&]() -> absl::Status {
    RETURN_IF_ERROR(
        Run(conn_, "DELETE FROM blob_chunks WHERE left(key, length($1)) = $1", Params().Text(prefix)).status());
    return Run(conn_, "DELETE FROM blobs WHERE left(key, length($1)) = $1", Params().Text(prefix)).status();
  });
}

}  // namespace qsearch::server
