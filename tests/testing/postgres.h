// A throwaway PostgreSQL server for tests: Debian's PostgreSQL binaries, initdb + pg_ctl in
// a fresh temp dir, listening on 127.0.0.1 at an ephemeral port, run as an unprivileged
// user (nobody when the test runs as root: PostgreSQL refuses to run as root). Stopped and
// removed when the object goes.
#ifndef QSEARCH_TESTS_TESTING_POSTGRES_H_
#define QSEARCH_TESTS_TESTING_POSTGRES_H_

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace qsearch::testing {

class TestPostgres {
 public:
  // Starts a cluster under `dir` (created empty); Unavailable with the server's log when
  // it does not come up.
  static absl::StatusOr<std::unique_ptr<TestPostgres>> Start(const std::string& dir) {
    const std::string bin = BinDir();
    if (bin.empty()) {
      return absl::FailedPreconditionError(
          "no PostgreSQL server binaries (initdb) under /usr/lib/postgresql: run deploy/install-deps.sh");
    }
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::unique_ptr<TestPostgres> pg(new TestPostgres(bin, dir));
    if (::geteuid() == 0) {
      const passwd* nobody = ::getpwnam("nobody");
      if (nobody == nullptr) return absl::FailedPreconditionError("running as root and there is no user 'nobody'");
      if (::chown(dir.c_str(), nobody->pw_uid, nobody->pw_gid) != 0) {
        return absl::InternalError(absl::StrCat("cannot chown ", dir, " to nobody"));
      }
      pg->as_user_ = absl::StrCat("setpriv --reuid=", nobody->pw_uid, " --regid=", nobody->pw_gid,
                                  " --clear-groups -- ");
    }
    const std::string log = dir + "/setup.log";
    if (pg->Sh(absl::StrCat(bin, "/initdb -D ", dir, "/data -U qsearch -A trust -E UTF8 --locale=C --no-sync"), log) !=
        0) {
      return absl::UnavailableError(absl::StrCat("initdb failed: ", Slurp(log)));
    }
    // A port that was free a moment ago; another process may take it first, so retry.
    for (int attempt = 0; attempt < 5; ++attempt) {
      pg->port_ = FreePort();
      const std::string opts = absl::StrCat("-p ", pg->port_, " -k ", dir,
                                            " -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200");
      if (pg->Sh(absl::StrCat(bin, "/pg_ctl -D ", dir, "/data -l ", dir, "/server.log -w -t 60 -o '", opts, "' start"),
                 log) == 0) {
        pg->running_ = true;
        return pg;
      }
    }
    return absl::UnavailableError(absl::StrCat("pg_ctl start failed: ", Slurp(log), Slurp(dir + "/server.log")));
  }

  ~TestPostgres() {
    if (running_) Sh(absl::StrCat(bin_, "/pg_ctl -D ", dir_, "/data -m immediate stop"), dir_ + "/setup.log");
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  int port() const { return port_; }
  std::string Uri(const std::string& database) const {
    return absl::StrCat("postgresql://qsearch@127.0.0.1:", port_, "/", database);
  }

  // A new empty database; returns its URI.
  absl::StatusOr<std::string> NewDatabase(const std::string& database) {
    absl::Status s = Exec("postgres", absl::StrCat("DROP DATABASE IF EXISTS \"", database, "\""));
    if (s.ok()) s = Exec("postgres", absl::StrCat("CREATE DATABASE \"", database, "\""));
    if (!s.ok()) return s;
    return Uri(database);
  }

  // Runs one statement on `database`, as the cluster's superuser.
  absl::Status Exec(const std::string& database, const std::string& sql) {
    PGconn* c = PQconnectdb(Uri(database).c_str());
    absl::Status s;
    if (PQstatus(c) != CONNECTION_OK) {
      s = absl::UnavailableError(PQerrorMessage(c));
    } else {
      PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);  // "does not exist, skipping"
      PGresult* r = PQexec(c, sql.c_str());
      const ExecStatusType st = PQresultStatus(r);
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) s = absl::InternalError(PQresultErrorMessage(r));
      PQclear(r);
    }
    PQfinish(c);
    return s;
  }

 private:
  TestPostgres(std::string bin, std::string dir) : bin_(std::move(bin)), dir_(std::move(dir)) {}

  static std::string BinDir() {
    if (const char* env = std::getenv("QSEARCH_PG_BIN")) return env;
    for (const char* v : {"17", "16", "15", "14", "13"}) {
      const std::string b = absl::StrCat("/usr/lib/postgresql/", v, "/bin");
      if (std::filesystem::exists(b + "/initdb")) return b;
    }
    return "";
  }

  static int FreePort() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
      port = ntohs(a.sin_port);
    }
    ::close(fd);
    return port;
  }

  static std::string Slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  int Sh(const std::string& cmd, const std::string& log) const {
    return std::system(absl::StrCat(as_user_, cmd, " >>", log, " 2>&1").c_str());
  }

  std::string bin_, dir_, as_user_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace qsearch::testing

#endif  // QSEARCH_TESTS_TESTING_POSTGRES_H_
