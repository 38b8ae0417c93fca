// QsearchClient: the SearchService from C++ with the conveniences every caller needs:
// bearer tokens, retrying Create with a stable request_id, resumable Watch (reconnects
// after the last sequence it saw), resumable uploads and downloads with sha256 checks.
// gRPC and protobuf only; never LibTorch.
#ifndef QSEARCH_CLIENT_CLIENT_H_
#define QSEARCH_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "qsearch/v1/service.grpc.pb.h"

namespace qsearch::client {

struct ClientOptions {
  std::string server = "127.0.0.1:50051";
  std::string token;     // sent as "authorization: Bearer <token>"
  std::string tls_ca;    // PEM file; set: TLS
  int watch_reconnects = 20;  // Watch retries after UNAVAILABLE before giving up
};

absl::Status FromGrpc(const grpc::Status& s);

class QsearchClient {
 public:
  static absl::StatusOr<std::unique_ptr<QsearchClient>> Connect(const ClientOptions& options);

  // The server's grpc.health.v1 status for `service` ("" = the whole server): true when
  // SERVING.
  absl::StatusOr<bool> Healthy(const std::string& service = "");
  absl::StatusOr<v1::SearchJob> Create(const v1::JobSpec& spec, const std::string& request_id);
  absl::StatusOr<v1::SearchJob> Get(const std::string& name);
  absl::StatusOr<v1::ListSearchJobsResponse> List(v1::JobState state, int page_size, const std::string& page_token);
  absl::StatusOr<v1::SearchJob> Cancel(const std::string& name);
  absl::Status Delete(const std::string& name);
  absl::StatusOr<v1::Policy> GetPolicy(const std::string& name);
  // Streams the snapshot and every event after `after_sequence` to the callbacks until the
  // job is terminal; reconnects (from the last sequence seen) when the server goes away.
  // Returns the final job.
  absl::StatusOr<v1::SearchJob> Watch(const std::string& name, std::int64_t after_sequence,
                                      const std::function<void(const v1::SearchJob&)>& on_snapshot,
                                      const std::function<void(const v1::JobEvent&)>& on_event);
  // The job as it is now and every event stored so far, without waiting for more: for
  // reports and dashboards of running jobs as well as finished ones.
  struct History {
    v1::SearchJob job;
    std::vector<v1::JobEvent> events;
  };
  absl::StatusOr<History> GetHistory(const std::string& name);
  // Uploads a local file (kind "model" or "dataset"), resuming an upload with the same
  // id. Returns the finished upload, whose reference goes into a JobSpec.
  absl::StatusOr<v1::Upload> UploadFile(const std::string& path, const std::string& kind,
                                        const std::string& upload_id);
  // Sends the given bytes as one stream (tests use it to cut streams short).
  absl::StatusOr<v1::Upload> UploadChunks(const std::string& kind, const std::vector<v1::UploadChunk>& chunks);
  // Downloads an artifact to `path`, continuing a partial file; checks the sha256.
  // Returns the artifact's sha256.
  absl::StatusOr<std::string> Download(const std::string& name, const std::string& kind, const std::string& path);

 private:
  QsearchClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options);
  void Prepare(grpc::ClientContext* ctx) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SearchService::Stub> stub_;
  ClientOptions options_;
};

}  // namespace qsearch::client

#endif  // QSEARCH_CLIENT_CLIENT_H_
