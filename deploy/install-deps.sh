#!/usr/bin/env bash
# Installs the Debian packages qsearch needs. One script for a newcomer's machine, CI and
# both stages of the Docker image, so they cannot drift apart. Idempotent: packages
# already present are skipped. Nothing is fetched from anywhere but Debian's archive.
#
# Usage: bash deploy/install-deps.sh [GROUP]    install GROUP (default: all)
#        bash deploy/install-deps.sh --list GROUP  print GROUP's packages, one per line
# Groups:
#   build    compile qsearch-server, qsearch-worker and qsearch (the image's build stage)
#   runtime  run them: the shared libraries they load, OpenBLAS, Fashion-MNIST (the
#            image's runtime stage; no compiler)
#   all      build + runtime + tests, benchmarks, the report check (Chromium) and the
#            demo: what deploy/test.sh and deploy/demo.sh need
set -euo pipefail

build=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libgloo-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libboost-program-options-dev
  libsqlite3-dev libpq-dev zlib1g-dev libssl-dev libpng-dev libjpeg62-turbo-dev libarchive-dev
)
# The packages owning each library the three binaries name in DT_NEEDED (a test checks
# this list against the built binaries), plus OpenBLAS for LibTorch and the data set.
runtime=(
  libtorch1.13 libopenblas0-openmp
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libboost-program-options1.74.0
  libsqlite3-0 libpq5 libssl3 zlib1g libpng16-16 libjpeg62-turbo libarchive13 libstdc++6 libgcc-s1 libgomp1
  dataset-fashion-mnist
)
# Tests and tools: GoogleTest/Benchmark, yaml-cpp for the deployment manifest test,
# Chromium (and a font) to render the HTML report, openssl for the TLS test's certificates,
# PyTorch and torchvision to make models and images at test time and load what jobs export
# the way a user does, gRPC's Python runtime and stub generator for a user's client script,
# PostgreSQL 15's server for the tests of the shared job store (started in a temp dir).
extra=(
  git googletest libgtest-dev libgmock-dev libbenchmark-dev
  libyaml-cpp-dev chromium fonts-dejavu-core openssl
  python3 python3-torch python3-torchvision python3-grpcio python3-protobuf
  postgresql-15
)

group_packages() {
  case "$1" in
    build) printf '%s\n' "${build[@]}" ;;
    runtime) printf '%s\n' "${runtime[@]}" ;;
    all) printf '%s\n' "${build[@]}" "${runtime[@]}" "${extra[@]}" | awk '!seen[$0]++' ;;
    *) echo "install-deps: unknown group '$1' (build, runtime or all)" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = "--list" ]; then
  group_packages "${2:-all}"
  exit
fi
group="${1:-all}"
group_packages "$group" > /dev/null
mapfile -t packages < <(group_packages "$group")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages of '$group' present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
