// Test and benchmark helper: runs the real qsearch-server binary on 127.0.0.1 with an ephemeral port
// and a data directory of the test's choosing, and stops it (SIGTERM, or SIGKILL to
// simulate a crash). The port is read from the server's first line of output.
// AgentProcess does the same for qsearch-agent, ready once it prints its first line.
#ifndef QSEARCH_SERVER_TESTING_SERVER_PROCESS_H_
#define QSEARCH_SERVER_TESTING_SERVER_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace qsearch::testing {

class ServerProcess {
 public:
  // `env` entries ("NAME=value") are added to the server's (and so its workers')
  // environment. With `test_defaults` false the server gets `extra_args` alone (the
  // caller then names --listen and --data-dir itself).
  // `binary` runs instead of the build's server (benchmarks compare two builds).
  ServerProcess(const std::string& data_dir, std::vector<std::string> extra_args = {},
                std::vector<std::string> env = {}, bool test_defaults = true,
                const std::string& binary = QSEARCH_SERVER_BIN) {
    int fds[2];
    if (pipe(fds) != 0) return;
    std::vector<std::string> args = {binary};
    if (test_defaults) {
      args.insert(args.end(), {"--listen", "127.0.0.1:0", "--data-dir", data_dir, "--worker", QSEARCH_WORKER_BIN,
                               "--threads-per-worker", "1"});
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      for (auto& e : env) putenv(e.data());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    // First line: "qsearch-server listening on 127.0.0.1:PORT ...". Bounded wait.
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    char c;
    while (std::chrono::steady_clock::now() < deadline && line.find('\n') == std::string::npos) {
      const ssize_t n = read(fds[0], &c, 1);
      if (n == 1) line.push_back(c);
      else if (n == 0) break;
      else std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    out_fd_ = fds[0];
    first_line_ = line;
    const std::string key = "listening on ";
    const size_t at = line.find(key);
    if (at != std::string::npos) address_ = line.substr(at + key.size(), line.find(' ', at + key.size()) - at - key.size());
  }
  const std::string& first_line() const { return first_line_; }
  ~ServerProcess() { Stop(SIGTERM); }

  const std::string& address() const { return address_; }
  bool ok() const { return !address_.empty(); }

  // Stops the server with `sig` and waits for it (bounded; SIGKILL after 20 s).
  int Stop(int sig) {
    if (pid_ <= 0) return -1;
    kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 2000; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        close(out_fd_);
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    close(out_fd_);
    return status;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string address_;
  std::string first_line_;
};

#ifdef QSEARCH_AGENT_BIN
// qsearch-agent on `store` with its scratch in `data_dir`, the test's worker binary and
// one thread per worker; `extra_args` after those.
class AgentProcess {
 public:
  AgentProcess(const std::string& data_dir, const std::string& store, std::vector<std::string> extra_args = {},
               const std::string& worker = QSEARCH_WORKER_BIN)
      : process_(data_dir, Args(data_dir, store, worker, std::move(extra_args)), {}, false, QSEARCH_AGENT_BIN) {}
  bool ok() const { return process_.first_line().rfind("qsearch-agent ", 0) == 0; }
  int Stop(int sig) { return process_.Stop(sig); }

 private:
  static std::vector<std::string> Args(const std::string& data_dir, const std::string& store,
                                       const std::string& worker, std::vector<std::string> extra) {
    std::vector<std::string> args = {"--store", store, "--data-dir", data_dir, "--worker", worker,
                                     "--threads-per-worker", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  ServerProcess process_;
};
#endif

}  // namespace qsearch::testing

#endif  // QSEARCH_SERVER_TESTING_SERVER_PROCESS_H_
