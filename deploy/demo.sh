#!/usr/bin/env bash
# The main job, end to end: install the Debian dependencies, build the server, worker and
# client, start qsearch-server (embedded SQLite store), submit a mixed-precision search of
# lenet5 on the real Fashion-MNIST with the qsearch client, watch it live, print the policy
# and float vs quantized accuracy, download what it found and an HTML report, stop the server.
#
# Usage: bash deploy/demo.sh              outputs in demo-output/ (DEMO_DIR overrides)
#        PRESET=quick bash deploy/demo.sh  a smaller run (about 20 s of search)
# The default search (lenet5's run in docs/benchmarks.md, with the uniform and float
# baselines) takes about a minute on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build_dir" -j "$(nproc)" --target qsearch-server qsearch-worker qsearch

out="$(realpath -m "${DEMO_DIR:-demo-output}")"
rm -rf "$out"
mkdir -p "$out"
qsearch="$build_dir/client/qsearch"

"$build_dir/server/qsearch-server" --listen 127.0.0.1:0 --data-dir "$out/server-data" --workers 1 \
  > "$out/server.log" 2>&1 &
server_pid=$!
stop_server() {
  kill -TERM "$server_pid" 2> /dev/null || true
  wait "$server_pid" 2> /dev/null || true
}
trap stop_server EXIT

address=""
for _ in $(seq 1 300); do
  address="$(grep -o 'listening on [0-9.]*:[0-9]*' "$out/server.log" | head -1 | cut -d' ' -f3 || true)"
  [ -n "$address" ] && break
  kill -0 "$server_pid" 2> /dev/null || { cat "$out/server.log"; exit 1; }
  sleep 0.1
done
[ -n "$address" ] || { echo "the server did not start; see $out/server.log"; exit 1; }
echo "qsearch-server is up on $address (store: $out/server-data/jobs.db)"

if [ "${PRESET:-standard}" = "quick" ]; then
  sizes=(--train-size 10000 --val-size 1000 --test-size 10000 --epochs 2,1,0,3)
else
  sizes=(--train-size 20000 --val-size 2000 --test-size 10000 --epochs 3,2,0,5)
fi
job="$("$qsearch" --server "$address" submit --model lenet5 --dataset fashion_mnist "${sizes[@]}" \
  --avg-bits 3 --act-bits 4 --baseline)"
echo "submitted $job: lenet5 on Fashion-MNIST, budget 3 average weight bits, 4-bit activations"

status=0
"$qsearch" --server "$address" watch "$job" || status=$?
if [ "$status" -ne 0 ]; then
  echo "the job did not succeed (exit $status); server log: $out/server.log"
  exit "$status"
fi

echo
"$qsearch" --server "$address" policy "$job"
for kind in policy config_list checkpoint result; do
  case "$kind" in checkpoint) file="$out/quantized.pt" ;; *) file="$out/$kind.json" ;; esac
  "$qsearch" --server "$address" download "$job" --kind "$kind" -o "$file" > /dev/null
done
"$qsearch" --server "$address" --json status "$job" > "$out/job.json"
"$qsearch" --server "$address" report "$job" -o "$out/report.html" > /dev/null
echo
echo "outputs in $out:"
echo "  policy.json       the per-layer policy (protobuf JSON)"
echo "  config_list.json  the same policy as an NNI config_list"
echo "  quantized.pt      quantized checkpoint: fake-quantized weights, integer codes, scales"
echo "  result.json       accuracies (float, quantized, uniform and float baselines), phase times"
echo "  report.html       the report: accuracies, budget vs achieved, bits per layer, training curves"
echo "  job.json          the job record; server.log and server-data/ hold the server's side"
