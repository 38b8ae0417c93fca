"""A real qsearch-server and what a user's Python gRPC script does with it: stubs
generated from proto/ with protoc (python3-grpcio), uploads in chunks, watching a job,
downloads checked against their sha256.

Environment: QSEARCH_SERVER, QSEARCH_WORKER, QSEARCH_PROTO_DIR.
"""
import hashlib
import os
import shutil
import subprocess
import sys

SERVER = os.environ.get("QSEARCH_SERVER", "qsearch-server")
WORKER = os.environ.get("QSEARCH_WORKER", "qsearch-worker")
PROTO_DIR = os.environ.get("QSEARCH_PROTO_DIR", "proto")


def generate_stubs(out):
    """What a user does with the .proto files: protoc with the gRPC Python plugin."""
    os.makedirs(out, exist_ok=True)
    plugin = "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"
    protos = [f"qsearch/v1/{p}.proto" for p in ("quantization", "job", "service")]
    subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", plugin, *protos],
                   check=True)
    # grpc.health.v1's stubs as module `health_check` (a `grpc` package of our own would
    # hide grpcio's); the service keeps its name.
    health = os.path.join(out, "health_proto")
    os.makedirs(health, exist_ok=True)
    shutil.copy(os.path.join(PROTO_DIR, "grpc/health/v1/health.proto"), os.path.join(health, "health_check.proto"))
    subprocess.run(["protoc", f"-I{health}", f"--python_out={out}", f"--grpc_python_out={out}", plugin,
                    "health_check.proto"], check=True)
    sys.path.insert(0, out)


class Server:
    """qsearch-server on 127.0.0.1 with an ephemeral port, stopped by stop()."""

    def __init__(self, data_dir, *extra):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [SERVER, "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--worker", WORKER, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()  # "qsearch-server listening on HOST:PORT ..."
        if "listening on " not in line:
            raise RuntimeError(f"the server did not start: {line}{self.proc.stdout.read()}")
        self.address = line.split("listening on ")[1].split()[0]

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.stdout.close()


class Client:
    """The stubs, a channel and a token: what one tenant's script holds."""

    def __init__(self, address, token=None):
        import grpc
        import health_check_pb2 as health_pb2
        import health_check_pb2_grpc as health_pb2_grpc
        from qsearch.v1 import job_pb2, service_pb2, service_pb2_grpc
        self.grpc, self.pb, self.job_pb, self.health_pb = grpc, service_pb2, job_pb2, health_pb2
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = service_pb2_grpc.SearchServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self):
        self.channel.close()

    def call(self, rpc, request, timeout=60):
        return rpc(request, metadata=self.metadata, timeout=timeout)

    def code_of(self, rpc, request, timeout=60):
        """The call's status code name ("OK" when it succeeds)."""
        try:
            self.call(rpc, request, timeout)
            return "OK"
        except self.grpc.RpcError as e:
            return e.code().name

    def upload(self, rpc, path, chunk=1 << 20):
        """Uploads a file in chunks (or finds it uploaded before); its reference."""
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        upload_id = f"{os.path.basename(path)}-{digest[:12]}"
        try:
            held = self.call(self.stub.GetUpload, self.pb.GetUploadRequest(upload_id=upload_id), 30)
            if held.complete:
                return held.reference
        except self.grpc.RpcError as e:
            if e.code() != self.grpc.StatusCode.NOT_FOUND:
                raise

        def chunks():
            for offset in range(0, len(data), chunk):
                first = offset == 0
                yield self.pb.UploadChunk(upload_id=upload_id, offset=offset, data=data[offset:offset + chunk],
                                          total_size=len(data) if first else 0, sha256=digest if first else "")

        upload = rpc(chunks(), metadata=self.metadata, timeout=120)
        assert upload.complete and upload.reference == f"sha256:{digest}", upload
        return upload.reference

    def create(self, spec, request_id=""):
        return self.call(self.stub.CreateSearchJob, self.pb.CreateSearchJobRequest(request_id=request_id, spec=spec))

    def get(self, name):
        return self.call(self.stub.GetSearchJob, self.pb.GetSearchJobRequest(name=name), 30)

    def watch(self, name, timeout=600):
        """The snapshot and every event until the server ends the stream."""
        events, snapshot = [], None
        for r in self.stub.WatchSearchJob(self.pb.WatchSearchJobRequest(name=name), metadata=self.metadata,
                                          timeout=timeout):
            if r.HasField("snapshot"):
                snapshot = r.snapshot
            else:
                events.append(r.event)
        return snapshot, events

    def download(self, name, kind, path):
        digest, total, sha = hashlib.sha256(), None, None
        with open(path, "wb") as f:
            for c in self.stub.DownloadArtifact(self.pb.DownloadArtifactRequest(name=name, kind=kind),
                                                metadata=self.metadata, timeout=120):
                f.write(c.data)
                digest.update(c.data)
                total, sha = c.total_size, c.sha256
        assert os.path.getsize(path) == total and digest.hexdigest() == sha, (path, total, sha)
        return path
