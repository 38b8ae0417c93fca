// SearchServiceImpl: the gRPC face of SearchCore (callback API). Unary calls finish in
// their reaction (the core's work there is a few SQLite statements); Watch and Download
// are write reactors fed from the store, woken by the EventHub; uploads are read
// reactors appending chunk by chunk. Errors cross here exactly once: ToGrpcStatus.
// Tenancy: with a token table, "authorization: Bearer <token>" picks the tenant and
// anything else is UNAUTHENTICATED; without one every caller is tenant "default".
#ifndef QSEARCH_SERVER_SERVICE_H_
#define QSEARCH_SERVER_SERVICE_H_

#include <map>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "qsearch/v1/service.grpc.pb.h"
#include "server/search_core.h"

namespace qsearch::server {

grpc::Status ToGrpcStatus(const absl::Status& s);

// Token table file: one "token tenant" pair per line; '#' starts a comment.
absl::StatusOr<std::map<std::string, std::string>> ReadTokenFile(const std::string& path);

class SearchServiceImpl final : public v1::SearchService::CallbackService {
 public:
  // An empty token table disables authentication.
  SearchServiceImpl(SearchCore* core, std::map<std::string, std::string> tokens)
      : core_(core), tokens_(std::move(tokens)) {}

  grpc::ServerUnaryReactor* CreateSearchJob(grpc::CallbackServerContext* ctx, const v1::CreateSearchJobRequest* req,
                                            v1::SearchJob* resp) override;
  grpc::ServerUnaryReactor* GetSearchJob(grpc::CallbackServerContext* ctx, const v1::GetSearchJobRequest* req,
                                         v1::SearchJob* resp) override;
  grpc::ServerUnaryReactor* ListSearchJobs(grpc::CallbackServerContext* ctx, const v1::ListSearchJobsRequest* req,
                                           v1::ListSearchJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelSearchJob(grpc::CallbackServerContext* ctx, const v1::CancelSearchJobRequest* req,
                                            v1::SearchJob* resp) override;
  grpc::ServerUnaryReactor* DeleteSearchJob(grpc::CallbackServerContext* ctx, const v1::DeleteSearchJobRequest* req,
                                            v1::DeleteSearchJobResponse* resp) override;
  grpc::ServerUnaryReactor* GetPolicy(grpc::CallbackServerContext* ctx, const v1::GetPolicyRequest* req,
                                      v1::Policy* resp) override;
  grpc::ServerWriteReactor<v1::WatchSearchJobResponse>* WatchSearchJob(
      grpc::CallbackServerContext* ctx, const v1::WatchSearchJobRequest* req) override;
  grpc::ServerReadReactor<v1::UploadChunk>* UploadModel(grpc::CallbackServerContext* ctx, v1::Upload* resp) override;
  grpc::ServerReadReactor<v1::UploadChunk>* UploadDataset(grpc::CallbackServerContext* ctx, v1::Upload* resp) override;
  grpc::ServerUnaryReactor* GetUpload(grpc::CallbackServerContext* ctx, const v1::GetUploadRequest* req,
                                      v1::Upload* resp) override;
  grpc::ServerUnaryReactor* DeleteUpload(grpc::CallbackServerContext* ctx, const v1::DeleteUploadRequest* req,
                                         v1::DeleteUploadResponse* resp) override;
  grpc::ServerWriteReactor<v1::ArtifactChunk>* DownloadArtifact(grpc::CallbackServerContext* ctx,
                                                                const v1::DownloadArtifactRequest* req) override;

 private:
  absl::StatusOr<std::string> Tenant(grpc::CallbackServerContext* ctx) const;
  grpc::ServerReadReactor<v1::UploadChunk>* Upload(grpc::CallbackServerContext* ctx, v1::Upload* resp,
                                                   const std::string& kind);

  SearchCore* core_;
  std::map<std::string, std::string> tokens_;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_SERVICE_H_
