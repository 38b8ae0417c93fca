// fork + exec with the channel on fd 3, stdout/stderr appended to the log.
#include "server/worker_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/frame_io.h"

namespace qsearch::server {
namespace {

constexpr int kChannelFd = 3;

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(const WorkerLaunch& launch) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("cannot create a pipe for the worker: ", std::strerror(errno)));
  }
  std::vector<std::string> args = {launch.binary};
  args.insert(args.end(), launch.args.begin(), launch.args.end());
  args.insert(args.end(), {"--channel-fd", std::to_string(kChannelFd)});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int log_fd = open(launch.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: async-signal-safe calls only until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    // The server blocks SIGTERM/SIGINT (a thread sigwaits for them) and ignores SIGPIPE;
    // the worker needs both back, or cancel and shutdown could not reach it.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, nullptr);
    // dup2 clears close-on-exec on the copies: fd 3 is the channel, 1 and 2 the log.
    if (fds[1] == kChannelFd) {
      fcntl(kChannelFd, F_SETFD, 0);  // already in place: only clear close-on-exec
    } else {
      dup2(fds[1], kChannelFd);
    }
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  if (log_fd >= 0) close(log_fd);
  if (pid < 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("cannot start a worker: ", std::strerror(errno)));
  }
  return std::unique_ptr<WorkerProcess>(new WorkerProcess(pid, fds[0], launch.max_frame_bytes));
}

WorkerProcess::~WorkerProcess() {
  if (channel_ >= 0) close(channel_);
}

void WorkerProcess::Signal(int sig) const {
  if (pid_ > 0) kill(pid_, sig);
}

absl::Status WorkerProcess::ReadChannel(const std::function<void(const v1::JobEvent&)>& on_event) {
  FrameReader reader(channel_, max_frame_bytes_);
  internal::WorkerMessage m;
  while (true) {
    m.Clear();
    absl::StatusOr<bool> more = reader.Next(&m);
    if (!more.ok()) {
      Signal(SIGKILL);
      return absl::Status(more.status().code(), absl::StrCat("the worker's channel: ", more.status().message()));
    }
    if (!*more) return absl::OkStatus();
    switch (m.kind_case()) {
      case internal::WorkerMessage::kEvent:
        on_event(m.event());
        break;
      case internal::WorkerMessage::kResult:
        result_ = m.result();
        break;
      case internal::WorkerMessage::kStatus:
        status_ = m.status();
        break;
      case internal::WorkerMessage::KIND_NOT_SET:
        break;
    }
  }
}

int WorkerProcess::Wait() {
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace qsearch::server
