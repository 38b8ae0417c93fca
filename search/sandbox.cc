// Namespaces, Landlock, seccomp and rlimits, with raw system calls. Debian bookworm's
// kernel headers stop at Landlock ABI 2; the later ABI's numbers are defined here, as the
// kernel's UAPI fixes them.
#include "search/sandbox.h"

#include <fcntl.h>
#include <link.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace qsearch::search {
namespace {

// Landlock UAPI (include/uapi/linux/landlock.h).
struct RulesetAttr {
  std::uint64_t handled_access_fs;
  std::uint64_t handled_access_net;  // ABI 4
  std::uint64_t scoped;              // ABI 6
};
struct PathBeneathAttr {
  std::uint64_t allowed_access;
  std::int32_t parent_fd;
} __attribute__((packed));
constexpr std::uint32_t kCreateRulesetVersion = 1U << 0;
constexpr int kRulePathBeneath = 1;
constexpr std::uint64_t kExecute = 1ULL << 0, kWriteFile = 1ULL << 1, kReadFile = 1ULL << 2, kReadDir = 1ULL << 3,
                        kRemoveDir = 1ULL << 4, kRemoveFile = 1ULL << 5, kMakeDir = 1ULL << 7, kMakeReg = 1ULL << 8,
                        kRefer = 1ULL << 13, kTruncate = 1ULL << 14, kIoctlDev = 1ULL << 15;
constexpr std::uint64_t kNetBindTcp = 1ULL << 0, kNetConnectTcp = 1ULL << 1;
constexpr std::uint64_t kScopeAbstractUnixSocket = 1ULL << 0, kScopeSignal = 1ULL << 1;

// Every filesystem right the ABI knows: handled (so denied unless a rule allows it).
std::uint64_t AllFsRights(int abi) {
  std::uint64_t all = (1ULL << 13) - 1;  // ABI 1: execute .. make_sym
  if (abi >= 2) all |= kRefer;
  if (abi >= 3) all |= kTruncate;
  if (abi >= 5) all |= kIoctlDev;
  return all;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status Errno(const std::string& what) {
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Allows `rights` (within what `path` can have: files take no directory rights) below
// `path`. Paths that do not exist are skipped.
absl::Status Allow(int ruleset, const std::string& path, std::uint64_t rights, std::uint64_t handled) {
  Fd fd(open(path.c_str(), O_PATH | O_CLOEXEC));
  if (fd.get() < 0) return errno == ENOENT ? absl::OkStatus() : Errno(absl::StrCat("opening ", path));
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    rights &= kExecute | kWriteFile | kReadFile | kTruncate | kIoctlDev;
  }
  PathBeneathAttr rule{rights & handled, fd.get()};
  if (syscall(SYS_landlock_add_rule, ruleset, kRulePathBeneath, &rule, 0) != 0) {
    return Errno(absl::StrCat("landlock rule for ", path));
  }
  return absl::OkStatus();
}

absl::Status ApplyLandlock(const SandboxOptions& o, int abi, SandboxReport* report) {
  RulesetAttr attr{AllFsRights(abi), 0, 0};
  size_t size = sizeof(std::uint64_t);
  if (abi >= 4 && !o.loopback_tcp) {
    attr.handled_access_net = kNetBindTcp | kNetConnectTcp;  // and no rule allows any port
    size = 2 * sizeof(std::uint64_t);
    report->tcp_denied = true;
  }
  if (abi >= 6) {
    attr.scoped = kScopeAbstractUnixSocket | kScopeSignal;
    size = sizeof(RulesetAttr);  // handled_access_net stays 0 under loopback_tcp
    report->signals_scoped = true;
  }
  Fd ruleset(static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, size, 0)));
  if (ruleset.get() < 0) return Errno("creating the landlock ruleset");
  const std::uint64_t handled = attr.handled_access_fs;
  const std::uint64_t read = kReadFile | kReadDir | kExecute;
  const std::uint64_t write = read | kWriteFile | kRemoveDir | kRemoveFile | kMakeDir | kMakeReg | kRefer | kTruncate;
  // What the process itself needs: libraries loaded later, the CPU topology the thread
  // pools read, its own /proc entry, a few devices.
  for (const char* p : {"/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/proc/cpuinfo",
                        "/sys/devices/system/cpu", "/dev/urandom", "/dev/random"}) {
    if (auto s = Allow(ruleset.get(), p, read, handled); !s.ok()) return s;
  }
  if (auto s = Allow(ruleset.get(), absl::StrCat("/proc/", getpid()), read, handled); !s.ok()) return s;
  // A LibTorch installed elsewhere (a pip wheel's under /opt) loads more of its libraries
  // later, from beside the ones already loaded (CUDA's, on first use).
  const auto allowed_above = [](const std::string& dir) {
    for (const std::string root : {"/usr", "/lib", "/lib64"}) {
      if (dir == root || dir.rfind(root + "/", 0) == 0) return true;
    }
    return false;
  };
  for (const std::string& dir : LoadedLibraryDirectories()) {
    if (allowed_above(dir) || dir == "/") continue;  // never the whole file system
    if (auto s = Allow(ruleset.get(), dir, read, handled); !s.ok()) return s;
  }
  if (o.loopback_tcp || o.gpu) {
    // Gloo reads the PCI devices' classes (looking for network cards) when it opens its
    // transport, and the CUDA driver its GPUs' entries: the listing and, where its links
    // lead, the PCI trees.
    std::vector<std::string> pci = {"/sys/bus/pci/devices", "/sys/class/net"};
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/sys/devices", ec); !ec && it != std::filesystem::end(it);
         it.increment(ec)) {
      if (it->path().filename().string().rfind("pci", 0) == 0) pci.push_back(it->path().string());
    }
    for (const std::string& p : pci) {
      if (auto s = Allow(ruleset.get(), p, read, handled); !s.ok()) return s;
    }
  }
  if (auto s = Allow(ruleset.get(), "/dev/null", kReadFile | kWriteFile, handled); !s.ok()) return s;
  if (o.gpu) {
    for (const char* p : {"/proc/driver/nvidia", "/sys/module/nvidia"}) {
      if (auto s = Allow(ruleset.get(), p, read, handled); !s.ok()) return s;
    }
    // The control, memory-manager and per-GPU nodes: opened read-write and driven by ioctl.
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/dev", ec); !ec && it != std::filesystem::end(it);
         it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.rfind("nvidia", 0) != 0) continue;
      if (auto s = Allow(ruleset.get(), it->path().string(), read | kWriteFile | kIoctlDev, handled); !s.ok()) return s;
    }
  }
  for (const auto& p : o.read_paths) {
    if (auto s = Allow(ruleset.get(), p, read, handled); !s.ok()) return s;
  }
  for (const auto& p : o.write_paths) {
    if (auto s = Allow(ruleset.get(), p, write, handled); !s.ok()) return s;
  }
  if (syscall(SYS_landlock_restrict_self, ruleset.get(), 0) != 0) return Errno("entering the landlock domain");
  return absl::OkStatus();
}

// seccomp-BPF: EPERM for the calls below, everything else allowed; a foreign ABI (x32, or
// 32-bit calls) kills the process.
absl::Status ApplySeccomp(bool loopback_tcp) {
#if defined(__x86_64__)
  constexpr std::uint32_t kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
  constexpr std::uint32_t kArch = AUDIT_ARCH_AARCH64;
#else
  return absl::FailedPreconditionError("seccomp filter: unsupported architecture");
#endif
  std::vector<long> denied = {
      SYS_socketpair, SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_bpf,
      SYS_perf_event_open, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_mount, SYS_umount2, SYS_pivot_root,
      SYS_chroot, SYS_setns, SYS_unshare, SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_kexec_load,
      SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct, SYS_settimeofday, SYS_clock_settime, SYS_shmget, SYS_msgget,
      SYS_semget, SYS_userfaultfd, SYS_name_to_handle_at, SYS_open_by_handle_at, SYS_io_uring_setup,
#ifdef SYS_kexec_file_load
      SYS_kexec_file_load,
#endif
  };
  std::vector<sock_filter> prog = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
#if defined(__x86_64__)
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),  // x32 calls
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
#endif
  };
  if (loopback_tcp) {
    // IPv4/IPv6 sockets for the job's processes in their private network namespace, and
    // netlink, through which Gloo lists that namespace's (loopback) interface.
    prog.insert(prog.end(), {
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(SYS_socket), 0, 6),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    });
  } else {
    denied.push_back(SYS_socket);
  }
  for (long nr : denied) {
    prog.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(nr), 0, 1));
    prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  }
  prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), prog.data()};
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog) != 0) {
    return Errno("installing the seccomp filter");
  }
  return absl::OkStatus();
}

absl::Status Limit(int resource, std::int64_t value, const char* what) {
  if (value <= 0) return absl::OkStatus();
  const rlimit r{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
  if (setrlimit(resource, &r) != 0) return Errno(absl::StrCat("setting the ", what, " limit"));
  return absl::OkStatus();
}

// The namespaces a worker gets: its own user (no capabilities over the host's objects),
// network and IPC.
constexpr int kNamespaces = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC;

int ThreadCount() {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/task", ec); !ec && it != std::filesystem::end(it);
       it.increment(ec)) {
    ++n;
  }
  return n;
}

}  // namespace

std::string SandboxReport::Describe() const {
  std::vector<std::string> parts = {absl::StrCat("landlock ABI ", landlock_abi)};
  if (tcp_denied) parts.push_back("no TCP");
  if (signals_scoped) parts.push_back("signals scoped");
  parts.push_back(user_namespace ? "own user, network and IPC namespaces" : "no namespaces (kernel refused)");
  parts.push_back("seccomp filter");
  return absl::StrJoin(parts, ", ");
}

std::vector<std::string> LoadedLibraryDirectories() {
  std::set<std::string> dirs;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const std::string name = info->dlpi_name != nullptr ? info->dlpi_name : "";
        if (name.empty() || name[0] != '/') return 0;  // the executable, the vDSO
        std::error_code ec;
        const std::filesystem::path real = std::filesystem::canonical(name, ec);
        if (!ec) static_cast<std::set<std::string>*>(data)->insert(real.parent_path().string());
        return 0;
      },
      &dirs);
  return {dirs.begin(), dirs.end()};
}

int LandlockAbi() {
  const long abi = syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  return abi > 0 ? static_cast<int>(abi) : 0;
}

absl::Status EnterPrivateNetwork() {
  if (const int threads = ThreadCount(); threads > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the private network must be entered before any thread starts; the process runs ", threads));
  }
  if (unshare(kNamespaces) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a sandboxed job of several processes talks over a loopback network of its own, and this kernel refused "
        "the namespaces for one (",
        std::strerror(errno), "): run it with world_size 1, or allow unprivileged user namespaces on the node"));
  }
  // The new network namespace's loopback starts down.
  Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return Errno("opening a socket to bring up the private loopback");
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return Errno("reading the private loopback's flags");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return Errno("bringing up the private loopback");
  // The namespace's capabilities did their one job; the job keeps none of them.
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  if (syscall(SYS_capset, &header, none) != 0) return Errno("dropping the namespace's capabilities");
  return absl::OkStatus();
}

absl::StatusOr<SandboxReport> EnterSandbox(const SandboxOptions& o) {
  SandboxReport report;
  report.landlock_abi = LandlockAbi();
  if (report.landlock_abi == 0) {
    return absl::FailedPreconditionError(
        "this kernel offers no Landlock (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK and landlock in the lsm= list): "
        "workers cannot be confined; start the server with --sandbox=off only if every tenant is trusted");
  }
  if (const int threads = ThreadCount(); threads > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the sandbox must be entered before any thread starts; the process runs ", threads));
  }
  // Namespaces: best-effort (containers often forbid them); Landlock and seccomp below
  // do not depend on them. Under loopback_tcp, EnterPrivateNetwork made them.
  report.user_namespace = o.loopback_tcp || unshare(kNamespaces) == 0;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Errno("setting no_new_privs");
  if (auto s = ApplyLandlock(o, report.landlock_abi, &report); !s.ok()) return s;
  if (auto s = ApplySeccomp(o.loopback_tcp); !s.ok()) return s;
  // A write past the file size limit fails (EFBIG) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  if (auto s = Limit(RLIMIT_AS, o.gpu ? 0 : o.memory_bytes, "memory"); !s.ok()) return s;
  if (auto s = Limit(RLIMIT_CPU, o.cpu_seconds, "CPU time"); !s.ok()) return s;
  if (auto s = Limit(RLIMIT_FSIZE, o.max_file_bytes, "file size"); !s.ok()) return s;
  if (auto s = Limit(RLIMIT_NOFILE, o.max_open_files, "open files"); !s.ok()) return s;
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  return report;
}

}  // namespace qsearch::search
