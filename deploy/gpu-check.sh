#!/usr/bin/env bash
# The GPU path on a machine that has a GPU and a CUDA PyTorch but no Debian packages (the
# device machines some development sessions are lent): builds qsearch-worker and the
# engine's tests against that PyTorch's LibTorch (-DQSEARCH_ENGINE_ONLY=ON
# -DQSEARCH_NCCL=ON), runs the device tests, and runs one search on cuda:0 and the same
# on the CPU, without and with the sandbox. Nothing is installed: the other libraries come
# as Debian bookworm packages in .gpu/debs, unpacked into a prefix.
#
#   deploy/gpu-check.sh --fetch      here, on Debian: download those packages into .gpu/debs
#   deploy/gpu-check.sh [OUT_DIR]    there, in the repository root: build, test, search;
#                                    the log and results go to OUT_DIR (default gpu-check)
#
# The session's note records what it printed. Untested until a GPU machine runs it.
set -uo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(libabsl-dev libabsl20220623 libprotobuf-dev libprotobuf32 libprotoc32 libprotobuf-lite32
          protobuf-compiler libboost-program-options-dev libboost-program-options1.74-dev
          libboost-program-options1.74.0 libboost1.74-dev libarchive-dev libarchive13 libpng-dev
          libpng16-16 libjpeg62-turbo-dev libjpeg62-turbo libjpeg-dev zlib1g-dev libssl-dev libssl3
          libgtest-dev libgmock-dev dataset-fashion-mnist)

if [[ "${1:-}" == "--fetch" ]]; then
  mkdir -p .gpu/debs
  (cd .gpu/debs && apt-get download "${PACKAGES[@]}") || exit 1
  du -sh .gpu/debs
  exit 0
fi

OUT="${1:-gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
PREFIX=/tmp/qsearch-deps
BUILD=/tmp/qsearch-gpu-build
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
PYTHON=${PYTHON:-python3}  # the one with the CUDA PyTorch
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
# TORCH_PREFIX overrides where LibTorch's CMake files are (a dry run on Debian: /usr/lib/x86_64-linux-gnu/cmake).
TORCH_PREFIX=${TORCH_PREFIX:-$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')}
TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')

step "unpacking ${#PACKAGES[@]} packages into $PREFIX"
ls .gpu/debs/*.deb > /dev/null || { echo "no .gpu/debs: run deploy/gpu-check.sh --fetch on Debian first"; exit 1; }
mkdir -p "$PREFIX"
for f in .gpu/debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
# The jobs' default data set path; the package's files under the prefix.
if [[ ! -e /usr/share/datasets/fashion-mnist ]]; then
  mkdir -p /usr/share/datasets && ln -s "$PREFIX/usr/share/datasets/fashion-mnist" /usr/share/datasets/fashion-mnist
fi
export LD_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu:$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export PATH="$PREFIX/usr/bin:$PATH"

NCCL=${NCCL:-ON}  # OFF for a dry run against a LibTorch without CUDA
step "configure and build (engine only, NCCL $NCCL)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQSEARCH_ENGINE_ONLY=ON -DQSEARCH_NCCL="$NCCL" \
  -DQSEARCH_BUILD_BENCHMARKS=OFF -DCMAKE_PREFIX_PATH="$PREFIX/usr;$TORCH_PREFIX" \
  -DProtobuf_PROTOC_EXECUTABLE="$PREFIX/usr/bin/protoc" -DCMAKE_CXX_FLAGS="-isystem $PREFIX/usr/include" \
  || exit 1
cmake --build "$BUILD" -j"$(nproc)" --target qsearch-worker search_test quantizers_test 2>&1 | tail -40
[[ -x "$BUILD/search/qsearch-worker" ]] || { echo "the worker did not build"; exit 1; }

step "device and kernel tests"
"$BUILD/tests/search_test" --gtest_filter='DeviceTest.*:PointKernelIsaTest.*:JobTest.ASearchThroughTheAtenForms*' \
  2>&1 | tail -30
"$BUILD/tests/quantizers_test" --gtest_brief=1 2>&1 | tail -5

step "one search on cuda:0 and on the CPU"
cat > "$OUT/spec.json" <<'EOF'
{"model": "resnet20", "dataset": {"kind": "fashion_mnist", "trainSize": 4096, "valSize": 512, "testSize": 2000},
 "budget": {"averageWeightBits": 3}, "qpl": {"activationBits": 4, "epochs": 1}, "qss": {"epochs": 1},
 "pretrainEpochs": 2, "finetuneEpochs": 1, "batchSize": 128, "seed": 1}
EOF
for run in "cuda:0" "cpu" "cuda:0 --sandbox" "cuda:0 world2"; do
  set -- $run
  device=$1; extra=()
  spec="$OUT/spec.json"
  if [[ "${2:-}" == "--sandbox" ]]; then extra=(--sandbox); fi
  if [[ "${2:-}" == "world2" ]]; then
    spec="$OUT/spec_world2.json"
    "$PYTHON" -c "import json; s=json.load(open('$OUT/spec.json')); s['worldSize']=2; json.dump(s, open('$spec','w'))"
  fi
  name=$(echo "$run" | tr -c 'a-z0-9\n' '_')
  mkdir -p "/tmp/qsearch-gpu-$name"
  start=$(date +%s.%N)
  "$BUILD/search/qsearch-worker" --spec "$spec" --out "/tmp/qsearch-gpu-$name" --device "$device" --threads 16 \
    "${extra[@]}" > "$OUT/worker_$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$run: exit $rc, $("$PYTHON" -c "print(round($end - $start, 1))") s"
  tail -3 "$OUT/worker_$name.log"
  [[ -f "/tmp/qsearch-gpu-$name/result.json" ]] && cp "/tmp/qsearch-gpu-$name/result.json" "$OUT/result_$name.json" &&
    "$PYTHON" -c "import json; r=json.load(open('$OUT/result_$name.json')); print(' devices', r.get('devices'), 'float', r.get('floatAccuracy'), 'quantized', r.get('quantizedAccuracy'), 'phases', r.get('phaseSeconds'))"
done
exit 0  # what ran and how it ended is in the log
