// The deployment files agree with each other and with the real server. No Docker engine
// or cluster runs here, so this checks what can be checked without one:
//   - the Dockerfile: two Debian bookworm stages installed by deploy/install-deps.sh (the
//     script CI runs), a non-root user, the data volume, a HEALTHCHECK through
//     `qsearch health`, the server as entrypoint;
//   - docker-compose and the Kubernetes manifests: ports, probes, volume and user match
//     the image; the GPU variant asks for nvidia.com/gpu and binds its worker to it;
//   - the real qsearch-server, started with the image's entrypoint flags plus each
//     manifest's args, answers SERVING to the exact health service each probe asks for;
//   - scale-out (deploy/k8s-scale, deploy/docker-compose.scale.yml): a PostgreSQL
//     StatefulSet and DSN Secret, 2+ server replicas rolling with a disruption budget,
//     GPU agents; the real server and agent, started with those args on a real
//     PostgreSQL, run a job together.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "server/testing/server_process.h"
#include "tests/test_util.h"
#include "tests/testing/postgres.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

const fs::path kRoot = QSEARCH_SOURCE_DIR;

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The Dockerfile's instructions, continuation lines joined, comments dropped.
struct Instruction {
  std::string keyword, args;
};
std::vector<Instruction> ParseDockerfile(const std::string& text) {
  std::vector<Instruction> out;
  std::string pending;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    std::string line(absl::StripAsciiWhitespace(raw));
    if (line.empty() || line[0] == '#') continue;
    const bool more = !line.empty() && line.back() == '\\';
    if (more) line.pop_back();
    pending += line + " ";
    if (more) continue;
    const std::size_t sp = pending.find(' ');
    out.push_back({pending.substr(0, sp), std::string(absl::StripAsciiWhitespace(pending.substr(sp + 1)))});
    pending.clear();
  }
  return out;
}

// ["a", "b"] exec-form arguments.
std::vector<std::string> JsonArray(const std::string& s) {
  std::vector<std::string> out;
  std::regex item("\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), item); it != std::sregex_iterator(); ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

std::string FlagValue(const std::vector<std::string>& args, const std::string& flag) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag) return args[i + 1];
  }
  return "";
}

// What the image promises, read off the Dockerfile.
struct Image {
  std::vector<std::string> entrypoint;
  int port = 0;
  std::string data_dir, user;
  std::string tokens;  // --auth-tokens: where the tenants' tokens are mounted
};

Image ReadImage() {
  Image img;
  for (const auto& ins : ParseDockerfile(Read(kRoot / "Dockerfile"))) {
    if (ins.keyword == "ENTRYPOINT") img.entrypoint = JsonArray(ins.args);
    if (ins.keyword == "USER") img.user = ins.args;
  }
  const std::string listen = FlagValue(img.entrypoint, "--listen");
  img.port = std::stoi(listen.substr(listen.rfind(':') + 1));
  img.data_dir = FlagValue(img.entrypoint, "--data-dir");
  img.tokens = FlagValue(img.entrypoint, "--auth-tokens");
  return img;
}

TEST(DockerfileTest, TwoBookwormStagesFromTheCiScriptNonRootHealthChecked) {
  const auto ins = ParseDockerfile(Read(kRoot / "Dockerfile"));
  const Image img = ReadImage();
  ASSERT_EQ(img.entrypoint.at(0), "qsearch-server");
  EXPECT_EQ(img.port, 50051);
  EXPECT_FALSE(img.data_dir.empty());

  std::vector<std::string> stages;
  std::map<std::string, std::string> install_group;  // stage -> install-deps.sh group
  std::set<std::string> exposed, volumes;
  std::string healthcheck;
  for (const auto& i : ins) {
    if (i.keyword == "FROM") {
      std::vector<std::string> f = absl::StrSplit(i.args, ' ', absl::SkipEmpty());
      EXPECT_EQ(f.at(0), "debian:bookworm") << "Debian bookworm, as CI";
      stages.push_back(f.size() == 3 ? f[2] : "");
    }
    if (i.keyword == "RUN") {
      std::smatch m;
      if (std::regex_search(i.args, m, std::regex(R"(bash (\S*install-deps\.sh) (\w+))"))) {
        install_group[stages.back()] = m[2];
      }
      EXPECT_THAT(i.args, ::testing::Not(HasSubstr("curl"))) << "Debian packages only";
      EXPECT_THAT(i.args, ::testing::Not(HasSubstr("wget"))) << "Debian packages only";
      EXPECT_THAT(i.args, ::testing::Not(HasSubstr("pip "))) << "Debian packages only";
    }
    if (i.keyword == "EXPOSE") exposed.insert(i.args);
    if (i.keyword == "VOLUME") {
      for (const auto& v : JsonArray(i.args)) volumes.insert(v);
    }
    if (i.keyword == "HEALTHCHECK") healthcheck = i.args;
  }
  EXPECT_EQ(stages, (std::vector<std::string>{"build", "runtime"}));
  EXPECT_EQ(install_group["build"], "build");
  EXPECT_EQ(install_group["runtime"], "runtime");
  EXPECT_THAT(exposed, Contains(std::to_string(img.port)));
  EXPECT_THAT(volumes, Contains(img.data_dir));
  EXPECT_FALSE(img.user.empty());
  EXPECT_NE(img.user.substr(0, img.user.find(':')), "root");
  EXPECT_NE(img.user.substr(0, img.user.find(':')), "0");
  const std::vector<std::string> probe = JsonArray(healthcheck.substr(healthcheck.find("CMD")));
  ASSERT_GE(probe.size(), 2u);
  EXPECT_EQ(probe.front(), "qsearch");
  EXPECT_EQ(probe.back(), "health");
  EXPECT_EQ(FlagValue(probe, "--server"), "127.0.0.1:" + std::to_string(img.port));

  // The agent the scale-out manifests start is in the image.
  EXPECT_THAT(Read(kRoot / "Dockerfile"), HasSubstr("/build/server/qsearch-agent"));
  // CI runs the same script: .ci/run -> deploy/test.sh -> deploy/install-deps.sh.
  EXPECT_THAT(Read(kRoot / ".ci/run"), HasSubstr("deploy/test.sh"));
  EXPECT_THAT(Read(kRoot / "deploy/test.sh"), HasSubstr("deploy/install-deps.sh"));
}

TEST(ComposeTest, ServerWithNamedVolumeAndHealthCheck) {
  const Image img = ReadImage();
  const YAML::Node doc = YAML::LoadFile((kRoot / "deploy/docker-compose.yml").string());
  const YAML::Node svc = doc["services"]["qsearch"];
  ASSERT_TRUE(svc.IsMap());
  EXPECT_EQ(svc["build"]["dockerfile"].as<std::string>(), "Dockerfile");
  EXPECT_TRUE(fs::exists(kRoot / "deploy" / svc["build"]["context"].as<std::string>() / "Dockerfile"));
  EXPECT_EQ(svc["ports"][0].as<std::string>(), absl::StrCat(img.port, ":", img.port));
  const std::vector<std::string> mount = absl::StrSplit(svc["volumes"][0].as<std::string>(), ':');
  ASSERT_EQ(mount.size(), 2u);
  EXPECT_EQ(mount[1], img.data_dir);
  EXPECT_TRUE(doc["volumes"][mount[0]]) << "a named volume, declared";
  const auto test = svc["healthcheck"]["test"].as<std::vector<std::string>>();
  EXPECT_EQ(test.at(1), "qsearch");
  EXPECT_EQ(test.back(), "health");
  EXPECT_EQ(FlagValue(test, "--server"), "127.0.0.1:" + std::to_string(img.port));
}

// Every document of every YAML file under deploy/k8s (or `dir`), by kind.
std::multimap<std::string, std::pair<std::string, YAML::Node>> K8sObjects(const std::string& dir = "deploy/k8s") {
  std::multimap<std::string, std::pair<std::string, YAML::Node>> out;
  for (const auto& e : fs::recursive_directory_iterator(kRoot / dir)) {
    if (e.path().extension() != ".yaml") continue;
    for (const YAML::Node& doc : YAML::LoadAllFromFile(e.path().string())) {
      out.emplace(doc["kind"].as<std::string>(), std::make_pair(fs::relative(e.path(), kRoot).string(), doc));
    }
  }
  return out;
}

TEST(KubernetesTest, DeploymentsProbeTheServersPortAndHealthService) {
  const Image img = ReadImage();
  const auto objects = K8sObjects();
  ASSERT_EQ(objects.count("PersistentVolumeClaim"), 1u);
  ASSERT_EQ(objects.count("Service"), 1u);
  ASSERT_EQ(objects.count("Deployment"), 2u) << "CPU and GPU variants";
  const YAML::Node pvc = objects.find("PersistentVolumeClaim")->second.second;
  const YAML::Node service = objects.find("Service")->second.second;
  ASSERT_EQ(objects.count("Secret"), 1u) << "the tenants' tokens";
  const YAML::Node secret = objects.find("Secret")->second.second;
  ASSERT_EQ(secret["stringData"].size(), 1u);
  const std::string secret_key = secret["stringData"].begin()->first.as<std::string>();
  const std::string uid = img.user.substr(0, img.user.find(':'));
  ASSERT_FALSE(img.tokens.empty()) << "the image runs with tokens";

  int gpu_variants = 0;
  auto [begin, end] = objects.equal_range("Deployment");
  for (auto it = begin; it != end; ++it) {
    SCOPED_TRACE(it->second.first);
    const YAML::Node d = it->second.second;
    const YAML::Node pod = d["spec"]["template"]["spec"];
    EXPECT_EQ(d["spec"]["replicas"].as<int>(), 1) << "one SQLite writer";
    EXPECT_EQ(d["spec"]["strategy"]["type"].as<std::string>(), "Recreate");
    EXPECT_TRUE(pod["securityContext"]["runAsNonRoot"].as<bool>());
    EXPECT_EQ(pod["securityContext"]["runAsUser"].as<std::string>(), uid) << "the image's user";
    // The Service selects this pod.
    for (const auto& kv : service["spec"]["selector"]) {
      EXPECT_EQ(d["spec"]["template"]["metadata"]["labels"][kv.first.as<std::string>()].as<std::string>(),
                kv.second.as<std::string>());
    }
    ASSERT_EQ(pod["containers"].size(), 1u);
    const YAML::Node c = pod["containers"][0];
    EXPECT_FALSE(c["command"]) << "the image's entrypoint (port, data dir) stays";
    const YAML::Node port = c["ports"][0];
    EXPECT_EQ(port["containerPort"].as<int>(), img.port);
    EXPECT_EQ(port["name"].as<std::string>(), service["spec"]["ports"][0]["targetPort"].as<std::string>());
    EXPECT_EQ(c["readinessProbe"]["grpc"]["port"].as<int>(), img.port);
    EXPECT_EQ(c["readinessProbe"]["grpc"]["service"].as<std::string>(), v1::SearchService::service_full_name());
    EXPECT_EQ(c["livenessProbe"]["grpc"]["port"].as<int>(), img.port);
    EXPECT_FALSE(c["livenessProbe"]["grpc"]["service"]) << "liveness asks about the whole server";
    EXPECT_TRUE(c["resources"]["requests"]["cpu"]);
    EXPECT_TRUE(c["resources"]["requests"]["memory"]);
    EXPECT_EQ(c["volumeMounts"][0]["mountPath"].as<std::string>(), img.data_dir);
    const std::string volume = c["volumeMounts"][0]["name"].as<std::string>();
    bool claimed = false;
    for (const auto& v : pod["volumes"]) {
      if (v["name"].as<std::string>() == volume) {
        claimed = v["persistentVolumeClaim"]["claimName"].as<std::string>() == pvc["metadata"]["name"].as<std::string>();
      }
    }
    EXPECT_TRUE(claimed) << "the data volume is the PVC";
    // The tokens come from the Secret, mounted where the entrypoint reads them.
    bool tokens_mounted = false;
    for (const auto& m : c["volumeMounts"]) {
      for (const auto& v : pod["volumes"]) {
        if (v["name"].as<std::string>() != m["name"].as<std::string>() || !v["secret"]) continue;
        tokens_mounted = v["secret"]["secretName"].as<std::string>() == secret["metadata"]["name"].as<std::string>() &&
                         (fs::path(m["mountPath"].as<std::string>()) / secret_key).string() == img.tokens &&
                         m["readOnly"].as<bool>();
      }
    }
    EXPECT_TRUE(tokens_mounted) << "the Secret at " << img.tokens;
    const auto args = c["args"].as<std::vector<std::string>>();
    if (c["resources"]["limits"]["nvidia.com/gpu"]) {
      ++gpu_variants;
      EXPECT_EQ(c["resources"]["limits"]["nvidia.com/gpu"].as<int>(), 1);
      EXPECT_EQ(FlagValue(args, "--devices"), "cuda:0");
    }
  }
  EXPECT_EQ(gpu_variants, 1);
}

// The real server, started as each manifest starts it (the image's entrypoint flags with
// a local address and data dir, then the manifest's args), answers SERVING to the health
// service each probe names.
TEST(KubernetesTest, TheRealServerAnswersEachProbesHealthService) {
  const Image img = ReadImage();
  const auto objects = K8sObjects();
  std::vector<std::pair<std::string, std::vector<std::string>>> starts;
  {
    const YAML::Node compose = YAML::LoadFile((kRoot / "deploy/docker-compose.yml").string());
    starts.push_back({"docker-compose.yml", compose["services"]["qsearch"]["command"].as<std::vector<std::string>>()});
    // Compose mounts its secret at /run/secrets/<name>: where the entrypoint reads tokens.
    const std::string secret = compose["services"]["qsearch"]["secrets"][0].as<std::string>();
    EXPECT_EQ("/run/secrets/" + secret, img.tokens);
    EXPECT_TRUE(compose["secrets"][secret]["file"]);
  }
  auto [begin, end] = objects.equal_range("Deployment");
  for (auto it = begin; it != end; ++it) {
    starts.push_back({it->second.first, it->second.second["spec"]["template"]["spec"]["containers"][0]["args"]
                                            .as<std::vector<std::string>>()});
  }
  for (const auto& [where, manifest_args] : starts) {
    SCOPED_TRACE(where);
    const fs::path dir = ::qsearch::testing::FreshDir("manifest_server");
    std::vector<std::string> args(img.entrypoint.begin() + 1, img.entrypoint.end());
    const std::string tokens = (dir / "tokens").string();
    std::ofstream(tokens) << "s3cret-team-a team-a\n";
    for (std::size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--listen") args[i + 1] = "127.0.0.1:0";
      if (args[i] == "--data-dir") args[i + 1] = dir.string();
      if (args[i] == "--auth-tokens") args[i + 1] = tokens;
    }
    args.insert(args.end(), manifest_args.begin(), manifest_args.end());
    testing::ServerProcess server(dir.string(), args, {}, /*test_defaults=*/false);
    ASSERT_TRUE(server.ok()) << "the server refused the manifest's args";
    client::ClientOptions o;
    o.server = server.address();
    ASSERT_OK_AND_ASSIGN(auto c, client::QsearchClient::Connect(o));
    // Probes need no token; the API does.
    for (const std::string service : {"", v1::SearchService::service_full_name()}) {
      ASSERT_OK_AND_ASSIGN(bool serving, c->Healthy(service));
      EXPECT_TRUE(serving) << "'" << service << "'";
    }
    EXPECT_EQ(c->Healthy("no.such.Service").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(c->List(v1::JOB_STATE_UNSPECIFIED, 10, "").status().code(), absl::StatusCode::kUnauthenticated);
    o.token = "s3cret-team-a";
    ASSERT_OK_AND_ASSIGN(auto team, client::QsearchClient::Connect(o));
    EXPECT_OK(team->List(v1::JOB_STATE_UNSPECIFIED, 10, ""));
    server.Stop(SIGTERM);
    fs::remove_all(dir);
  }
}

// The one object of `kind` named `name`.
YAML::Node Find(const std::multimap<std::string, std::pair<std::string, YAML::Node>>& objects, const std::string& kind,
                const std::string& name) {
  auto [begin, end] = objects.equal_range(kind);
  for (auto it = begin; it != end; ++it) {
    if (it->second.second["metadata"]["name"].as<std::string>() == name) return it->second.second;
  }
  ADD_FAILURE() << "no " << kind << " " << name;
  return YAML::Node();
}

bool Selects(const YAML::Node& selector, const YAML::Node& labels) {
  for (const auto& kv : selector) {
    if (!labels[kv.first.as<std::string>()] ||
        labels[kv.first.as<std::string>()].as<std::string>() != kv.second.as<std::string>()) {
      return false;
    }
  }
  return true;
}

// `args` with $(QSEARCH_STORE) replaced by `store`.
std::vector<std::string> WithStore(std::vector<std::string> args, const std::string& store) {
  for (auto& a : args) {
    if (a == "$(QSEARCH_STORE)") a = store;
  }
  return args;
}

TEST(KubernetesScaleTest, PostgresServersWithReplicasAndBudgetGpuAgents) {
  const Image img = ReadImage();
  const auto objects = K8sObjects("deploy/k8s-scale");
  const YAML::Node store_secret = Find(objects, "Secret", "qsearch-store");
  ASSERT_TRUE(store_secret["stringData"]["dsn"]);
  EXPECT_EQ(store_secret["stringData"]["dsn"].as<std::string>().rfind("postgresql://", 0), 0u);
  const YAML::Node pg = Find(objects, "StatefulSet", "qsearch-postgres");
  EXPECT_TRUE(pg["spec"]["volumeClaimTemplates"]) << "PostgreSQL keeps its data on its own volume";
  const YAML::Node pg_service = Find(objects, "Service", "qsearch-postgres");
  EXPECT_TRUE(Selects(pg_service["spec"]["selector"], pg["spec"]["template"]["metadata"]["labels"]));
  EXPECT_THAT(store_secret["stringData"]["dsn"].as<std::string>(), HasSubstr("@qsearch-postgres:5432/"));

  const YAML::Node server = Find(objects, "Deployment", "qsearch-server");
  const YAML::Node agent = Find(objects, "Deployment", "qsearch-agent");
  // Servers: 2+ replicas rolling one at a time, probed like the single server.
  EXPECT_GE(server["spec"]["replicas"].as<int>(), 2);
  EXPECT_EQ(server["spec"]["strategy"]["type"].as<std::string>(), "RollingUpdate");
  EXPECT_EQ(server["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as<int>(), 0);
  const YAML::Node sc = server["spec"]["template"]["spec"]["containers"][0];
  EXPECT_FALSE(sc["command"]) << "the image's entrypoint (port, data dir, tokens) stays";
  EXPECT_EQ(sc["readinessProbe"]["grpc"]["port"].as<int>(), img.port);
  EXPECT_EQ(sc["readinessProbe"]["grpc"]["service"].as<std::string>(), v1::SearchService::service_full_name());
  EXPECT_EQ(sc["livenessProbe"]["grpc"]["port"].as<int>(), img.port);
  const auto server_args = sc["args"].as<std::vector<std::string>>();
  EXPECT_EQ(FlagValue(server_args, "--store"), "$(QSEARCH_STORE)");
  EXPECT_EQ(FlagValue(server_args, "--workers"), "0") << "agents run the jobs";
  // Agents: the qsearch-agent binary, a GPU each, bound to it.
  const YAML::Node pod = agent["spec"]["template"]["spec"];
  const YAML::Node ac = pod["containers"][0];
  EXPECT_EQ(ac["command"].as<std::vector<std::string>>(), std::vector<std::string>{"qsearch-agent"});
  EXPECT_EQ(ac["resources"]["limits"]["nvidia.com/gpu"].as<int>(), 1);
  EXPECT_EQ(ac["resources"]["requests"]["nvidia.com/gpu"].as<int>(), 1);
  const auto agent_args = ac["args"].as<std::vector<std::string>>();
  EXPECT_EQ(FlagValue(agent_args, "--store"), "$(QSEARCH_STORE)");
  EXPECT_EQ(FlagValue(agent_args, "--devices"), "cuda:0");
  EXPECT_TRUE(pod["securityContext"]["runAsNonRoot"].as<bool>());
  // Both read the DSN from the Secret.
  for (const YAML::Node& c : {sc, ac}) {
    bool from_secret = false;
    for (const auto& e : c["env"]) {
      from_secret |= e["name"].as<std::string>() == "QSEARCH_STORE" &&
                     e["valueFrom"]["secretKeyRef"]["name"].as<std::string>() == "qsearch-store" &&
                     e["valueFrom"]["secretKeyRef"]["key"].as<std::string>() == "dsn";
    }
    EXPECT_TRUE(from_secret);
  }
  // The Service reaches servers only; a budget keeps servers serving and agents working.
  const YAML::Node service = Find(objects, "Service", "qsearch");
  EXPECT_TRUE(Selects(service["spec"]["selector"], server["spec"]["template"]["metadata"]["labels"]));
  EXPECT_FALSE(Selects(service["spec"]["selector"], agent["spec"]["template"]["metadata"]["labels"]));
  const YAML::Node server_pdb = Find(objects, "PodDisruptionBudget", "qsearch-server");
  EXPECT_TRUE(Selects(server_pdb["spec"]["selector"]["matchLabels"], server["spec"]["template"]["metadata"]["labels"]));
  EXPECT_GE(server_pdb["spec"]["minAvailable"].as<int>(), 1);
  const YAML::Node agent_pdb = Find(objects, "PodDisruptionBudget", "qsearch-agent");
  EXPECT_TRUE(Selects(agent_pdb["spec"]["selector"]["matchLabels"], agent["spec"]["template"]["metadata"]["labels"]));

  // Compose: PostgreSQL, two servers, two agents on one DSN.
  const YAML::Node compose = YAML::LoadFile((kRoot / "deploy/docker-compose.scale.yml").string());
  int servers = 0, agents = 0;
  for (const auto& kv : compose["services"]) {
    const YAML::Node svc = kv.second;
    if (svc["entrypoint"] && svc["entrypoint"][0].as<std::string>() == "qsearch-agent") {
      ++agents;
      EXPECT_THAT(FlagValue(svc["command"].as<std::vector<std::string>>(), "--store"), HasSubstr("@postgres:5432/"));
    } else if (svc["command"] && FlagValue(svc["command"].as<std::vector<std::string>>(), "--workers") == "0") {
      ++servers;
      EXPECT_THAT(FlagValue(svc["command"].as<std::vector<std::string>>(), "--store"), HasSubstr("@postgres:5432/"));
    }
  }
  EXPECT_EQ(servers, 2);
  EXPECT_EQ(agents, 2);
  EXPECT_TRUE(compose["services"]["postgres"]);
}

// The real server and agent, started with the manifests' args on a real PostgreSQL (the
// agent on cpu: no GPU here), run a job together.
TEST(KubernetesScaleTest, TheRealServerAndAgentRunAJobWithTheManifestsArgs) {
  const Image img = ReadImage();
  const auto objects = K8sObjects("deploy/k8s-scale");
  const fs::path dir = ::qsearch::testing::FreshDir("manifest_scale");
  ASSERT_OK_AND_ASSIGN(auto pg, ::qsearch::testing::TestPostgres::Start((dir / "pg").string()));
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("scale"));
  std::vector<std::string> args(img.entrypoint.begin() + 1, img.entrypoint.end());
  const std::string tokens = (dir / "tokens").string();
  std::ofstream(tokens) << "s3cret-team-a team-a\n";
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--listen") args[i + 1] = "127.0.0.1:0";
    if (args[i] == "--data-dir") args[i + 1] = (dir / "server").string();
    if (args[i] == "--auth-tokens") args[i + 1] = tokens;
  }
  const auto server_args = WithStore(
      Find(objects, "Deployment", "qsearch-server")["spec"]["template"]["spec"]["containers"][0]["args"]
          .as<std::vector<std::string>>(),
      uri);
  args.insert(args.end(), server_args.begin(), server_args.end());
  testing::ServerProcess server((dir / "server").string(), args, {}, /*test_defaults=*/false);
  ASSERT_TRUE(server.ok()) << "the server refused the manifest's args";
  auto agent_args = WithStore(
      Find(objects, "Deployment", "qsearch-agent")["spec"]["template"]["spec"]["containers"][0]["args"]
          .as<std::vector<std::string>>(),
      uri);
  for (std::size_t i = 0; i + 1 < agent_args.size(); ++i) {
    if (agent_args[i] == "--devices") agent_args[i + 1] = "cpu";
    if (agent_args[i] == "--data-dir") agent_args[i + 1] = (dir / "agent").string();
  }
  agent_args.insert(agent_args.end(), {"--worker", QSEARCH_WORKER_BIN, "--threads-per-worker", "1"});
  testing::ServerProcess agent((dir / "agent").string(), agent_args, {}, false, QSEARCH_AGENT_BIN);
  ASSERT_EQ(agent.first_line().rfind("qsearch-agent ", 0), 0u) << agent.first_line();
  client::ClientOptions o;
  o.server = server.address();
  o.token = "s3cret-team-a";
  ASSERT_OK_AND_ASSIGN(auto c, client::QsearchClient::Connect(o));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(::qsearch::testing::TinySpec(), "manifest-scale"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, c->Watch(job.name(), 0, nullptr, nullptr));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  agent.Stop(SIGTERM);
  server.Stop(SIGTERM);
}

}  // namespace
}  // namespace qsearch
