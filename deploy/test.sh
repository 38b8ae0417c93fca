#!/usr/bin/env bash
# The test command: install Debian dependencies, configure, build, run every test.
# Usage: bash deploy/test.sh        (BUILD_DIR overrides the build folder, default build/)
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

build_dir="${BUILD_DIR:-build}"
jobs="$(nproc)"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
