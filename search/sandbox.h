// The worker's sandbox: what a job (and the user model it runs) may touch. Applied by
// qsearch-worker to itself at start, while it is still single-threaded, before it reads
// anything a user sent:
//   - its own user, network and IPC namespaces where the kernel allows them (no
//     capabilities over the host's objects, no network interface but a down loopback);
//   - Landlock: read (and execute) only the system's library directories and those of
//     the libraries already loaded, the job's inputs and a few device and /proc files; write only the job's output directory;
//     no TCP bind or connect (ABI >= 4); no signals to, or abstract sockets of, processes
//     outside the sandbox (ABI >= 6);
//   - seccomp: no sockets, no ptrace or cross-process memory access, no namespaces,
//     mounts, SysV IPC, io_uring, BPF, keyrings or file handles;
//   - rlimits: address space, CPU time, file size, open files, no core dumps;
//   - no_new_privs.
// Every thread created afterwards inherits all of it.
#ifndef QSEARCH_SEARCH_SANDBOX_H_
#define QSEARCH_SEARCH_SANDBOX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qsearch::search {

struct SandboxOptions {
  std::vector<std::string> read_paths;   // the job's inputs: data set, model (files or folders)
  std::vector<std::string> write_paths;  // the job's output directory
  std::int64_t memory_bytes = 0;         // RLIMIT_AS; 0: none
  std::int64_t cpu_seconds = 0;          // RLIMIT_CPU; 0: none
  std::int64_t max_file_bytes = 0;       // RLIMIT_FSIZE; 0: none
  int max_open_files = 256;
  // A job of several processes: they connect over TCP on the loopback of the private
  // network namespace EnterPrivateNetwork made before they were started, so namespaces
  // are not entered again, TCP is not denied and IPv4/IPv6 sockets are allowed.
  bool loopback_tcp = false;
  // A job on a CUDA device: the NVIDIA device nodes may be opened and driven (ioctl), the
  // driver's /proc and /sys entries and the PCI tree read, and no address-space limit is
  // set (the CUDA runtime reserves far more address space than memory; the container's
  // memory limit bounds the worker instead). Unverified on a GPU so far (docs/security.md).
  bool gpu = false;
};

// What was applied (namespaces are best-effort; Landlock and seccomp are not).
struct SandboxReport {
  int landlock_abi = 0;
  bool user_namespace = false;
  bool signals_scoped = false;
  bool tcp_denied = false;
  std::string Describe() const;
};

// The directories of the shared libraries this process has loaded, resolved: the
// sandbox lets a worker read them, so a LibTorch installed outside /usr (a pip wheel's)
// can still load its other libraries (CUDA's) once confined.
std::vector<std::string> LoadedLibraryDirectories();

// The Landlock ABI version this kernel offers, 0 when it has none.
int LandlockAbi();

// Enters new user, network and IPC namespaces and brings their loopback up: the network
// a job's processes (forked afterwards, and inheriting it) talk over, which reaches
// nothing else. FailedPrecondition when the kernel refuses the namespaces or the process
// already runs other threads.
absl::Status EnterPrivateNetwork();

// Confines the calling process. FailedPrecondition when Landlock or seccomp cannot be
// applied (the kernel lacks them) or the process already runs other threads; the process
// is then unchanged except for namespaces.
absl::StatusOr<SandboxReport> EnterSandbox(const SandboxOptions& options);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SANDBOX_H_
