// The worker's sandbox, entered by a forked child (it cannot be left): what it may still
// do (read its inputs, write its output, compute) and everything else it tries.
#include "search/sandbox.h"

#include <netinet/in.h>
#include <signal.h>
#include <dirent.h>
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <gtest/gtest.h>
#include <c10/core/CPUAllocator.h>
#include <zlib.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

namespace fs = std::filesystem;

// Runs `probe` in a child inside the sandbox; the child exits with probe()'s value (255
// when the sandbox could not be entered).
int InSandbox(const SandboxOptions& options, const std::function<int()>& probe) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!EnterSandbox(options).ok()) _exit(255);
    _exit(probe());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool CanRead(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  return in.good() && std::getline(in, s);
}

bool CanWrite(const std::string& path) {
  std::ofstream out(path);
  out << "x";
  out.flush();
  return out.good();
}

TEST(SandboxTest, ReadsInputsWritesOutputAndNothingElse) {
  ASSERT_GT(LandlockAbi(), 0) << "this kernel has no Landlock";
  const std::string root = ::qsearch::testing::FreshDir("qsearch_sandbox");
  const std::string in = root + "/in", out = root + "/out", other = root + "/other";
  for (const auto& d : {in, out, other}) fs::create_directories(d);
  std::ofstream(in + "/data.txt") << "input\n";
  std::ofstream(other + "/secret.txt") << "another tenant's\n";
  SandboxOptions o;
  o.read_paths = {in};
  o.write_paths = {out};
  o.memory_bytes = std::int64_t{8} << 30;

  // One bit per thing that went as it should.
  const int result = InSandbox(o, [&] {
    std::map<int, bool> ok;
    ok[0] = CanRead(in + "/data.txt");
    ok[1] = CanWrite(out + "/result.json") && fs::exists(out + "/result.json");
    ok[2] = !CanRead(other + "/secret.txt");                        // another tenant's blob
    ok[3] = !CanRead("/etc/passwd") && !CanRead("/etc/hostname");  // the server's files
    ok[4] = !CanWrite(in + "/data.txt");                             // inputs are read-only
    ok[5] = socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM;   // no network
    ok[6] = socket(AF_UNIX, SOCK_STREAM, 0) < 0;
    ok[7] = kill(getppid(), 0) != 0;                                 // cannot signal the server
    int bits = 0;
    for (const auto& [bit, good] : ok) bits |= good ? (1 << bit) : 0;
    return ~bits & 0xff;  // the probes that failed
  });
  EXPECT_EQ(result, 0) << "failed probes (bit mask): " << result;
  EXPECT_TRUE(fs::exists(out + "/result.json"));
  fs::remove_all(root);
}

TEST(SandboxTest, MemoryLimitTurnsAHugeAllocationIntoAnError) {
  SandboxOptions o;
  o.memory_bytes = std::int64_t{1} << 30;
  EXPECT_EQ(InSandbox(o,
                      [] {
                        void* p = malloc(std::size_t{4} << 30);
                        return p == nullptr ? 0 : 1;
                      }),
            0);
}

// A GPU job: the address-space limit is left off (the CUDA runtime reserves far more than
// it uses), and everything else holds as for a CPU job.
TEST(SandboxTest, AGpuJobHasNoAddressSpaceLimitAndTheSameWalls) {
  ASSERT_GT(LandlockAbi(), 0) << "this kernel has no Landlock";
  const std::string root = ::qsearch::testing::FreshDir("qsearch_sandbox_gpu");
  const std::string in = root + "/in", out = root + "/out";
  for (const auto& d : {in, out}) fs::create_directories(d);
  SandboxOptions o;
  o.read_paths = {in};
  o.write_paths = {out};
  o.memory_bytes = std::int64_t{1} << 30;
  o.gpu = true;
  const int result = InSandbox(o, [&] {
    rlimit as{};
    getrlimit(RLIMIT_AS, &as);
    std::map<int, bool> ok;
    ok[0] = as.rlim_cur == RLIM_INFINITY;
    ok[1] = CanWrite(out + "/x") && !CanWrite(in + "/x") && !CanRead("/etc/passwd");
    ok[2] = socket(AF_INET, SOCK_STREAM, 0) < 0;
    ok[3] = !CanWrite("/dev/shm/qsearch_gpu_probe");
    int bits = 0;
    for (const auto& [bit, good] : ok) bits |= good ? (1 << bit) : 0;
    return ~bits & 0xf;
  });
  EXPECT_EQ(result, 0) << "failed probes (bit mask): " << result;
  fs::remove_all(root);
}

// LibTorch's own directory stays readable, wherever it is installed: a CUDA build loads
// more of its libraries from there after the worker is confined.
TEST(SandboxTest, TheLoadedLibrariesDirectoriesStayReadable) {
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&c10::GetCPUAllocator), &info), 0);
  const std::string torch_dir = fs::canonical(info.dli_fname).parent_path().string();
  const std::vector<std::string> dirs = LoadedLibraryDirectories();
  EXPECT_NE(std::find(dirs.begin(), dirs.end(), torch_dir), dirs.end()) << torch_dir;
  // A library loaded from outside the system directories: what lies beside it stays
  // readable in the sandbox, a directory no library came from does not.
  const std::string root = ::qsearch::testing::FreshDir("qsearch_sandbox_libs");
  fs::create_directories(root + "/libs");
  fs::create_directories(root + "/other");
  Dl_info zlib{};  // a small library with no global state to clash with its copy's
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&zlibVersion), &zlib), 0);
  fs::copy_file(fs::canonical(zlib.dli_fname), root + "/libs/libqsearch_probe.so");
  ASSERT_NE(dlopen((root + "/libs/libqsearch_probe.so").c_str(), RTLD_LAZY | RTLD_LOCAL), nullptr) << dlerror();
  std::ofstream(root + "/libs/loaded_later.txt") << "a library's neighbour\n";
  std::ofstream(root + "/other/secret.txt") << "not a library's\n";
  const std::vector<std::string> now = LoadedLibraryDirectories();
  EXPECT_NE(std::find(now.begin(), now.end(), fs::canonical(root + "/libs").string()), now.end());
  SandboxOptions o;
  EXPECT_EQ(InSandbox(o,
                      [&] {
                        int failed = 0;
                        for (const std::string& d : now) {
                          DIR* listing = opendir(d.c_str());
                          failed += listing == nullptr ? 1 : 0;
                          if (listing != nullptr) closedir(listing);
                        }
                        failed += CanRead(root + "/libs/loaded_later.txt") ? 0 : 100;
                        failed += CanRead(root + "/other/secret.txt") ? 1000 : 0;
                        return std::min(failed, 255);
                      }),
            0);
}

TEST(SandboxTest, ThreadsMustNotExistYet) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::thread t([] { std::this_thread::sleep_for(std::chrono::milliseconds(200)); });
    const auto s = EnterSandbox({});
    t.join();
    _exit(s.status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace qsearch::search
