// fork + exec with the channel on fd 3, stdout/stderr appended to the log.
#include "server/worker_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/frame_io.h"

namespace qsearch::server {
namespace {

constexpr int kChannelFd = 3;

// Copies everything `fd` yields to `log_path` up to `cap` bytes, drains the rest, and
// notes how much it dropped.
void CopyCapped(int fd, const std::string& log_path, std::int64_t cap) {
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  std::int64_t kept = 0, dropped = 0;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    const std::int64_t room = std::max<std::int64_t>(0, cap - kept);
    const std::int64_t take = std::min<std::int64_t>(room, n);
    if (take > 0 && log >= 0) (void)!write(log, buf, static_cast<size_t>(take));
    kept += take;
    dropped += n - take;
  }
  if (dropped > 0 && log >= 0) {
    const std::string note = absl::StrCat("\n[qsearch: the worker's output passed ", cap, " bytes; ", dropped,
                                          " more were dropped]\n");
    (void)!write(log, note.data(), note.size());
  }
  if (log >= 0) close(log);
  close(fd);
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(const WorkerLaunch& launch) {
  int fds[2], out[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("cannot create a pipe for the worker: ", std::strerror(errno)));
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrCat("cannot create a pipe for the worker: ", std::strerror(errno)));
  }
  std::vector<std::string> args = {launch.binary};
  args.insert(args.end(), launch.args.begin(), launch.args.end());
  args.insert(args.end(), {"--channel-fd", std::to_string(kChannelFd)});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
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
    // dup2 clears close-on-exec on the copies: 1 and 2 are the output pipe, fd 3 the
    // channel (placed last: the output pipe's ends may have taken fd 3).
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    if (fds[1] == kChannelFd) {
      fcntl(kChannelFd, F_SETFD, 0);  // already in place: only clear close-on-exec
    } else {
      dup2(fds[1], kChannelFd);
    }
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  close(out[1]);
  if (pid < 0) {
    close(fds[0]);
    close(out[0]);
    return absl::InternalError(absl::StrCat("cannot start a worker: ", std::strerror(errno)));
  }
  std::unique_ptr<WorkerProcess> w(new WorkerProcess(pid, fds[0], launch));
  w->logger_ = std::thread(CopyCapped, out[0], launch.log_path, launch.max_log_bytes);
  return w;
}

WorkerProcess::~WorkerProcess() {
  if (channel_ >= 0) close(channel_);
  if (logger_.joinable()) logger_.join();
}

void WorkerProcess::Signal(int sig) const {
  if (pid_ > 0) kill(pid_, sig);
}

absl::Status WorkerProcess::ReadChannel(const std::function<void(const v1::JobEvent&)>& on_event) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto last_frame = start;
  const auto seconds = [](double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); };
  // Waits until the channel is readable, or a deadline passes.
  const auto wait = [&]() -> absl::Status {
    while (true) {
      auto deadline = last_frame + seconds(launch_.progress_timeout_seconds);
      const bool limited = launch_.time_limit_seconds > 0;
      if (limited) deadline = std::min(deadline, start + seconds(launch_.time_limit_seconds));
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        if (limited && Clock::now() >= start + seconds(launch_.time_limit_seconds)) {
          return absl::DeadlineExceededError(
              absl::StrCat("the job ran past its time limit of ", launch_.time_limit_seconds, " s"));
        }
        return absl::DeadlineExceededError(absl::StrCat(
            "the worker made no progress for ", launch_.progress_timeout_seconds,
            " s (a model whose forward does not return?)"));
      }
      pollfd p{channel_, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
      if (r > 0) return absl::OkStatus();
      if (r < 0 && errno != EINTR) return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
  };
  FrameReader reader(channel_, launch_.max_frame_bytes, wait);
  // A token bucket of events: bursts up to 10 s worth, refilled at the sustained rate.
  const double burst = std::max(1.0, launch_.max_events_per_second * 10);
  double tokens = burst;
  auto refilled = start;
  internal::WorkerMessage m;
  while (true) {
    m.Clear();
    absl::StatusOr<bool> more = reader.Next(&m);
    if (!more.ok()) {
      Signal(SIGKILL);
      if (more.status().code() == absl::StatusCode::kDeadlineExceeded) return more.status();
      return absl::Status(more.status().code(), absl::StrCat("the worker's channel: ", more.status().message()));
    }
    if (!*more) return absl::OkStatus();
    last_frame = Clock::now();
    switch (m.kind_case()) {
      case internal::WorkerMessage::kEvent:
        tokens = std::min(burst, tokens + launch_.max_events_per_second *
                                              std::chrono::duration<double>(last_frame - refilled).count());
        refilled = last_frame;
        if (tokens < 1) {
          Signal(SIGKILL);
          return absl::ResourceExhaustedError(absl::StrCat("the worker sent events faster than ",
                                                           launch_.max_events_per_second, " a second"));
        }
        tokens -= 1;
        on_event(m.event());
        break;
      case internal::WorkerMessage::kHeartbeat:
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
  if (logger_.joinable()) logger_.join();  // the output pipe closed with the worker
  return status;
}

}  // namespace qsearch::server
