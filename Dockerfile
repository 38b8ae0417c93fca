# qsearch-server image: two stages on Debian bookworm, Debian packages only, each stage
# installed by deploy/install-deps.sh, the same script CI runs.
#   build    the toolchain and -dev packages; compiles the server, the agent (a worker node
#            for a shared PostgreSQL store: deploy/k8s-scale), the worker and the CLI
#   runtime  the shared libraries they load, OpenBLAS and Fashion-MNIST; no compiler
#
#   docker build -t qsearch .
#   docker run -d -p 50051:50051 -v qsearch-data:/var/lib/qsearch qsearch
#   qsearch --server 127.0.0.1:50051 submit --model lenet5 --avg-bits 3 --watch
#
# The server keeps its SQLite store, uploads and job outputs in the /var/lib/qsearch
# volume. `docker stop` sends SIGTERM: running jobs keep their last epoch checkpoint and
# resume when a container starts on the same volume.
FROM debian:bookworm AS build
COPY deploy/install-deps.sh /src/deploy/install-deps.sh
RUN bash /src/deploy/install-deps.sh build
COPY . /src
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DQSEARCH_BUILD_TESTS=OFF -DQSEARCH_BUILD_BENCHMARKS=OFF \
 && cmake --build /build --target qsearch-server qsearch-agent qsearch-worker qsearch \
 && install -D -m 0755 -t /opt/qsearch/bin \
      /build/server/qsearch-server /build/server/qsearch-agent /build/search/qsearch-worker /build/client/qsearch

FROM debian:bookworm AS runtime
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh runtime \
 && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/qsearch --shell /usr/sbin/nologin qsearch \
 && install -d -o qsearch -g qsearch -m 0750 /var/lib/qsearch
# The server starts qsearch-worker from its own directory.
COPY --from=build /opt/qsearch/bin/ /usr/local/bin/
USER 10001:10001
VOLUME ["/var/lib/qsearch"]
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["qsearch", "--server", "127.0.0.1:50051", "health"]
# Tenants authenticate: the tokens file ("token tenant" lines) comes from a secret mounted
# at /run/secrets/qsearch-tokens (docker-compose secrets, a Kubernetes Secret, or -v).
ENTRYPOINT ["qsearch-server", "--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/qsearch", \
            "--auth-tokens", "/run/secrets/qsearch-tokens"]
CMD ["--workers", "1"]
