// qsearch: the command-line client of qsearch-server.
//   qsearch [--server H:P] [--token T] [--tls-ca PEM] [--json] COMMAND ...
//   submit   --spec FILE | --model M [--data FILE|DIR] [--avg-bits B] ...   (prints the job name)
//   status JOB | list [--state S] | watch JOB | wait JOB | cancel JOB | delete JOB
//   policy JOB | download JOB --kind K [-o FILE] | report JOB [-o FILE]
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include <boost/program_options.hpp>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/pack_folder.h"
#include "client/report.h"
#include "common/artifacts.h"
#include "common/sha256.h"

namespace {

namespace po = boost::program_options;
using qsearch::client::QsearchClient;
using qsearch::v1::JobState;

bool g_json = false;

std::string ToJson(const google::protobuf::Message& m, bool pretty = true) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = pretty;
  o.preserve_proto_field_names = false;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "qsearch: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(), std::string(s.message()).c_str());
  return 1;
}

std::string RandomId() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x", rd(), rd());
}

void PrintJob(const qsearch::v1::SearchJob& j) {
  if (g_json) {
    std::printf("%s\n", ToJson(j).c_str());
    return;
  }
  std::printf("%s  %s  model %s", j.name().c_str(), JobState_Name(j.state()).c_str(), j.spec().model().c_str());
  if (j.has_last_event()) {
    std::printf("  %s epoch %d  %s", qsearch::v1::Phase_Name(j.last_event().phase()).c_str(), j.last_event().epoch(),
                j.last_event().message().c_str());
  }
  if (j.state() == qsearch::v1::SUCCEEDED) {
    const auto& r = j.result();
    std::printf("\n  quantized %.2f%% at %.3f average weight bits", r.quantized_accuracy(),
                r.policy().cost().average_weight_bits());
    std::printf(" (float after pre-training %.2f%%)", r.float_accuracy());
    if (r.devices_size() > 0) std::printf(" on %s", absl::StrJoin(r.devices(), ",").c_str());
    // Each baseline on the same schedule, with the width it ended at.
    for (const auto& b : r.baselines()) {
      if (b.name() == "float") {
        std::printf("\n  baseline float: %.2f%%", b.accuracy());
      } else {
        std::printf("\n  baseline %s: %.2f%% at %.3f average weight bits", b.name().c_str(), b.accuracy(),
                    b.policy().cost().average_weight_bits());
      }
    }
    if (r.baselines_size() == 0) {  // a result stored before baselines were a list
      if (r.float_baseline_accuracy() > 0) std::printf(", float %.2f%%", r.float_baseline_accuracy());
      if (r.uniform_accuracy() > 0) std::printf(", uniform %g-bit %.2f%%", r.uniform_weight_bits(), r.uniform_accuracy());
    }
  }
  if (!j.error_message().empty()) {
    std::printf("  error (%s): %s", absl::StatusCodeToString(static_cast<absl::StatusCode>(j.error_code())).c_str(),
                j.error_message().c_str());
  }
  std::printf("\n");
}

void PrintPolicy(const qsearch::v1::Policy& p) {
  if (g_json) {
    std::printf("%s\n", ToJson(p).c_str());
    return;
  }
  std::printf("%-24s %-7s %9s  %-10s %6s  %-12s %6s  %11s\n", "layer", "kind", "params", "w scheme", "w bits",
              "a scheme", "a bits", "sensitivity");
  for (const auto& l : p.layers()) {
    if (l.excluded()) {
      std::printf("%-24s %-7s %9lld  %-10s %6s  %-12s %6s\n", l.name().c_str(), l.kind().c_str(),
                  static_cast<long long>(l.params()), "float", "32", "float", "32");
      continue;
    }
    std::printf("%-24s %-7s %9lld  %-10s %6.0f  %-12s %6.0f  %11s\n", l.name().c_str(), l.kind().c_str(),
                static_cast<long long>(l.params()), l.weight().scheme().c_str(), l.weight_bits(),
                l.activation().scheme().c_str(), l.activation_bits(),
                l.sensitivity() > 0 ? absl::StrFormat("%.3g", l.sensitivity()).c_str() : "-");
  }
  std::printf("size %.0f bits (%.1f KiB), average weight bits %.3f, BitOPs %.4g per sample\n", p.cost().model_size_bits(),
              p.cost().model_size_bits() / 8192.0, p.cost().average_weight_bits(), p.cost().bitops());
  if (p.budget().average_weight_bits() > 0) {
    std::printf("budget: average weight bits <= %g (slack %.3f)\n", p.budget().average_weight_bits(),
                p.slack().average_weight_bits());
  }
  std::printf("test accuracy: quantized %.2f%%, float after pre-training %.2f%%\n", p.quantized_accuracy(),
              p.float_accuracy());
}

// Live progress: a one-line bar on a terminal, one line per event otherwise.
void ShowEvent(const qsearch::v1::JobEvent& e, bool tty) {
  if (g_json) {
    std::printf("%s\n", ToJson(e, false).c_str());
  } else if (tty) {
    std::printf("\r\033[K[%s] epoch %d  loss %.4f  acc %.2f%%  ETA %.0fs  %s", qsearch::v1::Phase_Name(e.phase()).c_str(),
                e.epoch(), e.loss(), e.accuracy(), e.eta_seconds(), e.message().c_str());
  } else {
    std::printf("#%lld %s epoch %d loss %.4f acc %.2f%% eta %.0fs %s\n", static_cast<long long>(e.sequence()),
                qsearch::v1::Phase_Name(e.phase()).c_str(), e.epoch(), e.loss(), e.accuracy(), e.eta_seconds(),
                e.message().c_str());
  }
  std::fflush(stdout);
}

int ExitCodeFor(JobState s) {
  switch (s) {
    case qsearch::v1::SUCCEEDED: return 0;
    case qsearch::v1::CANCELLED: return 3;
    default: return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  qsearch::client::ClientOptions copts;
  std::string command;
  std::vector<std::string> rest;
  po::options_description global("qsearch: client of the qsearch mixed-precision search service\n\n"
                                 "usage: qsearch [global options] COMMAND [args]\n"
                                 "commands: submit, status, list, watch, wait, cancel, delete, policy, download, report, health\n"
                                 "(qsearch COMMAND --help for a command's options)\n\nglobal options");
  global.add_options()("help,h", "show this help")(
      "server", po::value(&copts.server)->default_value("127.0.0.1:50051"),
      "server address host:port, or several replicas for failover: ipv4:host1:port1,host2:port2 (a gRPC target)")(
      "token", po::value(&copts.token), "bearer token (servers started with --auth-tokens)")(
      "tls-ca", po::value(&copts.tls_ca), "PEM CA certificate: connect with TLS")(
      "json", po::bool_switch(&g_json), "print JSON instead of tables");
  po::options_description hidden;
  hidden.add_options()("command", po::value(&command))("args", po::value(&rest));
  po::options_description all;
  all.add(global).add(hidden);
  po::positional_options_description pos;
  pos.add("command", 1).add("args", -1);
  po::variables_map vm;
  try {
    auto parsed = po::command_line_parser(argc, argv).options(all).positional(pos).allow_unregistered().run();
    po::store(parsed, vm);
    po::notify(vm);
    rest = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!rest.empty() && rest.front() == command) rest.erase(rest.begin());
  } catch (const po::error& e) {
    std::cerr << "qsearch: " << e.what() << "\n";
    return 2;
  }
  if (command.empty()) {
    std::cout << global << "\n";
    return vm.count("help") ? 0 : 2;
  }

  // Per-command options.
  std::string model_file, image_size, mean, stdev;
  int channels = 0;
  bool dataset_given = false;
  std::string spec_file, model = "lenet5", dataset_kind = "fashion_mnist", data, request_id, state, kind = "policy",
              output, search_mode, baselines, qpl_init;
  int arch_every = 0;
  double min_bits = 0;
  double avg_bits = 0, size_bits = 0, bitops = 0, act_bits = 0;
  int pretrain = 0, qss = 0, qpl = 0, finetune = 0, page_size = 50;
  std::set<std::string> flags_given;
  std::int64_t train_size = 0, val_size = 0, test_size = 0;
  bool watch = false, baseline = false;
  po::options_description cmd(absl::StrCat("qsearch ", command, " options"));
  cmd.add_options()("help,h", "show this help");
  if (command == "submit") {
    cmd.add_options()("spec", po::value(&spec_file), "job spec as JSON (qsearch.v1.JobSpec); flags below override")(
        "model", po::value(&model), "zoo model: mlp, lenet5, resnet20, vgg_small, mobilenetv2_tiny")(
        "dataset", po::value(&dataset_kind), "fashion_mnist, mnist, cifar10, archive or image_folder")(
        "data", po::value(&data),
        "local data to upload and search on: a tensor archive (torch.save of {'images', 'labels'}), or an image "
        "folder (class sub-folders of PNG/JPEG files, optionally under train/ and test/; packed as a tar), or a "
        ".zip / .tar / .tar.gz of one")(
        "image-size", po::value(&image_size), "image folders: resize to HxW (or N for NxN); default the first image's")(
        "channels", po::value(&channels), "image folders: 1 (grey) or 3 (RGB); default the first image's")(
        "mean", po::value(&mean), "input normalisation, per channel: e.g. 0.485,0.456,0.406 (default: the data's own)")(
        "std", po::value(&stdev), "input normalisation, per channel: e.g. 0.229,0.224,0.225")(
        "model-file", po::value(&model_file), "local TorchScript model (torch.jit.save) to upload and search")(
        "avg-bits", po::value(&avg_bits), "budget: average weight bits (default 4 when no budget flag is given)")(
        "size-bits", po::value(&size_bits), "budget: model size in bits")(
        "bitops", po::value(&bitops), "budget: BitOPs per sample")(
        "act-bits", po::value(&act_bits), "activation bits (default 8)")(
        "epochs", po::value<std::string>(),
        "pretrain,qss,qpl,finetune epochs, e.g. 1,1,0,2 (default: 1,1,0,1; no pre-training for --model-file; "
        "qpl > 0 learns the widths with QPL instead of allocating them exactly)")(
        "train-size", po::value(&train_size), "training images (0: all)")(
        "val-size", po::value(&val_size), "validation images carved from training")(
        "test-size", po::value(&test_size), "test images (0: all)")(
        "baseline", po::bool_switch(&baseline), "also train the uniform and float baselines")(
        "baselines", po::value(&baselines),
        "baselines to train on the same schedule, comma-separated: float, uniform, uniform_first_last_8, sensitivity")(
        "search-mode", po::value(&search_mode),
        "dnas (default: QSS, then exact allocation of widths; QPL when its epochs are > 0) or sensitivity (exact "
        "allocation from Fisher sensitivity, no search epochs)")(
        "arch-every", po::value(&arch_every), "bilevel QSS: a logits step every N weight steps (default 1)")(
        "min-bits", po::value(&min_bits),
        "lowest weight width the allocation or QPL may give a layer, 1..8 (default 1 under an average budget "
        "below 3 bits with fixed activation widths, else 2; schemes without a 1-bit form stop at 2)")(
        "qpl-init", po::value(&qpl_init),
        "where QPL's widths start: candidate (default with QPL epochs) or sensitivity (default without)")(
        "request-id", po::value(&request_id), "idempotency key (default: random)")(
        "watch", po::bool_switch(&watch), "watch the job after submitting; exit code as `wait`");
  } else if (command == "list") {
    cmd.add_options()("state", po::value(&state), "QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED")(
        "page-size", po::value(&page_size), "jobs per page");
  } else if (command == "download") {
    cmd.add_options()("kind", po::value(&kind),
        absl::StrCat(qsearch::ArtifactKindList(), " (default policy)").c_str())(
        "output,o", po::value(&output), "file to write (default: <job id>-<kind>.<ext>); a partial file is resumed");
  } else if (command == "report") {
    cmd.add_options()("output,o", po::value(&output), "HTML file to write (default: <job id>-report.html)");
  }
  if (vm.count("help")) {  // `qsearch submit --help`: the global parser took the flag
    std::cout << cmd << "\n";
    return 0;
  }
  std::vector<std::string> positional;
  try {
    po::options_description cmd_all;
    cmd_all.add(cmd).add_options()("positional", po::value(&positional));
    po::positional_options_description p;
    p.add("positional", -1);
    std::vector<const char*> args = {argv[0]};
    for (auto& r : rest) args.push_back(r.c_str());
    po::variables_map cvm;
    po::store(po::command_line_parser(static_cast<int>(args.size()), args.data()).options(cmd_all).positional(p).run(), cvm);
    po::notify(cvm);
    if (cvm.count("help")) {
      std::cout << cmd << "\n";
      return 0;
    }
    dataset_given = cvm.count("dataset") > 0;
    for (const auto& [flag, value] : cvm) {
      if (!value.defaulted()) flags_given.insert(flag);
    }
    if (cvm.count("epochs")) {
      std::vector<std::string> e = absl::StrSplit(cvm["epochs"].as<std::string>(), ',');
      if (e.size() != 4) throw po::error("--epochs takes four numbers: pretrain,qss,qpl,finetune");
      pretrain = std::stoi(e[0]);
      qss = std::stoi(e[1]);
      qpl = std::stoi(e[2]);
      finetune = std::stoi(e[3]);
    }
  } catch (const std::exception& e) {
    std::cerr << "qsearch " << command << ": " << e.what() << "\n" << cmd << "\n";
    return 2;
  }
  auto client_or = QsearchClient::Connect(copts);
  if (!client_or.ok()) return Fail(client_or.status());
  QsearchClient& client = **client_or;
  const bool tty = isatty(STDOUT_FILENO) && !g_json;
  auto need_job = [&]() -> std::string { return positional.empty() ? "" : positional[0]; };

  if (command == "submit") {
    qsearch::v1::JobSpec spec;
    if (!spec_file.empty()) {
      std::ifstream in(spec_file);
      std::stringstream text;
      text << in.rdbuf();
      if (!in || !google::protobuf::util::JsonStringToMessage(text.str(), &spec).ok()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(spec_file, " is not a readable JobSpec JSON file")));
      }
    }
    // Flags override the spec file; what the user did not set is not sent, so the server's
    // documented defaults apply (qsearch status --json shows them).
    const auto given = [&](const char* flag) { return flags_given.count(flag) > 0; };
    if (given("model")) spec.set_model(model);
    if (given("dataset")) spec.mutable_dataset()->set_kind(dataset_kind);
    if (given("train-size")) spec.mutable_dataset()->set_train_size(train_size);
    if (given("val-size")) spec.mutable_dataset()->set_val_size(val_size);
    if (given("test-size")) spec.mutable_dataset()->set_test_size(test_size);
    if (given("epochs")) {
      spec.set_pretrain_epochs(pretrain);
      spec.mutable_qss()->set_epochs(qss);
      spec.mutable_qpl()->set_epochs(qpl);
      spec.set_finetune_epochs(finetune);
    }
    if (given("act-bits")) spec.mutable_qpl()->set_activation_bits(act_bits);
    if (baseline) {
      spec.set_uniform_baseline(true);
      spec.set_float_baseline(true);
    }
    if (given("baselines")) {
      spec.clear_baselines();
      for (absl::string_view b : absl::StrSplit(baselines, ',', absl::SkipEmpty())) {
        spec.add_baselines(std::string(absl::StripAsciiWhitespace(b)));
      }
    }
    if (given("search-mode")) spec.set_search_mode(search_mode);
    if (given("arch-every")) spec.mutable_qss()->set_arch_every(arch_every);
    if (given("min-bits")) spec.mutable_qpl()->set_min_bits(min_bits);
    if (given("qpl-init")) spec.mutable_qpl()->set_init(qpl_init);
    if (given("avg-bits")) spec.mutable_budget()->set_average_weight_bits(avg_bits);
    if (given("size-bits")) spec.mutable_budget()->set_model_size_bits(size_bits);
    if (given("bitops")) spec.mutable_budget()->set_bitops(bitops);
    auto* ds = spec.mutable_dataset();
    if (!image_size.empty()) {
      std::vector<std::string> hw = absl::StrSplit(image_size, 'x');
      int h = 0, w = 0;
      if (hw.size() > 2 || !absl::SimpleAtoi(hw[0], &h) || !absl::SimpleAtoi(hw.back(), &w)) {
        return Fail(absl::InvalidArgumentError("--image-size takes HxW or N, e.g. 32x32"));
      }
      ds->set_height(h);
      ds->set_width(w);
    }
    if (channels != 0) ds->set_channels(channels);
    for (auto [flag, text, field] : {std::tuple{"--mean", &mean, ds->mutable_mean()}, std::tuple{"--std", &stdev, ds->mutable_std()}}) {
      if (text->empty()) continue;
      field->Clear();
      for (absl::string_view v : absl::StrSplit(*text, ',')) {
        double d = 0;
        if (!absl::SimpleAtod(v, &d)) return Fail(absl::InvalidArgumentError(absl::StrCat(flag, " takes numbers separated by commas")));
        field->Add(d);
      }
    }
    if (!data.empty()) {
      // A folder travels as a tar packed here; a zip or tar of one as it is.
      std::string upload = data, kind = dataset_given ? dataset_kind : "archive";
      std::error_code ec;
      const bool folder = std::filesystem::is_directory(data, ec);
      if (folder) {
        upload = (std::filesystem::temp_directory_path() / absl::StrCat("qsearch-folder-", getpid(), ".tar")).string();
        auto packed = qsearch::client::PackImageFolder(data, upload);
        if (!packed.ok()) return Fail(packed.status());
        std::fprintf(stderr, "packed %d images from %s\n", *packed, data.c_str());
      }
      if (folder || (!dataset_given && (absl::EndsWith(data, ".zip") || absl::EndsWith(data, ".tar") ||
                                        absl::EndsWith(data, ".tar.gz") || absl::EndsWith(data, ".tgz")))) {
        kind = "image_folder";
      }
      auto up = client.UploadFile(upload, "dataset",
                                  absl::StrCat("data-", qsearch::Sha256File(upload).value_or("x").substr(0, 24)));
      if (folder) std::filesystem::remove(upload, ec);
      if (!up.ok()) return Fail(up.status());
      ds->set_kind(kind);
      ds->set_path(up->reference());
    }
    if (!model_file.empty()) {
      auto up = client.UploadFile(model_file, "model",
                                  absl::StrCat("model-", qsearch::Sha256File(model_file).value_or("x").substr(0, 24)));
      if (!up.ok()) return Fail(up.status());
      spec.set_model_path(up->reference());
    }
    auto job = client.Create(spec, request_id.empty() ? RandomId() : request_id);
    if (!job.ok()) return Fail(job.status());
    if (!watch) {
      if (g_json) PrintJob(*job);
      else std::printf("%s\n", job->name().c_str());
      return 0;
    }
    std::printf("submitted %s\n", job->name().c_str());
    auto done = client.Watch(job->name(), 0, nullptr, [&](const qsearch::v1::JobEvent& e) { ShowEvent(e, tty); });
    if (tty) std::printf("\n");
    if (!done.ok()) return Fail(done.status());
    PrintJob(*done);
    return ExitCodeFor(done->state());
  }
  if (command == "health") {
    // For probes (Docker HEALTHCHECK, scripts): exit 0 when the server is SERVING.
    auto h = client.Healthy();
    if (!h.ok()) return Fail(h.status());
    std::printf("%s\n", *h ? "SERVING" : "NOT_SERVING");
    return *h ? 0 : 1;
  }
  if (command == "list") {
    qsearch::v1::JobState filter = qsearch::v1::JOB_STATE_UNSPECIFIED;
    if (!state.empty() && !qsearch::v1::JobState_Parse(state, &filter)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("unknown state '", state, "'")));
    }
    std::string token;
    do {
      auto page = client.List(filter, page_size, token);
      if (!page.ok()) return Fail(page.status());
      for (const auto& j : page->jobs()) PrintJob(j);
      token = page->next_page_token();
    } while (!token.empty());
    return 0;
  }
  const std::string name = need_job();
  if (name.empty()) {
    std::cerr << "qsearch " << command << ": which job? (a name like jobs/0123abcd)\n";
    return 2;
  }
  if (command == "status") {
    auto j = client.Get(name);
    if (!j.ok()) return Fail(j.status());
    PrintJob(*j);
    return 0;
  }
  if (command == "watch" || command == "wait") {
    const bool show = command == "watch";
    auto done = client.Watch(name, 0, nullptr, [&](const qsearch::v1::JobEvent& e) {
      if (show) ShowEvent(e, tty);
    });
    if (show && tty) std::printf("\n");
    if (!done.ok()) return Fail(done.status());
    PrintJob(*done);
    return ExitCodeFor(done->state());
  }
  if (command == "cancel") {
    auto j = client.Cancel(name);
    if (!j.ok()) return Fail(j.status());
    PrintJob(*j);
    return 0;
  }
  if (command == "delete") {
    auto s = client.Delete(name);
    if (!s.ok()) return Fail(s);
    std::printf("deleted %s\n", name.c_str());
    return 0;
  }
  if (command == "policy") {
    auto p = client.GetPolicy(name);
    if (!p.ok()) return Fail(p.status());
    PrintPolicy(*p);
    return 0;
  }
  if (command == "download") {
    const std::string id = name.substr(name.rfind('/') + 1);
    const qsearch::ArtifactKind* known = qsearch::FindArtifactKind(kind);
    const std::string file = known != nullptr ? known->file : ".bin";
    const std::string ext = file.substr(file.rfind('.'));
    const std::string path = output.empty() ? absl::StrCat(id, "-", kind, ext) : output;
    auto sha = client.Download(name, kind, path);
    if (!sha.ok()) return Fail(sha.status());
    std::printf("%s  sha256 %s\n", path.c_str(), sha->c_str());
    return 0;
  }
  if (command == "report") {
    auto h = client.GetHistory(name);
    if (!h.ok()) return Fail(h.status());
    const std::string path = output.empty() ? absl::StrCat(name.substr(name.rfind('/') + 1), "-report.html") : output;
    const std::string html = qsearch::client::RenderReport(h->job, h->events);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << html;
    out.close();
    if (!out) return Fail(absl::PermissionDeniedError(absl::StrCat("cannot write ", path)));
    const auto* policy = qsearch::client::ReportedPolicy(h->job, h->events);
    std::printf("%s  %s, %zu events, %d layers\n", path.c_str(), JobState_Name(h->job.state()).c_str(), h->events.size(),
                policy ? policy->layers_size() : 0);
    return 0;
  }
  std::cerr << "qsearch: unknown command '" << command << "'\n" << global << "\n";
  return 2;
}
